//! Sinks that must not stall or leak: a PostgreSQL row that fails conversion among good ones,
//! PostgreSQL over TLS (and refused without it), and a database that accepts a connection
//! and never answers.

mod common;
use common::services::*;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_row_that_fails_conversion_is_dead_lettered_and_the_rest_arrive() {
    let pg = Postgres::create().await;
    pg.client()
        .await
        .batch_execute("CREATE TABLE readings (device TEXT, n INTEGER)")
        .await
        .unwrap();
    let server = start(test_config()).await;
    let dead = tempfile::tempdir().unwrap();
    let dead_file = dead.path().join("refused.jsonl");
    // Reading 7 carries a value that is no integer: PostgreSQL never sees it, the conversion
    // on our side fails. It must be refused alone, not retried forever.
    let rule = r#"
rule("store")
    .from(["pg/+/r"])
    .select(|m| #{ device: m.level(1), n: if m.json.n == 7 { "seven" } else { m.json.n } })
    .to(database("readings"));
"#;
    let (rules, _dir) = start_rules(
        &server,
        rule,
        &[(
            "readings",
            serde_json::json!({"kind": "postgres", "url": pg.url(),
                "dead_letter": {"file": dead_file},
                "statement": "INSERT INTO readings (device, n) VALUES (:device, :n)"}),
        )],
    )
    .await;
    let p = v4::connect(v4::options(tcp_addr(&server), "gw")).await;
    let started = Instant::now();
    publish_numbered(&p, 0..30, |n| format!("pg/d{}/r", n % 2)).await;
    wait_until("the good rows stored", || {
        sink_counter(&rules, "readings", |c| &c.sent) == 29
    })
    .await;
    // Stalling would mean retries with a backoff of seconds.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sink_counter(&rules, "readings", |c| &c.retried), 0);
    assert_eq!(sink_counter(&rules, "readings", |c| &c.failed), 1);
    assert_eq!(sink_counter(&rules, "readings", |c| &c.dead_lettered), 1);
    let lines = std::fs::read_to_string(&dead_file).unwrap();
    let entry: serde_json::Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(entry["sink"], "readings");
    assert_eq!(entry["record"]["n"], "seven");
    assert_eq!(entry["attempts"], 1);
    assert!(
        entry["error"]
            .as_str()
            .unwrap()
            .contains("expected an integer"),
        "{entry}"
    );
    // Later records flow too.
    publish_numbered(&p, 30..40, |n| format!("pg/d{}/r", n % 2)).await;
    wait_until("later rows stored", || {
        sink_counter(&rules, "readings", |c| &c.sent) == 39
    })
    .await;
    let n: i64 = pg
        .client()
        .await
        .query_one("SELECT count(*) FROM readings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 39);
    assert_eq!(rules.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verified_against_a_ca_file() {
    let pki = Pki::new();
    let pg = Postgres::create_tls(&pki.server_cert, &pki.server_key).await;
    pg.client()
        .await
        .batch_execute("CREATE TABLE readings (device TEXT, n INTEGER)")
        .await
        .unwrap();
    let other_ca = Pki::new();
    let server = start(test_config()).await;
    let statement = "INSERT INTO readings (device, n) VALUES (:device, :n)";
    let rule = r#"
rule("store")
    .from(["tls/+/r"])
    .select(|m| #{ device: m.level(1), n: m.json.n })
    .to(database("verified")).to(database("plain")).to(database("wrong-ca"));
"#;
    let (rules, _dir) = start_rules(
        &server,
        rule,
        &[
            (
                "verified",
                serde_json::json!({"kind": "postgres", "url": pg.url(), "statement": statement,
                    "sslmode": "verify-full", "ca_file": pki.ca_file}),
            ),
            // The server refuses connections without TLS.
            (
                "plain",
                serde_json::json!({"kind": "postgres", "url": pg.url(), "statement": statement,
                    "sslmode": "disable", "retry_initial_ms": 50, "retry_max_ms": 100}),
            ),
            // A server certificate our CA did not sign is not trusted.
            (
                "wrong-ca",
                serde_json::json!({"kind": "postgres", "url": pg.url(), "statement": statement,
                    "sslmode": "verify-ca", "ca_file": other_ca.ca_file,
                    "retry_initial_ms": 50, "retry_max_ms": 100}),
            ),
        ],
    )
    .await;
    let p = v4::connect(v4::options(tcp_addr(&server), "gw")).await;
    publish_numbered(&p, 0..20, |n| format!("tls/d{}/r", n % 2)).await;
    wait_until("rows stored over TLS", || {
        sink_counter(&rules, "verified", |c| &c.sent) == 20
    })
    .await;
    wait_until("the others keep failing", || {
        sink_counter(&rules, "plain", |c| &c.retried) > 0
            && sink_counter(&rules, "wrong-ca", |c| &c.retried) > 0
    })
    .await;
    assert_eq!(sink_counter(&rules, "plain", |c| &c.sent), 0);
    assert_eq!(sink_counter(&rules, "wrong-ca", |c| &c.sent), 0);
    let db = pg.client().await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM readings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20, "only the verified sink wrote");
    // The server saw TLS sessions from the sink.
    let ssl: i64 = db
        .query_one("SELECT count(*) FROM pg_stat_ssl WHERE ssl", &[])
        .await
        .unwrap()
        .get(0);
    assert!(ssl >= 1, "a TLS session is open");
    rules.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_never_answers_times_out_instead_of_holding_the_sink() {
    // Accepts connections and says nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let server = start(test_config()).await;
    let rule = r#"rule("store").from(["slow/#"]).to(database("db"));"#;
    let (rules, _dir) = start_rules(
        &server,
        rule,
        &[(
            "db",
            serde_json::json!({"kind": "postgres", "statement": "INSERT INTO t (topic) VALUES (:topic)",
                "url": format!("host=127.0.0.1 port={port} user=x dbname=x"),
                "sslmode": "disable", "connect_timeout_ms": 200,
                "retry_initial_ms": 50, "retry_max_ms": 50}),
        )],
    )
    .await;
    let p = v4::connect(v4::options(tcp_addr(&server), "gw")).await;
    publish_numbered(&p, 0..1, |_| "slow/x".into()).await;
    // Each attempt gives up after 200 ms and is retried.
    wait_until("attempts time out and are retried", || {
        sink_counter(&rules, "db", |c| &c.retried) >= 3
    })
    .await;
    assert_eq!(sink_counter(&rules, "db", |c| &c.sent), 0);
    held.abort();
}

/// Every record of `got` once, and each key's records in increasing `n`.
fn assert_once_in_order_per_key(got: &[(String, serde_json::Value)], want: std::ops::Range<i64>) {
    let mut last: std::collections::HashMap<&str, i64> = Default::default();
    let mut seen = std::collections::BTreeSet::new();
    for (key, v) in got {
        let n = v["n"].as_i64().unwrap();
        assert!(seen.insert(n), "record {n} twice");
        if let Some(prev) = last.insert(key, n) {
            assert!(prev < n, "key {key}: {n} after {prev}");
        }
    }
    assert_eq!(seen, want.collect(), "every record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_keeps_each_keys_order_without_duplicates_through_lost_answers_and_a_restart() {
    const N: i64 = 400;
    let kafka_port = free_port();
    let proxy = CuttingProxy::start(([127, 0, 0, 1], kafka_port).into()).await;
    let brokers = proxy.addr.to_string();
    let tansu = Tansu::start_advertising(kafka_port, proxy.addr.port()).await;
    create_topic(&brokers, "answers").await;
    let server = start(test_config()).await;
    let rule = r#"
rule("answers").from(["a/+/t"]).select(|m| #{ device: m.level(1), n: m.json.n }).to(kafka("answers"));
rule("restart").from(["b/+/t"]).select(|m| #{ device: m.level(1), n: m.json.n }).to(kafka("restart"));
"#;
    let kafka = |topic: &str, timeout_ms: u64| {
        serde_json::json!({"kind": "kafka", "brokers": brokers, "topic": topic,
            "key": "${device}", "batch_size": 20, "message_timeout_ms": timeout_ms,
            "retry_initial_ms": 100, "retry_max_ms": 400,
            "properties": {"reconnect.backoff.max.ms": "300", "allow.auto.create.topics": "false"}})
    };
    let (rules, _dir) = start_rules(
        &server,
        rule,
        &[
            ("answers", kafka("answers", 30_000)),
            ("restart", kafka("restart", 3_000)),
        ],
    )
    .await;
    let p = v4::connect(v4::options(tcp_addr(&server), "gw")).await;
    let sent = |sink: &'static str| {
        let rules = rules.clone();
        move || sink_counter(&rules, sink, |c| &c.sent)
    };

    // Eight times while records flow, the broker writes what it is sent, its answers are lost
    // and the connections cut: librdkafka sends those records again. Without idempotence the
    // broker writes them twice.
    let publishing = publish_numbered(&p, 0..N, |n| format!("a/dev{}/t", n % 4));
    let losing = async {
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            proxy.lose_answers(Duration::from_millis(40)).await;
        }
    };
    tokio::join!(publishing, losing);
    let answered = sent("answers");
    wait_until("all acknowledged", || answered() == N as u64).await;
    assert_eq!(
        sink_counter(&rules, "answers", |c| &c.retried),
        0,
        "librdkafka's own retries sufficed"
    );
    // The whole log, to its end: a record written twice would be there.
    assert_once_in_order_per_key(&consume_all(&brokers, "answers", N as usize).await, 0..N);

    // A restart. Tansu keeps its log in memory: the new broker starts empty and has never
    // heard of the producer, which the sink replaces after a message timeout without progress.
    drop(tansu);
    publish_numbered(&p, 0..N, |n| format!("b/dev{}/t", n % 4)).await;
    wait_until("offered while Kafka is down", || {
        sink_counter(&rules, "restart", |c| &c.matched) == N as u64
    })
    .await;
    let _tansu = Tansu::start_advertising(kafka_port, proxy.addr.port()).await;
    // The sink reaches the new broker before its topic exists and must neither create it
    // (auto-creation is off here, as in many clusters) nor lose what it holds.
    let retried = sink_counter(&rules, "restart", |c| &c.retried);
    wait_until("a delivery tried before the topic exists", || {
        sink_counter(&rules, "restart", |c| &c.retried) > retried
    })
    .await;
    create_topic(&brokers, "restart").await;
    let restarted = sent("restart");
    wait_until("all acknowledged after the restart", || {
        restarted() == N as u64
    })
    .await;
    assert_once_in_order_per_key(&consume_all(&brokers, "restart", N as usize).await, 0..N);
    assert_eq!(sink_counter(&rules, "restart", |c| &c.failed), 0);
    assert_eq!(rules.shutdown().await, 0);
}
