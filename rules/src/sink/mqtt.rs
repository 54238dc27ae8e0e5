//! MQTT sinks. Without `server`, outputs are republished into this broker: routed like the
//! broker's own messages (to subscribers and the retained store) and never offered to rules
//! again, so a rule cannot feed itself. With `server`, they go to another broker over TCP or
//! TLS (the bridge, `bridge.rs`). Both can set MQTT 5 properties from the output.

use super::bridge::{Bridge, BridgeConfig};
use super::template::{payload_bytes, Template};
use super::{Deliver, Failure, Record};
use super::{KindError, SinkKind, StartArgs};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::broker::Broker;
use switchyard_core::message::Message;
use switchyard_core::protocol::{Properties, Props, QoS};
use switchyard_core::topic;

pub(super) const KIND: SinkKind = SinkKind {
    name: "mqtt",
    check: |v| {
        let m: MqttSinkConfig = super::options(v)?;
        if m.qos > 2 {
            return Err(KindError::Invalid(format!(
                "qos: expected 0, 1 or 2, got {}",
                m.qos
            )));
        }
        if m.topic.is_empty() {
            return Err(KindError::Invalid("topic: empty".into()));
        }
        match &m.server {
            Some(_) => m.bridge().check(m.qos),
            None if m.bridge() != BridgeConfig::default() => Err(KindError::Invalid(
                "client_id, username, password, sslmode, ca_file, inflight, keep_alive_s, protocol: only with server = \"host:port\" (a bridge)".into(),
            )),
            None => Ok(()),
        }
    },
    start: |a: StartArgs| {
        Box::pin(async move {
            let c: MqttSinkConfig = super::options(&a.options)?;
            let shape = Shape::new(&c).map_err(KindError::Unusable)?;
            Ok(match &c.server {
                Some(server) => Box::new(
                    Bridge::new(&a.name, server, &c.bridge(), shape)
                        .map_err(KindError::Unusable)?,
                ) as Box<dyn Deliver>,
                None => Box::new(Republish {
                    broker: a.broker,
                    shape,
                }) as Box<dyn Deliver>,
            })
        })
    },
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// Topic template, e.g. `processed/${device}`.
    pub topic: String,
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    /// Payload template; default: the output as JSON (a string output is sent as is).
    #[serde(default)]
    pub payload: Option<String>,
    /// MQTT 5 properties, templates filled from the output.
    #[serde(default)]
    pub user_properties: BTreeMap<String, String>,
    #[serde(default)]
    pub content_type: Option<String>,
    /// Message Expiry Interval in seconds (a template that renders a number).
    #[serde(default)]
    pub message_expiry_s: Option<String>,
    /// `host:port` of another broker: the outputs go there (a bridge).
    #[serde(default)]
    pub server: Option<String>,
    /// The bridge's client id on the other broker (default `switchyard-bridge-NAME`).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// `disable` (plain TCP, the default), `require`, `verify-ca` or `verify-full`.
    #[serde(default)]
    pub sslmode: Option<crate::tls::TlsMode>,
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// QoS 1 messages sent and not yet acknowledged, at most.
    #[serde(default)]
    pub inflight: Option<u16>,
    #[serde(default)]
    pub keep_alive_s: Option<u16>,
    /// 5 (MQTT 5.0, the default) or 4 (3.1.1: no properties).
    #[serde(default)]
    pub protocol: Option<u8>,
}

impl MqttSinkConfig {
    fn bridge(&self) -> BridgeConfig {
        BridgeConfig {
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            sslmode: self.sslmode,
            ca_file: self.ca_file.clone(),
            inflight: self.inflight,
            keep_alive_s: self.keep_alive_s,
            protocol: self.protocol,
        }
    }
}

/// How an output becomes an MQTT message: topic, payload and properties from templates.
pub(super) struct Shape {
    topic: Template,
    payload: Option<Template>,
    pub(super) qos: QoS,
    retain: bool,
    user_properties: Vec<(String, Template)>,
    content_type: Option<Template>,
    message_expiry: Option<Template>,
}

/// One output, shaped.
pub(super) struct Shaped {
    pub(super) topic: String,
    pub(super) payload: Vec<u8>,
    pub(super) retain: bool,
    pub(super) properties: Props,
}

