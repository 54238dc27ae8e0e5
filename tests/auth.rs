//! The built-in password file and ACL rules, in v3 and v5, over MQTT and the JSON bridge.

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchyard_core::auth::set_password;
use switchyard_core::config::{AclAction, AclRule, ListenerKind, Permission};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn rule(permission: Permission, action: AclAction, topic: &str, user: Option<&str>) -> AclRule {
    AclRule {
        permission,
        action,
        topic: topic.into(),
        user: user.map(Into::into),
        client: None,
    }
}

fn secured() -> (CoreConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    set_password(&pw, "alice", "wonderland").unwrap();
    set_password(&pw, "bob", "builder").unwrap();
    let mut cfg = test_config();
    let mut json = local(ListenerKind::WsJson);
    json.path = Some("/json".into());
    cfg.listeners.push(json);
    cfg.mqtt.allow_anonymous = false;
    cfg.auth.password_file = pw;
    cfg.acl = vec![
        rule(Permission::Allow, AclAction::All, "users/%u/#", None),
        rule(Permission::Deny, AclAction::All, "users/#", None),
        rule(Permission::Deny, AclAction::Subscribe, "secret/#", None),
        rule(
            Permission::Allow,
            AclAction::Publish,
            "secret/#",
            Some("alice"),
        ),
        rule(Permission::Deny, AclAction::Publish, "secret/#", None),
    ];
    (cfg, dir)
}

