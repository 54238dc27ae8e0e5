//! `buffer = "disk"`: a write-ahead queue. A record is appended to a segment file when the sink
//! accepts it (a `write`, so it survives kill -9 once accepted; segments are fsync'd at most
//! every second and at shutdown), and the driver takes records from it in order. The first
//! `buffer_size` wait in memory as well; past that they are read back from disk when the
//! driver gets to them, so an outage longer than the memory buffer loses nothing that fits in
//! `buffer_max_bytes`. What the destination settled is marked by a watermark (the lowest
//! sequence number still unsettled) in an `.ack` file; segments wholly below it are deleted,
//! and a start replays everything from it, before new records.
//!
//! Segment frame: `len: u32 LE, crc32: u32 LE, seq: u64 LE, JSON`. A damaged frame ends what is
//! read of a file (reported); the rest of the queue is kept.

use super::Record;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{info, warn};

const FRAME: usize = 16;
/// Largest record read back (a damaged length must not allocate gigabytes).
const MAX_RECORD: usize = 256 * 1024 * 1024;

/// What happens to a record that would take the queue past `buffer_max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// The new record is dropped (counted), like a full memory buffer.
    #[default]
    Refuse,
    /// The oldest segment is dropped (its records counted) to make room.
    DropOldest,
}

/// Why a record was not appended.
#[derive(Debug)]
pub enum Refused {
    Full,
    Closed,
    Io(std::io::Error),
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
    /// Sequence number after its last record.
    end_seq: u64,
}

struct Inner {
    /// Records also held in memory, in order.
    mem: VecDeque<(u64, Record)>,
    /// The first record held only on disk: (seq, index into `segments`, byte offset).
    spilled: Option<(u64, usize, u64)>,
    next_seq: u64,
    /// Every segment file still holding unsettled records, oldest first; the last is written.
    segments: VecDeque<Segment>,
    file: File,
    total_bytes: u64,
    /// Records below this are settled.
    watermark: u64,
    last_sync: Instant,
    closed: bool,
}

pub struct DiskQueue {
    dir: PathBuf,
    name: String,
    memory_records: usize,
    max_bytes: u64,
    segment_bytes: u64,
    overflow: Overflow,
    inner: Mutex<Inner>,
    ready: Notify,
    ack: File,
}

fn segment_path(dir: &Path, name: &str, first_seq: u64) -> PathBuf {
    dir.join(format!("{name}-{first_seq:020}.q"))
}

