//! The dashboard in headless Chromium (playwright-core from examples/web, Debian's chromium):
//! log in, see and kick a client, watch a topic over the broker's own WebSocket listener,
//! save a broken rule and see its line, fix it, test it and see it active. Screenshots of every
//! page land in target/dashboard-screenshots/.

mod common;
use common::api_env::*;
use common::*;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_the_broker_from_the_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let playwright = root.join("examples/web/node_modules/playwright-core/index.mjs");
    assert!(
        playwright.exists(),
        "run scripts/test (or `npm ci` in examples/web) first"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var("CHROMIUM").is_ok(),
        "install chromium (scripts/test does)"
    );
    let env = api_env_with(
        &[],
        &[(
            "hook",
            json!({"kind": "webhook", "url": "http://127.0.0.1:9/h", "retry_max_ms": 200}),
        )],
        |_| {},
    )
    .await;
    let no_users = api_env_with(&[], &[], |c| c.core.http.password_file.clear()).await;
    let tcp = tcp_addr(&env.server);
    let mut victim = v4::connect(v4::options(tcp, "dash-victim")).await;
    victim
        .subscribe("dash/victim/#", v4::QoS::AtLeastOnce)
        .await;
    // Keeps publishing until the browser has seen one: it subscribes whenever it gets there.
    let publisher = v4::connect(v4::options(tcp, "dash-publisher")).await;
    let feed = {
        let c = publisher.client.clone();
        tokio::spawn(async move {
            for n in 0u64.. {
                let body = format!("{{\"n\": {n}, \"temp\": 21.5}}");
                if c.publish("dash/live/json", v4::QoS::AtMostOnce, false, body)
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let shots = root.join("target/dashboard-screenshots");
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg(root.join("tests/dashboard/dashboard_test.mjs"))
            .args([&env.base, USER, PASSWORD])
            .arg(&shots)
            .arg(&no_users.base)
            .env("PLAYWRIGHT", &playwright)
            .output(),
    )
    .await
    .expect("browser test finished in time")
    .expect("node runs");
    feed.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("\nOK"),
        "dashboard test failed:\n{stdout}\n{stderr}"
    );

    // What the browser did happened in the broker.
    victim.expect_closed().await;
    assert!(
        env.server.broker().live.get("dash-victim").is_none(),
        "kicked"
    );
    assert_eq!(
        env.server.rules.rule_names(),
        ["dash"],
        "the fixed rule is active"
    );
    let saved = std::fs::read_to_string(env.rules_dir().join("dash_rule.rhai")).unwrap();
    assert!(saved.contains(".from([\"dash/live/#\"])"), "{saved}");
    for page in [
        "no-users",
        "login",
        "overview",
        "clients",
        "client",
        "topics",
        "rule-error",
        "rule-editor",
        "rules",
        "extensions",
        "bans",
        "overview-phone",
    ] {
        let png = shots.join(format!("{page}.png"));
        let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(size > 5_000, "{} written ({size} bytes)", png.display());
    }
}
