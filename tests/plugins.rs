//! WASM plugins in the running broker: the example ACL plugin over real clients, and the
//! sandbox: a looping, an allocating and a trapping plugin fail closed, are reported and
//! disabled, and the broker keeps serving. `scripts/build-plugins` (run by `scripts/test`)
//! builds the components into target/plugins/.

mod common;
use common::*;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::protocol::{ProtocolVersion, ReasonCode};
use switchyard_plugins::{LoadError, OnError, PluginManager, PluginSettings, WasmPlugin};

fn settings(name: &str, config: serde_json::Value) -> PluginSettings {
    PluginSettings {
        config,
        timeout_ms: 50,
        on_error: OnError::Deny,
        ..PluginSettings::for_path(plugin_path(name))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_plugin_allows_and_denies_publish_and_subscribe() {
    let server = start(test_config()).await;
    let acl = WasmPlugin::load(settings(
        "acl",
        json!({"default": "deny", "rules": [
            {"permission": "allow", "action": "all", "topic": "users/%u/#"},
            {"permission": "allow", "action": "subscribe", "topic": "public/#"}
        ]}),
    ))
    .await
    .unwrap();
    server
        .broker
        .hooks
        .register(acl.priority(), acl.hook())
        .unwrap();
    let addr = tcp_addr(&server);

    let mut o = v5::options(addr, "alice5");
    o.set_credentials("alice", "");
    let mut alice = v5::connect(o).await;
    assert_eq!(
        alice.subscribe("users/alice/#", v5::QoS::AtLeastOnce).await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
    );
    assert_eq!(
        alice.subscribe("users/bob/#", v5::QoS::AtLeastOnce).await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    alice
        .client
        .publish("users/bob/inbox", v5::QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let reason = alice.next_puback_reason().await;
    assert_eq!(
        reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
    );
    alice
        .client
        .publish("users/alice/inbox", v5::QoS::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    assert_eq!(&alice.next_publish().await.payload[..], b"mine");

    let mut o = v4::options(addr, "bob3");
    o.set_credentials("bob", "");
    let mut bob = v4::connect(o).await;
    assert_eq!(
        bob.subscribe("users/alice/#", v4::QoS::AtMostOnce).await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    assert_eq!(
        bob.subscribe("public/news", v4::QoS::AtMostOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(v4::QoS::AtMostOnce)]
    );
    // Guests keep each client's record by handle: interleaved calls never see the other one.
    for _ in 0..3 {
        assert_eq!(
            alice
                .subscribe("users/alice/more", v5::QoS::AtLeastOnce)
                .await,
            vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
        );
        assert_eq!(
            bob.subscribe("users/bob/more", v4::QoS::AtMostOnce).await,
            vec![rumqttc::SubscribeReasonCode::Success(v4::QoS::AtMostOnce)]
        );
        assert_eq!(
            bob.subscribe("users/alice/more", v4::QoS::AtMostOnce).await,
            vec![rumqttc::SubscribeReasonCode::Failure]
        );
    }
}

/// A plugin that misbehaves on every call: connecting through it fails closed, the failure is
/// counted, the plugin's breaker opens, and a client connected before keeps working.
async fn misbehaving_plugin_fails_closed(mode: &str) {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut bystander = v4::connect(v4::options(addr, "bystander")).await;
    bystander.subscribe("by/#", v4::QoS::AtLeastOnce).await;

    let plugin = WasmPlugin::load(settings("misbehave", json!({ "mode": mode })))
        .await
        .unwrap();
    server.broker.hooks.register(0, plugin.hook()).unwrap();
    for i in 0..6 {
        let mut raw = Raw::connect(addr).await;
        let started = Instant::now();
        let ack = raw
            .handshake(ProtocolVersion::V5, &format!("victim-{i}"))
            .await;
        assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{mode}: fails closed");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{mode}: took {:?}",
            started.elapsed()
        );
    }
    assert!(plugin.failures() >= 5, "{mode}: failures counted");
    assert!(
        plugin.breaker_state() == "open",
        "{mode}: breaker open after repeated failures"
    );
    // New clients still go through the plugin, whose open breaker fails closed at once.
    let started = Instant::now();
    assert!(v4::connect_any(v4::options(addr, "late")).await.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{mode}: an open breaker answers at once"
    );
    // The client connected before keeps being served at normal speed (its authorization goes
    // through the same fail-closed plugin, so its new subscription is refused, promptly).
    let started = Instant::now();
    assert_eq!(
        bystander.subscribe("by/more", v4::QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_plugin_is_interrupted_and_fails_closed() {
    misbehaving_plugin_fails_closed("loop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocating_plugin_hits_its_memory_cap_and_fails_closed() {
    misbehaving_plugin_fails_closed("alloc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_plugin_fails_closed() {
    misbehaving_plugin_fails_closed("trap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_components_and_failing_init_are_load_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").unwrap();
    let mut s = settings("acl", json!({}));
    s.path = junk;
    assert!(matches!(
        WasmPlugin::load(s).await,
        Err(LoadError::Compile { .. })
    ));
    // The ACL plugin refuses a config it cannot parse: init fails, nothing is loaded.
    let err = WasmPlugin::load(settings("acl", json!({"rules": "not a list"})))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::Init { .. }), "{err}");
    let _ = Arc::new(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_a_stream_of_connections_neither_refuses_nor_admits_wrongly() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut cfg = test_config();
    // Without the plugin nobody gets in: a moment without it would show as a refusal.
    cfg.mqtt.allow_anonymous = false;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate.wasm");
    std::fs::copy(plugin_path("misbehave"), &gate).unwrap();
    let mut entry = PluginSettings::for_path(gate.clone());
    entry.config = json!({"mode": "gate"});
    let manager = PluginManager::new(
        server.broker.clone(),
        vec![entry],
        Some(dir.path().to_path_buf()),
    );
    manager.start().await.unwrap();
    let _watcher = manager.watch();
    assert_eq!(manager.version(&gate), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, wrong) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stream = {
        let (stop, ok, wrong) = (stop.clone(), ok.clone(), wrong.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Every other client must be refused by the gate.
                let welcome = i.is_multiple_of(2);
                let id = if welcome {
                    format!("ok-{i}")
                } else {
                    format!("bad-{i}")
                };
                let mut raw = Raw::connect(addr).await;
                let admitted =
                    raw.handshake(ProtocolVersion::V5, &id).await.code == ReasonCode::SUCCESS;
                if admitted != welcome {
                    wrong.fetch_add(1, Ordering::Relaxed);
                } else if admitted {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        })
    };
    for round in 2..=4u64 {
        // A new version of the file (same plugin, new bytes on disk): picked up by the watcher.
        std::fs::copy(plugin_path("misbehave"), &gate).unwrap();
        wait_until("the new version is live", || {
            manager.version(&gate) >= round
        })
        .await;
    }
    // A broken version is refused and the running one keeps serving.
    std::fs::write(&gate, b"\0asm broken").unwrap();
    let before = ok.load(Ordering::Relaxed);
    wait_until("connections keep succeeding", || {
        ok.load(Ordering::Relaxed) > before + 10
    })
    .await;
    // Operators see the refused file and the version still running at GET /plugins.
    let http = server.http_addr.expect("http endpoint");
    let status = wait_for_json(http, "/plugins", "the broken file is reported", |v| {
        v["load_errors"].as_array().is_some_and(|e| {
            e.iter()
                .any(|x| x.as_str().unwrap_or("").contains("gate.wasm"))
        })
    })
    .await;
    let gate_status = status["plugins"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "gate"))
        .expect("gate listed");
    assert!(gate_status["version"].as_u64() >= Some(4), "{gate_status}");
    stop.store(true, Ordering::Relaxed);
    stream.await.unwrap();
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "no client refused or admitted wrongly during the swaps"
    );
    assert!(ok.load(Ordering::Relaxed) > 25);
    assert!(manager.version(&gate) >= 4);
    // A second plugin dropped into the folder is picked up; deleting it removes it.
    let extra = dir.path().join("extra-acl.wasm");
    std::fs::copy(plugin_path("acl"), &extra).unwrap();
    wait_until("the dropped-in plugin is loaded", || {
        manager.version(&extra) == 1
    })
    .await;
    assert!(server
        .broker
        .hooks
        .names()
        .contains(&"extra-acl".to_string()));
    std::fs::remove_file(&extra).unwrap();
    wait_until("the deleted plugin is gone", || {
        !server
            .broker
            .hooks
            .names()
            .contains(&"extra-acl".to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_plugin_modifies_matching_messages_and_drops_oversized_ones() {
    let server = start(test_config()).await;
    let enrich = WasmPlugin::load(settings(
        "enrich",
        json!({"topics": ["sensors/#"], "max_payload": 16}),
    ))
    .await
    .unwrap();
    server.broker.hooks.register(0, enrich.hook()).unwrap();
    let addr = tcp_addr(&server);
    let mut sub = v5::connect(v5::options(addr, "reader")).await;
    sub.subscribe("#", v5::QoS::AtLeastOnce).await;
    let p = v5::connect(v5::options(addr, "sensor-7")).await;
    let props = v5::PublishProperties {
        user_properties: vec![("unit".into(), "C".into())],
        ..Default::default()
    };
    p.client
        .publish_with_properties("sensors/7/temp", v5::QoS::AtLeastOnce, false, "21.5", props)
        .await
        .unwrap();
    p.client
        .publish("sensors/7/blob", v5::QoS::AtLeastOnce, false, vec![0u8; 64])
        .await
        .unwrap();
    p.client
        .publish("other/topic", v5::QoS::AtLeastOnce, false, vec![1u8; 64])
        .await
        .unwrap();

    let m = sub.next_publish().await;
    assert_eq!(&m.topic[..], b"sensors/7/temp");
    let user = m.properties.unwrap().user_properties;
    assert_eq!(
        user[0],
        ("unit".to_string(), "C".to_string()),
        "existing properties kept, in order"
    );
    assert_eq!(user[2], ("client_id".to_string(), "sensor-7".to_string()));
    let at: u64 = user[1].1.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(user[1].0 == "received_at" && at <= now && now - at < 10_000);
    // The oversized sensor payload was dropped; other topics are not touched.
    let m = sub.next_publish().await;
    assert_eq!(&m.topic[..], b"other/topic");
    assert!(m.properties.is_none_or(|p| p.user_properties.is_empty()));
}

/// A guest written in C against the WIT file alone (no SDK): the WIT world is the whole contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_in_c_built_from_the_wit_file_alone_works() {
    let server = start(test_config()).await;
    let c = WasmPlugin::load(settings("c_deny", json!({})))
        .await
        .unwrap();
    server.broker.hooks.register(0, c.hook()).unwrap();
    let mut client = v5::connect(v5::options(tcp_addr(&server), "c-user")).await;
    for _ in 0..3 {
        // Repeated calls on the same warm instance (its allocator restarts per call).
        assert_eq!(
            client.subscribe("c-denied/x", v5::QoS::AtMostOnce).await,
            vec![v5::SubscribeReasonCode::NotAuthorized]
        );
        assert_eq!(
            client.subscribe("c-allowed/x", v5::QoS::AtMostOnce).await,
            vec![v5::SubscribeReasonCode::Success(v5::QoS::AtMostOnce)]
        );
    }
    assert_eq!(c.failures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_answers_are_cached_per_client_when_configured() {
    let server = start(test_config()).await;
    let mut s = settings(
        "acl",
        json!({"default": "deny", "rules": [{"permission": "allow", "action": "all", "topic": "ok/#"}]}),
    );
    s.authorize_cache_ms = 60_000;
    let acl = WasmPlugin::load(s).await.unwrap();
    server.broker.hooks.register(0, acl.hook()).unwrap();
    let mut c = v5::connect(v5::options(tcp_addr(&server), "cached")).await;
    for _ in 0..5 {
        c.client
            .publish("ok/t", v5::QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
        c.expect(|p| matches!(p, v5::Packet::PubAck(_)).then_some(()))
            .await;
    }
    assert_eq!(
        acl.calls(),
        1,
        "one guest call, four answers from the cache"
    );
    assert_eq!(
        c.subscribe("no/t", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    assert_eq!(acl.calls(), 2, "another topic is asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_with_on_error_ignore_passes_the_decision_to_the_next_one() {
    let server = start(test_config()).await;
    let mut broken = settings("misbehave", json!({"mode": "trap"}));
    broken.on_error = OnError::Ignore;
    let broken = WasmPlugin::load(broken).await.unwrap();
    let mut acl = settings(
        "acl",
        json!({"default": "deny", "rules": [{"permission": "allow", "action": "all", "topic": "fine/#"}]}),
    );
    acl.priority = 10;
    let acl = WasmPlugin::load(acl).await.unwrap();
    // Registered in reverse: the chain orders by priority, so the broken plugin asks first.
    server
        .broker
        .hooks
        .register(acl.priority(), acl.hook())
        .unwrap();
    server.broker.hooks.register(0, broken.hook()).unwrap();
    assert_eq!(
        server.broker.hooks.names()[..2],
        ["misbehave".to_string(), "acl".to_string()]
    );
    let mut c = v5::connect(v5::options(tcp_addr(&server), "chained")).await;
    assert_eq!(
        c.subscribe("fine/x", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtMostOnce)]
    );
    assert_eq!(
        c.subscribe("other/x", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    assert!(
        broken.failures() >= 2,
        "the broken plugin was asked first and failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_message_events_reach_plugins_that_ask_for_them() {
    let server = start(test_config()).await;
    let plugin = WasmPlugin::load(settings("misbehave", json!({"mode": "events"})))
        .await
        .unwrap();
    server.broker.hooks.register(0, plugin.hook()).unwrap();
    let mut o = v5::options(tcp_addr(&server), "watched");
    o.set_credentials("wu", "");
    let mut c = v5::connect(o).await;
    c.subscribe("ev/t", v5::QoS::AtLeastOnce).await;
    c.client
        .publish("ev/t", v5::QoS::AtLeastOnce, false, "m")
        .await
        .unwrap();
    c.next_publish().await;
    c.client.unsubscribe("ev/t").await.unwrap();
    c.expect(|p| matches!(p, v5::Packet::UnsubAck(_)).then_some(()))
        .await;
    c.client.disconnect().await.unwrap();
    c.expect_closed().await;
    let log = || String::from_utf8(plugin.kv_get("events").unwrap_or_default()).unwrap_or_default();
    wait_until("the plugin saw the disconnect", || {
        log().contains("watched=disconnected(")
    })
    .await;
    let log = log();
    let order: Vec<usize> = [
        "watched=connected;",
        "watched=subscribed(ev/t);",
        // Typed message events, with the receiving client's own record (its user name).
        "watched=delivered(ev/t|wu);",
        "watched=acked(ev/t|wu);",
        "watched=unsubscribed(ev/t);",
        "watched=disconnected(",
    ]
    .iter()
    .map(|e| {
        log.find(e)
            .unwrap_or_else(|| panic!("{e} missing in {log}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {log}");
    assert_eq!(plugin.events_dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_failures_and_an_open_breaker_show_in_metrics() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut entry = settings("misbehave", json!({ "mode": "trap" }));
    entry.path = plugin_path("misbehave");
    let manager = PluginManager::new(server.broker.clone(), vec![entry], None);
    manager.start().await.unwrap();
    for i in 0..6 {
        let mut raw = Raw::connect(addr).await;
        let ack = raw.handshake(ProtocolVersion::V5, &format!("v{i}")).await;
        assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED);
    }
    let http = server.http_addr.expect("http endpoint");
    let (status, body) = http_get(http, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    let value = |name: &str| -> u64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{body}"))
    };
    assert!(value("switchyard_plugin_failures_total{plugin=\"misbehave\"}") >= 5);
    assert_eq!(
        value("switchyard_plugin_breaker_open{plugin=\"misbehave\"}"),
        1
    );
}
