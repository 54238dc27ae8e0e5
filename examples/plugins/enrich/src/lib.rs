//! Message enrichment: for messages on the configured topics, adds the user properties
//! `received_at` (milliseconds since the epoch) and `client_id`, and drops payloads larger
//! than `max_payload` bytes.
//!
//! ```toml
//! [[plugin]]
//! path = "target/plugins/enrich.wasm"
//! config = { topics = ["sensors/#"], max_payload = 4096 }
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
}

fn everything() -> Vec<String> {
    vec!["#".into()]
}

static MAX_PAYLOAD: OnceLock<Option<usize>> = OnceLock::new();

struct Enrich;

impl Plugin for Enrich {
    fn init(config: String) -> Result<Registration, String> {
        let cfg: Config =
            serde_json::from_str(&config).map_err(|e| format!("enrich config: {e}"))?;
        let _ = MAX_PAYLOAD.set(cfg.max_payload);
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
        MessageResult::Modify(MessagePatch {
            topic: None,
            payload: None,
            qos: None,
            retain: None,
            user_properties: Some(props),
            content_type: None,
            response_topic: None,
            correlation_data: None,
            message_expiry: None,
        })
    }
}

export_plugin!(Enrich);
