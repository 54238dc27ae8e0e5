//! Where a message goes: the subscription tree's matches, their read checks and the delivery
//! to each session, and the per-publisher cache that skips the tree walk while a publisher
//! repeats its topic and the tree is unchanged.

use super::{Broker, PendingRead, Routed, Subscriber, Target};
use crate::hooks::{Event, HookSet};
use crate::message::Message;
use crate::metrics::{Limit, Metrics};
use crate::protocol::QoS;
use crate::session::{Delivery, Enqueued, Session};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Most matches a [`RouteCache`] keeps: a topic with a large fan-out amortizes its walk anyway,
/// and a publisher should not pin many sessions.
const CACHED_MATCHES_MAX: usize = 8;

/// The subscriptions a publisher's last topic matched, valid while the subscription tree is at
/// the same generation. Matches through a shared group are never kept (each message picks its
/// member anew), nor are more than [`CACHED_MATCHES_MAX`].
#[derive(Default)]
pub struct RouteCache {
    topic: Option<Arc<str>>,
    generation: u64,
    matched: Vec<Subscriber>,
}

impl RouteCache {
    fn holds(&self, topic: &Arc<str>, generation: u64) -> bool {
        self.generation == generation
            && self
                .topic
                .as_ref()
                .is_some_and(|t| Arc::ptr_eq(t, topic) || **t == **topic)
    }

    /// Starts over for `topic` at `generation`; `add` then records each match.
    fn start(&mut self, topic: &Arc<str>, generation: u64) -> &mut Self {
        self.topic = Some(topic.clone());
        self.generation = generation;
        self.matched.clear();
        self
    }

    fn add(&mut self, s: &Subscriber, share: Option<&str>) {
        if share.is_some() || self.matched.len() == CACHED_MATCHES_MAX {
            // Not cacheable: forget the topic, so the next message walks the tree again.
            self.topic = None;
            self.matched.clear();
        } else if self.topic.is_some() {
            self.matched.push(s.clone());
        }
    }
}

impl Broker {
    fn generation(&self) -> u64 {
        self.tree_generation.load(Ordering::Acquire)
    }

    /// Routes a message to every subscription that may have it now; returns the matches whose
    /// read check has yet to be asked (see [`Broker::resolve_reads`]).
    pub fn route(&self, msg: &Arc<Message>) -> (Routed, Vec<PendingRead>) {
        self.route_with(msg, None)
    }

    /// [`Broker::route`] for a publisher that keeps a [`RouteCache`].
    pub fn route_cached(
        &self,
        msg: &Arc<Message>,
        cache: &mut RouteCache,
    ) -> (Routed, Vec<PendingRead>) {
        self.route_with(msg, Some(cache))
    }

