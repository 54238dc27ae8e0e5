//! Retained messages (set, replace, clear, Retain Handling, Retain As Published, expiry) and
//! will messages (when they are and are not published, delay, cancellation by reconnect).

mod common;
use common::*;
use std::time::Duration;
use switchyard_core::protocol::{Disconnect, Packet, ProtocolVersion, ReasonCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_replace_clear() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let publisher = v4::connect(v4::options(addr, "rp")).await;
    publisher
        .client
        .publish("ret/a", v4::QoS::AtLeastOnce, true, "first")
        .await
        .unwrap();
    publisher
        .client
        .publish("ret/a", v4::QoS::AtLeastOnce, true, "second")
        .await
        .unwrap();
    publisher
        .client
        .publish("ret/b", v4::QoS::AtLeastOnce, true, "b")
        .await
        .unwrap();
    // The client library acknowledges a publish call before the broker has the message:
    // wait until the last one (ret/b, after both ret/a) is stored.
    wait_until("retained stored", || server.broker.retained_count() == 2).await;
    let mut probe = v4::connect(v4::options(addr, "probe")).await;
    probe.subscribe("ret/b", v4::QoS::AtMostOnce).await;
    let p = probe.next_publish().await;
    assert!(p.retain);

    let mut sub = v4::connect(v4::options(addr, "rs")).await;
    sub.subscribe("ret/a", v4::QoS::AtLeastOnce).await;
    let p = sub.next_publish().await;
    assert_eq!(&p.payload[..], b"second");
    assert!(p.retain, "retained flag set on subscribe delivery");

    // A live message to an existing subscriber goes out without RETAIN (v3).
    publisher
        .client
        .publish("ret/a", v4::QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    let p = sub.next_publish().await;
    assert!(p.payload.is_empty() && !p.retain);
    let mut late = v4::connect(v4::options(addr, "late")).await;
    late.subscribe("ret/#", v4::QoS::AtLeastOnce).await;
    let p = late.next_publish().await;
    assert_eq!(p.topic, "ret/b", "ret/a was cleared by the empty payload");
    assert_eq!(server.broker.retained_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_and_retain_as_published() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let publisher = v5::connect(v5::options(addr, "p5")).await;
    publisher
        .client
        .publish("rh/t", v5::QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    let mut sub = v5::connect(v5::options(addr, "s5")).await;
    // Wait until it is stored: a plain subscription sees it.
    sub.subscribe("rh/t", v5::QoS::AtLeastOnce).await;
    assert_eq!(&sub.next_publish().await.payload[..], b"kept");

    // Retain Handling 1: only for a new subscription.
    let mut f = v5::Filter::new("rh/#", v5::QoS::AtLeastOnce);
    f.retain_forward_rule = v5::RetainForwardRule::OnNewSubscribe;
    sub.subscribe_with(f.clone(), None).await;
    assert_eq!(&sub.next_publish().await.payload[..], b"kept");
    sub.subscribe_with(f, None).await;
    // Retain Handling 2: never.
    let mut never = v5::Filter::new("rh/+", v5::QoS::AtLeastOnce);
    never.retain_forward_rule = v5::RetainForwardRule::Never;
    never.preserve_retain = true;
    sub.subscribe_with(never, None).await;
    // Neither resubscribe produced a retained message: the next one is a live one, and Retain
    // As Published keeps its RETAIN flag.
    publisher
        .client
        .publish("rh/t", v5::QoS::AtLeastOnce, true, "live")
        .await
        .unwrap();
    let p = sub.next_publish().await;
    assert_eq!(&p.payload[..], b"live");
    assert!(p.retain, "retain as published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_retained_messages_are_not_delivered() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let publisher = v5::connect(v5::options(addr, "pe")).await;
    let props = v5::PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("exp/a", v5::QoS::AtLeastOnce, true, "short", props)
        .await
        .unwrap();
    publisher
        .client
        .publish("exp/b", v5::QoS::AtLeastOnce, true, "long")
        .await
        .unwrap();
    let mut s = v5::connect(v5::options(addr, "se")).await;
    s.subscribe("exp/a", v5::QoS::AtLeastOnce).await;
    let p = s.next_publish().await;
    let left = p
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval);
    assert!(matches!(left, Some(0..=1)), "expiry counts down: {left:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the expiry interval pass
    let mut s2 = v5::connect(v5::options(addr, "se2")).await;
    s2.subscribe("exp/#", v5::QoS::AtLeastOnce).await;
    assert_eq!(&s2.next_publish().await.payload[..], b"long");
    s2.assert_no_publish(Duration::from_millis(200)).await;
}

async fn will_watcher(addr: std::net::SocketAddr, id: &str) -> v5::Client {
    let mut w = v5::connect(v5::options(addr, id)).await;
    w.subscribe("will/#", v5::QoS::AtLeastOnce).await;
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_on_abnormal_loss_not_on_normal_disconnect() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut watcher = will_watcher(addr, "ww").await;

    // Normal DISCONNECT: no will.
    let mut c = connect_packet(ProtocolVersion::V311, "polite");
    c.will = Some(will("will/polite", b"x"));
    let mut raw = Raw::connect(addr).await;
    raw.handshake_with(c).await;
    raw.send(&Packet::Disconnect(Disconnect {
        code: ReasonCode::SUCCESS,
        properties: Default::default(),
    }))
    .await;
    assert!(raw.expect_close().await.is_none());

    // Socket dropped: will.
    let mut c = connect_packet(ProtocolVersion::V311, "rude");
    c.will = Some(will("will/rude", b"gone"));
    let mut raw = Raw::connect(addr).await;
    raw.handshake_with(c).await;
    drop(raw);
    let p = watcher.next_publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        (&b"will/rude"[..], &b"gone"[..])
    );

    // Protocol error: will.
    let mut c = connect_packet(ProtocolVersion::V5, "broken");
    c.will = Some(will("will/broken", b"err"));
    let mut raw = Raw::connect(addr).await;
    raw.handshake_with(c).await;
    raw.send_bytes(&[0x00, 0x00]).await;
    assert_eq!(
        raw.expect_close().await.map(|d| d.code),
        Some(ReasonCode::MALFORMED_PACKET)
    );
    assert_eq!(&watcher.next_publish().await.topic[..], b"will/broken");

    // v5 DISCONNECT 0x04: will.
    let mut c = connect_packet(ProtocolVersion::V5, "withwill");
    c.will = Some(will("will/asked", b"asked"));
    let mut raw = Raw::connect(addr).await;
    raw.handshake_with(c).await;
    raw.send(&Packet::Disconnect(Disconnect {
        code: ReasonCode::DISCONNECT_WITH_WILL,
        properties: Default::default(),
    }))
    .await;
    assert_eq!(&watcher.next_publish().await.topic[..], b"will/asked");
    // The polite one never came.
    watcher.assert_no_publish(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_after_keep_alive_timeout_keeps_qos_and_retain() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut watcher = will_watcher(addr, "wk").await;
    let mut c = connect_packet(ProtocolVersion::V311, "silent");
    c.keep_alive = 1;
    let mut w = will("will/silent", b"timeout");
    w.retain = true;
    c.will = Some(w);
    let mut raw = Raw::connect(addr).await;
    raw.handshake_with(c).await;
    let p = watcher.next_publish().await;
    assert_eq!(&p.payload[..], b"timeout");
    assert_eq!(p.qos, v5::QoS::AtLeastOnce);
    let mut late = v5::connect(v5::options(addr, "late")).await;
    late.subscribe("will/silent", v5::QoS::AtLeastOnce).await;
    assert!(late.next_publish().await.retain, "retained will stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_is_honoured_and_cancelled_by_reconnect() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut watcher = will_watcher(addr, "wd").await;
    let delayed = |id: &str, topic: &str| {
        let mut c = connect_packet(ProtocolVersion::V5, id);
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(60);
        let mut w = will(topic, b"late");
        w.properties.will_delay_interval = Some(1);
        c.will = Some(w);
        c
    };
    // Dropped and not back: published after about a second.
    let mut raw = Raw::connect(addr).await;
    raw.handshake_with(delayed("d1", "will/d1")).await;
    let dropped_at = std::time::Instant::now();
    drop(raw);
    assert_eq!(&watcher.next_publish().await.topic[..], b"will/d1");
    assert!(dropped_at.elapsed() >= Duration::from_millis(900));

    // Dropped and back within the delay: never published.
    let mut raw = Raw::connect(addr).await;
    raw.handshake_with(delayed("d2", "will/d2")).await;
    drop(raw);
    let mut back = Raw::connect(addr).await;
    let mut c = connect_packet(ProtocolVersion::V5, "d2");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(60);
    assert!(back.handshake_with(c).await.session_present);
    watcher.assert_no_publish(Duration::from_millis(1500)).await;
}
