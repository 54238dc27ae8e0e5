//! Rule work keeps each publisher's order (several workers, under load), and
//! `overflow = "backpressure"` holds a publisher instead of dropping its messages.

mod common;
use common::rules_env::*;
use common::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use switchyard_rules::config::Overflow;

/// Rows `(publisher, n)` in the order the sink wrote them.
fn rows(db: &std::path::Path) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT publisher, n FROM readings ORDER BY rowid")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_keep_each_publishers_order_under_load() {
    const PUBLISHERS: usize = 8;
    const EACH: i64 = 600;
    let db_dir = tempfile::tempdir().unwrap();
    let db = db_dir.path().join("order.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE readings (publisher TEXT, n INTEGER)")
        .unwrap();
    // Rhai work of uneven cost per message, so workers would overtake each other.
    let rule = r#"
rule("ordered")
    .from(["line/#"])
    .select(|m| {
        let n = m.json.n;
        let spin = (n * 7919) % 50;
        let x = 0;
        for i in 0..spin { x += i; }
        #{ publisher: m.clientid, n: n }
    })
    .to(database("store"));
"#;
    let env = env_configured(
        &[("ordered.rhai", rule)],
        &[(
            "store",
            serde_json::json!({"kind": "sqlite", "path": db,
                "statement": "INSERT INTO readings (publisher, n) VALUES (:publisher, :n)"}),
        )],
        |c| c.workers = 4,
    )
    .await;
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        publishers.push(publisher(&env, &format!("dev-{p}")).await);
    }
    // All publishers at once; each one's messages go to three topics.
    let sends = publishers.iter().enumerate().map(|(p, c)| async move {
        for n in 0..EACH {
            let topic = format!("line/{}/dev-{p}", n % 3);
            publish(c, &topic, format!("{{\"n\":{n}}}")).await;
        }
    });
    futures_util::future::join_all(sends).await;
    let rules = env.rules.clone();
    let total = PUBLISHERS as u64 * EACH as u64;
    wait_until("every reading stored", || {
        counter(&rules, "store", "sent") == total
    })
    .await;
    assert_eq!(
        env.rules.counters().queue_dropped.load(Ordering::Relaxed),
        0
    );
    let rows = rows(&db);
    assert_eq!(rows.len() as u64, total);
    for p in 0..PUBLISHERS {
        let id = format!("dev-{p}");
        let mine: Vec<i64> = rows.iter().filter(|r| r.0 == id).map(|r| r.1).collect();
        let expected: Vec<i64> = (0..EACH).collect();
        assert_eq!(mine, expected, "{id}'s readings in publish order");
    }
}

/// One worker, a queue of 4 and a rule that takes ~20 ms per message: `messages` QoS 1
/// publishes; returns (stored, dropped, waits, how long the publisher took).
async fn slow_rule_run(overflow: Overflow, messages: usize) -> (u64, u64, u64, Duration) {
    let db_dir = tempfile::tempdir().unwrap();
    let db = db_dir.path().join("held.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE readings (publisher TEXT, n INTEGER)")
        .unwrap();
    let rule = r#"
rule("slow")
    .from(["slow/#"])
    .select(|m| {
        let t = now();
        while now() - t < 20 { }
        #{ publisher: m.clientid, n: m.json.n }
    })
    .to(database("store"));
"#;
    let env = env_configured(
        &[("slow.rhai", rule)],
        &[(
            "store",
            serde_json::json!({"kind": "sqlite", "path": db,
                "statement": "INSERT INTO readings (publisher, n) VALUES (:publisher, :n)"}),
        )],
        |c| {
            c.workers = 1;
            c.queue_size = 4;
            c.overflow = overflow;
        },
    )
    .await;
    let mut p = publisher(&env, "held").await;
    let start = Instant::now();
    for n in 0..messages {
        publish(&p, "slow/x", format!("{{\"n\":{n}}}")).await;
    }
    // The broker acknowledges a publish only after the rule queue took it (or dropped it).
    let mut acks = 0;
    while acks < messages {
        p.expect(|pk| matches!(pk, v4::Packet::PubAck(_)).then_some(()))
            .await;
        acks += 1;
    }
    let took = start.elapsed();
    let rules = env.rules.clone();
    let counters = env.rules.counters();
    let dropped = counters.queue_dropped.load(Ordering::Relaxed);
    let expect = messages as u64 - dropped;
    wait_until("the rule's outputs stored", || {
        counter(&rules, "store", "sent") == expect
    })
    .await;
    let stored = rows(&db).len() as u64;
    (
        stored,
        dropped,
        counters.backpressure_waits.load(Ordering::Relaxed),
        took,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_holds_the_publisher_instead_of_dropping() {
    const N: usize = 40;
    let (stored, dropped, waits, took) = slow_rule_run(Overflow::Backpressure, N).await;
    assert_eq!(dropped, 0, "nothing dropped under backpressure");
    assert_eq!(stored, N as u64, "every message reached the sink");
    assert!(waits > 0, "the publisher was held");
    // 40 evaluations of 20 ms, at most 5 of them (queue + the one running) ahead of the
    // acknowledgements: the publisher could not finish before ~35 of them ran.
    assert!(took >= Duration::from_millis(600), "held for {took:?}");

    // The default drops instead, and counts it.
    let (stored, dropped, waits, _) = slow_rule_run(Overflow::Drop, N).await;
    assert!(dropped > 0, "the default drops when full");
    assert_eq!(stored + dropped, N as u64);
    assert_eq!(waits, 0);
}
