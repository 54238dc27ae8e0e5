//! `[persistence]`: the broker binary is killed with SIGKILL under load and started again on
//! the same folder; what it acknowledged must still be there. Raw MQTT clients choose their
//! own packet ids, so the test knows exactly which messages were acknowledged.

mod common;
use common::process::{Proc, BIN};
use common::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use switchyard_core::protocol::{
    self, Packet, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};

fn config(data: &Path, persistence: &str) -> String {
    format!(
        "[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n[http]\nenabled = false\n\
         [mqtt]\nsys_interval_s = 0\nmax_queued_messages = 100000\nmax_inflight = 100\n\
         [limits]\nmax_publish_rate = 0\nmax_publish_bytes_rate = 0\nflapping_max_connects = 0\n\
         [persistence]\ndir = \"{}\"\n{persistence}\n",
        data.display()
    )
}

/// The broker binary on `folder/data` with `persistence` settings.
fn start_broker(folder: &Path, persistence: &str) -> Proc {
    Proc::start(folder, &config(&folder.join("data"), persistence))
}

/// A persistent session: v3.1.1 with clean session off, v5 with an hour of expiry.
async fn persistent(addr: SocketAddr, version: ProtocolVersion, id: &str) -> (Raw, bool) {
    let mut raw = Raw::connect(addr).await;
    let mut c = connect_packet(version, id);
    c.clean_start = false;
    if version.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    let ack = raw.handshake_with(c).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    (raw, ack.session_present)
}

async fn subscribe(raw: &mut Raw, filter: &str) {
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            filter.into(),
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                ..Default::default()
            },
        )],
        properties: Default::default(),
    }))
    .await;
    match raw.recv().await {
        Some(Packet::SubAck(_)) => {}
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn disconnect() -> Packet {
    Packet::Disconnect(protocol::Disconnect {
        code: ReasonCode::SUCCESS,
        properties: Default::default(),
    })
}

fn publish(topic: &str, seq: u64, qos: QoS, packet_id: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id,
        payload: seq.to_string().into_bytes().into(),
        properties: Default::default(),
    })
}

/// Publishes messages `seqs` at QoS 1 one at a time (packet id = sequence number), each
/// acknowledged before the next.
async fn publish_acked(
    raw: &mut Raw,
    seqs: std::ops::RangeInclusive<u16>,
    topic: impl Fn(u16) -> String,
    retain: impl Fn(u16) -> bool,
) {
    for i in seqs {
        raw.send(&publish(
            &topic(i),
            i.into(),
            QoS::AtLeastOnce,
            i,
            retain(i),
        ))
        .await;
        assert!(matches!(raw.recv().await, Some(Packet::PubAck(_))));
    }
}

fn seq_of(p: &Publish) -> u64 {
    std::str::from_utf8(&p.payload).unwrap().parse().unwrap()
}