use switchyard_core::CoreConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_accepts_good_and_refuses_bad_credentials() {
    let (cfg, _dir) = secured();
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let mut o = v4::options(addr, "a");
    o.set_credentials("alice", "wonderland");
    v4::connect(o).await;
    let mut o = v4::options(addr, "b");
    o.set_credentials("alice", "wrong");
    let err = v4::connect_any(o).await.err().unwrap();
    assert!(err.contains("BadUserNamePassword"), "{err}");
    let err = v4::connect_any(v4::options(addr, "anon"))
        .await
        .err()
        .unwrap();
    assert!(err.contains("NotAuthorized"), "{err}");
    let mut o = v5::options(addr, "c");
    o.set_credentials("mallory", "x");
    let err = v5::connect_any(o).await.err().unwrap();
    assert!(err.contains("BadUserNamePassword"), "{err}");
    // Over WebSocket the refusal is a frame the socket layer buffers: it must still be sent
    // before the connection closes, or a browser sees only a closed socket.
    let ws = server.addr(ListenerKind::Ws).unwrap();
    let mut o = v4::MqttOptions::new("d", format!("ws://127.0.0.1:{}/mqtt", ws.port()), ws.port());
    o.set_transport(rumqttc::Transport::Ws);
    o.set_credentials("alice", "wrong");
    let err = v4::connect_any(o).await.err().unwrap();
    assert!(err.contains("BadUserNamePassword"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_denies_subscribe_with_0x80_v3_and_0x87_v5() {
    let (cfg, _dir) = secured();
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let mut o = v4::options(addr, "v3");
    o.set_credentials("bob", "builder");
    let mut c3 = v4::connect(o).await;
    assert_eq!(
        c3.subscribe("secret/plans", v4::QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    assert_eq!(
        c3.subscribe("users/bob/inbox", v4::QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(v4::QoS::AtLeastOnce)]
    );
    assert_eq!(
        c3.subscribe("users/alice/inbox", v4::QoS::AtLeastOnce)
            .await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    let mut o = v5::options(addr, "v5");
    o.set_credentials("alice", "wonderland");
    let mut c5 = v5::connect(o).await;
    assert_eq!(
        c5.subscribe("users/bob/#", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::NotAuthorized],
        "inside a denied tree"
    );
    assert_eq!(
        c5.subscribe("users/alice/#", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtMostOnce)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_next_to_deny_rules_is_granted_and_delivers_only_what_may_be_read() {
    let (mut cfg, _dir) = secured();
    // Publishing anywhere is allowed here; reading is what the rules restrict.
    cfg.acl.retain(|r| r.action != AclAction::Publish);
    cfg.acl
        .insert(0, rule(Permission::Allow, AclAction::Publish, "#", None));
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let mut o = v5::options(addr, "bob-pub");
    o.set_credentials("bob", "builder");
    let publisher = v5::connect(o).await;
    publisher
        .client
        .publish(
            "secret/plans",
            v5::QoS::AtLeastOnce,
            true,
            "retained secret",
        )
        .await
        .unwrap();
    publisher
        .client
        .publish("open/news", v5::QoS::AtLeastOnce, true, "retained news")
        .await
        .unwrap();
    wait_until("both retained", || server.broker.retained_count() == 2).await;

    // Dashboards subscribe to everything: granted, not refused.
    let mut o = v4::options(addr, "dash-v3");
    o.set_credentials("alice", "wonderland");
    let mut d3 = v4::connect(o).await;
    assert_eq!(
        d3.subscribe("#", v4::QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(v4::QoS::AtLeastOnce)]
    );
    let mut o = v5::options(addr, "dash-v5");
    o.set_credentials("alice", "wonderland");
    let mut d5 = v5::connect(o).await;
    assert_eq!(
        d5.subscribe("#", v5::QoS::AtLeastOnce).await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
    );
    for (t, body) in [
        ("users/bob/x", "bob's"),
        ("secret/y", "hidden"),
        ("users/alice/x", "mine"),
        ("open/z", "last"),
    ] {
        publisher
            .client
            .publish(t, v5::QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
    }
    // The retained news, then the live messages alice may read, in order; nothing from the
    // trees denied to her (had they arrived, they would come before "mine").
    let expected = [
        ("open/news".to_string(), b"retained news".to_vec()),
        ("users/alice/x".to_string(), b"mine".to_vec()),
        ("open/z".to_string(), b"last".to_vec()),
    ];
    let mut got3 = Vec::new();
    let mut got5 = Vec::new();
    while got3.len() < 3 {
        let p = d3.next_publish().await;
        got3.push((p.topic.clone(), p.payload.to_vec()));
    }
    while got5.len() < 3 {
        let p = d5.next_publish().await;
        got5.push((
            String::from_utf8_lossy(&p.topic).into_owned(),
            p.payload.to_vec(),
        ));
    }
    assert_eq!(got3, expected, "v3");
    assert_eq!(got5, expected, "v5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_denied_publish_is_dropped_v3_and_refused_0x87_v5() {
    let (cfg, _dir) = secured();
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let mut o = v5::options(addr, "alice-sub");
    o.set_credentials("alice", "wonderland");
    let mut alice = v5::connect(o).await;
    alice.subscribe("users/alice/#", v5::QoS::AtLeastOnce).await;

    let mut o = v4::options(addr, "bob3");
    o.set_credentials("bob", "builder");
    let mut bob3 = v4::connect(o).await;
    bob3.client
        .publish(
            "users/alice/inbox",
            v4::QoS::AtLeastOnce,
            false,
            "v3 intrusion",
        )
        .await
        .unwrap();
    // v3: acknowledged (nothing else can be said) but not delivered.
    bob3.expect(|p| matches!(p, v4::Packet::PubAck(_)).then_some(()))
        .await;

    let mut o = v5::options(addr, "bob5");
    o.set_credentials("bob", "builder");
    let mut bob5 = v5::connect(o).await;
    bob5.client
        .publish(
            "users/alice/inbox",
            v5::QoS::AtLeastOnce,
            false,
            "v5 intrusion",
        )
        .await
        .unwrap();
    let reason = bob5.next_puback_reason().await;
    assert_eq!(
        reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
    );

    // Alice's own publish arrives; neither intrusion did.
    let mut o = v5::options(addr, "alice-pub");
    o.set_credentials("alice", "wonderland");
    let ap = v5::connect(o).await;
    ap.client
        .publish("users/alice/inbox", v5::QoS::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    assert_eq!(&alice.next_publish().await.payload[..], b"mine");
    let denied = server
        .broker
        .metrics
        .publishes_denied
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(denied, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_default_deny_and_acl_file() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "[[acl]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"open/#\"\n",
    )
    .unwrap();
    let mut cfg = test_config();
    cfg.auth.acl_default = Permission::Deny;
    cfg.auth.acl_file = acl;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let mut c = v5::connect(v5::options(addr, "d")).await;
    assert_eq!(
        c.subscribe("closed/x", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    assert_eq!(
        c.subscribe("open/x", v5::QoS::AtMostOnce).await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtMostOnce)]
    );
}

async fn json_ws(
    port: u16,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/json{query}"))
        .await
        .unwrap();
    ws
}

async fn json_next(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let WsMessage::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn json_send(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    v: Value,
) {
    ws.send(WsMessage::Text(v.to_string().into()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_websocket_clients_share_topics_auth_and_acl_with_mqtt() {
    let (cfg, _dir) = secured();
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let port = server.addr(ListenerKind::WsJson).unwrap().port();

    // Bad credentials: an error message, then the socket closes.
    let mut bad = json_ws(port, "?username=alice&password=nope").await;
    json_send(
        &mut bad,
        json!({"type": "subscribe", "topic": "users/alice/#"}),
    )
    .await;
    assert_eq!(json_next(&mut bad).await["type"], "error");

    // Credentials in the query string.
    let mut web = json_ws(port, "?username=alice&password=wonderland").await;
    json_send(
        &mut web,
        json!({"type": "subscribe", "topic": "users/alice/#"}),
    )
    .await;
    let r = json_next(&mut web).await;
    assert_eq!(
        (r["type"].as_str(), r["op"].as_str()),
        (Some("success"), Some("subscribe"))
    );
    // A bad frame gets an error, not a dropped connection.
    web.send(WsMessage::Text("not json".into())).await.unwrap();
    assert_eq!(json_next(&mut web).await["type"], "error");
    json_send(&mut web, json!({"type": "subscribe", "topic": "secret/#"})).await;
    let r = json_next(&mut web).await;
    assert_eq!(r["type"], "error", "ACL applies: {r}");

    // MQTT → JSON: JSON payloads arrive as JSON values, text as strings.
    let mut o = v4::options(addr, "mqtt-alice");
    o.set_credentials("alice", "wonderland");
    let mut mqtt = v4::connect(o).await;
    mqtt.client
        .publish(
            "users/alice/t",
            v4::QoS::AtLeastOnce,
            false,
            r#"{"temp":21.5}"#,
        )
        .await
        .unwrap();
    let m = json_next(&mut web).await;
    assert_eq!(
        m,
        json!({"type": "message", "topic": "users/alice/t", "data": {"temp": 21.5}})
    );
    mqtt.client
        .publish("users/alice/t", v4::QoS::AtMostOnce, false, "plain text")
        .await
        .unwrap();
    assert_eq!(json_next(&mut web).await["data"], "plain text");

    // JSON → MQTT, with credentials in a first "connect" message.
    mqtt.subscribe("users/alice/from-web", v4::QoS::AtLeastOnce)
        .await;
    let mut web2 = json_ws(port, "").await;
    json_send(
        &mut web2,
        json!({"type": "connect", "username": "alice", "password": "wonderland"}),
    )
    .await;
    assert_eq!(json_next(&mut web2).await["type"], "success");
    json_send(&mut web2, json!({"type": "publish", "topic": "users/alice/from-web", "data": {"on": true}, "retain": true})).await;
    assert_eq!(json_next(&mut web2).await["type"], "success");
    let p = mqtt.next_publish().await;
    assert_eq!(
        serde_json::from_slice::<Value>(&p.payload).unwrap(),
        json!({"on": true})
    );
    json_send(
        &mut web2,
        json!({"type": "publish", "topic": "users/bob/x", "data": "nope"}),
    )
    .await;
    assert_eq!(
        json_next(&mut web2).await["type"],
        "error",
        "another user's tree is refused"
    );

    // Retained messages reach a JSON subscriber too.
    json_send(
        &mut web2,
        json!({"type": "subscribe", "topic": "users/alice/from-web"}),
    )
    .await;
    assert_eq!(json_next(&mut web2).await["type"], "success");
    let m = json_next(&mut web2).await;
    assert_eq!(
        (m["data"].clone(), m["retain"].clone()),
        (json!({"on": true}), json!(true))
    );
}