impl DiskQueue {
    /// Opens (or creates) the queue of sink `name` in `dir` and loads what earlier runs left.
    pub fn open(
        dir: &Path,
        name: &str,
        memory_records: usize,
        max_bytes: u64,
        overflow: Overflow,
    ) -> Result<Arc<Self>, String> {
        let err = |e: std::io::Error| format!("buffer_dir {}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(err)?;
        let ack = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join(format!("{name}.ack")))
            .map_err(err)?;
        // Held for the queue's life: two brokers appending to one queue would interleave it.
        match ack.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!(
                    "buffer_dir {}: the disk buffer of sink {name} is in use by another broker",
                    dir.display()
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
        }
        let mut mark = [0u8; 8];
        let watermark = match ack.read_exact_at(&mut mark, 0) {
            Ok(()) => u64::from_le_bytes(mark),
            Err(_) => 0,
        };
        let mut segments = VecDeque::new();
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(err)?
            .filter_map(|e| {
                let path = e.ok()?.path();
                let file = path.file_name()?.to_str()?;
                let seq = file
                    .strip_prefix(&format!("{name}-"))?
                    .strip_suffix(".q")?
                    .parse()
                    .ok()?;
                Some((seq, path))
            })
            .collect();
        files.sort();
        let mut mem = VecDeque::new();
        let mut spilled = None;
        let mut next_seq = watermark.max(1);
        let mut total_bytes = 0;
        for (first_seq, path) in files {
            let data = std::fs::read(&path).map_err(err)?;
            let index = segments.len();
            let mut pos = 0;
            let mut end_seq = first_seq;
            while pos < data.len() {
                match read_frame(&data[pos..]) {
                    Ok((seq, record, used)) => {
                        if seq >= watermark {
                            if spilled.is_none() && mem.len() < memory_records {
                                mem.push_back((seq, record));
                            } else if spilled.is_none() {
                                spilled = Some((seq, index, pos as u64));
                            }
                        }
                        end_seq = seq + 1;
                        pos += used;
                    }
                    Err(why) => {
                        warn!(sink = %name, file = %path.display(), offset = pos, error = why, "damaged record in the sink's disk buffer; the rest of this file is skipped");
                        break;
                    }
                }
            }
            next_seq = next_seq.max(end_seq);
            total_bytes += data.len() as u64;
            segments.push_back(Segment {
                first_seq,
                path,
                bytes: data.len() as u64,
                end_seq,
            });
        }
        let legacy = import_legacy(&dir.join(format!("{name}.db")));
        // Appends always go to a new segment: a damaged tail is never written after.
        let path = segment_path(dir, name, next_seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        segments.push_back(Segment {
            first_seq: next_seq,
            path,
            bytes: 0,
            end_seq: next_seq,
        });
        let queue = Arc::new(DiskQueue {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            memory_records: memory_records.max(1),
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(64 * 1024, 16 * 1024 * 1024),
            overflow,
            inner: Mutex::new(Inner {
                mem,
                spilled,
                next_seq,
                segments,
                file,
                total_bytes,
                watermark,
                last_sync: Instant::now(),
                closed: false,
            }),
            ready: Notify::new(),
            ack,
        });
        for record in legacy {
            let _ = queue.append(&record);
        }
        let left = queue.unsettled();
        if left > 0 {
            info!(sink = %name, records = left, "delivering records kept on disk first");
        }
        Ok(queue)
    }

    /// Records accepted and not yet settled.
    pub fn unsettled(&self) -> u64 {
        let st = self.inner.lock();
        st.next_seq.saturating_sub(st.watermark.max(first_seq(&st)))
    }

    /// Appends a record; returns how many old records were dropped to make room for it.
    pub fn append(&self, record: &Record) -> Result<u64, Refused> {
        let body = serde_json::to_vec(&**record).map_err(|e| Refused::Io(e.into()))?;
        let mut frame = Vec::with_capacity(FRAME + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&[0; 4]);
        let mut st = self.inner.lock();
        if st.closed {
            return Err(Refused::Closed);
        }
        let seq = st.next_seq;
        frame.extend_from_slice(&seq.to_le_bytes());
        frame.extend_from_slice(&body);
        let crc = crc32fast::hash(&frame[8..]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        let mut dropped = 0;
        while st.total_bytes + frame.len() as u64 > self.max_bytes {
            match self.overflow {
                Overflow::Refuse => return Err(Refused::Full),
                Overflow::DropOldest => match self.drop_oldest(&mut st) {
                    Some(n) => dropped += n,
                    None => return Err(Refused::Full),
                },
            }
        }
        if st
            .segments
            .back()
            .is_some_and(|s| s.bytes >= self.segment_bytes)
        {
            self.rotate(&mut st, seq).map_err(Refused::Io)?;
        }
        let index = st.segments.len() - 1;
        let offset = st.segments[index].bytes;
        st.file.write_all(&frame).map_err(Refused::Io)?;
        let seg = &mut st.segments[index];
        seg.bytes += frame.len() as u64;
        seg.end_seq = seq + 1;
        st.total_bytes += frame.len() as u64;
        st.next_seq = seq + 1;
        if st.spilled.is_none() && st.mem.len() < self.memory_records {
            st.mem.push_back((seq, record.clone()));
        } else if st.spilled.is_none() {
            st.spilled = Some((seq, index, offset));
        }
        drop(st);
        self.ready.notify_one();
        Ok(dropped)
    }

    fn rotate(&self, st: &mut Inner, first_seq: u64) -> std::io::Result<()> {
        st.file.sync_data()?;
        let path = segment_path(&self.dir, &self.name, first_seq);
        st.file = OpenOptions::new().create(true).append(true).open(&path)?;
        st.segments.push_back(Segment {
            first_seq,
            path,
            bytes: 0,
            end_seq: first_seq,
        });
        Ok(())
    }

    /// Deletes the oldest segment (never the one being written); returns the unsettled
    /// records it held, or `None` if there is nothing to drop.
    fn drop_oldest(&self, st: &mut Inner) -> Option<u64> {
        if st.segments.len() < 2 {
            return None;
        }
        let oldest = st.segments.pop_front()?;
        let _ = std::fs::remove_file(&oldest.path);
        st.total_bytes -= oldest.bytes;
        let lost = oldest
            .end_seq
            .saturating_sub(st.watermark.max(oldest.first_seq));
        st.watermark = st.watermark.max(oldest.end_seq);
        let mark = st.watermark;
        st.mem.retain(|(seq, _)| *seq >= mark);
        st.spilled = match st.spilled {
            Some((seq, _, _)) if seq < mark => {
                // It pointed into the dropped file: the next unsettled record is the start of
                // the next one (if it is only on disk).
                (mark < st.next_seq && st.mem.is_empty()).then_some((mark, 0, 0))
            }
            Some((seq, index, offset)) => Some((seq, index - 1, offset)),
            None => None,
        };
        Some(lost)
    }

    /// The next record in order, if one is ready (read back from disk when its turn comes).
    pub fn try_take(&self) -> Option<(u64, Record)> {
        let mut st = self.inner.lock();
        if st.mem.is_empty() && st.spilled.is_some() {
            self.read_back(&mut st);
        }
        st.mem.pop_front()
    }

    /// Waits for the next record; `None` once closed and empty.
    pub async fn take(&self) -> Option<(u64, Record)> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.try_take() {
                return Some(r);
            }
            if self.inner.lock().closed {
                return None;
            }
            notified.await;
        }
    }

