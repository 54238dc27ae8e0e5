//! The router and session registry: where publishes go and which session a client id owns.
//!
//! The subscription tree sits behind a read-write lock so both cores route in parallel; only
//! SUBSCRIBE/UNSUBSCRIBE take it exclusively. Each session has its own small lock for its queue.
//!
//! - this module: [`Broker`], attach/detach, subscriptions, wills;
//! - `routing`: where a message goes (the tree walk, read checks, delivery) and the
//!   per-publisher [`RouteCache`];
//! - `retained`: the retained store;
//! - `admin`: what the HTTP API asks (sessions, topics, retained, kick, operator publish);
//! - [`live`]: the connections attached now and their traffic counters;
//! - `durable`: persistence — open, restore, snapshots (see `crate::persist`).

mod admin;
mod durable;
pub mod live;
mod retained;
mod routing;

pub use admin::DiscardError;
pub use durable::{PersistError, RestoreReport};
pub use routing::RouteCache;

use crate::config::{LimitsConfig, MqttConfig};
use crate::guard::Guard;
use crate::hooks::ClientInfo;
use crate::hooks::HookChain;
use crate::message::Message;
use crate::metrics::{Metrics, MetricsSource};
use crate::protocol::{QoS, SubscriptionOptions};
use crate::read_check::ReadCheck;
use crate::session::{
    AttachId, Backpressure, MemoryStore, Session, SessionClaim, SessionOwnedByOther, SessionStore,
};
use crate::topic::{self, RetainedTree, TopicTree, TreeEntry};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A subscription as the tree stores it: pointing straight at the session, so delivering needs
/// no registry lookup.
#[derive(Clone)]
struct Subscriber {
    session: Arc<Session>,
    options: SubscriptionOptions,
    identifier: Option<u32>,
    /// Set when the subscription was granted with `AclDecision::Filter`.
    reads: Option<Arc<ReadCheck>>,
}

impl TreeEntry for Subscriber {
    fn key(&self) -> &str {
        &self.session.client_id
    }
}

/// A matched subscription: session, granted QoS, RETAIN flag to send, subscription id.
type Target = (Arc<Session>, QoS, bool, Option<u32>);

/// A match waiting for its subscription's first read check of this topic.
pub struct PendingRead {
    session: Arc<Session>,
    qos: QoS,
    retain: bool,
    identifier: Option<u32>,
    check: Arc<ReadCheck>,
}

/// Where a publish went.
#[derive(Default)]
pub struct Routed {
    /// Sessions it was queued for.
    pub queued: usize,
    /// An online session whose queue is past its high-water mark: the publisher should wait
    /// for it to drain before sending more (see `Session::space`).
    pub congested: Option<Arc<Session>>,
    /// The message with a payload of its own, made for the first offline session it is queued
    /// for and shared by the others (see `Session::enqueue`).
    pub(crate) stored_copy: Option<Arc<Message>>,
    /// The LSN of the last journal record it caused (0: none): in `sync` mode the publisher's
    /// acknowledgement waits until it is durable.
    pub lsn: u64,
}

/// Result of attaching a connection to a session.
pub struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    /// The connection owns the session while it stays attached under this id.
    pub id: AttachId,
}

pub struct Broker {
    pub config: MqttConfig,
    pub hooks: HookChain,
    pub metrics: Metrics,
    /// Cancelled on SIGINT/SIGTERM: listeners stop, connections close with 0x8B.
    pub shutdown: CancellationToken,
    pub started: Instant,
    /// Queue bounds and the wait for congested subscribers, for every front end.
    pub backpressure: Backpressure,
    /// Bans, connections per address, overload: the door every client passes.
    pub guard: Guard,
    /// The connections attached now (for the HTTP API).
    pub live: live::LiveClients,
    sessions: Box<dyn SessionStore>,
    subscriptions: RwLock<TopicTree<Subscriber>>,
    /// Counts changes to `subscriptions` (bumped under its write lock, see
    /// [`Broker::change_tree`]): a [`RouteCache`] holds while it is unchanged.
    tree_generation: AtomicU64,
    retained: RwLock<RetainedTree<Arc<Message>>>,
    /// Bytes of topics and payloads in `retained`; written only under its write lock.
    retained_bytes: AtomicUsize,
    /// At most one "retained store full" line a second.
    retained_full_log: crate::log_limit::LogLimiter,
    next_attach: AtomicU64,
    metrics_sources: RwLock<Vec<(String, Arc<dyn MetricsSource>)>>,
    /// `[persistence]` on: durable sessions and the retained store append to it.
    journal: Option<Arc<crate::persist::Journal>>,
}

impl Broker {
    pub fn new(config: MqttConfig) -> Arc<Self> {
        Self::with_limits(config, LimitsConfig::default())
    }

