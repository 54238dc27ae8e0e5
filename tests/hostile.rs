//! Clients (and extensions) that try to knock the broker over (issue 9): topics deep enough to
//! exhaust a thread's stack when the topic trees are walked, sockets that never finish their
//! handshake, `$` topics, unbounded subscriptions and retained messages. Slow consumers are in
//! `slow_consumers.rs`, the crowd's limits (bans, rates, overload, HTTP) in `limits.rs`.

mod common;
use common::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use switchyard_core::hooks::{ClientInfo, Hook, HookSet, MessageDecision};
use switchyard_core::protocol::{self, ProtocolVersion, QoS, ReasonCode};
use switchyard_core::Message;

fn deep_topic(levels: usize) -> String {
    vec!["l"; levels].join("/")
}

/// A message hook that moves `deepen/…` messages to a very deep topic and `forge/…` into
/// `$SYS`, as a buggy or hostile plugin's patch could.
struct Deepen;

#[async_trait::async_trait]
impl Hook for Deepen {
    fn name(&self) -> &str {
        "test:deepen"
    }
    fn interests(&self) -> HookSet {
        HookSet::MESSAGE_PUBLISH
    }
    async fn on_publish(&self, _c: &ClientInfo, m: &Message) -> MessageDecision {
        let topic = if m.topic.starts_with("deepen/") {
            deep_topic(65_535)
        } else if m.topic.starts_with("forge/") {
            "$SYS/broker/clients/connected".to_string()
        } else {
            return MessageDecision::Pass;
        };
        let mut moved = m.clone();
        moved.topic = topic.into();
        MessageDecision::Modify(Box::new(moved))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_with_65535_levels_is_refused_and_nothing_that_deep_is_retained() {
    let broker = switchyard::Switchyard::core(test_config())
        .hook(0, Arc::new(Deepen))
        .watch_files(false)
        .start()
        .await
        .unwrap();
    let addr = tcp_addr(&broker);

    // The two-packet crash of issue 9: a CONNECT whose retained will has 65,535 levels.
    for (version, expected) in [
        (ProtocolVersion::V5, ReasonCode::TOPIC_NAME_INVALID),
        // 3.1.1 has no such code: return code 5, "not authorized", is its nearest.
        (ProtocolVersion::V311, ReasonCode(0x05)),
    ] {
        let mut c = connect_packet(version, "deep-will");
        c.will = Some(protocol::LastWill {
            topic: "/".repeat(65_534).into(),
            payload: bytes::Bytes::from_static(b"w"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
        });
        let mut raw = Raw::connect(addr).await;
        assert_eq!(raw.handshake_with(c).await.code, expected, "{version:?}");
    }

    // A message a hook moves that deep (or into `$SYS`) is dropped before routing.
    let mut publisher = v5::connect(v5::options(addr, "deepener")).await;
    let denied_before = broker
        .broker
        .metrics
        .publishes_denied
        .load(Ordering::Relaxed);
    for topic in ["deepen/x", "forge/x"] {
        publisher
            .client
            .publish(topic, v5::QoS::AtLeastOnce, true, "moved")
            .await
            .unwrap();
        publisher.next_puback_reason().await;
    }
    assert_eq!(broker.broker.retained_count(), 0);
    assert_eq!(
        broker
            .broker
            .metrics
            .publishes_denied
            .load(Ordering::Relaxed),
        denied_before + 2
    );
    // What reaches the store without passing a client's pipeline (a rule's republish) is
    // held to the level limit there.
    let deep = Message::new(deep_topic(65_535), &b"deep"[..], QoS::AtMostOnce, true);
    broker.broker.publish(Arc::new(deep));
    assert_eq!(broker.broker.retained_count(), 0);
    assert_eq!(limit_hits(&broker, "retained").await, 1);

    let mut watcher = v5::connect(v5::options(addr, "watcher")).await;
    watcher.subscribe("#", v5::QoS::AtLeastOnce).await;
    publisher
        .client
        .publish("after/x", v5::QoS::AtLeastOnce, true, "still here")
        .await
        .unwrap();
    assert_eq!(&watcher.next_publish().await.payload[..], b"still here");
    assert_eq!(broker.broker.retained_count(), 1);

    // No configuration can allow walks that deep.
    let err = switchyard::Config::parse("[mqtt]\nmax_topic_levels = 100000\n", "deep.toml")
        .expect_err("refused");
    assert!(err.to_string().contains("max_topic_levels"), "{err}");
}

/// Waits for the server to close `stream`; how long it took.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(mut stream: S) -> std::time::Duration {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("still open after {WAIT:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_finish_their_handshake_are_closed_at_the_connect_timeout() {
    use switchyard_core::config::ListenerKind;
    let pki = Pki::new();
    let mut cfg = test_config();
    cfg.listeners.push(local(ListenerKind::WsJson));
    cfg.listeners.push(pki.listener(ListenerKind::Tls));
    cfg.listeners.push(pki.listener(ListenerKind::Wss));
    cfg.mqtt.connect_timeout_s = 1;
    let broker = start(cfg).await;
    let limit = std::time::Duration::from_secs(4);
    // Nothing at all after the TCP connection: no CONNECT, no HTTP upgrade, no TLS hello.
    for kind in [
        ListenerKind::Tcp,
        ListenerKind::Ws,
        ListenerKind::WsJson,
        ListenerKind::Tls,
        ListenerKind::Wss,
    ] {
        let tcp = tokio::net::TcpStream::connect(broker.addr(kind).unwrap())
            .await
            .unwrap();
        let took = closed_after(tcp).await;
        assert!(took < limit, "{kind:?}: closed after {took:?}");
    }
    // Upgraded to a JSON WebSocket, then silent: closed too.
    let url = format!("ws://{}/", broker.addr(ListenerKind::WsJson).unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let started = std::time::Instant::now();
    let (_, mut read) = futures_util::StreamExt::split(ws);
    loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut read)).await {
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(m))) if m.is_close() => break,
            Ok(Some(Ok(_))) => continue,
            Err(_) => panic!("upgraded ws-json socket still open after {WAIT:?}"),
        }
    }
    assert!(
        started.elapsed() < limit,
        "ws-json closed after {:?}",
        started.elapsed()
    );
    // Counted: the five silent sockets and the silent ws-json session.
    assert_eq!(limit_hits(&broker, "handshake_timeout").await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_publish_into_the_brokers_dollar_topics() {
    let mut cfg = test_config();
    cfg.mqtt.sys_interval_s = 1;
    let broker = start(cfg).await;
    let addr = tcp_addr(&broker);
    let mut forger = v5::connect(v5::options(addr, "forger")).await;
    forger
        .client
        .publish(
            "$SYS/broker/clients/connected",
            v5::QoS::AtLeastOnce,
            true,
            "999999",
        )
        .await
        .unwrap();
    assert_eq!(
        forger.next_puback_reason().await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
    );
    // A 3.1.1 client's is dropped; the broker's own value is what subscribers see.
    let v3 = v4::connect(v4::options(addr, "forger-v3")).await;
    v3.client
        .publish(
            "$SYS/broker/clients/connected",
            v4::QoS::AtLeastOnce,
            true,
            "888888",
        )
        .await
        .unwrap();
    let mut reader = v5::connect(v5::options(addr, "reader")).await;
    reader
        .subscribe("$SYS/broker/clients/connected", v5::QoS::AtMostOnce)
        .await;
    let got = reader.next_publish().await;
    let count: u64 = std::str::from_utf8(&got.payload).unwrap().parse().unwrap();
    assert!(
        count <= 3,
        "the broker's own count, not a forged one: {count}"
    );
    // Nor through a will (the sessions fuzz target found a retained will on `$SYS/x` stored).
    for (version, expected) in [
        (ProtocolVersion::V5, ReasonCode::NOT_AUTHORIZED),
        (ProtocolVersion::V311, ReasonCode(0x05)),
    ] {
        let mut c = connect_packet(version, "will-forger");
        c.will = Some(protocol::LastWill {
            topic: "$SYS/forged/will".into(),
            payload: bytes::Bytes::from_static(b"0"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
        });
        let mut raw = Raw::connect(addr).await;
        assert_eq!(raw.handshake_with(c).await.code, expected, "{version:?}");
    }
    assert!(broker
        .broker
        .retained_matching("$SYS/forged/will")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_and_retained_messages_are_bounded() {
    let mut cfg = test_config();
    cfg.mqtt.max_subscriptions = 3;
    cfg.mqtt.max_retained_messages = 2;
    cfg.mqtt.max_retained_bytes = 1000;
    let broker = start(cfg).await;
    let addr = tcp_addr(&broker);

    // One SUBSCRIBE with five filters: three fit, two are refused; an existing one can be
    // subscribed again.
    let mut c = v5::connect(v5::options(addr, "greedy")).await;
    let filters: Vec<v5::Filter> = (0..5)
        .map(|i| v5::Filter::new(format!("f/{i}"), v5::QoS::AtMostOnce))
        .collect();
    c.client.subscribe_many(filters).await.unwrap();
    let codes = c
        .expect(|p| match p {
            v5::Packet::SubAck(a) => Some(a.return_codes.clone()),
            _ => None,
        })
        .await;
    let granted = v5::SubscribeReasonCode::Success(v5::QoS::AtMostOnce);
    let quota = v5::SubscribeReasonCode::QuotaExceeded;
    assert_eq!(codes, vec![granted, granted, granted, quota, quota]);
    assert_eq!(c.subscribe("f/0", v5::QoS::AtMostOnce).await, vec![granted]);

    // Two retained messages fit; a third topic is routed but not retained.
    let mut watcher = v5::connect(v5::options(addr, "watcher")).await;
    watcher.subscribe("r/#", v5::QoS::AtLeastOnce).await;
    let publisher = v5::connect(v5::options(addr, "retainer")).await;
    let retain = |topic: &'static str, payload: Vec<u8>| {
        let client = publisher.client.clone();
        async move {
            client
                .publish(topic, v5::QoS::AtLeastOnce, true, payload)
                .await
                .unwrap();
        }
    };
    retain("r/1", b"one".to_vec()).await;
    retain("r/2", b"two".to_vec()).await;
    retain("r/3", b"three".to_vec()).await;
    for expected in [&b"one"[..], b"two", b"three"] {
        assert_eq!(
            &watcher.next_publish().await.payload[..],
            expected,
            "all routed"
        );
    }
    assert_eq!(broker.broker.retained_count(), 2, "the third not retained");
    // Replacing one always works; clearing one makes room.
    retain("r/1", b"one again".to_vec()).await;
    retain("r/2", Vec::new()).await;
    retain("r/3", b"three".to_vec()).await;
    for _ in 0..3 {
        watcher.next_publish().await;
    }
    assert_eq!(broker.broker.retained_count(), 2);
    let mut late = v5::connect(v5::options(addr, "late")).await;
    late.subscribe("r/#", v5::QoS::AtMostOnce).await;
    let mut got = [late.next_publish().await, late.next_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(&got[0].payload[..], b"one again");
    assert_eq!(&got[1].payload[..], b"three");
    // The byte bound: a 2000-byte retained payload does not fit in 1000.
    retain("r/1", Vec::new()).await;
    retain("r/big", vec![b'x'; 2000]).await;
    for _ in 0..2 {
        watcher.next_publish().await;
    }
    assert_eq!(broker.broker.retained_count(), 1, "only r/3 is left");
    assert_eq!(limit_hits(&broker, "subscriptions").await, 2);
    assert_eq!(
        limit_hits(&broker, "retained").await,
        2,
        "r/3 the first time, r/big"
    );
}
