//! `loadgen`: drives an MQTT broker with many clients and reports throughput, end-to-end latency,
//! lost and duplicated messages, and the broker's CPU time per message and memory.
//!
//! It must never be the bottleneck: publishers encode many PUBLISH packets into one buffer and
//! write it with one syscall, subscribers acknowledge in batches.
//!
//! ```text
//! loadgen --port 1883 --scenario fan-in --qos 1 --publishers 16 --messages 20000 --broker-pid PID
//! ```

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_core::protocol::{
    self, Connect, Packet, Properties, ProtocolVersion, PubResponse, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Scenario {
    /// N publishers → 1 subscriber on `bench/#`.
    FanIn,
    /// 1 publisher → N subscribers on the same topic.
    FanOut,
    /// N publisher/subscriber pairs, each on its own topic.
    P2p,
    /// Open N idle connections and report the broker's memory per connection.
    Idle,
    /// N clients connect, get CONNACK and disconnect, 100 at a time: connects per second.
    Storm,
}

#[derive(Parser, Debug, Clone)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    #[arg(long, value_enum, default_value_t = Scenario::FanIn)]
    scenario: Scenario,
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Publishers (fan-in), subscribers (fan-out), pairs (p2p) or connections (idle).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Messages each publisher sends.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Unacknowledged QoS 1/2 messages a publisher keeps in flight.
    #[arg(long, default_value_t = 100)]
    inflight: usize,
    /// 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4)]
    version: u8,
    /// Messages per second per publisher; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Broker process id, to read its CPU time and RSS from /proc.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Label for the result line.
    #[arg(long, default_value = "broker")]
    label: String,
    /// Stop waiting for messages after this long without progress.
    #[arg(long, default_value_t = 3)]
    idle_timeout_s: u64,
    /// Spread client sockets over 127.0.0.1..=127.0.0.N: one source address has only ~28,000
    /// ephemeral ports towards one broker port.
    #[arg(long, default_value_t = 1)]
    source_ips: u8,
    /// Extra subscribers on the same topics that do not keep up (fan-in, fan-out): each reads
    /// `--laggard-read-bps` bytes a second (0: never reads). Their messages are not counted;
    /// the result says what the others kept.
    #[arg(long, default_value_t = 0)]
    laggards: usize,
    #[arg(long, default_value_t = 0)]
    laggard_read_bps: usize,
    /// Idle scenario: hold the connections this many seconds after measuring (soak runs).
    #[arg(long, default_value_t = 0)]
    hold_s: u64,
    /// Measured subscribers keep persistent sessions (3.1.1 clean session off, v5 an hour of
    /// session expiry): what a broker's persistence stores.
    #[arg(long)]
    persistent: bool,
}

static NEXT_SOURCE: AtomicU64 = AtomicU64::new(0);

async fn open_socket(args: &Args) -> Result<TcpStream> {
    let target = format!("{}:{}", args.host, args.port);
    if args.source_ips <= 1 {
        return TcpStream::connect(&target)
            .await
            .with_context(|| format!("connect to {target}"));
    }
    let addr: std::net::SocketAddr = tokio::net::lookup_host(&target)
        .await?
        .next()
        .context("broker address")?;
    let k = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % u64::from(args.source_ips);
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1 + k as u8], 0)))?;
    socket
        .connect(addr)
        .await
        .with_context(|| format!("connect to {target} from 127.0.0.{}", 1 + k))
}

/// Per-payload header: publisher id, sequence, send time (ns since the run's epoch).
const HEADER: usize = 16;

struct Stats {
    received: AtomicU64,
    duplicates: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    /// Messages all subscribers together should receive.
    expected: u64,
}

/// Which (publisher, sequence) pairs a subscriber has seen: tells new from duplicate.
#[derive(Default)]
struct Tracker {
    seen: std::collections::HashMap<u32, Vec<bool>>,
    unique: u64,
    duplicates: u64,
}

