//! Client and message events as rules see them: EMQX's event names and fields.

use rhai::{Dynamic, Map};
use switchyard_core::hooks::Event;

use crate::script;

pub(super) fn event_name(e: &Event) -> Option<&'static str> {
    Some(match e {
        Event::ClientConnected { .. } => "client.connected",
        Event::ClientDisconnected { .. } => "client.disconnected",
        Event::SessionSubscribed { .. } => "session.subscribed",
        Event::SessionUnsubscribed { .. } => "session.unsubscribed",
        Event::MessageDelivered { .. } => "message.delivered",
        Event::MessageAcked { .. } => "message.acked",
        Event::MessageDropped { .. } => "message.dropped",
        Event::MessageAccepted { .. } => return None,
    })
}

/// The client an event is about (its receiver, for message events), if any.
pub(super) fn event_client(e: &Event) -> Option<&str> {
    match e {
        Event::ClientConnected { client }
        | Event::ClientDisconnected { client, .. }
        | Event::SessionSubscribed { client, .. }
        | Event::SessionUnsubscribed { client, .. }
        | Event::MessageAccepted { client, .. } => Some(&client.client_id),
        Event::MessageDelivered { to, .. } | Event::MessageAcked { to, .. } => Some(&to.client_id),
        Event::MessageDropped { to, .. } => to.as_deref(),
    }
}

/// An event as rules see it: a map with the fields EMQX users know.
pub(super) fn event_map(name: &str, e: &Event) -> Map {
    let mut m = Map::new();
    let mut put = |k: &str, v: Dynamic| {
        m.insert(k.into(), v);
    };
    put("event", name.to_string().into());
    put("ts", script::millis(std::time::SystemTime::now()).into());
    let client = match e {
        Event::ClientConnected { client }
        | Event::ClientDisconnected { client, .. }
        | Event::SessionSubscribed { client, .. }
        | Event::SessionUnsubscribed { client, .. } => Some(client),
        _ => None,
    };
    if let Some(c) = client {
        put("clientid", c.client_id.to_string().into());
        put(
            "username",
            c.username
                .as_deref()
                .map_or(Dynamic::UNIT, |u| u.to_string().into()),
        );
        put("peerhost", c.peer_addr.ip().to_string().into());
        put("listener", c.listener.to_string().into());
        put("proto_ver", (c.protocol as u8 as i64).into());
    }
    match e {
        Event::ClientDisconnected { reason: why, .. } => {
            // A DISCONNECT from the client is what EMQX calls "normal".
            let reason = if why == "client disconnected" {
                "normal"
            } else {
                why.as_str()
            };
            put("reason", reason.to_string().into());
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
            message_fields(&mut put, msg);
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
            put("reason", why.to_string().into());
            message_fields(&mut put, msg);
        }
        _ => {}
    }
    m
}

fn message_fields(put: &mut impl FnMut(&str, Dynamic), msg: &switchyard_core::message::Message) {
    put("topic", msg.topic.to_string().into());
    put("qos", (msg.qos as i64).into());
    put("retain", msg.retain.into());
    put(
        "payload",
        String::from_utf8_lossy(&msg.payload).into_owned().into(),
    );
    put(
        "from_clientid",
        msg.publisher
            .as_deref()
            .map_or(Dynamic::UNIT, |p| p.to_string().into()),
    );
    put("publish_ts", script::millis(msg.received_at).into());
}
