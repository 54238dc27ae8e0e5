//! Contract 0.3.0 through real clients: a plugin answers a wildcard subscription with `filter`
//! and each delivered topic with `read`; a message patch sets MQTT 5 properties; a 0.2.0 guest
//! (the C example) loads and works next to 0.3.0 ones.

mod common;
use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use switchyard_core::config::ListenerKind;
use switchyard_core::protocol::{Packet, ProtocolVersion, ReasonCode};
use switchyard_plugins::{OnError, PluginManager, PluginSettings};

fn entry(name: &str, config: serde_json::Value) -> PluginSettings {
    PluginSettings {
        config,
        on_error: OnError::Deny,
        ..PluginSettings::for_path(plugin_path(name))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_next_to_a_plugin_deny_rule_is_filtered_per_topic() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let acl = entry(
        "acl",
        json!({"default": "allow", "rules": [
            {"permission": "deny", "action": "subscribe", "topic": "secret/#"}
        ]}),
    );
    let manager = PluginManager::new(server.broker.clone(), vec![acl], None);
    manager.start().await.unwrap();

    let mut dashboard = v5::connect(v5::options(addr, "dashboard")).await;
    assert_eq!(
        dashboard.subscribe("#", v5::QoS::AtLeastOnce).await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)],
        "a wildcard overlapping the denied tree is granted"
    );
    assert_eq!(
        dashboard.subscribe("secret/#", v5::QoS::AtLeastOnce).await,
        vec![v5::SubscribeReasonCode::NotAuthorized],
        "a filter inside the denied tree is refused"
    );
    let mut publisher = v5::connect(v5::options(addr, "publisher")).await;
    for (topic, payload) in [
        ("secret/a", "s1"),
        ("public/b", "p1"),
        ("secret/c/d", "s2"),
        ("public/b", "p2"),
    ] {
        publisher
            .client
            .publish(topic, v5::QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        publisher.next_puback_reason().await;
    }
    let first = dashboard.next_publish().await;
    let second = dashboard.next_publish().await;
    assert_eq!(
        (&first.topic[..], &first.payload[..]),
        (&b"public/b"[..], &b"p1"[..])
    );
    assert_eq!(
        &second.payload[..],
        b"p2",
        "in order, and nothing of secret/"
    );
    dashboard
        .assert_no_publish(Duration::from_millis(300))
        .await;
    // Asked once per subscription and topic: a second secret/a is filtered from the cache.
    let calls = manager.plugin(&plugin_path("acl")).unwrap().calls();
    publisher
        .client
        .publish("secret/a", v5::QoS::AtLeastOnce, false, "s3")
        .await
        .unwrap();
    publisher.next_puback_reason().await;
    dashboard
        .assert_no_publish(Duration::from_millis(200))
        .await;
    let after = manager.plugin(&plugin_path("acl")).unwrap().calls();
    assert_eq!(
        after,
        calls + 1,
        "only the publish was authorized: the read was cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_patch_sets_content_type_and_expiry() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let enrich = entry(
        "enrich",
        json!({"topics": ["sensors/#"], "content_type": "application/json", "expiry_s": 3600}),
    );
    let manager = PluginManager::new(server.broker.clone(), vec![enrich], None);
    manager.start().await.unwrap();
    let mut sub = v5::connect(v5::options(addr, "reader")).await;
    sub.subscribe("#", v5::QoS::AtLeastOnce).await;
    let publisher = v5::connect(v5::options(addr, "sensor-1")).await;
    publisher
        .client
        .publish("sensors/1/temp", v5::QoS::AtLeastOnce, false, "{\"t\":21}")
        .await
        .unwrap();
    publisher
        .client
        .publish("other/x", v5::QoS::AtLeastOnce, false, "plain")
        .await
        .unwrap();
    let got = sub.next_publish().await;
    let props = got.properties.expect("properties");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    let expiry = props
        .message_expiry_interval
        .expect("expiry set by the plugin");
    assert!((3590..=3600).contains(&expiry), "{expiry}");
    assert!(props
        .user_properties
        .iter()
        .any(|(k, v)| k == "client_id" && v == "sensor-1"));
    let plain = sub.next_publish().await;
    assert_eq!(&plain.topic[..], b"other/x");
    let untouched = plain.properties.unwrap_or_default();
    assert_eq!(
        untouched.content_type, None,
        "outside its topics nothing changes"
    );
    assert_eq!(untouched.message_expiry_interval, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_2_0_guest_loads_next_to_0_3_0_ones() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let http = server.http_addr.expect("http");
    let manager = PluginManager::new(
        server.broker.clone(),
        vec![
            entry("c_deny", json!({})),
            entry(
                "acl",
                json!({"default": "ignore", "rules": [
                    {"permission": "deny", "action": "all", "topic": "acl-denied/#"}
                ]}),
            ),
        ],
        None,
    );
    manager.start().await.unwrap();
    let status = http_json(http, "/plugins").await;
    let contract = |name: &str| {
        status["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["contract"].clone())
    };
    assert_eq!(contract("c_deny"), Some(json!("0.2.0")), "{status}");
    assert_eq!(contract("acl"), Some(json!("0.3.0")), "{status}");
    let mut c = v5::connect(v5::options(addr, "both")).await;
    assert_eq!(
        c.subscribe("c-denied/x", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::NotAuthorized],
        "the 0.2.0 guest decides"
    );
    assert_eq!(
        c.subscribe("acl-denied/x", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::NotAuthorized],
        "the 0.3.0 guest decides"
    );
    assert_eq!(
        c.subscribe("free/x", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtMostOnce)]
    );
    // A wildcard over the 0.2.0 guest's tree: 0.2.0 has no `read`, so it decides at subscribe
    // time with its subscribe answer (here: no opinion on `#`).
    assert_eq!(
        c.subscribe("#", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtMostOnce)]
    );
}

