//! Decoding packets from a byte buffer. No input can panic it: every failure is a [`DecodeError`]
//! that names the v5 reason code the connection closes with.

use super::properties::PropertyContext;
use super::wire::{checked_str, Reader};
use super::*;
use bytes::{Buf, BytesMut};

/// Decodes one packet from the front of `buf`.
///
/// `version` is `None` until CONNECT has been read: then only CONNECT is accepted.
/// Returns `Ok(None)` when more bytes are needed; the size check happens before the whole
/// packet is buffered, so an oversized packet is refused as soon as its header arrives.
pub fn decode_packet(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    decode_packet_with(buf, version, max_packet_size, &mut TopicCache::default())
}

/// The topic of a connection's last PUBLISH, handed out again while it repeats: most
/// publishers send to a handful of topics, and this saves each message's topic allocation.
#[derive(Debug, Default)]
pub struct TopicCache(Option<Arc<str>>);

impl TopicCache {
    fn get(&mut self, topic: &str) -> Arc<str> {
        match &self.0 {
            Some(last) if **last == *topic => last.clone(),
            _ => {
                let fresh: Arc<str> = Arc::from(topic);
                self.0 = Some(fresh.clone());
                fresh
            }
        }
    }
}

/// The packet id of a four-byte PUBACK (a success without properties, the usual form in both
/// versions) at the front of `buf`, which the caller then advances by 4. `None` for anything
/// else, which [`decode_packet`] then reads (and refuses if it is malformed).
pub fn short_puback(buf: &[u8]) -> Option<u16> {
    match buf {
        [0x40, 2, hi, lo, ..] if (*hi, *lo) != (0, 0) => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// [`decode_packet`] for a connection that keeps a [`TopicCache`].
pub fn decode_packet_with(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: usize,
    topics: &mut TopicCache,
) -> Result<Option<Packet>, DecodeError> {
    if version.is_none() && buf.first().is_some_and(|b| b >> 4 != 1) {
        // Refuse a stream that is not MQTT (an HTTP request, say) without waiting for more.
        return Err(DecodeError::FirstPacketNotConnect);
    }
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut remaining: usize = 0;
    let mut header_len = 1;
    loop {
        if header_len > 4 {
            return Err(DecodeError::MalformedRemainingLength);
        }
        let Some(&b) = buf.get(header_len) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7F) << (7 * (header_len - 1));
        header_len += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    let total = header_len + remaining;
    if total > max_packet_size {
        return Err(DecodeError::PacketTooLarge(total));
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    if let (Some(_), 4..=7, 2, 2) = (version, first >> 4, header_len, remaining) {
        // QoS 1/2 acknowledgements, one per message, mostly in their four-byte form: read in
        // place rather than taken out of the buffer as a shared frame.
        let kind = first >> 4;
        check_flags(kind, first & 0x0F, if kind == 6 { 0b0010 } else { 0 })?;
        let packet_id = match u16::from_be_bytes([buf[2], buf[3]]) {
            0 => return Err(DecodeError::ZeroPacketId),
            id => id,
        };
        buf.advance(total);
        let resp = PubResponse::new(packet_id, ReasonCode::SUCCESS);
        return Ok(Some(match kind {
            4 => Packet::PubAck(resp),
            5 => Packet::PubRec(resp),
            6 => Packet::PubRel(resp),
            _ => Packet::PubComp(resp),
        }));
    }
    let frame = buf.split_to(total).freeze();
    let mut r = Reader::new(frame.slice(header_len..));
    let kind = first >> 4;
    let flags = first & 0x0F;
    let Some(version) = version else {
        if kind != 1 {
            return Err(DecodeError::FirstPacketNotConnect);
        }
        check_flags(kind, flags, 0)?;
        return decode_connect(&mut r).map(|c| Some(Packet::Connect(Box::new(c))));
    };
    let v5 = version.is_v5();
    let packet = match kind {
        0 => return Err(DecodeError::ReservedPacketType(0)),
        1 => return Err(DecodeError::SecondConnect),
        2 => {
            check_flags(kind, flags, 0)?;
            let ack_flags = r.u8()?;
            if ack_flags & 0xFE != 0 {
                return Err(DecodeError::InvalidHeaderFlags(kind));
            }
            let code = ReasonCode(r.u8()?);
            // A 3.1.1 return code is 0-5 and stays as it is (found by the decoder fuzz target).
            if !v5 && code.0 > 5 {
                return Err(DecodeError::InvalidReturnCode(code.0));
            }
            let properties = props(&mut r, v5, PropertyContext::ConnAck)?;
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                code,
                properties,
            })
        }
        3 => Packet::Publish(decode_publish(&mut r, flags, v5, topics)?),
        4..=7 => {
            check_flags(kind, flags, if kind == 6 { 0b0010 } else { 0 })?;
            let packet_id = r.packet_id()?;
            let mut resp = PubResponse::new(packet_id, ReasonCode::SUCCESS);
            if v5 && r.remaining() > 0 {
                resp.code = ReasonCode(r.u8()?);
                if r.remaining() > 0 {
                    resp.properties = Properties::decode(&mut r, PropertyContext::PubResponse)?;
                }
            }
            match kind {
                4 => Packet::PubAck(resp),
                5 => Packet::PubRec(resp),
                6 => Packet::PubRel(resp),
                _ => Packet::PubComp(resp),
            }
        }
        8 => {
            check_flags(kind, flags, 0b0010)?;
            let packet_id = r.packet_id()?;
            let properties = props(&mut r, v5, PropertyContext::Subscribe)?;
            let mut filters = Vec::new();
            while r.remaining() > 0 {
                let filter = r.string()?;
                let opts = r.u8()?;
                filters.push((filter, decode_subscription_options(opts, v5)?));
            }
            if filters.is_empty() {
                return Err(DecodeError::NoTopicFilters);
            }
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        }
        9 => {
            check_flags(kind, flags, 0)?;
            let packet_id = r.packet_id()?;
            let properties = props(&mut r, v5, PropertyContext::SubAck)?;
            let codes: Vec<ReasonCode> = r.rest().iter().map(|&c| ReasonCode(c)).collect();
            // 3.1.1 has granted QoS 0-2 and 0x80 only (found by the decoder fuzz target: any
            // other byte was accepted and then written back as 0x80).
            if !v5 {
                if let Some(bad) = codes.iter().find(|c| c.0 > 2 && c.0 != 0x80) {
                    return Err(DecodeError::InvalidReturnCode(bad.0));
                }
            }
            Packet::SubAck(SubAck {
                packet_id,
                codes,
                properties,
            })
        }
        10 => {
            check_flags(kind, flags, 0b0010)?;
            let packet_id = r.packet_id()?;
            let properties = props(&mut r, v5, PropertyContext::Unsubscribe)?;
            let mut filters = Vec::new();
            while r.remaining() > 0 {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::NoTopicFilters);
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        }
        11 => {
            check_flags(kind, flags, 0)?;
            let packet_id = r.packet_id()?;
            let properties = props(&mut r, v5, PropertyContext::UnsubAck)?;
            let codes = if v5 {
                r.rest().iter().map(|&c| ReasonCode(c)).collect()
            } else {
                Vec::new()
            };
            Packet::UnsubAck(UnsubAck {
                packet_id,
                codes,
                properties,
            })
        }
        12 | 13 => {
            check_flags(kind, flags, 0)?;
            if kind == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 => {
            check_flags(kind, flags, 0)?;
            let mut d = Disconnect {
                code: ReasonCode::SUCCESS,
                properties: Props::default(),
            };
            if v5 && r.remaining() > 0 {
                d.code = ReasonCode(r.u8()?);
                if r.remaining() > 0 {
                    d.properties = Properties::decode(&mut r, PropertyContext::Disconnect)?;
                }
            }
            Packet::Disconnect(d)
        }
        15 => {
            if !v5 {
                return Err(DecodeError::UnexpectedPacket(kind));
            }
            check_flags(kind, flags, 0)?;
            let mut a = Auth {
                code: ReasonCode::SUCCESS,
                properties: Props::default(),
            };
            if r.remaining() > 0 {
                a.code = ReasonCode(r.u8()?);
                if r.remaining() > 0 {
                    a.properties = Properties::decode(&mut r, PropertyContext::Auth)?;
                }
            }
            Packet::Auth(a)
        }
        _ => return Err(DecodeError::ReservedPacketType(kind)),
    };
    r.finish()?;
    Ok(Some(packet))
}

fn check_flags(kind: u8, flags: u8, expected: u8) -> Result<(), DecodeError> {
    if flags == expected {
        Ok(())
    } else {
        Err(DecodeError::InvalidHeaderFlags(kind))
    }
}

fn props(r: &mut Reader, v5: bool, ctx: PropertyContext) -> Result<Props, DecodeError> {
    if v5 {
        Properties::decode(r, ctx)
    } else {
        Ok(Props::default())
    }
}

fn decode_subscription_options(opts: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    let qos = QoS::from_u8(opts & 0b11).ok_or(DecodeError::InvalidQos)?;
    if !v5 {
        if opts & 0xFC != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions);
        }
        return Ok(SubscriptionOptions {
            qos,
            ..Default::default()
        });
    }
    if opts & 0xC0 != 0 {
        return Err(DecodeError::InvalidSubscriptionOptions);
    }
    let retain_handling = match (opts >> 4) & 0b11 {
        0 => RetainHandling::SendOnSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidSubscriptionOptions),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: opts & 0b0100 != 0,
        retain_as_published: opts & 0b1000 != 0,
        retain_handling,
    })
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V31,
        (b"MQTT", l) | (b"MQIsdp", l) => return Err(DecodeError::UnsupportedProtocolVersion(l)),
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ReservedConnectFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if will_qos == 3 || (!will_flag && (will_qos != 0 || will_retain)) {
        return Err(DecodeError::InvalidWillFlags);
    }
    if password_flag && !username_flag && !v5 {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = props(r, v5, PropertyContext::Connect)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = props(r, v5, PropertyContext::Will)?;
        let topic = r.string()?;
        if !crate::topic::valid_topic_name(&topic) {
            return Err(DecodeError::InvalidTopicName);
        }
        let payload = r.binary()?;
        if properties.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err()
        {
            return Err(DecodeError::PayloadFormatInvalid);
        }
        Some(LastWill {
            topic: topic.into(),
            payload,
            qos: QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQos)?,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_publish(
    r: &mut Reader,
    flags: u8,
    v5: bool,
    topics: &mut TopicCache,
) -> Result<Publish, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQos)?;
    let retain = flags & 1 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::DupOnQos0);
    }
    let topic = r.with_binary(|raw| {
        let topic = checked_str(raw)?;
        if !topic.is_empty() && !crate::topic::valid_topic_name(topic) {
            return Err(DecodeError::InvalidTopicName);
        }
        Ok(topics.get(topic))
    })?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties = props(r, v5, PropertyContext::Publish)?;
    let payload = r.rest();
    if properties.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err() {
        return Err(DecodeError::PayloadFormatInvalid);
    }
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })
}
