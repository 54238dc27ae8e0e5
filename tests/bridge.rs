//! The MQTT bridge: a rule forwards to a second Switchyard (the binary, with a password file
//! and `sync` persistence) over MQTT 5 with credentials and properties, and keeps forwarding
//! across that broker's kill -9 and restart.

mod common;
use common::process::Proc;
use common::rules_env::*;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
use switchyard_core::config::ListenerKind;
use switchyard_core::protocol::{
    Packet, ProtocolVersion, PubResponse, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use switchyard_rules::sink::SinkCounters;

fn cloud_config(folder: &std::path::Path, port: u16, tls_port: u16, pki: &Pki) -> String {
    format!(
        "[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n\
         [[listener]]\nkind = \"tls\"\nbind = \"127.0.0.1:{tls_port}\"\ncert = {:?}\nkey = {:?}\n\
         [http]\nenabled = false\n\
         [mqtt]\nallow_anonymous = false\nsys_interval_s = 0\n\
         [auth]\npassword_file = {:?}\n[persistence]\ndir = {:?}\nmode = \"sync\"\n",
        pki.server_cert,
        pki.server_key,
        folder.join("passwd"),
        folder.join("data"),
    )
}

/// The cloud application's persistent v5 session.
async fn cloud_app(addr: SocketAddr) -> (Raw, bool) {
    let mut raw = Raw::connect(addr).await;
    let mut c = connect_packet(ProtocolVersion::V5, "cloud-app");
    c.clean_start = false;
    c.username = Some("app".into());
    c.password = Some("app-secret".into());
    c.properties.session_expiry_interval = Some(3600);
    let ack = raw.handshake_with(c).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    (raw, ack.session_present)
}

fn sent(env: &Env, sink: &str) -> u64 {
    SinkCounters::get(&env.rules.sink(sink).unwrap().counters.sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_forwards_to_a_second_broker_across_its_kill_and_restart() {
    const N: i64 = 400;
    let cloud_dir = tempfile::tempdir().unwrap();
    let pw = cloud_dir.path().join("passwd");
    switchyard_core::auth::set_password(&pw, "edge", "edge-secret").unwrap();
    switchyard_core::auth::set_password(&pw, "app", "app-secret").unwrap();
    let (port, tls_port) = (free_port(), free_port());
    let pki = Pki::new();
    let config = cloud_config(cloud_dir.path(), port, tls_port, &pki);
    let cloud = Proc::start(cloud_dir.path(), &config);

    // The cloud application subscribes once, then is offline: its session queues.
    let (mut app, _) = cloud_app(cloud.addr).await;
    app.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            "bridged/#".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(app.recv().await, Some(Packet::SubAck(_))));
    drop(app);

    let rule = r#"
rule("uplink")
    .from(["edge/+/t"])
    .select(|m| #{ device: m.level(1), n: m.json.n })
    .to(mqtt("cloud"))
    .to(mqtt("cloud-tls"))
    .to(mqtt("intruder"));
"#;
    let bridge = |user: &str, password: &str| {
        serde_json::json!({"kind": "mqtt", "server": format!("127.0.0.1:{port}"),
            "username": user, "password": password, "client_id": format!("edge-{user}-{password}"),
            "qos": 1, "inflight": 20, "topic": "bridged/${device}",
            "content_type": "application/json", "user_properties": {"edge-device": "${device}"},
            "message_expiry_s": "3600",
            "retry_initial_ms": 50, "retry_max_ms": 200})
    };
    let env = env_with(
        &[("uplink.rhai", rule)],
        &[
            ("cloud", bridge("edge", "edge-secret")),
            ("intruder", bridge("edge", "wrong")),
            (
                "cloud-tls",
                serde_json::json!({"kind": "mqtt", "server": format!("localhost:{tls_port}"),
                    "sslmode": "verify-full", "ca_file": pki.ca_file,
                    "username": "edge", "password": "edge-secret", "client_id": "edge-tls",
                    "qos": 1, "topic": "tls/${device}", "retry_initial_ms": 50, "retry_max_ms": 200}),
            ),
        ],
    )
    .await;
    let p = publisher(&env, "plc").await;
    for n in 0..N / 2 {
        publish(
            &p,
            &format!("edge/dev{}/t", n % 3),
            format!("{{\"n\":{n}}}"),
        )
        .await;
    }
    wait_until("first half acknowledged by the cloud", || {
        sent(&env, "cloud") == N as u64 / 2
    })
    .await;

    // The cloud broker dies mid-stream; the bridge buffers and retries.
    cloud.kill9();
    for n in N / 2..N {
        publish(
            &p,
            &format!("edge/dev{}/t", n % 3),
            format!("{{\"n\":{n}}}"),
        )
        .await;
    }
    let rules = env.rules.clone();
    wait_until("second half waiting", || {
        let c = &rules.sink("cloud").unwrap().counters;
        SinkCounters::get(&c.matched) == N as u64 && SinkCounters::get(&c.retried) > 0
    })
    .await;
    let cloud = Proc::start(cloud_dir.path(), &config);
    wait_until("everything acknowledged by the restarted cloud", || {
        sent(&env, "cloud") == N as u64 && sent(&env, "cloud-tls") == N as u64
    })
    .await;

    // Wrong credentials: refused at CONNECT, records kept and retried, never sent.
    assert_eq!(sent(&env, "intruder"), 0);
    assert!(SinkCounters::get(&env.rules.sink("intruder").unwrap().counters.retried) > 0);
    assert!(SinkCounters::get(&env.rules.sink("intruder").unwrap().counters.failed) == 0);

    // Everything reached the application's queue, with the properties the sink set.
    let (mut app, present) = cloud_app(cloud.addr).await;
    assert!(present, "the session survived the kill");
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut all = BTreeSet::new();
    while all.len() < N as usize {
        let Some(Packet::Publish(m)) = app.recv().await else {
            panic!("connection ended after {} messages", all.len());
        };
        app.send(&Packet::PubAck(PubResponse::new(
            m.packet_id,
            ReasonCode::SUCCESS,
        )))
        .await;
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let n = v["n"].as_i64().unwrap();
        let device = v["device"].as_str().unwrap().to_string();
        assert_eq!(&*m.topic, format!("bridged/{device}"));
        assert_eq!(
            m.properties.content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(
            m.properties.user_properties,
            vec![("edge-device".to_string(), device.clone())]
        );
        assert!(m.properties.message_expiry_interval.is_some());
        all.insert(n);
        seen.entry(device).or_default().push(n);
    }
    assert_eq!(all, (0..N).collect::<BTreeSet<_>>(), "nothing lost");
    // At least once: a message whose PUBACK died with the broker may come twice, but each
    // device's messages first arrive in publish order.
    for (device, ns) in &seen {
        let mut first = Vec::new();
        for n in ns {
            if !first.contains(n) {
                first.push(*n);
            }
        }
        assert!(first.windows(2).all(|w| w[0] < w[1]), "{device}: {first:?}");
        assert!(
            ns.len() - first.len() <= 20,
            "{device}: duplicates beyond the window"
        );
    }
    cloud.terminate();
}

/// A listener whose connections buffer 16 KB of what they are sent: the kernel does not
/// absorb what the test's side does not read.
fn small_buffer_listener() -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(16).unwrap()
}

/// A link to `target` that carries 16 KB every 5 ms towards it (about 3 MB/s) and answers at
/// full speed: a sender's socket stays full while it writes more than that.
async fn slow_link(target: SocketAddr) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = small_buffer_listener();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut from_client, mut to_client) = inbound.into_split();
                let (mut from_server, mut to_server) = outbound.into_split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut pace = tokio::time::interval(Duration::from_millis(5));
                    loop {
                        pace.tick().await;
                        match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) if to_server.write_all(&buf[..n]).await.is_err() => return,
                            Ok(_) => {}
                        }
                    }
                };
                let down = tokio::io::copy(&mut from_server, &mut to_client);
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    addr
}

