//! What rules see of a message: the `Message` type of rule functions (topic, payload, JSON,
//! client, EMQX's message fields), the default output, and the message fields of events.

use rhai::{Blob, Dynamic, Engine, EvalAltResult, ImmutableString, Map};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use switchyard_core::hooks::ClientInfo;
use switchyard_core::message::Message;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// What a rule sees of a message. Cheap to clone; `json` is decoded on first use and shared
/// read-only by every rule the message runs.
#[derive(Clone)]
pub struct Msg(Arc<MsgData>);

struct MsgData {
    client: Arc<ClientInfo>,
    msg: Arc<Message>,
    json: OnceLock<Result<Dynamic, String>>,
}

impl Msg {
    pub fn new(client: Arc<ClientInfo>, msg: Arc<Message>) -> Self {
        Self(Arc::new(MsgData {
            client,
            msg,
            json: OnceLock::new(),
        }))
    }

    pub fn message(&self) -> &Message {
        &self.0.msg
    }

    pub fn client(&self) -> &ClientInfo {
        &self.0.client
    }

    fn json(&mut self) -> RhaiResult<Dynamic> {
        let parsed = self.0.json.get_or_init(|| {
            serde_json::from_slice::<serde_json::Value>(&self.0.msg.payload)
                .map_err(|e| format!("payload of {} is not JSON: {e}", self.0.msg.topic))
                .and_then(|v| rhai::serde::to_dynamic(v).map_err(|e| e.to_string()))
                .map(|d| d.into_read_only())
        });
        match parsed {
            Ok(d) => Ok(d.clone()),
            Err(e) => Err(e.clone().into()),
        }
    }

    /// The default output of a rule without `select`.
    pub fn to_output(&self) -> serde_json::Value {
        default_output(&self.0.client, &self.0.msg)
    }
}

/// What a rule without `select` sends: the message and who published it.
pub fn default_output(c: &ClientInfo, m: &Message) -> serde_json::Value {
    {
        serde_json::json!({
            "topic": &*m.topic,
            "clientid": &*c.client_id,
            "username": c.username.as_deref(),
            "peerhost": c.peer_addr.ip().to_string(),
            "qos": m.qos as u8,
            "retain": m.retain,
            "payload": String::from_utf8_lossy(&m.payload),
            "ts": millis(m.received_at),
        })
    }
}

pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn user_properties(m: &Message) -> Map {
    let mut out = Map::new();
    for (k, v) in &m.properties.user_properties {
        out.insert(k.as_str().into(), Dynamic::from(v.to_string()));
    }
    out
}

pub(crate) fn register_message(engine: &mut Engine) {
    engine.register_type_with_name::<Msg>("Message");
    engine.register_get("topic", |m: &mut Msg| -> ImmutableString {
        (&*m.0.msg.topic).into()
    });
    engine.register_fn("level", |m: &mut Msg, n: i64| -> Dynamic {
        usize::try_from(n)
            .ok()
            .and_then(|n| m.0.msg.topic.split('/').nth(n))
            .map_or(Dynamic::UNIT, |s| Dynamic::from(s.to_string()))
    });
    engine.register_get("clientid", |m: &mut Msg| -> ImmutableString {
        (&*m.0.client.client_id).into()
    });
    engine.register_get("username", |m: &mut Msg| -> Dynamic {
        m.0.client
            .username
            .as_deref()
            .map_or(Dynamic::UNIT, |u| Dynamic::from(u.to_string()))
    });
    engine.register_get("peerhost", |m: &mut Msg| {
        m.0.client.peer_addr.ip().to_string()
    });
    engine.register_get("peer", |m: &mut Msg| m.0.client.peer_addr.to_string());
    engine.register_get("listener", |m: &mut Msg| -> ImmutableString {
        (&*m.0.client.listener).into()
    });
    engine.register_get("qos", |m: &mut Msg| m.0.msg.qos as i64);
    engine.register_get("retain", |m: &mut Msg| m.0.msg.retain);
    engine.register_get("payload", |m: &mut Msg| -> Blob {
        m.0.msg.payload.to_vec()
    });
    engine.register_get("size", |m: &mut Msg| m.0.msg.payload.len() as i64);
    engine.register_get("text", |m: &mut Msg| {
        String::from_utf8_lossy(&m.0.msg.payload).into_owned()
    });
    engine.register_get("json", Msg::json);
    engine.register_get("user_properties", |m: &mut Msg| user_properties(&m.0.msg));
    engine.register_get("ts", |m: &mut Msg| millis(m.0.msg.received_at));
    engine.register_get("publish_received_at", |m: &mut Msg| {
        millis(m.0.msg.received_at)
    });
    engine.register_get("id", |m: &mut Msg| message_id(&m.0.msg));
    engine.register_get("flags", |m: &mut Msg| flags(&m.0.msg));
    engine.register_get("pub_props", |m: &mut Msg| pub_props(&m.0.msg));
    engine.register_get("node", |_: &mut Msg| node_name());
    engine.register_get("event", |_: &mut Msg| "message.publish".to_string());
    engine.register_fn("attribute", |m: &mut Msg, key: &str| -> Dynamic {
        m.0.client
            .attribute(key)
            .map_or(Dynamic::UNIT, |v| Dynamic::from(v.to_string()))
    });
}

