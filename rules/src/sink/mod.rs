//! Sinks: where rule outputs go. Every kind shares one driver: a bounded buffer filled by the
//! rule workers without waiting (`buffer`: memory, or the write-ahead `disk` queue), batching,
//! retries with capped exponential backoff, counters, and a flush on shutdown. A kind only says
//! how to deliver one batch.

mod bridge;
mod buffer;
mod dead_letter;
mod disk;
mod driver;
mod kafka;
mod mqtt;
mod sql;
pub mod template;
mod webhook;

use crate::config::SinkConfig;
use async_trait::async_trait;
use buffer::Input;
use dead_letter::DeadLetter;
use driver::Driver;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::broker::Broker;
use tokio::sync::watch;
use tokio::time::Instant;

pub use disk::{DiskQueue, Overflow};

/// One rule output on its way to a sink; shared by every sink the rule names.
pub type Record = Arc<Value>;

/// Why a record was not delivered.
#[derive(Debug)]
pub enum Failure {
    /// The destination is down or overloaded: try again later.
    Retry(String),
    /// The destination refused this record (4xx, SQL constraint…): retrying will not help.
    Permanent(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {source}")]
    Start {
        sink: String,
        #[source]
        source: KindError,
    },
}

/// What is wrong with a sink kind's keys, or why its destination cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KindError {
    /// A key is unknown, missing or of the wrong type (serde names it).
    #[error(transparent)]
    Keys(#[from] serde_json::Error),
    /// A key's value is out of range or does not fit another key.
    #[error("{0}")]
    Invalid(String),
    /// The destination cannot be used: a missing table, a bad template, a client that does
    /// not build, a disk buffer that does not open.
    #[error("{0}")]
    Unusable(String),
}

/// One kind of sink: the `kind = "..."` name, how its own keys are checked, and how it starts.
/// A new kind is one module (its config, its `Deliver`, its `SinkKind`) and one line in
/// [`KINDS`].
pub struct SinkKind {
    pub name: &'static str,
    /// Reads the kind's own keys (unknown keys and bad values are errors that name the key).
    pub check: fn(&Value) -> Result<(), KindError>,
    /// Starts delivering, from the same keys.
    pub start: fn(StartArgs) -> StartFuture,
}

/// What a kind's `start` gets.
pub struct StartArgs {
    /// The sink's name (`[sink.NAME]`).
    pub name: String,
    pub options: Value,
    pub broker: Arc<Broker>,
}

pub type StartFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Box<dyn Deliver>, KindError>> + Send>,
>;

/// Every sink kind.
pub const KINDS: &[SinkKind] = &[
    webhook::KIND,
    kafka::KIND,
    sql::SQLITE,
    sql::POSTGRES,
    mqtt::KIND,
];

pub fn kind(name: &str) -> Option<&'static SinkKind> {
    KINDS.iter().find(|k| k.name == name)
}

/// A kind's keys as its typed config.
fn options<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, KindError> {
    Ok(serde_json::from_value(v.clone())?)
}

/// How one kind of destination takes a batch.
#[async_trait]
pub trait Deliver: Send + 'static {
    /// Delivers `batch`; returns the records that failed (by index into `batch`).
    async fn deliver(&mut self, batch: &[Record]) -> Vec<(usize, Failure)>;
}

#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Outputs offered to the sink by rules.
    pub matched: AtomicU64,
    /// Acknowledged by the destination.
    pub sent: AtomicU64,
    /// Refused by the destination, or out of retries.
    pub failed: AtomicU64,
    /// Delivery attempts repeated after a transient failure.
    pub retried: AtomicU64,
    /// Not accepted because the buffer was full (or the sink was closed).
    pub dropped: AtomicU64,
    /// Of the failed, how many went to the dead letter.
    pub dead_lettered: AtomicU64,
    /// Taken from the buffer and not yet settled (in a batch or waiting to retry).
    pub in_flight: AtomicU64,
    /// The last outcomes of delivery, for operators.
    pub health: parking_lot::Mutex<SinkHealth>,
}

/// How delivery is going, as the HTTP API shows it.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SinkHealth {
    /// The last error a destination gave, and when (Unix ms).
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    /// When a batch last went through (Unix ms).
    pub last_success_ms: Option<u64>,
    /// Since when records have been waiting to be retried (Unix ms); none while healthy.
    pub failing_since_ms: Option<u64>,
}

/// Retrying for longer than this, a sink is shown as failing.
const FAILING_AFTER_MS: u64 = 30_000;

impl SinkHealth {
    /// `healthy`, `retrying` (records wait for a retry) or `failing` (for 30 s or more).
    pub fn state(&self, now_ms: u64) -> &'static str {
        match self.failing_since_ms {
            None => "healthy",
            Some(since) if now_ms.saturating_sub(since) < FAILING_AFTER_MS => "retrying",
            Some(_) => "failing",
        }
    }

    /// One batch's outcome: records delivered, and the first error if any failed.
    pub fn record(&mut self, delivered: bool, error: Option<&str>, retrying: bool, now_ms: u64) {
        if delivered {
            self.last_success_ms = Some(now_ms);
        }
        if let Some(e) = error {
            self.last_error = Some(e.to_string());
            self.last_error_ms = Some(now_ms);
        }
        if retrying {
            self.failing_since_ms.get_or_insert(now_ms);
        } else {
            self.failing_since_ms = None;
        }
    }
}

