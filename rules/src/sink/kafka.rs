//! Kafka sink over rdkafka (librdkafka built from source). A record counts as sent only when
//! its delivery report says the broker acknowledged it; librdkafka retries inside
//! `message_timeout_ms`, after which the driver's own backoff takes over, so delivery is
//! at least once across a Kafka outage.
//!
//! The producer is idempotent by default (`enable.idempotence`, `acks=all`, at most 5
//! requests in flight per connection): librdkafka's own retries after a lost response neither
//! write a record twice nor let a later record of the same partition (same key) overtake it.

use super::template::{payload_bytes, Template};
use super::{Deliver, Failure, Record};
use super::{KindError, SinkKind, StartArgs};
use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Deserialize;
use std::collections::BTreeMap;
use tracing::warn;

pub(super) const KIND: SinkKind = SinkKind {
    name: "kafka",
    check: |v| check(&super::options(v)?),
    start: |a: StartArgs| {
        Box::pin(async move {
            let c: KafkaConfig = super::options(&a.options)?;
            Ok(Box::new(Kafka::new(&c).map_err(KindError::Unusable)?) as Box<dyn Deliver>)
        })
    },
};

fn check(k: &KafkaConfig) -> Result<(), KindError> {
    if k.brokers.is_empty() {
        return Err(KindError::Invalid("brokers: empty".into()));
    }
    if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&k.compression.as_str()) {
        return Err(KindError::Invalid(format!(
            "compression: expected none, gzip, snappy, lz4 or zstd, got {:?}",
            k.compression
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Topic template; a rule's output may also name it in a `topic` field when this is empty.
    pub topic: String,
    /// Key template, e.g. `${device}`.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// none | gzip | snappy | lz4 | zstd
    #[serde(default = "default_compression")]
    pub compression: String,
    #[serde(default = "default_kafka_linger")]
    pub kafka_linger_ms: u64,
    /// How long librdkafka keeps retrying one message before reporting it failed (we then retry
    /// it ourselves with backoff).
    #[serde(default = "default_message_timeout")]
    pub message_timeout_ms: u64,
    /// Extra librdkafka properties (`security.protocol`, …); they override the defaults above,
    /// `enable.idempotence = "false"` included.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_compression() -> String {
    "none".into()
}
fn default_kafka_linger() -> u64 {
    5
}
fn default_message_timeout() -> u64 {
    30_000
}

pub struct Kafka {
    producer: FutureProducer,
    /// Kept to build a new producer when librdkafka declares this one dead (a fatal error,
    /// e.g. an idempotent producer fenced after a broker lost its state).
    config: ClientConfig,
    topic: Template,
    key: Option<Template>,
    headers: Vec<(String, Template)>,
}

impl Kafka {
    pub fn new(c: &KafkaConfig) -> Result<Self, String> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &c.brokers)
            .set("linger.ms", c.kafka_linger_ms.to_string())
            .set("compression.type", &c.compression)
            .set("message.timeout.ms", c.message_timeout_ms.to_string())
            // Broker failures show up as delivery reports and are retried; without this
            // librdkafka also logs every reconnect attempt.
            .set("log.connection.close", "false")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5");
        for (k, v) in &c.properties {
            cfg.set(k, v);
        }
        let producer: FutureProducer = cfg.create().map_err(|e| format!("kafka: {e}"))?;
        let mut headers = Vec::new();
        for (name, value) in &c.headers {
            headers.push((name.clone(), Template::parse(value)?));
        }
        Ok(Self {
            producer,
            config: cfg,
            topic: Template::parse(&c.topic)?,
            key: c.key.as_deref().map(Template::parse).transpose()?,
            headers,
        })
    }
}

#[async_trait]
impl Deliver for Kafka {
    async fn deliver(&mut self, batch: &[Record]) -> Vec<(usize, Failure)> {
        let mut failures = Vec::new();
        let mut reports = Vec::with_capacity(batch.len());
        let mut keys: Vec<(String, Option<String>)> = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            let topic = self.topic.render(record);
            let payload = payload_bytes(record);
            let key = self.key.as_ref().map(|k| k.render(record));
            keys.push((topic.clone(), key.clone()));
            let mut out = FutureRecord::<String, Vec<u8>>::to(&topic).payload(&payload);
            if let Some(key) = &key {
                out = out.key(key);
            }
            if !self.headers.is_empty() {
                let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
                for (name, value) in &self.headers {
                    let value = value.render(record);
                    headers = headers.insert(Header {
                        key: name,
                        value: Some(&value),
                    });
                }
                out = out.headers(headers);
            }
            match self.producer.send_result(out) {
                Ok(report) => reports.push((i, report)),
                // The producer's own queue is full or the topic is invalid.
                Err((e, _)) => failures.push((i, classify(&e))),
            }
        }
        let mut timed_out = 0;
        for (i, report) in reports {
            match report.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::MessageTimedOut)
                    {
                        timed_out += 1;
                    }
                    failures.push((i, classify(&e)));
                }
                Err(_) => failures.push((i, Failure::Retry("kafka: producer gone".into()))),
            }
        }
        keep_key_order(&keys, &mut failures);
        let fatal = self.producer.client().fatal_error();
        // Nothing of the batch got through in a whole message timeout: the broker may have
        // lost this producer's state (a restart without it, a failover) and an idempotent
        // producer can wait on it forever.
        let stuck = !batch.is_empty() && failures.len() == batch.len() && timed_out == batch.len();
        if fatal.is_some() || stuck {
            // A new producer gets a new producer id; the failed records are retried through
            // it, in order.
            let why = fatal.map_or_else(
                || "no progress in message_timeout_ms".to_string(),
                |(code, reason)| format!("{code:?}: {reason}"),
            );
            warn!(reason = %why, "replacing the kafka producer");
            match self.config.create::<FutureProducer>() {
                Ok(p) => self.producer = p,
                Err(e) => warn!(error = %e, "cannot start a new kafka producer"),
            }
            for f in &mut failures {
                if let Failure::Permanent(why) = &f.1 {
                    f.1 = Failure::Retry(why.clone());
                }
            }
        }
        failures
    }
}

