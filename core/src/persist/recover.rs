//! Reading the folder back at start-up: the newest snapshot, then every segment record at or
//! after the snapshot's LSN, applied in order into [`Recovered`]. A damaged record (cut short
//! by a crash, a checksum that does not match, bytes that are not a record) ends what is read
//! of that file: the valid prefix counts, the rest is reported and a copy of the file kept as
//! `*.damaged` for the operator; the broker starts.

use super::decode::{decode_framed, Decoded};
use super::journal::segment_start;
use crate::message::Message;
use crate::protocol::{QoS, SubscriptionOptions};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a stored delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryState {
    Queued,
    /// Sent with this packet id, waiting for PUBACK / PUBREC.
    Sent(u16),
    /// PUBREL sent, waiting for PUBCOMP.
    Released(u16),
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) sub_ids: Vec<u32>,
    pub(crate) state: EntryState,
}

#[derive(Debug, Default)]
pub(crate) struct RecoveredSession {
    pub(crate) client_id: Arc<str>,
    pub(crate) user: Option<Arc<str>>,
    pub(crate) expiry: u32,
    /// When its client went away (Unix ms); 0: it was online when the broker stopped.
    pub(crate) offline_since: u64,
    /// Options, identifier, read-checked.
    pub(crate) subscriptions: BTreeMap<String, (SubscriptionOptions, Option<u32>, bool)>,
    /// By message id: ids grow in publish order, so this is each publisher's order.
    pub(crate) entries: BTreeMap<u64, Entry>,
    pub(crate) incoming_qos2: BTreeSet<u16>,
    /// A will waiting for its delay: message id and when it is due (Unix ms).
    pub(crate) will: Option<(u64, u64)>,
}

/// Everything the folder held.
#[derive(Debug, Default)]
pub struct Recovered {
    pub(crate) sessions: HashMap<u64, RecoveredSession, foldhash::fast::RandomState>,
    pub(crate) messages: HashMap<u64, Message, foldhash::fast::RandomState>,
    pub(crate) retained: BTreeMap<String, u64>,
    /// Past every byte on disk: the next segment starts here.
    pub(crate) end_lsn: u64,
    pub(crate) max_mid: u64,
    pub(crate) max_sid: u64,
    /// Damage found, one line per file.
    pub problems: Vec<String>,
    pub records: u64,
    pub bytes_read: u64,
    pub files: usize,
    /// Topics read so far: messages on one topic share its allocation after a restart.
    topics: HashSet<Arc<str>, foldhash::fast::RandomState>,
}

impl Recovered {
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Deliveries waiting in sessions (queued and in flight).
    pub fn queued_count(&self) -> usize {
        self.sessions.values().map(|s| s.entries.len()).sum()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    fn apply(&mut self, rec: Decoded) {
        self.records += 1;
        match rec {
            Decoded::Message { id, mut msg } => {
                self.max_mid = self.max_mid.max(id);
                match self.topics.get(&msg.topic) {
                    Some(shared) => msg.topic = shared.clone(),
                    None => {
                        self.topics.insert(msg.topic.clone());
                    }
                }
                self.messages.entry(id).or_insert(msg);
            }
            Decoded::Open {
                sid,
                client_id,
                user,
                expiry,
            } => {
                self.max_sid = self.max_sid.max(sid);
                self.sessions.entry(sid).or_insert(RecoveredSession {
                    client_id,
                    user,
                    expiry,
                    ..Default::default()
                });
            }
            Decoded::End { sid } => {
                self.sessions.remove(&sid);
            }
            Decoded::Online { sid, expiry } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.expiry = expiry;
                    s.offline_since = 0;
                }
            }
            Decoded::Offline { sid, at_ms, expiry } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.expiry = expiry;
                    s.offline_since = at_ms.max(1);
                }
            }
            Decoded::Sub {
                sid,
                filter,
                options,
                identifier,
                read_checked,
            } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.subscriptions
                        .insert(filter, (options, identifier, read_checked));
                }
            }
            Decoded::Unsub { sid, filter } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.subscriptions.remove(&filter);
                }
            }
            Decoded::Enqueue {
                sid,
                mid,
                qos,
                retain,
                sub_ids,
            } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.entries.entry(mid).or_insert(Entry {
                        qos,
                        retain,
                        sub_ids,
                        state: EntryState::Queued,
                    });
                }
            }
            Decoded::Sent { sid, mid, pid } => {
                if let Some(e) = self
                    .sessions
                    .get_mut(&sid)
                    .and_then(|s| s.entries.get_mut(&mid))
                {
                    e.state = EntryState::Sent(pid);
                }
            }
            Decoded::Released { sid, mid } => {
                if let Some(e) = self
                    .sessions
                    .get_mut(&sid)
                    .and_then(|s| s.entries.get_mut(&mid))
                {
                    if let EntryState::Sent(pid) | EntryState::Released(pid) = e.state {
                        e.state = EntryState::Released(pid);
                    }
                }
            }
            Decoded::Done { sid, mid } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.entries.remove(&mid);
                }
            }
            Decoded::Qos2In { sid, pid } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.incoming_qos2.insert(pid);
                }
            }
            Decoded::Qos2Out { sid, pid } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.incoming_qos2.remove(&pid);
                }
            }
            Decoded::Retain { topic, mid } => {
                self.retained.insert(topic, mid);
            }
            Decoded::Unretain { topic } => {
                self.retained.remove(&topic);
            }
            Decoded::Will { sid, mid, at_ms } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.will = Some((mid, at_ms));
                }
            }
            Decoded::WillDone { sid } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.will = None;
                }
            }
            Decoded::SnapshotEnd => {}
        }
    }

    /// Drops message bodies nothing refers to any more.
    fn collect_garbage(&mut self) {
        let mut live: HashSet<u64, foldhash::fast::RandomState> = HashSet::default();
        live.extend(self.retained.values().copied());
        for s in self.sessions.values() {
            live.extend(s.entries.keys().copied());
            live.extend(s.will.map(|(mid, _)| mid));
        }
        self.messages.retain(|id, _| live.contains(id));
    }
}

