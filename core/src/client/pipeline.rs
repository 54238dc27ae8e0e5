//! The protocol-neutral client pipeline. Every front end (the MQTT connection, the `ws-json`
//! bridge) translates its framing into these calls, so validation, authorization, message
//! hooks, routing, events, metrics and backpressure are the same whatever the client speaks:
//!
//! - publish: validate → authorize → `on_publish` hooks → route → `MessageAccepted` →
//!   backpressure;
//! - subscribe: validate → authorize → register → (after the front end's acknowledgement)
//!   retained messages and `SessionSubscribed`;
//! - unsubscribe: forget → `SessionUnsubscribed`;
//! - outbound: the session's batch, with `MessageDelivered` / `MessageDropped` and counters.

use crate::broker::live::LiveClient;
use crate::broker::{Broker, RouteCache};
use crate::guard::rate::TokenBucket;
use crate::hooks::{Access, AclDecision, ClientInfo, ConnectFacts, Event, HookSet};
use crate::message::Message;
use crate::metrics::{Limit, Metrics};
use crate::protocol::{QoS, ReasonCode, SubscriptionOptions};
use crate::read_check::ReadCheck;
use crate::session::{Acks, AttachId, Outlet, Session, SessionOwnedByOther, Standing, WaitOutcome};
use crate::topic;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::{debug, info, warn};

/// Why a publish was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefused {
    /// Breaks the protocol or the broker's limits: an MQTT connection closes with the code.
    Invalid(ReasonCode, &'static str),
    /// Not authorized: acknowledged with the code (v5), silently dropped (v3).
    Denied(ReasonCode),
    /// A message hook dropped it.
    Dropped,
}

/// Why a subscription was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeRefused {
    /// Refused with this code (SUBACK) and the client stays connected.
    Code(ReasonCode),
    /// Breaks the protocol: an MQTT connection closes.
    Protocol(&'static str),
}

/// A subscription registered but not yet announced: the front end acknowledges it first,
/// then calls [`Attachment::complete_subscribe`] (retained messages follow the SUBACK).
pub struct Granted {
    pub filter: String,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
    existed: bool,
    reads: Option<Arc<ReadCheck>>,
}

/// How a subscription may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Everything it matches.
    Full,
    /// Only topics a read check allows (its filter overlaps a denied tree).
    ReadChecked,
}

/// A client attached to its session: what the pipeline acts for.
pub struct Attachment {
    pub broker: Arc<Broker>,
    pub client: Arc<ClientInfo>,
    pub session: Arc<Session>,
    pub id: AttachId,
    /// This connection as operators see it, with its traffic counters.
    pub live: Arc<LiveClient>,
    /// What publishing needs (rate buckets, the route cache), made at the first publish: a
    /// client that only subscribes never pays for it.
    publishing: Mutex<Option<Box<PublishState>>>,
    /// The journal position this client's accepted publishes reached: in `sync` mode nothing
    /// is written to the client (its PUBACK / PUBREC) before it is durable.
    commit_lsn: AtomicU64,
}

/// A publishing client's own state: its `max_publish_rate` and `max_publish_bytes_rate`
/// buckets and the subscriptions its last topic matched.
struct PublishState {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    routes: RouteCache,
}

impl Attachment {
    /// Attaches an admitted client to its session, counts it and announces it. Refused (0x87)
    /// when the client id's session belongs to another user.
    pub fn open(
        broker: &Arc<Broker>,
        client: Arc<ClientInfo>,
        facts: ConnectFacts,
    ) -> Result<(Attachment, bool), SessionOwnedByOther> {
        let attached = broker.attach(&client, facts.clean_start, facts.session_expiry)?;
        let (keep_alive, connected_at) = (facts.keep_alive, facts.at);
        if broker.shutdown.is_cancelled() {
            // Attached after `begin_shutdown` woke everyone: wake ourselves to close too.
            attached.session.wake();
        }
        Metrics::add(&broker.metrics.connections_total, 1);
        Metrics::add(&broker.metrics.clients_connected, 1);
        info!(
            client_id = %client.client_id,
            listener = %client.listener,
            peer = %client.peer_addr,
            protocol = client.protocol.as_str(),
            session_present = attached.session_present,
            "client connected"
        );
        broker.hooks.emit(|| Event::ClientConnected {
            client: client.clone(),
            facts,
        });
        let live = Arc::new(LiveClient::new(
            client.clone(),
            attached.session.clone(),
            attached.id,
            keep_alive,
            connected_at,
        ));
        broker.live.insert(live.clone());
        let att = Attachment {
            broker: broker.clone(),
            client,
            session: attached.session,
            id: attached.id,
            live,
            publishing: Mutex::new(None),
            commit_lsn: AtomicU64::new(0),
        };
        Ok((att, attached.session_present))
    }

