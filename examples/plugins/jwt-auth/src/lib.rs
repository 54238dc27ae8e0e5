//! JWT authentication: the CONNECT password is a JSON Web Token.
//!
//! ```toml
//! [[plugin]]
//! path = "target/plugins/jwt_auth.wasm"
//! config = { secret = "…" }                  # HS256
//! # config = { public_key = "-----BEGIN PUBLIC KEY-----\n…" }   # RS256 (PEM)
//! ```
//! A token is accepted when its signature verifies with the configured key for its `alg` (only
//! HS256 and RS256, and only the ones configured: no `none`, no algorithm confusion), its `exp`
//! is in the future, and its `sub` equals the CONNECT user name when one is given. The optional
//! claims `pub_topics` and `sub_topics` (lists of topic filters) and `role` become client
//! attributes that the `acl` plugin enforces.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use std::sync::OnceLock;
use switchyard_sdk::*;

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    public_key: Option<String>,
    /// Clients without a password are left to other hooks instead of refused.
    #[serde(default)]
    optional: bool,
}

struct Keys {
    secret: Option<Vec<u8>>,
    rsa: Option<VerifyingKey<Sha256>>,
    optional: bool,
}

static KEYS: OnceLock<Keys> = OnceLock::new();

fn verify(
    token: &str,
    keys: &Keys,
    now_s: u64,
    username: Option<&str>,
) -> Result<Vec<(String, String)>, &'static str> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT");
    };
    let header: Value = serde_json::from_slice(&B64URL.decode(h).map_err(|_| "bad header")?)
        .map_err(|_| "bad header")?;
    let signature = B64URL.decode(s).map_err(|_| "bad signature encoding")?;
    let signed = &token[..h.len() + 1 + p.len()];
    match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => {
            let secret = keys.secret.as_ref().ok_or("HS256 not configured")?;
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "bad secret")?;
            mac.update(signed.as_bytes());
            mac.verify_slice(&signature).map_err(|_| "bad signature")?;
        }
        Some("RS256") => {
            let key = keys.rsa.as_ref().ok_or("RS256 not configured")?;
            let sig = Signature::try_from(signature.as_slice()).map_err(|_| "bad signature")?;
            key.verify(signed.as_bytes(), &sig)
                .map_err(|_| "bad signature")?;
        }
        _ => return Err("unsupported alg"),
    }
    let claims: Value = serde_json::from_slice(&B64URL.decode(p).map_err(|_| "bad payload")?)
        .map_err(|_| "bad payload")?;
    let exp = claims.get("exp").and_then(Value::as_u64).ok_or("no exp")?;
    if exp <= now_s {
        return Err("expired");
    }
    if let Some(user) = username {
        if claims.get("sub").and_then(Value::as_str) != Some(user) {
            return Err("sub does not match the user name");
        }
    }
    let mut attributes = Vec::new();
    for key in ["pub_topics", "sub_topics"] {
        if let Some(list) = claims.get(key).and_then(Value::as_array) {
            if list.iter().all(Value::is_string) {
                attributes.push((key.to_string(), Value::Array(list.clone()).to_string()));
            }
        }
    }
    if let Some(role) = claims.get("role").and_then(Value::as_str) {
        attributes.push(("role".to_string(), role.to_string()));
    }
    Ok(attributes)
}

struct JwtAuth;

impl Plugin for JwtAuth {
    fn init(config: String) -> Result<Registration, String> {
        let cfg: Config =
            serde_json::from_str(&config).map_err(|e| format!("jwt-auth config: {e}"))?;
        let rsa = match &cfg.public_key {
            Some(pem) => Some(VerifyingKey::<Sha256>::new(
                rsa::RsaPublicKey::from_public_key_pem(pem)
                    .map_err(|e| format!("jwt-auth public_key: {e}"))?,
            )),
            None => None,
        };
        if cfg.secret.is_none() && rsa.is_none() {
            return Err("jwt-auth: configure `secret` (HS256) and/or `public_key` (RS256)".into());
        }
        let _ = KEYS.set(Keys {
            secret: cfg.secret.map(String::into_bytes),
            rsa,
            optional: cfg.optional,
        });
        Ok(Registration {
            hooks: HookSet::AUTHENTICATE,
            topic_filters: Vec::new(),
        })
    }

    fn authenticate(req: ConnectRequest) -> AuthResult {
        let Some(keys) = KEYS.get() else {
            return AuthResult::Deny(DenyReason::Unspecified);
        };
        let Some(password) = req.password else {
            return if keys.optional {
                AuthResult::Ignore
            } else {
                AuthResult::Deny(DenyReason::BadCredentials)
            };
        };
        let Ok(token) = std::str::from_utf8(&password) else {
            return AuthResult::Deny(DenyReason::BadCredentials);
        };
        let now_s = host::now_ms() / 1000;
        match verify(token, keys, now_s, req.client.username.as_deref()) {
            Ok(attributes) => AuthResult::Allow(AuthSuccess {
                attributes,
                data: None,
            }),
            Err(why) => {
                log(
                    host::Level::Info,
                    &format!("token refused for {}: {why}", req.client.client_id),
                );
                AuthResult::Deny(DenyReason::BadCredentials)
            }
        }
    }
}

export_plugin!(JwtAuth);
