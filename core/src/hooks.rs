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
    /// Admission and authorization outcomes ([`Event::ClientConnack`],
    /// [`Event::AuthnComplete`], [`Event::AuthzComplete`]): one per CONNECT and per publish,
    /// so only built for a hook that asks (client-event observers do not pay for them).
    pub const AUTH_EVENTS: Self = Self(64);
    pub const ALL: Self = Self(127);

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
    /// Set when a v5 client asked for enhanced authentication.
    pub auth: Option<AuthStep>,
}

/// One step of MQTT 5 enhanced authentication: the method and data of a CONNECT or AUTH
/// packet, and what the hook that continued the exchange last returned.
#[derive(Debug, Clone)]
pub struct AuthStep {
    pub method: String,
    pub data: Option<Bytes>,
    /// The continuing hook's own state from its previous challenge; empty on the first step.
    pub state: Vec<u8>,
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
    /// A client that is not a connection: a restored subscription's owner, an operator's
    /// publish, a rule test's sample. No address, MQTT 5, the given listener name.
    pub fn internal(client_id: Arc<str>, username: Option<Arc<str>>, listener: &str) -> Self {
        Self {
            client_id,
            username,
            peer_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            protocol: ProtocolVersion::V5,
            listener: listener.into(),
            cert_common_name: None,
            attributes: Vec::new(),
            extension: Default::default(),
        }
    }

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
    /// Let the client in at the end of an enhanced authentication exchange, with
    /// Authentication Data for the CONNACK.
    AllowWithData(Vec<(String, String)>, Bytes),
    /// Refuse with this CONNACK reason (mapped to a v3 return code for older clients).
    Deny(ReasonCode),
    /// No opinion: ask the next hook.
    Ignore,
    /// Enhanced authentication goes on: send the client an AUTH packet with this data; its
    /// answer comes back to the same hook with `state`.
    Continue(AuthChallenge),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthChallenge {
    pub data: Bytes,
    pub state: Vec<u8>,
}

/// The chain's answer to a CONNECT (or to one step of an enhanced exchange).
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Admit {
        attributes: Vec<(String, String)>,
        /// Authentication Data for the CONNACK.
        auth_data: Option<Bytes>,
    },
    /// The hook with id `hook` challenges the client.
    Challenge {
        hook: String,
        challenge: AuthChallenge,
    },
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

/// What a client asked for at CONNECT, as events report it.
#[derive(Debug, Clone, Copy)]
pub struct ConnectFacts {
    /// The keep-alive the client asked for, in seconds.
    pub keep_alive: u16,
    pub clean_start: bool,
    /// The session expiry granted, in seconds (`u32::MAX`: never).
    pub session_expiry: u32,
    /// When its CONNECT was read.
    pub at: std::time::SystemTime,
}

/// Something that happened, for observers. Never awaited by the routing path.
#[derive(Debug, Clone)]
pub enum Event {
    ClientConnected {
        client: Arc<ClientInfo>,
        facts: ConnectFacts,
    },
    /// A CONNACK went to the client: `code` is success or why it was refused.
    ClientConnack {
        client: Arc<ClientInfo>,
        facts: ConnectFacts,
        code: ReasonCode,
    },
    /// Authentication decided: `code` is success or why the client was refused.
    AuthnComplete {
        client: Arc<ClientInfo>,
        code: ReasonCode,
    },
    /// An authorization check decided a publish or a subscription.
    AuthzComplete {
        client: Arc<ClientInfo>,
        access: Access,
        topic: Arc<str>,
        allowed: bool,
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
        to: Arc<ClientInfo>,
        msg: Arc<Message>,
    },
    /// Acknowledged (PUBACK / PUBCOMP) by the receiving client `to`.
    MessageAcked {
        to: Arc<ClientInfo>,
        msg: Arc<Message>,
    },
    /// Not delivered to the client id `to` (or to anyone, when `None`); `receiver` is that
    /// client's record when it was connected.
    MessageDropped {
        to: Option<Arc<str>>,
        receiver: Option<Arc<ClientInfo>>,
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
            Event::ClientConnack { .. }
            | Event::AuthnComplete { .. }
            | Event::AuthzComplete { .. } => HookSet::AUTH_EVENTS,
            _ => HookSet::MESSAGE_EVENTS,
        }
    }
}

