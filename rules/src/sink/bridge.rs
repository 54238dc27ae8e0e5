//! The MQTT bridge: an `mqtt` sink with `server` forwards outputs to another broker over TCP
//! or TLS, with credentials, at QoS 0 or 1. At QoS 1 it keeps up to `inflight` messages
//! unacknowledged and counts a record sent only when the other broker's PUBACK came back; a
//! lost connection leaves the unacknowledged records to the driver's retries (and to the disk
//! buffer across restarts of either side). The codec is the broker's own.

use super::mqtt::Shape;
use super::{Failure, KindError, Record};
use crate::tls::TlsMode;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::protocol::{
    decode_packet, encode_packet, Connect, Packet, Props, ProtocolVersion, Publish, QoS, ReasonCode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tracing::info;

/// TCP, TLS and CONNACK together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait for the next PUBACK before the connection is given up.
const ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// Progress a write must make within [`ACK_TIMEOUT`].
const WRITE_CHUNK: usize = 64 * 1024;
/// What the bridge accepts from the other broker (it only expects acknowledgements).
const MAX_PACKET: usize = 1 << 20;
/// Topics are checked like a client's; the other broker applies its own level limit.
const MAX_TOPIC_LEVELS: usize = 1024;

/// The bridge's own keys of an `mqtt` sink.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BridgeConfig {
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sslmode: Option<TlsMode>,
    pub ca_file: Option<PathBuf>,
    pub inflight: Option<u16>,
    pub keep_alive_s: Option<u16>,
    pub protocol: Option<u8>,
}

