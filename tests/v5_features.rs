//! MQTT 5 specifics: properties end to end, topic aliases, Maximum Packet Size both ways,
//! subscription identifiers, No Local, reason strings, enhanced authentication refusal.

mod common;
use bytes::Bytes;
use common::*;
use std::time::Duration;
use switchyard_core::protocol::{
    Packet, Properties, Props, ProtocolVersion, Publish, QoS, ReasonCode,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_travel_end_to_end() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut sub = v5::connect(v5::options(addr, "ps")).await;
    sub.subscribe("props", v5::QoS::AtLeastOnce).await;
    let publisher = v5::connect(v5::options(addr, "pp")).await;
    let props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(120),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/to".into()),
        correlation_data: Some(Bytes::from_static(b"corr-1")),
        user_properties: vec![
            ("z".into(), "1".into()),
            ("a".into(), "2".into()),
            ("z".into(), "3".into()),
        ],
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("props", v5::QoS::AtLeastOnce, false, "{}", props.clone())
        .await
        .unwrap();
    let p = sub.next_publish().await;
    let got = p.properties.expect("properties");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type, props.content_type);
    assert_eq!(got.response_topic, props.response_topic);
    assert_eq!(got.correlation_data, props.correlation_data);
    assert_eq!(
        got.user_properties, props.user_properties,
        "user properties in order"
    );
    let left = got.message_expiry_interval.expect("expiry");
    assert!((118..=120).contains(&left));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_is_decremented_while_queued() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut o = v5::options(addr, "queued");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    let mut sub = v5::connect(o.clone()).await;
    sub.subscribe("exp", v5::QoS::AtLeastOnce).await;
    sub.client.disconnect().await.unwrap();
    sub.expect_closed().await;
    let publisher = v5::connect(v5::options(addr, "ep")).await;
    let props = v5::PublishProperties {
        message_expiry_interval: Some(10),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("exp", v5::QoS::AtLeastOnce, false, "x", props)
        .await
        .unwrap();
    let props = v5::PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("exp", v5::QoS::AtLeastOnce, false, "gone", props)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await; // time passing is the point
    let mut back = v5::connect(o).await;
    let p = back.next_publish().await;
    assert_eq!(&p.payload[..], b"x");
    let left = p
        .properties
        .and_then(|p| p.message_expiry_interval)
        .unwrap();
    assert!(left <= 8, "decremented: {left}");
    back.assert_no_publish(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_from_clients_are_resolved_and_bounded() {
    let mut cfg = test_config();
    cfg.mqtt.topic_alias_max = 5;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let mut sub = v5::connect(v5::options(addr, "as")).await;
    sub.subscribe("alias/#", v5::QoS::AtMostOnce).await;
    let mut raw = Raw::connect(addr).await;
    let ack = raw.handshake(ProtocolVersion::V5, "aliaser").await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(5));
    let publish = |topic: &str, alias: u16, payload: &'static [u8]| {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: 0,
            properties: Properties {
                topic_alias: Some(alias),
                ..Default::default()
            }
            .into(),
            payload: Bytes::from_static(payload),
        })
    };
    raw.send(&publish("alias/long/topic", 1, b"set")).await;
    raw.send(&publish("", 1, b"use")).await;
    for expected in [&b"set"[..], b"use"] {
        let p = sub.next_publish().await;
        assert_eq!(
            (&p.topic[..], &p.payload[..]),
            (&b"alias/long/topic"[..], expected)
        );
    }
    // An alias above the maximum is a protocol violation: 0x94.
    raw.send(&publish("alias/x", 6, b"bad")).await;
    assert_eq!(
        raw.expect_close().await.map(|d| d.code),
        Some(ReasonCode::TOPIC_ALIAS_INVALID)
    );
    // An unknown alias without a topic: protocol error.
    let mut raw = Raw::connect(addr).await;
    raw.handshake(ProtocolVersion::V5, "aliaser2").await;
    raw.send(&publish("", 2, b"??")).await;
    assert_eq!(
        raw.expect_close().await.map(|d| d.code),
        Some(ReasonCode::PROTOCOL_ERROR)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_packet_size_is_enforced_both_ways() {
    let mut cfg = test_config();
    cfg.mqtt.max_packet_size = 1024;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    // A client that accepts at most 200 bytes never gets a bigger packet.
    let mut o = v5::options(addr, "small");
    o.set_max_packet_size(Some(200));
    let mut small = v5::connect(o).await;
    assert_eq!(
        small
            .connack
            .properties
            .as_ref()
            .and_then(|p| p.max_packet_size),
        Some(1024)
    );
    small.subscribe("size/#", v5::QoS::AtLeastOnce).await;
    let publisher = v5::connect(v5::options(addr, "big")).await;
    publisher
        .client
        .publish("size/a", v5::QoS::AtLeastOnce, false, vec![0u8; 500])
        .await
        .unwrap();
    publisher
        .client
        .publish("size/b", v5::QoS::AtLeastOnce, false, vec![1u8; 50])
        .await
        .unwrap();
    let p = small.next_publish().await;
    assert_eq!(&p.topic[..], b"size/b", "the oversized message was skipped");
    // A client sending more than our maximum is disconnected with 0x95.
    let mut raw = Raw::connect(addr).await;
    raw.handshake(ProtocolVersion::V5, "toolarge").await;
    raw.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "size/c".into(),
        packet_id: 0,
        properties: Props::default(),
        payload: Bytes::from(vec![0u8; 2000]),
    }))
    .await;
    assert_eq!(
        raw.expect_close().await.map(|d| d.code),
        Some(ReasonCode::PACKET_TOO_LARGE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_and_no_local() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut c = v5::connect(v5::options(addr, "ids")).await;
    c.subscribe_with(
        v5::Filter::new("sid/+", v5::QoS::AtLeastOnce),
        Some(v5::SubscribeProperties {
            id: Some(7),
            user_properties: vec![],
        }),
    )
    .await;
    c.subscribe_with(
        v5::Filter::new("sid/#", v5::QoS::AtMostOnce),
        Some(v5::SubscribeProperties {
            id: Some(300),
            user_properties: vec![],
        }),
    )
    .await;
    let mut nolocal = v5::Filter::new("nl", v5::QoS::AtMostOnce);
    nolocal.nolocal = true;
    c.subscribe_with(nolocal, None).await;
    let other = v5::connect(v5::options(addr, "other")).await;
    other
        .client
        .publish("sid/x", v5::QoS::AtLeastOnce, false, "m")
        .await
        .unwrap();
    let p = c.next_publish().await;
    assert_eq!(
        p.qos,
        v5::QoS::AtLeastOnce,
        "overlapping subscriptions: one copy at the highest QoS"
    );
    let mut ids = p.properties.unwrap().subscription_identifiers;
    ids.sort();
    assert_eq!(ids, vec![7, 300]);
    // Our own message on a No Local subscription does not come back; another client's does.
    c.client
        .publish("nl", v5::QoS::AtMostOnce, false, "mine")
        .await
        .unwrap();
    other
        .client
        .publish("nl", v5::QoS::AtMostOnce, false, "theirs")
        .await
        .unwrap();
    assert_eq!(&c.next_publish().await.payload[..], b"theirs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reason_strings_follow_request_problem_information() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut raw = Raw::connect(addr).await;
    raw.handshake(ProtocolVersion::V5, "rpi").await;
    raw.send_bytes(&[0xC0, 0x01, 0x00]).await; // PINGREQ with a body: malformed
    let d = raw.expect_close().await.unwrap();
    assert_eq!(d.code, ReasonCode::MALFORMED_PACKET);
    assert!(d.properties.reason_string.is_some());
    let mut raw = Raw::connect(addr).await;
    let mut c = connect_packet(ProtocolVersion::V5, "rpi0");
    c.properties.request_problem_information = Some(0);
    raw.handshake_with(c).await;
    raw.send_bytes(&[0xC0, 0x01, 0x00]).await;
    let d = raw.expect_close().await.unwrap();
    assert_eq!(d.code, ReasonCode::MALFORMED_PACKET);
    assert!(d.properties.reason_string.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_authentication_is_refused_cleanly() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut raw = Raw::connect(addr).await;
    let mut c = connect_packet(ProtocolVersion::V5, "scram");
    c.properties.authentication_method = Some("SCRAM-SHA-256".into());
    let ack = raw.handshake_with(c).await;
    assert_eq!(ack.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert!(raw.recv().await.is_none());
    // AUTH after a plain CONNECT is a protocol error.
    let mut raw = Raw::connect(addr).await;
    raw.handshake(ProtocolVersion::V5, "auth-later").await;
    raw.send(&Packet::Auth(switchyard_core::protocol::Auth {
        code: ReasonCode::RE_AUTHENTICATE,
        properties: Props::default(),
    }))
    .await;
    assert_eq!(
        raw.expect_close().await.map(|d| d.code),
        Some(ReasonCode::PROTOCOL_ERROR)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_advertises_limits() {
    let mut cfg = test_config();
    cfg.mqtt.retain_available = false;
    cfg.mqtt.shared_subscriptions = false;
    cfg.mqtt.max_inflight = 10;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let mut raw = Raw::connect(addr).await;
    let ack = raw.handshake(ProtocolVersion::V5, "limits").await;
    assert_eq!(ack.properties.receive_maximum, Some(10));
    assert_eq!(ack.properties.retain_available, Some(0));
    assert_eq!(ack.properties.shared_subscription_available, Some(0));
    let mut sub = v5::connect(v5::options(addr, "sharer")).await;
    let codes = sub.subscribe("$share/g/t", v5::QoS::AtMostOnce).await;
    assert_eq!(
        codes,
        vec![v5::SubscribeReasonCode::SharedSubscriptionsNotSupported]
    );
    // Publishing retained when retain is unavailable: 0x9A.
    raw.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: "r".into(),
        packet_id: 0,
        properties: Props::default(),
        payload: Bytes::from_static(b"x"),
    }))
    .await;
    assert_eq!(
        raw.expect_close().await.map(|d| d.code),
        Some(ReasonCode::RETAIN_NOT_SUPPORTED)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_packets_shed_properties_to_fit_the_clients_maximum() {
    let server = start(test_config()).await;
    let mut raw = Raw::connect(tcp_addr(&server)).await;
    let mut c = connect_packet(ProtocolVersion::V5, "tiny");
    // Room for a DISCONNECT with a reason code but not with a reason string.
    c.properties.maximum_packet_size = Some(4);
    let ack = raw.handshake_with(c).await;
    assert!(ack.properties.is_empty(), "CONNACK shed its properties too");
    raw.send_bytes(&[0xC0, 0x01, 0x00]).await; // malformed PINGREQ
    let d = raw.expect_close().await.expect("DISCONNECT still sent");
    assert_eq!(d.code, ReasonCode::MALFORMED_PACKET);
    assert!(d.properties.reason_string.is_none());
}
