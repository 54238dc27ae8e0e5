//! The hook contract: typed extension points called by the core at CONNECT, on every PUBLISH and
//! SUBSCRIBE, and on client and message events. Plugins (WASM), rules (Rhai) and the built-in
//! password file and ACL all implement [`Hook`]; the [`HookChain`] calls them in priority order.

use crate::message::Message;
use crate::protocol::{ProtocolVersion, QoS, ReasonCode};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Which hooks a [`Hook`] wants; the chain skips the rest without building a future.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
/// A bit set; 32 bits leave room for hooks to come (a hook is one constant here).
pub struct HookSet(u32);

impl HookSet {
    pub const NONE: Self = Self(0);
    pub const AUTHENTICATE: Self = Self(1);
    pub const AUTHORIZE: Self = Self(2);
    pub const MESSAGE_PUBLISH: Self = Self(4);
    pub const CLIENT_EVENTS: Self = Self(8);
    pub const MESSAGE_EVENTS: Self = Self(16);
    /// Every message a client published and the broker routed, after all message hooks (what
    /// subscribers received). Observed without blocking: the rule engine's input.
    pub const MESSAGE_ACCEPTED: Self = Self(32);
    pub const ALL: Self = Self(63);

    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
}

impl std::ops::BitOr for HookSet {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

/// Who is connecting, as known at CONNECT time.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    pub client: ClientInfo,
    pub password: Option<Bytes>,
    pub clean_start: bool,
    pub keep_alive: u16,
    /// v5 Authentication Method, if the client asked for enhanced authentication.
    pub auth_method: Option<String>,
}

/// A connected client, shared by every hook call of its connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client_id: Arc<str>,
    pub username: Option<Arc<str>>,
    pub peer_addr: SocketAddr,
    pub protocol: ProtocolVersion,
    /// The listener's name: its kind and bind address, e.g. `tcp:0.0.0.0:1883`.
    pub listener: Arc<str>,
    /// Common name of a verified client certificate (mTLS listeners).
    pub cert_common_name: Option<Arc<str>>,
    /// Set by the authenticating hook (tenant, roles, allowed topics…).
    pub attributes: Vec<(String, String)>,
    /// A slot where a hook may cache its own form of this client (the WASM host keeps the
    /// client as the guest sees it), so it is built once per connection, not once per call.
    pub extension: std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
}

