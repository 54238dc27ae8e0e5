//! QoS 0/1/2 flows in both directions, QoS downgrade, packet ids and the inflight window.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_flows_v311_all_levels_and_downgrade() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut sub = v4::connect(v4::options(addr, "sub")).await;
    assert_eq!(
        sub.subscribe("q/#", v4::QoS::ExactlyOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(v4::QoS::ExactlyOnce)]
    );
    let mut low = v4::connect(v4::options(addr, "low")).await;
    low.subscribe("q/#", v4::QoS::AtLeastOnce).await;
    let publisher = v4::connect(v4::options(addr, "pub")).await;
    for (i, qos) in [
        v4::QoS::AtMostOnce,
        v4::QoS::AtLeastOnce,
        v4::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        publisher
            .client
            .publish(format!("q/{i}"), qos, false, format!("m{i}"))
            .await
            .unwrap();
        let got = sub.next_publish().await;
        assert_eq!(got.topic, format!("q/{i}"));
        assert_eq!(&got.payload[..], format!("m{i}").as_bytes());
        assert_eq!(got.qos, qos);
        if qos != v4::QoS::AtMostOnce {
            assert_ne!(got.pkid, 0);
        }
        let got = low.next_publish().await;
        assert_eq!(got.qos, qos.min_qos(v4::QoS::AtLeastOnce));
    }
}

