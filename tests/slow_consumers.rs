//! Slow consumers (issue 9): a subscriber that stops reading, or reads a trickle, must not hold
//! publishers back for longer than `backpressure_wait_ms`, must not cost a healthy subscriber
//! a message, and is cut off by `write_timeout_s` or the `disconnect` policy when so configured.

mod common;
use common::*;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchyard_core::config::SlowSubscriberPolicy;
use switchyard_core::protocol::{self, Packet, ProtocolVersion, ReasonCode};

const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 1500;

/// Connects a subscriber to `t/#` at QoS 1 with a tiny receive buffer, then never reads again.
async fn stalled_subscriber(addr: SocketAddr, id: &str, clean: bool) -> Raw {
    let mut raw = Raw::connect_small(addr, 4096).await;
    let mut c = connect_packet(ProtocolVersion::V5, id);
    c.clean_start = clean;
    if !clean {
        c.properties.session_expiry_interval = Some(600);
    }
    assert_eq!(raw.handshake_with(c).await.code, ReasonCode::SUCCESS);
    let options = protocol::SubscriptionOptions {
        qos: protocol::QoS::AtLeastOnce,
        ..Default::default()
    };
    raw.send(&Packet::Subscribe(protocol::Subscribe {
        packet_id: 1,
        filters: vec![("t/#".into(), options)],
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    raw
}

/// Publishes `PER_PUBLISHER` QoS 1 messages of 512 bytes on `t/{index}`; returns the longest
/// the publisher went without a PUBACK once it had started.
async fn publish_all(addr: SocketAddr, index: usize) -> Duration {
    let mut opts = v4::options(addr, &format!("pub-{index}"));
    opts.set_inflight(50);
    let mut c = v4::connect(opts).await;
    let client = c.client.clone();
    let sender = tokio::spawn(async move {
        for seq in 0..PER_PUBLISHER {
            let mut payload = format!("{index}:{seq}:").into_bytes();
            payload.resize(512, b'.');
            let topic = format!("t/{index}");
            client
                .publish(topic, v4::QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    });
    let mut acked = 0;
    let mut longest = Duration::ZERO;
    let mut last = Instant::now();
    while acked < PER_PUBLISHER {
        c.expect(|p| matches!(p, v4::Packet::PubAck(_)).then_some(()))
            .await;
        acked += 1;
        longest = longest.max(last.elapsed());
        last = Instant::now();
    }
    sender.await.unwrap();
    longest
}

/// Runs the publishers against a healthy QoS 1 subscriber; returns the longest any publisher
/// was held and how many distinct messages the healthy subscriber got.
async fn run_publishers(addr: SocketAddr) -> (Duration, usize) {
    let mut healthy = v4::connect(v4::options(addr, "healthy")).await;
    healthy.subscribe("t/#", v4::QoS::AtLeastOnce).await;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| tokio::spawn(publish_all(addr, i)))
        .collect();
    let mut seen = HashSet::new();
    while seen.len() < PUBLISHERS * PER_PUBLISHER {
        let p = healthy.next_publish().await;
        let text = String::from_utf8_lossy(&p.payload);
        let key: Vec<&str> = text.splitn(3, ':').take(2).collect();
        seen.insert(key.join(":"));
    }
    let mut longest = Duration::ZERO;
    for p in publishers {
        longest = longest.max(p.await.unwrap());
    }
    (longest, seen.len())
}

fn config(policy: SlowSubscriberPolicy) -> switchyard_core::CoreConfig {
    let mut cfg = test_config();
    cfg.mqtt.max_queued_messages = 1000;
    cfg.mqtt.backpressure_wait_ms = 500;
    cfg.mqtt.slow_subscriber = policy;
    cfg.mqtt.write_timeout_s = 0;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_holds_publishers_back_only_briefly() {
    let broker = start(config(SlowSubscriberPolicy::Drop)).await;
    let addr = tcp_addr(&broker);
    let _stalled = stalled_subscriber(addr, "stalled", true).await;
    let (longest, got) = run_publishers(addr).await;
    // Nothing lost for the client that keeps up.
    assert_eq!(got, PUBLISHERS * PER_PUBLISHER);
    // Publishers waited for the stalled one once, for at most about a fifth of
    // backpressure_wait_ms (it drained nothing); before, every publisher waited 2 s.
    assert!(longest < Duration::from_millis(1500), "held {longest:?}");
    assert_eq!(limit_hits(&broker, "slow_subscriber").await, 1);
    // Still connected (policy "drop"): only its overflow was dropped.
    let stalled = broker.broker.session("stalled").expect("session");
    assert!(
        stalled.is_connected(),
        "the stalled client was disconnected"
    );
}

/// Polls `/metrics` until `limit` has been hit `n` times (the clients cannot see it).
async fn wait_for_limit(broker: &switchyard::Running, limit: &str, n: u64) {
    let deadline = Instant::now() + WAIT;
    while limit_hits(broker, limit).await < n {
        assert!(Instant::now() < deadline, "{limit} not hit {n} times");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disconnect_policy_closes_a_slow_subscriber_and_keeps_its_session() {
    let broker = start(config(SlowSubscriberPolicy::Disconnect)).await;
    let addr = tcp_addr(&broker);
    let stalled = stalled_subscriber(addr, "stalled-persistent", false).await;
    let (longest, got) = run_publishers(addr).await;
    assert_eq!(got, PUBLISHERS * PER_PUBLISHER);
    assert!(longest < Duration::from_millis(1500), "held {longest:?}");
    assert!(limit_hits(&broker, "slow_subscriber").await >= 1);
    // The server closed the stalled client's socket (it reads what was buffered, then EOF).
    let mut stalled = stalled;
    stalled.expect_close().await;
    let session = broker
        .broker
        .session("stalled-persistent")
        .expect("session");
    wait_until("the stalled client is gone", || !session.is_connected()).await;
    // Its persistent session kept a full queue of QoS 1 messages for when it comes back.
    let mut back = Raw::connect(addr).await;
    let mut c = connect_packet(ProtocolVersion::V5, "stalled-persistent");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let ack = back.handshake_with(c).await;
    assert!(ack.session_present);
    assert!(matches!(back.recv().await, Some(Packet::Publish(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_disconnected_at_the_write_timeout() {
    let mut cfg = config(SlowSubscriberPolicy::Drop);
    cfg.mqtt.write_timeout_s = 1;
    let broker = start(cfg).await;
    let addr = tcp_addr(&broker);
    let mut stalled = stalled_subscriber(addr, "zero-window", true).await;
    let publisher = v4::connect(v4::options(addr, "filler")).await;
    // QoS 0, so nothing waits for anyone: only the write deadline can end the stalled socket.
    // 16 MB: more than the kernel buffers (a loopback socket may buffer a few megabytes).
    for _ in 0..4000 {
        publisher
            .client
            .publish("t/x", v4::QoS::AtMostOnce, false, vec![b'z'; 4096])
            .await
            .unwrap();
    }
    // Not reading (reading would let the writes through): the deadline alone must fire.
    wait_for_limit(&broker, "write_timeout", 1).await;
    stalled.expect_close().await;
    assert_eq!(limit_hits(&broker, "write_timeout").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_queue_limit_does_not_let_an_online_queue_grow_unchecked() {
    // Half of a million is where the queue limit alone would start holding publishers; the
    // drain-rate mark (backpressure_queue_ms, at least 1,024 messages) comes long before.
    let mut cfg = config(SlowSubscriberPolicy::Drop);
    cfg.mqtt.max_queued_messages = 1_000_000;
    let broker = start(cfg).await;
    let addr = tcp_addr(&broker);
    let _stalled = stalled_subscriber(addr, "stalled", true).await;
    let (longest, got) = run_publishers(addr).await;
    assert_eq!(got, PUBLISHERS * PER_PUBLISHER);
    // 6,000 messages passed the mark: the publishers were held, the stalled subscriber was
    // found not to drain and marked slow once, and publishing went on.
    assert_eq!(limit_hits(&broker, "slow_subscriber").await, 1);
    assert!(longest < Duration::from_millis(1500), "held {longest:?}");
    let depth = broker.broker.session("stalled").expect("session").queued();
    assert!(
        depth >= 1024,
        "the stalled one keeps what it was sent: {depth}"
    );
}
