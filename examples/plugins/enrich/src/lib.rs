//! Message enrichment: for messages on the configured topics, adds the user properties
//! `received_at` (milliseconds since the epoch) and `client_id`, drops payloads larger
//! than `max_payload` bytes, and can set the MQTT 5 content type and message expiry.
//!
//! ```toml
//! [[plugin]]
//! path = "target/plugins/enrich.wasm"
//! config = { topics = ["sensors/#"], max_payload = 4096, content_type = "application/json", expiry_s = 3600 }
//! ```

use serde::Deserialize;
use std::sync::OnceLock;
use switchyard_sdk::*;

#[derive(Deserialize)]
struct Config {
    /// Filters of the topics to enrich; the host calls the plugin only for these.
    #[serde(default = "everything")]
    topics: Vec<String>,
    #[serde(default)]
    max_payload: Option<usize>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    expiry_s: Option<u32>,
}

fn everything() -> Vec<String> {
    vec!["#".into()]
}

static MAX_PAYLOAD: OnceLock<Option<usize>> = OnceLock::new();
/// (content type, expiry) to set; `None` leaves the message's own.
static PROPERTIES: OnceLock<(Option<String>, Option<u32>)> = OnceLock::new();

struct Enrich;

impl Plugin for Enrich {
    fn init(config: String) -> Result<Registration, String> {
        let cfg: Config =
            serde_json::from_str(&config).map_err(|e| format!("enrich config: {e}"))?;
        let _ = MAX_PAYLOAD.set(cfg.max_payload);
        let _ = PROPERTIES.set((cfg.content_type, cfg.expiry_s));
        Ok(Registration {
            hooks: HookSet::MESSAGE_PUBLISH,
            topic_filters: cfg.topics,
        })
    }

    fn on_message_publish(client: &ClientInfo, msg: Message) -> MessageResult {
        if MAX_PAYLOAD
            .get()
            .copied()
            .flatten()
            .is_some_and(|max| msg.payload.len() > max)
        {
            return MessageResult::Drop;
        }
        let mut props = msg.user_properties;
        props.push(("received_at".into(), host::now_ms().to_string()));
        props.push(("client_id".into(), client.client_id.clone()));
        let (content_type, expiry) = PROPERTIES.get().cloned().unwrap_or_default();
        MessageResult::Modify(MessagePatch {
            topic: None,
            payload: None,
            qos: None,
            retain: None,
            user_properties: Some(props),
            content_type: content_type.clone().map(Some),
            response_topic: None,
            correlation_data: None,
            message_expiry: expiry.map(Some),
        })
    }
}

export_plugin!(Enrich);
