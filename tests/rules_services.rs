//! Rule sinks against real services started here: Tansu (a Kafka-protocol broker) and a
//! throwaway PostgreSQL cluster (scripts/pg-instance). Both are stopped mid-stream and brought
//! back; every record that fit the sink's buffer must arrive.

mod common;
use common::services::*;
use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

// ------------------------------------------------------------------------------------------
// Kafka (Tansu)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_survives_a_broker_outage_at_least_once() {
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let tansu = Tansu::start(port).await;
    create_topic(&brokers, "telemetry").await;

    let server = start(test_config()).await;
    let rule = r#"
rule("telemetry")
    .from(["sensors/+/telemetry"])
    .select(|m| #{ device: m.level(1), n: m.json.n })
    .to(kafka("telemetry"));
"#;
    let (rules, _dir) = start_rules(
        &server,
        rule,
        &[(
            "telemetry",
            serde_json::json!({"kind": "kafka", "brokers": brokers, "topic": "telemetry",
                "key": "${device}", "headers": {"source": "switchyard"},
                "message_timeout_ms": 1500, "retry_initial_ms": 100, "retry_max_ms": 500,
                "properties": {"allow.auto.create.topics": "false"}}),
        )],
    )
    .await;
    let p = v4::connect(v4::options(tcp_addr(&server), "gw")).await;
    let send =
        |from, to| publish_numbered(&p, from..to, |n| format!("sensors/dev{}/telemetry", n % 4));
    send(0, 50).await;
    let before = consume(&brokers, "telemetry", 50).await;
    assert!(before
        .iter()
        .all(|(k, v)| *k == format!("dev{}", v["n"].as_i64().unwrap() % 4)));
    wait_until("first half acknowledged", || {
        sink_counter(&rules, "telemetry", |c| &c.sent) == 50
    })
    .await;

    // Outage: what is published now waits in the sink's buffer.
    drop(tansu);
    send(50, 100).await;
    wait_until("second half offered", || {
        sink_counter(&rules, "telemetry", |c| &c.matched) == 100
    })
    .await;
    wait_until("deliveries failing", || {
        sink_counter(&rules, "telemetry", |c| &c.retried) > 0
    })
    .await;
    assert_eq!(sink_counter(&rules, "telemetry", |c| &c.sent), 50);

    // Tansu keeps topics in memory: the restarted broker is empty, so what it receives now
    // is exactly what was delivered after the outage.
    let _tansu = Tansu::start(port).await;
    create_topic(&brokers, "telemetry").await;
    wait_until("second half acknowledged", || {
        sink_counter(&rules, "telemetry", |c| &c.sent) == 100
    })
    .await;
    let after = consume(&brokers, "telemetry", 50).await;
    let mut seen: BTreeSet<i64> = before
        .iter()
        .map(|(_, v)| v["n"].as_i64().unwrap())
        .collect();
    seen.extend(after.iter().map(|(_, v)| v["n"].as_i64().unwrap()));
    assert_eq!(
        seen,
        (0..100).collect::<BTreeSet<_>>(),
        "every record arrived"
    );
    assert_eq!(sink_counter(&rules, "telemetry", |c| &c.failed), 0);
    assert_eq!(sink_counter(&rules, "telemetry", |c| &c.dropped), 0);
    assert_eq!(rules.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_buffers_through_an_outage_and_refuses_bad_rows() {
    let pg = Postgres::create().await;
    let db = pg.client().await;
    db.batch_execute(
        "CREATE TABLE readings (device TEXT NOT NULL, n BIGINT, doc JSONB, at TIMESTAMPTZ)",
    )
    .await
    .unwrap();
    drop(db);
    let server = start(test_config()).await;
    let rule = r#"
rule("store")
    .from(["pg/+/r"])
    .select(|m| #{ device: if m.json.n == 13 { () } else { m.level(1) }, n: m.json.n, doc: m.json, at: m.ts })
    .to(database("readings"));
rule("missing-table").from(["pg/+/r"]).to(postgres("nowhere"));
"#;
    let (rules, _dir) = start_rules(
        &server,
        rule,
        &[
            (
                "readings",
                serde_json::json!({"kind": "postgres", "url": pg.url(), "retry_initial_ms": 100, "retry_max_ms": 400,
                    "statement": "INSERT INTO readings (device, n, doc, at) VALUES (:device, :n, :doc, :at)"}),
            ),
            (
                "nowhere",
                serde_json::json!({"kind": "postgres", "url": pg.url(),
                    "statement": "INSERT INTO no_such_table (topic) VALUES (:topic)"}),
            ),
        ],
    )
    .await;
    let p = v4::connect(v4::options(tcp_addr(&server), "gw")).await;
    let send = |from, to| publish_numbered(&p, from..to, |n| format!("pg/d{}/r", n % 3));
    send(0, 20).await;
    // Row 13 has a NULL device: refused alone, the rest of its batch goes in.
    wait_until("first rows stored", || {
        sink_counter(&rules, "readings", |c| &c.sent) == 19
    })
    .await;
    assert_eq!(sink_counter(&rules, "readings", |c| &c.failed), 1);
    wait_until("missing table refused", || {
        sink_counter(&rules, "nowhere", |c| &c.failed) == 20
    })
    .await;
    assert_eq!(sink_counter(&rules, "nowhere", |c| &c.retried), 0);

    pg.stop().await;
    send(20, 40).await;
    wait_until("offered during the outage", || {
        sink_counter(&rules, "readings", |c| &c.matched) == 40
    })
    .await;
    wait_until("deliveries failing", || {
        sink_counter(&rules, "readings", |c| &c.retried) > 0
    })
    .await;
    pg.start().await;
    wait_until("rows stored after the outage", || {
        sink_counter(&rules, "readings", |c| &c.sent) == 39
    })
    .await;

    let db = pg.client().await;
    let rows = db
        .query(
            "SELECT device, n, doc->>'n', at FROM readings ORDER BY n",
            &[],
        )
        .await
        .unwrap();
    let ns: Vec<i64> = rows.iter().map(|r| r.get::<_, i64>(1)).collect();
    let want: Vec<i64> = (0..40).filter(|n| *n != 13).collect();
    assert_eq!(ns, want, "each row once, none lost");
    assert_eq!(rows[5].get::<_, String>(0), "d2");
    assert_eq!(rows[5].get::<_, String>(2), "5");
    let at: std::time::SystemTime = rows[5].get(3);
    assert!(at.elapsed().unwrap() < Duration::from_secs(600));
    assert_eq!(rules.shutdown().await, 0);
}

/// `switchyard_sink_<what>_total` of one sink, from the binary's `/metrics`.
async fn sink_metric(http: std::net::SocketAddr, sink: &str, what: &str) -> u64 {
    let (_, body) = http_get(http, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let key = format!("switchyard_sink_{what}_total{{sink=\"{sink}\",");
    body.lines()
        .find(|l| l.starts_with(&key))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_buffered_kafka_sink_loses_nothing_across_an_outage_and_kill_9() {
    const RECORDS: i64 = 10_000;
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let folder = tempfile::tempdir().unwrap();
    let rules = folder.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("fwd.rhai"),
        r#"rule("fwd").from(["sensors/+"]).select(|m| #{ n: m.json.n }).to(kafka("telemetry"));"#,
    )
    .unwrap();
    // Kafka is down the whole time the first broker runs; the memory part of the buffer holds
    // a tenth of what arrives, the rest waits only on disk.
    let config = format!(
        "[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n[http]\nbind = \"127.0.0.1:0\"\n\
         [mqtt]\nsys_interval_s = 0\n[limits]\nmax_publish_rate = 0\nmax_publish_bytes_rate = 0\n\
         [rules]\ndir = \"{}\"\n[sink.telemetry]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\n\
         topic = \"telemetry\"\nbuffer = \"disk\"\nbuffer_size = 1000\nmessage_timeout_ms = 1000\n\
         retry_initial_ms = 100\nretry_max_ms = 500\n",
        rules.display()
    );
    let broker = common::process::Proc::start(folder.path(), &config);
    let p = v4::connect(v4::options(broker.addr, "gw")).await;
    publish_numbered(&p, 0..RECORDS, |n| format!("sensors/d{}", n % 8)).await;
    let http = broker.http.expect("http listener");
    let deadline = tokio::time::Instant::now() + WAIT;
    while sink_metric(http, "telemetry", "matched").await < RECORDS as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "records not all accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sink_metric(http, "telemetry", "dropped").await, 0);
    assert_eq!(sink_metric(http, "telemetry", "sent").await, 0);
    broker.kill9();

    let _tansu = Tansu::start(port).await;
    create_topic(&brokers, "telemetry").await;
    let _broker = common::process::Proc::start(folder.path(), &config);
    let got = consume(&brokers, "telemetry", RECORDS as usize).await;
    let ns: BTreeSet<i64> = got.iter().map(|(_, v)| v["n"].as_i64().unwrap()).collect();
    assert_eq!(
        ns,
        (0..RECORDS).collect::<BTreeSet<_>>(),
        "every accepted record arrived"
    );
}
