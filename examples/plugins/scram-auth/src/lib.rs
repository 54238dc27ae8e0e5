//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as MQTT 5 enhanced authentication: the client names
//! the method `SCRAM-SHA-256` in CONNECT, the broker answers with a challenge in AUTH, the
//! client proves it knows the password without sending it, and the CONNACK carries the
//! server's signature, so the client knows it spoke to a broker that holds its keys.
//!
//! ```toml
//! [[plugin]]
//! path = "target/plugins/scram_auth.wasm"
//! config = { users = [
//!   # Stored keys (what a production config holds), base64:
//!   { name = "alice", salt = "...", iterations = 4096, stored_key = "...", server_key = "..." },
//!   # Or a plain password, from which the keys are derived at start:
//!   { name = "bob", password = "bob-secret" },
//! ] }
//! ```
//!
//! A client without the method, or with another, is left to other hooks. An unknown user
//! gets a challenge like any other (with a salt derived from the name), so the exchange does
//! not tell which users exist; it fails at the proof, like a wrong password (0x86).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::OnceLock;
use switchyard_sdk::*;

const METHOD: &str = "SCRAM-SHA-256";
const DEFAULT_ITERATIONS: u32 = 4096;

#[derive(Deserialize)]
struct UserEntry {
    name: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    salt: Option<String>,
    #[serde(default)]
    iterations: Option<u32>,
    #[serde(default)]
    stored_key: Option<String>,
    #[serde(default)]
    server_key: Option<String>,
}

#[derive(Deserialize)]
struct Config {
    users: Vec<UserEntry>,
}

/// What the server keeps per user.
struct Keys {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

static USERS: OnceLock<HashMap<String, Keys>> = OnceLock::new();

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The keys of a password, as RFC 5802 derives them.
fn derive(password: &str, salt: Vec<u8>, iterations: u32) -> Keys {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    Keys {
        stored_key: Sha256::digest(&client_key).to_vec(),
        server_key: hmac(&salted, b"Server Key"),
        salt,
        iterations,
    }
}

fn keys_of(u: UserEntry) -> Result<(String, Keys), String> {
    let b64 = |what: &str, v: Option<String>| -> Result<Vec<u8>, String> {
        B64.decode(v.ok_or(format!("user {}: {what} missing", u.name))?)
            .map_err(|e| format!("user {}: {what}: {e}", u.name))
    };
    let iterations = u.iterations.unwrap_or(DEFAULT_ITERATIONS);
    let keys = match &u.password {
        Some(p) => {
            // A salt of the user's own: every instance must derive the same keys.
            let salt = match &u.salt {
                Some(s) => B64
                    .decode(s)
                    .map_err(|e| format!("user {}: salt: {e}", u.name))?,
                None => Sha256::digest(format!("switchyard-scram:{}", u.name)).to_vec(),
            };
            derive(p, salt, iterations)
        }
        None => Keys {
            salt: b64("salt", u.salt.clone())?,
            iterations,
            stored_key: b64("stored_key", u.stored_key.clone())?,
            server_key: b64("server_key", u.server_key.clone())?,
        },
    };
    Ok((u.name, keys))
}

/// A fresh server nonce. `RandomState` is seeded from WASI's random source; its hashes are
/// unpredictable to anyone who does not know that seed.
fn nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = Vec::with_capacity(24);
    for i in 0..3u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(host::now_ms() ^ i);
        bytes.extend_from_slice(&h.finish().to_le_bytes());
    }
    B64.encode(bytes)
}

/// `key=value` attributes of a SCRAM message.
fn attribute(message: &str, key: char) -> Option<&str> {
    message
        .split(',')
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}

/// The SCRAM name encoding: `=2C` is `,` and `=3D` is `=`.
fn unescape(name: &str) -> String {
    name.replace("=2C", ",").replace("=3D", "=")
}

/// What the plugin remembers between the two steps (the host hands it back).
fn encode_state(user: &str, client_first_bare: &str, server_first: &str) -> Vec<u8> {
    format!("{user}\n{client_first_bare}\n{server_first}").into_bytes()
}

