//! A sink's delivery task: takes records from its buffer in order, delivers them in batches,
//! retries transient failures with capped exponential backoff, gives up on a record that is
//! refused, out of retries or past `record_ttl_s` (sending it to the dead letter), and
//! delivers what it can at shutdown.

use super::buffer::{Output, Taken};
use super::dead_letter::DeadLetter;
use super::{Deliver, Failure, Record, SinkCounters};
use crate::config::SinkCommon;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

pub(super) struct Driver {
    pub(super) name: String,
    pub(super) common: SinkCommon,
    pub(super) deliver: Box<dyn Deliver>,
    pub(super) counters: Arc<SinkCounters>,
    pub(super) source: Output,
    pub(super) dead_letter: Arc<DeadLetter>,
    /// On disk: the sequence number after the last record taken.
    pub(super) next_unseen: u64,
    pub(super) shutdown: watch::Receiver<Option<Instant>>,
    /// Set once shutting down: deliver until then, then keep or report the rest.
    pub(super) deadline: Option<Instant>,
    /// When the last warning was logged: one a second per sink.
    pub(super) last_log: Option<Instant>,
}

/// A record taken from the buffer, with its delivery attempts so far.
struct Pending {
    record: Record,
    attempts: u32,
    /// Its place in the disk buffer (0 in memory).
    seq: u64,
    /// When its first attempt failed (the clock of `record_ttl_s`).
    failing_since: Option<Instant>,
}

impl Pending {
    fn placeholder() -> Self {
        Pending {
            record: Arc::new(Value::Null),
            attempts: 0,
            seq: 0,
            failing_since: None,
        }
    }
}

impl Driver {
    /// Returns the number of records left undelivered when it stopped.
    pub(super) async fn run(mut self) -> u64 {
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut backoff = Duration::from_millis(self.common.retry_initial_ms);
        let max_backoff = Duration::from_millis(self.common.retry_max_ms);
        let linger = Duration::from_millis(self.common.linger_ms);
        let ttl =
            (self.common.record_ttl_s > 0).then(|| Duration::from_secs(self.common.record_ttl_s));
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
            let now = Instant::now();
            let mut retry_later = Vec::new();
            let mut failed_idx = vec![false; n];
            let mut first_error: Option<String> = None;
            for (i, failure) in failures {
                if i >= n || failed_idx[i] {
                    continue;
                }
                failed_idx[i] = true;
                let p = &mut pending[i];
                p.attempts += 1;
                match failure {
                    Failure::Permanent(why) => {
                        first_error.get_or_insert_with(|| why.clone());
                        self.give_up(&p.record, &why, p.attempts, "refused by the destination")
                    }
                    Failure::Retry(why) => {
                        first_error.get_or_insert_with(|| why.clone());
                        let since = *p.failing_since.get_or_insert(now);
                        let record = p.record.clone();
                        let attempts = p.attempts;
                        if self.common.max_retries > 0 && attempts > self.common.max_retries {
                            self.give_up(&record, &why, attempts, "out of retries");
                        } else if ttl.is_some_and(|ttl| now.duration_since(since) >= ttl) {
                            self.give_up(
                                &record,
                                &why,
                                attempts,
                                "failing for longer than record_ttl_s",
                            );
                        } else {
                            if retry_later.is_empty() && self.may_log(now) {
                                warn!(sink = %self.name, error = %why, retry_in_ms = backoff.as_millis() as u64, "delivery failed; will retry");
                            }
                            retry_later.push(i);
                        }
                    }
                }
            }
            let settled_ok = (n - failed_idx.iter().filter(|f| **f).count()) as u64;
            SinkCounters::add(&self.counters.sent, settled_ok);
            self.counters.health.lock().record(
                settled_ok > 0,
                first_error.as_deref(),
                !retry_later.is_empty(),
                switchyard_core::clock::now_ms(),
            );
            // Take the batch off the front; failures to retry go back in their order.
            let mut done: Vec<Pending> = pending.drain(..n).collect();
            SinkCounters::add(&self.counters.retried, retry_later.len() as u64);
            let settled = (n - retry_later.len()) as u64;
            self.counters
                .in_flight
                .fetch_sub(settled, Ordering::Relaxed);
            for i in retry_later.iter().rev() {
                pending.push_front(std::mem::replace(&mut done[*i], Pending::placeholder()));
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
                if let Some(ttl) = ttl {
                    // Wake up in time to give up on a record whose time is out.
                    let oldest_failure = pending.iter().filter_map(|p| p.failing_since).min();
                    if let Some(since) = oldest_failure {
                        wait = wait.min((since + ttl).saturating_duration_since(Instant::now()));
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.shutdown.changed(), if !closing => { closing = self.begin_closing(); }
                }
            }
        }
    }

    /// A record that will not be delivered: counted as failed and sent to the dead letter.
    fn give_up(&mut self, record: &Record, why: &str, attempts: u32, because: &str) {
        SinkCounters::add(&self.counters.failed, 1);
        let dead_lettered = self.dead_letter.send(&self.name, record, why, attempts);
        if dead_lettered {
            SinkCounters::add(&self.counters.dead_lettered, 1);
        }
        if self.may_log(Instant::now()) {
            warn!(sink = %self.name, error = %why, attempts, dead_lettered, "record given up: {because}");
        }
    }

    /// One warning a second per sink: a failing destination must not flood the log.
    fn may_log(&mut self, now: Instant) -> bool {
        let due = self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if due {
            self.last_log = Some(now);
        }
        due
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
            failing_since: None,
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