#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// What logs and status pages call this hook (a plugin's file stem, `rules`, …).
    fn name(&self) -> &str;
    /// What the chain knows this hook by: kind and, for files, the canonical path
    /// (`plugin:/srv/plugins/acl.wasm`, `builtin:acl`, `rules`). Two hooks never share one, so a
    /// plugin named `rules.wasm` or two `acl.wasm` in different folders cannot evict each other.
    fn id(&self) -> &str {
        self.name()
    }
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
    /// A [`Event::MessageAccepted`], observed like `on_event`. A hook whose queue is full may
    /// instead return a wait: the publisher is held (its acknowledgement and its next message)
    /// until the wait ends, which is how the rule engine's `overflow = "backpressure"` works.
    fn on_accepted(&self, e: &Event) -> Option<Wait> {
        self.on_event(e);
        None
    }
}

/// What a publisher waits for before it goes on (see [`Hook::on_accepted`]).
pub type Wait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

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

/// A hook whose id the chain already holds.
#[derive(Debug, thiserror::Error)]
#[error("a hook with id {0:?} is already registered")]
pub struct DuplicateHook(pub String);

impl HookChain {
    /// Adds a hook at `priority`; hooks of equal priority keep insertion order. A hook whose id
    /// is already in the chain is refused (use [`HookChain::replace`] to swap a version).
    pub fn register(&self, priority: i32, hook: Arc<dyn Hook>) -> Result<(), DuplicateHook> {
        let mut duplicate = false;
        self.inner.rcu(|cur| {
            duplicate = cur.hooks.iter().any(|(_, h)| h.id() == hook.id());
            if duplicate {
                return cur.clone();
            }
            let mut hooks = cur.hooks.clone();
            hooks.push((priority, hook.clone()));
            hooks.sort_by_key(|(p, _)| *p);
            ChainInner::new(hooks)
        });
        if duplicate {
            return Err(DuplicateHook(hook.id().to_string()));
        }
        self.publish_interests();
        Ok(())
    }