    /// In `sync` mode: waits until everything this client's acknowledgements promise (its
    /// publishes routed to durable sessions or retained, its session's own changes) is on disk.
    pub async fn wait_durable(&self) {
        let Some(journal) = self.broker.sync_journal() else {
            return;
        };
        let need = self
            .commit_lsn
            .load(Ordering::Relaxed)
            .max(self.session.lsn());
        if need > journal.durable() {
            journal.wait_durable(need).await;
        }
    }

    /// Whether this connection still owns its session (not taken over, not ended).
    pub fn owns_session(&self) -> bool {
        self.session.is_attached(self.id)
    }

    pub fn standing(&self) -> Standing {
        self.session.standing(self.id)
    }

    /// Detaches from the session and announces the disconnect.
    pub fn close(&self, why: &str) {
        Metrics::add(&self.broker.metrics.clients_connected, u64::MAX); // wrapping -1
        self.broker.live.remove(&self.client.client_id, self.id);
        self.broker.detach(&self.session, self.id);
        let c = &self.client;
        self.broker
            .guard
            .connection_ended(&c.client_id, c.username.as_deref(), c.peer_addr.ip());
        let client = self.client.clone();
        let why = why.to_string();
        self.broker.hooks.emit(|| Event::ClientDisconnected {
            client,
            reason: why,
        });
    }

    /// The whole publish path for one message from this client. Its topic name is
    /// syntactically valid already: each front end's decoder checks that, as MQTT's does.
    pub async fn publish(&self, msg: Message) -> Result<(), PublishRefused> {
        let broker = &self.broker;
        let cfg = &broker.config;
        Metrics::add(&broker.metrics.messages_received, 1);
        LiveClient::count(&self.live.messages_in, 1);
        if msg.topic.is_empty() {
            return Err(PublishRefused::Invalid(
                ReasonCode::PROTOCOL_ERROR,
                "empty topic name",
            ));
        }
        if topic::too_deep(&msg.topic, cfg.max_topic_levels) {
            return Err(PublishRefused::Invalid(
                ReasonCode::TOPIC_NAME_INVALID,
                "too many topic levels",
            ));
        }
        if msg.retain && !cfg.retain_available {
            return Err(PublishRefused::Invalid(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "retain not supported",
            ));
        }
        // Topics starting with `$` are the broker's (spec 4.7.2): a client's `$SYS/…` would
        // pass for broker statistics. Refused like an unauthorized publish.
        if msg.topic.starts_with('$') {
            Metrics::add(&broker.metrics.publishes_denied, 1);
            return Err(PublishRefused::Denied(ReasonCode::NOT_AUTHORIZED));
        }
        if !self.within_publish_rate(msg.payload.len()) {
            broker.metrics.limit_hit(Limit::PublishRate);
            Metrics::add(&broker.metrics.publishes_denied, 1);
            return Err(PublishRefused::Denied(ReasonCode::QUOTA_EXCEEDED));
        }
        // The hook calls are boxed: they run only when a hook asked for them, and inline they
        // would push every read's future (allocated per read) past the allocator's fast size.
        if broker.hooks.wants(HookSet::AUTHORIZE) {
            let decision = Box::pin(broker.hooks.authorize(
                &self.client,
                Access::Publish,
                &msg.topic,
                msg.qos,
            ))
            .await;
            let denied = matches!(decision, AclDecision::Deny(_));
            self.authz_event(Access::Publish, &msg.topic, !denied);
            if let AclDecision::Deny(code) = decision {
                Metrics::add(&broker.metrics.publishes_denied, 1);
                debug!(client_id = %self.client.client_id, listener = %self.client.listener, topic = %msg.topic, reason = %code, "publish denied");
                return Err(PublishRefused::Denied(code));
            }
        } else {
            self.authz_event(Access::Publish, &msg.topic, true);
        }
        let msg = if broker.hooks.wants(HookSet::MESSAGE_PUBLISH) {
            let before = msg.topic.as_ptr() as usize;
            match Box::pin(broker.hooks.on_publish(&self.client, msg)).await {
                // A hook that moved the message to another topic is held to the same rules
                // as the client: no `$` topics, no more levels than allowed.
                Some(m)
                    if m.topic.as_ptr() as usize != before
                        && !topic::publishable(&m.topic, broker.config.max_topic_levels) =>
                {
                    Metrics::add(&broker.metrics.publishes_denied, 1);
                    debug!(client_id = %self.client.client_id, listener = %self.client.listener, topic = %m.topic, "a message hook's topic is not allowed; dropped");
                    return Err(PublishRefused::Dropped);
                }
                Some(m) => m,
                None => {
                    Metrics::add(&broker.metrics.publishes_denied, 1);
                    return Err(PublishRefused::Dropped);
                }
            }
        } else {
            msg
        };
        let msg = Arc::new(msg);
        let (routed, pending) = {
            // Only this connection's task takes this lock: holding it while routing is safe.
            let mut state = self.publishing.lock();
            let state = state.get_or_insert_with(|| self.publish_state());
            broker.route_cached(&msg, &mut state.routes)
        };
        let mut congested = routed.congested;
        let mut lsn = routed.lsn;
        let mut queued = routed.queued;
        if !pending.is_empty() {
            // Boxed, as the wait below: rare paths kept out of every publish's future.
            let late = Box::pin(broker.resolve_reads(&msg, pending)).await;
            congested = congested.or(late.congested);
            lsn = lsn.max(late.lsn);
            queued += late.queued;
        }
        if queued == 0 && !msg.retain {
            broker.hooks.emit(|| Event::MessageDropped {
                to: None,
                receiver: None,
                msg: msg.clone(),
                reason: "no subscribers",
            });
        }
        if lsn > 0 {
            self.commit_lsn.fetch_max(lsn, Ordering::Relaxed);
        }
        let client = &self.client;
        let rules_full = broker.hooks.emit_accepted(|| Event::MessageAccepted {
            client: client.clone(),
            msg,
        });
        if let Some(wait) = rules_full {
            wait.await;
        }
        if let Some(congested) = congested {
            let waited = Box::pin(broker.backpressure.wait(&congested, Some(&self.session))).await;
            if waited == WaitOutcome::MarkedSlow {
                broker.metrics.limit_hit(Limit::SlowSubscriber);
                warn!(client_id = %congested.client_id, publisher = %self.client.client_id, listener = %self.client.listener, policy = ?broker.backpressure.policy, "slow subscriber: publishers no longer wait for it");
            }
        }
        Ok(())
    }

