//! What the HTTP API asks of the broker: sessions and their subscriptions, topics, the
//! retained store, kicking a client, discarding an offline session, publishing as the
//! operator. None of it is on a client's path.

use super::Broker;
use crate::hooks::{ClientInfo, Event};
use crate::message::Message;
use crate::session::Session;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiscardError {
    #[error("no session with this client id")]
    NotFound,
    #[error("the session is online: kick its client first")]
    Online,
}

impl Broker {
    /// Closes the connection attached as `client_id` (v5: DISCONNECT 0x98); its session stays.
    pub fn kick(&self, client_id: &str) -> bool {
        self.live
            .get(client_id)
            .is_some_and(|live| live.session.kick(live.id))
    }

    /// Every session, online and offline, sorted by client id.
    pub fn sessions_by_id(&self) -> Vec<Arc<Session>> {
        let mut all = self.sessions.sessions();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }

    /// Ends an offline session now, as its expiry would.
    pub fn discard_session(&self, client_id: &str) -> Result<(), DiscardError> {
        let session = self.session(client_id).ok_or(DiscardError::NotFound)?;
        if session.is_connected() {
            return Err(DiscardError::Online);
        }
        self.remove_session(&session);
        Ok(())
    }

    /// Each subscribed filter (shared ones in their `$share/...` form) and its subscribers.
    pub fn topic_filters(&self) -> BTreeMap<String, usize> {
        let mut filters = BTreeMap::new();
        for s in self.sessions.sessions() {
            for f in s.filters() {
                *filters.entry(f).or_insert(0) += 1;
            }
        }
        filters
    }

    /// The retained message of `topic`, if one is stored and not expired.
    pub fn retained_get(&self, topic: &str) -> Option<Arc<Message>> {
        if !crate::topic::valid_topic_name(topic) {
            return None;
        }
        self.retained_matching(topic).into_iter().next()
    }

    /// Clears the retained message of `topic` as an empty retained publish would. Returns
    /// whether there was one.
    pub fn delete_retained(&self, topic: &str) -> bool {
        if self.retained_get(topic).is_none() {
            return false;
        }
        let clear = Arc::new(Message::new(
            topic,
            bytes::Bytes::new(),
            crate::protocol::QoS::AtMostOnce,
            true,
        ));
        self.store_retained(&clear);
        true
    }

    /// Routes a message an operator sent (HTTP API) as a client's accepted publish would be,
    /// rules included, with `client` as its publisher. Returns the sessions it was queued for.
    pub fn publish_as(self: &Arc<Self>, client: &Arc<ClientInfo>, msg: Message) -> usize {
        let msg = Arc::new(msg);
        let (routed, pending) = self.route(&msg);
        let queued = routed.queued + pending.len();
        if !pending.is_empty() {
            let broker = self.clone();
            let msg = msg.clone();
            tokio::spawn(async move {
                broker.resolve_reads(&msg, pending).await;
            });
        }
        crate::metrics::Metrics::add(&self.metrics.messages_received, 1);
        let client = client.clone();
        // A full rules queue is not waited for: the operator gets an answer at once.
        let _ = self
            .hooks
            .emit_accepted(|| Event::MessageAccepted { client, msg });
        queued
    }
}
