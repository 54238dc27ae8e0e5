//! The hook contract that plugins and rules build on: every hook point is called with what it
//! needs, decisions take effect, and the chain honours priority order and `Ignore`.

mod common;
use async_trait::async_trait;
use common::*;
use std::sync::{Arc, Mutex};
use switchyard_core::hooks::{
    Access, AclDecision, AuthDecision, ClientInfo, ConnectInfo, Event, Hook, HookSet,
    MessageDecision,
};
use switchyard_core::protocol::{ProtocolVersion, QoS, ReasonCode};
use switchyard_core::Message;

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

#[async_trait]
impl Hook for Recorder {
    fn name(&self) -> &str {
        "test:recorder"
    }
    fn interests(&self) -> HookSet {
        HookSet::ALL
    }
    async fn authenticate(&self, c: &ConnectInfo) -> AuthDecision {
        if &*c.client.client_id == "blocked" {
            return AuthDecision::Deny(ReasonCode::BANNED);
        }
        AuthDecision::Allow(vec![("role".into(), "tester".into())])
    }
    async fn authorize(&self, c: &ClientInfo, a: Access, topic: &str, _q: QoS) -> AclDecision {
        assert_eq!(
            c.attribute("role"),
            Some("tester"),
            "attributes from authenticate reach authorize"
        );
        if a == Access::Publish && topic.starts_with("forbidden/") {
            AclDecision::Deny(ReasonCode::NOT_AUTHORIZED)
        } else {
            AclDecision::Ignore
        }
    }
    async fn on_publish(&self, _c: &ClientInfo, m: &Message) -> MessageDecision {
        if m.topic.starts_with("drop/") {
            return MessageDecision::Drop;
        }
        if let Some(rest) = m.topic.strip_prefix("rewrite/") {
            let mut changed = m.clone();
            changed.topic = format!("rewritten/{rest}").into();
            changed.payload = m.payload.to_ascii_uppercase().into();
            changed
                .properties
                .user_properties
                .push(("hooked".into(), "yes".into()));
            return MessageDecision::Modify(Box::new(changed));
        }
        MessageDecision::Pass
    }
    fn on_event(&self, e: &Event) {
        let name = match e {
            Event::ClientConnected { client: c, facts } => {
                format!("connected:{}:keepalive={}", c.client_id, facts.keep_alive)
            }
            Event::ClientConnack {
                client: c, code, ..
            } => {
                format!("connack:{}:{:#04x}", c.client_id, code.0)
            }
            Event::AuthnComplete { client: c, code } => {
                format!("authn:{}:{:#04x}", c.client_id, code.0)
            }
            Event::AuthzComplete {
                client: c,
                access,
                topic,
                allowed,
            } => format!("authz:{}:{access:?}:{topic}:{allowed}", c.client_id),
            Event::ClientDisconnected { client: c, .. } => format!("disconnected:{}", c.client_id),
            Event::SessionSubscribed {
                client: c,
                filter: f,
                ..
            } => format!("subscribed:{}:{f}", c.client_id),
            Event::SessionUnsubscribed {
                client: c,
                filter: f,
            } => format!("unsubscribed:{}:{f}", c.client_id),
            Event::MessageDelivered { to, msg: m } => {
                format!("delivered:{}:{}", to.client_id, m.topic)
            }
            Event::MessageAcked { to, msg: m } => format!("acked:{}:{}", to.client_id, m.topic),
            Event::MessageDropped {
                to: id,
                msg: m,
                reason: why,
                ..
            } => {
                format!("dropped:{}:{}:{why}", id.as_deref().unwrap_or("-"), m.topic)
            }
            Event::MessageAccepted { client: c, msg: m } => {
                format!("accepted:{}:{}", c.client_id, m.topic)
            }
        };
        self.events.lock().unwrap().push(name);
    }
}