/// The snapshot file for LSN `lsn`.
pub(crate) fn snapshot_name(lsn: u64) -> String {
    format!("snapshot-{lsn:020}.snap")
}

pub(crate) fn snapshot_lsn(name: &str) -> Option<u64> {
    name.strip_prefix("snapshot-")?
        .strip_suffix(".snap")?
        .parse()
        .ok()
}

/// Files of one kind, by the LSN in their names, sorted.
pub(crate) type ByLsn = Vec<(u64, PathBuf)>;

/// The snapshots and segments in `dir`.
pub(crate) fn list(dir: &Path) -> std::io::Result<(ByLsn, ByLsn)> {
    let mut snapshots = Vec::new();
    let mut segments = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((snapshots, segments)),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("snapshot-") && name.ends_with(".tmp") {
            // A snapshot a crash interrupted: never used.
            let _ = std::fs::remove_file(entry.path());
        } else if let Some(lsn) = snapshot_lsn(name) {
            snapshots.push((lsn, entry.path()));
        } else if let Some(lsn) = segment_start(name) {
            segments.push((lsn, entry.path()));
        }
    }
    snapshots.sort();
    segments.sort();
    Ok((snapshots, segments))
}

/// Reads everything `dir` holds. Only an unreadable folder is an error; damage is reported in
/// [`Recovered::problems`].
pub fn recover(dir: &Path) -> std::io::Result<Recovered> {
    let mut rec = Recovered::default();
    let (snapshots, segments) = list(dir)?;
    let mut from = 0;
    if let Some((lsn, path)) = snapshots.last() {
        from = *lsn;
        rec.end_lsn = *lsn;
        let complete = read_file(&mut rec, path, None, 0)?;
        if !complete {
            rec.problems.push(format!(
                "{}: the snapshot has no end marker; what it held after the damage is lost",
                path.display()
            ));
        }
    }
    for (start, path) in &segments {
        read_file(&mut rec, path, Some(*start), from)?;
    }
    rec.collect_garbage();
    rec.topics = HashSet::default();
    Ok(rec)
}

/// Applies the records of one file: a segment whose first byte is LSN `segment`, skipping
/// records that begin before `from`, or a snapshot (`None`). Returns whether a snapshot end
/// marker was seen.
fn read_file(
    rec: &mut Recovered,
    path: &Path,
    segment: Option<u64>,
    from: u64,
) -> std::io::Result<bool> {
    let data = std::fs::read(path)?;
    rec.files += 1;
    rec.bytes_read += data.len() as u64;
    let start = segment.unwrap_or(from);
    if segment.is_some() {
        rec.end_lsn = rec.end_lsn.max(start + data.len() as u64);
    }
    let mut pos = 0;
    let mut ended = false;
    while pos < data.len() {
        match decode_framed(&data[pos..]) {
            Ok((record, used)) => {
                if start + pos as u64 >= from {
                    ended |= matches!(record, Decoded::SnapshotEnd);
                    rec.apply(record);
                }
                pos += used;
            }
            Err(why) => {
                let keep = path.with_extension("damaged");
                let kept = std::fs::copy(path, &keep).is_ok();
                rec.problems.push(format!(
                    "{}: {why} at byte {pos}; the {} bytes after it are skipped{}",
                    path.display(),
                    data.len() - pos,
                    if kept {
                        format!(" (a copy is kept as {})", keep.display())
                    } else {
                        String::new()
                    }
                ));
                break;
            }
        }
    }
    Ok(ended)
}