impl ClientInfo {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Publish,
    /// A subscription, asked with its filter (wildcards included).
    Subscribe,
    /// May this subscriber receive a message on this topic? Asked only for subscriptions that
    /// were granted with [`AclDecision::Filter`], once per subscription and topic (cached).
    Read,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AuthDecision {
    /// Let the client in, with attributes for later hooks.
    Allow(Vec<(String, String)>),
    /// Refuse with this CONNACK reason (mapped to a v3 return code for older clients).
    Deny(ReasonCode),
    /// No opinion: ask the next hook.
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclDecision {
    Allow,
    Deny(ReasonCode),
    /// For a subscription: grant it, but deliver only what an [`Access::Read`] check allows,
    /// topic by topic. The answer for a wildcard filter that overlaps a denied tree without
    /// lying inside it (Mosquitto's read model: `#` next to `deny secret/x` is granted, and
    /// `secret/x` is not delivered).
    Filter,
    Ignore,
}

#[derive(Debug, Clone)]
pub enum MessageDecision {
    Pass,
    Drop,
    /// Boxed: a message is large and most decisions are `Pass`.
    Modify(Box<Message>),
}

/// Something that happened, for observers. Never awaited by the routing path.
#[derive(Debug, Clone)]
pub enum Event {
    ClientConnected {
        client: Arc<ClientInfo>,
    },
    ClientDisconnected {
        client: Arc<ClientInfo>,
        /// Why the connection ended (`client disconnected` for a DISCONNECT from the client).
        reason: String,
    },
    SessionSubscribed {
        client: Arc<ClientInfo>,
        filter: String,
        qos: QoS,
    },
    SessionUnsubscribed {
        client: Arc<ClientInfo>,
        filter: String,
    },
    /// Written to the receiving client `to`.
    MessageDelivered {
        to: Arc<str>,
        msg: Arc<Message>,
    },
    /// Acknowledged (PUBACK / PUBCOMP) by the receiving client `to`.
    MessageAcked {
        to: Arc<str>,
        msg: Arc<Message>,
    },
    /// Not delivered to `to` (or to anyone, when `None`).
    MessageDropped {
        to: Option<Arc<str>>,
        msg: Arc<Message>,
        reason: &'static str,
    },
    /// A client's publish, as routed (after authorization and message hooks).
    MessageAccepted {
        client: Arc<ClientInfo>,
        msg: Arc<Message>,
    },
}

impl Event {
    fn interest(&self) -> HookSet {
        match self {
            Event::ClientConnected { .. }
            | Event::ClientDisconnected { .. }
            | Event::SessionSubscribed { .. }
            | Event::SessionUnsubscribed { .. } => HookSet::CLIENT_EVENTS,
            Event::MessageAccepted { .. } => HookSet::MESSAGE_ACCEPTED,
            _ => HookSet::MESSAGE_EVENTS,
        }
    }
}

#[async_trait]
pub trait Hook: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn interests(&self) -> HookSet;
    async fn authenticate(&self, _c: &ConnectInfo) -> AuthDecision {
        AuthDecision::Ignore
    }
    async fn authorize(&self, _c: &ClientInfo, _a: Access, _topic: &str, _q: QoS) -> AclDecision {
        AclDecision::Ignore
    }
    async fn on_publish(&self, _c: &ClientInfo, _m: &Message) -> MessageDecision {
        MessageDecision::Pass
    }
    /// Observers must not block: hand the event to a bounded queue and return.
    fn on_event(&self, _e: &Event) {}
}

struct ChainInner {
    hooks: Vec<(i32, Arc<dyn Hook>)>,
    interests: HookSet,
}

impl ChainInner {
    fn new(hooks: Vec<(i32, Arc<dyn Hook>)>) -> Arc<Self> {
        let interests = hooks
            .iter()
            .fold(HookSet::NONE, |acc, (_, h)| acc | h.interests());
        Arc::new(Self { hooks, interests })
    }
}

/// Hooks in priority order (lower first), swapped atomically on reload.
pub struct HookChain {
    inner: ArcSwap<ChainInner>,
    /// The union of every hook's interests, readable with one relaxed load: `wants` is asked
    /// several times per message and must cost nothing when no hook is registered.
    interests: AtomicU32,
    /// Bumped whenever the chain changes: cached authorization answers of an older chain
    /// (read checks) are stale.
    version: AtomicU64,
}

impl Default for HookChain {
    fn default() -> Self {
        Self {
            inner: ArcSwap::from_pointee(ChainInner {
                hooks: Vec::new(),
                interests: HookSet::NONE,
            }),
            interests: AtomicU32::new(0),
            version: AtomicU64::new(0),
        }
    }
}

impl HookChain {
    /// Adds a hook at `priority`; hooks of equal priority keep insertion order.
    pub fn register(&self, priority: i32, hook: Arc<dyn Hook>) {
        self.inner.rcu(|cur| {
            let mut hooks = cur.hooks.clone();
            hooks.push((priority, hook.clone()));
            hooks.sort_by_key(|(p, _)| *p);
            ChainInner::new(hooks)
        });
        self.publish_interests();
    }

    /// Puts `hook` in place of every hook with the same name, in one atomic swap: calls in
    /// flight finish on the old hook and no call ever sees neither (hot reload).
    pub fn replace(&self, priority: i32, hook: Arc<dyn Hook>) {
        let name = hook.name().to_string();
        self.inner.rcu(|cur| {
            let mut hooks: Vec<_> = cur
                .hooks
                .iter()
                .filter(|(_, h)| h.name() != name)
                .cloned()
                .collect();
            hooks.push((priority, hook.clone()));
            hooks.sort_by_key(|(p, _)| *p);
            ChainInner::new(hooks)
        });
        self.publish_interests();
    }

