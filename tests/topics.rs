//! Wildcards, `$`-topics, shared subscriptions and `$SYS` statistics.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;
use switchyard_core::protocol::{
    Packet, ProtocolVersion, ReasonCode, Subscribe, SubscriptionOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_and_dollar_topics_are_excluded() {
    // `$SYS` statistics exist (retained, refreshed every second) and `#` must not match them;
    // a client's own `$…` publish is refused outright.
    let mut cfg = test_config();
    cfg.mqtt.sys_interval_s = 1;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let mut all = v4::connect(v4::options(addr, "all")).await;
    all.subscribe("#", v4::QoS::AtMostOnce).await;
    let mut plus = v4::connect(v4::options(addr, "plus")).await;
    plus.subscribe("+/temp", v4::QoS::AtMostOnce).await;
    let publisher = v4::connect(v4::options(addr, "pub")).await;
    publisher
        .client
        .publish("$internal/temp", v4::QoS::AtMostOnce, false, "hidden")
        .await
        .unwrap();
    publisher
        .client
        .publish("room/temp", v4::QoS::AtMostOnce, false, "seen")
        .await
        .unwrap();
    assert_eq!(&all.next_publish().await.payload[..], b"seen");
    assert_eq!(&plus.next_publish().await.payload[..], b"seen");
    // Invalid filters are refused per filter, others in the same SUBSCRIBE granted (v3: 0x80).
    // rumqttc refuses to send an invalid filter, so this one goes out as raw bytes.
    let mut raw = Raw::connect(addr).await;
    raw.handshake(ProtocolVersion::V311, "filters").await;
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![
            ("ok/+".into(), SubscriptionOptions::default()),
            ("bad/#/x".into(), SubscriptionOptions::default()),
            ("bad+".into(), SubscriptionOptions::default()),
        ],
        properties: Default::default(),
    }))
    .await;
    match raw.recv().await {
        Some(Packet::SubAck(a)) => assert_eq!(
            a.codes,
            vec![ReasonCode(0), ReasonCode(0x80), ReasonCode(0x80)]
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_balance_round_robin() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut members = Vec::new();
    for i in 0..3 {
        let mut m = v5::connect(v5::options(addr, &format!("member{i}"))).await;
        m.subscribe("$share/workers/jobs/+", v5::QoS::AtLeastOnce)
            .await;
        members.push(m);
    }
    let mut plain = v5::connect(v5::options(addr, "plain")).await;
    plain.subscribe("jobs/+", v5::QoS::AtLeastOnce).await;
    let publisher = v5::connect(v5::options(addr, "boss")).await;
    for i in 0..30u32 {
        publisher
            .client
            .publish("jobs/a", v5::QoS::AtLeastOnce, false, i.to_string())
            .await
            .unwrap();
    }
    // The non-shared subscriber gets all 30; the group gets each message exactly once.
    let mut seen = HashMap::new();
    for _ in 0..30 {
        plain.next_publish().await;
    }
    for (i, m) in members.iter_mut().enumerate() {
        for _ in 0..10 {
            let p = m.next_publish().await;
            *seen
                .entry(String::from_utf8(p.payload.to_vec()).unwrap())
                .or_insert(0) += 1;
        }
        m.assert_no_publish(Duration::from_millis(100)).await;
        let _ = i;
    }
    assert_eq!(
        seen.len(),
        30,
        "each message delivered to exactly one member"
    );
    assert!(seen.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_report_broker_statistics() {
    let mut cfg = test_config();
    cfg.mqtt.sys_interval_s = 1;
    let server = start(cfg).await;
    let addr = tcp_addr(&server);
    let mut c = v4::connect(v4::options(addr, "sysmon")).await;
    c.subscribe("$SYS/broker/#", v4::QoS::AtMostOnce).await;
    c.client
        .publish("some/topic", v4::QoS::AtMostOnce, true, "r")
        .await
        .unwrap();
    let mut stats = HashMap::new();
    let wanted = [
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/uptime",
        "$SYS/broker/version",
    ];
    let retained_key = "$SYS/broker/retained messages/count";
    while !wanted.iter().all(|w| stats.contains_key(*w)) || stats[retained_key] == "0" {
        let p = c.next_publish().await;
        stats.insert(
            p.topic.clone(),
            String::from_utf8(p.payload.to_vec()).unwrap(),
        );
    }
    assert_eq!(stats["$SYS/broker/clients/connected"], "1");
    assert_eq!(stats["$SYS/broker/subscriptions/count"], "1");
    assert!(stats["$SYS/broker/version"].starts_with("switchyard"));
    let retained: u64 = stats["$SYS/broker/retained messages/count"]
        .parse()
        .unwrap();
    assert!(retained >= 1);
}

fn body(p: &v4::Publish) -> String {
    String::from_utf8(p.payload.to_vec()).unwrap()
}

/// A publisher that repeats its topic routes from its cache (issue 13) as long as the
/// subscription tree is unchanged: a SUBSCRIBE, an UNSUBSCRIBE, a session's end and a
/// resubscription at another QoS must each be seen by its very next message, and a topic with
/// more subscribers than the cache keeps still reaches all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_cached_route_follows_every_change_to_the_subscriptions() {
    let server = start(test_config()).await;
    let addr = tcp_addr(&server);
    let mut first = v4::connect(v4::options(addr, "rc-first")).await;
    first.subscribe("rc/#", v4::QoS::AtLeastOnce).await;
    first.subscribe("marker", v4::QoS::AtLeastOnce).await;
    let publisher = v4::connect(v4::options(addr, "rc-pub")).await;
    let send = |payload: &'static str, topic: &'static str| {
        let client = publisher.client.clone();
        async move {
            client
                .publish(topic, v4::QoS::AtLeastOnce, false, payload)
                .await
                .unwrap()
        }
    };
    for payload in ["a1", "a2"] {
        send(payload, "rc/t").await;
        assert_eq!(body(&first.next_publish().await), payload);
    }
    // A new subscriber: the next message reaches it.
    let mut second = v4::connect(v4::options(addr, "rc-second")).await;
    second.subscribe("rc/t", v4::QoS::AtMostOnce).await;
    send("b", "rc/t").await;
    assert_eq!(body(&first.next_publish().await), "b");
    let got = second.next_publish().await;
    assert_eq!((body(&got), got.qos), ("b".into(), v4::QoS::AtMostOnce));
    // Resubscribed at QoS 1: the next message comes at QoS 1.
    second.subscribe("rc/t", v4::QoS::AtLeastOnce).await;
    send("c", "rc/t").await;
    let got = second.next_publish().await;
    assert_eq!((body(&got), got.qos), ("c".into(), v4::QoS::AtLeastOnce));
    assert_eq!(body(&first.next_publish().await), "c");
    // Unsubscribed: the next message does not reach it. The publisher's messages keep their
    // order, so `first` getting the marker right after "d" proves "d" was not delivered.
    first.client.unsubscribe("rc/#").await.unwrap();
    first
        .expect(|p| matches!(p, v4::Packet::UnsubAck(_)).then_some(()))
        .await;
    send("d", "rc/t").await;
    send("after-d", "marker").await;
    assert_eq!(body(&second.next_publish().await), "d");
    assert_eq!(body(&first.next_publish().await), "after-d");
    // The subscriber's session ends (clean session, disconnected) and another subscribes: the
    // next message reaches the new one.
    second.client.disconnect().await.unwrap();
    second.expect_closed().await;
    let mut watcher = v4::connect(v4::options(addr, "rc-watch")).await;
    watcher.subscribe("rc/t", v4::QoS::AtLeastOnce).await;
    send("e", "rc/t").await;
    assert_eq!(body(&watcher.next_publish().await), "e");
    // More subscribers than a cache keeps (8): every one of them, every time.
    let mut many = Vec::new();
    for i in 0..12 {
        let mut c = v4::connect(v4::options(addr, &format!("rc-many{i}"))).await;
        c.subscribe("fan/t", v4::QoS::AtLeastOnce).await;
        many.push(c);
    }
    for payload in ["f1", "f2", "f3"] {
        send(payload, "fan/t").await;
    }
    for c in &mut many {
        for payload in ["f1", "f2", "f3"] {
            assert_eq!(body(&c.next_publish().await), payload);
        }
    }
}
