//! The broker's side of persistence: opening the folder (recover, journal, restore, compact)
//! before anything listens, the retained store's records, snapshots of the live state, and
//! closing the journal at shutdown.

use super::{add_to_tree, Broker};
use crate::config::{LimitsConfig, MqttConfig, PersistMode, PersistenceConfig};
use crate::hooks::ClientInfo;
use crate::message::Message;
use crate::persist::record::{instant_at, now_ms};
use crate::persist::recover::EntryState;
use crate::persist::snapshot::SnapshotStats;
use crate::persist::{recover, Journal, JournalError, SnapshotOut};
use crate::read_check::ReadCheck;
use crate::session::{AttachId, Delivery, Durable, MemoryStore, RestoredParts, Session};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The log is compacted once it has grown by this much, or by twice the last snapshot.
const COMPACT_AFTER_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("persistence folder {dir}: {source}")]
    Io {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What a start found in the persistence folder.
#[derive(Debug, Default, Clone)]
pub struct RestoreReport {
    pub sessions: usize,
    pub expired_sessions: usize,
    pub queued: usize,
    pub retained: usize,
    pub wills: usize,
    pub problems: Vec<String>,
    pub millis: u128,
}

impl Broker {
    /// A broker whose persistent sessions, queues, retained messages and delayed wills live
    /// in `[persistence] dir` (per `mode`): what it held is put back before this returns, and
    /// the folder is compacted. Must run inside the runtime (restored timers are tasks).
    pub fn open(
        config: MqttConfig,
        limits: LimitsConfig,
        persistence: &PersistenceConfig,
    ) -> Result<(Arc<Broker>, RestoreReport), PersistError> {
        if persistence.mode == PersistMode::Off {
            return Ok((Self::with_limits(config, limits), RestoreReport::default()));
        }
        let started = Instant::now();
        let dir = &persistence.dir;
        let io = |source| PersistError::Io {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // Locked before reading, and for the journal's life: a second broker stops here.
        let lock = crate::persist::journal::lock_dir(dir)?;
        let recovered = recover(dir).map_err(io)?;
        let journal = Journal::open(
            lock,
            dir,
            persistence.mode == PersistMode::Sync,
            Duration::from_millis(persistence.flush_interval_ms),
            recovered.end_lsn,
            recovered.max_mid + 1,
            recovered.max_sid + 1,
        )?;
        let store = Box::new(MemoryStore::durable(journal.clone()));
        let broker = Self::build(config, limits, store, Some(journal));
        let mut report = broker.restore(recovered);
        let snapshot = broker.write_snapshot().map_err(io)?;
        report.millis = started.elapsed().as_millis();
        for p in &report.problems {
            warn!(dir = %dir.display(), problem = %p, "persistence folder damaged; the valid part was recovered");
        }
        info!(
            dir = %dir.display(),
            mode = ?persistence.mode,
            sessions = report.sessions,
            expired_sessions = report.expired_sessions,
            queued = report.queued,
            retained = report.retained,
            wills = report.wills,
            snapshot_bytes = snapshot.map_or(0, |s| s.bytes),
            ms = report.millis,
            "persistent state restored"
        );
        tokio::spawn(compact_when_grown(Arc::downgrade(&broker)));
        Ok((broker, report))
    }

    /// The journal when acknowledgements must wait for it (`sync`).
    pub fn sync_journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref().filter(|j| j.is_sync())
    }

    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    /// Writes and fsyncs what the journal holds and stops it (after the connections closed).
    pub fn close_persistence(&self) {
        if let Some(j) = &self.journal {
            j.close();
        }
    }

    /// Writes the live state as a snapshot and deletes the files it replaces.
    pub fn write_snapshot(&self) -> std::io::Result<Option<SnapshotStats>> {
        let Some(journal) = &self.journal else {
            return Ok(None);
        };
        let mut out = SnapshotOut::begin(journal)?;
        let mut retained = Vec::new();
        self.retained.read().matching("#", &mut retained);
        let now = Instant::now();
        for msg in retained.iter().filter(|m| !m.is_expired(now)) {
            let mid = out.message(msg);
            out.rec(&crate::persist::record::Rec::Retain {
                topic: &msg.topic,
                mid,
            });
            out.flush_if_large()?;
        }
        for session in self.sessions.sessions() {
            session.snapshot(&mut out);
            out.flush_if_large()?;
        }
        let stats = out.finish()?;
        journal.snapshot_written(stats.bytes);
        Ok(Some(stats))
    }

    /// Puts recovered sessions, retained messages and wills back (nothing listens yet).
    fn restore(self: &Arc<Self>, mut rec: crate::persist::Recovered) -> RestoreReport {
        let mut report = RestoreReport {
            problems: std::mem::take(&mut rec.problems),
            ..Default::default()
        };
        let Some(journal) = self.journal.clone() else {
            return report;
        };
        let (now, now_ms) = (Instant::now(), now_ms());
        let messages: HashMap<u64, Arc<Message>> = rec
            .messages
            .drain()
            .map(|(id, m)| {
                m.store_id.set(id);
                (id, Arc::new(m))
            })
            .collect();
        {
            let mut tree = self.retained.write();
            let mut bytes = 0;
            for (topic, mid) in &rec.retained {
                let Some(msg) = messages.get(mid).filter(|m| !m.is_expired(now)) else {
                    continue;
                };
                bytes += super::retained::retained_size(msg);
                tree.insert(topic, msg.clone());
                report.retained += 1;
            }
            self.retained_bytes.store(bytes, Ordering::Relaxed);
        }
        for (sid, s) in rec.sessions {
            // Online when the broker stopped: offline from now on.
            let offline_since = if s.offline_since == 0 {
                now_ms
            } else {
                s.offline_since
            };
            let will = s
                .will
                .and_then(|(mid, at)| messages.get(&mid).map(|m| (m.clone(), at)));
            let expires_ms = offline_since.saturating_add(u64::from(s.expiry) * 1000);
            if s.expiry != u32::MAX && expires_ms <= now_ms {
                report.expired_sessions += 1;
                // Its will was due by the time it expired at the latest.
                if let Some((msg, _)) = will {
                    self.publish(msg);
                }
                continue;
            }
            let mut parts = RestoredParts {
                expiry: s.expiry,
                offline_since,
                subscriptions: Vec::new(),
                queue: Vec::new(),
                inflight: Vec::new(),
                incoming_qos2: s.incoming_qos2.into_iter().collect(),
            };
            for (mid, e) in s.entries {
                let Some(msg) = messages.get(&mid) else {
                    continue;
                };
                let delivery = Delivery {
                    msg: msg.clone(),
                    qos: e.qos,
                    retain: e.retain,
                    subscription_ids: e.sub_ids,
                };
                report.queued += 1;
                match e.state {
                    EntryState::Queued => parts.queue.push(delivery),
                    EntryState::Sent(pid) => parts.inflight.push((pid, delivery, false)),
                    EntryState::Released(pid) => parts.inflight.push((pid, delivery, true)),
                }
            }
            let client = Arc::new(restored_client(&s.client_id, s.user.as_ref()));
            let subscriptions: Vec<_> = s
                .subscriptions
                .into_iter()
                .map(|(f, (o, id, checked))| (f, o, id, checked))
                .collect();
            parts.subscriptions = subscriptions.clone();
            let durable = Durable::new(sid, journal.clone());
            let session = Arc::new(Session::restored(s.client_id, s.user, durable, parts));
            self.change_tree(|tree| {
                for (filter, options, identifier, checked) in subscriptions {
                    let reads = checked.then(|| Arc::new(ReadCheck::new(client.clone())));
                    add_to_tree(tree, &session, &filter, options, identifier, reads);
                }
            });
            self.sessions.restore(session.clone());
            report.sessions += 1;
            if s.expiry != u32::MAX {
                let left = Duration::from_millis(expires_ms.saturating_sub(now_ms));
                self.expire_after(&session, AttachId(0), left);
            }
            if let Some((msg, at_ms)) = will {
                report.wills += 1;
                session.store_will(&msg, at_ms);
                let delay = instant_at(at_ms, now, now_ms).saturating_duration_since(now);
                self.publish_will_after(&session, msg, delay, AttachId(0));
            }
        }
        report
    }
}

/// Who a restored read-checked subscription is checked as until its client reconnects: the
/// client id and user name it was granted to (rules on peer address or attributes see none).
fn restored_client(client_id: &Arc<str>, user: Option<&Arc<str>>) -> ClientInfo {
    ClientInfo::internal(client_id.clone(), user.cloned(), "restored")
}

/// Compacts the folder when the journal has grown past [`COMPACT_AFTER_BYTES`] or twice the
/// last snapshot, checking every few seconds while the broker lives.
async fn compact_when_grown(broker: std::sync::Weak<Broker>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Some(b) = broker.upgrade() else { return };
        let Some(journal) = b.journal.clone() else {
            return;
        };
        if b.shutdown.is_cancelled() {
            return;
        }
        if !journal.needs_compaction(COMPACT_AFTER_BYTES) {
            continue;
        }
        let result = tokio::task::spawn_blocking(move || b.write_snapshot()).await;
        match result {
            Ok(Ok(Some(s))) => {
                info!(
                    records = s.records,
                    bytes = s.bytes,
                    files_deleted = s.files_deleted,
                    ms = s.millis as u64,
                    "persistence journal compacted"
                )
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                warn!(dir = %journal.dir().display(), error = %e, "cannot write a snapshot; the journal keeps growing until one succeeds")
            }
            Err(e) => warn!(error = %e, "snapshot task failed"),
        }
    }
}
