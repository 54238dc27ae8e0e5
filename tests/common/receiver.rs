//! An HTTP receiver for webhook tests: records every request and can be told to answer with
//! an error status for a number of requests.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use axum::Router;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Recorded {
    /// (path, headers, body) of every request answered 2xx.
    pub accepted: Mutex<Vec<(String, HeaderMap, Bytes)>>,
    /// Requests answered with an error status.
    pub refused: AtomicUsize,
    /// Answer this status to the next `fail_count` requests.
    pub fail_status: AtomicU16,
    pub fail_count: AtomicUsize,
}

impl Recorded {
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.accepted
            .lock()
            .iter()
            .map(|(_, _, b)| serde_json::from_slice(b).unwrap_or(serde_json::Value::Null))
            .collect()
    }
    pub fn count(&self) -> usize {
        self.accepted.lock().len()
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub recorded: Arc<Recorded>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(rec): State<Arc<Recorded>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if uri.path().starts_with("/reject") {
        rec.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::BAD_REQUEST;
    }
    let failing = rec
        .fail_count
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        rec.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::from_u16(rec.fail_status.load(Ordering::SeqCst))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    rec.accepted
        .lock()
        .push((uri.path().to_string(), headers, body));
    StatusCode::OK
}

/// Starts a receiver on an ephemeral port (or on `addr`, to come back where a sink expects it).
pub async fn start_receiver(addr: Option<SocketAddr>) -> Receiver {
    let recorded = Arc::new(Recorded::default());
    let app = Router::new()
        .route("/{*path}", any(record))
        .with_state(recorded.clone());
    let listener = tokio::net::TcpListener::bind(addr.unwrap_or(([127, 0, 0, 1], 0).into()))
        .await
        .expect("receiver binds");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Receiver {
        addr,
        recorded,
        task,
    }
}
