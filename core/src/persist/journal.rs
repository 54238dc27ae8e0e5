//! The journal: an append-only log in segment files with group commit. Records are appended
//! to a memory buffer under the appender's own locks (a session's, the retained store's), so
//! the log holds each session's changes in the order they happened; a writer thread of its own
//! takes the whole buffer, writes it and fsyncs it (`sync`: as soon as there is anything, so
//! one fsync covers everything that arrived during the previous one; `periodic`: every
//! `flush_interval_ms`). A position in the log (LSN, the byte count before a record's end) is
//! durable once [`Journal::durable`] has passed it; connections wait for that in `sync` mode.

use super::record::Rec;
use crate::message::Message;
use parking_lot::{Condvar, Mutex};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{error, warn};

/// A segment is closed and a new one started past this size.
pub(crate) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// `periodic`: a buffer this large is written before the interval ends.
const EARLY_FLUSH: usize = 8 * 1024 * 1024;

thread_local! {
    /// Records are encoded (and checksummed) here, outside the journal's lock.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The name of the segment starting at `lsn`.
pub fn segment_name(lsn: u64) -> String {
    format!("journal-{lsn:020}.log")
}

/// The start LSN of a segment file name.
pub(crate) fn segment_start(name: &str) -> Option<u64> {
    name.strip_prefix("journal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

struct Pending {
    buf: Vec<u8>,
    /// LSN at the end of `buf`.
    end: u64,
    /// The writer sleeps: the next append wakes it (`sync`) or it wakes on its timer.
    writer_idle: bool,
    stop: bool,
}

/// Counters for `/metrics` and the benchmarks.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub bytes_written: AtomicU64,
    pub fsyncs: AtomicU64,
    pub write_errors: AtomicU64,
}

pub struct Journal {
    dir: PathBuf,
    sync: bool,
    interval: Duration,
    pending: Mutex<Pending>,
    wake_writer: Condvar,
    durable: AtomicU64,
    durable_wake: Notify,
    next_mid: AtomicU64,
    next_sid: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
    pub stats: JournalStats,
    /// Bytes written when the last snapshot was taken, and that snapshot's size.
    snapshot_mark: Mutex<(u64, u64)>,
    /// Held for the journal's life: a second broker on the same folder would interleave logs.
    _lock: File,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("persistence folder {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("persistence folder {0} is in use by another broker")]
    Locked(PathBuf),
}

impl Journal {
    /// Opens the journal in `dir`, whose [`lock_dir`] lock the caller took, with a fresh
    /// segment starting at `start_lsn`, which must be past every record already on disk. Ids
    /// continue after `next_mid` / `next_sid`.
    pub(crate) fn open(
        lock: File,
        dir: &Path,
        sync: bool,
        interval: Duration,
        start_lsn: u64,
        next_mid: u64,
        next_sid: u64,
    ) -> Result<Arc<Journal>, JournalError> {
        let io = |source| JournalError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let segment = Segment::create(dir, start_lsn).map_err(io)?;
        let journal = Arc::new(Journal {
            dir: dir.to_path_buf(),
            sync,
            interval,
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                end: start_lsn,
                writer_idle: false,
                stop: false,
            }),
            wake_writer: Condvar::new(),
            durable: AtomicU64::new(start_lsn),
            durable_wake: Notify::new(),
            next_mid: AtomicU64::new(next_mid.max(1)),
            next_sid: AtomicU64::new(next_sid.max(1)),
            writer: Mutex::new(None),
            stats: JournalStats::default(),
            snapshot_mark: Mutex::new((0, 0)),
            _lock: lock,
        });
        let j = journal.clone();
        let handle = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || j.run_writer(segment))
            .map_err(io)?;
        *journal.writer.lock() = Some(handle);
        Ok(journal)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `sync` mode: acknowledgements wait for [`Journal::wait_durable`].
    pub fn is_sync(&self) -> bool {
        self.sync
    }

    /// Appends one record; returns the LSN at its end.
    pub(crate) fn append(&self, rec: &Rec<'_>) -> u64 {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            rec.encode(&mut s);
            let lsn = self.append_encoded(&s);
            if s.capacity() > 64 * 1024 {
                *s = Vec::new();
            }
            lsn
        })
    }

    /// Appends records already framed by [`Rec::encode`] (several at once: one lock).
    pub(crate) fn append_encoded(&self, bytes: &[u8]) -> u64 {
        let mut p = self.pending.lock();
        p.buf.extend_from_slice(bytes);
        p.end += bytes.len() as u64;
        let lsn = p.end;
        if p.writer_idle && (self.sync || p.buf.len() >= EARLY_FLUSH) {
            p.writer_idle = false;
            self.wake_writer.notify_one();
        }
        lsn
    }

    /// The LSN after the last record appended so far.
    pub(crate) fn appended(&self) -> u64 {
        self.pending.lock().end
    }

    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Resolves once everything up to `lsn` is on disk.
    pub async fn wait_durable(&self, lsn: u64) {
        loop {
            if self.durable() >= lsn {
                return;
            }
            let notified = self.durable_wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.durable() >= lsn {
                return;
            }
            notified.await;
        }
    }

    /// The message's journal id, appending its body the first time it is stored.
    pub(crate) fn message_id(&self, msg: &Message) -> u64 {
        let id = msg.store_id.get();
        if id != 0 {
            return id;
        }
        let id = self.new_message_id();
        self.append(&Rec::Message { id, msg });
        msg.store_id.set(id)
    }

    /// Appends the record `rec` makes of the message's journal id, preceded by the message's
    /// body when it is not stored yet: one lock for both. Returns the LSN.
    pub(crate) fn append_about<'a>(&self, msg: &Message, rec: impl FnOnce(u64) -> Rec<'a>) -> u64 {
        let known = msg.store_id.get();
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            let mid = if known != 0 {
                known
            } else {
                let id = self.new_message_id();
                Rec::Message { id, msg }.encode(&mut s);
                id
            };
            rec(mid).encode(&mut s);
            let lsn = self.append_encoded(&s);
            if known == 0 {
                // Another holder may have stored it meanwhile: later records use its id; this
                // one's body went in with the record that names it, so both stay whole.
                msg.store_id.set(mid);
            }
            if s.capacity() > 64 * 1024 {
                *s = Vec::new();
            }
            lsn
        })
    }

    pub(crate) fn new_message_id(&self) -> u64 {
        self.next_mid.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn new_session_id(&self) -> u64 {
        self.next_sid.fetch_add(1, Ordering::Relaxed)
    }

    /// A snapshot of `bytes` was written: the journal before it is gone.
    pub(crate) fn snapshot_written(&self, bytes: u64) {
        let written = self.stats.bytes_written.load(Ordering::Relaxed);
        *self.snapshot_mark.lock() = (written, bytes);
    }

    /// The journal grew by more than `min` bytes and twice the last snapshot since it.
    pub(crate) fn needs_compaction(&self, min: u64) -> bool {
        let (at, size) = *self.snapshot_mark.lock();
        let grown = self.stats.bytes_written.load(Ordering::Relaxed) - at;
        grown > min.max(2 * size)
    }

    /// Writes and fsyncs what is buffered, stops the writer. Appends after this are lost.
    pub fn close(&self) {
        {
            let mut p = self.pending.lock();
            p.stop = true;
            self.wake_writer.notify_one();
        }
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
        // Nobody may wait for a writer that is gone (a connection still closing).
        self.durable.store(u64::MAX, Ordering::Release);
        self.durable_wake.notify_waiters();
    }

    fn run_writer(&self, mut segment: Segment) {
        let mut chunk = Vec::new();
        let mut last_error_log: Option<Instant> = None;
        loop {
            let (end, stop) = {
                let mut p = self.pending.lock();
                if self.sync {
                    while p.buf.is_empty() && !p.stop {
                        p.writer_idle = true;
                        self.wake_writer.wait(&mut p);
                    }
                } else if !p.stop && p.buf.len() < EARLY_FLUSH {
                    p.writer_idle = true;
                    self.wake_writer.wait_for(&mut p, self.interval);
                }
                p.writer_idle = false;
                std::mem::swap(&mut p.buf, &mut chunk);
                (p.end, p.stop)
            };
            if !chunk.is_empty() {
                let start = end - chunk.len() as u64;
                let mut attempts = 0;
                loop {
                    match segment.write(&self.dir, start, &chunk) {
                        Ok(()) => break,
                        Err(e) => {
                            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                            attempts += 1;
                            if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                            {
                                last_error_log = Some(Instant::now());
                                error!(dir = %self.dir.display(), error = %e, "cannot write the persistence journal; acknowledgements wait (sync) and it is retried");
                            }
                            if stop && attempts >= 10 {
                                error!(dir = %self.dir.display(), bytes = chunk.len(), "journal not written at shutdown: the last changes are lost");
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
                self.stats
                    .bytes_written
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                chunk.clear();
                if chunk.capacity() > 2 * EARLY_FLUSH {
                    chunk = Vec::new();
                }
            }
            self.durable.store(end, Ordering::Release);
            self.durable_wake.notify_waiters();
            if stop {
                return;
            }
        }
    }
}

/// Takes the folder's lock file (created with the folder if missing).
pub(crate) fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let io = |source| JournalError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(io)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// The segment being written.
struct Segment {
    file: File,
    /// Bytes known to be written whole (a failed write is cut back to this).
    size: u64,
}

impl Segment {
    fn create(dir: &Path, start: u64) -> std::io::Result<Segment> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(segment_name(start)))?;
        let size = file.metadata()?.len();
        if size != 0 {
            // Its LSNs would be wrong: recovery must start a new segment past every byte.
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("journal segment {} exists already", segment_name(start)),
            ));
        }
        sync_dir(dir)?;
        Ok(Segment { file, size })
    }

    /// Writes one chunk of whole records starting at LSN `start`, and fsyncs it.
    fn write(&mut self, dir: &Path, start: u64, chunk: &[u8]) -> std::io::Result<()> {
        if self.size >= SEGMENT_BYTES {
            *self = Segment::create(dir, start)?;
        }
        let result = self
            .file
            .write_all(chunk)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.size += chunk.len() as u64;
                Ok(())
            }
            Err(e) => {
                // A part written before the failure would be written again: cut it.
                if let Err(cut) = self.file.set_len(self.size) {
                    warn!(error = %cut, "cannot cut a failed journal write back");
                }
                Err(e)
            }
        }
    }
}

/// Makes a file created or renamed in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
