//! Contract 0.2.0 guests behind the 0.3.0 host: arguments translated down, answers translated
//! up. What 0.2.0 cannot express is left out: a `read` check is never asked of it (it never
//! answers `filter`), enhanced authentication steps are not shown to it, and events reach it
//! as the strings it knows ("connected", "disconnected:<reason>", "subscribed:<filter>",
//! "unsubscribed:<filter>", "delivered:<topic>", "acked:<topic>", "dropped:<topic>:<why>").

use crate::bindings::{v2::switchyard::plugin::types as old, wit};

pub(crate) fn client_v2(c: &wit::ClientInfo) -> old::ClientInfo {
    old::ClientInfo {
        client_id: c.client_id.clone(),
        username: c.username.clone(),
        peer_addr: c.peer_addr.clone(),
        protocol: match c.protocol {
            wit::ProtocolVersion::V3 => old::ProtocolVersion::V3,
            wit::ProtocolVersion::V311 => old::ProtocolVersion::V311,
            wit::ProtocolVersion::V5 => old::ProtocolVersion::V5,
        },
        listener: c.listener.clone(),
        cert_common_name: c.cert_common_name.clone(),
        attributes: c.attributes.clone(),
    }
}

pub(crate) fn connect_request_v2(r: &wit::ConnectRequest) -> old::ConnectRequest {
    old::ConnectRequest {
        client: client_v2(&r.client),
        password: r.password.clone(),
        clean_start: r.clean_start,
        keep_alive: r.keep_alive,
    }
}

/// `None` for `read`, which 0.2.0 has no word for.
pub(crate) fn access_v2(a: wit::Access) -> Option<old::Access> {
    match a {
        wit::Access::Publish => Some(old::Access::Publish),
        wit::Access::Subscribe => Some(old::Access::Subscribe),
        wit::Access::Read => None,
    }
}

pub(crate) fn qos_v2(q: wit::Qos) -> old::Qos {
    match q {
        wit::Qos::AtMostOnce => old::Qos::AtMostOnce,
        wit::Qos::AtLeastOnce => old::Qos::AtLeastOnce,
        wit::Qos::ExactlyOnce => old::Qos::ExactlyOnce,
    }
}

fn qos_v3(q: old::Qos) -> wit::Qos {
    match q {
        old::Qos::AtMostOnce => wit::Qos::AtMostOnce,
        old::Qos::AtLeastOnce => wit::Qos::AtLeastOnce,
        old::Qos::ExactlyOnce => wit::Qos::ExactlyOnce,
    }
}

pub(crate) fn message_v2(m: &wit::Message) -> old::Message {
    old::Message {
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        qos: qos_v2(m.qos),
        retain: m.retain,
        user_properties: m.user_properties.clone(),
        content_type: m.content_type.clone(),
        response_topic: m.response_topic.clone(),
        correlation_data: m.correlation_data.clone(),
        message_expiry: m.message_expiry,
    }
}

fn reason_v3(r: old::DenyReason) -> wit::DenyReason {
    match r {
        old::DenyReason::NotAuthorized => wit::DenyReason::NotAuthorized,
        old::DenyReason::BadCredentials => wit::DenyReason::BadCredentials,
        old::DenyReason::Banned => wit::DenyReason::Banned,
        old::DenyReason::QuotaExceeded => wit::DenyReason::QuotaExceeded,
        old::DenyReason::TopicInvalid => wit::DenyReason::TopicInvalid,
        old::DenyReason::Unspecified => wit::DenyReason::Unspecified,
    }
}

pub(crate) fn auth_result_v3(r: old::AuthResult) -> wit::AuthResult {
    match r {
        old::AuthResult::Allow(attributes) => wit::AuthResult::Allow(wit::AuthSuccess {
            attributes,
            data: None,
        }),
        old::AuthResult::Deny(r) => wit::AuthResult::Deny(reason_v3(r)),
        old::AuthResult::Ignore => wit::AuthResult::Ignore,
    }
}

pub(crate) fn acl_result_v3(r: old::AclResult) -> wit::AclResult {
    match r {
        old::AclResult::Allow => wit::AclResult::Allow,
        old::AclResult::Deny(r) => wit::AclResult::Deny(reason_v3(r)),
        old::AclResult::Ignore => wit::AclResult::Ignore,
    }
}

pub(crate) fn message_result_v3(r: old::MessageResult) -> wit::MessageResult {
    match r {
        old::MessageResult::Pass => wit::MessageResult::Pass,
        old::MessageResult::Drop => wit::MessageResult::Drop,
        old::MessageResult::Modify(p) => wit::MessageResult::Modify(wit::MessagePatch {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos.map(qos_v3),
            retain: p.retain,
            user_properties: p.user_properties,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            message_expiry: None,
        }),
    }
}

pub(crate) fn registration_v3(r: old::Registration) -> wit::Registration {
    let mut hooks = wit::HookSet::empty();
    for (o, n) in [
        (old::HookSet::AUTHENTICATE, wit::HookSet::AUTHENTICATE),
        (old::HookSet::AUTHORIZE, wit::HookSet::AUTHORIZE),
        (old::HookSet::MESSAGE_PUBLISH, wit::HookSet::MESSAGE_PUBLISH),
        (old::HookSet::CLIENT_EVENTS, wit::HookSet::CLIENT_EVENTS),
        (old::HookSet::MESSAGE_EVENTS, wit::HookSet::MESSAGE_EVENTS),
    ] {
        if r.hooks.contains(o) {
            hooks |= n;
        }
    }
    wit::Registration {
        hooks,
        topic_filters: r.topic_filters,
    }
}

pub(crate) fn client_event_v2(e: &wit::ClientEvent) -> String {
    match e {
        wit::ClientEvent::Connected => "connected".into(),
        wit::ClientEvent::Disconnected(why) => format!("disconnected:{why}"),
        wit::ClientEvent::Subscribed(s) => format!("subscribed:{}", s.filter),
        wit::ClientEvent::Unsubscribed(f) => format!("unsubscribed:{f}"),
    }
}

pub(crate) fn message_event_v2(e: &wit::MessageEvent) -> String {
    match &e.kind {
        wit::MessageEventKind::Delivered => format!("delivered:{}", e.topic),
        wit::MessageEventKind::Acked => format!("acked:{}", e.topic),
        wit::MessageEventKind::Dropped(why) => format!("dropped:{}:{why}", e.topic),
    }
}
