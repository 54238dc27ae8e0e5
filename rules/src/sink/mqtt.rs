//! Republish into the broker. Republished messages are routed like the broker's own (to
//! subscribers and the retained store) but are never offered to rules again: a rule cannot
//! feed itself, however its topics are written.

use super::template::{payload_bytes, Template};
use super::{Deliver, Failure, Record};
use super::{KindError, SinkKind, StartArgs};
use async_trait::async_trait;
use serde::Deserialize;
use std::sync::Arc;
use switchyard_core::broker::Broker;
use switchyard_core::message::Message;
use switchyard_core::protocol::QoS;
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
        Ok(())
    },
    start: |a: StartArgs| {
        Box::pin(async move {
            let c: MqttSinkConfig = super::options(&a.options)?;
            Ok(
                Box::new(Republish::new(&c, a.broker).map_err(KindError::Unusable)?)
                    as Box<dyn Deliver>,
            )
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
}

pub struct Republish {
    broker: Arc<Broker>,
    topic: Template,
    payload: Option<Template>,
    qos: QoS,
    retain: bool,
}

impl Republish {
    pub fn new(c: &MqttSinkConfig, broker: Arc<Broker>) -> Result<Self, String> {
        let qos = match c.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        Ok(Self {
            broker,
            topic: Template::parse(&c.topic)?,
            payload: c.payload.as_deref().map(Template::parse).transpose()?,
            qos,
            retain: c.retain,
        })
    }
}

#[async_trait]
impl Deliver for Republish {
    async fn deliver(&mut self, batch: &[Record]) -> Vec<(usize, Failure)> {
        let mut failures = Vec::new();
        for (i, record) in batch.iter().enumerate() {
            let name = self.topic.render(record);
            // The same rules as a client's PUBLISH.
            if !topic::publishable(&name, self.broker.config.max_topic_levels) {
                failures.push((i, Failure::Permanent(format!("not a topic name: {name:?}"))));
                continue;
            }
            let payload = match &self.payload {
                Some(t) => t.render(record).into_bytes(),
                None => payload_bytes(record),
            };
            let msg = Message::new(name, payload, self.qos, self.retain);
            let _ = self.broker.publish(Arc::new(msg));
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::config::MqttConfig;

    #[tokio::test]
    async fn a_rendered_topic_is_held_to_a_clients_rules() {
        let broker = Broker::new(MqttConfig::default());
        let c = MqttSinkConfig {
            topic: "${t}".into(),
            qos: 0,
            retain: true,
            payload: None,
        };
        let mut sink = Republish::new(&c, broker.clone()).unwrap();
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
}