    /// Puts `hook` in place of the hook with the same id, in one atomic swap: calls in flight
    /// finish on the old hook and no call ever sees neither (hot reload).
    pub fn replace(&self, priority: i32, hook: Arc<dyn Hook>) {
        let id = hook.id().to_string();
        self.inner.rcu(|cur| {
            let mut hooks: Vec<_> = cur
                .hooks
                .iter()
                .filter(|(_, h)| h.id() != id)
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

    /// Ids of the registered hooks, in call order.
    pub fn ids(&self) -> Vec<String> {
        self.inner
            .load()
            .hooks
            .iter()
            .map(|(_, h)| h.id().to_string())
            .collect()
    }

    /// Removes the hook with id `id`.
    pub fn unregister(&self, id: &str) {
        self.inner.rcu(|cur| {
            let hooks = cur
                .hooks
                .iter()
                .filter(|(_, h)| h.id() != id)
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

    /// The first answer that is not `Ignore`, and, for a challenge, the id of the hook that
    /// gave it.
    pub async fn authenticate(&self, c: &ConnectInfo) -> (AuthDecision, Option<String>) {
        let inner = self.inner.load_full();
        for (_, h) in &inner.hooks {
            if h.interests().contains(HookSet::AUTHENTICATE) {
                match h.authenticate(c).await {
                    AuthDecision::Ignore => continue,
                    // Only a challenge needs to know who gave it (and an id costs a copy).
                    d => {
                        let id = matches!(d, AuthDecision::Continue(_)).then(|| h.id().to_string());
                        return (d, id);
                    }
                }
            }
        }
        (AuthDecision::Ignore, None)
    }

    /// The whole CONNECT-time decision: the chain's answer, or the listener's anonymous policy
    /// when every hook ignores. A client that named an Authentication Method nobody answered
    /// is refused with Bad Authentication Method (spec 4.12).
    pub async fn admit(
        &self,
        req: &ConnectInfo,
        allow_anonymous: bool,
    ) -> Result<Admission, ReasonCode> {
        let (decision, hook) = if self.wants(HookSet::AUTHENTICATE) {
            self.authenticate(req).await
        } else {
            (AuthDecision::Ignore, None)
        };
        match decision {
            AuthDecision::Ignore if req.auth.is_some() => {
                Err(ReasonCode::BAD_AUTHENTICATION_METHOD)
            }
            AuthDecision::Ignore if allow_anonymous => Ok(Admission::Admit {
                attributes: Vec::new(),
                auth_data: None,
            }),
            AuthDecision::Ignore if req.client.username.is_some() => {
                Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
            }
            AuthDecision::Ignore => Err(ReasonCode::NOT_AUTHORIZED),
            d => Self::settle(d, hook.unwrap_or_default(), req.auth.is_some()),
        }
    }

    /// The next step of an enhanced exchange, answered by the hook that continued it only.
    pub async fn continue_auth(
        &self,
        hook: &str,
        req: &ConnectInfo,
    ) -> Result<Admission, ReasonCode> {
        let inner = self.inner.load_full();
        let Some((_, h)) = inner.hooks.iter().find(|(_, h)| h.id() == hook) else {
            // Removed mid-exchange: nobody can finish it.
            return Err(ReasonCode::NOT_AUTHORIZED);
        };
        match h.authenticate(req).await {
            AuthDecision::Ignore => Err(ReasonCode::NOT_AUTHORIZED),
            d => Self::settle(d, hook.to_string(), true),
        }
    }

    fn settle(d: AuthDecision, hook: String, enhanced: bool) -> Result<Admission, ReasonCode> {
        match d {
            AuthDecision::Allow(attributes) => Ok(Admission::Admit {
                attributes,
                auth_data: None,
            }),
            AuthDecision::AllowWithData(attributes, data) => Ok(Admission::Admit {
                attributes,
                auth_data: Some(data),
            }),
            AuthDecision::Deny(code) => Err(code),
            // A challenge only makes sense to a client that asked for a method.
            AuthDecision::Continue(challenge) if enhanced => {
                Ok(Admission::Challenge { hook, challenge })
            }
            AuthDecision::Continue(_) | AuthDecision::Ignore => Err(ReasonCode::NOT_AUTHORIZED),
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

    /// Hands an accepted message to its observers; returns what the publisher must wait for
    /// (nothing, unless a hook's queue is full and it asked for backpressure).
    pub fn emit_accepted(&self, make: impl FnOnce() -> Event) -> Option<Wait> {
        if !self.wants(HookSet::MESSAGE_ACCEPTED) {
            return None;
        }
        let inner = self.inner.load();
        let event = make();
        let mut waits: Vec<Wait> = Vec::new();
        for (_, h) in &inner.hooks {
            if h.interests().contains(HookSet::MESSAGE_ACCEPTED) {
                waits.extend(h.on_accepted(&event));
            }
        }
        match waits.len() {
            0 => None,
            1 => waits.pop(),
            _ => Some(Box::pin(async move {
                for w in waits {
                    w.await;
                }
            })),
        }
    }

    /// Builds the event only if some hook observes that kind.
    pub fn emit(&self, make: impl FnOnce() -> Event) {
        let observed = HookSet::CLIENT_EVENTS.0
            | HookSet::MESSAGE_EVENTS.0
            | HookSet::MESSAGE_ACCEPTED.0
            | HookSet::AUTH_EVENTS.0;
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
