//! MQTT control packets for 3.1, 3.1.1 and 5.0: one set of types, version-aware decode and encode.
//!
//! Payloads and binary properties are `Bytes` slices of the read buffer, so a message fanned out
//! to many subscribers is never copied by the codec.

//!
//! - [`wire`]: the reader and writers of strings and variable byte integers (no dependencies);
//! - `error`: [`DecodeError`];
//! - `properties`: v5 properties, on top of `wire`;
//! - `decode`, `encode`: packets, on top of `wire` and `properties`;
//! - `reason`: reason codes and their v3 return codes.

mod decode;
mod encode;
mod error;
pub(crate) mod properties;
mod reason;
pub(crate) mod wire;

pub use decode::{decode_packet, decode_packet_with, short_puback, TopicCache};
pub use encode::{encode_packet, encode_publish, publish_size, OutgoingPublish};
pub use error::DecodeError;
pub use properties::{Properties, Props};
pub use reason::ReasonCode;

use bytes::Bytes;
use std::sync::Arc;

/// Protocol level from the CONNECT variable header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1 ("MQIsdp", level 3).
    V31,
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.0 (level 5).
    V5,
}

impl ProtocolVersion {
    pub fn is_v5(self) -> bool {
        self == Self::V5
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V31 => "3.1",
            Self::V311 => "3.1.1",
            Self::V5 => "5.0",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LastWill {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConnAck {
    pub session_present: bool,
    /// A v5 reason code; encoded as the matching v3 return code for older clients.
    pub code: ReasonCode,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty when a v5 client sends only a topic alias; the connection resolves it.
    pub topic: Arc<str>,
    /// Zero for QoS 0.
    pub packet_id: u16,
    pub properties: Props,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq)]
pub struct PubResponse {
    pub packet_id: u16,
    pub code: ReasonCode,
    pub properties: Props,
}

impl PubResponse {
    pub fn new(packet_id: u16, code: ReasonCode) -> Self {
        Self {
            packet_id,
            code,
            properties: Props::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendOnSubscribe = 0,
    /// Send retained messages only if the subscription did not exist.
    SendIfNew = 1,
    /// Never send retained messages for this subscription.
    DoNotSend = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub filters: Vec<(String, SubscriptionOptions)>,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SubAck {
    pub packet_id: u16,
    /// One per filter: granted QoS (0..=2) or an error reason (v3: 0x80).
    pub codes: Vec<ReasonCode>,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<String>,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// v5 only; empty for v3.
    pub codes: Vec<ReasonCode>,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Disconnect {
    pub code: ReasonCode,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub code: ReasonCode,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResponse),
    PubRec(PubResponse),
    PubRel(PubResponse),
    PubComp(PubResponse),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

#[cfg(test)]
mod tests;
