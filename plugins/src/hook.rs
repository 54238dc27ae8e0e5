//! A loaded plugin as a link of the core's hook chain: each [`Hook`] method becomes a guest
//! call, with `on_error` applied to failed calls and optional caching of authorize answers.

use crate::bindings::wit;
use crate::call::{Call, Observed, Reply};
use crate::convert::*;
use crate::host::ClientRef;
use crate::runtime::WasmPlugin;
use crate::settings::OnError;
use async_trait::async_trait;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::hooks::{
    Access, AclDecision, AuthChallenge, AuthDecision, ClientInfo, ConnectInfo, Event, Hook,
    HookSet, MessageDecision,
};
use switchyard_core::protocol::{QoS, ReasonCode};
use switchyard_core::{topic, Message};

/// A loaded plugin as a link of the hook chain.
pub struct PluginHook(pub Arc<WasmPlugin>);

impl PluginHook {
    /// Queues an event for the plugin's event worker; a full queue drops it (counted).
    fn send_event(
        &self,
        tx: &tokio::sync::mpsc::Sender<(ClientRef, Observed)>,
        client: ClientRef,
        event: Observed,
    ) {
        if tx.try_send((client, event)).is_err() {
            self.0.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The plugin's answer, or the `on_error` answer and `false` when the call failed (a
    /// failed call's answer is never cached).
    async fn authorize_uncached(
        &self,
        client: &ClientRef,
        a: Access,
        t: &str,
        q: QoS,
    ) -> (AclDecision, bool) {
        let op = match a {
            Access::Publish => wit::Access::Publish,
            Access::Subscribe => wit::Access::Subscribe,
            Access::Read => wit::Access::Read,
        };
        let qos = qos_of(q);
        match self.0.run(Call::Authorize(client, op, t, qos)).await {
            Some(Reply::Acl(wit::AclResult::Allow)) => (AclDecision::Allow, true),
            Some(Reply::Acl(wit::AclResult::Deny(r))) => (AclDecision::Deny(reason_of(r)), true),
            // Only a subscription can be granted per topic; elsewhere `filter` means allow.
            Some(Reply::Acl(wit::AclResult::Filter)) if a == Access::Subscribe => {
                (AclDecision::Filter, true)
            }
            Some(Reply::Acl(wit::AclResult::Filter)) => (AclDecision::Allow, true),
            Some(Reply::Acl(wit::AclResult::Ignore)) => (AclDecision::Ignore, true),
            _ => {
                let d = match self.0.settings.on_error {
                    OnError::Deny => AclDecision::Deny(ReasonCode::NOT_AUTHORIZED),
                    OnError::Allow => AclDecision::Allow,
                    OnError::Ignore => AclDecision::Ignore,
                };
                (d, false)
            }
        }
    }
}

impl WasmPlugin {
    /// This plugin as a hook for `HookChain::register`.
    pub fn hook(self: &Arc<Self>) -> Arc<dyn Hook> {
        Arc::new(PluginHook(self.clone()))
    }
}

#[async_trait]
impl Hook for PluginHook {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn id(&self) -> &str {
        &self.0.id
    }

    fn interests(&self) -> HookSet {
        self.0.interests
    }

    async fn authenticate(&self, c: &ConnectInfo) -> AuthDecision {
        let req = wit::ConnectRequest {
            client: client_of(&c.client),
            password: c.password.as_ref().map(|p| p.to_vec()),
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
            auth: c.auth.as_ref().map(|a| wit::AuthStep {
                method: a.method.clone(),
                data: a.data.as_ref().map(|d| d.to_vec()),
                state: a.state.clone(),
            }),
        };
        match self.0.run(Call::Authenticate(req)).await {
            Some(Reply::Auth(wit::AuthResult::Allow(ok))) => match ok.data {
                Some(data) => AuthDecision::AllowWithData(ok.attributes, data.into()),
                None => AuthDecision::Allow(ok.attributes),
            },
            Some(Reply::Auth(wit::AuthResult::Deny(r))) => AuthDecision::Deny(reason_of(r)),
            Some(Reply::Auth(wit::AuthResult::Ignore)) => AuthDecision::Ignore,
            Some(Reply::Auth(wit::AuthResult::Continue(c))) => {
                AuthDecision::Continue(AuthChallenge {
                    data: c.data.into(),
                    state: c.state,
                })
            }
            _ => match self.0.settings.on_error {
                OnError::Deny => AuthDecision::Deny(ReasonCode::NOT_AUTHORIZED),
                OnError::Allow => AuthDecision::Allow(Vec::new()),
                OnError::Ignore => AuthDecision::Ignore,
            },
        }
    }

    async fn authorize(&self, c: &ClientInfo, a: Access, t: &str, q: QoS) -> AclDecision {
        let ttl = self.0.settings.authorize_cache_ms;
        let guest = guest_client(c);
        if ttl == 0 {
            return self.authorize_uncached(&guest.client, a, t, q).await.0;
        }
        // Keyed by the load serial: a hot-swapped version never inherits the old one's answers.
        let key = (self.0.serial, access_code(a), t.to_string());
        if let Some((d, at)) = guest.decisions.lock().get(&key) {
            if at.elapsed() < Duration::from_millis(ttl) {
                return *d;
            }
        }
        let (decision, answered) = self.authorize_uncached(&guest.client, a, t, q).await;
        if answered {
            let mut cache = guest.decisions.lock();
            if cache.len() >= DECISION_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, (decision, std::time::Instant::now()));
        }
        decision
    }
    fn on_event(&self, e: &Event) {
        let Some(tx) = self.0.events.get() else {
            return;
        };
        let (client, event) = match e {
            Event::ClientConnected { client, .. } => (client, wit::ClientEvent::Connected),
            Event::ClientDisconnected { client, reason } => {
                (client, wit::ClientEvent::Disconnected(reason.clone()))
            }
            Event::SessionSubscribed {
                client,
                filter,
                qos,
            } => (
                client,
                wit::ClientEvent::Subscribed(wit::Subscription {
                    filter: filter.clone(),
                    qos: qos_of(*qos),
                }),
            ),
            Event::SessionUnsubscribed { client, filter } => {
                (client, wit::ClientEvent::Unsubscribed(filter.clone()))
            }
            Event::MessageDelivered { to, msg } => {
                let ev = message_event(wit::MessageEventKind::Delivered, msg);
                return self.send_event(tx, cached_client(to), Observed::Message(ev));
            }
            Event::MessageAcked { to, msg } => {
                let ev = message_event(wit::MessageEventKind::Acked, msg);
                return self.send_event(tx, cached_client(to), Observed::Message(ev));
            }
            Event::MessageDropped {
                to,
                receiver,
                msg,
                reason,
            } => {
                let ev = message_event(wit::MessageEventKind::Dropped(reason.to_string()), msg);
                let client = match receiver {
                    Some(r) => cached_client(r),
                    None => offline(to.as_deref()),
                };
                return self.send_event(tx, client, Observed::Message(ev));
            }
            // Not in the plugin interface.
            Event::ClientConnack { .. }
            | Event::AuthnComplete { .. }
            | Event::AuthzComplete { .. }
            | Event::MessageAccepted { .. } => return,
        };
        self.send_event(tx, cached_client(client), Observed::Client(event));
    }

    async fn on_publish(&self, c: &ClientInfo, m: &Message) -> MessageDecision {
        if !self.0.wants_topic(&m.topic) {
            return MessageDecision::Pass;
        }
        let client = cached_client(c);
        let msg = message_of(m);
        // A failing message hook never loses the message: it passes unchanged.
        match self.0.run(Call::Publish(client, msg)).await {
            Some(Reply::Message(wit::MessageResult::Drop)) => MessageDecision::Drop,
            Some(Reply::Message(wit::MessageResult::Modify(patch))) => {
                let mut changed = m.clone();
                if let Some(t) = patch.topic.filter(|t| topic::valid_topic_name(t)) {
                    changed.topic = t.into();
                }
                if let Some(p) = patch.payload {
                    changed.payload = p.into();
                }
                if let Some(q) = patch.qos {
                    changed.qos = qos_from(q);
                }
                if let Some(r) = patch.retain {
                    changed.retain = r;
                }
                if let Some(props) = patch.user_properties {
                    changed.properties.user_properties = props;
                }
                apply_properties(
                    &mut changed,
                    patch.content_type,
                    patch.response_topic,
                    patch.correlation_data,
                    patch.message_expiry,
                );
                MessageDecision::Modify(Box::new(changed))
            }
            _ => MessageDecision::Pass,
        }
    }
}
