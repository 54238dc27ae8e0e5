//! The rule engine end to end: rule files in a watched folder, real MQTT clients publishing,
//! and real destinations (an HTTP receiver, SQLite files, the broker itself).

mod common;
use common::receiver::start_receiver;
use common::rules_env::*;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use switchyard_rules::{RuleEngine, RulesConfig};

const ALERTS: &str = r#"
let limit = 30.0;

rule("high-temp")
    .from(["sensors/+/temp"])
    .when(|m| m.json.temp > limit)
    .select(|m| #{ device: m.level(1), temp: m.json.temp, client: m.clientid })
    .to(webhook("alerts"))
    .to(webhook("refuser"));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gets_selected_outputs_retries_5xx_and_not_4xx() {
    let receiver = start_receiver(None).await;
    // The first three requests fail with 500: they must be retried, not lost.
    receiver.recorded.fail_status.store(500, Ordering::SeqCst);
    receiver.recorded.fail_count.store(3, Ordering::SeqCst);
    let env = env_with(
        &[("alerts.rhai", ALERTS)],
        &[
            (
                "alerts",
                serde_json::json!({"kind": "webhook", "url": format!("http://{}/alerts", receiver.addr),
                    "headers": {"x-device": "${device}"}, "retry_initial_ms": 20, "retry_max_ms": 100}),
            ),
            (
                "refuser",
                serde_json::json!({"kind": "webhook", "url": format!("http://{}/reject", receiver.addr),
                    "retry_initial_ms": 20}),
            ),
        ],
    )
    .await;
    let p = publisher(&env, "dev-pub").await;
    for (dev, t) in [
        ("a", 10.0),
        ("b", 35.5),
        ("c", 40.0),
        ("d", 20.0),
        ("e", 51.0),
    ] {
        publish(
            &p,
            &format!("sensors/{dev}/temp"),
            format!("{{\"temp\": {t}}}"),
        )
        .await;
    }
    let rec = receiver.recorded.clone();
    wait_until("three alerts delivered", || rec.count() == 3).await;
    let mut got: Vec<(String, f64, String)> = rec
        .bodies()
        .iter()
        .map(|b| {
            (
                b["device"].as_str().unwrap().to_string(),
                b["temp"].as_f64().unwrap(),
                b["client"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let pubber = "dev-pub".to_string();
    assert_eq!(
        got,
        vec![
            ("b".into(), 35.5, pubber.clone()),
            ("c".into(), 40.0, pubber.clone()),
            ("e".into(), 51.0, pubber),
        ]
    );
    let headers: Vec<String> = rec
        .accepted
        .lock()
        .iter()
        .map(|(_, h, _)| h["x-device"].to_str().unwrap().to_string())
        .collect();
    assert!(headers.contains(&"b".to_string()), "{headers:?}");
    let rules = &env.rules;
    wait_until("refusals counted", || {
        counter(rules, "refuser", "failed") == 3
    })
    .await;
    assert_eq!(counter(rules, "alerts", "sent"), 3);
    assert!(counter(rules, "alerts", "retried") >= 3, "500s retried");
    assert_eq!(counter(rules, "alerts", "failed"), 0);
    assert_eq!(
        counter(rules, "refuser", "retried"),
        0,
        "4xx is not retried"
    );
    assert_eq!(counter(rules, "refuser", "sent"), 0);
    let stats = rules.rule_stats("high-temp").unwrap();
    assert_eq!(stats.matched.load(Ordering::Relaxed), 5);
    assert_eq!(stats.passed.load(Ordering::Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_every_message_of_a_tree_with_bound_parameters() {
    let db_dir = tempfile::tempdir().unwrap();
    let db = db_dir.path().join("messages.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE messages (topic TEXT, payload TEXT, qos INTEGER, ts INTEGER)")
        .unwrap();
    let rule = r#"rule("store-all").from(["plant/#"]).to(database("store"));"#;
    let env = env_with(
        &[("store.rhai", rule)],
        &[(
            "store",
            serde_json::json!({"kind": "sqlite", "path": db,
                "statement": "INSERT INTO messages (topic, payload, qos, ts) VALUES (:topic, :payload, :qos, :ts)"}),
        )],
    )
    .await;
    let p = publisher(&env, "plc").await;
    for i in 0..20 {
        publish(
            &p,
            &format!("plant/line{}/m", i % 3),
            format!("v{i}'); DROP TABLE messages; --"),
        )
        .await;
    }
    publish(&p, "other/topic", "not stored").await;
    let rules = env.rules.clone();
    wait_until("20 rows written", || counter(&rules, "store", "sent") == 20).await;
    let rows: Vec<(String, String, i64)> = conn
        .prepare("SELECT topic, payload, qos FROM messages ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 20);
    // One publisher's messages arrive in publish order (one rule worker per publisher).
    let injected = "v4'); DROP TABLE messages; --";
    assert_eq!(
        rows[4],
        ("plant/line1/m".into(), injected.into(), 1),
        "bound as a parameter, stored as text, in order"
    );
    for (i, row) in rows.iter().enumerate() {
        assert!(row.1.starts_with(&format!("v{i}'")), "row {i}: {row:?}");
    }
    assert!(rows.iter().all(|r| r.0.starts_with("plant/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_missing_table_is_a_clear_start_error() {
    let db_dir = tempfile::tempdir().unwrap();
    let server = start(test_config()).await;
    let sinks = BTreeMap::from([(
        "store".to_string(),
        sink(
            serde_json::json!({"kind": "sqlite", "path": db_dir.path().join("x.db"),
            "statement": "INSERT INTO nowhere (a) VALUES (:a)"}),
        ),
    )]);
    let err = RuleEngine::start(RulesConfig::default(), sinks, server.broker.clone())
        .await
        .err()
        .expect("start refused")
        .to_string();
    assert!(
        err.contains("store") && err.contains("no such table: nowhere"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republish_reshapes_splits_arrays_and_cannot_loop() {
    let rules = r##"
rule("reshape")
    .from(["raw/+/batch"])
    .select(|m| {
        let device = m.level(1);
        m.json.readings.map(|r| #{ device: device, value: r * 2 })
    })
    .to(mqtt("processed"));

// Would feed itself forever if republished messages ran rules again.
rule("echo").from(["#"]).to(mqtt("echo"));
"##;
    let env = env_with(
        &[("republish.rhai", rules)],
        &[
            (
                "processed",
                serde_json::json!({"kind": "mqtt", "topic": "processed/${device}", "qos": 1}),
            ),
            (
                "echo",
                serde_json::json!({"kind": "mqtt", "topic": "echo/${topic}"}),
            ),
        ],
    )
    .await;
    let mut sub = v4::connect(v4::options(tcp_addr(&env.server), "watcher")).await;
    sub.subscribe("processed/#", v4::QoS::AtLeastOnce).await;
    sub.subscribe("echo/#", v4::QoS::AtLeastOnce).await;
    let p = publisher(&env, "gw").await;
    publish(&p, "raw/d7/batch", r#"{"readings": [1, 2, 3]}"#).await;
    let mut processed = Vec::new();
    let mut echoes = Vec::new();
    while processed.len() < 3 || echoes.is_empty() {
        let m = sub.next_publish().await;
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        if m.topic.starts_with("processed/") {
            assert_eq!(m.topic, "processed/d7");
            processed.push(body["value"].as_i64().unwrap());
        } else {
            echoes.push(m.topic.clone());
        }
    }
    processed.sort();
    assert_eq!(processed, vec![2, 4, 6]);
    assert_eq!(echoes, vec!["echo/raw/d7/batch".to_string()]);
    // Nothing more: neither the republished messages nor the echo ran rules again.
    sub.assert_no_publish(Duration::from_millis(300)).await;
    assert_eq!(counter(&env.rules, "echo", "matched"), 1);
}

/// Publishes `probe` until `seen` says the new behaviour is live; returns how long it took.
async fn until_live(
    p: &v4::Client,
    sub: &mut v4::Client,
    probe: &str,
    mut seen: impl FnMut(&str, &[u8]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < WAIT, "new rules never became live");
        publish(p, probe, "{\"v\": 1}").await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        while let Ok(Some(Ok(e))) = tokio::time::timeout_at(deadline, sub.events.recv()).await {
            if let v4::Event::Incoming(v4::Packet::Publish(m)) = e {
                if seen(&m.topic, &m.payload) {
                    return start.elapsed();
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_edit_broken_edit_and_delete() {
    let v1 = r#"rule("tag").from(["in/#"]).select(|m| #{ version: 1 }).to(mqtt("out"));"#;
    let env = env_with(
        &[("tag.rhai", v1)],
        &[(
            "out",
            serde_json::json!({"kind": "mqtt", "topic": "out/v${version}"}),
        )],
    )
    .await;
    let mut sub = v4::connect(v4::options(tcp_addr(&env.server), "s")).await;
    sub.subscribe("out/#", v4::QoS::AtMostOnce).await;
    let p = publisher(&env, "p").await;
    until_live(&p, &mut sub, "in/x", |t, _| t == "out/v1").await;

    let file = env.dir.path().join("tag.rhai");
    std::fs::write(&file, v1.replace("version: 1", "version: 2")).unwrap();
    let took = until_live(&p, &mut sub, "in/x", |t, _| t == "out/v2").await;
    assert!(took < Duration::from_secs(2), "edit live after {took:?}");
    println!("edit → live in {took:?}");

    // A broken edit: the running rules stay and the error names file:line:col.
    std::fs::write(
        &file,
        "rule(\"tag\").from([\"in/#\"]).select(|m| #{ version: 3 ).to(mqtt(\"out\"));",
    )
    .unwrap();
    let rules = env.rules.clone();
    wait_until("broken file reported", || !rules.last_errors().is_empty()).await;
    let err = rules.last_errors().join("\n");
    assert!(err.contains("tag.rhai:1:"), "{err}");
    // The same at GET /rules, with the rule still loaded.
    let status = http_json(env.server.http_addr.expect("http"), "/rules").await;
    assert!(
        status["last_reload_errors"][0]
            .as_str()
            .unwrap_or("")
            .contains("tag.rhai:1:"),
        "{status}"
    );
    assert_eq!(status["rules"][0]["name"], "tag");
    assert_eq!(status["sinks"][0]["name"], "out");
    until_live(&p, &mut sub, "in/x", |t, _| t == "out/v2").await;

    // Deleting the file removes its rules.
    std::fs::remove_file(&file).unwrap();
    wait_until("rules removed", || rules.rule_names().is_empty()).await;
    while sub.events.try_recv().is_ok() {}
    publish(&p, "in/x", "{}").await;
    sub.assert_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_limits_stop_the_rule_and_the_broker_keeps_serving() {
    let files = [
        (
            "loop.rhai",
            r#"rule("spin").from(["t/#"]).when(|m| { loop { } }).to(mqtt("out"));"#,
        ),
        (
            "grow.rhai",
            r#"rule("grow").from(["t/#"]).when(|m| { let s = "x"; loop { s += s; } }).to(mqtt("out"));"#,
        ),
        (
            "json.rhai",
            r#"rule("json").from(["t/#"]).when(|m| m.json.x > 1).to(mqtt("out"));"#,
        ),
        (
            "good.rhai",
            r#"rule("good").from(["t/#"]).select(|m| #{ ok: m.text }).to(mqtt("out"));"#,
        ),
    ];
    let env = env_with(
        &files,
        &[(
            "out",
            serde_json::json!({"kind": "mqtt", "topic": "out/good"}),
        )],
    )
    .await;
    let mut sub = v4::connect(v4::options(tcp_addr(&env.server), "s")).await;
    sub.subscribe("#", v4::QoS::AtLeastOnce).await;
    let p = publisher(&env, "p").await;
    for i in 0..3 {
        publish(&p, "t/x", format!("not json {i}")).await;
    }
    // Subscribers get every message, and the good rule still works.
    let mut direct = 0;
    let mut good = 0;
    while direct < 3 || good < 3 {
        let m = sub.next_publish().await;
        match m.topic.as_str() {
            "t/x" => direct += 1,
            "out/good" => good += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let rules = env.rules.clone();
    for name in ["spin", "grow", "json"] {
        let st = rules.rule_stats(name).unwrap();
        wait_until("failures counted", || {
            st.failed.load(Ordering::Relaxed) == 3
        })
        .await;
    }
    // Still serving at once.
    let start = Instant::now();
    publish(&p, "t/after", "x").await;
    assert_eq!(sub.next_publish().await.topic, "t/after");
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_files_cannot_eval_import_or_name_unknown_sinks() {
    let env = env_with(
        &[],
        &[("out", serde_json::json!({"kind": "mqtt", "topic": "o"}))],
    )
    .await;
    let cases = [
        ("eval.rhai", "let x = eval(\"40 + 2\");", "eval"),
        ("import.rhai", "import \"secrets\" as s;", "import"),
        (
            "sink.rhai",
            "\n\nrule(\"r\").from([\"a\"]).to(kafka(\"nope\"));",
            "sink.rhai:3:",
        ),
        (
            "kind.rhai",
            "rule(\"r\").from([\"a\"]).to(webhook(\"out\"));",
            "mqtt sink, not webhook",
        ),
        (
            "filter.rhai",
            "rule(\"r\").from([\"a/#/b\"]).to(\"out\");",
            "not a topic filter",
        ),
        ("nosink.rhai", "rule(\"r\").from([\"a\"]);", "sends nowhere"),
        (
            "file.rhai",
            "let f = open_file(\"/etc/passwd\");",
            "open_file",
        ),
    ];
    for (file, text, expect) in cases {
        let path = env.dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let errors = env.rules.reload().expect_err(file).to_string();
        assert!(
            errors.contains(file) && errors.contains(expect),
            "{file}: {errors}"
        );
        std::fs::remove_file(&path).unwrap();
    }
    assert_eq!(env.rules.reload().ok(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_events_reach_a_database_rule() {
    let db_dir = tempfile::tempdir().unwrap();
    let db = db_dir.path().join("events.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE events (clientid TEXT, reason TEXT)")
        .unwrap();
    let rule = r#"
on("client.disconnected")
    .when(|e| e.reason != "normal")
    .select(|e| #{ clientid: e.clientid, reason: e.reason })
    .to(database("events"));
"#;
    let env = env_with(
        &[("events.rhai", rule)],
        &[(
            "events",
            serde_json::json!({"kind": "sqlite", "path": db,
                "statement": "INSERT INTO events (clientid, reason) VALUES (:clientid, :reason)"}),
        )],
    )
    .await;
    let polite = publisher(&env, "polite").await;
    polite.client.disconnect().await.unwrap();
    let rude = publisher(&env, "rude").await;
    rude.kill().await;
    let rules = env.rules.clone();
    wait_until("event stored", || counter(&rules, "events", "sent") == 1).await;
    let rows: Vec<(String, String)> = conn
        .prepare("SELECT clientid, reason FROM events")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "rude");
    assert_ne!(rows[0].1, "normal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_buffer_keeps_undelivered_records_across_a_restart() {
    // Reserve a port for a receiver that is not running yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let buffer_dir = tempfile::tempdir().unwrap();
    let hook = serde_json::json!({"kind": "webhook", "url": format!("http://{addr}/in"),
        "buffer": "disk", "buffer_dir": buffer_dir.path(), "retry_initial_ms": 20, "retry_max_ms": 50});
    let rule = r#"rule("fwd").from(["d/#"]).select(|m| #{ n: m.json.n }).to(webhook("hook"));"#;
    let env = env_with(&[("fwd.rhai", rule)], &[("hook", hook.clone())]).await;
    let p = publisher(&env, "p").await;
    for n in 0..5 {
        publish(&p, "d/x", format!("{{\"n\": {n}}}")).await;
    }
    let rules = env.rules.clone();
    wait_until("all offered", || counter(&rules, "hook", "matched") == 5).await;
    wait_until("delivery failing", || {
        counter(&rules, "hook", "retried") > 0
    })
    .await;
    let left = env.rules.shutdown().await;
    assert_eq!(left, 5, "undelivered records reported at shutdown");

    let receiver = start_receiver(Some(addr)).await;
    let sinks = BTreeMap::from([("hook".to_string(), sink(hook))]);
    let again = RuleEngine::start(
        rules_config(env.dir.path()),
        sinks,
        env.server.broker.clone(),
    )
    .await
    .unwrap();
    let rec = receiver.recorded.clone();
    wait_until("kept records delivered", || rec.count() == 5).await;
    let mut ns: Vec<i64> = rec
        .bodies()
        .iter()
        .map(|b| b["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, vec![0, 1, 2, 3, 4]);
    assert_eq!(again.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_rules_load_with_the_example_config_and_work() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Same sinks, but the SQLite file goes to a temporary folder with the example schema.
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("messages.db");
    let sinks = example_sinks(&root.join("examples/rules"), &db);
    let server = switchyard::Switchyard::core(test_config())
        .rules(rules_config(&root.join("examples/rules")), sinks)
        .watch_files(false)
        .start()
        .await
        .unwrap();
    let rules = server.rules.clone();
    assert_eq!(rules.last_errors(), Vec::<String>::new());
    assert_eq!(rules.rule_names().len(), 5, "{:?}", rules.rule_names());

    let mut sub = v4::connect(v4::options(tcp_addr(&server), "s")).await;
    sub.subscribe("processed/#", v4::QoS::AtLeastOnce).await;
    let p = v4::connect(v4::options(tcp_addr(&server), "gw1")).await;
    publish(
        &p,
        "gateways/gw1/batch",
        r#"{"readings": [{"id": "t1", "v": 20}, {"id": "t2", "v": 25.5}]}"#,
    )
    .await;
    publish(&p, "factory/line1/speed", "42").await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = sub.next_publish().await;
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        got.push((m.topic.clone(), v["fahrenheit"].as_f64().unwrap()));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("processed/gw1/t1".to_string(), 68.0),
            ("processed/gw1/t2".to_string(), 77.9)
        ]
    );
    wait_until("factory message stored", || {
        counter(&rules, "store", "sent") == 1
    })
    .await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let row: (String, String) = conn
        .query_row("SELECT topic, payload FROM messages", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(row, ("factory/line1/speed".to_string(), "42".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_rule_queue_is_counted_and_never_slows_routing() {
    // One worker, a queue of one, and a rule that always runs to its 100 ms deadline.
    let slow = r#"rule("slow").from(["q/#"]).when(|m| { loop { } }).to(mqtt("out"));"#;
    let env = env_configured(
        &[("slow.rhai", slow)],
        &[("out", serde_json::json!({"kind": "mqtt", "topic": "o"}))],
        |c| {
            c.workers = 1;
            c.queue_size = 1;
        },
    )
    .await;
    let mut sub = v4::connect(v4::options(tcp_addr(&env.server), "s")).await;
    sub.subscribe("q/#", v4::QoS::AtLeastOnce).await;
    let p = publisher(&env, "p").await;
    let start = Instant::now();
    for i in 0..50 {
        publish(&p, "q/x", format!("{i}")).await;
    }
    for _ in 0..50 {
        sub.next_publish().await;
    }
    // 50 evaluations would take 5 s; routing did not wait for them.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let dropped = env.rules.counters().queue_dropped.load(Ordering::Relaxed);
    assert!(dropped >= 40, "queue overflow counted: {dropped}");
    let mut metrics = String::new();
    env.server.broker.render_metrics_sources(&mut metrics);
    let depth = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_rules_queue_depth "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(matches!(depth, Some(0 | 1)), "queue depth gauge: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_message_event_rules_see_events_and_cannot_loop() {
    let rules = r#"
on("session.subscribed").select(|e| #{ kind: "sub", who: e.clientid, what: e.topic }).to(mqtt("audit"));
on("message.delivered").select(|e| #{ kind: "delivered", who: e.clientid, what: e.topic }).to(mqtt("audit"));
on("message.acked").select(|e| #{ kind: "acked", who: e.clientid, what: e.topic }).to(mqtt("audit"));
"#;
    let env = env_with(
        &[("audit.rhai", rules)],
        &[("audit", serde_json::json!({"kind": "mqtt", "topic": "audit/${kind}", "payload": "${who} ${what}"}))],
    )
    .await;
    let mut auditor = v4::connect(v4::options(tcp_addr(&env.server), "auditor")).await;
    auditor.subscribe("audit/#", v4::QoS::AtLeastOnce).await;
    let mut reader = v4::connect(v4::options(tcp_addr(&env.server), "reader")).await;
    reader.subscribe("data/x", v4::QoS::AtLeastOnce).await;
    let p = publisher(&env, "p").await;
    publish(&p, "data/x", "hello").await;
    reader.next_publish().await;
    let mut seen = std::collections::BTreeSet::new();
    let want: std::collections::BTreeSet<(String, String)> = [
        ("audit/sub", "auditor audit/#"),
        ("audit/sub", "reader data/x"),
        ("audit/delivered", "reader data/x"),
        ("audit/acked", "reader data/x"),
    ]
    .iter()
    .map(|(t, p)| (t.to_string(), p.to_string()))
    .collect();
    while seen.len() < want.len() {
        let m = auditor.next_publish().await;
        let item = (
            m.topic.clone(),
            String::from_utf8_lossy(&m.payload).into_owned(),
        );
        assert!(want.contains(&item), "unexpected {item:?}");
        assert!(seen.insert(item.clone()), "twice: {item:?}");
    }
    // The audit messages delivered to the auditor raise no further events.
    auditor.assert_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_filters_select_the_same_messages_whether_run_natively_or_by_rhai() {
    // The first `when` is evaluated in Rust (and rejects on the routing thread); the second,
    // the same test written with a method call, always runs in Rhai. Both must agree.
    let rules = r#"
rule("native").from(["s/#"]).when(|m| m.json.temp > 30.0 && m.qos == 1 && m.level(1) != "skip").to(mqtt("hot"));
rule("rhai").from(["s/#"]).when(|m| m.json.temp > 30.0 && m.qos == 1 && m.topic.split("/")[1] != "skip").to(mqtt("hot"));
"#;
    let env = env_with(
        &[("hot.rhai", rules)],
        &[(
            "hot",
            serde_json::json!({"kind": "mqtt", "topic": "hot/${topic}"}),
        )],
    )
    .await;
    let mut sub = v4::connect(v4::options(tcp_addr(&env.server), "watcher")).await;
    sub.subscribe("hot/#", v4::QoS::AtLeastOnce).await;
    let p = publisher(&env, "sensor").await;
    let sent: [(&str, &str, v4::QoS); 6] = [
        ("s/a", r#"{"temp": 31.5}"#, v4::QoS::AtLeastOnce),
        ("s/b", r#"{"temp": 29}"#, v4::QoS::AtLeastOnce),
        ("s/c", r#"{"temp": 35}"#, v4::QoS::AtMostOnce),
        ("s/skip", r#"{"temp": 40}"#, v4::QoS::AtLeastOnce),
        ("s/d", "not json", v4::QoS::AtLeastOnce),
        ("s/e", r#"{"temp": 30.5}"#, v4::QoS::AtLeastOnce),
    ];
    for (topic, payload, qos) in sent {
        p.client.publish(topic, qos, false, payload).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(sub.next_publish().await.topic);
    }
    got.sort();
    assert_eq!(got, ["hot/s/a", "hot/s/a", "hot/s/e", "hot/s/e"]);
    sub.assert_no_publish(Duration::from_millis(300)).await;
    for name in ["native", "rhai"] {
        let st = env.rules.rule_stats(name).unwrap();
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(
            (g(&st.matched), g(&st.passed), g(&st.failed)),
            (6, 2, 1),
            "{name}: the non-JSON payload is an error for both"
        );
    }
    let status = env.server.broker.status_of("rules").unwrap();
    let when: Vec<_> = ["native", "rhai"]
        .iter()
        .map(|n| {
            status["rules"]
                .as_array()
                .and_then(|rules| rules.iter().find(|r| r["name"] == *n))
                .map(|r| r["when"].clone())
        })
        .collect();
    assert_eq!(
        when,
        [Some("native".into()), Some("rhai".into())],
        "{status}"
    );
}