impl SinkCounters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A running sink: what rules hold to send outputs.
pub struct Sink {
    pub name: String,
    pub kind: &'static str,
    input: Input,
    pub counters: Arc<SinkCounters>,
    dead_letter: Arc<DeadLetter>,
    /// Set to the flush deadline when the broker shuts down.
    shutdown: watch::Sender<Option<Instant>>,
    finished: tokio::sync::Mutex<Option<tokio::task::JoinHandle<u64>>>,
}

impl Sink {
    /// Starts the sink's delivery task on the current runtime. Fails when the configuration
    /// cannot work at all (an SQLite statement naming a missing table, a bad template).
    pub async fn start(
        name: &str,
        config: &SinkConfig,
        broker: &Arc<Broker>,
    ) -> Result<Arc<Sink>, SinkError> {
        let start_err = |source: KindError| SinkError::Start {
            sink: name.to_string(),
            source,
        };
        let def = kind(config.kind).ok_or_else(|| {
            start_err(KindError::Invalid(format!("unknown kind {}", config.kind)))
        })?;
        let deliver = (def.start)(StartArgs {
            name: name.to_string(),
            options: config.options.clone(),
            broker: broker.clone(),
        })
        .await
        .map_err(start_err)?;
        let (input, output) =
            buffer::open(&config.common, name).map_err(|e| start_err(KindError::Unusable(e)))?;
        let counters = Arc::new(SinkCounters::default());
        let (shutdown, shutdown_rx) = watch::channel(None);
        let dead_letter = Arc::new(DeadLetter::new(config.common.dead_letter.as_ref(), broker));
        let driver = Driver {
            name: name.to_string(),
            common: config.common.clone(),
            deliver,
            counters: counters.clone(),
            source: output,
            dead_letter: dead_letter.clone(),
            next_unseen: 0,
            shutdown: shutdown_rx,
            deadline: None,
            last_log: None,
        };
        let task = tokio::spawn(driver.run());
        Ok(Arc::new(Sink {
            name: name.to_string(),
            kind: config.kind,
            input,
            counters,
            dead_letter,
            shutdown,
            finished: tokio::sync::Mutex::new(Some(task)),
        }))
    }

    /// Offers a record without waiting; a full buffer drops it (counted). True when nothing
    /// was dropped.
    pub fn offer(&self, record: Record) -> bool {
        SinkCounters::add(&self.counters.matched, 1);
        let dropped = self.input.offer(record);
        if dropped > 0 {
            SinkCounters::add(&self.counters.dropped, dropped);
        }
        dropped == 0
    }

    /// Connects a `dead_letter = { sink = ... }` to its sink, once all sinks are running.
    pub fn link_dead_letter(&self, running: &BTreeMap<String, Arc<Sink>>) {
        if let DeadLetter::Sink { name, target } = &*self.dead_letter {
            if let Some(t) = running.get(name) {
                let _ = target.set(t.clone());
            }
        }
    }

    /// `buffer = "disk"`: records wait in the write-ahead queue.
    pub fn buffer_on_disk(&self) -> bool {
        self.input.is_disk()
    }

    /// Records held: in the buffer plus taken and not yet settled.
    pub fn buffered(&self) -> u64 {
        if self.input.is_disk() {
            // Taken records stay unsettled on disk until delivered.
            return self.input.waiting();
        }
        self.input.waiting() + SinkCounters::get(&self.counters.in_flight)
    }

    /// Stops taking records and delivers what is buffered until `grace` runs out; returns how
    /// many records were left undelivered (kept on disk with `buffer = "disk"`).
    pub async fn close(&self, grace: Duration) -> u64 {
        let _ = self.shutdown.send(Some(Instant::now() + grace));
        let Some(task) = self.finished.lock().await.take() else {
            return 0;
        };
        // The driver keeps its own deadline; the extra second covers writing to disk.
        match tokio::time::timeout(grace + Duration::from_secs(1), task).await {
            Ok(Ok(left)) => left,
            _ => self.buffered(),
        }
    }

    pub fn render_metrics(&self, out: &mut String) {
        let c = &self.counters;
        let rows = [
            ("matched", SinkCounters::get(&c.matched)),
            ("sent", SinkCounters::get(&c.sent)),
            ("failed", SinkCounters::get(&c.failed)),
            ("retried", SinkCounters::get(&c.retried)),
            ("dropped", SinkCounters::get(&c.dropped)),
            ("dead_lettered", SinkCounters::get(&c.dead_lettered)),
        ];
        for (what, v) in rows {
            let _ = writeln!(
                out,
                "switchyard_sink_{what}_total{{sink=\"{}\",kind=\"{}\"}} {v}",
                self.name, self.kind
            );
        }
        let _ = writeln!(
            out,
            "switchyard_sink_buffered{{sink=\"{}\",kind=\"{}\"}} {}",
            self.name,
            self.kind,
            self.buffered()
        );
    }
}
