//! Shared helpers for the end-to-end tests: an in-process broker on ephemeral ports, rumqttc
//! v3.1.1 and v5 clients whose events arrive on a channel, and a raw-socket client.
#![allow(dead_code, unused_imports)]

pub mod api_env;
pub mod process;
pub mod receiver;
pub mod rules_env;
pub mod services;

use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard_core::config::{ListenerConfig, ListenerKind};
use switchyard_core::protocol::{self, Packet, ProtocolVersion};
use switchyard_core::{CoreConfig, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A component built by scripts/build-plugins (which scripts/test runs first).
pub fn plugin_path(name: &str) -> std::path::PathBuf {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/plugins/{name}.wasm"));
    assert!(
        p.exists(),
        "{} missing: run scripts/build-plugins (scripts/test does)",
        p.display()
    );
    p
}

/// A QoS 1 round trip between two new clients: what "the broker still serves everyone"
/// means after a test threw something at it.
pub async fn still_serving(addr: SocketAddr) {
    let mut a = v4::connect(v4::options(addr, "healthy-sub")).await;
    a.subscribe("health", v4::QoS::AtLeastOnce).await;
    let b = v4::connect(v4::options(addr, "healthy-pub")).await;
    b.client
        .publish("health", v4::QoS::AtLeastOnce, false, "ok")
        .await
        .unwrap();
    assert_eq!(&a.next_publish().await.payload[..], b"ok");
}

/// How long any single expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Waits until `condition` holds (broker state the clients cannot observe directly), failing
/// the test after `WAIT`.
pub async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    wait_until_within(what, WAIT, condition).await
}

