//! The HTTP endpoint for operators (DESIGN: port 18083): `GET /health` for load balancers and
//! orchestrators, `GET /metrics` in the Prometheus text format, and the JSON status of
//! extensions (`GET /rules`, `GET /plugins`: what is loaded, reload errors, counters), and the
//! bans in force (`GET /bans`).
//! Deliberately tiny: one request per connection, no keep-alive, no bodies accepted, request
//! heads up to 8 KB, at most `max_connections` at once. Everything but the open endpoints
//! (`/health`, `/metrics` unless `open_metrics = false`) shows configuration and needs
//! `Authorization: Bearer <token>`; with no token configured it is served to loopback only.

use crate::broker::Broker;
use crate::config::HttpConfig;
use crate::metrics::{Limit, Metrics};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

/// Longest request head we read; anything larger is refused.
const MAX_HEAD: usize = 8 * 1024;

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until shutdown.
pub async fn run(listener: TcpListener, broker: Arc<Broker>, cfg: HttpConfig) {
    if let Ok(addr) = listener.local_addr() {
        info!(listener = %format!("http:{addr}"), "listening");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
    let cfg = Arc::new(cfg);
    loop {
        let accepted = tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            broker.metrics.limit_hit(Limit::Http);
            debug!(%peer, "http: max_connections reached; closed");
            continue;
        };
        let broker = broker.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let served =
                tokio::time::timeout(Duration::from_secs(10), serve(stream, peer, &broker, &cfg))
                    .await;
            if !matches!(served, Ok(Ok(()))) {
                debug!(%peer, "http request failed or timed out");
            }
        });
    }
}

/// Whether the request may see the endpoint at `path`.
fn authorized(head: &[u8], peer: SocketAddr, path: &str, cfg: &HttpConfig) -> bool {
    if cfg.open_metrics && matches!(path, "/health" | "/metrics") {
        return true;
    }
    if cfg.token.is_empty() {
        return peer.ip().is_loopback();
    }
    let text = String::from_utf8_lossy(head);
    let presented = text.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("authorization") {
            return None;
        }
        value.trim().strip_prefix("Bearer ").map(str::trim)
    });
    // Compared in constant time: the answer's timing must not reveal a prefix.
    presented.is_some_and(|t| {
        t.len() == cfg.token.len()
            && t.bytes()
                .zip(cfg.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    broker: &Broker,
    cfg: &HttpConfig,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            broker.metrics.limit_hit(Limit::Http);
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "too large\n",
            )
            .await;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if !authorized(&head, peer, path, cfg) {
        let why = if cfg.token.is_empty() {
            "served to this machine only: set [http] token to reach it from elsewhere\n"
        } else {
            "missing or wrong Authorization: Bearer token\n"
        };
        return respond(&mut stream, "401 Unauthorized", "text/plain", why).await;
    }
    match (method, path) {
        ("GET", "/health") => {
            // Degraded still answers 200: the broker serves, but an operator must look.
            let problems = broker.problems();
            let body = serde_json::json!({
                "status": if problems.is_empty() { "ok" } else { "degraded" },
                "uptime_s": broker.started.elapsed().as_secs(),
                "clients_connected": Metrics::get(&broker.metrics.clients_connected),
                "problems": problems,
            });
            respond(
                &mut stream,
                "200 OK",
                "application/json",
                &format!("{body}\n"),
            )
            .await
        }
        ("GET", "/metrics") => {
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4",
                &prometheus(broker),
            )
            .await
        }
        ("GET", "/bans") => {
            let bans = broker.guard.bans.list(std::time::Instant::now());
            let body = format!("{:#}\n", serde_json::json!({ "bans": bans }));
            respond(&mut stream, "200 OK", "application/json", &body).await
        }
        ("GET", path) => match broker.status_of(path.trim_start_matches('/')) {
            Some(status) => {
                let body = format!("{status:#}\n");
                respond(&mut stream, "200 OK", "application/json", &body).await
            }
            None => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
        },
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The broker's counters in the Prometheus text exposition format.
pub fn prometheus(broker: &Broker) -> String {
    let m = &broker.metrics;
    let rows: [(&str, &str, &str, u64); 12] = [
        (
            "switchyard_clients_connected",
            "gauge",
            "Clients connected now.",
            Metrics::get(&m.clients_connected),
        ),
        (
            "switchyard_connections_total",
            "counter",
            "Connections accepted since start.",
            Metrics::get(&m.connections_total),
        ),
        (
            "switchyard_sessions",
            "gauge",
            "Sessions, online and offline.",
            broker.session_count() as u64,
        ),
        (
            "switchyard_subscriptions",
            "gauge",
            "Subscriptions.",
            broker.subscription_count() as u64,
        ),
        (
            "switchyard_retained_messages",
            "gauge",
            "Retained messages.",
            broker.retained_count() as u64,
        ),
        (
            "switchyard_messages_received_total",
            "counter",
            "PUBLISH packets received.",
            Metrics::get(&m.messages_received),
        ),
        (
            "switchyard_messages_sent_total",
            "counter",
            "PUBLISH packets sent.",
            Metrics::get(&m.messages_sent),
        ),
        (
            "switchyard_messages_dropped_total",
            "counter",
            "Messages not delivered: queue full, expired or too large.",
            Metrics::get(&m.messages_dropped),
        ),
        (
            "switchyard_publishes_denied_total",
            "counter",
            "Publishes refused by authorization or dropped by a hook.",
            Metrics::get(&m.publishes_denied),
        ),
        (
            "switchyard_bytes_received_total",
            "counter",
            "Bytes received from clients.",
            Metrics::get(&m.bytes_received),
        ),
        (
            "switchyard_bytes_sent_total",
            "counter",
            "Bytes sent to clients.",
            Metrics::get(&m.bytes_sent),
        ),
        (
            "switchyard_uptime_seconds",
            "gauge",
            "Seconds since start.",
            broker.started.elapsed().as_secs(),
        ),
    ];
    let mut out = String::with_capacity(2048);
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP switchyard_limit_hits_total Things a limit refused or cut off (see README, Limits).\n# TYPE switchyard_limit_hits_total counter"
    );
    for limit in Limit::ALL {
        let _ = writeln!(
            out,
            "switchyard_limit_hits_total{{limit=\"{}\"}} {}",
            limit.as_str(),
            m.limit_hits(limit)
        );
    }
    broker.render_metrics_sources(&mut out);
    out
}