impl Recorder {
    fn has(&self, e: &str) -> bool {
        self.events.lock().unwrap().iter().any(|x| x == e)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hook_point_is_called_and_decides() {
    let mut cfg = test_config();
    cfg.mqtt.max_queued_messages = 1;
    let server = start(cfg).await;
    let rec = Arc::new(Recorder::default());
    server.broker.hooks.register(0, rec.clone()).unwrap();
    let addr = tcp_addr(&server);

    // authenticate: deny with a reason.
    let mut raw = Raw::connect(addr).await;
    assert_eq!(
        raw.handshake(ProtocolVersion::V5, "blocked").await.code,
        ReasonCode::BANNED
    );

    let mut sub = v5::connect(v5::options(addr, "watcher")).await;
    sub.subscribe("rewritten/#", v5::QoS::AtLeastOnce).await;
    sub.subscribe("drop/#", v5::QoS::AtLeastOnce).await;
    sub.subscribe("forbidden/#", v5::QoS::AtLeastOnce).await;
    let mut publisher = v5::connect(v5::options(addr, "writer")).await;

    // authorize: denied publish is refused with 0x87.
    publisher
        .client
        .publish("forbidden/x", v5::QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    let reason = publisher.next_puback_reason().await;
    assert_eq!(
        reason,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
    );
    // on_publish: dropped, then modified.
    publisher
        .client
        .publish("drop/x", v5::QoS::AtLeastOnce, false, "gone")
        .await
        .unwrap();
    publisher
        .client
        .publish("rewrite/x", v5::QoS::AtLeastOnce, false, "shout")
        .await
        .unwrap();
    let p = sub.next_publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        (&b"rewritten/x"[..], &b"SHOUT"[..])
    );
    assert_eq!(
        p.properties.unwrap().user_properties,
        vec![("hooked".to_string(), "yes".to_string())]
    );

    // events: delivered and acked for the watcher, unsubscribed, disconnected.
    wait_until("the hook saw it", || {
        rec.has("delivered:watcher:rewritten/x") && rec.has("acked:watcher:rewritten/x")
    })
    .await;
    sub.client.unsubscribe("drop/#").await.unwrap();
    sub.expect(|p| matches!(p, v5::Packet::UnsubAck(_)).then_some(()))
        .await;
    publisher.client.disconnect().await.unwrap();
    wait_until("the hook saw it", || rec.has("disconnected:writer")).await;
    assert!(rec.has("connected:watcher:keepalive=30") && rec.has("subscribed:watcher:rewritten/#"));
    // Authentication, its CONNACK and authorization outcomes, refusals included.
    assert!(rec.has("authn:blocked:0x8a") && rec.has("connack:blocked:0x8a"));
    assert!(rec.has("authn:watcher:0x00") && rec.has("connack:watcher:0x00"));
    assert!(rec.has("authz:watcher:Subscribe:rewritten/#:true"));
    assert!(rec.has("unsubscribed:watcher:drop/#"));
    // Observers see the message as routed (after the rewrite), and not what a hook dropped.
    assert!(rec.has("accepted:writer:rewritten/x"));
    assert!(!rec.has("accepted:writer:drop/x"));
    assert!(!rec.has("connected:blocked"));

    // dropped: an offline persistent session with a one-message queue overflows.
    let mut o = v5::options(addr, "offline");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    let mut off = v5::connect(o).await;
    off.subscribe("rewritten/#", v5::QoS::AtLeastOnce).await;
    off.client.disconnect().await.unwrap();
    off.expect_closed().await;
    let p2 = v5::connect(v5::options(addr, "writer2")).await;
    for _ in 0..3 {
        p2.client
            .publish("rewrite/y", v5::QoS::AtLeastOnce, false, "a")
            .await
            .unwrap();
    }
    wait_until("the hook saw it", || {
        rec.has("dropped:offline:rewritten/y:queue full")
    })
    .await;
}

/// Allows clients whose id starts with `prefix`, ignores everyone else.
struct AllowPrefix(&'static str);
/// Denies everyone.
struct DenyAll;

#[async_trait]
impl Hook for AllowPrefix {
    fn name(&self) -> &str {
        "test:allow-prefix"
    }
    fn interests(&self) -> HookSet {
        HookSet::AUTHENTICATE
    }
    async fn authenticate(&self, c: &ConnectInfo) -> AuthDecision {
        if c.client.client_id.starts_with(self.0) {
            AuthDecision::Allow(vec![])
        } else {
            AuthDecision::Ignore
        }
    }
}

#[async_trait]
impl Hook for DenyAll {
    fn name(&self) -> &str {
        "test:deny-all"
    }
    fn interests(&self) -> HookSet {
        HookSet::AUTHENTICATE
    }
    async fn authenticate(&self, _c: &ConnectInfo) -> AuthDecision {
        AuthDecision::Deny(ReasonCode::NOT_AUTHORIZED)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_runs_in_priority_order_and_ignore_passes_on() {
    let server = start(test_config()).await;
    // Registered out of order: priority decides.
    server.broker.hooks.register(20, Arc::new(DenyAll)).unwrap();
    server
        .broker
        .hooks
        .register(10, Arc::new(AllowPrefix("ok-")))
        .unwrap();
    let addr = tcp_addr(&server);
    let mut raw = Raw::connect(addr).await;
    assert_eq!(
        raw.handshake(ProtocolVersion::V5, "ok-1").await.code,
        ReasonCode::SUCCESS
    );
    let mut raw = Raw::connect(addr).await;
    assert_eq!(
        raw.handshake(ProtocolVersion::V5, "nope").await.code,
        ReasonCode::NOT_AUTHORIZED
    );
    // Removing a hook takes effect for the next connection.
    server.broker.hooks.unregister("test:deny-all");
    let mut raw = Raw::connect(addr).await;
    assert_eq!(
        raw.handshake(ProtocolVersion::V5, "nope").await.code,
        ReasonCode::SUCCESS
    );
}
