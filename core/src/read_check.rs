//! Read checks for subscriptions granted with [`AclDecision::Filter`]: a wildcard that overlaps
//! a denied tree is granted, and each topic delivered through it is checked once with
//! [`Access::Read`] and the answer cached, so the routing path pays only for subscriptions
//! that overlap deny rules, and only on a topic's first message.

use crate::hooks::{Access, AclDecision, ClientInfo, HookChain};
use crate::protocol::QoS;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Topics remembered per subscription; past this the cache starts over (a subscription to `#`
/// on a broker with unbounded topic names must not grow without limit).
const MAX_CACHED: usize = 4096;

pub struct ReadCheck {
    /// The subscriber, as the hooks see it.
    client: Arc<ClientInfo>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// The hook chain version the answers were given under.
    version: u64,
    allowed: HashMap<Arc<str>, bool>,
}

impl ReadCheck {
    pub fn new(client: Arc<ClientInfo>) -> Self {
        Self {
            client,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The cached answer for `topic` under hook chain `version`.
    pub fn cached(&self, topic: &str, version: u64) -> Option<bool> {
        let cache = self.cache.lock();
        if cache.version != version {
            return None;
        }
        cache.allowed.get(topic).copied()
    }

    /// Asks the hooks (and caches the answer). A hook that ignores the question lets the
    /// message through: the subscription itself was granted.
    pub async fn check(&self, hooks: &HookChain, topic: &Arc<str>, qos: QoS) -> bool {
        let version = hooks.version();
        if let Some(answer) = self.cached(topic, version) {
            return answer;
        }
        let allowed = !matches!(
            hooks
                .authorize(&self.client, Access::Read, topic, qos)
                .await,
            AclDecision::Deny(_)
        );
        let mut cache = self.cache.lock();
        if cache.version != version || cache.allowed.len() >= MAX_CACHED {
            cache.allowed.clear();
            cache.version = version;
        }
        cache.allowed.insert(topic.clone(), allowed);
        allowed
    }
}
