//! Round trips and byte-exact fixtures for the codec, and the malformed inputs it must refuse.

use super::*;
use bytes::BytesMut;

fn round_trip(p: Packet, v: ProtocolVersion) {
    let mut buf = BytesMut::new();
    encode_packet(&p, v, &mut buf);
    let version = if matches!(p, Packet::Connect(_)) {
        None
    } else {
        Some(v)
    };
    let decoded = decode_packet(&mut buf, version, 1 << 20).unwrap().unwrap();
    assert_eq!(decoded, p, "{v:?}");
    assert!(buf.is_empty());
}

fn props() -> Properties {
    Properties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        ..Default::default()
    }
}

#[test]
fn every_packet_round_trips_in_v311_and_v5() {
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let v5 = v.is_v5();
        let p = |x: Properties| -> Props {
            if v5 {
                x.into()
            } else {
                Props::default()
            }
        };
        round_trip(
            Packet::Connect(Box::new(Connect {
                protocol: v,
                clean_start: true,
                keep_alive: 30,
                client_id: "c1".into(),
                will: Some(LastWill {
                    topic: "will/t".into(),
                    payload: Bytes::from_static(b"bye"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: p(Properties {
                        will_delay_interval: Some(5),
                        ..Default::default()
                    }),
                }),
                username: Some("u".into()),
                password: Some(Bytes::from_static(b"p")),
                properties: p(Properties {
                    session_expiry_interval: Some(10),
                    receive_maximum: Some(5),
                    ..Default::default()
                }),
            })),
            v,
        );
        round_trip(
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: ReasonCode::SUCCESS,
                properties: p(Properties {
                    assigned_client_identifier: Some("x".into()),
                    topic_alias_maximum: Some(9),
                    ..Default::default()
                }),
            }),
            v,
        );
        round_trip(
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::ExactlyOnce,
                retain: true,
                topic: "a/b".into(),
                packet_id: 7,
                properties: p(props()),
                payload: Bytes::from_static(b"{\"x\":1}"),
            }),
            v,
        );
        round_trip(
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "a".into(),
                packet_id: 0,
                properties: Props::default(),
                payload: Bytes::new(),
            }),
            v,
        );
        let code = if v5 {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        round_trip(Packet::PubAck(PubResponse::new(1, code)), v);
        round_trip(Packet::PubRec(PubResponse::new(2, ReasonCode::SUCCESS)), v);
        round_trip(Packet::PubRel(PubResponse::new(3, ReasonCode::SUCCESS)), v);
        round_trip(Packet::PubComp(PubResponse::new(4, ReasonCode::SUCCESS)), v);
        round_trip(
            Packet::Subscribe(Subscribe {
                packet_id: 5,
                filters: vec![
                    (
                        "a/+".into(),
                        SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            ..Default::default()
                        },
                    ),
                    (
                        "b/#".into(),
                        SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            no_local: v5,
                            retain_as_published: v5,
                            retain_handling: if v5 {
                                RetainHandling::DoNotSend
                            } else {
                                RetainHandling::SendOnSubscribe
                            },
                        },
                    ),
                ],
                properties: p(Properties {
                    subscription_identifiers: vec![42],
                    ..Default::default()
                }),
            }),
            v,
        );
        round_trip(
            Packet::SubAck(SubAck {
                packet_id: 5,
                codes: vec![ReasonCode(1), ReasonCode(0x80)],
                properties: Props::default(),
            }),
            v,
        );
        round_trip(
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 6,
                filters: vec!["a/+".into()],
                properties: Props::default(),
            }),
            v,
        );
        round_trip(
            Packet::UnsubAck(UnsubAck {
                packet_id: 6,
                codes: if v5 {
                    vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
                } else {
                    vec![]
                },
                properties: Props::default(),
            }),
            v,
        );
        round_trip(Packet::PingReq, v);
        round_trip(Packet::PingResp, v);
        round_trip(
            Packet::Disconnect(Disconnect {
                code: ReasonCode::SUCCESS,
                properties: Props::default(),
            }),
            v,
        );
    }
    round_trip(
        Packet::Disconnect(Disconnect {
            code: ReasonCode::SESSION_TAKEN_OVER,
            properties: Properties {
                reason_string: Some("bye".into()),
                ..Default::default()
            }
            .into(),
        }),
        ProtocolVersion::V5,
    );
    round_trip(
        Packet::Auth(Auth {
            code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: Properties {
                authentication_method: Some("SCRAM".into()),
                ..Default::default()
            }
            .into(),
        }),
        ProtocolVersion::V5,
    );
}