/// A record to retry goes after the records delivered so far, so a later record of the same
/// topic and key that did get through is sent again after it: Kafka's last word per key is
/// then in publish order (at the cost of a duplicate, and only after librdkafka gave up).
fn keep_key_order(keys: &[(String, Option<String>)], failures: &mut Vec<(usize, Failure)>) {
    let retried: Vec<usize> = failures
        .iter()
        .filter(|(_, f)| matches!(f, Failure::Retry(_)))
        .map(|(i, _)| *i)
        .collect();
    if retried.is_empty() {
        return;
    }
    let failed: std::collections::HashSet<usize> = failures.iter().map(|(i, _)| *i).collect();
    let mut first_retry: std::collections::HashMap<&(String, Option<String>), usize> =
        std::collections::HashMap::new();
    for i in retried {
        let Some(k) = keys.get(i) else { continue };
        first_retry
            .entry(k)
            .and_modify(|f| *f = (*f).min(i))
            .or_insert(i);
    }
    for (j, k) in keys.iter().enumerate() {
        if !failed.contains(&j) && first_retry.get(k).is_some_and(|first| *first < j) {
            failures.push((
                j,
                Failure::Retry("kafka: sent again after an earlier record of its key".into()),
            ));
        }
    }
}

/// Errors about the record itself are refusals; everything else (broker down, timeouts, full
/// queues, leader elections) may pass.
fn classify(e: &KafkaError) -> Failure {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::InvalidRecord,
        ) => Failure::Permanent(format!("kafka: {e}")),
        _ => Failure::Retry(format!("kafka: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivered_record_after_a_failed_one_of_its_key_goes_again() {
        let keys: Vec<(String, Option<String>)> = ["a", "b", "a", "b", "a"]
            .iter()
            .map(|k| ("t".to_string(), Some(k.to_string())))
            .collect();
        let mut failures = vec![(0, Failure::Retry("timed out".into()))];
        keep_key_order(&keys, &mut failures);
        let mut again: Vec<usize> = failures.iter().map(|f| f.0).collect();
        again.sort_unstable();
        assert_eq!(
            again,
            vec![0, 2, 4],
            "key a's later records; key b untouched"
        );
    }
}