/// Forwards each `edge/big` message, padding and all, to the sink `sink`.
fn big_rule(sink: &str) -> String {
    format!(
        r#"rule("big").from(["edge/big"]).select(|m| #{{ n: m.json.n, pad: m.json.pad }}).to(mqtt("{sink}"));"#
    )
}

/// Client options that allow 1 MB packets (rumqttc's default is 10 KB).
fn big_packets(addr: SocketAddr, id: &str) -> v4::MqttOptions {
    let mut o = v4::options(addr, id);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Publishes `n` messages of `kb` KB each to the edge broker; returns the publisher (kept
/// connected until its messages are through) and the padding used.
async fn publish_big(env: &Env, n: usize, kb: usize) -> (v4::Client, String) {
    let p = v4::connect(big_packets(tcp_addr(&env.server), "plc")).await;
    let pad = "x".repeat(kb * 1024);
    for i in 0..n {
        publish(&p, "edge/big", format!("{{\"n\":{i},\"pad\":\"{pad}\"}}")).await;
    }
    (p, pad)
}

/// One batch far larger than a socket takes at once, over TLS and a slow link: the bridge's
/// last write leaves encrypted bytes in the TLS layer while the socket is full, and they must
/// still go out (a bridge that never flushed them waited for PUBACKs of messages it had not
/// finished sending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_bridge_sends_a_batch_larger_than_the_socket_takes_at_once() {
    const N: usize = 24;
    let pki = Pki::new();
    let mut cloud_config = test_config();
    cloud_config.listeners.push(pki.listener(ListenerKind::Tls));
    let cloud = start(cloud_config).await;
    let link = slow_link(cloud.addr(ListenerKind::Tls).unwrap()).await;
    let mut app = v4::connect(big_packets(tcp_addr(&cloud), "cloud-app")).await;
    app.subscribe("big/#", v4::QoS::AtLeastOnce).await;

    let env = env_with(
        &[("big.rhai", &big_rule("cloud"))],
        &[(
            "cloud",
            serde_json::json!({"kind": "mqtt", "server": format!("localhost:{}", link.port()),
                "sslmode": "verify-full", "ca_file": pki.ca_file, "client_id": "edge-big",
                "qos": 1, "inflight": N, "batch_size": N, "linger_ms": 2_000, "topic": "big/t",
                "retry_initial_ms": 50, "retry_max_ms": 200}),
        )],
    )
    .await;
    // 24 records of 200 KB: one write of about 4.8 MB.
    let (_p, pad) = publish_big(&env, N, 200).await;
    wait_until("the whole batch acknowledged", || {
        counter(&env.rules, "cloud", "sent") == N as u64
    })
    .await;
    let mut got = BTreeSet::new();
    while got.len() < N {
        let m = app.next_publish().await;
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["pad"].as_str().map(str::len), Some(pad.len()));
        got.insert(v["n"].as_i64().unwrap());
    }
    assert_eq!(got, (0..N as i64).collect::<BTreeSet<_>>());
    assert_eq!(counter(&env.rules, "cloud", "retried"), 0);
}