fn first_step(data: &[u8]) -> AuthResult {
    let Ok(client_first) = std::str::from_utf8(data) else {
        return AuthResult::Deny(DenyReason::BadCredentials);
    };
    // Channel binding is not offered: the GS2 header must be "n,,".
    let Some(bare) = client_first.strip_prefix("n,,") else {
        return AuthResult::Deny(DenyReason::BadCredentials);
    };
    let (Some(name), Some(client_nonce)) = (attribute(bare, 'n'), attribute(bare, 'r')) else {
        return AuthResult::Deny(DenyReason::BadCredentials);
    };
    let user = unescape(name);
    let users = USERS.get();
    let (salt, iterations) = match users.and_then(|u| u.get(&user)) {
        Some(k) => (k.salt.clone(), k.iterations),
        None => (
            Sha256::digest(format!("switchyard-scram:{user}")).to_vec(),
            DEFAULT_ITERATIONS,
        ),
    };
    let server_first = format!(
        "r={client_nonce}{},s={},i={iterations}",
        nonce(),
        B64.encode(salt)
    );
    AuthResult::Continue(AuthChallenge {
        data: server_first.clone().into_bytes(),
        state: encode_state(&user, bare, &server_first),
    })
}

fn final_step(data: &[u8], state: &[u8]) -> AuthResult {
    let deny = AuthResult::Deny(DenyReason::BadCredentials);
    let (Ok(client_final), Ok(state)) = (std::str::from_utf8(data), std::str::from_utf8(state))
    else {
        return deny;
    };
    let mut parts = state.splitn(3, '\n');
    let (Some(user), Some(client_first_bare), Some(server_first)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return deny;
    };
    let Some(keys) = USERS.get().and_then(|u| u.get(user)) else {
        return deny;
    };
    let (Some(nonce), Some(proof)) = (attribute(client_final, 'r'), attribute(client_final, 'p'))
    else {
        return deny;
    };
    // The nonce must be the one the server sent; "biws" is base64 of the "n,," header.
    if Some(nonce) != attribute(server_first, 'r') || attribute(client_final, 'c') != Some("biws") {
        return deny;
    }
    let Ok(proof) = B64.decode(proof) else {
        return deny;
    };
    let without_proof = &client_final[..client_final.rfind(",p=").unwrap_or(client_final.len())];
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let client_signature = hmac(&keys.stored_key, auth_message.as_bytes());
    if proof.len() != client_signature.len() {
        return deny;
    }
    let client_key: Vec<u8> = proof
        .iter()
        .zip(&client_signature)
        .map(|(p, s)| p ^ s)
        .collect();
    let stored = Sha256::digest(&client_key);
    // Compared in full, not stopping at the first difference.
    let same = stored
        .iter()
        .zip(&keys.stored_key)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0;
    if !same {
        return deny;
    }
    let server_signature = hmac(&keys.server_key, auth_message.as_bytes());
    AuthResult::Allow(AuthSuccess {
        attributes: vec![("auth_method".into(), METHOD.into())],
        data: Some(format!("v={}", B64.encode(server_signature)).into_bytes()),
    })
}

struct Scram;

impl Plugin for Scram {
    fn init(config: String) -> Result<Registration, String> {
        let cfg: Config =
            serde_json::from_str(&config).map_err(|e| format!("scram-auth config: {e}"))?;
        let users = cfg
            .users
            .into_iter()
            .map(keys_of)
            .collect::<Result<HashMap<_, _>, _>>()?;
        let _ = USERS.set(users);
        Ok(Registration {
            hooks: HookSet::AUTHENTICATE,
            topic_filters: Vec::new(),
        })
    }

    fn authenticate(req: ConnectRequest) -> AuthResult {
        let Some(step) = req.auth.filter(|a| a.method == METHOD) else {
            return AuthResult::Ignore;
        };
        let data = step.data.unwrap_or_default();
        if step.state.is_empty() {
            first_step(&data)
        } else {
            final_step(&data, &step.state)
        }
    }
}

export_plugin!(Scram);

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example exchange: user "user", password "pencil".
    #[test]
    fn the_rfc_7677_example_verifies() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let keys = derive("pencil", salt, 4096);
        let _ = USERS.set(HashMap::from([("user".to_string(), keys)]));
        let bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        match final_step(
            client_final.as_bytes(),
            &encode_state("user", bare, server_first),
        ) {
            AuthResult::Allow(ok) => assert_eq!(
                ok.data.unwrap(),
                b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
            ),
            _ => panic!("the RFC's proof is refused"),
        }
    }
}
