//! Durability (`[persistence]`): persistent sessions, their queued and in-flight QoS 1/2
//! messages, retained messages and delayed wills survive a restart and a crash.
//!
//! - [`record`]: what the journal holds (records that set values, so replay is idempotent)
//!   and its framed, checksummed binary form; `decode`: reading a frame back.
//! - [`journal`]: the append-only segment log with group commit; a writer thread of its own
//!   writes and fsyncs, connections wait for it in `sync` mode.
//! - [`recover`]: reading the newest snapshot and the segments after it at start-up, damage
//!   detected and reported, into [`Recovered`].
//! - [`snapshot`]: writing the live state as a snapshot and deleting what it replaces
//!   (compaction), at start-up and when the log has grown.
//!
//! Sessions append their own records (`session::durable`), the broker those of the retained
//! store and puts recovered state back before the listeners open (`broker::durable`).

pub(crate) mod decode;
pub mod journal;
pub(crate) mod record;
pub mod recover;
pub mod snapshot;

pub use journal::{Journal, JournalError, JournalStats};
pub use recover::{recover, Recovered};
pub use snapshot::SnapshotOut;

/// The journal's own records for what `benches/src/store_bench.rs` measures against other
/// embedded stores: one persistent session, and one QoS 1 message queued to it.
#[doc(hidden)]
pub mod bench {
    use super::record::Rec;
    use crate::message::Message;
    use crate::protocol::QoS;

    pub use super::journal::segment_name;

    pub fn encode_session(buf: &mut Vec<u8>, sid: u64, client_id: &str) {
        Rec::Open {
            sid,
            client_id,
            user: None,
            expiry: u32::MAX,
        }
        .encode(buf);
    }

    /// A session subscribed to `filter` at QoS 1 that went offline now.
    pub fn encode_offline_subscriber(buf: &mut Vec<u8>, sid: u64, client_id: &str, filter: &str) {
        encode_session(buf, sid, client_id);
        Rec::Sub {
            sid,
            filter,
            options: crate::protocol::SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
            identifier: None,
            read_checked: false,
        }
        .encode(buf);
        Rec::Offline {
            sid,
            at_ms: super::record::now_ms(),
            expiry: u32::MAX,
        }
        .encode(buf);
    }

    /// A message body and its place in session `sid`'s queue: what one publish to one offline
    /// persistent subscriber appends.
    pub fn encode_queued(buf: &mut Vec<u8>, sid: u64, mid: u64, msg: &Message) {
        Rec::Message { id: mid, msg }.encode(buf);
        Rec::Enqueue {
            sid,
            mid,
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: &[],
        }
        .encode(buf);
    }
}