/// `wait_until` for an event the broker is designed to take longer than `WAIT` for.
pub async fn wait_until_within(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One raw HTTP exchange; (status, body). The request asks the server to close after it
/// (the body is read to the end of the stream).
pub async fn http_get(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = match request.split_once("\r\n") {
        Some((line, rest)) => format!("{line}\r\nConnection: close\r\n{rest}"),
        None => request.to_string(),
    };
    s.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// `GET path` of the HTTP endpoint, parsed as JSON.
pub async fn http_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON body")
}

/// Polls `GET path` until `ok` holds for its JSON, failing the test after `WAIT`.
pub async fn wait_for_json(
    addr: SocketAddr,
    path: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = http_json(addr, path).await;
        if ok(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port that was free a moment ago, for the few tests that must know a port before a server
/// binds it (a client that knocks while the broker starts, a service restarted on its port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn local(kind: ListenerKind) -> ListenerConfig {
    ListenerConfig::new(kind, "127.0.0.1:0".parse().unwrap())
}

/// TCP and WebSocket on ephemeral ports, `$SYS` off unless a test turns it on.
pub fn test_config() -> CoreConfig {
    let mut c = CoreConfig {
        listeners: vec![local(ListenerKind::Tcp), local(ListenerKind::Ws)],
        ..CoreConfig::default()
    };
    c.mqtt.sys_interval_s = 0;
    c.http.bind = "127.0.0.1:0".parse().unwrap();
    // Tests that need a persistence folder make their own (tests/durability.rs).
    c.persistence.mode = switchyard_core::config::PersistMode::Off;
    c
}

/// A broker started the way the binary starts one (the shared builder), file watchers off.
pub async fn start(config: CoreConfig) -> switchyard::Running {
    switchyard::Switchyard::core(config)
        .watch_files(false)
        .start()
        .await
        .expect("broker starts")
}

/// `switchyard_limit_hits_total{limit="LIMIT"}` from `/metrics`.
pub async fn limit_hits(server: &switchyard::Running, limit: &str) -> u64 {
    let http = server.http_addr.expect("http endpoint");
    let (_, body) = http_get(http, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let key = format!("switchyard_limit_hits_total{{limit=\"{limit}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing from /metrics"))
}

pub fn tcp_addr(s: &Server) -> SocketAddr {
    s.addr(ListenerKind::Tcp).expect("tcp listener")
}

// ---------- rumqttc v3.1.1 ----------

/// The client methods both protocol versions share. Written once and expanded in each module,
/// where `Event`, `Packet` and `Publish` name that version's rumqttc types.
macro_rules! shared_client_methods {
    () => {
        /// Drops the connection without DISCONNECT (the broker sees a socket error/EOF).
        pub async fn kill(self) {
            self.task.abort();
            let _ = self.task.await;
        }
        /// The next incoming packet matching `f`, skipping others.
        pub async fn expect<T>(&mut self, mut f: impl FnMut(&Packet) -> Option<T>) -> T {
            loop {
                let e = tokio::time::timeout(WAIT, self.events.recv())
                    .await
                    .expect("expected event in time")
                    .expect("event loop alive");
                match e {
                    Ok(Event::Incoming(p)) => {
                        if let Some(t) = f(&p) {
                            return t;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("connection error while waiting: {e}"),
                }
            }
        }
        pub async fn next_publish(&mut self) -> Publish {
            self.expect(|p| match p {
                Packet::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await
        }
        /// Waits until the event loop reports an error (the connection ended).
        pub async fn expect_closed(&mut self) -> String {
            loop {
                match tokio::time::timeout(WAIT, self.events.recv())
                    .await
                    .expect("close in time")
                {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return e,
                    None => return "ended".into(),
                }
            }
        }
        /// No publish arrives within `d` (used only after a positive event proved delivery works).
        pub async fn assert_no_publish(&mut self, d: Duration) {
            let deadline = tokio::time::Instant::now() + d;
            loop {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Err(_) => return,
                    Ok(Some(Ok(Event::Incoming(Packet::Publish(p))))) => {
                        panic!("unexpected publish {p:?}")
                    }
                    Ok(Some(Ok(_))) => continue,
                    Ok(other) => panic!("connection ended: {other:?}"),
                }
            }
        }
    };
}

pub mod v4 {
    use super::*;
    pub use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Packet, Publish, QoS};

    pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub struct Client {
        pub client: AsyncClient,
        pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
        pub task: tokio::task::JoinHandle<()>,
    }

    /// Connects and waits for CONNACK; the event loop then runs in a task until an error.
    pub async fn connect(opts: MqttOptions) -> Client {
        let c = connect_any(opts).await;
        c.expect("client connects")
    }

    /// Like `connect` but returns the CONNACK error instead of failing.
    pub async fn connect_any(opts: MqttOptions) -> Result<Client, String> {
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(e) => {
                        if tx.send(Ok(e)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        loop {
            match tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("connack in time")
            {
                Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    return Ok(Client {
                        client,
                        events: rx,
                        task,
                    })
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => return Err("event loop ended".into()),
            }
        }
    }

    impl Client {
        shared_client_methods!();

        pub async fn subscribe(
            &mut self,
            filter: &str,
            qos: QoS,
        ) -> Vec<rumqttc::SubscribeReasonCode> {
            self.client.subscribe(filter, qos).await.unwrap();
            self.expect(|p| match p {
                Packet::SubAck(a) => Some(a.return_codes.clone()),
                _ => None,
            })
            .await
        }
    }
}

// ---------- rumqttc v5 ----------

pub mod v5 {
    use super::*;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnectReturnCode, Filter, LastWill, Packet, PublishProperties, RetainForwardRule,
        SubscribeProperties, SubscribeReasonCode,
    };
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    pub type Publish = rumqttc::v5::mqttbytes::v5::Publish;

    pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub struct Client {
        pub client: AsyncClient,
        pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
        pub task: tokio::task::JoinHandle<()>,
        pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
    }

    pub async fn connect(opts: MqttOptions) -> Client {
        connect_any(opts).await.expect("client connects")
    }

    pub async fn connect_any(opts: MqttOptions) -> Result<Client, String> {
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(e) => {
                        if tx.send(Ok(e)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:?}")));
                        return;
                    }
                }
            }
        });
        loop {
            match tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("connack in time")
            {
                Some(Ok(Event::Incoming(Packet::ConnAck(a)))) => {
                    return Ok(Client {
                        client,
                        events: rx,
                        task,
                        connack: a,
                    })
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => return Err("event loop ended".into()),
            }
        }
    }

    impl Client {
        shared_client_methods!();

        /// The reason code of the next PUBACK.
        pub async fn next_puback_reason(&mut self) -> rumqttc::v5::mqttbytes::v5::PubAckReason {
            self.expect(|p| match p {
                Packet::PubAck(a) => Some(a.reason),
                _ => None,
            })
            .await
        }

        pub async fn subscribe_with(
            &mut self,
            filter: Filter,
            props: Option<SubscribeProperties>,
        ) -> Vec<SubscribeReasonCode> {
            match props {
                Some(p) => self
                    .client
                    .subscribe_many_with_properties(vec![filter], p)
                    .await
                    .unwrap(),
                None => self.client.subscribe_many(vec![filter]).await.unwrap(),
            }
            self.expect(|p| match p {
                Packet::SubAck(a) => Some(a.return_codes.clone()),
                _ => None,
            })
            .await
        }

        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
            self.subscribe_with(Filter::new(filter, qos), None).await
        }
    }
}

// ---------- raw socket client, for malformed input and exact bytes ----------

pub fn connect_packet(version: ProtocolVersion, id: &str) -> protocol::Connect {
    protocol::Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }
}