    /// Tells observers of authorization outcomes (built only when one asks).
    fn authz_event(&self, access: Access, topic: &str, allowed: bool) {
        self.broker.hooks.emit(|| Event::AuthzComplete {
            client: self.client.clone(),
            access,
            topic: Arc::from(topic),
            allowed,
        });
    }

    /// The state made at a client's first publish (rate buckets per `[limits]`, an empty route
    /// cache).
    fn publish_state(&self) -> Box<PublishState> {
        let limits = &self.broker.guard.limits;
        Box::new(PublishState {
            messages: TokenBucket::new(limits.max_publish_rate),
            bytes: TokenBucket::new(limits.max_publish_bytes_rate),
            routes: RouteCache::default(),
        })
    }

    /// Takes one message and `bytes` from the client's publish rate buckets.
    fn within_publish_rate(&self, bytes: usize) -> bool {
        let limits = &self.broker.guard.limits;
        if limits.max_publish_rate == 0 && limits.max_publish_bytes_rate == 0 {
            return true;
        }
        let mut state = self.publishing.lock();
        let r = state.get_or_insert_with(|| self.publish_state());
        let now = std::time::Instant::now();
        r.messages.as_mut().is_none_or(|b| b.try_take(1, now))
            && r.bytes
                .as_mut()
                .is_none_or(|b| b.try_take(bytes as u64, now))
    }

    /// Validates and authorizes one filter of a subscribe request.
    pub async fn check_subscribe(
        &self,
        filter: &str,
        options: &SubscriptionOptions,
    ) -> Result<Grant, SubscribeRefused> {
        let cfg = &self.broker.config;
        let inner = match topic::parse_shared(filter) {
            Some(Err(())) => return Err(SubscribeRefused::Code(ReasonCode::TOPIC_FILTER_INVALID)),
            Some(Ok(_)) if !cfg.shared_subscriptions => {
                return Err(SubscribeRefused::Code(
                    ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                ))
            }
            Some(Ok((_, inner))) => {
                if options.no_local {
                    return Err(SubscribeRefused::Protocol(
                        "No Local on a shared subscription",
                    ));
                }
                inner
            }
            None => filter,
        };
        if !topic::valid_topic_filter(inner) || topic::level_count(inner) > cfg.max_topic_levels {
            return Err(SubscribeRefused::Code(ReasonCode::TOPIC_FILTER_INVALID));
        }
        // Each subscription is a tree entry and a write lock; one SUBSCRIBE can carry
        // thousands of filters.
        if !self.session.has_room_for(filter, cfg.max_subscriptions) {
            self.broker.metrics.limit_hit(Limit::Subscriptions);
            debug!(client_id = %self.client.client_id, listener = %self.client.listener, filter, max = cfg.max_subscriptions, "subscription refused: max_subscriptions reached");
            return Err(SubscribeRefused::Code(ReasonCode::QUOTA_EXCEEDED));
        }
        let hooks = &self.broker.hooks;
        if !hooks.wants(HookSet::AUTHORIZE) {
            self.authz_event(Access::Subscribe, filter, true);
            return Ok(Grant::Full);
        }
        let decision = hooks
            .authorize(&self.client, Access::Subscribe, filter, options.qos)
            .await;
        self.authz_event(
            Access::Subscribe,
            filter,
            !matches!(decision, AclDecision::Deny(_)),
        );
        match decision {
            AclDecision::Deny(code) => {
                debug!(client_id = %self.client.client_id, listener = %self.client.listener, filter, "subscribe denied");
                let code = if code.is_error() {
                    code
                } else {
                    ReasonCode::NOT_AUTHORIZED
                };
                Err(SubscribeRefused::Code(code))
            }
            AclDecision::Filter => Ok(Grant::ReadChecked),
            AclDecision::Allow | AclDecision::Ignore => Ok(Grant::Full),
        }
    }

