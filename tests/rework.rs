//! What the core rework guarantees: one client pipeline for MQTT and `ws-json`, a broker that
//! listens only when its plugins and rules are loaded, and the compatibility fixes found with
//! real clients (v3 keep-alive, the seed's `ws-json` URL, outbound topic aliases, Receive
//! Maximum, sessions bound to their user).

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use switchyard::Switchyard;
use switchyard_core::config::ListenerKind;
use switchyard_core::protocol::{self, Packet, ProtocolVersion, QoS, ReasonCode};
use switchyard_rules::{RulesConfig, SinkConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time")
            .expect("socket open")
            .expect("frame");
        if let WsMessage::Text(t) = m {
            return serde_json::from_str(&t).expect("JSON frame");
        }
    }
}

async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(WsMessage::Text(v.to_string().into()))
        .await
        .unwrap();
}

/// The reply to one request, skipping `message` frames.
async fn ws_reply(ws: &mut Ws, v: Value) -> Value {
    ws_send(ws, v).await;
    loop {
        let r = ws_next(ws).await;
        if r["type"] != "message" {
            return r;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_json_publish_takes_the_mqtt_path_to_rules_subscribers_and_events() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("copy.rhai"),
        r#"
rule("copy").from(["ws/#"]).to(mqtt("copy"));
on("session.unsubscribed").to(mqtt("unsubscribed"));
"#,
    )
    .unwrap();
    let sinks: BTreeMap<String, SinkConfig> = [
        ("copy", json!({"kind": "mqtt", "topic": "copy/${topic}"})),
        (
            "unsubscribed",
            json!({"kind": "mqtt", "topic": "events/unsubscribed"}),
        ),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), serde_json::from_value(v).unwrap()))
    .collect();
    let mut cfg = test_config();
    cfg.listeners.push(local(ListenerKind::WsJson));
    cfg.mqtt.retain_available = false;
    cfg.mqtt.max_topic_levels = 4;
    let rules = RulesConfig {
        dir: Some(dir.path().to_path_buf()),
        ..RulesConfig::default()
    };
    let server = Switchyard::core(cfg)
        .rules(rules, sinks)
        .watch_files(false)
        .start()
        .await
        .expect("broker starts");
    let mut sub = v4::connect(v4::options(tcp_addr(&server), "watcher")).await;
    sub.subscribe("ws/#", v4::QoS::AtLeastOnce).await;
    sub.subscribe("copy/#", v4::QoS::AtLeastOnce).await;
    sub.subscribe("events/#", v4::QoS::AtLeastOnce).await;

    // The seed pages' URL: no path.
    let port = server.addr(ListenerKind::WsJson).unwrap().port();
    let (mut web, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}"))
        .await
        .expect("ws-json listens on / by default");

    let ok = ws_reply(
        &mut web,
        json!({"type": "publish", "topic": "ws/a", "data": "hi"}),
    )
    .await;
    assert_eq!(ok["type"], "success", "{ok}");
    let mut topics = Vec::new();
    while topics.len() < 2 {
        let p = sub.next_publish().await;
        if p.topic.starts_with("copy/") {
            // The rule's default output: the message as JSON.
            let out: Value = serde_json::from_slice(&p.payload).unwrap();
            assert_eq!(out["payload"], "hi", "{out}");
        } else {
            assert_eq!(&p.payload[..], b"hi");
        }
        topics.push(p.topic.clone());
    }
    topics.sort();
    assert_eq!(
        topics,
        ["copy/ws/a", "ws/a"],
        "subscriber and rule both got it"
    );

    // The MQTT path's limits hold for JSON clients too.
    let r = ws_reply(
        &mut web,
        json!({"type": "publish", "topic": "ws/r", "data": 1, "retain": true}),
    )
    .await;
    assert!(
        r["type"] == "error" && r["msg"].as_str().unwrap().contains("retain"),
        "{r}"
    );
    let r = ws_reply(
        &mut web,
        json!({"type": "publish", "topic": "ws/1/2/3/4", "data": 1}),
    )
    .await;
    assert!(
        r["type"] == "error" && r["msg"].as_str().unwrap().contains("levels"),
        "{r}"
    );
    let r = ws_reply(
        &mut web,
        json!({"type": "publish", "topic": "ws/+", "data": 1}),
    )
    .await;
    assert_eq!(r["type"], "error", "{r}");

    // Unsubscribing raises the event rules see.
    let r = ws_reply(&mut web, json!({"type": "subscribe", "topic": "x/#"})).await;
    assert_eq!(r["type"], "success", "{r}");
    let r = ws_reply(&mut web, json!({"type": "unsubscribe", "topic": "x/#"})).await;
    assert_eq!(r["type"], "success", "{r}");
    let p = sub.next_publish().await;
    assert_eq!(p.topic, "events/unsubscribed");
    let event: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(
        (event["event"].as_str(), event["topic"].as_str()),
        (Some("session.unsubscribed"), Some("x/#")),
        "{event}"
    );
    // Neither refused publish reached anyone: the next message is the next accepted one.
    ws_reply(
        &mut web,
        json!({"type": "publish", "topic": "ws/b", "data": "2"}),
    )
    .await;
    let p = sub.next_publish().await;
    assert!(p.topic.ends_with("ws/b"), "{}", p.topic);
}

