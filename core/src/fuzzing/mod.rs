//! The checks behind the fuzz targets in `fuzz/` (feature `fuzzing`; not an API). Each takes
//! the fuzzer's bytes, reaches a parser the way a client's bytes reach it in the broker, and
//! panics only when an invariant breaks. `tests/fuzz_corpus.rs` replays the checked-in seeds
//! and every crash found so far through the same functions on stable Rust.
//!
//! - this module: the decoders, the property decoder, topics against a reference matcher and
//!   the broker's trees, MQTT over WebSocket, `ws-json`;
//! - [`sessions`]: whole sessions of two clients through the real pipeline.

pub mod sessions;

use crate::broker::Broker;
use crate::client::{serve, ListenerContext};
use crate::config::MqttConfig;
use crate::message::Message;
use crate::protocol::properties::{Properties, PropertyContext};
use crate::protocol::wire::Reader;
use crate::protocol::SubscriptionOptions;
use crate::protocol::{decode_packet, encode_packet, Packet, ProtocolVersion, QoS};
use crate::session::Session;
use crate::topic;
use crate::transport::{ws, ws_json};
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

/// First byte 0: the first-packet path (CONNECT of any version); odd: MQTT 3.1.1; else MQTT 5.
pub fn check_decoder(data: &[u8]) {
    match data.split_first() {
        Some((0, rest)) => decode_all(rest, None),
        Some((b, rest)) if b % 2 == 1 => decode_all(rest, Some(ProtocolVersion::V311)),
        Some((_, rest)) => decode_all(rest, Some(ProtocolVersion::V5)),
        None => {}
    }
}

/// First byte: the packet whose properties these are; the rest, a property block.
pub fn check_properties(data: &[u8]) {
    if let Some((ctx, rest)) = data.split_first() {
        let _ = decode_properties(*ctx, rest);
    }
}

/// Decodes a property block as the packet `context` (0..=10, wrapping) would carry it.
pub fn decode_properties(context: u8, bytes: &[u8]) -> bool {
    let ctx = match context % 11 {
        0 => PropertyContext::Connect,
        1 => PropertyContext::Will,
        2 => PropertyContext::ConnAck,
        3 => PropertyContext::Publish,
        4 => PropertyContext::PubResponse,
        5 => PropertyContext::Subscribe,
        6 => PropertyContext::SubAck,
        7 => PropertyContext::Unsubscribe,
        8 => PropertyContext::UnsubAck,
        9 => PropertyContext::Disconnect,
        _ => PropertyContext::Auth,
    };
    let mut r = Reader::new(Bytes::copy_from_slice(bytes));
    Properties::decode(&mut r, ctx).is_ok()
}

fn context(broker: &Arc<Broker>, name: &str) -> Arc<ListenerContext> {
    Arc::new(ListenerContext {
        broker: broker.clone(),
        name: name.into(),
        allow_anonymous: true,
    })
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}

/// Serves one MQTT connection over `stream` (plain MQTT, as on a TCP listener).
pub async fn serve_mqtt<S>(broker: &Arc<Broker>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    serve(stream, peer(), None, context(broker, "tcp:fuzz")).await
}

/// Serves one MQTT-over-WebSocket connection over `stream`: the HTTP upgrade, then frames.
pub async fn serve_websocket<S>(broker: &Arc<Broker>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let limit = ws::mqtt_message_limit(broker.config.max_packet_size);
    if let Ok(ws) = ws::accept(stream, "/mqtt", limit).await {
        serve(ws, peer(), None, context(broker, "ws:fuzz")).await
    }
}

/// Serves one `ws-json` connection over `stream`: the HTTP upgrade, then JSON frames.
pub async fn serve_ws_json<S>(broker: &Arc<Broker>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let limit = ws::json_message_limit(broker.config.max_packet_size);
    if let Ok((ws, query)) = ws::accept_json(stream, "/", limit).await {
        ws_json::serve(ws, peer(), query, context(broker, "ws-json:fuzz")).await
    }
}

/// Line 1 a topic name, then up to 8 filters: validation never panics, `matches` agrees with
/// the plain reading of the spec, and the broker's subscription and retained trees find
/// exactly what it says.
pub fn check_topics(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let Some(topic_name) = lines.next() else {
        return;
    };
    let filters: Vec<&str> = lines.take(8).collect();
    let _ = topic::level_count(topic_name);
    let broker = small_broker();
    let max_levels = broker.config.max_topic_levels;
    let name_ok = !topic_name.is_empty()
        && topic::valid_topic_name(topic_name)
        && topic::level_count(topic_name) <= max_levels;
    let session = Arc::new(Session::new("fuzz".into(), None, 600));
    let usable = |f: &str| {
        topic::valid_topic_filter(f)
            && topic::parse_shared(f).is_none()
            && topic::level_count(f) <= max_levels
    };
    let mut expect = false;
    for f in filters.iter().copied() {
        let _ = topic::parse_shared(f);
        if !usable(f) {
            continue;
        }
        assert!(topic::filter_covers(f, f), "{f:?} does not cover itself");
        if name_ok {
            let m = topic::matches(f, topic_name);
            assert_eq!(m, reference_match(f, topic_name), "{f:?} vs {topic_name:?}");
            expect |= m;
        }
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        broker.subscribe(&session, f, options, None, None);
    }
    if !name_ok {
        return;
    }
    let msg = Arc::new(Message::new(topic_name, "x", QoS::AtLeastOnce, true));
    let (routed, _) = broker.route(&msg);
    assert_eq!(
        routed.queued > 0,
        expect,
        "tree disagrees: {topic_name:?} {filters:?}"
    );
    for f in filters.iter().copied().filter(|f| usable(f)) {
        let found = broker.retained_matching(f).len();
        assert_eq!(
            found == 1,
            reference_match(f, topic_name),
            "retained tree: {f:?}"
        );
    }
}

