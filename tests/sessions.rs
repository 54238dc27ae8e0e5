//! Persistent sessions, offline queueing, DUP redelivery, takeover, keep-alive, client ids.

mod common;
use common::*;
use std::time::Duration;
use switchyard_core::protocol::{self, Packet, ProtocolVersion, ReasonCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_queues_while_offline_and_drops_over_limit() {
    let mut cfg = test_config();
    cfg.mqtt.max_queued_messages = 5;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let mut o = v4::options(addr, "durable");
    o.set_clean_session(false);
    let mut sub = v4::connect(o.clone()).await;
    sub.subscribe("d/#", v4::QoS::AtLeastOnce).await;
    sub.client.disconnect().await.unwrap();
    sub.expect_closed().await;

    let publisher = v4::connect(v4::options(addr, "p")).await;
    for i in 0..8u8 {
        publisher
            .client
            .publish("d/x", v4::QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    publisher
        .client
        .publish("d/x", v4::QoS::AtMostOnce, false, vec![99])
        .await
        .unwrap();
    // Wait until the broker has seen everything (a QoS 1 round trip after the burst). The
    // probe subscribes to the marker only: rumqttc may still be sending the burst.
    let mut probe = v4::connect(v4::options(addr, "probe")).await;
    probe.subscribe("d/end", v4::QoS::AtLeastOnce).await;
    publisher
        .client
        .publish("d/end", v4::QoS::AtLeastOnce, false, vec![200])
        .await
        .unwrap();
    assert_eq!(probe.next_publish().await.topic, "d/end");

    let mut back = v4::connect_any(o).await.unwrap();
    // The first five QoS 1 messages were kept; the rest (and QoS 0) were not.
    for i in 0..5u8 {
        let p = back.next_publish().await;
        assert_eq!(&p.payload[..], &[i], "queued in order");
    }
    let dropped = server
        .broker
        .metrics
        .messages_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped >= 4, "dropped counted: {dropped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_qos1_and_qos2_are_redelivered_with_dup_after_reconnect() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut o = v5::options(addr, "redeliver");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(300));
    o.set_manual_acks(true);
    let mut sub = v5::connect(o.clone()).await;
    sub.subscribe("r/#", v5::QoS::ExactlyOnce).await;
    let publisher = v5::connect(v5::options(addr, "rp")).await;
    publisher
        .client
        .publish("r/1", v5::QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    publisher
        .client
        .publish("r/2", v5::QoS::ExactlyOnce, false, "two")
        .await
        .unwrap();
    let first = sub.next_publish().await;
    let second = sub.next_publish().await;
    assert!(!first.dup && !second.dup);
    sub.kill().await;

    let mut back = v5::connect(o).await;
    assert!(back.connack.session_present);
    let a = back.next_publish().await;
    let b = back.next_publish().await;
    assert!(a.dup && b.dup, "redelivered with DUP");
    assert_eq!((&a.payload[..], a.pkid), (&b"one"[..], first.pkid));
    assert_eq!((&b.payload[..], b.pkid), (&b"two"[..], second.pkid));
    back.client.ack(&a).await.unwrap();
    back.client.ack(&b).await.unwrap();
    // QoS 2 continues: the broker answers our PUBREC with PUBREL.
    back.expect(|p| matches!(p, v5::Packet::PubRel(_)).then_some(()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_start_discards_the_old_session() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut o = v5::options(addr, "cs");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(300));
    let mut s = v5::connect(o.clone()).await;
    assert!(!s.connack.session_present);
    s.subscribe("cs/t", v5::QoS::AtLeastOnce).await;
    s.client.disconnect().await.unwrap();
    s.expect_closed().await;
    let s2 = v5::connect(o.clone()).await;
    assert!(s2.connack.session_present);
    s2.client.disconnect().await.unwrap();
    o.set_clean_start(true);
    let s3 = v5::connect(o).await;
    assert!(!s3.connack.session_present);
    assert_eq!(server.broker.subscription_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_takeover_disconnects_the_old_connection_with_0x8e() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut old = Raw::connect(addr).await;
    old.handshake(ProtocolVersion::V5, "same-id").await;
    let mut new = v5::connect(v5::options(addr, "same-id")).await;
    let d = old.expect_close().await.expect("DISCONNECT before close");
    assert_eq!(d.code, ReasonCode::SESSION_TAKEN_OVER);
    // The new connection works.
    new.subscribe("t", v5::QoS::AtMostOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut raw = Raw::connect(addr).await;
    raw.version = ProtocolVersion::V5;
    let connect = protocol::Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 1,
        client_id: "sleepy".into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    };
    let started = std::time::Instant::now();
    raw.send(&Packet::Connect(Box::new(connect))).await;
    assert!(matches!(raw.recv().await, Some(Packet::ConnAck(_))));
    let d = raw.expect_close().await.expect("DISCONNECT");
    assert_eq!(d.code, ReasonCode::KEEP_ALIVE_TIMEOUT);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keep_alive_caps_a_v5_clients_request() {
    let mut cfg = test_config();
    cfg.mqtt.max_keepalive_s = 20;
    let server = start(cfg).await;
    let mut o = v5::options(tcp_addr(&server), "ka");
    o.set_keep_alive(Duration::from_secs(100));
    let c = v5::connect(o).await;
    assert_eq!(
        c.connack
            .properties
            .as_ref()
            .and_then(|p| p.server_keep_alive),
        Some(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_ids_follow_the_version_rules() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    // v5: the server assigns one.
    let c = v5::connect(v5::options(addr, "")).await;
    let assigned = c
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone());
    assert!(assigned.is_some_and(|id| !id.is_empty()));
    // v3.1.1 with clean session: accepted.
    let mut raw = Raw::connect(addr).await;
    let ack = raw.handshake(ProtocolVersion::V311, "").await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    // v3.1.1 without clean session: identifier rejected (return code 2).
    let mut raw = Raw::connect(addr).await;
    raw.version = ProtocolVersion::V311;
    raw.send_bytes(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60, 0, 0])
        .await;
    raw.stream.readable().await.unwrap();
    let mut b = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut b)
        .await
        .unwrap();
    assert_eq!(b, [0x20, 2, 0, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expires_after_its_interval() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut o = v5::options(addr, "short");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(1));
    let mut c = v5::connect(o.clone()).await;
    c.subscribe("x", v5::QoS::AtLeastOnce).await;
    c.client.disconnect().await.unwrap();
    c.expect_closed().await;
    assert!(server.broker.session("short").is_some());
    wait_until("the session expired", || {
        server.broker.session("short").is_none()
    })
    .await;
    let c = v5::connect(o).await;
    assert!(!c.connack.session_present);
}
