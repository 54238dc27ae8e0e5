//! The jwt-auth example plugin with real clients: HS256 and RS256 tokens, expired, forged,
//! `alg: none`, algorithm confusion, wrong subject, and `pub_topics`/`sub_topics` claims
//! enforced by the acl plugin.

mod common;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::path::PathBuf;
use std::process::Command;
use switchyard_plugins::{OnError, PluginSettings, WasmPlugin};

const SECRET: &str = "s3cret-for-tests";

async fn plugin(name: &str, config: Value) -> std::sync::Arc<WasmPlugin> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/plugins/{name}.wasm"));
    assert!(
        path.exists(),
        "run scripts/build-plugins (scripts/test does)"
    );
    let mut s = PluginSettings::for_path(path);
    s.config = config;
    s.on_error = OnError::Deny;
    WasmPlugin::load(s).await.unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn unsigned(alg: &str, claims: &Value) -> String {
    format!(
        "{}.{}",
        B64URL.encode(json!({"alg": alg, "typ": "JWT"}).to_string()),
        B64URL.encode(claims.to_string())
    )
}

fn hs256(claims: Value, secret: &str) -> String {
    let head = unsigned("HS256", &claims);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(head.as_bytes());
    format!("{head}.{}", B64URL.encode(mac.finalize().into_bytes()))
}

/// An RSA key pair made with the openssl CLI: (private key path, public key PEM).
fn rsa_keys(dir: &std::path::Path) -> (PathBuf, String) {
    let key = dir.join("key.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .expect("openssl is installed")
        .status
        .success();
    assert!(ok);
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    (key, String::from_utf8(public.stdout).unwrap())
}

fn rs256(claims: Value, key: &std::path::Path, dir: &std::path::Path) -> String {
    let head = unsigned("RS256", &claims);
    let input = dir.join("signing-input");
    std::fs::write(&input, &head).unwrap();
    let sig = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&input)
        .output()
        .unwrap();
    assert!(sig.status.success());
    format!("{head}.{}", B64URL.encode(sig.stdout))
}

async fn try_connect(
    addr: std::net::SocketAddr,
    id: &str,
    user: &str,
    token: &str,
) -> Result<v5::Client, String> {
    let mut o = v5::options(addr, id);
    o.set_credentials(user, token);
    v5::connect_any(o).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_and_rs256_tokens_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public_pem) = rsa_keys(dir.path());
    let server = start(test_config()).await;
    let jwt = plugin(
        "jwt_auth",
        json!({"secret": SECRET, "public_key": public_pem}),
    );
    server.broker.hooks.register(0, jwt.await.hook()).unwrap();
    let addr = tcp_addr(&server);
    let good = json!({"sub": "dev1", "exp": now() + 600});

    assert!(
        try_connect(addr, "a", "dev1", &hs256(good.clone(), SECRET))
            .await
            .is_ok(),
        "valid HS256"
    );
    assert!(
        try_connect(addr, "b", "dev1", &rs256(good.clone(), &key, dir.path()))
            .await
            .is_ok(),
        "valid RS256"
    );

    let refused =
        |r: Result<v5::Client, String>| r.err().is_some_and(|e| e.contains("BadUserNamePassword"));
    assert!(
        refused(
            try_connect(
                addr,
                "c",
                "dev1",
                &hs256(json!({"sub": "dev1", "exp": now() - 1}), SECRET)
            )
            .await
        ),
        "expired"
    );
    assert!(
        refused(try_connect(addr, "d", "dev1", &hs256(good.clone(), "wrong-secret")).await),
        "wrong signature"
    );
    assert!(
        refused(try_connect(addr, "e", "dev1", &format!("{}.", unsigned("none", &good))).await),
        "alg none"
    );
    assert!(
        refused(try_connect(addr, "f", "other", &hs256(good.clone(), SECRET)).await),
        "sub mismatch"
    );
    assert!(
        refused(try_connect(addr, "g", "dev1", &hs256(json!({"sub": "dev1"}), SECRET)).await),
        "no exp"
    );
    assert!(
        refused(try_connect(addr, "h", "dev1", "not-a-token").await),
        "garbage"
    );
    // Algorithm confusion: an HS256 token signed with the RSA public key as the secret.
    assert!(refused(
        try_connect(addr, "i", "dev1", &hs256(good.clone(), &public_pem)).await
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_token_is_refused_when_only_a_secret_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = rsa_keys(dir.path());
    let server = start(test_config()).await;
    server
        .broker
        .hooks
        .register(
            0,
            plugin("jwt_auth", json!({"secret": SECRET})).await.hook(),
        )
        .unwrap();
    let token = rs256(json!({"sub": "dev1", "exp": now() + 600}), &key, dir.path());
    assert!(try_connect(tcp_addr(&server), "x", "dev1", &token)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_claims_are_enforced_by_the_acl_plugin() {
    let server = start(test_config()).await;
    server
        .broker
        .hooks
        .register(
            0,
            plugin("jwt_auth", json!({"secret": SECRET})).await.hook(),
        )
        .unwrap();
    server
        .broker
        .hooks
        .register(1, plugin("acl", json!({"default": "allow"})).await.hook())
        .unwrap();
    let addr = tcp_addr(&server);
    let claims = json!({"sub": "dev2", "exp": now() + 600, "pub_topics": ["devices/dev2/#"], "sub_topics": ["commands/dev2"]});
    let mut c = try_connect(addr, "dev2", "dev2", &hs256(claims, SECRET))
        .await
        .unwrap();
    assert_eq!(
        c.subscribe("commands/dev2", v5::QoS::AtLeastOnce).await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
    );
    assert_eq!(
        c.subscribe("commands/other", v5::QoS::AtLeastOnce).await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    c.client
        .publish("elsewhere/x", v5::QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    let reason = c.next_puback_reason().await;
    assert_eq!(
        reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
    );
    c.client
        .publish("devices/dev2/t", v5::QoS::AtLeastOnce, false, "yes")
        .await
        .unwrap();
    let reason = c.next_puback_reason().await;
    assert_eq!(reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
}
