//! Decoding packets from a byte buffer. No input can panic it: every failure is a [`DecodeError`]
//! that names the v5 reason code the connection closes with.

use super::properties::PropertyContext;
use super::*;
use bytes::{Buf, BytesMut};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("remaining length is not a valid variable byte integer")]
    MalformedRemainingLength,
    #[error("packet of {0} bytes exceeds the maximum packet size")]
    PacketTooLarge(usize),
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("invalid fixed header flags for packet type {0}")]
    InvalidHeaderFlags(u8),
    #[error("the first packet must be CONNECT")]
    FirstPacketNotConnect,
    #[error("a second CONNECT on the same connection")]
    SecondConnect,
    #[error("packet type {0} is not valid in this protocol version or direction")]
    UnexpectedPacket(u8),
    #[error("packet content is shorter than its declared length")]
    Truncated,
    #[error("unexpected bytes after the end of the packet")]
    TrailingBytes,
    #[error("string is not valid UTF-8 or contains U+0000")]
    InvalidUtf8,
    #[error("unknown protocol name")]
    InvalidProtocolName,
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    #[error("reserved bit set in CONNECT flags")]
    ReservedConnectFlag,
    #[error("will QoS or retain set without a will, or will QoS 3")]
    InvalidWillFlags,
    #[error("password present without a user name (MQTT 3.1.1)")]
    PasswordWithoutUsername,
    #[error("QoS 3 is not a valid QoS")]
    InvalidQos,
    #[error("DUP set on a QoS 0 PUBLISH")]
    DupOnQos0,
    #[error("packet identifier 0")]
    ZeroPacketId,
    #[error("topic name contains a wildcard or is invalid")]
    InvalidTopicName,
    #[error("payload is not UTF-8 although the payload format indicator says so")]
    PayloadFormatInvalid,
    #[error("SUBSCRIBE or UNSUBSCRIBE without any topic filter")]
    NoTopicFilters,
    #[error("reserved bits set in subscription options")]
    InvalidSubscriptionOptions,
    #[error("property 0x{0:02X} is not allowed here")]
    InvalidProperty(u8),
    #[error("property 0x{0:02X} appears more than once")]
    DuplicateProperty(u8),
    #[error("property 0x{0:02X} has an invalid value")]
    InvalidPropertyValue(u8),
}

impl DecodeError {
    /// The reason code a v5 DISCONNECT (or CONNACK) carries for this error.
    pub fn reason_code(self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge(_) => ReasonCode::PACKET_TOO_LARGE,
            UnsupportedProtocolVersion(_) | InvalidProtocolName => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            InvalidTopicName => ReasonCode::TOPIC_NAME_INVALID,
            PayloadFormatInvalid => ReasonCode::PAYLOAD_FORMAT_INVALID,
            FirstPacketNotConnect
            | SecondConnect
            | UnexpectedPacket(_)
            | ZeroPacketId
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | PasswordWithoutUsername
            | DupOnQos0
            | NoTopicFilters => ReasonCode::PROTOCOL_ERROR,
            _ => ReasonCode::MALFORMED_PACKET,
        }
    }
}

/// A cursor over one packet's bytes. Slices share the underlying buffer.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedRemainingLength)
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        Ok(checked_str(&raw)?.to_owned())
    }
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        Ok(Reader {
            buf: self.bytes(n)?,
        })
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }
    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
    fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }
}

/// UTF-8 validated once; U+0000 is not allowed in MQTT strings.
fn checked_str(raw: &[u8]) -> Result<&str, DecodeError> {
    if raw.contains(&0) {
        return Err(DecodeError::InvalidUtf8);
    }
    std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)
}

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
    let frame = buf.split_to(total).freeze();
    let mut r = Reader {
        buf: frame.slice(header_len..),
    };
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
            let properties = props(&mut r, v5, PropertyContext::ConnAck)?;
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                code,
                properties,
            })
        }
        3 => Packet::Publish(decode_publish(&mut r, flags, v5)?),
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
            let codes = r.rest().iter().map(|&c| ReasonCode(c)).collect();
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

fn decode_publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQos)?;
    let retain = flags & 1 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::DupOnQos0);
    }
    let raw_topic = r.binary()?;
    let topic = checked_str(&raw_topic)?;
    if !topic.is_empty() && !crate::topic::valid_topic_name(topic) {
        return Err(DecodeError::InvalidTopicName);
    }
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
        topic: Arc::from(topic),
        packet_id,
        properties,
        payload,
    })
}
