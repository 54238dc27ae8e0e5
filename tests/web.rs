//! The browser example (`examples/web`) in headless Chromium with mqtt.js, over ws and wss.
//! Needs Debian's `chromium` and `npm install` in examples/web; `scripts/test` does both.

mod common;
use common::*;
use std::path::Path;
use std::time::Duration;
use switchyard_core::config::ListenerKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_page_with_mqtt_js_over_ws_and_wss() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web");
    assert!(
        web.join("node_modules/mqtt/dist/mqtt.min.js").exists()
            && web.join("node_modules/playwright-core").exists(),
        "run scripts/test (or `npm install` in examples/web) first"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var("CHROMIUM").is_ok(),
        "install chromium (scripts/test does)"
    );
    let pki = Pki::new();
    let mut cfg = test_config();
    cfg.listeners.push(pki.listener(ListenerKind::Wss));
    let server = start(cfg).await;
    let ws = server.addr(ListenerKind::Ws).unwrap().port();
    let wss = server.addr(ListenerKind::Wss).unwrap().port();

    let publisher = v4::connect(v4::options(tcp_addr(&server), "web-test-pub")).await;
    publisher
        .client
        .publish(
            "demo/retained",
            v4::QoS::AtLeastOnce,
            true,
            "retained for the page",
        )
        .await
        .unwrap();
    let mut watcher = v4::connect(v4::options(tcp_addr(&server), "web-watcher")).await;
    watcher
        .subscribe("demo/from-browser", v4::QoS::AtLeastOnce)
        .await;

    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .current_dir(&web)
            .args([
                "test/browser_test.mjs",
                &format!("ws://127.0.0.1:{ws}/mqtt"),
                &format!("wss://127.0.0.1:{wss}/mqtt"),
            ])
            .output(),
    )
    .await
    .expect("browser test finished in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("OK ")).count(),
        4,
        "{stdout}"
    );
    // What the browser published reached an MQTT/TCP client too.
    for _ in 0..4 {
        let p = watcher.next_publish().await;
        assert!(String::from_utf8_lossy(&p.payload).starts_with("browser says hi over"));
    }
}
