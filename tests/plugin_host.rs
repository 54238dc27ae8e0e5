//! The plugin host under attack and under an operator: a sleeping plugin is cut off by its
//! deadline, the breaker opens, probes and closes, host-side failures are not held against a
//! plugin, a required plugin removed admits nobody, hook ids keep plugins from evicting each
//! other, log and kv quotas hold, and a stricter hot-swapped version is in force at once.

mod common;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::hooks::{Hook, HookSet};
use switchyard_core::protocol::{ProtocolVersion, ReasonCode};
use switchyard_plugins::{LoadError, OnError, PluginManager, PluginSettings, WasmPlugin};

fn settings(path: PathBuf, config: serde_json::Value) -> PluginSettings {
    PluginSettings {
        config,
        on_error: OnError::Deny,
        ..PluginSettings::for_path(path)
    }
}

/// A CONNECT of `id`; its CONNACK code.
async fn connack(addr: std::net::SocketAddr, id: &str) -> ReasonCode {
    Raw::connect(addr)
        .await
        .handshake(ProtocolVersion::V5, id)
        .await
        .code
}

/// Replaces `to` with `from` the way an operator should: a copy beside it, then a rename.
fn replace_by_rename(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_plugin_answers_every_connect_within_its_deadline() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut bystander = v5::connect(v5::options(addr, "bystander")).await;
    let mut s = settings(plugin_path("misbehave"), json!({"mode": "sleep"}));
    s.timeout_ms = 200;
    let plugin = WasmPlugin::load(s).await.unwrap();
    server.broker.hooks.register(0, plugin.hook()).unwrap();

    let started = Instant::now();
    assert_eq!(connack(addr, "sleepy-0").await, ReasonCode::NOT_AUTHORIZED);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "one CONNECT took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let all: Vec<_> = (0..20)
        .map(|i| tokio::spawn(async move { connack(addr, &format!("sleepy-{}", i + 1)).await }))
        .collect();
    for c in all {
        assert_eq!(c.await.unwrap(), ReasonCode::NOT_AUTHORIZED, "fails closed");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "20 CONNECTs took {:?}",
        started.elapsed()
    );
    // Waiting is refused at once: the failures are the guest's, and its breaker opened.
    assert!(plugin.failures() >= 5, "failures: {}", plugin.failures());
    assert_eq!(plugin.host_failures(), 0);
    assert_eq!(plugin.breaker_state(), "open");
    // A client connected before is served at once (its subscription meets the open breaker,
    // which fails closed without calling the guest).
    let started = Instant::now();
    assert_eq!(
        bystander.subscribe("by/t", v5::QoS::AtLeastOnce).await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_probes_after_its_backoff_and_closes_on_success() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut s = settings(plugin_path("misbehave"), json!({"mode": "fickle"}));
    s.breaker_failures = 3;
    s.breaker_backoff_ms = 300;
    let plugin = WasmPlugin::load(s).await.unwrap();
    server.broker.hooks.register(0, plugin.hook()).unwrap();

    assert_eq!(connack(addr, "good-0").await, ReasonCode::SUCCESS);
    for i in 0..3 {
        assert_eq!(
            connack(addr, &format!("boom-{i}")).await,
            ReasonCode::NOT_AUTHORIZED
        );
    }
    let opened = Instant::now();
    assert_eq!(plugin.breaker_state(), "open");
    // Open: a client the plugin would admit is refused without a guest call.
    let calls = plugin.calls();
    assert_eq!(connack(addr, "good-1").await, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(plugin.calls(), calls, "no guest call while open");
    assert!(plugin.rejected() >= 1);

    // After the back-off one call probes; a failing probe opens it again, back-off doubled.
    let mut n = 0;
    let mut probe_sent = Instant::now();
    while plugin.calls() == calls {
        n += 1;
        probe_sent = Instant::now();
        assert_eq!(
            connack(addr, &format!("boom-probe-{n}")).await,
            ReasonCode::NOT_AUTHORIZED
        );
        assert!(opened.elapsed() < WAIT, "no probe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(300),
        "probed after {:?}",
        opened.elapsed()
    );
    assert_eq!(plugin.breaker_state(), "open");
    // It reopened after the probe was sent: the doubled back-off runs from then on.
    let reopened = probe_sent;
    let mut n = 0;
    loop {
        n += 1;
        if connack(addr, &format!("good-probe-{n}")).await == ReasonCode::SUCCESS {
            break;
        }
        assert!(reopened.elapsed() < WAIT, "never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reopened.elapsed() >= Duration::from_millis(600),
        "second back-off doubled: {:?}",
        reopened.elapsed()
    );
    assert_eq!(plugin.breaker_state(), "closed");
    assert_eq!(connack(addr, "good-2").await, ReasonCode::SUCCESS);

    // Open again; a reset (what SIGHUP does) closes it at once.
    for i in 0..3 {
        connack(addr, &format!("boom-again-{i}")).await;
    }
    assert_eq!(plugin.breaker_state(), "open");
    plugin.reset_breaker();
    assert_eq!(connack(addr, "good-3").await, ReasonCode::SUCCESS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_side_failures_do_not_count_against_the_plugin() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut s = settings(
        plugin_path("misbehave"),
        json!({"mode": "spin", "spin_ms": 100}),
    );
    s.timeout_ms = 150;
    s.max_instances = 1;
    s.instances = 1;
    s.breaker_failures = 1;
    let plugin = WasmPlugin::load(s).await.unwrap();
    server.broker.hooks.register(0, plugin.hook()).unwrap();

    // One instance, 100 ms a call, 1.1 s to find an instance: of 16 at once, the first ones are
    // admitted and the rest find no instance in time.
    let all: Vec<_> = (0..16)
        .map(|i| tokio::spawn(async move { connack(addr, &format!("queued-{i}")).await }))
        .collect();
    let mut admitted = 0;
    for c in all {
        if c.await.unwrap() == ReasonCode::SUCCESS {
            admitted += 1;
        }
    }
    assert!(admitted >= 1, "some admitted");
    assert!(plugin.host_failures() >= 1, "some found no instance");
    assert_eq!(admitted as u64 + plugin.host_failures(), 16);
    assert_eq!(plugin.failures(), 0, "nothing held against the plugin");
    assert_eq!(
        plugin.breaker_state(),
        "closed",
        "a threshold of 1 still closed"
    );
    assert_eq!(connack(addr, "after").await, ReasonCode::SUCCESS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_plugin_removed_refuses_everyone_until_it_is_back() {
    let mut cfg = test_config();
    // Without the gate everyone would get in: any moment without it shows.
    cfg.mqtt.allow_anonymous = true;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let http = server.http_addr.expect("http");
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate.wasm");
    std::fs::copy(plugin_path("misbehave"), &gate).unwrap();
    let mut s = settings(gate.clone(), json!({"mode": "gate"}));
    s.required = true;
    let manager = PluginManager::new(server.broker.clone(), vec![s], None);
    manager.start().await.unwrap();
    let _watcher = manager.watch();

    // A stream of clients the gate refuses, while the file is swapped three times at shell
    // speed (rm, then cp).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut tried, mut wrongly_in) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tried += 1;
                if connack(addr, &format!("intruder-{tried}")).await == ReasonCode::SUCCESS {
                    wrongly_in += 1;
                }
            }
            (tried, wrongly_in)
        })
    };
    for _ in 0..3 {
        let version = manager.version(&gate);
        std::fs::remove_file(&gate).unwrap();
        std::fs::copy(plugin_path("misbehave"), &gate).unwrap();
        wait_until("the swapped file is loaded", || {
            manager.version(&gate) > version
        })
        .await;
    }
    // Removed for good: the stand-in refuses even those the gate admits, and /health says why.
    std::fs::remove_file(&gate).unwrap();
    let health = wait_for_json(http, "/health", "degraded", |h| h["status"] == "degraded").await;
    assert!(
        health["problems"][0].as_str().unwrap().contains("gate"),
        "{health}"
    );
    assert_eq!(
        connack(addr, "ok-while-missing").await,
        ReasonCode::SERVER_UNAVAILABLE
    );
    let plugins = http_json(http, "/plugins").await;
    assert_eq!(plugins["missing"][0]["required"], true, "{plugins}");
    // Back: admitted again.
    replace_by_rename(&plugin_path("misbehave"), &gate);
    wait_for_json(http, "/health", "ok again", |h| h["status"] == "ok").await;
    assert_eq!(connack(addr, "ok-back").await, ReasonCode::SUCCESS);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (tried, wrongly_in) = stream.await.unwrap();
    assert!(tried > 10, "the stream ran ({tried})");
    assert_eq!(wrongly_in, 0, "nobody the gate refuses got in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_auth_plugin_is_reported_in_health_until_acknowledged() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let http = server.http_addr.expect("http");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fickle.wasm");
    std::fs::copy(plugin_path("misbehave"), &file).unwrap();
    let manager = PluginManager::new(
        server.broker.clone(),
        vec![settings(file.clone(), json!({"mode": "fickle"}))],
        None,
    );
    manager.start().await.unwrap();
    assert_eq!(connack(addr, "boom-1").await, ReasonCode::NOT_AUTHORIZED);
    std::fs::remove_file(&file).unwrap();
    manager.reload().await;
    let health = http_json(http, "/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["problems"][0].as_str().unwrap().contains("removed"),
        "{health}"
    );
    // Not required: clients now meet the listener's default (anonymous allowed here).
    assert_eq!(connack(addr, "boom-2").await, ReasonCode::SUCCESS);
    // SIGHUP's reset acknowledges the removal.
    manager.reset_breakers();
    assert_eq!(http_json(http, "/health").await["status"], "ok");
}

/// A hook under the rule engine's id, as the engine registers itself.
struct RulesLike;

#[async_trait::async_trait]
impl Hook for RulesLike {
    fn name(&self) -> &str {
        "rules"
    }
    fn interests(&self) -> HookSet {
        HookSet::MESSAGE_ACCEPTED
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_are_identified_by_kind_and_path_and_duplicates_are_refused() {
    let server = start(test_config()).await;
    server
        .broker
        .hooks
        .register(0, Arc::new(RulesLike))
        .unwrap();
    assert!(
        server
            .broker
            .hooks
            .register(0, Arc::new(RulesLike))
            .is_err(),
        "a second hook with one id is refused"
    );
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    // A plugin file named like the rule engine, and two plugins of one name in two folders.
    std::fs::copy(plugin_path("misbehave"), a.path().join("rules.wasm")).unwrap();
    std::fs::copy(plugin_path("acl"), a.path().join("acl.wasm")).unwrap();
    std::fs::copy(plugin_path("acl"), b.path().join("acl.wasm")).unwrap();
    let entries = vec![settings(b.path().join("acl.wasm"), json!({}))];
    let manager = PluginManager::new(server.broker.clone(), entries, Some(a.path().into()));
    manager.start().await.unwrap();
    let ids = server.broker.hooks.ids();
    assert!(ids.contains(&"rules".to_string()), "{ids:?}");
    for file in [
        a.path().join("rules.wasm"),
        a.path().join("acl.wasm"),
        b.path().join("acl.wasm"),
    ] {
        let id = format!("plugin:{}", file.canonicalize().unwrap().display());
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    // Two entries naming one file, however spelled, stop the start.
    let twice = vec![
        settings(b.path().join("acl.wasm"), json!({})),
        settings(b.path().join(".").join("acl.wasm"), json!({})),
    ];
    let err = PluginManager::check(&twice, None).await.unwrap_err();
    assert!(matches!(err, LoadError::Duplicate { .. }), "{err}");
    assert!(err.to_string().contains("configured twice"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_logs_are_rate_limited_and_the_kv_quota_holds() {
    let server = start(test_config()).await;
    let mut s = settings(
        plugin_path("misbehave"),
        json!({"mode": "flood", "lines": 500}),
    );
    s.timeout_ms = 2000;
    s.log_per_s = 10;
    s.kv_max_bytes = 5000;
    let plugin = WasmPlugin::load(s).await.unwrap();
    server.broker.hooks.register(0, plugin.hook()).unwrap();
    assert_eq!(
        connack(tcp_addr(&server), "flooder").await,
        ReasonCode::SUCCESS
    );
    assert!(
        plugin.log_dropped() >= 490,
        "dropped {}",
        plugin.log_dropped()
    );
    // Four 1 KiB entries fit in 5000 bytes, the fifth is refused and the guest is told.
    let refused = String::from_utf8(plugin.kv_get("kv-refused").expect("told")).unwrap();
    assert!(
        refused.contains("quota-exceeded") && refused.ends_with(" at 4"),
        "{refused}"
    );
    assert!(plugin.kv_get("k3").is_some() && plugin.kv_get("k4").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_hot_swapped_version_is_in_force_at_once() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.wasm");
    std::fs::copy(plugin_path("misbehave"), &file).unwrap();
    let mut s = settings(file.clone(), json!({"mode": "allow"}));
    s.authorize_cache_ms = 60_000;
    let manager = PluginManager::new(server.broker.clone(), vec![s], None);
    manager.start().await.unwrap();
    let mut c = v5::connect(v5::options(addr, "cached")).await;
    c.client
        .publish("c-denied/x", v5::QoS::AtLeastOnce, false, "1")
        .await
        .unwrap();
    assert_eq!(
        c.next_puback_reason().await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::Success
    );
    // The C example denies c-denied/…: the allow cached for a minute must not outlive the swap.
    replace_by_rename(&plugin_path("c_deny"), &file);
    manager.reload().await;
    assert_eq!(manager.version(&file), 2);
    c.client
        .publish("c-denied/x", v5::QoS::AtLeastOnce, false, "2")
        .await
        .unwrap();
    assert_eq!(
        c.next_puback_reason().await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
    );
}