fn hs256(claims: Value, secret: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let head = B64URL.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string());
    let body = B64URL.encode(claims.to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{head}.{body}").as_bytes());
    let sig = B64URL.encode(mac.finalize().into_bytes());
    format!("{head}.{body}.{sig}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_client_connecting_the_instant_the_port_opens_is_admitted() {
    let plugin =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/plugins/jwt_auth.wasm");
    assert!(
        plugin.exists(),
        "run scripts/build-plugins (scripts/test does)"
    );
    let port = free_port();
    let mut cfg = test_config();
    cfg.listeners = vec![switchyard_core::config::ListenerConfig::new(
        ListenerKind::Tcp,
        format!("127.0.0.1:{port}").parse().unwrap(),
    )];
    cfg.mqtt.allow_anonymous = false;
    let mut jwt = switchyard_plugins::PluginSettings::for_path(plugin);
    jwt.config = json!({"secret": "instant"});
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = hs256(json!({"sub": "dev1", "exp": exp}), "instant");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Knocks from before the broker starts until the port accepts, then connects at once.
    let client = tokio::spawn(async move {
        let stream = loop {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => break s,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        let mut raw = Raw {
            stream,
            buf: Default::default(),
            version: ProtocolVersion::V5,
        };
        let mut c = connect_packet(ProtocolVersion::V5, "dev1");
        c.username = Some("dev1".into());
        c.password = Some(token.into_bytes().into());
        raw.handshake_with(c).await
    });
    let server = Switchyard::core(cfg)
        .plugins(vec![jwt], None)
        .watch_files(false)
        .start()
        .await
        .expect("broker starts");
    let ack = tokio::time::timeout(WAIT, client).await.unwrap().unwrap();
    assert_eq!(
        ack.code,
        ReasonCode::SUCCESS,
        "admitted by the plugin, not refused for its absence"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_file_that_does_not_compile_stops_the_start_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.rhai"),
        "rule(\"ok\").from([\"a\"]).to(mqtt(\"s\"));\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.rhai"),
        "rule(\"x\")\n  .from([\"a\"]\n  .to(mqtt(\"s\"));\n",
    )
    .unwrap();
    let sinks: BTreeMap<String, SinkConfig> = [(
        "s".to_string(),
        serde_json::from_value(json!({"kind": "mqtt", "topic": "t"})).unwrap(),
    )]
    .into();
    let rules = RulesConfig {
        dir: Some(dir.path().to_path_buf()),
        ..RulesConfig::default()
    };
    let err = Switchyard::core(test_config())
        .rules(rules, sinks)
        .watch_files(false)
        .start()
        .await
        .err()
        .expect("start refused");
    let text = err.to_string();
    let bad = dir.path().join("bad.rhai").display().to_string();
    let pos = regex_like_position(&text, &bad);
    assert!(pos, "names file:line:col: {text}");
}

/// Whether `text` holds `file:LINE:COL`.
fn regex_like_position(text: &str, file: &str) -> bool {
    text.match_indices(file).any(|(i, _)| {
        let rest = &text[i + file.len()..];
        let mut parts = rest.splitn(3, ':');
        parts.next() == Some("")
            && parts
                .next()
                .is_some_and(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
            && parts
                .next()
                .is_some_and(|c| c.chars().next().is_some_and(|c| c.is_ascii_digit()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_keep_alive_above_the_limit_is_accepted_and_the_limit_applies() {
    let mut cfg = test_config();
    cfg.mqtt.max_keepalive_s = 1;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    for (id, keep_alive) in [("zero", 0u16), ("long", 120)] {
        let mut raw = Raw::connect(addr).await;
        let mut c = connect_packet(ProtocolVersion::V311, id);
        c.keep_alive = keep_alive;
        let ack = raw.handshake_with(c).await;
        assert_eq!(ack.code, ReasonCode::SUCCESS, "keep-alive {keep_alive}");
        // Silent for 1.5 × max_keepalive_s: closed (v3 gets no DISCONNECT).
        let started = std::time::Instant::now();
        assert!(raw.expect_close().await.is_none());
        assert!(started.elapsed() >= std::time::Duration::from_millis(1400));
    }
    // v5 clients are told the server's value instead.
    let mut raw = Raw::connect(addr).await;
    let mut c = connect_packet(ProtocolVersion::V5, "v5");
    c.keep_alive = 0;
    let ack = raw.handshake_with(c).await;
    assert_eq!(ack.properties.server_keep_alive, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_topics_use_outbound_topic_aliases() {
    let mut cfg = test_config();
    // The broker's own limit caps what the client allows.
    cfg.mqtt.topic_alias_max = 1;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let mut raw = Raw::connect(addr).await;
    let mut c = connect_packet(ProtocolVersion::V5, "aliased");
    c.properties.topic_alias_maximum = Some(500);
    assert_eq!(raw.handshake_with(c).await.code, ReasonCode::SUCCESS);
    raw.send(&Packet::Subscribe(protocol::Subscribe {
        packet_id: 1,
        filters: vec![("fleet/#".into(), protocol::SubscriptionOptions::default())],
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    let publisher = v4::connect(v4::options(addr, "pub")).await;
    for topic in [
        "fleet/truck-7/position",
        "fleet/truck-7/position",
        "fleet/truck-9/position",
        "fleet/truck-7/position",
    ] {
        publisher
            .client
            .publish(topic, v4::QoS::AtMostOnce, false, "x")
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 4 {
        if let Some(Packet::Publish(p)) = raw.recv().await {
            seen.push((p.topic.to_string(), p.properties.topic_alias));
        }
    }
    assert_eq!(
        seen,
        [
            ("fleet/truck-7/position".to_string(), Some(1)),
            (String::new(), Some(1)),
            // One alias in use (the broker's limit): other topics go out in full.
            ("fleet/truck-9/position".to_string(), None),
            (String::new(), Some(1)),
        ]
    );
    // A client that allows none gets full topics.
    let mut plain = Raw::connect(addr).await;
    plain.handshake(ProtocolVersion::V5, "plain").await;
    plain
        .send(&Packet::Subscribe(protocol::Subscribe {
            packet_id: 1,
            filters: vec![("fleet/#".into(), protocol::SubscriptionOptions::default())],
            properties: Default::default(),
        }))
        .await;
    assert!(matches!(plain.recv().await, Some(Packet::SubAck(_))));
    publisher
        .client
        .publish("fleet/truck-7/position", v4::QoS::AtMostOnce, false, "y")
        .await
        .unwrap();
    match plain.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(
            (&*p.topic, p.properties.topic_alias),
            ("fleet/truck-7/position", None)
        ),
        other => panic!("{other:?}"),
    }
}

fn qos2_publish(packet_id: u16) -> bytes::BytesMut {
    let p = Packet::Publish(protocol::Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "q2".into(),
        packet_id,
        properties: Default::default(),
        payload: bytes::Bytes::from_static(&[0u8; 256]),
    });
    let mut out = bytes::BytesMut::new();
    protocol::encode_packet(&p, ProtocolVersion::V5, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_still_writing_after_receive_maximum_reads_the_reason() {
    use tokio::io::AsyncWriteExt;
    let mut cfg = test_config();
    cfg.mqtt.max_inflight = 2;
    let server = start(cfg).await;
    let mut raw = Raw::connect(tcp_addr(&server)).await;
    raw.handshake(ProtocolVersion::V5, "eager").await;
    // Two QoS 2 publishes never released fill the Receive Maximum.
    for id in 1..=2 {
        raw.send_bytes(&qos2_publish(id)).await;
        assert!(matches!(raw.recv().await, Some(Packet::PubRec(_))));
    }
    // The third exceeds it; the client goes on writing for a while, as a pipelining client
    // does, before it reads. Its writes must not fail (a reset would hide the reason).
    for id in 3..=10 {
        let written = raw.stream.write_all(&qos2_publish(id)).await;
        assert!(written.is_ok(), "write {id}: {written:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        raw.expect_close().await.map(|d| d.code),
        Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_cannot_be_taken_by_another_user() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    switchyard_core::auth::set_password(&pw, "alice", "a-pass").unwrap();
    switchyard_core::auth::set_password(&pw, "mallory", "m-pass").unwrap();
    let mut cfg = test_config();
    cfg.mqtt.allow_anonymous = false;
    cfg.auth.password_file = pw;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let login = |user: &str, pass: &str, clean: bool| {
        let mut o = v4::options(addr, "meter-1");
        o.set_credentials(user, pass);
        o.set_clean_session(clean);
        o
    };
    let mut alice = v4::connect(login("alice", "a-pass", false)).await;
    alice.subscribe("meter/cmd", v4::QoS::AtLeastOnce).await;
    alice.kill().await;
    wait_until("alice's session is offline", || {
        server
            .broker
            .session("meter-1")
            .is_some_and(|s| !s.is_connected())
    })
    .await;
    // A command queued for alice while she is away.
    let mut ops = v4::options(addr, "ops");
    ops.set_credentials("alice", "a-pass");
    let cmd = v4::connect(ops).await;
    cmd.client
        .publish("meter/cmd", v4::QoS::AtLeastOnce, false, "reboot")
        .await
        .unwrap();
    wait_until("queued", || {
        server
            .broker
            .session("meter-1")
            .is_some_and(|s| s.queued() == 1)
    })
    .await;

    for clean in [false, true] {
        let err = v4::connect_any(login("mallory", "m-pass", clean))
            .await
            .err();
        assert!(
            err.as_deref().is_some_and(|e| e.contains("NotAuthorized")),
            "clean={clean}: {err:?}"
        );
    }
    let mut back = v4::connect(login("alice", "a-pass", false)).await;
    let p = back.next_publish().await;
    assert_eq!(
        &p.payload[..],
        b"reboot",
        "alice's session and its queue survived"
    );
}