impl Tracker {
    /// Records one receipt; returns true if it was new.
    fn record(&mut self, publisher: u32, seq: usize, per_publisher: usize) -> bool {
        let slots = self
            .seen
            .entry(publisher)
            .or_insert_with(|| vec![false; per_publisher]);
        match slots.get_mut(seq) {
            Some(slot) if *slot => {
                self.duplicates += 1;
                false
            }
            Some(slot) => {
                *slot = true;
                self.unique += 1;
                true
            }
            None => false,
        }
    }
}

fn proc_cpu_and_rss(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    // USER_HZ is 100 on Linux.
    Some((ticks / 100.0, rss_kb))
}

fn version(v: u8) -> ProtocolVersion {
    if v == 5 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    }
}

async fn connect(
    args: &Args,
    id: &str,
    persistent: bool,
) -> Result<(OwnedReadHalf, OwnedWriteHalf, BytesMut)> {
    let stream = open_socket(args).await?;
    stream.set_nodelay(true)?;
    let (mut r, mut w) = stream.into_split();
    let v = version(args.version);
    let mut props = Properties::default();
    if v.is_v5() {
        props.receive_maximum = Some(u16::MAX);
        if persistent {
            props.session_expiry_interval = Some(3600);
        }
    }
    let c = Connect {
        protocol: v,
        clean_start: !persistent,
        keep_alive: 600,
        client_id: id.to_string(),
        will: None,
        username: None,
        password: None,
        properties: props.into(),
    };
    let mut out = BytesMut::new();
    protocol::encode_packet(&Packet::Connect(Box::new(c)), v, &mut out);
    w.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        if let Some(p) = protocol::decode_packet(&mut buf, Some(v), usize::MAX)? {
            match p {
                Packet::ConnAck(a) if a.code == ReasonCode::SUCCESS => return Ok((r, w, buf)),
                other => bail!("{id}: unexpected reply to CONNECT: {other:?}"),
            }
        }
        if r.read_buf(&mut buf).await? == 0 {
            bail!("{id}: connection closed during CONNECT");
        }
    }
}

/// Sends SUBSCRIBE to `filter` at the run's QoS (the SUBACK is read by the caller's loop).
async fn subscribe(
    w: &mut OwnedWriteHalf,
    args: &Args,
    filter: String,
    out: &mut BytesMut,
) -> Result<()> {
    let options = SubscriptionOptions {
        qos: QoS::from_u8(args.qos).unwrap_or(QoS::AtMostOnce),
        ..Default::default()
    };
    let sub = Subscribe {
        packet_id: 1,
        filters: vec![(filter, options)],
        properties: Default::default(),
    };
    protocol::encode_packet(&Packet::Subscribe(sub), version(args.version), out);
    w.write_all(out).await?;
    out.clear();
    Ok(())
}