impl BridgeConfig {
    pub(super) fn check(&self, qos: u8) -> Result<(), KindError> {
        if qos > 1 {
            return Err(KindError::Invalid(
                "qos: a bridge sends at QoS 0 or 1".into(),
            ));
        }
        if !matches!(self.protocol, None | Some(4) | Some(5)) {
            return Err(KindError::Invalid(
                "protocol: 4 (MQTT 3.1.1) or 5 (MQTT 5.0)".into(),
            ));
        }
        if self.inflight == Some(0) {
            return Err(KindError::Invalid("inflight: at least 1".into()));
        }
        if self.sslmode == Some(TlsMode::Prefer) {
            return Err(KindError::Invalid(
                "sslmode: disable, require, verify-ca or verify-full for a bridge".into(),
            ));
        }
        Ok(())
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Writer = Arc<tokio::sync::Mutex<WriteHalf<Box<dyn Io>>>>;

/// An open connection: the writing half, and the PUBACKs its reader task forwards.
struct Conn {
    writer: Writer,
    acks: mpsc::Receiver<(u16, ReasonCode)>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub struct Bridge {
    name: String,
    server: String,
    host: String,
    client_id: String,
    username: Option<String>,
    password: Option<String>,
    tls: Option<tokio_rustls::TlsConnector>,
    version: ProtocolVersion,
    inflight: usize,
    keep_alive: u16,
    shape: Shape,
    conn: Option<Conn>,
    next_id: u16,
}

impl Bridge {
    pub(super) fn new(
        name: &str,
        server: &str,
        c: &BridgeConfig,
        shape: Shape,
    ) -> Result<Self, String> {
        let host = server
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("server: expected host:port, got {server:?}"))?;
        let mode = c.sslmode.unwrap_or(TlsMode::Disable);
        let tls = match mode {
            TlsMode::Disable => None,
            _ => Some(tokio_rustls::TlsConnector::from(Arc::new(
                crate::tls::client_config(mode, c.ca_file.as_deref())?,
            ))),
        };
        Ok(Self {
            name: name.to_string(),
            server: server.to_string(),
            host: host.to_string(),
            client_id: c
                .client_id
                .clone()
                .unwrap_or_else(|| format!("switchyard-bridge-{name}")),
            username: c.username.clone(),
            password: c.password.clone(),
            tls,
            version: if c.protocol == Some(4) {
                ProtocolVersion::V311
            } else {
                ProtocolVersion::V5
            },
            inflight: usize::from(c.inflight.unwrap_or(100)),
            keep_alive: c.keep_alive_s.unwrap_or(60),
            shape,
            conn: None,
            next_id: 0,
        })
    }

    async fn connect(&self) -> Result<Conn, String> {
        let server = &self.server;
        let tcp = tokio::net::TcpStream::connect(server)
            .await
            .map_err(|e| format!("{server}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("{server}: {e}"))?;
                Box::new(
                    tls.connect(name, tcp)
                        .await
                        .map_err(|e| format!("{server}: TLS: {e}"))?,
                )
            }
        };
        let (mut rd, mut wr) = tokio::io::split(stream);
        let connect = Packet::Connect(Box::new(Connect {
            protocol: self.version,
            // Unacknowledged records are the driver's to send again, on any connection.
            clean_start: true,
            keep_alive: self.keep_alive,
            client_id: self.client_id.clone(),
            will: None,
            username: self.username.clone(),
            password: self.password.clone().map(Bytes::from),
            properties: Props::default(),
        }));
        let mut out = BytesMut::new();
        encode_packet(&connect, self.version, &mut out);
        write_out(&mut wr, &out)
            .await
            .map_err(|e| format!("{server}: {e}"))?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            match decode_packet(&mut buf, Some(self.version), MAX_PACKET) {
                Ok(Some(Packet::ConnAck(ack))) if ack.code == ReasonCode::SUCCESS => break,
                Ok(Some(Packet::ConnAck(ack))) => {
                    return Err(format!("{server} refused the bridge: {}", ack.code))
                }
                Ok(Some(other)) => {
                    return Err(format!("{server}: {} before CONNACK", other.name()))
                }
                Ok(None) => {}
                Err(e) => return Err(format!("{server}: {e}")),
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) => return Err(format!("{server} closed the connection")),
                Ok(_) => {}
                Err(e) => return Err(format!("{server}: {e}")),
            }
        }
        info!(sink = %self.name, server = %server, "bridge connected");
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(wr));
        // Bounded: a broker that sends acknowledgements nobody asked for stops being read
        // instead of filling memory.
        let (tx, acks) = mpsc::channel(self.inflight.max(16) * 2);
        let reader = tokio::spawn(read_loop(
            rd,
            buf,
            self.version,
            tx,
            writer.clone(),
            self.keep_alive,
        ));
        Ok(Conn {
            writer,
            acks,
            reader,
        })
    }

    fn packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    fn publish(&mut self, shaped: super::mqtt::Shaped, qos: QoS, out: &mut BytesMut) -> u16 {
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            self.packet_id()
        };
        let publish = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: shaped.retain,
            topic: shaped.topic.into(),
            packet_id,
            properties: shaped.properties,
            payload: shaped.payload.into(),
        });
        encode_packet(&publish, self.version, out);
        packet_id
    }
}

/// Writes `bytes` and flushes: over TLS a write that meets a full socket returns with the
/// encrypted rest still in the TLS layer, sent only by a later write or a flush. A server that
/// takes no [`WRITE_CHUNK`] within [`ACK_TIMEOUT`] has stopped reading: the write fails
/// instead of holding the sink.
async fn write_out(w: &mut WriteHalf<Box<dyn Io>>, bytes: &[u8]) -> std::io::Result<()> {
    let stalled = || std::io::Error::new(std::io::ErrorKind::TimedOut, "the server reads nothing");
    for chunk in bytes.chunks(WRITE_CHUNK) {
        tokio::time::timeout(ACK_TIMEOUT, w.write_all(chunk))
            .await
            .map_err(|_| stalled())??;
    }
    tokio::time::timeout(ACK_TIMEOUT, w.flush())
        .await
        .map_err(|_| stalled())?
}

