//! Codec micro-benchmarks: decode and encode per packet type, v3.1.1 and v5.
//! `cargo bench -p switchyard-bench --bench codec`

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use switchyard_core::protocol::*;

fn publish(v5: bool) -> Packet {
    let mut properties = Properties::default();
    if v5 {
        properties.content_type = Some("application/json".into());
        properties.user_properties = vec![("device".into(), "sensor-17".into())];
        properties.message_expiry_interval = Some(60);
    }
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "sensors/building-7/floor-3/room-12/temperature".into(),
        packet_id: 4711,
        properties: properties.into(),
        payload: Bytes::from(vec![0x5Au8; 64]),
    })
}

fn encoded(p: &Packet, v: ProtocolVersion) -> Bytes {
    let mut b = BytesMut::new();
    encode_packet(p, v, &mut b);
    b.freeze()
}

fn bench(c: &mut Criterion) {
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![
            (
                "sensors/+/temperature".into(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            ),
            ("alerts/#".into(), SubscriptionOptions::default()),
        ],
        properties: Props::default(),
    });
    let puback = Packet::PubAck(PubResponse::new(7, ReasonCode::SUCCESS));
    let cases: Vec<(&str, Packet, ProtocolVersion)> = vec![
        ("publish_qos1_v311", publish(false), ProtocolVersion::V311),
        ("publish_qos1_v5_props", publish(true), ProtocolVersion::V5),
        ("subscribe_v311", subscribe, ProtocolVersion::V311),
        ("puback_v311", puback, ProtocolVersion::V311),
        ("pingreq", Packet::PingReq, ProtocolVersion::V311),
    ];
    let mut g = c.benchmark_group("decode");
    for (name, p, v) in &cases {
        let bytes = encoded(p, *v);
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(*name, |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&bytes[..]);
                black_box(decode_packet(&mut buf, Some(*v), 1 << 20).unwrap())
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("encode");
    for (name, p, v) in &cases {
        let mut buf = BytesMut::with_capacity(1024);
        g.bench_function(*name, |b| {
            b.iter(|| {
                buf.clear();
                encode_packet(black_box(p), *v, &mut buf);
                black_box(buf.len())
            })
        });
    }
    // The router's per-subscriber path: shared message, per-delivery packet id and expiry.
    let props = Properties {
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    let payload = vec![1u8; 64];
    let mut buf = BytesMut::with_capacity(64 * 1024);
    g.bench_function("outgoing_publish_v5_per_subscriber", |b| {
        b.iter(|| {
            if buf.len() > 60 * 1024 {
                buf.clear();
            }
            let out = OutgoingPublish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "sensors/7/temp",
                packet_id: 9,
                properties: &props,
                message_expiry: Some(30),
                subscription_identifiers: &[3],
                topic_alias: None,
                payload: &payload,
            };
            encode_publish(black_box(&out), ProtocolVersion::V5, &mut buf);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
