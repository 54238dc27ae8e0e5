//! MQTT 5 properties (spec 2.2.2): one struct for every packet, with the set of properties each
//! packet may carry checked on decode.

use super::wire::{put_binary, put_str, put_varint, varint_len, Reader};
use super::DecodeError;
use bytes::{BufMut, Bytes, BytesMut};

/// Which packet a property block belongs to; decides which identifiers are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubResponse,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

const CONNECT: u16 = 1 << PropertyContext::Connect as u16;
const WILL: u16 = 1 << PropertyContext::Will as u16;
const CONNACK: u16 = 1 << PropertyContext::ConnAck as u16;
const PUBLISH: u16 = 1 << PropertyContext::Publish as u16;
const PUBRESP: u16 = 1 << PropertyContext::PubResponse as u16;
const SUBSCRIBE: u16 = 1 << PropertyContext::Subscribe as u16;
const SUBACK: u16 = 1 << PropertyContext::SubAck as u16;
const UNSUBACK: u16 = 1 << PropertyContext::UnsubAck as u16;
const DISCONNECT: u16 = 1 << PropertyContext::Disconnect as u16;
const AUTH: u16 = 1 << PropertyContext::Auth as u16;
const ALL: u16 = 0x07FF;

/// Packets each property identifier may appear in (spec table 2-4).
fn allowed_in(id: u8) -> u16 {
    match id {
        0x01..=0x03 | 0x08 | 0x09 => PUBLISH | WILL,
        0x0B => PUBLISH | SUBSCRIBE,
        0x11 => CONNECT | CONNACK | DISCONNECT,
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => CONNACK,
        0x15 | 0x16 => CONNECT | CONNACK | AUTH,
        0x17 | 0x19 => CONNECT,
        0x18 => WILL,
        0x1C => CONNACK | DISCONNECT,
        0x1F => CONNACK | PUBRESP | SUBACK | UNSUBACK | DISCONNECT | AUTH,
        0x21 | 0x22 | 0x27 => CONNECT | CONNACK,
        0x23 => PUBLISH,
        0x26 => ALL,
        _ => 0,
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    /// Kept in the order the sender wrote them (the spec requires order to be preserved).
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// The properties of one packet, allocated only when there are any: most packets (every v3
/// packet) have none, and a `Properties` inline would make every packet and message ~350 bytes
/// larger and cost a copy of that at each move.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Props(Option<Box<Properties>>);

static NO_PROPERTIES: Properties = Properties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

impl Props {
    /// Mutable access without allocating when there is nothing to change.
    pub fn get_mut(&mut self) -> Option<&mut Properties> {
        self.0.as_deref_mut()
    }
}

impl std::ops::Deref for Props {
    type Target = Properties;
    fn deref(&self) -> &Properties {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl std::ops::DerefMut for Props {
    /// Allocates on first write.
    fn deref_mut(&mut self) -> &mut Properties {
        self.0.get_or_insert_with(Default::default)
    }
}

impl From<Properties> for Props {
    fn from(p: Properties) -> Self {
        if p == NO_PROPERTIES {
            Props(None)
        } else {
            Props(Some(Box::new(p)))
        }
    }
}

fn set_once<T>(slot: &mut Option<T>, id: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(r: &mut Reader, id: u8) -> Result<u8, DecodeError> {
    let v = r.u8()?;
    if v > 1 {
        return Err(DecodeError::InvalidPropertyValue(id));
    }
    Ok(v)
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    pub(crate) fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Props, DecodeError> {
        let len = r.varint()? as usize;
        if len == 0 {
            return Ok(Props::default());
        }
        let mut r = r.sub(len)?;
        let mut p = Properties::default();
        while r.remaining() > 0 {
            let id = r.varint()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::InvalidProperty(0xFF))?;
            if allowed_in(id) & ctx.bit() == 0 {
                return Err(DecodeError::InvalidProperty(id));
            }
            match id {
                0x01 => set_once(&mut p.payload_format_indicator, id, flag(&mut r, id)?)?,
                0x02 => set_once(&mut p.message_expiry_interval, id, r.u32()?)?,
                0x03 => set_once(&mut p.content_type, id, r.string()?)?,
                0x08 => set_once(&mut p.response_topic, id, r.string()?)?,
                0x09 => set_once(&mut p.correlation_data, id, r.binary()?)?,
                0x0B => {
                    let v = r.varint()?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    if ctx == PropertyContext::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::DuplicateProperty(id));
                    }
                    p.subscription_identifiers.push(v);
                }
                0x11 => set_once(&mut p.session_expiry_interval, id, r.u32()?)?,
                0x12 => set_once(&mut p.assigned_client_identifier, id, r.string()?)?,
                0x13 => set_once(&mut p.server_keep_alive, id, r.u16()?)?,
                0x15 => set_once(&mut p.authentication_method, id, r.string()?)?,
                0x16 => set_once(&mut p.authentication_data, id, r.binary()?)?,
                0x17 => set_once(&mut p.request_problem_information, id, flag(&mut r, id)?)?,
                0x18 => set_once(&mut p.will_delay_interval, id, r.u32()?)?,
                0x19 => set_once(&mut p.request_response_information, id, flag(&mut r, id)?)?,
                0x1A => set_once(&mut p.response_information, id, r.string()?)?,
                0x1C => set_once(&mut p.server_reference, id, r.string()?)?,
                0x1F => set_once(&mut p.reason_string, id, r.string()?)?,
                0x21 => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    set_once(&mut p.receive_maximum, id, v)?
                }
                0x22 => set_once(&mut p.topic_alias_maximum, id, r.u16()?)?,
                0x23 => set_once(&mut p.topic_alias, id, r.u16()?)?,
                0x24 => set_once(&mut p.maximum_qos, id, flag(&mut r, id)?)?,
                0x25 => set_once(&mut p.retain_available, id, flag(&mut r, id)?)?,
                0x26 => {
                    let k = r.string()?;
                    let v = r.string()?;
                    p.user_properties.push((k, v));
                }
                0x27 => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    set_once(&mut p.maximum_packet_size, id, v)?
                }
                0x28 => set_once(
                    &mut p.wildcard_subscription_available,
                    id,
                    flag(&mut r, id)?,
                )?,
                0x29 => set_once(
                    &mut p.subscription_identifier_available,
                    id,
                    flag(&mut r, id)?,
                )?,
                0x2A => set_once(&mut p.shared_subscription_available, id, flag(&mut r, id)?)?,
                _ => return Err(DecodeError::InvalidProperty(id)),
            }
        }
        Ok(p.into())
    }

    /// Bytes of the property block without its length prefix.
    pub(crate) fn body_len(&self) -> usize {
        let s = |v: &Option<String>| v.as_ref().map_or(0, |s| 3 + s.len());
        let b = |v: &Option<Bytes>| v.as_ref().map_or(0, |s| 3 + s.len());
        let n = |v: bool, len: usize| if v { 1 + len } else { 0 };
        let mut total = n(self.payload_format_indicator.is_some(), 1)
            + n(self.message_expiry_interval.is_some(), 4)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + n(self.session_expiry_interval.is_some(), 4)
            + s(&self.assigned_client_identifier)
            + n(self.server_keep_alive.is_some(), 2)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n(self.request_problem_information.is_some(), 1)
            + n(self.will_delay_interval.is_some(), 4)
            + n(self.request_response_information.is_some(), 1)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n(self.receive_maximum.is_some(), 2)
            + n(self.topic_alias_maximum.is_some(), 2)
            + n(self.topic_alias.is_some(), 2)
            + n(self.maximum_qos.is_some(), 1)
            + n(self.retain_available.is_some(), 1)
            + n(self.maximum_packet_size.is_some(), 4)
            + n(self.wildcard_subscription_available.is_some(), 1)
            + n(self.subscription_identifier_available.is_some(), 1)
            + n(self.shared_subscription_available.is_some(), 1);
        for id in &self.subscription_identifiers {
            total += 1 + varint_len(*id as usize);
        }
        for (k, v) in &self.user_properties {
            total += 1 + 2 + k.len() + 2 + v.len();
        }
        total
    }

    /// Length prefix plus body.
    pub(crate) fn encoded_len(&self) -> usize {
        let body = self.body_len();
        varint_len(body) + body
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        put_varint(buf, self.body_len());
        self.encode_body(buf);
    }

    pub(crate) fn encode_body(&self, buf: &mut BytesMut) {
        self.encode_body_with(buf, self.message_expiry_interval, &[]);
    }

    /// Encodes the block with the message expiry replaced (it counts down while a message waits)
    /// and extra subscription identifiers (they differ per subscriber), without cloning `self`.
    pub(crate) fn encode_body_with(
        &self,
        buf: &mut BytesMut,
        expiry: Option<u32>,
        extra_ids: &[u32],
    ) {
        fn byte(buf: &mut BytesMut, id: u8, v: Option<u8>) {
            if let Some(v) = v {
                buf.put_u8(id);
                buf.put_u8(v);
            }
        }
        fn u16p(buf: &mut BytesMut, id: u8, v: Option<u16>) {
            if let Some(v) = v {
                buf.put_u8(id);
                buf.put_u16(v);
            }
        }
        fn u32p(buf: &mut BytesMut, id: u8, v: Option<u32>) {
            if let Some(v) = v {
                buf.put_u8(id);
                buf.put_u32(v);
            }
        }
        fn strp(buf: &mut BytesMut, id: u8, v: &Option<String>) {
            if let Some(v) = v {
                buf.put_u8(id);
                put_str(buf, v);
            }
        }
        fn binp(buf: &mut BytesMut, id: u8, v: &Option<Bytes>) {
            if let Some(v) = v {
                buf.put_u8(id);
                put_binary(buf, v);
            }
        }
        byte(buf, 0x01, self.payload_format_indicator);
        u32p(buf, 0x02, expiry);
        strp(buf, 0x03, &self.content_type);
        strp(buf, 0x08, &self.response_topic);
        binp(buf, 0x09, &self.correlation_data);
        for id in self.subscription_identifiers.iter().chain(extra_ids) {
            buf.put_u8(0x0B);
            put_varint(buf, *id as usize);
        }
        u32p(buf, 0x11, self.session_expiry_interval);
        strp(buf, 0x12, &self.assigned_client_identifier);
        u16p(buf, 0x13, self.server_keep_alive);
        strp(buf, 0x15, &self.authentication_method);
        binp(buf, 0x16, &self.authentication_data);
        byte(buf, 0x17, self.request_problem_information);
        u32p(buf, 0x18, self.will_delay_interval);
        byte(buf, 0x19, self.request_response_information);
        strp(buf, 0x1A, &self.response_information);
        strp(buf, 0x1C, &self.server_reference);
        strp(buf, 0x1F, &self.reason_string);
        u16p(buf, 0x21, self.receive_maximum);
        u16p(buf, 0x22, self.topic_alias_maximum);
        u16p(buf, 0x23, self.topic_alias);
        byte(buf, 0x24, self.maximum_qos);
        byte(buf, 0x25, self.retain_available);
        for (k, v) in &self.user_properties {
            buf.put_u8(0x26);
            put_str(buf, k);
            put_str(buf, v);
        }
        u32p(buf, 0x27, self.maximum_packet_size);
        byte(buf, 0x28, self.wildcard_subscription_available);
        byte(buf, 0x29, self.subscription_identifier_available);
        byte(buf, 0x2A, self.shared_subscription_available);
    }
}