/// This broker as EMQX's `node` field names it: `switchyard@HOST`.
pub fn node_name() -> String {
    static NODE: OnceLock<String> = OnceLock::new();
    NODE.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("switchyard@{host}")
    })
    .clone()
}

/// A message's id: 32 hex digits, the same in every rule and event that sees the message
/// (made from when it was received and by whom, on which topic), ordered by receipt time.
pub fn message_id(m: &Message) -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = m
        .received_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = foldhash::fast::FixedState::with_seed(0x1d).build_hasher();
    h.write(m.publisher.as_deref().unwrap_or("").as_bytes());
    h.write_u8(0);
    h.write(m.topic.as_bytes());
    format!("{nanos:016x}{:016x}", h.finish())
}

/// EMQX's `flags`: `#{ retain: bool, dup: bool }`.
fn flags(m: &Message) -> Map {
    let mut out = Map::new();
    out.insert("retain".into(), m.retain.into());
    // A message reaches rules once, as the broker accepted it.
    out.insert("dup".into(), false.into());
    out
}

/// EMQX's `pub_props`: the PUBLISH properties that travel with the message, by their spec names.
fn pub_props(m: &Message) -> Map {
    let p = &m.properties;
    let mut out = Map::new();
    if !p.user_properties.is_empty() {
        out.insert("User-Property".into(), user_properties(m).into());
    }
    if let Some(v) = &p.content_type {
        out.insert("Content-Type".into(), v.clone().into());
    }
    if let Some(v) = p.message_expiry_interval {
        out.insert("Message-Expiry-Interval".into(), i64::from(v).into());
    }
    if let Some(v) = &p.response_topic {
        out.insert("Response-Topic".into(), v.clone().into());
    }
    if let Some(v) = &p.correlation_data {
        out.insert("Correlation-Data".into(), Dynamic::from_blob(v.to_vec()));
    }
    if let Some(v) = p.payload_format_indicator {
        out.insert("Payload-Format-Indicator".into(), i64::from(v).into());
    }
    out
}

/// The message fields of `message.*` events.
pub fn message_fields(msg: &Message) -> Vec<(String, Dynamic)> {
    vec![
        ("id".into(), message_id(msg).into()),
        ("topic".into(), msg.topic.to_string().into()),
        ("qos".into(), (msg.qos as i64).into()),
        ("retain".into(), msg.retain.into()),
        ("flags".into(), flags(msg).into()),
        ("pub_props".into(), pub_props(msg).into()),
        (
            "payload".into(),
            String::from_utf8_lossy(&msg.payload).into_owned().into(),
        ),
        (
            "from_clientid".into(),
            msg.publisher
                .as_deref()
                .map_or(Dynamic::UNIT, |p| p.to_string().into()),
        ),
        ("publish_ts".into(), millis(msg.received_at).into()),
        ("publish_received_at".into(), millis(msg.received_at).into()),
    ]
}
