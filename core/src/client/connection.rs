//! One MQTT connection after CONNECT: its state, the main loop that reads, drains the session's
//! queue and enforces the keep-alive in one task (`select!`), and how it ends.

use super::outbound::OutAliases;
use super::pipeline::Attachment;
use super::ListenerContext;
use crate::broker::live::LiveClient;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::protocol::*;
use crate::session::Standing;
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};

/// Buffers above this are given back when the connection goes idle.
pub(super) const IDLE_BUFFER_KEEP: usize = 1024;
/// Smallest read: enough for control packets and small publishes, cheap to hold while idle.
pub(super) const READ_MIN: usize = 64;
/// Largest read, reached by doubling while reads keep filling the buffer.
const READ_MAX: usize = 64 * 1024;
/// After a DISCONNECT that a still-writing client must read (Receive Maximum exceeded), how
/// long its further packets are read and discarded so it sees the reason, not a reset.
const LINGER: Duration = Duration::from_millis(500);

/// Why a connection ends; decides the DISCONNECT we send and whether the will is published.
#[derive(Debug, Clone, Copy)]
pub(super) struct Close {
    pub(super) code: ReasonCode,
    /// Publish the will (anything but a normal DISCONNECT from the client).
    pub(super) will: bool,
    /// Send a v5 DISCONNECT before closing.
    pub(super) notify: bool,
    /// Keep reading (and discarding) for [`LINGER`] after the DISCONNECT.
    pub(super) linger: bool,
    pub(super) why: &'static str,
}

impl Close {
    pub(super) fn error(code: ReasonCode, why: &'static str) -> Self {
        Self {
            code,
            will: true,
            notify: true,
            linger: false,
            why,
        }
    }
    pub(super) fn silent(why: &'static str) -> Self {
        Self {
            code: ReasonCode::UNSPECIFIED_ERROR,
            will: true,
            notify: false,
            linger: false,
            why,
        }
    }
}

impl Close {
    /// Why a connection that no longer stands as its session's owner must end.
    pub(super) fn lost(standing: Standing) -> Option<Self> {
        match standing {
            Standing::Owner => None,
            Standing::TakenOver => Some(Close::error(
                ReasonCode::SESSION_TAKEN_OVER,
                "session taken over",
            )),
            Standing::Evicted => Some(Close::error(
                ReasonCode::QUOTA_EXCEEDED,
                "slow subscriber: its queue overflowed",
            )),
            Standing::Kicked => Some(Close::error(
                ReasonCode::ADMINISTRATIVE_ACTION,
                "kicked by an operator",
            )),
        }
    }
}

impl From<DecodeError> for Close {
    fn from(e: DecodeError) -> Self {
        Close::error(e.reason_code(), "invalid packet")
    }
}

