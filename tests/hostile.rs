//! Clients (and extensions) that try to knock the broker over (issue 9). So far: topics deep
//! enough to exhaust a thread's stack when the topic trees are walked.

mod common;
use common::*;
use std::sync::Arc;
use switchyard_core::hooks::{ClientInfo, Hook, HookSet, MessageDecision};
use switchyard_core::protocol::{self, ProtocolVersion, QoS, ReasonCode};
use switchyard_core::Message;

fn deep_topic(levels: usize) -> String {
    vec!["l"; levels].join("/")
}

/// A message hook that moves `deepen/…` messages to a very deep topic, as a buggy or hostile
/// plugin's patch could.
struct Deepen;

#[async_trait::async_trait]
impl Hook for Deepen {
    fn name(&self) -> &str {
        "test:deepen"
    }
    fn interests(&self) -> HookSet {
        HookSet::MESSAGE_PUBLISH
    }
    async fn on_publish(&self, _c: &ClientInfo, m: &Message) -> MessageDecision {
        if !m.topic.starts_with("deepen/") {
            return MessageDecision::Pass;
        }
        let mut deep = m.clone();
        deep.topic = deep_topic(65_535).into();
        MessageDecision::Modify(Box::new(deep))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_with_65535_levels_is_refused_and_nothing_that_deep_is_retained() {
    let broker = switchyard::Switchyard::core(test_config())
        .hook(0, Arc::new(Deepen))
        .watch_files(false)
        .start()
        .await
        .unwrap();
    let addr = tcp_addr(&broker);

    // The two-packet crash of issue 9: a CONNECT whose retained will has 65,535 levels.
    for (version, expected) in [
        (ProtocolVersion::V5, ReasonCode::TOPIC_NAME_INVALID),
        // 3.1.1 has no such code: return code 5, "not authorized", is its nearest.
        (ProtocolVersion::V311, ReasonCode(0x05)),
    ] {
        let mut c = connect_packet(version, "deep-will");
        c.will = Some(protocol::LastWill {
            topic: "/".repeat(65_534).into(),
            payload: bytes::Bytes::from_static(b"w"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
        });
        let mut raw = Raw::connect(addr).await;
        assert_eq!(raw.handshake_with(c).await.code, expected, "{version:?}");
    }

    // A retained message pushed that deep by a hook is not stored; the broker goes on.
    let mut publisher = v5::connect(v5::options(addr, "deepener")).await;
    publisher
        .client
        .publish("deepen/x", v5::QoS::AtLeastOnce, true, "deep")
        .await
        .unwrap();
    publisher.next_puback_reason().await;
    assert_eq!(broker.broker.retained_count(), 0);

    let mut watcher = v5::connect(v5::options(addr, "watcher")).await;
    watcher.subscribe("#", v5::QoS::AtLeastOnce).await;
    publisher
        .client
        .publish("after/x", v5::QoS::AtLeastOnce, true, "still here")
        .await
        .unwrap();
    assert_eq!(&watcher.next_publish().await.payload[..], b"still here");
    assert_eq!(broker.broker.retained_count(), 1);

    // No configuration can allow walks that deep.
    let err = switchyard::Config::parse("[mqtt]\nmax_topic_levels = 100000\n", "deep.toml")
        .expect_err("refused");
    assert!(err.to_string().contains("max_topic_levels"), "{err}");
}
