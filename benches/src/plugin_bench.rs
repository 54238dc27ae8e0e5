//! `plugin-bench`: hook calls per second and latency through the WASM plugin host, with the
//! example plugins (`scripts/build-plugins` first).
//!
//! ```text
//! plugin-bench [--calls 20000] [--concurrency 16]
//! ```
//! Reports JWT (HS256) authenticate and ACL authorize calls/s with p50/p99/max latency.

use anyhow::{Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use switchyard_core::hooks::{Access, ConnectInfo, Hook};
use switchyard_core::protocol::QoS;
use switchyard_plugins::{PluginSettings, WasmPlugin};

#[path = "shared.rs"]
mod shared;
use shared::{arg, client};

async fn load(name: &str, config: serde_json::Value) -> Result<Arc<dyn Hook>> {
    let path = PathBuf::from(format!("target/plugins/{name}.wasm"));
    let mut s = PluginSettings::for_path(path.clone());
    s.config = config;
    s.instances = 16;
    let plugin = WasmPlugin::load(s)
        .await
        .with_context(|| format!("{} (run scripts/build-plugins)", path.display()))?;
    Ok(plugin.hook())
}

/// Runs `calls` invocations of `f` from `concurrency` tasks; prints calls/s and latency.
async fn measure<F, Fut>(label: &str, calls: usize, concurrency: usize, f: F) -> Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let f = Arc::new(f);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut ok = 0usize;
            for i in (t..calls).step_by(concurrency) {
                let s = Instant::now();
                ok += usize::from(f(i).await);
                let _ = h.record(s.elapsed().as_micros() as u64);
            }
            (h, ok)
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    let mut ok = 0;
    for t in tasks {
        let (h, n) = t.await?;
        all.add(&h)?;
        ok += n;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{label}: {:.0} calls/s, p50 {} us, p99 {} us, max {} us, {ok}/{calls} as expected",
        calls as f64 / secs,
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.max()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let calls = arg("--calls", 20_000);
    let concurrency = arg("--concurrency", 16);
    let secret = "bench-secret";
    let jwt = load("jwt_auth", json!({ "secret": secret })).await?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let head = format!(
        "{}.{}",
        B64URL.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string()),
        B64URL.encode(json!({"sub": "dev", "exp": exp}).to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())?;
    mac.update(head.as_bytes());
    let token = format!("{head}.{}", B64URL.encode(mac.finalize().into_bytes()));
    let request = Arc::new(ConnectInfo {
        client: client("bench", "dev"),
        password: Some(token.into_bytes().into()),
        clean_start: true,
        keep_alive: 60,
        auth: None,
    });
    measure(
        "jwt-auth authenticate (HS256)",
        calls,
        concurrency,
        move |_| {
            let (jwt, request) = (jwt.clone(), request.clone());
            async move {
                matches!(
                    jwt.authenticate(&request).await,
                    switchyard_core::hooks::AuthDecision::Allow(_)
                )
            }
        },
    )
    .await?;

    let acl = load(
        "acl",
        json!({"default": "deny", "rules": [{"permission": "allow", "action": "all", "topic": "users/%u/#"}]}),
    )
    .await?;
    let who = Arc::new(client("bench", "dev"));
    measure(
        "acl authorize (publish)",
        calls * 5,
        concurrency,
        move |i| {
            let (acl, who) = (acl.clone(), who.clone());
            async move {
                let topic = format!("users/dev/{}", i % 100);
                matches!(
                    acl.authorize(&who, Access::Publish, &topic, QoS::AtLeastOnce)
                        .await,
                    switchyard_core::hooks::AclDecision::Allow
                )
            }
        },
    )
    .await?;
    Ok(())
}
