//! A sink's buffer between the rule workers and its driver: a channel in memory bounded in
//! records and in (estimated) bytes, or the write-ahead [`DiskQueue`] (`buffer = "disk"`).
//! Records carry a sequence number on disk (0 in memory) so the driver can tell the queue what
//! is settled.

use super::disk::{DiskQueue, Refused};
use super::Record;
use crate::config::{BufferKind, SinkCommon};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The rule workers' end.
pub(super) enum Input {
    Memory(mpsc::Sender<(u64, Record)>, Arc<Bytes>),
    Disk(Arc<DiskQueue>),
}

/// The driver's end.
pub(super) enum Output {
    Memory(mpsc::Receiver<(u64, Record)>, Arc<Bytes>),
    Disk(Arc<DiskQueue>),
}

/// The estimated bytes a memory buffer holds, and its bound.
pub(super) struct Bytes {
    held: AtomicU64,
    max: u64,
}

/// Roughly what a record takes in memory: its text plus a word or so per value.
pub(super) fn estimated_size(v: &Value) -> u64 {
    const SLOT: u64 = 24;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => SLOT,
        Value::String(s) => SLOT + s.len() as u64,
        Value::Array(items) => SLOT + items.iter().map(estimated_size).sum::<u64>(),
        Value::Object(map) => {
            SLOT + map
                .iter()
                .map(|(k, v)| SLOT + k.len() as u64 + estimated_size(v))
                .sum::<u64>()
        }
    }
}

/// What a look at the buffer found.
pub(super) enum Taken {
    Record(u64, Record),
    Empty,
    Closed,
}

pub(super) fn open(common: &SinkCommon, sink: &str) -> Result<(Input, Output), String> {
    Ok(match common.buffer {
        BufferKind::Memory => {
            let (tx, rx) = mpsc::channel(common.buffer_size);
            let bytes = Arc::new(Bytes {
                held: AtomicU64::new(0),
                max: common.max_bytes(),
            });
            (Input::Memory(tx, bytes.clone()), Output::Memory(rx, bytes))
        }
        BufferKind::Disk => {
            let queue = DiskQueue::open(
                &common.buffer_dir,
                sink,
                common.buffer_size,
                common.max_bytes(),
                common.buffer_overflow,
            )?;
            (Input::Disk(queue.clone()), Output::Disk(queue))
        }
    })
}

impl Input {
    /// Takes a record without waiting; returns how many records were dropped (this one when
    /// the buffer is full, or the oldest under `buffer_overflow = "drop-oldest"`).
    pub(super) fn offer(&self, record: Record) -> u64 {
        match self {
            Input::Memory(tx, bytes) => {
                let size = estimated_size(&record);
                let held = bytes.held.fetch_add(size, Ordering::Relaxed);
                if held + size > bytes.max || tx.try_send((size, record)).is_err() {
                    bytes.held.fetch_sub(size, Ordering::Relaxed);
                    return 1;
                }
                0
            }
            Input::Disk(queue) => match queue.append(&record) {
                Ok(dropped_oldest) => dropped_oldest,
                Err(Refused::Io(e)) => {
                    tracing::warn!(error = %e, "cannot append to the sink's disk buffer; record dropped");
                    1
                }
                Err(Refused::Full | Refused::Closed) => 1,
            },
        }
    }

    /// Records waiting (not yet taken by the driver, or on disk and unsettled).
    pub(super) fn waiting(&self) -> u64 {
        match self {
            Input::Memory(tx, _) => (tx.max_capacity() - tx.capacity()) as u64,
            Input::Disk(queue) => queue.unsettled(),
        }
    }

    pub(super) fn is_disk(&self) -> bool {
        matches!(self, Input::Disk(_))
    }
}

impl Output {
    pub(super) async fn recv(&mut self) -> Option<(u64, Record)> {
        match self {
            Output::Memory(rx, bytes) => rx.recv().await.map(|(size, r)| {
                bytes.held.fetch_sub(size, Ordering::Relaxed);
                (0, r)
            }),
            Output::Disk(queue) => queue.take().await,
        }
    }

    pub(super) fn try_recv(&mut self) -> Taken {
        match self {
            Output::Memory(rx, bytes) => match rx.try_recv() {
                Ok((size, r)) => {
                    bytes.held.fetch_sub(size, Ordering::Relaxed);
                    Taken::Record(0, r)
                }
                Err(mpsc::error::TryRecvError::Empty) => Taken::Empty,
                Err(mpsc::error::TryRecvError::Disconnected) => Taken::Closed,
            },
            Output::Disk(queue) => match queue.try_take() {
                Some((seq, r)) => Taken::Record(seq, r),
                None => Taken::Empty,
            },
        }
    }

    /// No more records are accepted (shutdown).
    pub(super) fn close(&mut self) {
        match self {
            Output::Memory(rx, _) => rx.close(),
            Output::Disk(queue) => queue.close(),
        }
    }

    /// Everything before `seq` was delivered or given up.
    pub(super) fn settle_below(&self, seq: u64) {
        if let Output::Disk(queue) = self {
            queue.settle_below(seq);
        }
    }

    pub(super) fn is_disk(&self) -> bool {
        matches!(self, Output::Disk(_))
    }

    /// On disk: records accepted and not yet settled (0 in memory).
    pub(super) fn unsettled(&self) -> u64 {
        match self {
            Output::Memory(..) => 0,
            Output::Disk(queue) => queue.unsettled(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SinkCommon;

    #[test]
    fn a_memory_buffer_is_bounded_in_bytes_as_well_as_records() {
        let common = SinkCommon {
            buffer_size: 1000,
            buffer_max_bytes: Some(10_000),
            ..SinkCommon::default()
        };
        let (input, mut output) = open(&common, "t").unwrap();
        let big = Arc::new(serde_json::json!({ "payload": "x".repeat(3000) }));
        let dropped: u64 = (0..5).map(|_| input.offer(big.clone())).sum();
        assert_eq!(dropped, 2, "three of ~3 KB fit in 10 KB");
        assert!(matches!(output.try_recv(), Taken::Record(..)));
        // Taking one out makes room for one more.
        assert_eq!(input.offer(big.clone()), 0);
        assert_eq!(input.offer(big), 1);
    }
}