    pub fn with_limits(config: MqttConfig, limits: LimitsConfig) -> Arc<Self> {
        Self::with_store(config, limits, Box::new(MemoryStore::default()))
    }

    /// A broker whose sessions live in `store`.
    pub fn with_store(
        config: MqttConfig,
        limits: LimitsConfig,
        store: Box<dyn SessionStore>,
    ) -> Arc<Self> {
        Self::build(config, limits, store, None)
    }

    fn build(
        config: MqttConfig,
        limits: LimitsConfig,
        store: Box<dyn SessionStore>,
        journal: Option<Arc<crate::persist::Journal>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            guard: Guard::new(limits),
            live: live::LiveClients::default(),
            backpressure: Backpressure::from_config(&config),
            config,
            hooks: HookChain::default(),
            metrics: Metrics::default(),
            shutdown: CancellationToken::new(),
            started: Instant::now(),
            sessions: store,
            subscriptions: RwLock::new(TopicTree::default()),
            tree_generation: AtomicU64::new(0),
            retained: RwLock::new(RetainedTree::default()),
            retained_bytes: AtomicUsize::new(0),
            retained_full_log: crate::log_limit::LogLimiter::new(1, 0),
            next_attach: AtomicU64::new(1),
            metrics_sources: RwLock::new(Vec::new()),
            journal,
        })
    }

    /// Adds counters to `/metrics`, replacing an earlier source of the same name.
    pub fn set_metrics_source(&self, name: &str, source: Arc<dyn MetricsSource>) {
        let mut sources = self.metrics_sources.write();
        sources.retain(|(n, _)| n != name);
        sources.push((name.to_string(), source));
    }

    /// The JSON status of the source registered as `name`, if it has one.
    pub fn status_of(&self, name: &str) -> Option<serde_json::Value> {
        let sources = self.metrics_sources.read();
        let (_, source) = sources.iter().find(|(n, _)| n == name)?;
        source.status()
    }

    /// What the registered sources report as wrong now (a required plugin missing, a breaker
    /// open): `/health` turns `degraded` and lists them.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .metrics_sources
            .read()
            .iter()
            .flat_map(|(_, source)| source.problems())
            .collect();
        if let Some(why) = self.guard.overload_reason() {
            problems.push(format!(
                "overloaded ({why}): new connections refused, QoS 0 shed"
            ));
        }
        problems
    }

    /// Messages waiting in every session's queue (the overload monitor asks once a second).
    pub fn total_queued(&self) -> usize {
        self.sessions.sessions().iter().map(|s| s.queued()).sum()
    }

    /// Renders every registered [`MetricsSource`] into `out`.
    pub fn render_metrics_sources(&self, out: &mut String) {
        for (_, source) in self.metrics_sources.read().iter() {
            source.render(out);
        }
    }

    /// Finds or creates the session for `client` and makes the caller its owner. A connection
    /// that owned it before notices on its next wake-up that it was taken over. Refused when
    /// the session belongs to another user (`sessions_bound_to_user`).
    pub fn attach(
        self: &Arc<Self>,
        client: &ClientInfo,
        clean_start: bool,
        expiry_interval: u32,
    ) -> Result<Attached, SessionOwnedByOther> {
        let claim = SessionClaim {
            client_id: &client.client_id,
            user: client.username.as_ref(),
            resume: !clean_start,
            bound_to_user: self.config.sessions_bound_to_user,
            expiry_interval,
        };
        loop {
            let opened = self.sessions.open(&claim)?;
            if let Some(old) = opened.replaced {
                self.end_session(&old);
            }
            let id = AttachId(self.next_attach.fetch_add(1, Ordering::Relaxed));
            // A resumed session may have been ended by a concurrent clean start in between:
            // then open again, which now finds that one's new session.
            if opened.session.attach(id, expiry_interval) {
                return Ok(Attached {
                    session: opened.session,
                    session_present: opened.resumed,
                    id,
                });
            }
        }
    }

    /// Called when the owning connection ends. Ends the session now (expiry 0) or when its
    /// expiry interval runs out without a reconnect.
    pub fn detach(self: &Arc<Self>, session: &Arc<Session>, id: AttachId) {
        let Some(expiry) = session.detach(id) else {
            return;
        };
        if expiry == 0 {
            self.remove_session(session);
        } else if expiry != u32::MAX {
            self.expire_after(session, id, Duration::from_secs(u64::from(expiry)));
        }
    }

    /// Ends `session` after `after` unless a client attached since the attach `id` ended.
    fn expire_after(self: &Arc<Self>, session: &Arc<Session>, id: AttachId, after: Duration) {
        let broker = self.clone();
        let session = session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if session.idle_since(id) {
                broker.remove_session(&session);
            }
        });
    }

    fn remove_session(&self, session: &Arc<Session>) {
        self.sessions.remove(session);
        self.end_session(session);
    }

    /// Ends a session (its owner, if any, is woken to close) and removes its subscriptions
    /// from the tree.
    fn end_session(&self, session: &Arc<Session>) {
        let filters = session.end();
        self.change_tree(|tree| {
            for f in &filters {
                let (share, filter) = split_share(f);
                tree.remove(filter, share, &session.client_id);
            }
        });
    }

    /// Starts a graceful shutdown: listeners stop accepting and every attached connection is
    /// woken to close with 0x8B.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
        for s in self.sessions.sessions() {
            s.wake();
        }
    }

    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions.get(client_id)
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.read().len()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// Adds or replaces a subscription. `filter` must be valid (shared form allowed).
    /// Returns whether the subscription existed before.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
        reads: Option<Arc<ReadCheck>>,
    ) -> bool {
        let Some(existed) = session.add_subscription(filter, options, identifier, reads.is_some())
        else {
            return false;
        };
        self.change_tree(|tree| add_to_tree(tree, session, filter, options, identifier, reads));
        existed
    }

    /// Returns whether the subscription existed.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        let existed = session.remove_subscription(filter);
        if existed {
            let (share, inner) = split_share(filter);
            self.change_tree(|tree| tree.remove(inner, share, &session.client_id));
        }
        existed
    }

    /// Routes a message to every matching subscription and updates the retained store. Read
    /// checks not answered from their caches finish in a task of their own.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> Routed {
        let (routed, pending) = self.route(&msg);
        if !pending.is_empty() {
            let broker = self.clone();
            tokio::spawn(async move {
                broker.resolve_reads(&msg, pending).await;
            });
        }
        routed
    }

    /// Every change to the subscription tree goes through here: the generation moves while the
    /// write lock is held, so a reader that sees the old generation routes as before the change.
    fn change_tree<R>(&self, change: impl FnOnce(&mut TopicTree<Subscriber>) -> R) -> R {
        let mut tree = self.subscriptions.write();
        let out = change(&mut tree);
        self.tree_generation.fetch_add(1, Ordering::Release);
        out
    }

    /// Publishes the will of the connection that attached as `id`: now, or after its delay
    /// unless the session is resumed first. A session that has ended publishes it at once.
    pub fn schedule_will(
        self: &Arc<Self>,
        session: &Arc<Session>,
        msg: Message,
        delay: u32,
        id: AttachId,
    ) {
        let delay = if session.has_ended() {
            0
        } else if session.resumed_after(id) {
            // Resumed by a new connection: a delayed will is cancelled, an immediate one
            // still goes out (spec 3.1.3.2.2).
            if delay > 0 {
                return;
            }
            0
        } else {
            delay.min(session.expiry_interval())
        };
        let msg = Arc::new(msg);
        if delay == 0 {
            self.publish(msg);
            return;
        }
        // Kept in the journal (a durable session) so a restart does not forget it.
        let at_ms = crate::persist::record::now_ms() + u64::from(delay) * 1000;
        session.store_will(&msg, at_ms);
        self.publish_will_after(session, msg, Duration::from_secs(u64::from(delay)), id);
    }

    /// Publishes a delayed will after `delay` unless the session was resumed after `id`.
    fn publish_will_after(
        self: &Arc<Self>,
        session: &Arc<Session>,
        msg: Arc<Message>,
        delay: Duration,
        id: AttachId,
    ) {
        let broker = self.clone();
        let session = session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if !session.resumed_after(id) {
                session.clear_will();
                broker.publish(msg);
            }
        });
    }

    /// Publishes a message from the broker itself (no publisher, no hooks).
    pub fn publish_internal(
        self: &Arc<Self>,
        topic: &str,
        payload: impl Into<bytes::Bytes>,
        retain: bool,
    ) {
        self.publish(Arc::new(Message::new(
            topic,
            payload,
            QoS::AtMostOnce,
            retain,
        )));
    }
}

/// Puts a session's subscription into the router's tree (shared form allowed).
fn add_to_tree(
    tree: &mut TopicTree<Subscriber>,
    session: &Arc<Session>,
    filter: &str,
    options: SubscriptionOptions,
    identifier: Option<u32>,
    reads: Option<Arc<ReadCheck>>,
) {
    let (share, inner) = split_share(filter);
    let entry = Subscriber {
        session: session.clone(),
        options,
        identifier,
        reads,
    };
    tree.insert(inner, share, entry);
}

fn split_share(filter: &str) -> (Option<&str>, &str) {
    match topic::parse_shared(filter) {
        Some(Ok((group, inner))) => (Some(group), inner),
        _ => (None, filter),
    }
}