pub(super) struct Connection<S> {
    pub(super) stream: S,
    pub(super) att: Attachment,
    pub(super) ctx: Arc<ListenerContext>,
    pub(super) version: ProtocolVersion,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    /// The topic of the last PUBLISH read, shared by the next while it repeats.
    pub(super) topics: TopicCache,
    /// Boxed: most connections have none, and it is large.
    pub(super) will: Option<Box<LastWill>>,
    /// Keep-alive in force (the client's, our Server Keep Alive, or for a v3 client above
    /// `max_keepalive_s`, that limit); 0 disables it.
    pub(super) keep_alive: u16,
    pub(super) last_read: Instant,
    /// Outbound window: the client's Receive Maximum (v5) capped by our max_inflight.
    pub(super) send_window: usize,
    /// Largest packet the client accepts (v5 Maximum Packet Size).
    pub(super) client_max_packet: usize,
    /// Topic aliases the client set. Created on first use: most clients never send one.
    /// Boxed so an idle connection pays one pointer, not an empty map's 48 bytes.
    #[allow(clippy::box_collection)]
    pub(super) topic_aliases: Option<Box<HashMap<u16, Arc<str>>>>,
    /// Topic aliases we use towards the client (v5, when its CONNECT allows them).
    pub(super) out_aliases: Option<Box<OutAliases>>,
    pub(super) session_expiry: u32,
    /// Whether the client wants reason strings and user properties on errors (v5).
    pub(super) problem_information: bool,
    /// Bytes were read while a write was blocked and still need decoding.
    pub(super) unprocessed_input: bool,
    /// Size of the next read: grows while reads fill it, shrinks when they do not, so an idle
    /// connection holds a small buffer and a busy one reads in large batches.
    pub(super) read_size: usize,
    /// Wakes a write blocked on a full socket to check on the client (see `write_out`).
    pub(super) write_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// The connection's main loop; returns why it ended.
    pub(super) async fn run(&mut self) -> Close {
        let keep_alive = Duration::from_millis(u64::from(self.keep_alive) * 1500);
        let sleep = tokio::time::sleep(keep_alive.max(Duration::from_secs(1)));
        tokio::pin!(sleep);
        loop {
            if let Err(close) = self.flush().await {
                return close;
            }
            if self.unprocessed_input {
                self.unprocessed_input = false;
                if let Err(close) = Box::pin(self.process_input()).await {
                    return close;
                }
                continue;
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > IDLE_BUFFER_KEEP.max(self.read_size) {
                self.rbuf = BytesMut::new();
            }
            if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 2 {
                self.rbuf.reserve(self.read_size);
            }
            let spare = self.rbuf.capacity() - self.rbuf.len();
            tokio::select! {
                biased;
                // Shutdown also arrives through the session's wake-up (`Broker::begin_shutdown`),
                // which saves every connection a cancellation future of its own.
                _ = self.att.session.notified() => {
                    if self.att.broker.shutdown.is_cancelled() {
                        return Close::error(ReasonCode::SERVER_SHUTTING_DOWN, "server shutting down");
                    }
                    if let Some(close) = Close::lost(self.att.standing()) {
                        return close;
                    }
                }
                read = self.stream.read_buf(&mut self.rbuf) => {
                    match read {
                        Ok(0) => return Close::silent("connection closed by client"),
                        Ok(n) => {
                            Metrics::add(&self.att.broker.metrics.bytes_received, n as u64);
                            LiveClient::count(&self.att.live.bytes_in, n as u64);
                            self.last_read = Instant::now();
                            if n >= spare {
                                self.read_size = (self.read_size * 2).min(READ_MAX);
                            } else if n < self.read_size / 4 {
                                self.read_size = (self.read_size / 2).max(READ_MIN);
                            }
                            // Boxed: packet handling is a large future, and keeping it inline
                            // would make every idle connection's task that large.
                            if let Err(close) = Box::pin(self.process_input()).await {
                                return close;
                            }
                        }
                        Err(_) => return Close::silent("socket error"),
                    }
                }
                _ = &mut sleep, if self.keep_alive > 0 => {
                    let idle = self.last_read.elapsed();
                    if idle >= keep_alive {
                        return Close::error(ReasonCode::KEEP_ALIVE_TIMEOUT, "keep-alive timeout");
                    }
                    sleep.as_mut().reset((self.last_read + keep_alive).into());
                }
            }
        }
    }

    /// Ends the connection: DISCONNECT to v5 clients, will, session detach, events.
    pub(super) async fn finish(mut self, close: Close) {
        let v5 = self.version.is_v5();
        if close.notify && v5 {
            let mut props = Properties::default();
            if self.problem_information {
                props.reason_string = Some(close.why.to_string());
            }
            self.send(&Packet::Disconnect(Disconnect {
                code: close.code,
                properties: props.into(),
            }));
        }
        // Acknowledgements already in the buffer go out first, then the DISCONNECT (v5).
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if !self.wbuf.is_empty() {
                let _ = self.stream.write_all(&self.wbuf).await;
            }
            if close.linger && v5 {
                let _ = self.stream.flush().await;
                let mut sink = [0u8; 2048];
                let _ = tokio::time::timeout(LINGER, async {
                    while matches!(self.stream.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
            }
            let _ = self.stream.shutdown().await;
        })
        .await;
        let client_id = &self.att.client.client_id;
        info!(client_id = %client_id, listener = %self.ctx.name, peer = %self.att.client.peer_addr, reason = close.why, code = %close.code, "client disconnected");
        if close.will {
            if let Some(will) = self.will.take() {
                self.publish_will(*will).await;
            }
        }
        self.att.close(close.why);
    }

    async fn publish_will(&self, will: LastWill) {
        if !self.att.may_publish(&will.topic, will.qos).await {
            warn!(client_id = %self.att.client.client_id, listener = %self.ctx.name, topic = %will.topic, "will message not authorized; dropped");
            return;
        }
        let delay = will.properties.will_delay_interval.unwrap_or(0);
        let msg = Message::from_will(&will, self.att.client.client_id.clone());
        self.att
            .broker
            .schedule_will(&self.att.session, msg, delay, self.att.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every read that brings packets allocates the future that handles them: past 1032 bytes
    /// glibc's malloc leaves its per-thread cache for a slow path (measured: +13% instructions
    /// per message in fan-in). Rare paths inside it are boxed to stay below. And every idle
    /// connection holds its task: its size is the largest part of an idle connection's memory.
    #[tokio::test]
    async fn per_read_and_per_connection_futures_stay_small() {
        let broker = crate::broker::Broker::new(Default::default());
        let client = Arc::new(crate::hooks::ClientInfo {
            client_id: "c".into(),
            username: None,
            peer_addr: "127.0.0.1:1".parse().unwrap(),
            protocol: ProtocolVersion::V311,
            listener: "tcp:test".into(),
            cert_common_name: None,
            attributes: vec![],
            extension: Default::default(),
        });
        let facts = crate::hooks::ConnectFacts {
            keep_alive: 0,
            clean_start: true,
            session_expiry: 0,
            at: std::time::SystemTime::now(),
        };
        let (att, _) = Attachment::open(&broker, client, facts).unwrap();
        let ctx = Arc::new(ListenerContext {
            broker: broker.clone(),
            name: "tcp:test".into(),
            allow_anonymous: true,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut conn = Connection {
            stream,
            att,
            ctx,
            version: ProtocolVersion::V311,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            topics: TopicCache::default(),
            will: None,
            keep_alive: 0,
            last_read: Instant::now(),
            send_window: 1,
            client_max_packet: usize::MAX,
            topic_aliases: None,
            out_aliases: None,
            session_expiry: 0,
            problem_information: true,
            unprocessed_input: false,
            read_size: READ_MIN,
            write_timer: None,
        };
        let size = std::mem::size_of_val(&conn.process_input());
        assert!(size <= 1032, "process_input() future is {size} bytes");
        // What an idle connection's task holds (with the task's own header, 896 bytes today:
        // tokio rounds tasks to 128). Measured 704; 792 as an `async fn`.
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let serve = crate::client::serve(
            stream,
            "127.0.0.1:1".parse().unwrap(),
            None,
            conn.ctx.clone(),
        );
        let size = std::mem::size_of_val(&serve);
        assert!(size <= 720, "a connection's future is {size} bytes");
    }
}