/// Message `i` of the load: two in seven are QoS 2.
fn qos_of(i: u64) -> QoS {
    if i % 7 < 2 {
        QoS::ExactlyOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Publishes `total` messages with at most `window` unacknowledged, calling `kill` once
/// `kill_after` are acknowledged, and keeps reading until the connection drops. Returns the
/// acknowledged messages (PUBACK, or PUBREC for QoS 2) with when each was acknowledged.
async fn publish_until_killed(
    addr: SocketAddr,
    total: u64,
    window: u64,
    kill_after: usize,
    mut kill: impl FnMut(),
) -> BTreeMap<u64, Instant> {
    let mut raw = Raw::connect(addr).await;
    raw.handshake(ProtocolVersion::V311, "load").await;
    let id_of = |i: u64| (i % 60_000) as u16 + 1;
    let mut in_flight: BTreeMap<u16, u64> = BTreeMap::new();
    let mut acked = BTreeMap::new();
    let mut next = 0;
    let mut killed = false;
    loop {
        while !killed && next < total && (in_flight.len() as u64) < window {
            let qos = qos_of(next);
            let topic = if qos == QoS::ExactlyOnce {
                "d/q2"
            } else {
                "d/q1"
            };
            in_flight.insert(id_of(next), next);
            let mut b = bytes::BytesMut::new();
            protocol::encode_packet(
                &publish(topic, next, qos, id_of(next), false),
                raw.version,
                &mut b,
            );
            if tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &b)
                .await
                .is_err()
            {
                break;
            }
            next += 1;
        }
        if !killed && acked.len() >= kill_after {
            kill();
            killed = true;
        }
        if !killed && next == total && in_flight.is_empty() {
            return acked;
        }
        match raw.recv().await {
            Some(Packet::PubAck(r)) | Some(Packet::PubRec(r)) => {
                if let Some(i) = in_flight.remove(&r.packet_id) {
                    acked.insert(i, Instant::now());
                }
            }
            Some(_) => {}
            None => return acked,
        }
    }
}

/// Reads deliveries, acknowledging each (QoS 2 in full), until `done` says enough; then reads
/// on for `quiet` to catch duplicates. Returns each message's sequence numbers as delivered.
async fn drain(
    raw: &mut Raw,
    done: impl Fn(&[(u64, bool, QoS)]) -> bool,
    quiet: Duration,
) -> Vec<(u64, bool, QoS)> {
    let mut got = Vec::new();
    let mut finished_at: Option<Instant> = None;
    loop {
        if finished_at.is_none() && done(&got) {
            finished_at = Some(Instant::now());
        }
        let packet = match finished_at {
            Some(at) => {
                let left = quiet.saturating_sub(at.elapsed());
                match tokio::time::timeout(left, raw.recv()).await {
                    Ok(p) => p,
                    Err(_) => return got,
                }
            }
            None => raw.recv().await,
        };
        match packet {
            Some(Packet::Publish(p)) => {
                got.push((seq_of(&p), p.dup, p.qos));
                let reply = match p.qos {
                    QoS::AtMostOnce => continue,
                    QoS::AtLeastOnce => {
                        Packet::PubAck(PubResponse::new(p.packet_id, ReasonCode::SUCCESS))
                    }
                    QoS::ExactlyOnce => {
                        Packet::PubRec(PubResponse::new(p.packet_id, ReasonCode::SUCCESS))
                    }
                };
                raw.send(&reply).await;
            }
            Some(Packet::PubRel(r)) => {
                raw.send(&Packet::PubComp(PubResponse::new(
                    r.packet_id,
                    ReasonCode::SUCCESS,
                )))
                .await;
            }
            Some(_) => {}
            None => panic!("the broker closed the subscriber's connection"),
        }
    }
}

/// Every acknowledged message reached `who`, QoS 2 ones exactly once.
fn assert_complete(who: &str, acked: &BTreeMap<u64, Instant>, got: &[(u64, bool, QoS)]) {
    let seen: HashSet<u64> = got.iter().map(|g| g.0).collect();
    let missing: Vec<_> = acked.keys().filter(|i| !seen.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "{who}: {} acknowledged messages lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let mut qos2 = BTreeSet::new();
    for (seq, _, qos) in got {
        if *qos == QoS::ExactlyOnce {
            assert!(
                qos2.insert(*seq),
                "{who}: QoS 2 message {seq} delivered twice"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_loses_no_acknowledged_message_at_kill_9() {
    let folder = tempfile::tempdir().unwrap();
    let broker = start_broker(folder.path(), "mode = \"sync\"");
    // Two offline persistent subscribers, one per protocol version.
    for (version, id) in [
        (ProtocolVersion::V311, "sub3"),
        (ProtocolVersion::V5, "sub5"),
    ] {
        let (mut raw, _) = persistent(broker.addr, version, id).await;
        subscribe(&mut raw, "d/#").await;
        raw.send(&disconnect()).await;
    }
    // Retained messages, acknowledged before the load.
    let mut retainer = Raw::connect(broker.addr).await;
    retainer.handshake(ProtocolVersion::V311, "retainer").await;
    publish_acked(&mut retainer, 1..=3, |i| format!("r/{i}"), |_| true).await;
    // 5,000 QoS 1 and 2,000 QoS 2 with a window of 100; SIGKILL after about half.
    let mut broker = Some(broker);
    let acked = publish_until_killed(broker.as_ref().unwrap().addr, 7000, 100, 3500, || {
        if let Some(b) = broker.take() {
            b.kill9();
        }
    })
    .await;
    assert!(acked.len() >= 3500 && acked.len() < 7000, "{}", acked.len());

    let broker = start_broker(folder.path(), "mode = \"sync\"");
    for (version, id) in [
        (ProtocolVersion::V311, "sub3"),
        (ProtocolVersion::V5, "sub5"),
    ] {
        let (mut raw, present) = persistent(broker.addr, version, id).await;
        assert!(present, "{id}: session restored");
        let got = drain(
            &mut raw,
            |got| {
                let seen: HashSet<u64> = got.iter().map(|g| g.0).collect();
                acked.keys().all(|i| seen.contains(i))
            },
            Duration::from_millis(500),
        )
        .await;
        assert_complete(id, &acked, &got);
    }
    let mut late = Raw::connect(broker.addr).await;
    late.handshake(ProtocolVersion::V5, "late").await;
    subscribe(&mut late, "r/#").await;
    let got = drain(&mut late, |g| g.len() >= 3, Duration::from_millis(200)).await;
    let retained: BTreeSet<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        retained,
        BTreeSet::from([1, 2, 3]),
        "retained messages kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_deliveries_go_out_again_with_dup_after_kill_9() {
    let folder = tempfile::tempdir().unwrap();
    let broker = start_broker(folder.path(), "mode = \"sync\"");
    let (mut sub, _) = persistent(broker.addr, ProtocolVersion::V5, "reader").await;
    subscribe(&mut sub, "d/#").await;
    let mut publisher = Raw::connect(broker.addr).await;
    publisher.handshake(ProtocolVersion::V311, "p").await;
    publish_acked(&mut publisher, 1..=40, |_| "d/x".to_string(), |_| false).await;
    // The subscriber reads all 40 and acknowledges only the first 10.
    let mut ids = BTreeMap::new();
    while ids.len() < 40 {
        if let Some(Packet::Publish(p)) = sub.recv().await {
            assert!(!p.dup);
            ids.insert(seq_of(&p), p.packet_id);
            if seq_of(&p) <= 10 {
                sub.send(&Packet::PubAck(PubResponse::new(
                    p.packet_id,
                    ReasonCode::SUCCESS,
                )))
                .await;
            }
        }
    }
    // In sync mode nothing goes to this client before its session's earlier records (the
    // ten acknowledgements) are durable: once the SUBACK is here, they are.
    subscribe(&mut sub, "other/#").await;
    broker.kill9();

    let broker = start_broker(folder.path(), "mode = \"sync\"");
    let (mut sub, present) = persistent(broker.addr, ProtocolVersion::V5, "reader").await;
    assert!(present);
    let mut got = Vec::new();
    while got.len() < 30 {
        if let Some(Packet::Publish(p)) = sub.recv().await {
            got.push((seq_of(&p), p.dup, p.packet_id));
        }
    }
    let seqs: BTreeSet<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        seqs,
        (11..=40).collect(),
        "exactly the unacknowledged ones again"
    );
    assert!(got.iter().all(|g| g.1), "redelivered with DUP: {got:?}");
    assert!(
        got.iter().all(|(seq, _, id)| ids[seq] == *id),
        "with the packet ids they had: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_mode_loses_at_most_the_flush_window() {
    const FLUSH_MS: u64 = 200;
    let folder = tempfile::tempdir().unwrap();
    let mode = format!("mode = \"periodic\"\nflush_interval_ms = {FLUSH_MS}");
    let broker = start_broker(folder.path(), &mode);
    let (mut raw, _) = persistent(broker.addr, ProtocolVersion::V5, "sub").await;
    subscribe(&mut raw, "d/#").await;
    raw.send(&disconnect()).await;
    let mut broker = Some(broker);
    let mut killed_at = None;
    // A window of 10 keeps the load going through several flushes before the kill.
    let acked = publish_until_killed(broker.as_ref().unwrap().addr, 1_000_000, 10, 20_000, || {
        killed_at = Some(Instant::now());
        if let Some(b) = broker.take() {
            b.kill9();
        }
    })
    .await;
    let killed_at = killed_at.expect("killed");
    let broker = start_broker(folder.path(), &mode);
    let (mut raw, present) = persistent(broker.addr, ProtocolVersion::V5, "sub").await;
    assert!(present);
    let got = drain_all(&mut raw).await;
    let seen: HashSet<u64> = got.into_iter().collect();
    let lost: Vec<Duration> = acked
        .iter()
        .filter(|(i, _)| !seen.contains(i))
        .map(|(_, at)| killed_at.saturating_duration_since(*at))
        .collect();
    let oldest = lost.iter().max().copied().unwrap_or_default();
    eprintln!(
        "periodic {FLUSH_MS} ms: {} of {} acknowledged messages lost, the oldest acknowledged {oldest:?} before the kill",
        lost.len(),
        acked.len()
    );
    // The window, plus one fsync and the scheduling of two processes on two cores.
    assert!(
        oldest <= Duration::from_millis(FLUSH_MS + 300),
        "lost a message acknowledged {oldest:?} before the kill"
    );
}

/// Every delivery until none arrives for 500 ms, acknowledged.
async fn drain_all(raw: &mut Raw) -> Vec<u64> {
    drain(raw, |_| true, Duration::from_millis(500))
        .await
        .into_iter()
        .map(|g| g.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_in_the_default_mode_keeps_retained_messages_and_queues() {
    let folder = tempfile::tempdir().unwrap();
    let broker = start_broker(folder.path(), "");
    let (mut raw, _) = persistent(broker.addr, ProtocolVersion::V311, "offline").await;
    subscribe(&mut raw, "q/#").await;
    raw.send(&disconnect()).await;
    let mut publisher = Raw::connect(broker.addr).await;
    publisher.handshake(ProtocolVersion::V5, "p").await;
    publish_acked(&mut publisher, 1..=20, |_| "q/t".to_string(), |i| i == 20).await;
    broker.terminate();
    let broker = start_broker(folder.path(), "");
    let (mut raw, present) = persistent(broker.addr, ProtocolVersion::V311, "offline").await;
    assert!(present);
    let got = drain(&mut raw, |g| g.len() >= 20, Duration::from_millis(200)).await;
    let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "queue kept, in order");
    let mut late = Raw::connect(broker.addr).await;
    late.handshake(ProtocolVersion::V5, "late").await;
    subscribe(&mut late, "q/#").await;
    let got = drain(&mut late, |g| !g.is_empty(), Duration::from_millis(200)).await;
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![20]);
    assert!(!broker.log_contains("damaged"));
}

/// The newest journal segment in `data`.
fn last_segment(data: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    segments.pop().expect("a journal segment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_is_reported_and_its_valid_prefix_recovered() {
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("data");
    let broker = start_broker(folder.path(), "");
    let mut publisher = Raw::connect(broker.addr).await;
    publisher.handshake(ProtocolVersion::V5, "p").await;
    publish_acked(&mut publisher, 1..=10, |i| format!("r/{i}"), |_| true).await;
    broker.kill9();
    // The last record half-written, as a crash in the middle of a write leaves it.
    let segment = last_segment(&data);
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let broker = start_broker(folder.path(), "");
    let retained = retained_seqs(broker.addr).await;
    assert_eq!(retained, (1..=9).collect::<BTreeSet<u64>>());
    assert!(
        broker.log_contains("truncated record"),
        "{:?}",
        broker.log.lock()
    );

    // Random bytes in the middle of a segment: what came before them is kept.
    let mut publisher = Raw::connect(broker.addr).await;
    publisher.handshake(ProtocolVersion::V5, "p").await;
    publish_acked(&mut publisher, 11..=20, |i| format!("s/{i}"), |_| true).await;
    broker.kill9();
    let segment = last_segment(&data);
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    for (k, b) in bytes[middle..middle + 16].iter_mut().enumerate() {
        *b ^= 0x5A ^ k as u8;
    }
    std::fs::write(&segment, &bytes).unwrap();
    let broker = start_broker(folder.path(), "");
    assert!(broker.log_contains("damaged"), "{:?}", broker.log.lock());
    let kept = retained_seqs(broker.addr).await;
    assert!(
        (1..=9).all(|i| kept.contains(&i)),
        "the snapshot taken at the last start is intact: {kept:?}"
    );
    let after: Vec<u64> = kept.iter().copied().filter(|i| *i > 10).collect();
    assert!(
        !after.is_empty() && after.len() < 10 && after.iter().zip(11..).all(|(a, b)| *a == b),
        "a prefix of the second batch is kept: {after:?} {:?}",
        broker.log.lock()
    );
    assert!(std::fs::read_dir(&data).unwrap().any(|e| e
        .unwrap()
        .path()
        .extension()
        .is_some_and(|x| x == "damaged")));
}

async fn retained_seqs(addr: SocketAddr) -> BTreeSet<u64> {
    let mut raw = Raw::connect(addr).await;
    raw.handshake(ProtocolVersion::V5, "look").await;
    subscribe(&mut raw, "#").await;
    drain(&mut raw, |_| true, Duration::from_millis(300))
        .await
        .into_iter()
        .map(|g| g.0)
        .collect()
}

#[test]
fn a_second_broker_on_the_same_folder_is_refused() {
    let folder = tempfile::tempdir().unwrap();
    let _first = start_broker(folder.path(), "");
    let path = folder.path().join("second.toml");
    std::fs::write(&path, config(&folder.path().join("data"), "")).unwrap();
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another broker"), "{err}");
}
