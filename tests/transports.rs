//! TLS, mTLS (with the client certificate's common name reaching hooks), WebSocket and WSS.

mod common;
use async_trait::async_trait;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};
use switchyard_core::config::ListenerKind;
use switchyard_core::hooks::{AuthDecision, ConnectInfo, Hook, HookSet};
use switchyard_core::protocol::{self, Packet, ProtocolVersion};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Records who authenticated, and lets them in.
struct SeenBy(Mutex<Vec<(String, Option<String>, String)>>);

#[async_trait]
impl Hook for SeenBy {
    fn name(&self) -> &str {
        "test:seen-by"
    }
    fn interests(&self) -> HookSet {
        HookSet::AUTHENTICATE
    }
    async fn authenticate(&self, c: &ConnectInfo) -> AuthDecision {
        self.0.lock().unwrap().push((
            c.client.client_id.to_string(),
            c.client.cert_common_name.as_deref().map(str::to_string),
            c.client.listener.to_string(),
        ));
        AuthDecision::Allow(vec![])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mtls_with_common_name_for_hooks() {
    let pki = Pki::new();
    let mut cfg = test_config();
    cfg.listeners.push(pki.listener(ListenerKind::Tls));
    let mut mtls = pki.listener(ListenerKind::Tls);
    mtls.client_ca = Some(pki.ca_file.clone());
    cfg.listeners.push(mtls);
    let server = start(cfg).await;
    let seen = Arc::new(SeenBy(Mutex::new(Vec::new())));
    server.broker.hooks.register(0, seen.clone()).unwrap();
    let tls_addrs: Vec<_> = server
        .listeners
        .iter()
        .filter(|(k, _)| *k == ListenerKind::Tls)
        .map(|(_, a)| *a)
        .collect();

    // Plain TLS: a subscriber over TLS gets a message published over TCP.
    let mut o = v4::options(tls_addrs[0], "tls-sub");
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(pki.client_config(None)),
    ));
    let mut sub = v4::connect(o).await;
    sub.subscribe("secure/#", v4::QoS::AtLeastOnce).await;
    let p = v4::connect(v4::options(tcp_addr(&server), "tcp-pub")).await;
    p.client
        .publish("secure/x", v4::QoS::AtLeastOnce, false, "over tls")
        .await
        .unwrap();
    assert_eq!(&sub.next_publish().await.payload[..], b"over tls");

    // mTLS without a client certificate: refused during the handshake.
    let mut o = v4::options(tls_addrs[1], "no-cert");
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(pki.client_config(None)),
    ));
    assert!(v4::connect_any(o).await.is_err());

    // mTLS with a certificate: the common name reaches the authenticate hook.
    let mut o = v5::options(tls_addrs[1], "with-cert");
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(pki.client_config(Some(pki.client_cert("device-42")))),
    ));
    let c = v5::connect(o).await;
    drop(c);
    let seen = seen.0.lock().unwrap().clone();
    let entry = seen
        .iter()
        .find(|(id, _, _)| id == "with-cert")
        .expect("hook saw the client");
    assert_eq!(entry.1.as_deref(), Some("device-42"));
    assert!(entry.2.starts_with("tls:"), "listener name: {}", entry.2);
    let plain = seen.iter().find(|(id, _, _)| id == "tls-sub").unwrap();
    assert_eq!(plain.1, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_secure_websocket_with_rumqttc() {
    let pki = Pki::new();
    let mut cfg = test_config();
    cfg.listeners.push(pki.listener(ListenerKind::Wss));
    let server = start(cfg).await;
    let ws = server.addr(ListenerKind::Ws).unwrap();
    let wss = server.addr(ListenerKind::Wss).unwrap();

    let mut o = v4::MqttOptions::new(
        "ws-sub",
        format!("ws://127.0.0.1:{}/mqtt", ws.port()),
        ws.port(),
    );
    o.set_transport(rumqttc::Transport::Ws);
    let mut ws_sub = v4::connect(o).await;
    ws_sub.subscribe("web/#", v4::QoS::AtLeastOnce).await;

    let mut o = v5::MqttOptions::new(
        "wss-pub",
        format!("wss://127.0.0.1:{}/mqtt", wss.port()),
        wss.port(),
    );
    o.set_transport(rumqttc::Transport::wss_with_config(
        rumqttc::TlsConfiguration::Rustls(pki.client_config(None)),
    ));
    let wss_pub = v5::connect(o).await;
    for i in 0..50u32 {
        wss_pub
            .client
            .publish("web/x", v5::QoS::AtLeastOnce, false, vec![i as u8; 3000])
            .await
            .unwrap();
    }
    for i in 0..50u32 {
        let p = ws_sub.next_publish().await;
        assert_eq!(p.payload.len(), 3000);
        assert_eq!(p.payload[0], i as u8);
    }
}

async fn ws_connect(
    port: u16,
    path: &str,
    subprotocol: Option<&str>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        Option<String>,
    ),
    String,
> {
    let mut req = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .unwrap();
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| e.to_string())?;
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_string());
    Ok((ws, chosen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_may_split_or_pack_packets() {
    let server = start(test_config()).await;
    let port = server.addr(ListenerKind::Ws).unwrap().port();
    assert!(
        ws_connect(port, "/other", Some("mqtt")).await.is_err(),
        "wrong path refused"
    );
    let (_, chosen) = ws_connect(port, "/mqtt", Some("mqttv3.1")).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("mqttv3.1"));
    let (mut ws, chosen) = ws_connect(port, "/mqtt", Some("mqtt")).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("mqtt"));

    let encode = |p: &Packet| {
        let mut b = bytes::BytesMut::new();
        protocol::encode_packet(p, ProtocolVersion::V311, &mut b);
        b.to_vec()
    };
    let connect = encode(&Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V311,
        "framer",
    ))));
    // CONNECT split across three frames.
    ws.send(WsMessage::Binary(connect[..3].to_vec().into()))
        .await
        .unwrap();
    ws.send(WsMessage::Binary(connect[3..7].to_vec().into()))
        .await
        .unwrap();
    ws.send(WsMessage::Binary(connect[7..].to_vec().into()))
        .await
        .unwrap();
    // SUBSCRIBE, PUBLISH and PINGREQ packed into one frame.
    let mut packed = encode(&Packet::Subscribe(protocol::Subscribe {
        packet_id: 1,
        filters: vec![("frames".into(), Default::default())],
        properties: Default::default(),
    }));
    packed.extend(encode(&Packet::Publish(protocol::Publish {
        dup: false,
        qos: protocol::QoS::AtMostOnce,
        retain: false,
        topic: "frames".into(),
        packet_id: 0,
        properties: Default::default(),
        payload: bytes::Bytes::from_static(b"packed"),
    })));
    packed.extend(encode(&Packet::PingReq));
    ws.send(WsMessage::Binary(packed.into())).await.unwrap();

    let mut buf = bytes::BytesMut::new();
    let mut got = Vec::new();
    while got.len() < 4 {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let WsMessage::Binary(b) = frame {
            buf.extend_from_slice(&b);
        }
        while let Some(p) =
            protocol::decode_packet(&mut buf, Some(ProtocolVersion::V311), 1 << 20).unwrap()
        {
            got.push(p);
        }
    }
    assert!(matches!(got[0], Packet::ConnAck(_)));
    assert!(matches!(got[1], Packet::SubAck(_)));
    assert!(got
        .iter()
        .any(|p| matches!(p, Packet::Publish(p) if &p.payload[..] == b"packed")));
    assert!(got.iter().any(|p| matches!(p, Packet::PingResp)));
}
