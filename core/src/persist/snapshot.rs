//! Compaction: the live state written as one snapshot file, after which every segment that
//! ended before the snapshot began, and every older snapshot, is deleted. The snapshot starts
//! at the journal's current LSN and is written while the broker keeps appending; records are
//! idempotent (see `record`), so replaying the segments from that LSN over it ends in the same
//! state whichever moment each session was copied at.

use super::journal::{sync_dir, Journal};
use super::record::Rec;
use super::recover::{list, snapshot_name};
use crate::message::Message;
use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Written to the file once this much is encoded (sessions encode under their lock, into
/// memory; the file is written outside it).
const FLUSH_AT: usize = 1024 * 1024;

/// A snapshot being written.
pub struct SnapshotOut<'a> {
    journal: &'a Journal,
    buf: Vec<u8>,
    file: File,
    tmp: PathBuf,
    lsn: u64,
    /// Message bodies already in this snapshot.
    written: HashSet<u64>,
    records: u64,
    bytes: u64,
    started: Instant,
}

/// What one compaction did.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotStats {
    pub records: u64,
    pub bytes: u64,
    pub files_deleted: usize,
    pub millis: u128,
}

impl<'a> SnapshotOut<'a> {
    /// Starts a snapshot at the journal's current end.
    pub(crate) fn begin(journal: &'a Journal) -> std::io::Result<Self> {
        let lsn = journal.appended();
        let tmp = journal.dir().join(format!("snapshot-{lsn:020}.tmp"));
        let file = File::create(&tmp)?;
        Ok(Self {
            journal,
            buf: Vec::with_capacity(FLUSH_AT + 64 * 1024),
            file,
            tmp,
            lsn,
            written: HashSet::new(),
            records: 0,
            bytes: 0,
            started: Instant::now(),
        })
    }

    pub(crate) fn rec(&mut self, rec: &Rec<'_>) {
        rec.encode(&mut self.buf);
        self.records += 1;
    }

    /// The message's id, its body written the first time this snapshot meets it.
    pub(crate) fn message(&mut self, msg: &Message) -> u64 {
        let id = match msg.store_id.get() {
            0 => self.journal.message_id(msg),
            id => id,
        };
        if self.written.insert(id) {
            self.rec(&Rec::Message { id, msg });
        }
        id
    }

    /// Writes what is encoded once it is large (call outside any session lock).
    pub(crate) fn flush_if_large(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.bytes += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Seals the snapshot (end marker, fsync, rename), then deletes what it replaces.
    pub(crate) fn finish(mut self) -> std::io::Result<SnapshotStats> {
        let records = self.records;
        self.rec(&Rec::SnapshotEnd { records });
        self.flush()?;
        self.file.sync_all()?;
        let dir = self.journal.dir().to_path_buf();
        std::fs::rename(&self.tmp, dir.join(snapshot_name(self.lsn)))?;
        sync_dir(&dir)?;
        let (snapshots, segments) = list(&dir)?;
        let mut deleted = 0;
        for (lsn, path) in &snapshots {
            if *lsn < self.lsn && std::fs::remove_file(path).is_ok() {
                deleted += 1;
            }
        }
        // A segment is obsolete when the next one starts at or before the snapshot's LSN; the
        // last one is being written.
        for pair in segments.windows(2) {
            if pair[1].0 <= self.lsn && std::fs::remove_file(&pair[0].1).is_ok() {
                deleted += 1;
            }
        }
        Ok(SnapshotStats {
            records: self.records,
            bytes: self.bytes,
            files_deleted: deleted,
            millis: self.started.elapsed().as_millis(),
        })
    }
}

impl Drop for SnapshotOut<'_> {
    fn drop(&mut self) {
        // Unfinished (an error, or finished and renamed: then this finds nothing).
        let _ = std::fs::remove_file(&self.tmp);
    }
}
