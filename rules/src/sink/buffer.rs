//! A sink's buffer between the rule workers and its driver: a bounded channel in memory, or
//! the write-ahead [`DiskQueue`] (`buffer = "disk"`). Records carry a sequence number on disk
//! (0 in memory) so the driver can tell the queue what is settled.

use super::disk::{DiskQueue, Refused};
use super::Record;
use crate::config::{BufferKind, SinkCommon};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The rule workers' end.
pub(super) enum Input {
    Memory(mpsc::Sender<Record>),
    Disk(Arc<DiskQueue>),
}

/// The driver's end.
pub(super) enum Output {
    Memory(mpsc::Receiver<Record>),
    Disk(Arc<DiskQueue>),
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
            (Input::Memory(tx), Output::Memory(rx))
        }
        BufferKind::Disk => {
            let queue = DiskQueue::open(
                &common.buffer_dir,
                sink,
                common.buffer_size,
                common.buffer_max_bytes,
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
            Input::Memory(tx) => u64::from(tx.try_send(record).is_err()),
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
            Input::Memory(tx) => (tx.max_capacity() - tx.capacity()) as u64,
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
            Output::Memory(rx) => rx.recv().await.map(|r| (0, r)),
            Output::Disk(queue) => queue.take().await,
        }
    }

    pub(super) fn try_recv(&mut self) -> Taken {
        match self {
            Output::Memory(rx) => match rx.try_recv() {
                Ok(r) => Taken::Record(0, r),
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
            Output::Memory(rx) => rx.close(),
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
            Output::Memory(_) => 0,
            Output::Disk(queue) => queue.unsettled(),
        }
    }
}