    /// Refills memory from the records held only on disk, in order.
    fn read_back(&self, st: &mut Inner) {
        let Some((_, mut index, mut offset)) = st.spilled else {
            return;
        };
        while st.mem.len() < self.memory_records && index < st.segments.len() {
            let seg = &st.segments[index];
            let written = seg.bytes;
            let read = File::open(&seg.path).and_then(|mut f| {
                f.seek(SeekFrom::Start(offset))?;
                let mut r = BufReader::with_capacity(256 * 1024, f);
                let mut out = Vec::new();
                let mut pos = offset;
                while pos < written && st.mem.len() + out.len() < self.memory_records {
                    let mut head = [0u8; FRAME];
                    r.read_exact(&mut head)?;
                    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                    let mut frame = head.to_vec();
                    frame.resize(FRAME + len.min(MAX_RECORD), 0);
                    r.read_exact(&mut frame[FRAME..])?;
                    let (seq, record, used) = read_frame(&frame)
                        .map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidData, why))?;
                    out.push((seq, record));
                    pos += used as u64;
                }
                Ok((out, pos))
            });
            match read {
                Ok((records, pos)) => {
                    let mark = st.watermark;
                    st.mem
                        .extend(records.into_iter().filter(|(s, _)| *s >= mark));
                    offset = pos;
                    if pos >= written {
                        index += 1;
                        offset = 0;
                    }
                }
                Err(e) => {
                    warn!(sink = %self.name, file = %seg.path.display(), error = %e, "cannot read the sink's disk buffer back; the rest of this file is skipped");
                    index += 1;
                    offset = 0;
                }
            }
        }
        let last = st.segments.len() - 1;
        let at_end = index > last || (index == last && offset >= st.segments[last].bytes);
        st.spilled = if at_end {
            None
        } else {
            let seq = st.mem.back().map_or(st.watermark, |(s, _)| s + 1);
            Some((seq, index, offset))
        };
    }

    /// Everything below `seq` is settled (delivered or given up): it is not replayed, and
    /// files holding only settled records are deleted.
    pub fn settle_below(&self, seq: u64) {
        let mut st = self.inner.lock();
        if seq <= st.watermark {
            return;
        }
        st.watermark = seq;
        if let Err(e) = self.ack.write_all_at(&seq.to_le_bytes(), 0) {
            warn!(sink = %self.name, error = %e, "cannot write the sink's disk buffer watermark; settled records may be sent again after a restart");
        }
        while st.segments.len() > 1 && st.segments[0].end_seq <= seq {
            if let Some(old) = st.segments.pop_front() {
                let _ = std::fs::remove_file(&old.path);
                st.total_bytes -= old.bytes;
                if let Some((_, index, _)) = &mut st.spilled {
                    *index = index.saturating_sub(1);
                }
            }
        }
        if st.last_sync.elapsed() >= Duration::from_secs(1) {
            st.last_sync = Instant::now();
            let _ = st.file.sync_data();
            let _ = self.ack.sync_data();
        }
    }

    /// No more appends; what is on disk stays for the next start.
    pub fn close(&self) {
        let mut st = self.inner.lock();
        st.closed = true;
        let _ = st.file.sync_data();
        let _ = self.ack.sync_data();
        // The next start (or a restarted engine in this process) may open it now.
        let _ = self.ack.unlock();
        drop(st);
        self.ready.notify_waiters();
    }
}

fn first_seq(st: &Inner) -> u64 {
    st.segments.front().map_or(st.next_seq, |s| s.first_seq)
}

fn read_frame(data: &[u8]) -> Result<(u64, Record, usize), &'static str> {
    if data.len() < FRAME {
        return Err("truncated record");
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let crc = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    if len > MAX_RECORD {
        return Err("record length out of range");
    }
    let body = data.get(8..FRAME + len).ok_or("truncated record")?;
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch");
    }
    let seq = u64::from_le_bytes([
        body[0], body[1], body[2], body[3], body[4], body[5], body[6], body[7],
    ]);
    let value = serde_json::from_slice(&body[8..]).map_err(|_| "not JSON")?;
    Ok((seq, Arc::new(value), FRAME + len))
}