/// Forwards PUBACKs and keeps the connection alive; ends (closing the channel) when the
/// connection does.
async fn read_loop(
    mut rd: tokio::io::ReadHalf<Box<dyn Io>>,
    mut buf: BytesMut,
    version: ProtocolVersion,
    acks: mpsc::Sender<(u16, ReasonCode)>,
    writer: Writer,
    keep_alive: u16,
) {
    let period = Duration::from_secs(u64::from(keep_alive.max(1))) / 2;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        loop {
            match decode_packet(&mut buf, Some(version), MAX_PACKET) {
                Ok(Some(Packet::PubAck(a))) => {
                    if acks.send((a.packet_id, a.code)).await.is_err() {
                        return;
                    }
                }
                Ok(Some(Packet::Disconnect(_))) | Err(_) => return,
                Ok(Some(_)) => {}
                Ok(None) => break,
            }
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = ping.tick(), if keep_alive > 0 => {
                let mut out = BytesMut::new();
                encode_packet(&Packet::PingReq, version, &mut out);
                if write_out(&mut *writer.lock().await, &out).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[async_trait]
impl super::Deliver for Bridge {
    async fn deliver(&mut self, batch: &[Record]) -> Vec<(usize, Failure)> {
        if self.conn.is_none() {
            match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
                Ok(Ok(conn)) => self.conn = Some(conn),
                Ok(Err(why)) => return retry_all(0..batch.len(), &why),
                Err(_) => return retry_all(0..batch.len(), "no CONNACK in time"),
            }
        }
        let mut failures = Vec::new();
        let mut shaped = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            match self.shape.render(record, MAX_TOPIC_LEVELS) {
                Ok(s) => shaped.push((i, s)),
                Err(why) => failures.push((i, Failure::Permanent(why))),
            }
        }
        let qos = self.shape.qos;
        let mut waiting: HashMap<u16, usize> = HashMap::new();
        let mut pending = shaped.into_iter();
        let mut broken = None;
        loop {
            let mut out = BytesMut::new();
            while qos == QoS::AtMostOnce || waiting.len() < self.inflight {
                let Some((i, s)) = pending.next() else { break };
                let id = self.publish(s, qos, &mut out);
                if qos != QoS::AtMostOnce {
                    waiting.insert(id, i);
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                break;
            };
            if !out.is_empty() {
                let mut w = conn.writer.lock().await;
                if let Err(e) = write_out(&mut w, &out).await {
                    broken = Some(e.to_string());
                    break;
                }
            }
            if waiting.is_empty() {
                // QoS 0 wrote everything at once; QoS 1 has no more to send or wait for.
                break;
            }
            match tokio::time::timeout(ACK_TIMEOUT, conn.acks.recv()).await {
                Ok(Some((id, code))) => {
                    let Some(i) = waiting.remove(&id) else {
                        continue;
                    };
                    if code.0 >= 0x80 {
                        let why = format!("{} refused the message: {code}", self.server);
                        let busy =
                            code == ReasonCode::QUOTA_EXCEEDED || code == ReasonCode::SERVER_BUSY;
                        failures.push((
                            i,
                            if busy {
                                Failure::Retry(why)
                            } else {
                                Failure::Permanent(why)
                            },
                        ));
                    }
                }
                Ok(None) => {
                    broken = Some("connection closed".into());
                    break;
                }
                Err(_) => {
                    broken = Some("no PUBACK in time".into());
                    break;
                }
            }
        }
        if let Some(why) = broken {
            // Whatever was not acknowledged goes again, on a new connection.
            self.conn = None;
            let why = format!("{}: {why}", self.server);
            let mut left: Vec<usize> = waiting.into_values().collect();
            left.extend(pending.map(|(i, _)| i));
            left.sort_unstable();
            failures.extend(retry_all(left, &why));
        }
        failures
    }
}

fn retry_all(indexes: impl IntoIterator<Item = usize>, why: &str) -> Vec<(usize, Failure)> {
    indexes
        .into_iter()
        .map(|i| (i, Failure::Retry(format!("bridge: {why}"))))
        .collect()
}