#[test]
fn v3_connack_uses_return_codes() {
    let mut buf = BytesMut::new();
    let ack = ConnAck {
        session_present: false,
        code: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        properties: Props::default(),
    };
    encode_packet(&Packet::ConnAck(ack), ProtocolVersion::V311, &mut buf);
    assert_eq!(&buf[..], &[0x20, 0x02, 0x00, 0x04]);
}

#[test]
fn mqtt31_connect_is_accepted() {
    let raw: &[u8] = &[
        0x10, 0x10, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 2, b'i', b'd',
    ];
    let mut buf = BytesMut::from(raw);
    match decode_packet(&mut buf, None, 1024).unwrap().unwrap() {
        Packet::Connect(c) => {
            assert_eq!(c.protocol, ProtocolVersion::V31);
            assert_eq!(c.client_id, "id");
        }
        other => panic!("{other:?}"),
    }
}

fn decode_err(raw: &[u8], v: Option<ProtocolVersion>) -> DecodeError {
    let mut buf = BytesMut::from(raw);
    decode_packet(&mut buf, v, 1024).unwrap_err()
}

#[test]
fn malformed_inputs_are_refused_with_the_right_code() {
    let v5 = Some(ProtocolVersion::V5);
    let v3 = Some(ProtocolVersion::V311);
    // Five continuation bytes in the remaining length.
    assert_eq!(
        decode_err(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], v3).reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
    // SUBSCRIBE with the reserved flags cleared.
    assert_eq!(
        decode_err(&[0x80, 0x06, 0, 1, 0, 1, b'a', 0], v3),
        DecodeError::InvalidHeaderFlags(8)
    );
    // Invalid UTF-8 in a topic.
    assert_eq!(
        decode_err(&[0x30, 0x04, 0, 2, 0xC3, 0x28], v3),
        DecodeError::InvalidUtf8
    );
    // Wildcard in a PUBLISH topic.
    assert_eq!(
        decode_err(&[0x30, 0x05, 0, 3, b'a', b'/', b'#'], v5).reason_code(),
        ReasonCode::TOPIC_NAME_INVALID
    );
    // QoS 3.
    assert_eq!(
        decode_err(&[0x36, 0x05, 0, 1, b'a', 0, 1], v3),
        DecodeError::InvalidQos
    );
    // Second CONNECT.
    assert_eq!(
        decode_err(&[0x10, 0x00], v3).reason_code(),
        ReasonCode::PROTOCOL_ERROR
    );
    // First packet not CONNECT.
    assert_eq!(
        decode_err(&[0xC0, 0x00], None),
        DecodeError::FirstPacketNotConnect
    );
    // Oversized packet refused from its header alone.
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0x7F][..]);
    assert_eq!(
        decode_packet(&mut buf, v3, 1024).unwrap_err().reason_code(),
        ReasonCode::PACKET_TOO_LARGE
    );
    // Packet id 0 on QoS 1.
    assert_eq!(
        decode_err(&[0x32, 0x05, 0, 1, b'a', 0, 0], v3),
        DecodeError::ZeroPacketId
    );
    // Property not allowed in PUBLISH (session expiry) and duplicated property.
    assert_eq!(
        decode_err(&[0x30, 0x09, 0, 1, b'a', 5, 0x11, 0, 0, 0, 1], v5),
        DecodeError::InvalidProperty(0x11)
    );
    assert_eq!(
        decode_err(&[0x30, 0x08, 0, 1, b'a', 4, 0x01, 0, 0x01, 0], v5),
        DecodeError::DuplicateProperty(0x01)
    );
    // Reserved CONNECT flag.
    let raw = [
        0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 0,
    ];
    assert_eq!(decode_err(&raw, None), DecodeError::ReservedConnectFlag);
    // Unsupported level.
    let raw = [
        0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 9, 0x02, 0, 60, 0, 0,
    ];
    assert_eq!(
        decode_err(&raw, None),
        DecodeError::UnsupportedProtocolVersion(9)
    );
    // PINGREQ with a body.
    assert_eq!(decode_err(&[0xC0, 0x01, 0], v3), DecodeError::TrailingBytes);
}