/// The mqtt.js SCRAM client of `tests/interop`: its one-line JSON verdict.
async fn scram_client(
    port_or_url: impl ToString,
    user: &str,
    password: &str,
    id: &str,
) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/scram_client.cjs");
    let args = [
        port_or_url.to_string(),
        user.into(),
        password.into(),
        id.into(),
    ];
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .args(args)
        .output()
        .await
        .expect("node runs (scripts/install-test-deps installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

fn connect_with_method(id: &str, method: &str, data: &[u8]) -> switchyard_core::protocol::Connect {
    let mut c = connect_packet(ProtocolVersion::V5, id);
    let props = switchyard_core::protocol::Properties {
        authentication_method: Some(method.into()),
        authentication_data: Some(bytes::Bytes::copy_from_slice(data)),
        ..Default::default()
    };
    c.properties = props.into();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_with_a_real_mqtt5_client() {
    assert!(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("examples/web/node_modules/mqtt")
            .exists(),
        "run scripts/install-test-deps (npm ci in examples/web)"
    );
    let mut cfg = test_config();
    cfg.mqtt.allow_anonymous = false;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let mut scram = entry(
        "scram_auth",
        json!({"users": [{"name": "alice", "password": "wonderland"}]}),
    );
    // Deriving the keys (PBKDF2, 4096 rounds) runs in each instance's init.
    scram.timeout_ms = 500;
    let manager = PluginManager::new(server.broker.clone(), vec![scram], None);
    manager.start().await.unwrap();

    let ok = scram_client(addr.port(), "alice", "wonderland", "scram-ok").await;
    assert_eq!(ok["connected"], true, "{ok}");
    assert_eq!(
        ok["server_verified"], true,
        "the CONNACK carries the server's signature: {ok}"
    );
    let wrong = scram_client(addr.port(), "alice", "looking-glass", "scram-wrong").await;
    assert_eq!(wrong["code"], 0x86, "{wrong}");
    let unknown = scram_client(addr.port(), "mallory", "x", "scram-unknown").await;
    assert_eq!(unknown["code"], 0x86, "{unknown}");
    // The same exchange over WebSocket, as a browser makes it: the broker's AUTH challenge
    // and its refusal are frames that must be flushed to reach the client.
    let ws = server.addr(ListenerKind::Ws).unwrap();
    let url = format!("ws://127.0.0.1:{}/mqtt", ws.port());
    let ok = scram_client(&url, "alice", "wonderland", "scram-ws-ok").await;
    assert_eq!(ok["connected"], true, "{ok}");
    assert_eq!(ok["server_verified"], true, "{ok}");
    let wrong = scram_client(&url, "alice", "looking-glass", "scram-ws-wrong").await;
    assert_eq!(wrong["code"], 0x86, "{wrong}");

    // A method nobody offers: Bad Authentication Method.
    let mut raw = Raw::connect(addr).await;
    let ack = raw
        .handshake_with(connect_with_method("kerb", "KERBEROS", b"x"))
        .await;
    assert_eq!(ack.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    // A client that switches methods mid-exchange: Protocol Error.
    let mut raw = Raw::connect(addr).await;
    raw.version = ProtocolVersion::V5;
    let first = connect_with_method("switcher", "SCRAM-SHA-256", b"n,,n=alice,r=abc");
    raw.send(&Packet::Connect(Box::new(first))).await;
    match raw.recv().await {
        Some(Packet::Auth(a)) => assert_eq!(a.code, ReasonCode::CONTINUE_AUTHENTICATION),
        other => panic!("expected AUTH, got {other:?}"),
    }
    let other = switchyard_core::protocol::Properties {
        authentication_method: Some("OTHER".into()),
        ..Default::default()
    };
    raw.send(&Packet::Auth(switchyard_core::protocol::Auth {
        code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: other.into(),
    }))
    .await;
    match raw.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, ReasonCode::PROTOCOL_ERROR),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // Without a method the plugin has no opinion, and anonymous clients are not allowed.
    let mut raw = Raw::connect(addr).await;
    assert_eq!(
        raw.handshake(ProtocolVersion::V5, "plain").await.code,
        ReasonCode::NOT_AUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_fetch_reaches_only_allowed_hosts_within_its_bounds() {
    use axum::extract::{Query, State};
    use axum::routing::get;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use switchyard_plugins::WasmPlugin;

    let requests = Arc::new(AtomicUsize::new(0));
    let app =
        axum::Router::new()
            .route(
                "/decide",
                get(
                    |State(n): State<Arc<AtomicUsize>>,
                     Query(q): Query<HashMap<String, String>>| async move {
                        n.fetch_add(1, Ordering::SeqCst);
                        if q.get("client").is_some_and(|c| c.starts_with("ok")) {
                            "yes"
                        } else {
                            "no"
                        }
                    },
                ),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "yes"
                }),
            )
            .route("/big", get(|| async { vec![b'y'; 2 << 20] }))
            .with_state(requests.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let fetcher = |url: String, allowed: Vec<String>| async move {
        let mut s = entry("misbehave", json!({"mode": "fetch", "url": url}));
        s.allowed_hosts = allowed;
        s.http_timeout_ms = 300;
        WasmPlugin::load(s).await.unwrap()
    };
    let connack = |id: &'static str| async move {
        Raw::connect(addr)
            .await
            .handshake(ProtocolVersion::V5, id)
            .await
            .code
    };

    // Allowed: the service decides.
    let allowed = vec![format!("127.0.0.1:{}", service.port())];
    let plugin = fetcher(format!("http://{service}/decide"), allowed.clone()).await;
    server.broker.hooks.replace(0, plugin.hook());
    assert_eq!(connack("ok-1").await, ReasonCode::SUCCESS);
    assert_eq!(connack("no-1").await, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(requests.load(Ordering::SeqCst), 2);

    // Another port of the same address, or no allowed hosts at all: refused before any request.
    let other_port = format!("http://127.0.0.1:{}/decide", service.port().wrapping_add(1));
    for (url, hosts) in [
        (other_port, allowed.clone()),
        (format!("http://{service}/decide"), vec![]),
    ] {
        let plugin = fetcher(url, hosts).await;
        server.broker.hooks.replace(0, plugin.hook());
        assert_eq!(connack("ok-2").await, ReasonCode::NOT_AUTHORIZED);
        assert_eq!(
            plugin.kv_get("fetch-error").as_deref(),
            Some(&b"not-allowed"[..])
        );
        assert_eq!(plugin.failures(), 0);
    }
    assert_eq!(requests.load(Ordering::SeqCst), 2, "nothing sent");

    // Slow and oversized answers end within bounds, as errors the guest handles.
    for (path, error) in [("slow", "timeout"), ("big", "too-large")] {
        let plugin = fetcher(format!("http://{service}/{path}"), allowed.clone()).await;
        server.broker.hooks.replace(0, plugin.hook());
        let started = std::time::Instant::now();
        assert_eq!(connack("ok-3").await, ReasonCode::NOT_AUTHORIZED, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path}: {:?}",
            started.elapsed()
        );
        assert_eq!(
            plugin.kv_get("fetch-error").as_deref(),
            Some(error.as_bytes()),
            "{path}"
        );
        assert_eq!(
            (plugin.failures(), plugin.host_failures()),
            (0, 0),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_dropped_for_an_offline_client_names_it() {
    let mut cfg = test_config();
    cfg.mqtt.max_queued_messages = 1;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let manager = PluginManager::new(
        server.broker.clone(),
        vec![entry("misbehave", json!({"mode": "events"}))],
        None,
    );
    manager.start().await.unwrap();
    let mut o = v5::options(addr, "sleeper");
    o.set_clean_start(false);
    let props = rumqttc::v5::mqttbytes::v5::ConnectProperties {
        session_expiry_interval: Some(600),
        ..Default::default()
    };
    o.set_connect_properties(props);
    let mut sleeper = v5::connect(o).await;
    sleeper.subscribe("nap/#", v5::QoS::AtLeastOnce).await;
    sleeper.client.disconnect().await.unwrap();
    sleeper.expect_closed().await;
    let mut publisher = v5::connect(v5::options(addr, "waker")).await;
    for i in 0..3 {
        publisher
            .client
            .publish(format!("nap/{i}"), v5::QoS::AtLeastOnce, false, "m")
            .await
            .unwrap();
        publisher.next_puback_reason().await;
    }
    let plugin = manager.plugin(&plugin_path("misbehave")).unwrap();
    let log = || String::from_utf8(plugin.kv_get("events").unwrap_or_default()).unwrap_or_default();
    // The queue holds one: the next two are dropped, each event naming the offline client.
    wait_until("two drops seen", || {
        log().matches("sleeper=dropped[queue full]").count() == 2
    })
    .await;
    assert!(
        log().contains("sleeper=dropped[queue full](nap/1|-);"),
        "{}",
        log()
    );
}
