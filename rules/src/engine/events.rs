//! Client and message events as rules see them: EMQX's event names and fields.

use rhai::{Dynamic, Map};
use std::sync::Arc;
use switchyard_core::hooks::{Access, ClientInfo, ConnectFacts, Event};
use switchyard_core::protocol::ReasonCode;

use crate::script;

pub(super) fn event_name(e: &Event) -> Option<&'static str> {
    Some(match e {
        Event::ClientConnected { .. } => "client.connected",
        Event::ClientConnack { .. } => "client.connack",
        Event::ClientDisconnected { .. } => "client.disconnected",
        Event::AuthnComplete { .. } => "client.check_authn_complete",
        Event::AuthzComplete { .. } => "client.check_authz_complete",
        Event::SessionSubscribed { .. } => "session.subscribed",
        Event::SessionUnsubscribed { .. } => "session.unsubscribed",
        Event::MessageDelivered { .. } => "message.delivered",
        Event::MessageAcked { .. } => "message.acked",
        Event::MessageDropped { .. } => "message.dropped",
        Event::MessageAccepted { .. } => return None,
    })
}

/// The client a client event is about.
fn client_of(e: &Event) -> Option<&Arc<ClientInfo>> {
    match e {
        Event::ClientConnected { client, .. }
        | Event::ClientConnack { client, .. }
        | Event::ClientDisconnected { client, .. }
        | Event::AuthnComplete { client, .. }
        | Event::AuthzComplete { client, .. }
        | Event::SessionSubscribed { client, .. }
        | Event::SessionUnsubscribed { client, .. } => Some(client),
        _ => None,
    }
}

/// The client an event is about (its receiver, for message events), if any.
pub(super) fn event_client(e: &Event) -> Option<&str> {
    if let Some(c) = client_of(e) {
        return Some(&c.client_id);
    }
    match e {
        Event::MessageAccepted { client, .. } => Some(&client.client_id),
        Event::MessageDelivered { to, .. } | Event::MessageAcked { to, .. } => Some(&to.client_id),
        Event::MessageDropped { to, .. } => to.as_deref(),
        _ => None,
    }
}

/// A reason code as EMQX names it: `success`, `not_authorized`, `banned`, …
pub(crate) fn reason_name(code: ReasonCode) -> String {
    code.describe().replace(' ', "_")
}

/// An event as rules see it: a map with the fields EMQX users know.
pub(super) fn event_map(name: &str, e: &Event) -> Map {
    let mut m = Map::new();
    let mut put = |k: &str, v: Dynamic| {
        m.insert(k.into(), v);
    };
    let now = script::millis(std::time::SystemTime::now());
    put("event", name.to_string().into());
    put("ts", now.into());
    put("timestamp", now.into());
    put("node", script::node_name().into());
    let client = client_of(e);
    if let Some(c) = client {
        client_fields(&mut put, c);
    }
    match e {
        Event::ClientConnected { facts, .. } => connect_fields(&mut put, facts),
        Event::ClientConnack { facts, code, .. } => {
            connect_fields(&mut put, facts);
            put("reason_code", reason_name(*code).into());
        }
        Event::ClientDisconnected { reason: why, .. } => {
            // A DISCONNECT from the client is what EMQX calls "normal".
            let reason = if why == "client disconnected" {
                "normal"
            } else {
                why.as_str()
            };
            put("reason", reason.to_string().into());
            put("disconnected_at", now.into());
        }
        Event::AuthnComplete { client, code } => {
            put("reason_code", reason_name(*code).into());
            put("is_anonymous", client.username.is_none().into());
            put("is_superuser", false.into());
        }
        Event::AuthzComplete {
            access,
            topic,
            allowed,
            ..
        } => {
            put("topic", topic.to_string().into());
            let action = match access {
                Access::Publish => "publish",
                Access::Subscribe => "subscribe",
                Access::Read => "read",
            };
            put("action", action.into());
            put("result", if *allowed { "allow" } else { "deny" }.into());
        }
        Event::SessionSubscribed { filter, qos, .. } => {
            put("topic", filter.clone().into());
            put("qos", (*qos as i64).into());
        }
        Event::SessionUnsubscribed { filter, .. } => put("topic", filter.clone().into()),
        Event::MessageDelivered { to, msg } | Event::MessageAcked { to, msg } => {
            put("clientid", to.client_id.to_string().into());
            if let Some(user) = &to.username {
                put("username", user.to_string().into());
            }
            for (k, v) in script::message_fields(msg) {
                put(&k, v);
            }
        }
        Event::MessageDropped {
            to,
            msg,
            reason: why,
            ..
        } => {
            put(
                "clientid",
                to.as_deref()
                    .map_or(Dynamic::UNIT, |c| c.to_string().into()),
            );
            // EMQX's names: no_subscribers, queue_full, expired.
            put("reason", why.replace(' ', "_").into());
            for (k, v) in script::message_fields(msg) {
                put(&k, v);
            }
        }
        _ => {}
    }
    m
}

fn client_fields(put: &mut impl FnMut(&str, Dynamic), c: &ClientInfo) {
    put("clientid", c.client_id.to_string().into());
    put(
        "username",
        c.username
            .as_deref()
            .map_or(Dynamic::UNIT, |u| u.to_string().into()),
    );
    put("peerhost", c.peer_addr.ip().to_string().into());
    put("peername", c.peer_addr.to_string().into());
    put("listener", c.listener.to_string().into());
    put("proto_name", "MQTT".into());
    put("proto_ver", (c.protocol as u8 as i64 + 3).into());
}

fn connect_fields(put: &mut impl FnMut(&str, Dynamic), f: &ConnectFacts) {
    put("keepalive", i64::from(f.keep_alive).into());
    put("clean_start", f.clean_start.into());
    put("expiry_interval", i64::from(f.session_expiry).into());
    put("connected_at", script::millis(f.at).into());
}
