//! Sinks: where rule outputs go. Every kind shares one driver: a bounded buffer filled by the
//! rule workers without waiting (`buffer`: memory, or the write-ahead `disk` queue), batching,
//! retries with capped exponential backoff, counters, and a flush on shutdown. A kind only says
//! how to deliver one batch.

mod buffer;
mod disk;
mod kafka;
mod mqtt;
mod sql;
pub mod template;
mod webhook;

use crate::config::{SinkCommon, SinkConfig};
use async_trait::async_trait;
use buffer::{Input, Output, Taken};
use serde_json::Value;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::broker::Broker;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

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
    /// Taken from the buffer and not yet settled (in a batch or waiting to retry).
    pub in_flight: AtomicU64,
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
        let driver = Driver {
            name: name.to_string(),
            common: config.common.clone(),
            deliver,
            counters: counters.clone(),
            source: output,
            next_unseen: 0,
            shutdown: shutdown_rx,
            deadline: None,
        };
        let task = tokio::spawn(driver.run());
        Ok(Arc::new(Sink {
            name: name.to_string(),
            kind: config.kind,
            input,
            counters,
            shutdown,
            finished: tokio::sync::Mutex::new(Some(task)),
        }))
    }

    /// Offers a record without waiting; a full buffer drops it (counted).
    pub fn offer(&self, record: Record) {
        SinkCounters::add(&self.counters.matched, 1);
        let dropped = self.input.offer(record);
        if dropped > 0 {
            SinkCounters::add(&self.counters.dropped, dropped);
        }
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

struct Driver {
    name: String,
    common: SinkCommon,
    deliver: Box<dyn Deliver>,
    counters: Arc<SinkCounters>,
    source: Output,
    /// On disk: the sequence number after the last record taken.
    next_unseen: u64,
    shutdown: watch::Receiver<Option<Instant>>,
    /// Set once shutting down: deliver until then, then keep or report the rest.
    deadline: Option<Instant>,
}

/// A record taken from the buffer, with its delivery attempts so far.
struct Pending {
    record: Record,
    attempts: u32,
    /// Its place in the disk buffer (0 in memory).
    seq: u64,
}

impl Driver {
    /// Returns the number of records left undelivered when it stopped.
    async fn run(mut self) -> u64 {
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut backoff = Duration::from_millis(self.common.retry_initial_ms);
        let max_backoff = Duration::from_millis(self.common.retry_max_ms);
        let linger = Duration::from_millis(self.common.linger_ms);
        let mut closing = false;
        loop {
            if !closing && pending.len() < self.common.batch_size {
                closing = self.fill(&mut pending, linger).await;
            } else if closing {
                self.drain_buffer(&mut pending).await;
            }
            if pending.is_empty() {
                if closing {
                    return 0;
                }
                continue;
            }
            if closing && self.deadline.is_some_and(|d| Instant::now() >= d) {
                return self.keep_undelivered(&mut pending).await;
            }
            let n = pending.len().min(self.common.batch_size);
            let batch: Vec<Record> = pending.iter().take(n).map(|p| p.record.clone()).collect();
            let failures = self.deliver.deliver(&batch).await;
            let mut retry_later = Vec::new();
            let mut failed_idx = vec![false; n];
            let mut permanent = 0u64;
            for (i, failure) in failures {
                if i >= n || failed_idx[i] {
                    continue;
                }
                failed_idx[i] = true;
                match failure {
                    Failure::Permanent(why) => {
                        permanent += 1;
                        warn!(sink = %self.name, error = %why, "record refused by the destination");
                    }
                    Failure::Retry(why) => {
                        let attempts = pending[i].attempts + 1;
                        if self.common.max_retries > 0 && attempts > self.common.max_retries {
                            permanent += 1;
                            warn!(sink = %self.name, error = %why, attempts, "record failed after its last retry");
                        } else {
                            if retry_later.is_empty() {
                                warn!(sink = %self.name, error = %why, retry_in_ms = backoff.as_millis() as u64, "delivery failed; will retry");
                            }
                            retry_later.push(i);
                        }
                    }
                }
            }
            let settled_ok = (n - failed_idx.iter().filter(|f| **f).count()) as u64;
            SinkCounters::add(&self.counters.sent, settled_ok);
            SinkCounters::add(&self.counters.failed, permanent);
            // Take the batch off the front; failures to retry go back in their order.
            let mut done: Vec<Pending> = pending.drain(..n).collect();
            SinkCounters::add(&self.counters.retried, retry_later.len() as u64);
            let settled = (n - retry_later.len()) as u64;
            self.counters
                .in_flight
                .fetch_sub(settled, Ordering::Relaxed);
            for i in retry_later.iter().rev() {
                let mut p = std::mem::replace(
                    &mut done[*i],
                    Pending {
                        record: Arc::new(Value::Null),
                        attempts: 0,
                        seq: 0,
                    },
                );
                p.attempts += 1;
                pending.push_front(p);
            }
            // On disk, what is settled is gone for good once nothing before it is pending.
            let oldest = pending.front().map_or(self.next_unseen, |p| p.seq);
            self.source.settle_below(oldest);
            if retry_later.is_empty() {
                backoff = Duration::from_millis(self.common.retry_initial_ms);
            } else {
                let mut wait = backoff;
                backoff = (backoff * 2).min(max_backoff);
                if let Some(deadline) = self.deadline {
                    wait = wait.min(deadline.saturating_duration_since(Instant::now()));
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.shutdown.changed(), if !closing => { closing = self.begin_closing(); }
                }
            }
        }
    }

    /// Waits for records (up to a batch, `linger` after the first); returns true when the
    /// sink is shutting down.
    async fn fill(&mut self, pending: &mut VecDeque<Pending>, linger: Duration) -> bool {
        let want = self.common.batch_size;
        if pending.is_empty() {
            tokio::select! {
                r = self.source.recv() => match r {
                    Some((seq, record)) => self.take(pending, seq, record),
                    None => return true,
                },
                _ = self.shutdown.changed() => return self.begin_closing(),
            }
        }
        let deadline = tokio::time::Instant::now() + linger;
        while pending.len() < want {
            match self.source.try_recv() {
                Taken::Record(seq, record) => {
                    self.take(pending, seq, record);
                    continue;
                }
                Taken::Closed => return true,
                Taken::Empty => {}
            }
            tokio::select! {
                r = self.source.recv() => match r {
                    Some((seq, record)) => self.take(pending, seq, record),
                    None => return true,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.shutdown.changed() => return self.begin_closing(),
            }
        }
        false
    }

    async fn drain_buffer(&mut self, pending: &mut VecDeque<Pending>) {
        while pending.len() < self.common.batch_size {
            match self.source.try_recv() {
                Taken::Record(seq, record) => self.take(pending, seq, record),
                Taken::Empty | Taken::Closed => break,
            }
        }
    }

    fn begin_closing(&mut self) -> bool {
        self.deadline = *self.shutdown.borrow();
        self.source.close();
        true
    }

    fn take(&mut self, pending: &mut VecDeque<Pending>, seq: u64, record: Record) {
        SinkCounters::add(&self.counters.in_flight, 1);
        self.next_unseen = seq + 1;
        pending.push_back(Pending {
            record,
            attempts: 0,
            seq,
        });
    }

    /// At shutdown: what could not be delivered stays on disk (disk buffer) or is reported.
    async fn keep_undelivered(&mut self, pending: &mut VecDeque<Pending>) -> u64 {
        if self.source.is_disk() {
            // Everything unsettled is on disk already, in order, from the watermark on.
            let oldest = pending.front().map_or(self.next_unseen, |p| p.seq);
            self.source.settle_below(oldest);
            let left = self.source.unsettled();
            warn!(sink = %self.name, records = left, "destination unavailable at shutdown; records kept on disk for the next start");
            return left;
        }
        while let Taken::Record(seq, record) = self.source.try_recv() {
            self.take(pending, seq, record);
        }
        let left = pending.len() as u64;
        warn!(sink = %self.name, records = left, "destination unavailable at shutdown; records not delivered");
        left
    }
}
