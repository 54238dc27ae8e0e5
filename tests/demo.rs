//! `scripts/demo` runs for 30 s on free ports with this build of the broker: rows reach
//! PostgreSQL, records reach Kafka (Tansu), the webhook is called, the dashboard answers the
//! printed login; then Ctrl-C (SIGINT) stops every part of it.

mod common;
use common::services::consume;
use common::*;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_every_part_and_ctrl_c_stops_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let [mqtt, wss, http, kafka, pg, hook] = std::array::from_fn(|_| free_port());
    let mut child = tokio::process::Command::new(root.join("scripts/demo"))
        .env("SWITCHYARD_BIN", env!("CARGO_BIN_EXE_switchyard"))
        .env("DEMO_DIR", dir.path())
        .env("DEMO_MQTT_PORT", mqtt.to_string())
        .env("DEMO_WSS_PORT", wss.to_string())
        .env("DEMO_HTTP_PORT", http.to_string())
        .env("DEMO_KAFKA_PORT", kafka.to_string())
        .env("DEMO_PG_PORT", pg.to_string())
        .env("DEMO_HOOK_PORT", hook.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("scripts/demo starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let started = tokio::time::timeout(Duration::from_secs(300), async {
        while let Ok(Some(line)) = lines.next_line().await {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("Ctrl-C stops all of it") {
                return true;
            }
        }
        false
    })
    .await
    .expect("the demo starts within 5 minutes");
    assert!(started, "the demo ended early:\n{banner}");
    let running_since = Instant::now();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert!(
        banner.contains(&format!("http://localhost:{http}/")),
        "{banner}"
    );
    let password = banner
        .split("password ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the banner prints a login")
        .to_string();

    // The printed login opens the API, and the devices are there.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http}/api/v1");
    let get = |path: &str| {
        let req = client
            .get(format!("{base}{path}"))
            .basic_auth("admin", Some(&password));
        async move {
            req.send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let clients = get("/clients").await;
        if clients["total"].as_u64() >= Some(5) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "devices never connected: {clients}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Records in Kafka.
    let records = consume(&format!("127.0.0.1:{kafka}"), "telemetry", 10).await;
    assert!(records.len() >= 10);
    assert!(records[0].1["device"].as_str().unwrap().starts_with("dev-"));
    // Rows in PostgreSQL.
    let (pg_client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={pg} user=switchyard dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("the demo's PostgreSQL");
    tokio::spawn(conn);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = pg_client
            .query_one("SELECT count(*) FROM readings", &[])
            .await
            .unwrap();
        let n: i64 = row.get(0);
        if n >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} rows in PostgreSQL");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The webhook was called with hot readings.
    let webhook = dir.path().join("webhook.log");
    let deadline = running_since + Duration::from_secs(45);
    loop {
        let calls = std::fs::read_to_string(&webhook).unwrap_or_default();
        if let Some(first) = calls.lines().next() {
            let alert: serde_json::Value = serde_json::from_str(first).unwrap();
            assert!(alert["temp"].as_f64().unwrap() > 28.0, "{alert}");
            break;
        }
        assert!(Instant::now() < deadline, "the webhook was never called");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sinks = get("/sinks").await;
    for s in sinks["data"].as_array().unwrap() {
        assert_eq!(s["state"], "healthy", "{s}");
        assert!(s["sent"].as_u64().unwrap() > 0, "{s}");
    }
    drop(pg_client);

    // 30 s of running, then Ctrl-C.
    let ran = running_since.elapsed();
    if ran < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(30) - ran).await;
    }
    assert!(
        port_open(mqtt).await && port_open(http).await,
        "still up after 30 s"
    );
    let pid = child.id().expect("still running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the demo stops within a minute of Ctrl-C")
        .unwrap();
    assert!(!status.success(), "interrupted: {status}");
    for port in [mqtt, wss, http, kafka, pg, hook] {
        assert!(
            !port_open(port).await,
            "port {port} still open after Ctrl-C"
        );
    }
}
