//! The limits of issue 9 that protect a public broker from a crowd of clients, each through real
//! sockets: filters per SUBSCRIBE, sessions, publish rate, connections per address, flapping
//! and listed bans, overload protection, WebSocket message size and the HTTP endpoint.

mod common;
use common::*;
use std::time::Duration;
use switchyard_core::config::ListenerKind;
use switchyard_core::protocol::{self, Packet, ProtocolVersion, ReasonCode};

fn subscribe_packet(filters: &[&str]) -> Packet {
    Packet::Subscribe(protocol::Subscribe {
        packet_id: 1,
        filters: filters
            .iter()
            .map(|f| (f.to_string(), protocol::SubscriptionOptions::default()))
            .collect(),
        properties: Default::default(),
    })
}

/// CONNACK code for a fresh raw v5 client `id` (persistent when `expiry` > 0).
async fn connack(addr: std::net::SocketAddr, id: &str, expiry: u32) -> (Raw, ReasonCode) {
    let mut raw = Raw::connect(addr).await;
    let mut c = connect_packet(ProtocolVersion::V5, id);
    if expiry > 0 {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(expiry);
    }
    let code = raw.handshake_with(c).await.code;
    (raw, code)
}

/// Whether the server closes a fresh TCP connection at once (refused at accept).
async fn refused_at_accept(addr: std::net::SocketAddr) -> bool {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut b = [0u8; 1];
    // A refused socket reads EOF (or a reset) at once; an accepted one waits for CONNECT.
    matches!(
        tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_past_the_per_subscribe_limit_are_refused_unread() {
    let mut cfg = test_config();
    cfg.limits.max_filters_per_subscribe = 3;
    let broker = start(cfg).await;
    let (mut raw, code) = connack(tcp_addr(&broker), "many-filters", 0).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    raw.send(&subscribe_packet(&["a", "b", "c", "d", "e"]))
        .await;
    let Some(Packet::SubAck(ack)) = raw.recv().await else {
        panic!("no SUBACK")
    };
    let q = ReasonCode::QUOTA_EXCEEDED;
    let ok = ReasonCode::SUCCESS;
    assert_eq!(ack.codes, vec![ok, ok, ok, q, q]);
    assert_eq!(broker.broker.subscription_count(), 3);
    assert_eq!(limit_hits(&broker, "filters_per_subscribe").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_past_max_sessions_are_refused_and_resuming_still_works() {
    let mut cfg = test_config();
    cfg.limits.max_sessions = 2;
    let broker = start(cfg).await;
    let addr = tcp_addr(&broker);
    let (a, code) = connack(addr, "keep-1", 600).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    let (_b, code) = connack(addr, "keep-2", 600).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    let (_, code) = connack(addr, "third", 600).await;
    assert_eq!(code, ReasonCode::QUOTA_EXCEEDED);
    // v3 has no such code: 0x03, server unavailable.
    let mut v3 = Raw::connect(addr).await;
    let code = v3.handshake(ProtocolVersion::V311, "third-v3").await.code;
    assert_eq!(code.0, 0x03);
    // Resuming an existing session is not a new one.
    drop(a);
    wait_until("keep-1 is offline", || {
        broker
            .broker
            .session("keep-1")
            .is_some_and(|s| !s.is_connected())
    })
    .await;
    let (_, code) = connack(addr, "keep-1", 600).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    assert_eq!(limit_hits(&broker, "sessions").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_past_the_client_rate_get_quota_exceeded_and_others_are_unaffected() {
    let mut cfg = test_config();
    cfg.limits.max_publish_rate = 5;
    let broker = start(cfg).await;
    let addr = tcp_addr(&broker);
    let mut flooder = v5::connect(v5::options(addr, "flooder")).await;
    for i in 0..20 {
        flooder
            .client
            .publish("flood", v5::QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    let mut refused = 0;
    for _ in 0..20 {
        // PUBACK has no 0x96 (DISCONNECT only): 0x97, Quota Exceeded.
        if flooder.next_puback_reason().await
            == rumqttc::v5::mqttbytes::v5::PubAckReason::QuotaExceeded
        {
            refused += 1;
        }
    }
    // The bucket holds one second's worth: the first 5 pass, most of the rest are refused.
    assert!(refused >= 10, "only {refused} of 20 refused");
    assert!(limit_hits(&broker, "publish_rate").await >= 10);
    // A bystander's QoS 1 round trip is not touched by the flooder's bucket.
    let mut sub = v5::connect(v5::options(addr, "bystander-sub")).await;
    sub.subscribe("calm", v5::QoS::AtLeastOnce).await;
    let by = v5::connect(v5::options(addr, "bystander")).await;
    by.client
        .publish("calm", v5::QoS::AtLeastOnce, false, "ok")
        .await
        .unwrap();
    assert_eq!(&sub.next_publish().await.payload[..], b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_address_are_bounded() {
    let mut cfg = test_config();
    cfg.limits.max_connections_per_ip = 3;
    let broker = start(cfg).await;
    let addr = tcp_addr(&broker);
    let mut held = Vec::new();
    for i in 0..3 {
        let (raw, code) = connack(addr, &format!("ip-{i}"), 0).await;
        assert_eq!(code, ReasonCode::SUCCESS);
        held.push(raw);
    }
    assert!(
        refused_at_accept(addr).await,
        "a fourth socket was accepted"
    );
    held.pop();
    // The slot comes back when the connection's task ends.
    let mut accepted = false;
    for _ in 0..100 {
        if !refused_at_accept(addr).await {
            accepted = true;
            break;
        }
    }
    assert!(accepted, "the freed slot was not given back");
    assert!(limit_hits(&broker, "ip_connections").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_client_id_is_banned_and_others_are_not() {
    let mut cfg = test_config();
    cfg.limits.flapping_max_connects = 3;
    let broker = start(cfg).await;
    let addr = tcp_addr(&broker);
    for i in 0..4 {
        let (mut raw, code) = connack(addr, "flapper", 0).await;
        assert_eq!(code, ReasonCode::SUCCESS, "connect {i}");
        raw.send(&Packet::Disconnect(protocol::Disconnect {
            code: ReasonCode::SUCCESS,
            properties: Default::default(),
        }))
        .await;
        raw.expect_close().await;
    }
    // The fourth drop within the window made it flap: refused for the ban period (0x8A).
    let mut code = ReasonCode::SUCCESS;
    for _ in 0..100 {
        code = connack(addr, "flapper", 0).await.1;
        if code != ReasonCode::SUCCESS {
            break;
        }
    }
    assert_eq!(code, ReasonCode::BANNED);
    assert_eq!(connack(addr, "steady", 0).await.1, ReasonCode::SUCCESS);
    assert!(limit_hits(&broker, "banned").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_bans_refuse_clients_and_users_until_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let bans = dir.path().join("bans.toml");
    std::fs::write(
        &bans,
        "[[ban]]\nclientid = \"evil\"\n[[ban]]\nusername = \"mallory\"\n",
    )
    .unwrap();
    let mut cfg = test_config();
    cfg.limits.bans_file = bans.clone();
    let broker = start(cfg.clone()).await;
    let addr = tcp_addr(&broker);
    assert_eq!(connack(addr, "evil", 0).await.1, ReasonCode::BANNED);
    let mut raw = Raw::connect(addr).await;
    let mut c = connect_packet(ProtocolVersion::V5, "innocent-name");
    c.username = Some("mallory".into());
    assert_eq!(raw.handshake_with(c).await.code, ReasonCode::BANNED);
    assert_eq!(connack(addr, "good", 0).await.1, ReasonCode::SUCCESS);
    let listed = http_json(broker.http_addr.unwrap(), "/bans").await;
    assert!(listed.to_string().contains("evil"), "{listed}");
    // What SIGHUP does: the file is read again.
    std::fs::write(&bans, "[[ban]]\nusername = \"mallory\"\n").unwrap();
    switchyard_core::server::load_auth(&broker.broker, &cfg).unwrap();
    assert_eq!(connack(addr, "evil", 0).await.1, ReasonCode::SUCCESS);
    // A bad file is refused and the bans in force stay.
    std::fs::write(&bans, "[[ban]]\nip = \"not an address\"\n").unwrap();
    assert!(switchyard_core::server::load_auth(&broker.broker, &cfg).is_err());
    let mut raw = Raw::connect(addr).await;
    let mut c = connect_packet(ProtocolVersion::V5, "again");
    c.username = Some("mallory".into());
    assert_eq!(raw.handshake_with(c).await.code, ReasonCode::BANNED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_refuses_connections_sheds_qos0_and_recovers_by_itself() {
    let mut cfg = test_config();
    cfg.limits.overload_queued_messages = 20;
    let broker = start(cfg).await;
    let addr = tcp_addr(&broker);
    let http = broker.http_addr.unwrap();
    // An offline session (expiring 2 s after it goes) collects QoS 1 messages past the
    // threshold.
    let (raw, _) = connack(addr, "away", 2).await;
    let mut raw = raw;
    raw.send(&Packet::Subscribe(protocol::Subscribe {
        packet_id: 1,
        filters: vec![(
            "load/#".into(),
            protocol::SubscriptionOptions {
                qos: protocol::QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    drop(raw);
    let mut watcher = v5::connect(v5::options(addr, "watcher")).await;
    watcher.subscribe("load/#", v5::QoS::AtMostOnce).await;
    let publisher = v5::connect(v5::options(addr, "loader")).await;
    for i in 0..40 {
        publisher
            .client
            .publish("load/x", v5::QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    let health = wait_for_json(http, "/health", "overloaded", |h| h["status"] == "degraded").await;
    let problems = health["problems"].to_string();
    assert!(problems.contains("overloaded"), "{problems}");
    assert!(refused_at_accept(addr).await, "accepted while overloaded");
    // QoS 0 to the connected watcher is shed while overloaded.
    let shed_before = limit_hits(&broker, "overload").await;
    publisher
        .client
        .publish("load/y", v5::QoS::AtMostOnce, false, "shed")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while limit_hits(&broker, "overload").await <= shed_before {
        assert!(tokio::time::Instant::now() < deadline, "QoS 0 was not shed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The session expires and its queue with it: the broker recovers without help.
    wait_for_json(http, "/health", "recovered", |h| h["status"] == "ok").await;
    assert!(!refused_at_accept(addr).await);
    drop(watcher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_are_bounded_by_max_packet_size() {
    use futures_util::{SinkExt, StreamExt};
    let mut cfg = test_config();
    cfg.mqtt.max_packet_size = 1024;
    let broker = start(cfg).await;
    let url = format!("ws://{}/mqtt", broker.addr(ListenerKind::Ws).unwrap());
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    // 256 KB in one message: far past max_packet_size and the 64 KB of slack.
    let big = vec![0u8; 256 * 1024];
    let _ = ws
        .send(tokio_tungstenite::tungstenite::Message::Binary(big.into()))
        .await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return true,
                Some(Ok(m)) if m.is_close() => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_endpoint_wants_a_token_and_bounds_its_connections() {
    let mut cfg = test_config();
    cfg.http.token = "s3cret".into();
    cfg.http.max_connections = 2;
    let broker = start(cfg).await;
    let http = broker.http_addr.unwrap();
    let get = |path: &str, token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n")
    };
    // Configuration is not shown without the token, even to this machine.
    assert_eq!(http_get(http, &get("/plugins", None)).await.0, 401);
    assert_eq!(http_get(http, &get("/plugins", Some("wrong"))).await.0, 401);
    // With it the plugins' status is shown.
    let (status, body) = http_get(http, &get("/plugins", Some("s3cret"))).await;
    assert_eq!(status, 200, "{body}");
    // Health and metrics stay open for load balancers and Prometheus.
    assert_eq!(http_get(http, &get("/health", None)).await.0, 200);
    // Two idle connections take both slots: a third is closed at once.
    let _a = tokio::net::TcpStream::connect(http).await.unwrap();
    let _b = tokio::net::TcpStream::connect(http).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !refused_at_accept(http).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a third HTTP connection was served"
        );
    }
    drop((_a, _b));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if !refused_at_accept(http).await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slots not given back"
        );
    }
    assert!(limit_hits(&broker, "http").await >= 1);
}