/// Records an older Switchyard kept in `{sink}.db` (SQLite, written at shutdown): taken once
/// into the queue, then the file is removed.
fn import_legacy(path: &Path) -> Vec<Record> {
    if !path.exists() {
        return Vec::new();
    }
    let read = || -> rusqlite::Result<Vec<Record>> {
        let db = rusqlite::Connection::open(path)?;
        let mut stmt = db.prepare("SELECT record FROM pending ORDER BY id")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        let mut out = Vec::new();
        for text in rows {
            if let Ok(v) = serde_json::from_str(&text?) {
                out.push(Arc::new(v));
            }
        }
        Ok(out)
    };
    match read() {
        Ok(records) => {
            let _ = std::fs::remove_file(path);
            records
        }
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read an older sink disk buffer; left in place");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(n: u64) -> Record {
        Arc::new(json!({ "n": n }))
    }

    fn drain(q: &DiskQueue) -> Vec<(u64, u64)> {
        std::iter::from_fn(|| q.try_take())
            .map(|(s, r)| (s, r["n"].as_u64().unwrap()))
            .collect()
    }

    #[test]
    fn records_past_memory_come_back_from_disk_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let q = DiskQueue::open(dir.path(), "s", 10, 1 << 30, Overflow::Refuse).unwrap();
        for n in 0..100 {
            q.append(&rec(n)).unwrap();
        }
        let first: Vec<u64> = drain(&q).into_iter().map(|(_, n)| n).collect();
        assert_eq!(first, (0..100).collect::<Vec<_>>());
        // Settle the first 30 (seq 1..=30); reopen as after a crash: 70 come back in order.
        q.settle_below(31);
        drop(q);
        let q = DiskQueue::open(dir.path(), "s", 10, 1 << 30, Overflow::Refuse).unwrap();
        assert_eq!(q.unsettled(), 70);
        q.append(&rec(100)).unwrap();
        let again: Vec<u64> = drain(&q).into_iter().map(|(_, n)| n).collect();
        assert_eq!(again, (30..=100).collect::<Vec<_>>());
    }

    #[test]
    fn the_byte_cap_refuses_or_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        // Six-digit numbers: every record has the same size.
        let size = (FRAME + serde_json::to_vec(&*rec(100_000)).unwrap().len()) as u64;
        let cap = 64 * 1024 * 4;
        let q = DiskQueue::open(dir.path(), "r", 10, cap, Overflow::Refuse).unwrap();
        let mut accepted = 0;
        for n in 100_000..100_000 + cap / size + 10 {
            if q.append(&rec(n)).is_ok() {
                accepted += 1;
            }
        }
        assert_eq!(accepted, cap / size, "refused past the cap");

        let q = DiskQueue::open(dir.path(), "d", 10, cap, Overflow::DropOldest).unwrap();
        let mut dropped = 0;
        let total = 3 * cap / size;
        for n in 100_000..100_000 + total {
            dropped += q.append(&rec(n)).unwrap();
        }
        let left = drain(&q);
        assert_eq!(
            left.len() as u64 + dropped,
            total,
            "every record kept or counted"
        );
        assert_eq!(
            left.last().unwrap().1,
            100_000 + total - 1,
            "the newest are kept"
        );
        assert!(
            left.windows(2).all(|w| w[1].0 == w[0].0 + 1),
            "in order, no gap"
        );
    }

    #[test]
    fn a_queue_in_use_is_not_opened_twice() {
        let dir = tempfile::tempdir().unwrap();
        let q = DiskQueue::open(dir.path(), "l", 10, 1 << 30, Overflow::Refuse).unwrap();
        let second = DiskQueue::open(dir.path(), "l", 10, 1 << 30, Overflow::Refuse);
        assert!(second.is_err_and(|e| e.contains("in use")));
        q.close();
        assert!(DiskQueue::open(dir.path(), "l", 10, 1 << 30, Overflow::Refuse).is_ok());
    }

    #[test]
    fn a_damaged_tail_is_skipped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let q = DiskQueue::open(dir.path(), "t", 100, 1 << 30, Overflow::Refuse).unwrap();
        for n in 0..10 {
            q.append(&rec(n)).unwrap();
        }
        drop(q);
        let seg = segment_path(dir.path(), "t", 1);
        let len = std::fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 2)
            .unwrap();
        let q = DiskQueue::open(dir.path(), "t", 100, 1 << 30, Overflow::Refuse).unwrap();
        let ns: Vec<u64> = drain(&q).into_iter().map(|(_, n)| n).collect();
        assert_eq!(ns, (0..9).collect::<Vec<_>>());
    }
}