/// A server that accepts the bridge and then reads nothing: the bridge's write of a batch
/// larger than the sockets hold must give up (and the records be retried), not hold the sink
/// for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_to_a_server_that_stops_reading_gives_up_and_retries() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const N: usize = 24;
    let listener = small_buffer_listener();
    let server = listener.local_addr().unwrap();
    let (accepted, mut connections) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut connect = [0u8; 512];
            if s.read(&mut connect).await.is_err() {
                continue;
            }
            // CONNACK (v5): accepted, no properties. Then nothing is read again.
            let _ = s.write_all(&[0x20, 0x03, 0x00, 0x00, 0x00]).await;
            let _ = accepted.send(s);
        }
    });
    let env = env_with(
        &[("big.rhai", &big_rule("stuck"))],
        &[(
            "stuck",
            serde_json::json!({"kind": "mqtt", "server": server.to_string(), "qos": 1,
                "inflight": N, "batch_size": N, "linger_ms": 2_000, "topic": "big/t",
                "retry_initial_ms": 50, "retry_max_ms": 200}),
        )],
    )
    .await;
    // 24 records of 400 KB: about 9.6 MB, more than the two sockets' buffers.
    let _p = publish_big(&env, N, 400).await;
    let first = tokio::time::timeout(WAIT, connections.recv()).await;
    let _stalled = first.expect("the bridge connects").expect("a connection");
    // The write gives up after 15 s without progress; the bridge then connects again.
    wait_until_within(
        "the bridge gives up on a server that reads nothing",
        Duration::from_secs(30),
        || counter(&env.rules, "stuck", "retried") > 0,
    )
    .await;
    assert_eq!(counter(&env.rules, "stuck", "sent"), 0);
    assert_eq!(counter(&env.rules, "stuck", "failed"), 0);
}
