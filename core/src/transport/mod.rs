//! Listeners: TCP, TLS (rustls), WebSocket and secure WebSocket (tokio-tungstenite), and the
//! JSON-over-WebSocket bridge. Every MQTT transport ends in the same byte-stream handler,
//! [`crate::client::serve`].

mod tls;
pub(crate) mod ws;
pub mod ws_json;

use crate::broker::Broker;
use crate::client::{serve, ListenerContext};
use crate::config::{ListenerConfig, ListenerKind};
use crate::guard::rate::TokenBucket;
use crate::metrics::Limit;
use futures_util::FutureExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

pub use tls::{load_tls_config, tls_acceptor, TlsError};
pub use tokio_rustls::TlsAcceptor;
pub use ws::WsByteStream;

/// A listener that has bound its socket and loaded its certificates, not yet accepting.
pub struct BoundListener {
    pub config: ListenerConfig,
    pub local_addr: SocketAddr,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr} ({kind}): {source}")]
    Bind {
        addr: SocketAddr,
        kind: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl BoundListener {
    pub async fn bind(config: ListenerConfig) -> Result<Self, ListenError> {
        let tls = if config.kind.needs_tls() {
            Some(load_tls_config(&config)?)
        } else {
            None
        };
        let listener =
            TcpListener::bind(config.bind)
                .await
                .map_err(|source| ListenError::Bind {
                    addr: config.bind,
                    kind: config.kind.as_str(),
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ListenError::Bind {
            addr: config.bind,
            kind: config.kind.as_str(),
            source,
        })?;
        Ok(Self {
            config,
            local_addr,
            listener,
            tls,
        })
    }

    /// `kind:addr` as used in logs and `ClientInfo::listener`.
    pub fn name(&self) -> String {
        format!("{}:{}", self.config.kind.as_str(), self.local_addr)
    }

    /// Accepts connections until shutdown; each runs in its own task tracked by `tasks`.
    pub async fn run(self, broker: Arc<Broker>, tasks: TaskTracker) {
        let name: Arc<str> = Arc::from(self.name());
        let ctx = Arc::new(ListenerContext {
            allow_anonymous: self
                .config
                .allow_anonymous
                .unwrap_or(broker.config.allow_anonymous),
            broker: broker.clone(),
            name: name.clone(),
        });
        let open = Arc::new(AtomicUsize::new(0));
        let mut rate = TokenBucket::new(broker.guard.limits.max_connection_rate);
        let shared = Arc::new(self);
        loop {
            let accepted = tokio::select! {
                _ = broker.shutdown.cancelled() => break,
                a = shared.listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if open.load(Ordering::Relaxed) >= shared.config.max_connections {
                broker.metrics.limit_hit(Limit::ListenerConnections);
                debug!(listener = %name, %peer, "max_connections reached; refusing");
                drop(tcp);
                continue;
            }
            let ip_slot = match broker.guard.admit_socket(peer.ip(), &broker.metrics) {
                Ok(slot) => slot,
                Err(why) => {
                    debug!(listener = %name, %peer, reason = ?why, "connection refused at accept");
                    drop(tcp);
                    continue;
                }
            };
            // Past the connection rate the next accept waits: the kernel's queue holds the
            // rest, and a reconnect storm after a restart is spread out instead of refused.
            if let Some(wait) = rate.as_mut().and_then(|r| r.take_or_wait(Instant::now())) {
                broker.metrics.limit_hit(Limit::ConnectionRate);
                tokio::time::sleep(wait).await;
            }
            let _ = tcp.set_nodelay(true);
            open.fetch_add(1, Ordering::Relaxed);
            let guard = (OpenGuard(open.clone()), ip_slot);
            let ctx = ctx.clone();
            // Plain TCP, the common case, gets a task sized for plain TCP; TLS and WebSocket
            // connections carry several KB of extra state and get their own (boxed) futures.
            if shared.tls.is_none() && shared.config.kind == ListenerKind::Tcp {
                // `map`, not an async block: a block keeps room for what it captured (the
                // socket, address and context, moved on into `serve`) as long as it lives.
                tasks.spawn(serve(tcp, peer, None, ctx).map(move |()| drop(guard)));
            } else {
                let me = shared.clone();
                tasks.spawn(async move {
                    let _guard = guard;
                    me.handle(tcp, peer, ctx).await;
                });
            }
        }
        info!(listener = %name, "listener stopped");
    }

    /// Each arm's future is boxed: a TLS or WebSocket connection's state is several KB, and an
    /// inline match would size every plain TCP connection's task to the largest arm.
    async fn handle(&self, tcp: TcpStream, peer: SocketAddr, ctx: Arc<ListenerContext>) {
        match (&self.tls, self.config.kind) {
            (None, ListenerKind::Tcp) => serve(tcp, peer, None, ctx).await,
            (None, ListenerKind::Ws) => Box::pin(self.serve_ws(tcp, peer, None, ctx)).await,
            (None, ListenerKind::WsJson) => Box::pin(self.serve_ws_json(tcp, peer, ctx)).await,
            (Some(acceptor), kind) => {
                Box::pin(self.serve_tls(acceptor, kind, tcp, peer, ctx)).await
            }
            (None, _) => error!(listener = %ctx.name, "listener kind needs TLS but has none"),
        }
    }

    async fn serve_ws<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        cn: Option<Arc<str>>,
        ctx: Arc<ListenerContext>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let limit = ws::mqtt_message_limit(ctx.broker.config.max_packet_size);
        match within_connect_timeout(&ctx, ws::accept(stream, self.config.path(), limit)).await {
            Some(Ok(ws)) => serve(ws, peer, cn, ctx).await,
            Some(Err(e)) => {
                debug!(listener = %ctx.name, %peer, error = %e, "websocket handshake failed")
            }
            None => {
                debug!(listener = %ctx.name, %peer, "no websocket upgrade within the connect timeout")
            }
        }
    }

    async fn serve_ws_json(&self, tcp: TcpStream, peer: SocketAddr, ctx: Arc<ListenerContext>) {
        let limit = ws::json_message_limit(ctx.broker.config.max_packet_size);
        match within_connect_timeout(&ctx, ws::accept_json(tcp, self.config.path(), limit)).await {
            Some(Ok((ws, query))) => ws_json::serve(ws, peer, query, ctx).await,
            Some(Err(e)) => {
                debug!(listener = %ctx.name, %peer, error = %e, "websocket handshake failed")
            }
            None => {
                debug!(listener = %ctx.name, %peer, "no websocket upgrade within the connect timeout")
            }
        }
    }

    async fn serve_tls(
        &self,
        acceptor: &tokio_rustls::TlsAcceptor,
        kind: ListenerKind,
        tcp: TcpStream,
        peer: SocketAddr,
        ctx: Arc<ListenerContext>,
    ) {
        let stream = match within_connect_timeout(&ctx, acceptor.accept(tcp)).await {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                debug!(listener = %ctx.name, %peer, error = %e, "TLS handshake failed");
                return;
            }
            None => {
                debug!(listener = %ctx.name, %peer, "no TLS handshake within the connect timeout");
                return;
            }
        };
        let cn = tls::peer_common_name(&stream);
        if kind == ListenerKind::Wss {
            self.serve_ws(stream, peer, cn, ctx).await
        } else {
            serve(stream, peer, cn, ctx).await
        }
    }
}

/// `step` (a TLS handshake, a WebSocket upgrade) bounded by the connect timeout: a socket that
/// never completes it is closed like one that never sends CONNECT. `None` when time ran out.
async fn within_connect_timeout<T>(
    ctx: &ListenerContext,
    step: impl std::future::Future<Output = T>,
) -> Option<T> {
    let limit = std::time::Duration::from_secs(ctx.broker.config.connect_timeout_s);
    let done = tokio::time::timeout(limit, step).await.ok();
    if done.is_none() {
        ctx.broker.metrics.limit_hit(Limit::HandshakeTimeout);
    }
    done
}

struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
