//! Raw bytes a broken or hostile client might send: each ends that connection with the right
//! reason and the broker keeps serving everyone else.

mod common;
use common::*;
use switchyard_core::protocol::{ProtocolVersion, ReasonCode};

/// Sends `bytes` after a v5 CONNECT and returns the DISCONNECT reason the broker answered with.
async fn v5_reply_to(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<ReasonCode> {
    let mut raw = Raw::connect(addr).await;
    raw.handshake(ProtocolVersion::V5, "bad").await;
    raw.send_bytes(bytes).await;
    raw.expect_close().await.map(|d| d.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_close_only_the_offending_connection() {
    let mut cfg = test_config();
    cfg.mqtt.max_packet_size = 4096;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let mut bystander = v5::connect(v5::options(addr, "bystander")).await;
    bystander.subscribe("by/#", v5::QoS::AtMostOnce).await;

    let cases: Vec<(&str, Vec<u8>, ReasonCode)> = vec![
        (
            "bad remaining length",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            "reserved flags on SUBSCRIBE",
            vec![0x80, 0x06, 0, 1, 0, 0, 1, b'a'],
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            "invalid UTF-8 topic",
            vec![0x30, 0x05, 0, 2, 0xC3, 0x28, 0],
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            "wildcard in PUBLISH topic",
            vec![0x30, 0x06, 0, 3, b'a', b'/', b'+', 0],
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        (
            "second CONNECT",
            vec![
                0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 0,
            ],
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            "packet over the maximum size",
            vec![0x30, 0xFF, 0xFF, 0x03],
            ReasonCode::PACKET_TOO_LARGE,
        ),
        (
            "reserved packet type 0",
            vec![0x00, 0x00],
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            "QoS 3 publish",
            vec![0x36, 0x05, 0, 1, b'a', 0, 1],
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            "subscribe without filters",
            vec![0x82, 0x03, 0, 1, 0],
            ReasonCode::PROTOCOL_ERROR,
        ),
    ];
    for (what, bytes, code) in cases {
        assert_eq!(v5_reply_to(addr, &bytes).await, Some(code), "{what}");
    }
    still_serving(addr).await;
    // The bystander's connection was never disturbed.
    let p = v5::connect(v5::options(addr, "by-pub")).await;
    p.client
        .publish("by/x", v5::QoS::AtMostOnce, false, "still here")
        .await
        .unwrap();
    assert_eq!(&bystander.next_publish().await.payload[..], b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_clients_are_closed_without_disconnect_packets() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut raw = Raw::connect(addr).await;
    raw.handshake(ProtocolVersion::V311, "v3bad").await;
    raw.send_bytes(&[0x30, 0x06, 0, 3, b'a', b'/', b'#', 0])
        .await;
    assert!(
        raw.expect_close().await.is_none(),
        "v3 has no server DISCONNECT"
    );
    still_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connects_are_refused() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    // Unsupported protocol level: CONNACK 0x01 then close.
    let mut raw = Raw::connect(addr).await;
    raw.send_bytes(&[
        0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 9, 0x02, 0, 60, 0, 0,
    ])
    .await;
    let mut reply = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut reply)
        .await
        .unwrap();
    assert_eq!(reply, [0x20, 0x02, 0x00, 0x01]);
    // Not a CONNECT first: closed at once.
    let mut raw = Raw::connect(addr).await;
    raw.send_bytes(&[0xC0, 0x00]).await;
    assert!(raw.recv().await.is_none());
    // Garbage protocol name: closed.
    let mut raw = Raw::connect(addr).await;
    raw.send_bytes(&[
        0x10, 0x0C, 0, 4, b'H', b'T', b'T', b'P', 4, 0x02, 0, 60, 0, 0,
    ])
    .await;
    assert!(raw.recv().await.is_none());
    // Random bytes, then the broker is fine.
    let mut raw = Raw::connect(addr).await;
    raw.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(raw.recv().await.is_none());
    still_serving(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_input_never_takes_the_broker_down() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    // Deterministic pseudo-random streams after a valid CONNECT.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..200 {
        let mut raw = Raw::connect(addr).await;
        raw.handshake(
            if round % 2 == 0 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V311
            },
            &format!("fuzz{round}"),
        )
        .await;
        let len = 1 + (round % 64);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed & 0xFF) as u8
            })
            .collect();
        raw.send_bytes(&bytes).await;
        drop(raw);
    }
    still_serving(addr).await;
}
