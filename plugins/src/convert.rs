//! Between the core's types and the WIT world's: clients, QoS, reasons, messages, hook sets,
//! and the per-connection record of the client as guests see it.

use crate::bindings::wit;
use crate::host::ClientRef;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use switchyard_core::hooks::{Access, AclDecision, ClientInfo, HookSet};
use switchyard_core::protocol::{ProtocolVersion, QoS, ReasonCode};
use switchyard_core::Message;

pub(crate) fn interests_of(hooks: wit::HookSet) -> HookSet {
    let mut set = HookSet::NONE;
    if hooks.contains(wit::HookSet::AUTHENTICATE) {
        set = set | HookSet::AUTHENTICATE;
    }
    if hooks.contains(wit::HookSet::AUTHORIZE) {
        set = set | HookSet::AUTHORIZE;
    }
    if hooks.contains(wit::HookSet::MESSAGE_PUBLISH) {
        set = set | HookSet::MESSAGE_PUBLISH;
    }
    if hooks.contains(wit::HookSet::CLIENT_EVENTS) {
        set = set | HookSet::CLIENT_EVENTS;
    }
    if hooks.contains(wit::HookSet::MESSAGE_EVENTS) {
        set = set | HookSet::MESSAGE_EVENTS;
    }
    set
}

/// Client events waiting for a plugin, at most this many; more are counted and dropped.
pub(crate) const EVENT_QUEUE: usize = 1024;

/// Authorize answers remembered per connection and plugin, at most this many.
pub(crate) const DECISION_CACHE_ENTRIES: usize = 256;

/// (the plugin's load serial, access, topic or filter)
pub(crate) type DecisionKey = (u64, u8, String);

pub(crate) fn access_code(a: Access) -> u8 {
    match a {
        Access::Publish => 0,
        Access::Subscribe => 1,
        Access::Read => 2,
    }
}

/// What the host keeps per connection: the client as guests see it (built once, not per
/// call) and, when enabled, recent authorize answers.
pub(crate) struct GuestClient {
    pub(crate) client: ClientRef,
    pub(crate) decisions: Mutex<HashMap<DecisionKey, (AclDecision, std::time::Instant)>>,
}

pub(crate) fn guest_client(c: &ClientInfo) -> Arc<GuestClient> {
    if let Some(any) = c.extension.get() {
        if let Ok(g) = any.clone().downcast::<GuestClient>() {
            return g;
        }
    }
    let g = Arc::new(GuestClient {
        client: ClientRef::new(client_of(c)),
        decisions: Mutex::new(HashMap::new()),
    });
    let _ = c.extension.set(g.clone());
    g
}

pub(crate) fn cached_client(c: &ClientInfo) -> ClientRef {
    guest_client(c).client.clone()
}

/// The receiver of a message event that reached no connected client: handle 0, whose record
/// has only the client id (empty when the message reached no session at all).
pub(crate) fn offline(client_id: Option<&str>) -> ClientRef {
    ClientRef {
        handle: 0,
        info: Arc::new(wit::ClientInfo {
            client_id: client_id.unwrap_or_default().to_string(),
            username: None,
            peer_addr: String::new(),
            protocol: wit::ProtocolVersion::V5,
            listener: String::new(),
            cert_common_name: None,
            attributes: Vec::new(),
        }),
    }
}

pub(crate) fn message_event(kind: wit::MessageEventKind, m: &Message) -> wit::MessageEvent {
    wit::MessageEvent {
        kind,
        topic: m.topic.to_string(),
        qos: qos_of(m.qos),
    }
}

/// A patch's optional properties: `Some(None)` removes one, `Some(Some(v))` sets it.
pub(crate) fn apply_properties(
    m: &mut Message,
    content_type: Option<Option<String>>,
    response_topic: Option<Option<String>>,
    correlation_data: Option<Option<Vec<u8>>>,
    message_expiry: Option<Option<u32>>,
) {
    let p = &mut m.properties;
    if let Some(v) = content_type {
        p.content_type = v;
    }
    if let Some(v) =
        response_topic.map(|t| t.filter(|t| switchyard_core::topic::valid_topic_name(t)))
    {
        p.response_topic = v;
    }
    if let Some(v) = correlation_data {
        p.correlation_data = v.map(Into::into);
    }
    if let Some(v) = message_expiry {
        p.message_expiry_interval = v;
        m.expires_at =
            v.map(|s| std::time::Instant::now() + std::time::Duration::from_secs(u64::from(s)));
    }
}

pub(crate) fn client_of(c: &ClientInfo) -> wit::ClientInfo {
    wit::ClientInfo {
        client_id: c.client_id.to_string(),
        username: c.username.as_deref().map(str::to_string),
        peer_addr: c.peer_addr.to_string(),
        protocol: match c.protocol {
            ProtocolVersion::V31 => wit::ProtocolVersion::V3,
            ProtocolVersion::V311 => wit::ProtocolVersion::V311,
            ProtocolVersion::V5 => wit::ProtocolVersion::V5,
        },
        listener: c.listener.to_string(),
        cert_common_name: c.cert_common_name.as_deref().map(str::to_string),
        attributes: c.attributes.clone(),
    }
}

pub(crate) fn qos_of(q: QoS) -> wit::Qos {
    match q {
        QoS::AtMostOnce => wit::Qos::AtMostOnce,
        QoS::AtLeastOnce => wit::Qos::AtLeastOnce,
        QoS::ExactlyOnce => wit::Qos::ExactlyOnce,
    }
}

pub(crate) fn qos_from(q: wit::Qos) -> QoS {
    match q {
        wit::Qos::AtMostOnce => QoS::AtMostOnce,
        wit::Qos::AtLeastOnce => QoS::AtLeastOnce,
        wit::Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

pub(crate) fn reason_of(r: wit::DenyReason) -> ReasonCode {
    match r {
        wit::DenyReason::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
        wit::DenyReason::BadCredentials => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        wit::DenyReason::Banned => ReasonCode::BANNED,
        wit::DenyReason::QuotaExceeded => ReasonCode::QUOTA_EXCEEDED,
        wit::DenyReason::TopicInvalid => ReasonCode::TOPIC_NAME_INVALID,
        wit::DenyReason::BadAuthenticationMethod => ReasonCode::BAD_AUTHENTICATION_METHOD,
        wit::DenyReason::Unspecified => ReasonCode::UNSPECIFIED_ERROR,
    }
}

pub(crate) fn message_of(m: &Message) -> wit::Message {
    wit::Message {
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos: qos_of(m.qos),
        retain: m.retain,
        user_properties: m.properties.user_properties.clone(),
        content_type: m.properties.content_type.clone(),
        response_topic: m.properties.response_topic.clone(),
        correlation_data: m.properties.correlation_data.as_ref().map(|b| b.to_vec()),
        message_expiry: m.properties.message_expiry_interval,
    }
}