trait MinQos {
    fn min_qos(self, other: Self) -> Self;
}
impl MinQos for v4::QoS {
    fn min_qos(self, other: Self) -> Self {
        if (self as u8) <= (other as u8) {
            self
        } else {
            other
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_flows_v5_publisher_gets_acks_and_ordered_delivery() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut sub = v5::connect(v5::options(addr, "sub5")).await;
    sub.subscribe("o/+", v5::QoS::ExactlyOnce).await;
    let mut publisher = v5::connect(v5::options(addr, "pub5")).await;
    for i in 0..200u32 {
        let qos = match i % 3 {
            0 => v5::QoS::AtMostOnce,
            1 => v5::QoS::AtLeastOnce,
            _ => v5::QoS::ExactlyOnce,
        };
        publisher
            .client
            .publish("o/x", qos, false, i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    // Every message arrives, in order, at its own QoS.
    for i in 0..200u32 {
        let p = sub.next_publish().await;
        assert_eq!(&p.payload[..], &i.to_be_bytes());
    }
    // The publisher saw its QoS 1 and 2 handshakes complete.
    let mut acks = 0;
    let mut comps = 0;
    while acks < 67 || comps < 66 {
        publisher
            .expect(|p| match p {
                v5::Packet::PubAck(_) => {
                    acks += 1;
                    Some(())
                }
                v5::Packet::PubComp(_) => {
                    comps += 1;
                    Some(())
                }
                _ => None,
            })
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_limits_unacknowledged_deliveries() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut o = v5::options(addr, "slow");
    o.set_receive_maximum(Some(3));
    o.set_manual_acks(true);
    let mut sub = v5::connect(o).await;
    sub.subscribe("w", v5::QoS::AtLeastOnce).await;
    let publisher = v5::connect(v5::options(addr, "fast")).await;
    for i in 0..10u8 {
        publisher
            .client
            .publish("w", v5::QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    let mut held = Vec::new();
    for i in 0..3u8 {
        let p = sub.next_publish().await;
        assert_eq!(&p.payload[..], &[i]);
        held.push(p);
    }
    // With three unacknowledged, the broker must wait.
    sub.assert_no_publish(Duration::from_millis(300)).await;
    sub.client.ack(&held[0]).await.unwrap();
    let p = sub.next_publish().await;
    assert_eq!(&p.payload[..], &[3]);
    for h in &held[1..] {
        sub.client.ack(h).await.unwrap();
    }
    held = vec![p];
    for i in 4..10u8 {
        let p = sub.next_publish().await;
        assert_eq!(&p.payload[..], &[i]);
        sub.client.ack(&p).await.unwrap();
    }
    sub.client.ack(&held[0]).await.unwrap();
}

fn qos2_publish(id: u16) -> switchyard_core::protocol::Packet {
    use switchyard_core::protocol::{Packet, Publish, QoS};
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "rm/t".into(),
        packet_id: id,
        properties: Default::default(),
        payload: bytes::Bytes::from_static(b"x"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_is_enforced_for_v5_only() {
    use switchyard_core::protocol::{Packet, ProtocolVersion, ReasonCode};
    let mut cfg = test_config();
    cfg.mqtt.max_inflight = 4;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    // v5: told Receive Maximum 4; a fifth unreleased QoS 2 message is a violation (0x93).
    let mut v5c = Raw::connect(addr).await;
    assert_eq!(
        v5c.handshake(ProtocolVersion::V5, "rm5")
            .await
            .properties
            .receive_maximum,
        Some(4)
    );
    for id in 1..=5 {
        v5c.send(&qos2_publish(id)).await;
    }
    let mut recs = 0;
    let mut disconnect = None;
    while let Some(p) = v5c.recv().await {
        match p {
            Packet::PubRec(_) => recs += 1,
            Packet::Disconnect(d) => disconnect = Some(d.code),
            _ => {}
        }
    }
    assert_eq!(
        (recs, disconnect),
        (4, Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED))
    );
    // v3 has no Receive Maximum: 50 unreleased QoS 2 messages are all accepted.
    let mut v3c = Raw::connect(addr).await;
    v3c.handshake(ProtocolVersion::V311, "rm3").await;
    for id in 1..=50 {
        v3c.send(&qos2_publish(id)).await;
    }
    for _ in 0..50 {
        assert!(matches!(v3c.recv().await, Some(Packet::PubRec(_))));
    }
}

/// A subscriber's PUBACKs arrive in runs and are taken under one lock: a run that mixes
/// known ids, an unknown one and a repeat acknowledges exactly the known ones, and the rest
/// come again after a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_pubacks_in_one_write_acknowledges_exactly_what_it_names() {
    use switchyard_core::protocol::{self, Packet, ProtocolVersion, PubResponse, QoS, ReasonCode};
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut c = connect_packet(ProtocolVersion::V311, "acker");
    c.clean_start = false;
    let mut sub = Raw::connect(addr).await;
    sub.handshake_with(c.clone()).await;
    sub.send(&Packet::Subscribe(protocol::Subscribe {
        packet_id: 1,
        filters: vec![(
            "acks/#".into(),
            protocol::SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let publisher = v4::connect(v4::options(addr, "acks-pub")).await;
    for i in 0..5 {
        publisher
            .client
            .publish(
                format!("acks/{i}"),
                v4::QoS::AtLeastOnce,
                false,
                format!("m{i}"),
            )
            .await
            .unwrap();
    }
    let mut ids = Vec::new();
    while ids.len() < 5 {
        match sub.recv().await {
            Some(Packet::Publish(p)) => ids.push((p.packet_id, p.payload)),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    let mut run = bytes::BytesMut::new();
    let unknown = ids.iter().map(|(id, _)| *id).max().unwrap() + 100;
    for id in [ids[0].0, unknown, ids[2].0, ids[2].0, ids[4].0] {
        let ack = Packet::PubAck(PubResponse::new(id, ReasonCode::SUCCESS));
        protocol::encode_packet(&ack, ProtocolVersion::V311, &mut run);
    }
    sub.send_bytes(&run).await;
    sub.send(&Packet::Disconnect(protocol::Disconnect {
        code: ReasonCode::SUCCESS,
        properties: Default::default(),
    }))
    .await;
    assert!(sub.expect_close().await.is_none());
    let mut again = Raw::connect(addr).await;
    assert!(again.handshake_with(c).await.session_present);
    let mut resent = Vec::new();
    while resent.len() < 2 {
        match again.recv().await {
            Some(Packet::Publish(p)) => {
                assert!(p.dup, "a resend carries DUP");
                resent.push((p.packet_id, p.payload));
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(resent, vec![ids[1].clone(), ids[3].clone()]);
    // Nothing else is owed: a ping is answered before any further PUBLISH.
    again.send(&Packet::PingReq).await;
    assert!(matches!(again.recv().await, Some(Packet::PingResp)));
}