pub fn will(topic: &str, payload: &'static [u8]) -> protocol::LastWill {
    protocol::LastWill {
        topic: topic.into(),
        payload: bytes::Bytes::from_static(payload),
        qos: protocol::QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    }
}

pub struct Raw {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub version: ProtocolVersion,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            version: ProtocolVersion::V5,
        }
    }

    /// A client whose socket buffers only `bytes` of what the server sends: one that stops
    /// reading is felt at once instead of after megabytes of kernel buffering.
    pub async fn connect_small(addr: SocketAddr, bytes: u32) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        Raw {
            stream: socket.connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            version: ProtocolVersion::V5,
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut b = BytesMut::new();
        protocol::encode_packet(p, self.version, &mut b);
        self.send_bytes(&b).await;
    }

    /// Sends a CONNECT for `id` in `version` and returns the CONNACK.
    pub async fn handshake(&mut self, version: ProtocolVersion, id: &str) -> protocol::ConnAck {
        self.handshake_with(connect_packet(version, id)).await
    }

    pub async fn handshake_with(&mut self, c: protocol::Connect) -> protocol::ConnAck {
        self.version = c.protocol;
        self.send(&Packet::Connect(Box::new(c))).await;
        match self.recv().await {
            Some(Packet::ConnAck(a)) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// The next packet, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = protocol::decode_packet(&mut self.buf, Some(self.version), 1 << 24)
                    .expect("server sends valid packets")
                {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("packet or close in time")
    }

    /// Reads until the server closes; returns the DISCONNECT it sent first, if any.
    pub async fn expect_close(&mut self) -> Option<protocol::Disconnect> {
        let mut last = None;
        while let Some(p) = self.recv().await {
            if let Packet::Disconnect(d) = p {
                last = Some(d);
            }
        }
        last
    }
}

// ---------- TLS material generated per test ----------

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub ca_file: std::path::PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    /// A CA and a server certificate for 127.0.0.1 and localhost, written as PEM files.
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Switchyard Test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            ca_pem: ca_cert.pem(),
            ca_file: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert.pem()),
            server_key: write("server.key", &server_key.serialize_pem()),
            dir,
            ca_cert,
            ca_key,
        }
    }

    /// A client certificate with common name `cn`, as (cert PEM, key PEM).
    pub fn client_cert(&self, cn: &str) -> (String, String) {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn listener(&self, kind: ListenerKind) -> ListenerConfig {
        let mut l = local(kind);
        l.cert = Some(self.server_cert.clone());
        l.key = Some(self.server_key.clone());
        l
    }

    /// A rustls client config trusting our CA, optionally presenting a client certificate.
    pub fn client_config(
        &self,
        client: Option<(String, String)>,
    ) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        std::sync::Arc::new(config)
    }
}