/// MQTT over WebSocket: the upgrade, tungstenite's framing and our byte-stream adapter, then
/// the MQTT connection behind them. `data` follows a valid upgrade request, as frames.
pub fn check_websocket(data: &[u8]) {
    let upgrade = upgrade_request("/mqtt", Some("mqtt"));
    let broker = small_broker();
    let serve = |s| async move { serve_websocket(&broker, s).await };
    runtime().block_on(drive(Some(upgrade), data.to_vec(), serve));
}

/// The `ws-json` bridge: each line of `data` is one text frame, after a valid upgrade.
pub fn check_ws_json(data: &[u8]) {
    let upgrade = upgrade_request("/?clientId=fuzz", None);
    let mut input = Vec::new();
    for line in data.split(|b| *b == b'\n').take(64) {
        input.extend(frame(1, line));
    }
    let broker = small_broker();
    let serve = |s| async move { serve_ws_json(&broker, s).await };
    runtime().block_on(drive(Some(upgrade), input, serve));
}

/// Decodes every packet in `data`. A packet the decoder accepts must encode into bytes that
/// decode to the same packet: what we read is what we would write.
pub fn decode_all(data: &[u8], first: Option<ProtocolVersion>) {
    let mut buf = BytesMut::from(data);
    let mut version = first;
    loop {
        match decode_packet(&mut buf, version, 1 << 20) {
            Ok(Some(p)) => {
                let v = match (&p, version) {
                    (Packet::Connect(c), _) => c.protocol,
                    (_, Some(v)) => v,
                    (_, None) => return,
                };
                let mut out = BytesMut::new();
                encode_packet(&p, v, &mut out);
                let again = decode_packet(&mut out, Some(v), 1 << 20);
                // CONNECT is only decoded as a first packet; the others in their version.
                let again = match (&p, again) {
                    (Packet::Connect(_), _) => {
                        let mut out = BytesMut::new();
                        encode_packet(&p, v, &mut out);
                        decode_packet(&mut out, None, 1 << 20)
                    }
                    (_, r) => r,
                };
                match again {
                    Ok(Some(q)) => assert_eq!(p, q, "re-encoded packet decodes differently"),
                    other => panic!("re-encoded {p:?} does not decode: {other:?}"),
                }
                version = Some(v);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// A single-threaded runtime for one input: cheap, and failures reproduce.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// A broker with small limits, so that inputs reach them.
pub fn small_broker() -> Arc<Broker> {
    let config = MqttConfig {
        max_queued_messages: 16,
        max_inflight: 4,
        max_subscriptions: 8,
        max_topic_levels: 16,
        connect_timeout_s: 1,
        backpressure_wait_ms: 10,
        sys_interval_s: 0,
        ..MqttConfig::default()
    };
    Broker::new(config)
}

/// Writes `input` to a connection served by `serve`, then half-closes it, while reading and
/// discarding what the server sends (so its writes never block). With a `handshake` (an HTTP
/// upgrade), that goes first and `input` follows the server's answer, as a real client waits
/// for it (tungstenite refuses bytes that arrive with the request). Bounded in time.
pub async fn drive<F, Fut>(handshake: Option<Vec<u8>>, input: Vec<u8>, serve: F) -> Vec<u8>
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let server = serve(server);
    let client = async move {
        let mut got = Vec::new();
        if let Some(h) = handshake {
            if client.write_all(&h).await.is_err() {
                return got;
            }
            let mut chunk = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match client.read(&mut chunk).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        }
        let (mut r, mut w) = tokio::io::split(&mut client);
        let write = async {
            let _ = w.write_all(&input).await;
            let _ = w.shutdown().await;
        };
        let read = r.read_to_end(&mut got);
        let _ = tokio::join!(write, read);
        got
    };
    let bounded = tokio::time::timeout(Duration::from_secs(5), async {
        let (_, got) = tokio::join!(server, client);
        got
    });
    bounded.await.unwrap_or_default()
}

/// The HTTP request that upgrades a connection to WebSocket at `path`.
pub fn upgrade_request(path: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocol {
        r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// One masked client frame (`opcode` 1 text, 2 binary), as a browser sends it.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// MQTT's topic matching written the plain way (spec 4.7), to check the broker's trees.
pub fn reference_match(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    for (i, level) in f.iter().enumerate() {
        if *level == "#" {
            return true;
        }
        match t.get(i) {
            Some(tl) if *level == "+" || level == tl => {}
            _ => return false,
        }
    }
    f.len() == t.len()
}