    /// Registers a checked subscription in the session and the router.
    pub fn subscribe(
        &self,
        filter: String,
        options: SubscriptionOptions,
        identifier: Option<u32>,
        grant: Grant,
    ) -> Granted {
        let reads =
            (grant == Grant::ReadChecked).then(|| Arc::new(ReadCheck::new(self.client.clone())));
        let existed =
            self.broker
                .subscribe(&self.session, &filter, options, identifier, reads.clone());
        Granted {
            filter,
            options,
            identifier,
            existed,
            reads,
        }
    }

    /// After the acknowledgement: queues the retained messages the subscription gets and
    /// announces it.
    pub async fn complete_subscribe(&self, g: Granted) {
        let broker = &self.broker;
        let mut retained = broker.retained_for(&g.filter, g.options, g.existed);
        if let Some(check) = &g.reads {
            let mut allowed = Vec::with_capacity(retained.len());
            for msg in retained {
                if check.check(&broker.hooks, &msg.topic, msg.qos).await {
                    allowed.push(msg);
                }
            }
            retained = allowed;
        }
        broker.enqueue_retained(&self.session, retained, g.options, g.identifier);
        let client = self.client.clone();
        let qos = g.options.qos;
        self.broker.hooks.emit(|| Event::SessionSubscribed {
            client,
            filter: g.filter,
            qos,
        });
    }

    /// Returns whether the subscription existed.
    pub fn unsubscribe(&self, filter: &str) -> bool {
        let existed = self.broker.unsubscribe(&self.session, filter);
        if existed {
            let client = self.client.clone();
            let filter = filter.to_string();
            self.broker
                .hooks
                .emit(|| Event::SessionUnsubscribed { client, filter });
        }
        existed
    }

    /// Moves what the session may send now into `out`; counts and announces it.
    pub fn fill(&self, acks: Acks, out: &mut dyn Outlet) {
        let broker = &self.broker;
        let observe = broker.hooks.wants(HookSet::MESSAGE_EVENTS);
        let batch = self
            .session
            .fill(self.id, acks, &broker.backpressure, observe, out);
        if batch.sent > 0 {
            Metrics::add(&broker.metrics.messages_sent, batch.sent);
            LiveClient::count(&self.live.messages_out, batch.sent);
        }
        if batch.dropped > 0 {
            Metrics::add(&broker.metrics.messages_dropped, batch.dropped);
        }
        for msg in batch.delivered {
            broker.hooks.emit(|| Event::MessageDelivered {
                to: self.client.clone(),
                msg,
            });
        }
        for (msg, why) in batch.dropped_msgs {
            broker.hooks.emit(|| Event::MessageDropped {
                to: Some(self.client.client_id.clone()),
                receiver: Some(self.client.clone()),
                msg,
                reason: why,
            });
        }
    }

    /// The client acknowledged a QoS 1/2 delivery (PUBACK, PUBCOMP).
    pub fn acked(&self, msg: Arc<Message>) {
        self.broker.hooks.emit(|| Event::MessageAcked {
            to: self.client.clone(),
            msg,
        });
    }

    /// The authorize check a will passes before it is published.
    pub async fn may_publish(&self, topic: &str, qos: QoS) -> bool {
        let hooks = &self.broker.hooks;
        !hooks.wants(HookSet::AUTHORIZE)
            || !matches!(
                hooks
                    .authorize(&self.client, Access::Publish, topic, qos)
                    .await,
                AclDecision::Deny(_)
            )
    }
}