    fn route_with(
        &self,
        msg: &Arc<Message>,
        cache: Option<&mut RouteCache>,
    ) -> (Routed, Vec<PendingRead>) {
        let mut routed = Routed::default();
        if msg.retain {
            routed.lsn = self.store_retained(msg);
        }
        // Most topics have a handful of subscribers: keep them on the stack.
        let mut targets: smallvec::SmallVec<[Target; 4]> = smallvec::SmallVec::new();
        let mut pending = Vec::new();
        {
            let version = self.hooks.version();
            let mut visit = |s: &Subscriber, share: Option<&str>| {
                if share.is_none()
                    && s.options.no_local
                    && msg.publisher.as_deref() == Some(&*s.session.client_id)
                {
                    return;
                }
                let qos = msg.qos.min(s.options.qos);
                let retain = s.options.retain_as_published && msg.retain;
                if let Some(check) = &s.reads {
                    match check.cached(&msg.topic, version) {
                        Some(true) => {}
                        Some(false) => return,
                        None => {
                            pending.push(PendingRead {
                                session: s.session.clone(),
                                qos,
                                retain,
                                identifier: s.identifier,
                                check: check.clone(),
                            });
                            return;
                        }
                    }
                }
                targets.push((s.session.clone(), qos, retain, s.identifier));
            };
            match cache {
                Some(cache) if cache.holds(&msg.topic, self.generation()) => {
                    for s in &cache.matched {
                        visit(s, None);
                    }
                }
                cache => {
                    let tree = self.subscriptions.read();
                    // Read under the lock: no change can sit between it and the walk.
                    let generation = self.generation();
                    let mut seen = cache.map(|c| c.start(&msg.topic, generation));
                    tree.for_each_match(
                        &msg.topic,
                        |s| s.session.is_connected(),
                        |s, share| {
                            if let Some(c) = seen.as_deref_mut() {
                                c.add(s, share);
                            }
                            visit(s, share);
                        },
                    );
                }
            }
        }
        if targets.len() > 1 {
            targets.sort_by_key(|t| Arc::as_ptr(&t.0) as usize);
        }
        if !pending.is_empty() {
            // A session that gets the message through another subscription gets it once.
            pending.retain(|p| !targets.iter().any(|t| Arc::ptr_eq(&t.0, &p.session)));
            pending.dedup_by(|a, b| Arc::ptr_eq(&a.session, &b.session));
        }
        let mut i = 0;
        while i < targets.len() {
            // A client with several matching subscriptions gets the message once, at the highest
            // QoS, with every subscription identifier.
            let (session, mut qos, mut retain, id) = targets[i].clone();
            let mut ids: Vec<u32> = id.into_iter().collect();
            let mut j = i + 1;
            while j < targets.len() && Arc::ptr_eq(&targets[j].0, &session) {
                qos = qos.max(targets[j].1);
                retain |= targets[j].2;
                ids.extend(targets[j].3);
                j += 1;
            }
            i = j;
            let delivery = Delivery {
                msg: msg.clone(),
                qos,
                retain,
                subscription_ids: ids,
            };
            self.deliver(session, delivery, &mut routed);
        }
        (routed, pending)
    }

    /// Asks the read checks [`Broker::route`] left open and delivers where they allow
    /// ([`Routed::congested`] and [`Routed::lsn`] are what the caller needs).
    pub async fn resolve_reads(&self, msg: &Arc<Message>, pending: Vec<PendingRead>) -> Routed {
        let mut routed = Routed::default();
        for p in pending {
            if !p.check.check(&self.hooks, &msg.topic, p.qos).await {
                continue;
            }
            let delivery = Delivery {
                msg: msg.clone(),
                qos: p.qos,
                retain: p.retain,
                subscription_ids: p.identifier.into_iter().collect(),
            };
            self.deliver(p.session, delivery, &mut routed);
        }
        routed
    }

    /// Queues one delivery, counting and announcing what could not be queued.
    fn deliver(&self, session: Arc<Session>, delivery: Delivery, routed: &mut Routed) {
        // Kept only for the drop event: a clone per delivery is a shared counter every core
        // would write.
        let msg = self
            .hooks
            .wants(HookSet::MESSAGE_EVENTS)
            .then(|| delivery.msg.clone());
        // Under overload QoS 0 is the first thing given up, so that what was promised drains.
        if delivery.qos == QoS::AtMostOnce && self.guard.is_overloaded() {
            self.metrics.limit_hit(Limit::Overload);
            Metrics::add(&self.metrics.messages_dropped, 1);
            return;
        }
        let (outcome, congested, lsn) =
            session.enqueue(delivery, &self.backpressure, &mut routed.stored_copy);
        routed.lsn = routed.lsn.max(lsn);
        match outcome {
            Enqueued::Queued => routed.queued += 1,
            Enqueued::DroppedOther => {
                routed.queued += 1;
                Metrics::add(&self.metrics.messages_dropped, 1);
            }
            Enqueued::Refused => {
                Metrics::add(&self.metrics.messages_dropped, 1);
                if let Some(msg) = msg {
                    self.hooks.emit(|| Event::MessageDropped {
                        to: Some(session.client_id.clone()),
                        receiver: None,
                        msg,
                        reason: "queue full",
                    });
                }
            }
            Enqueued::Skipped => {}
        }
        if congested && routed.congested.is_none() {
            routed.congested = Some(session);
        }
    }
}
