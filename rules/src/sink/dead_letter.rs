//! Where a sink puts the records it gives up on (`dead_letter` in `[sink.NAME]`): a JSON-lines
//! file, another sink, or an MQTT topic of this broker. Each entry says which sink gave up,
//! why, after how many attempts, and carries the record itself.

use super::{Record, Sink};
use crate::config::DeadLetterConfig;
use parking_lot::Mutex;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use switchyard_core::broker::Broker;
use switchyard_core::message::Message;
use switchyard_core::protocol::QoS;
use tracing::warn;

pub(super) enum DeadLetter {
    Nowhere,
    File {
        path: PathBuf,
        /// Opened at the first entry: most sinks never refuse anything.
        file: Mutex<Option<std::fs::File>>,
    },
    /// Linked once every sink has started ([`Sink::link_dead_letter`]).
    Sink {
        name: String,
        target: OnceLock<Arc<Sink>>,
    },
    Topic {
        topic: String,
        broker: Arc<Broker>,
    },
}

impl DeadLetter {
    pub(super) fn new(config: Option<&DeadLetterConfig>, broker: &Arc<Broker>) -> Self {
        match config {
            None => DeadLetter::Nowhere,
            Some(DeadLetterConfig::File(path)) => DeadLetter::File {
                path: path.clone(),
                file: Mutex::new(None),
            },
            Some(DeadLetterConfig::Sink(name)) => DeadLetter::Sink {
                name: name.clone(),
                target: OnceLock::new(),
            },
            Some(DeadLetterConfig::Topic(topic)) => DeadLetter::Topic {
                topic: topic.clone(),
                broker: broker.clone(),
            },
        }
    }

    /// Hands over a record `sink` gave up on; false when there is no dead letter or it could
    /// not take the entry.
    pub(super) fn send(&self, sink: &str, record: &Record, why: &str, attempts: u32) -> bool {
        if matches!(self, DeadLetter::Nowhere) {
            return false;
        }
        let entry = serde_json::json!({
            "sink": sink,
            "error": why,
            "attempts": attempts,
            "at": crate::script::millis(std::time::SystemTime::now()),
            "record": &**record,
        });
        match self {
            DeadLetter::Nowhere => false,
            DeadLetter::File { path, file } => {
                let mut file = file.lock();
                if file.is_none() {
                    let opened = path
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|()| {
                            std::fs::OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(path)
                        });
                    match opened {
                        Ok(f) => *file = Some(f),
                        Err(e) => {
                            warn!(sink, path = %path.display(), error = %e, "cannot open the dead-letter file");
                            return false;
                        }
                    }
                }
                let mut line = entry.to_string();
                line.push('\n');
                match file.as_mut().map(|f| f.write_all(line.as_bytes())) {
                    Some(Ok(())) => true,
                    Some(Err(e)) => {
                        warn!(sink, path = %path.display(), error = %e, "cannot write to the dead-letter file");
                        *file = None;
                        false
                    }
                    None => false,
                }
            }
            DeadLetter::Sink { name, target } => match target.get() {
                Some(t) => t.offer(Arc::new(entry)),
                None => {
                    warn!(sink, dead_letter = %name, "dead-letter sink not linked");
                    false
                }
            },
            DeadLetter::Topic { topic, broker } => {
                let payload = serde_json::to_vec(&entry).unwrap_or_default();
                let msg = Message::new(topic.clone(), payload, QoS::AtLeastOnce, false);
                let _ = broker.publish(Arc::new(msg));
                true
            }
        }
    }
}