impl Shape {
    pub(super) fn new(c: &MqttSinkConfig) -> Result<Self, String> {
        let qos = match c.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let mut user_properties = Vec::new();
        for (name, value) in &c.user_properties {
            user_properties.push((name.clone(), Template::parse(value)?));
        }
        Ok(Self {
            topic: Template::parse(&c.topic)?,
            payload: c.payload.as_deref().map(Template::parse).transpose()?,
            qos,
            retain: c.retain,
            user_properties,
            content_type: c.content_type.as_deref().map(Template::parse).transpose()?,
            message_expiry: c
                .message_expiry_s
                .as_deref()
                .map(Template::parse)
                .transpose()?,
        })
    }

    /// The message for `record`, or why this record cannot be one (refused, not retried).
    pub(super) fn render(&self, record: &Record, max_levels: usize) -> Result<Shaped, String> {
        let topic = self.topic.render(record);
        // The same rules as a client's PUBLISH.
        if !topic::publishable(&topic, max_levels) {
            return Err(format!("not a topic name: {topic:?}"));
        }
        let payload = match &self.payload {
            Some(t) => t.render(record).into_bytes(),
            None => payload_bytes(record),
        };
        let mut props = Properties::default();
        for (name, value) in &self.user_properties {
            props
                .user_properties
                .push((name.clone(), value.render(record)));
        }
        props.content_type = self.content_type.as_ref().map(|t| t.render(record));
        if let Some(t) = &self.message_expiry {
            let text = t.render(record);
            let secs = text
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("message_expiry_s: not a number of seconds: {text:?}"))?;
            props.message_expiry_interval = Some(secs);
        }
        Ok(Shaped {
            topic,
            payload,
            retain: self.retain,
            properties: if props.is_empty() {
                Props::default()
            } else {
                Props::from(props)
            },
        })
    }
}

/// Republishes into this broker.
pub struct Republish {
    broker: Arc<Broker>,
    shape: Shape,
}

#[async_trait]
impl Deliver for Republish {
    async fn deliver(&mut self, batch: &[Record]) -> Vec<(usize, Failure)> {
        let mut failures = Vec::new();
        for (i, record) in batch.iter().enumerate() {
            let shaped = match self
                .shape
                .render(record, self.broker.config.max_topic_levels)
            {
                Ok(s) => s,
                Err(why) => {
                    failures.push((i, Failure::Permanent(why)));
                    continue;
                }
            };
            let mut msg = Message::new(shaped.topic, shaped.payload, self.shape.qos, shaped.retain);
            if let Some(secs) = shaped.properties.message_expiry_interval {
                msg.expires_at = Some(Instant::now() + Duration::from_secs(u64::from(secs)));
            }
            msg.properties = shaped.properties;
            let _ = self.broker.publish(Arc::new(msg));
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::config::MqttConfig;

    fn config(v: serde_json::Value) -> MqttSinkConfig {
        serde_json::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn a_rendered_topic_is_held_to_a_clients_rules() {
        let broker = Broker::new(MqttConfig::default());
        let c = config(serde_json::json!({"topic": "${t}", "retain": true}));
        let mut sink = Republish {
            broker: broker.clone(),
            shape: Shape::new(&c).unwrap(),
        };
        let deep = vec!["l"; 5000].join("/");
        let batch: Vec<Record> = ["ok/t", "$SYS/fake", deep.as_str(), "a/+"]
            .iter()
            .map(|t| Arc::new(serde_json::json!({ "t": t })))
            .collect();
        let failed: Vec<usize> = sink
            .deliver(&batch)
            .await
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(failed, vec![1, 2, 3]);
        // Only the valid one was routed (and retained).
        assert_eq!(broker.retained_count(), 1);
    }

    #[test]
    fn properties_come_from_the_output() {
        let c = config(serde_json::json!({"topic": "t", "content_type": "${ct}",
            "message_expiry_s": "${ttl}", "user_properties": {"site": "${site}"}}));
        let shape = Shape::new(&c).unwrap();
        let ok = shape
            .render(
                &Arc::new(serde_json::json!({"ct": "application/json", "ttl": 30, "site": "A"})),
                128,
            )
            .unwrap();
        assert_eq!(
            ok.properties.content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(ok.properties.message_expiry_interval, Some(30));
        assert_eq!(
            ok.properties.user_properties,
            vec![("site".to_string(), "A".to_string())]
        );
        let bad = shape.render(&Arc::new(serde_json::json!({"ttl": "soon"})), 128);
        assert!(bad.err().unwrap().contains("message_expiry_s"));
    }
}