    /// Names of the registered hooks, in call order.
    pub fn names(&self) -> Vec<String> {
        self.inner
            .load()
            .hooks
            .iter()
            .map(|(_, h)| h.name().to_string())
            .collect()
    }

    /// Removes every hook called `name`.
    pub fn unregister(&self, name: &str) {
        self.inner.rcu(|cur| {
            let hooks = cur
                .hooks
                .iter()
                .filter(|(_, h)| h.name() != name)
                .cloned()
                .collect();
            ChainInner::new(hooks)
        });
        self.publish_interests();
    }

    pub fn wants(&self, set: HookSet) -> bool {
        HookSet(self.interests.load(Ordering::Relaxed)).contains(set)
    }

    fn publish_interests(&self) {
        let union = self.inner.load().interests;
        self.interests.store(union.0, Ordering::Relaxed);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Changes whenever a hook is registered, replaced or removed.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub async fn authenticate(&self, c: &ConnectInfo) -> AuthDecision {
        let inner = self.inner.load_full();
        for (_, h) in &inner.hooks {
            if h.interests().contains(HookSet::AUTHENTICATE) {
                match h.authenticate(c).await {
                    AuthDecision::Ignore => continue,
                    d => return d,
                }
            }
        }
        AuthDecision::Ignore
    }

    /// The whole CONNECT-time decision: the chain's answer, or the listener's anonymous policy
    /// when every hook ignores. Returns the client's attributes, or the refusal reason.
    pub async fn admit(
        &self,
        req: ConnectInfo,
        allow_anonymous: bool,
    ) -> Result<Vec<(String, String)>, ReasonCode> {
        let decision = if self.wants(HookSet::AUTHENTICATE) {
            self.authenticate(&req).await
        } else {
            AuthDecision::Ignore
        };
        match decision {
            AuthDecision::Allow(attrs) => Ok(attrs),
            AuthDecision::Deny(code) => Err(code),
            AuthDecision::Ignore if allow_anonymous => Ok(Vec::new()),
            AuthDecision::Ignore if req.client.username.is_some() => {
                Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
            }
            AuthDecision::Ignore => Err(ReasonCode::NOT_AUTHORIZED),
        }
    }

    pub async fn authorize(&self, c: &ClientInfo, a: Access, topic: &str, q: QoS) -> AclDecision {
        // A guard, not `load_full`: asked on every publish, and an `Arc` clone of the shared
        // chain is a counter every core writes.
        let inner = self.inner.load();
        for (_, h) in &inner.hooks {
            if h.interests().contains(HookSet::AUTHORIZE) {
                match h.authorize(c, a, topic, q).await {
                    AclDecision::Ignore => continue,
                    d => return d,
                }
            }
        }
        AclDecision::Ignore
    }

    /// Runs every message hook in order; each sees the previous one's modification.
    pub async fn on_publish(&self, c: &ClientInfo, m: Message) -> Option<Message> {
        let inner = self.inner.load();
        let mut current = m;
        for (_, h) in &inner.hooks {
            if h.interests().contains(HookSet::MESSAGE_PUBLISH) {
                match h.on_publish(c, &current).await {
                    MessageDecision::Pass => {}
                    MessageDecision::Drop => return None,
                    MessageDecision::Modify(m) => current = *m,
                }
            }
        }
        Some(current)
    }

    /// Builds the event only if some hook observes that kind.
    pub fn emit(&self, make: impl FnOnce() -> Event) {
        let observed =
            HookSet::CLIENT_EVENTS.0 | HookSet::MESSAGE_EVENTS.0 | HookSet::MESSAGE_ACCEPTED.0;
        if self.interests.load(Ordering::Relaxed) & observed == 0 {
            return;
        }
        let inner = self.inner.load();
        let event = make();
        let want = event.interest();
        if !inner.interests.contains(want) {
            return;
        }
        for (_, h) in &inner.hooks {
            if h.interests().contains(want) {
                h.on_event(&event);
            }
        }
    }
}