#[test]
fn partial_input_waits_for_more() {
    let mut full = BytesMut::new();
    encode_packet(&Packet::PingReq, ProtocolVersion::V311, &mut full);
    let mut p = BytesMut::new();
    encode_packet(
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: 1,
            properties: Props::default(),
            payload: Bytes::from(vec![7u8; 300]),
        }),
        ProtocolVersion::V311,
        &mut p,
    );
    full.extend_from_slice(&p);
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        let mut n = 0;
        while decode_packet(&mut buf, Some(ProtocolVersion::V311), 1 << 20)
            .unwrap()
            .is_some()
        {
            n += 1;
        }
        assert!(n <= 1);
        assert_eq!(n == 1, cut >= 2);
    }
}

#[test]
fn outgoing_publish_size_matches_encoding() {
    let props = props();
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let out = OutgoingPublish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "x/y",
            packet_id: 9,
            properties: &props,
            message_expiry: Some(12),
            subscription_identifiers: &[1, 300],
            topic_alias: None,
            payload: &[1, 2, 3],
        };
        let mut buf = BytesMut::new();
        encode_publish(&out, v, &mut buf);
        assert_eq!(buf.len(), publish_size(&out, v));
        if let Packet::Publish(p) = decode_packet(&mut buf, Some(v), 1 << 20).unwrap().unwrap() {
            if v.is_v5() {
                assert_eq!(p.properties.message_expiry_interval, Some(12));
                assert_eq!(p.properties.subscription_identifiers, vec![1, 300]);
                assert_eq!(p.properties.user_properties, props.user_properties);
            }
        }
    }
}

#[test]
fn short_acknowledgements_decode_in_place_with_the_same_checks() {
    let v = Some(ProtocolVersion::V311);
    let mut buf = BytesMut::from(&[0x40, 2, 0, 7, 0x62, 2, 1, 0, 0x70, 2, 0xFF, 0xFF][..]);
    let mut next = || decode_packet(&mut buf, v, 1 << 20).unwrap().unwrap();
    assert_eq!(
        next(),
        Packet::PubAck(PubResponse::new(7, ReasonCode::SUCCESS))
    );
    assert_eq!(
        next(),
        Packet::PubRel(PubResponse::new(256, ReasonCode::SUCCESS))
    );
    assert_eq!(
        next(),
        Packet::PubComp(PubResponse::new(65535, ReasonCode::SUCCESS))
    );
    assert!(buf.is_empty());
    assert_eq!(decode_err(&[0x40, 2, 0, 0], v), DecodeError::ZeroPacketId);
    assert_eq!(
        decode_err(&[0x60, 2, 0, 1], v),
        DecodeError::InvalidHeaderFlags(6),
        "PUBREL needs flags 0010"
    );
    // Four bytes, but a two-byte remaining length of 1: not a packet id.
    assert_eq!(
        decode_err(&[0x40, 0x81, 0x00, 0x07], v),
        DecodeError::Truncated
    );
    // A non-minimal remaining length of 2 still reads (the long path).
    let mut long = BytesMut::from(&[0x40, 0x82, 0x00, 0, 9][..]);
    assert_eq!(
        decode_packet(&mut long, v, 1 << 20).unwrap(),
        Some(Packet::PubAck(PubResponse::new(9, ReasonCode::SUCCESS)))
    );
}

#[test]
fn a_repeated_topic_is_shared_between_publishes() {
    let mut buf = BytesMut::new();
    for topic in ["a/b", "a/b", "c"] {
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: 1,
            properties: Default::default(),
            payload: Bytes::from_static(b"x"),
        };
        encode_packet(&Packet::Publish(p), ProtocolVersion::V311, &mut buf);
    }
    let mut topics = TopicCache::default();
    let mut next =
        || match decode_packet_with(&mut buf, Some(ProtocolVersion::V311), 1 << 20, &mut topics) {
            Ok(Some(Packet::Publish(p))) => p.topic,
            other => panic!("{other:?}"),
        };
    let (first, second, third) = (next(), next(), next());
    assert!(std::sync::Arc::ptr_eq(&first, &second));
    assert_eq!((&*first, &*third), ("a/b", "c"));
}

#[test]
fn short_puback_reads_only_a_well_formed_four_byte_puback() {
    assert_eq!(short_puback(&[0x40, 2, 1, 2, 0x40]), Some(258));
    assert_eq!(short_puback(&[0x40, 2, 0, 0]), None, "packet id 0");
    assert_eq!(
        short_puback(&[0x40, 3, 0, 1, 0x10]),
        None,
        "v5 form with a reason code"
    );
    assert_eq!(short_puback(&[0x50, 2, 0, 1]), None, "PUBREC");
    assert_eq!(short_puback(&[0x41, 2, 0, 1]), None, "flags set");
    assert_eq!(short_puback(&[0x40, 2, 0]), None, "incomplete");
}
