//! A record a sink cannot deliver is given up alone and sent to the dead letter (a topic, a
//! file, another sink), instead of stalling everything behind it; records that keep failing
//! are given up after `record_ttl_s`.

mod common;
use common::receiver::start_receiver;
use common::rules_env::*;
use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use switchyard_rules::sink::SinkCounters;
use switchyard_rules::{RuleEngine, RulesConfig, SinkConfig};

fn sink_count(env: &Env, sink: &str, f: fn(&SinkCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
    SinkCounters::get(f(&env.rules.sink(sink).unwrap().counters))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_header_that_renders_a_control_character_is_refused_alone() {
    let hook = start_receiver(None).await;
    // Reading 3's device would smuggle a second header into the request.
    let rule = r#"
rule("forward")
    .from(["dev/+/r"])
    .select(|m| #{ device: if m.json.n == 3 { "d3\r\nX-Injected: yes" } else { m.level(1) }, n: m.json.n })
    .to(webhook("hook"));
"#;
    let env = env_with(
        &[("forward.rhai", rule)],
        &[(
            "hook",
            serde_json::json!({"kind": "webhook", "url": format!("http://{}/in", hook.addr),
                "headers": {"X-Device": "${device}"},
                "dead_letter": {"topic": "dead/hook"}}),
        )],
    )
    .await;
    let mut dead = v4::connect(v4::options(tcp_addr(&env.server), "ops")).await;
    dead.subscribe("dead/#", v4::QoS::AtLeastOnce).await;
    let p = publisher(&env, "gw").await;
    let started = Instant::now();
    for n in 0..10 {
        publish(&p, &format!("dev/d{n}/r"), format!("{{\"n\":{n}}}")).await;
    }
    let rec = hook.recorded.clone();
    wait_until("nine requests", || rec.count() == 9).await;
    wait_until("the tenth given up", || {
        sink_count(&env, "hook", |c| &c.dead_lettered) == 1
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sink_count(&env, "hook", |c| &c.retried), 0, "not retried");
    assert_eq!(sink_count(&env, "hook", |c| &c.failed), 1);
    assert_eq!(sink_count(&env, "hook", |c| &c.dead_lettered), 1);
    for (_, headers, _) in rec.accepted.lock().iter() {
        assert!(headers.get("x-injected").is_none());
        assert!(headers.get("x-device").is_some());
    }
    let entry = dead.next_publish().await;
    assert_eq!(entry.topic, "dead/hook");
    let entry: serde_json::Value = serde_json::from_slice(&entry.payload).unwrap();
    assert_eq!(entry["sink"], "hook");
    assert_eq!(entry["record"]["n"], 3);
    assert!(
        entry["error"].as_str().unwrap().contains("X-Device")
            || entry["error"].as_str().unwrap().contains("x-device"),
        "{entry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_failing_past_their_ttl_go_to_a_dead_letter_sink() {
    let hook = start_receiver(None).await;
    // The destination answers 503 to everything.
    hook.recorded.fail_status.store(503, Ordering::SeqCst);
    hook.recorded.fail_count.store(usize::MAX, Ordering::SeqCst);
    let db_dir = tempfile::tempdir().unwrap();
    let db = db_dir.path().join("archive.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE dead (sink TEXT, error TEXT, n INTEGER)")
        .unwrap();
    let archive = rusqlite::Connection::open(&db).unwrap();
    let rule =
        r#"rule("forward").from(["dev/#"]).select(|m| #{ n: m.json.n }).to(webhook("down"));"#;
    let env = env_with(
        &[("forward.rhai", rule)],
        &[
            (
                "down",
                serde_json::json!({"kind": "webhook", "url": format!("http://{}/in", hook.addr),
                    "record_ttl_s": 1, "retry_initial_ms": 50, "retry_max_ms": 200,
                    "dead_letter": {"sink": "archive"}}),
            ),
            (
                "archive",
                serde_json::json!({"kind": "sqlite", "path": db,
                    "statement": "INSERT INTO dead (sink, error, n) VALUES (:sink, :error, json_extract(:record, '$.n'))"}),
            ),
        ],
    )
    .await;
    let p = publisher(&env, "gw").await;
    let started = Instant::now();
    for n in 0..5 {
        publish(&p, "dev/x", format!("{{\"n\":{n}}}")).await;
    }
    wait_until("given up and archived", || {
        sink_count(&env, "archive", |c| &c.sent) == 5
    })
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "kept trying for the TTL: {took:?}"
    );
    assert!(sink_count(&env, "down", |c| &c.retried) >= 3);
    assert_eq!(sink_count(&env, "down", |c| &c.failed), 5);
    assert_eq!(sink_count(&env, "down", |c| &c.dead_lettered), 5);
    let rows: Vec<(String, String, i64)> = archive
        .prepare("SELECT sink, error, n FROM dead ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert!(
        rows.iter().all(|r| r.0 == "down" && r.1.contains("503")),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_sinks_must_exist_and_not_chain() {
    let server = start(test_config()).await;
    let hook = |dead: serde_json::Value| -> SinkConfig {
        serde_json::from_value(serde_json::json!({"kind": "webhook", "url": "http://127.0.0.1:9/x", "dead_letter": dead}))
            .unwrap()
    };
    let cases = [
        (
            BTreeMap::from([("a".to_string(), hook(serde_json::json!({"sink": "nope"})))]),
            "not another configured sink",
        ),
        (
            BTreeMap::from([("a".to_string(), hook(serde_json::json!({"sink": "a"})))]),
            "not another configured sink",
        ),
        (
            BTreeMap::from([
                ("a".to_string(), hook(serde_json::json!({"sink": "b"}))),
                ("b".to_string(), hook(serde_json::json!({"sink": "a"}))),
            ]),
            "sends its own refusals to a sink",
        ),
    ];
    for (sinks, expected) in cases {
        let err = RuleEngine::start(RulesConfig::default(), sinks, server.broker.clone())
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(expected), "{err}");
    }
    let bad: Result<SinkConfig, _> = serde_json::from_value(
        serde_json::json!({"kind": "webhook", "url": "http://x/", "dead_letter": {"topic": "a/+"}}),
    );
    assert!(bad.unwrap_err().to_string().contains("not a topic name"));
}