async fn subscriber(
    args: Args,
    id: String,
    filter: String,
    stats: Arc<Stats>,
    epoch: Instant,
    ready: Arc<Semaphore>,
    publishers: usize,
) -> Result<()> {
    let (mut r, mut w, mut buf) = connect(&args, &id, args.persistent).await?;
    let v = version(args.version);
    let mut out = BytesMut::new();
    subscribe(&mut w, &args, filter, &mut out).await?;
    let per_sub_expected = args.messages * publishers as u64;
    let mut tracker = Tracker::default();
    let mut got = 0u64;
    let mut subscribed = false;
    let mut local_hist = Histogram::<u64>::new(3)?;
    let idle = Duration::from_secs(args.idle_timeout_s);
    loop {
        while let Some(p) = protocol::decode_packet(&mut buf, Some(v), usize::MAX)? {
            match p {
                Packet::SubAck(_) if !subscribed => {
                    subscribed = true;
                    ready.add_permits(1);
                }
                Packet::Publish(p) => {
                    let now = Instant::now();
                    let mut payload = p.payload.clone();
                    if payload.len() >= HEADER {
                        let publisher = payload.get_u32();
                        let seq = payload.get_u32() as usize;
                        let sent = payload.get_u64();
                        let lat =
                            (now.duration_since(epoch).as_nanos() as u64).saturating_sub(sent);
                        let _ = local_hist.record(lat / 1000);
                        let duplicates_before = tracker.duplicates;
                        if tracker.record(publisher, seq, args.messages as usize) {
                            got += 1;
                            stats.received.fetch_add(1, Ordering::Relaxed);
                        } else if tracker.duplicates > duplicates_before {
                            stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    {
                        let mut f = stats.first.lock().unwrap();
                        f.get_or_insert(now);
                    }
                    *stats.last.lock().unwrap() = Some(now);
                    acknowledge(&Packet::Publish(p), v, &mut out);
                }
                other => acknowledge(&other, v, &mut out),
            }
        }
        if !out.is_empty() {
            w.write_all(&out).await?;
            out.clear();
        }
        if got >= per_sub_expected {
            break;
        }
        buf.reserve(64 * 1024);
        match tokio::time::timeout(idle, r.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => {
                if subscribed {
                    break;
                }
            }
        }
    }
    stats.latency.lock().unwrap().add(&local_hist)?;
    Ok(())
}

/// Encodes what a subscriber answers to `p`: PUBACK, PUBREC or PUBCOMP (nothing otherwise).
fn acknowledge(p: &Packet, v: ProtocolVersion, out: &mut BytesMut) {
    let reply = match p {
        Packet::Publish(p) if p.qos == QoS::AtLeastOnce => Packet::PubAck,
        Packet::Publish(p) if p.qos == QoS::ExactlyOnce => Packet::PubRec,
        Packet::PubRel(_) => Packet::PubComp,
        _ => return,
    };
    let id = match p {
        Packet::Publish(p) => p.packet_id,
        Packet::PubRel(r) => r.packet_id,
        _ => return,
    };
    protocol::encode_packet(&reply(PubResponse::new(id, ReasonCode::SUCCESS)), v, out);
}

/// A subscriber that reads `read_bps` bytes a second (0: nothing after its SUBACK) and
/// acknowledges what it reads: a stalled or trickling client next to the measured ones.
async fn laggard(args: Args, id: String, filter: String, ready: Arc<Semaphore>) -> Result<()> {
    let (mut r, mut w, mut buf) = connect(&args, &id, false).await?;
    let v = version(args.version);
    let mut out = BytesMut::new();
    subscribe(&mut w, &args, filter, &mut out).await?;
    let mut subscribed = false;
    let mut chunk = vec![0u8; args.laggard_read_bps.max(1)];
    loop {
        while let Some(p) = protocol::decode_packet(&mut buf, Some(v), usize::MAX)? {
            match p {
                Packet::SubAck(_) if !subscribed => {
                    subscribed = true;
                    ready.add_permits(1);
                }
                other => acknowledge(&other, v, &mut out),
            }
        }
        if !out.is_empty() {
            w.write_all(&out).await?;
            out.clear();
        }
        if subscribed && args.laggard_read_bps == 0 {
            // Holds the socket open and reads nothing more until the run aborts it.
            std::future::pending::<()>().await;
        }
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if subscribed {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn publisher(
    args: Args,
    id: String,
    index: u32,
    topic: String,
    epoch: Instant,
    start: Arc<AtomicBool>,
) -> Result<()> {
    let (r, w, buf) = connect(&args, &id, false).await?;
    // The ack reader answers PUBREC with PUBREL through the same write half.
    let w = Arc::new(tokio::sync::Mutex::new(w));
    let v = version(args.version);
    let qos = QoS::from_u8(args.qos).unwrap_or(QoS::AtMostOnce);
    while !start.load(Ordering::Acquire) {
        tokio::task::yield_now().await;
    }
    let window = Arc::new(Semaphore::new(if qos == QoS::AtMostOnce {
        0
    } else {
        args.inflight
    }));
    let acks = {
        let window = window.clone();
        let w = w.clone();
        let (mut r, mut buf) = (r, buf);
        let need = if qos == QoS::AtMostOnce {
            0
        } else {
            args.messages
        };
        tokio::spawn(async move {
            let mut done = 0u64;
            let mut out = BytesMut::new();
            while done < need {
                while let Ok(Some(p)) = protocol::decode_packet(&mut buf, Some(v), usize::MAX) {
                    match p {
                        Packet::PubAck(_) | Packet::PubComp(_) => {
                            done += 1;
                            window.add_permits(1);
                        }
                        Packet::PubRec(r) => protocol::encode_packet(
                            &Packet::PubRel(PubResponse::new(r.packet_id, ReasonCode::SUCCESS)),
                            v,
                            &mut out,
                        ),
                        _ => {}
                    }
                }
                if !out.is_empty() {
                    if w.lock().await.write_all(&out).await.is_err() {
                        break;
                    }
                    out.clear();
                }
                if done >= need {
                    break;
                }
                buf.reserve(16 * 1024);
                match r.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
    };
    let payload_len = args.payload.max(HEADER);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let interval = (args.rate > 0).then(|| Duration::from_nanos(1_000_000_000 / args.rate));
    let started = Instant::now();
    let mut next_id: u16 = 1;
    for seq in 0..args.messages {
        if qos != QoS::AtMostOnce {
            // Flush what we have before waiting for window space.
            if window.available_permits() == 0 && !out.is_empty() {
                w.lock().await.write_all(&out).await?;
                out.clear();
            }
            window.acquire().await?.forget();
        }
        if let Some(iv) = interval {
            let due = started + iv * seq as u32;
            if due > Instant::now() {
                if !out.is_empty() {
                    w.lock().await.write_all(&out).await?;
                    out.clear();
                }
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let mut payload = BytesMut::with_capacity(payload_len);
        payload.put_u32(index);
        payload.put_u32(seq as u32);
        payload.put_u64(epoch.elapsed().as_nanos() as u64);
        payload.resize(payload_len, 0xAB);
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            let id = next_id;
            next_id = next_id.wrapping_add(1).max(1);
            id
        };
        let payload: Bytes = payload.freeze();
        let p = protocol::OutgoingPublish {
            dup: false,
            qos,
            retain: false,
            topic: &topic,
            packet_id,
            properties: &Properties::default(),
            message_expiry: None,
            subscription_identifiers: &[],
            topic_alias: None,
            payload: &payload,
        };
        protocol::encode_publish(&p, v, &mut out);
        if out.len() >= 32 * 1024 {
            w.lock().await.write_all(&out).await?;
            out.clear();
        }
    }
    if !out.is_empty() {
        w.lock().await.write_all(&out).await?;
    }
    acks.await?;
    // Keep the connection until subscribers are done (closing early can drop queued QoS 0).
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

async fn run_storm(args: &Args) -> Result<()> {
    let started = Instant::now();
    let failures = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..100.min(args.clients) {
        let (args, failures, next) = (args.clone(), failures.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.clients as u64 {
                    return;
                }
                match connect(&args, &format!("storm-{i}"), false).await {
                    // DISCONNECT, then drop the connection.
                    Ok((_r, mut w, _)) => {
                        let _ = w.write_all(&[0xE0, 0x00]).await;
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "RESULT label={} scenario=storm clients={} connects_per_s={:.0} failed={}",
        args.label,
        args.clients,
        args.clients as f64 / secs,
        failures.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn run_idle(args: &Args) -> Result<()> {
    let before = args.broker_pid.and_then(proc_cpu_and_rss);
    let started = Instant::now();
    let mut conns = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        conns.push(connect(args, &format!("idle-{i}"), false).await?);
    }
    let connect_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = args.broker_pid.and_then(proc_cpu_and_rss);
    let per_conn = match (before, after) {
        (Some((_, a)), Some((_, b))) => {
            format!("{:.2} KB/conn", (b as f64 - a as f64) / args.clients as f64)
        }
        _ => "n/a".into(),
    };
    println!(
        "RESULT label={} scenario=idle clients={} connects_per_s={:.0} rss_delta={} rss_after_kb={}",
        args.label,
        args.clients,
        args.clients as f64 / connect_time.as_secs_f64(),
        per_conn,
        after.map_or(0, |a| a.1)
    );
    tokio::time::sleep(Duration::from_secs(args.hold_s)).await;
    drop(conns);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    match args.scenario {
        Scenario::Idle => return run_idle(&args).await,
        Scenario::Storm => return run_storm(&args).await,
        _ => {}
    }
    let epoch = Instant::now();
    let (publishers, subscribers): (usize, usize) = match args.scenario {
        Scenario::FanIn => (args.clients, 1),
        Scenario::FanOut => (1, args.clients),
        Scenario::P2p => (args.clients, args.clients),
        Scenario::Idle | Scenario::Storm => unreachable!("handled above"),
    };
    let per_sub_publishers = if args.scenario == Scenario::P2p {
        1
    } else {
        publishers
    };
    let expected = args.messages * per_sub_publishers as u64 * subscribers as u64;
    let stats = Arc::new(Stats {
        received: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new(3)?),
        first: Mutex::new(None),
        last: Mutex::new(None),
        expected,
    });
    let ready = Arc::new(Semaphore::new(0));
    let run_id = std::process::id();
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let filter = match args.scenario {
            Scenario::P2p => format!("bench/{run_id}/p2p/{i}"),
            _ => format!("bench/{run_id}/#"),
        };
        subs.push(tokio::spawn(subscriber(
            args.clone(),
            format!("sub-{run_id}-{i}"),
            filter,
            stats.clone(),
            epoch,
            ready.clone(),
            per_sub_publishers,
        )));
    }
    let mut laggards = Vec::new();
    for i in 0..args.laggards {
        let filter = match args.scenario {
            Scenario::P2p => format!("bench/{run_id}/p2p/{i}"),
            _ => format!("bench/{run_id}/#"),
        };
        let id = format!("laggard-{run_id}-{i}");
        laggards.push(tokio::spawn(laggard(
            args.clone(),
            id,
            filter,
            ready.clone(),
        )));
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        ready.acquire_many((subscribers + args.laggards) as u32),
    )
    .await
    .context("subscribers ready")?;
    let start = Arc::new(AtomicBool::new(false));
    let mut pubs = Vec::new();
    for i in 0..publishers {
        let topic = match args.scenario {
            Scenario::P2p => format!("bench/{run_id}/p2p/{i}"),
            _ => format!("bench/{run_id}/t/{i}"),
        };
        pubs.push(tokio::spawn(publisher(
            args.clone(),
            format!("pub-{run_id}-{i}"),
            i as u32,
            topic,
            epoch,
            start.clone(),
        )));
    }
    let cpu_before = args.broker_pid.and_then(proc_cpu_and_rss);
    let t0 = Instant::now();
    start.store(true, Ordering::Release);
    for p in pubs {
        p.await??;
    }
    let send_time = t0.elapsed();
    for s in subs {
        s.await??;
    }
    let cpu_after = args.broker_pid.and_then(proc_cpu_and_rss);
    for l in laggards {
        l.abort();
    }
    let received = stats.received.load(Ordering::Relaxed);
    // From the start signal to the last receipt: what the system sustained end to end.
    let window = match *stats.last.lock().unwrap() {
        Some(b) if b > t0 => (b - t0).as_secs_f64(),
        _ => send_time.as_secs_f64(),
    };
    let h = stats.latency.lock().unwrap();
    let cpu = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) if received > 0 => format!("{:.2}", (b.0 - a.0) * 1e6 / received as f64),
        _ => "n/a".into(),
    };
    println!(
        "RESULT label={} scenario={:?} qos={} v={} clients={} laggards={} payload={} msgs_per_s={:.0} received={} expected={} lost={} dup={} p50_us={} p99_us={} max_us={} broker_cpu_us_per_msg={} rss_kb={}",
        args.label,
        args.scenario,
        args.qos,
        args.version,
        args.clients,
        args.laggards,
        args.payload,
        received as f64 / window,
        received,
        stats.expected,
        stats.expected.saturating_sub(received),
        stats.duplicates.load(Ordering::Relaxed),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        cpu,
        cpu_after.map_or(0, |c| c.1),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Tracker;

    #[test]
    fn tracker_counts_losses_and_duplicates() {
        let mut t = Tracker::default();
        assert!(t.record(0, 0, 4));
        assert!(t.record(0, 1, 4));
        assert!(!t.record(0, 1, 4), "second copy is a duplicate");
        assert!(t.record(7, 3, 4), "publishers are tracked apart");
        assert!(!t.record(7, 9, 4), "out of range is ignored");
        assert_eq!((t.unique, t.duplicates), (3, 1));
        assert_eq!(8 - t.unique, 5, "five of eight expected were lost");
    }
}
