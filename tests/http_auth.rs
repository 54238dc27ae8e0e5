//! `[http_auth]` against a real HTTP service started by the test: allow with attributes that a
//! later hook sees, deny, ignore, a slow and a failing service refused in time, one request for
//! repeated publishes (the cache), and a service that goes away.

mod common;
use axum::extract::{Json, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use common::*;
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::hooks::{Access, AclDecision, ClientInfo, Hook, HookSet};
use switchyard_core::protocol::{ProtocolVersion, QoS, ReasonCode};
use switchyard_plugins::http_auth::HttpCall;
use switchyard_plugins::{HttpAuthConfig, OnError};

#[derive(Default)]
struct Seen {
    acl_requests: AtomicUsize,
    /// The `x-client` header of the last authorize request.
    last_client_header: parking_lot::Mutex<String>,
}

async fn authenticate(Json(body): Json<serde_json::Value>) -> Response {
    let user = body["username"].as_str().unwrap_or("");
    let password = body["password"].as_str().unwrap_or("");
    match user {
        "alice" if password == "secret" => Json(serde_json::json!({
            "result": "allow", "attributes": {"tenant": "t1"}
        }))
        .into_response(),
        "anon" => Json(serde_json::json!({"result": "ignore"})).into_response(),
        "slow" => {
            // A service that hangs: the broker must not wait for it.
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        "boom" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        _ => Json(serde_json::json!({"result": "deny"})).into_response(),
    }
}

async fn authorize(
    State(seen): State<Arc<Seen>>,
    Path(user): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    seen.acl_requests.fetch_add(1, Ordering::SeqCst);
    *seen.last_client_header.lock() = headers
        .get("x-client")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let topic = q.get("topic").map(String::as_str).unwrap_or("");
    if user != "alice" || q.get("action").map(String::as_str) != Some("publish") {
        return StatusCode::FORBIDDEN.into_response();
    }
    if topic.starts_with("allowed/") {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::FORBIDDEN.into_response()
    }
}

/// Runs before the HTTP hook: passes only clients whose attributes the service set.
struct TenantCheck;

#[async_trait::async_trait]
impl Hook for TenantCheck {
    fn name(&self) -> &str {
        "test:tenant-check"
    }
    fn interests(&self) -> HookSet {
        HookSet::AUTHORIZE
    }
    async fn authorize(&self, c: &ClientInfo, _a: Access, _t: &str, _q: QoS) -> AclDecision {
        if c.attribute("tenant") == Some("t1") {
            AclDecision::Ignore
        } else {
            AclDecision::Deny(ReasonCode::NOT_AUTHORIZED)
        }
    }
}

fn call(url: String, method: &str) -> HttpCall {
    HttpCall {
        url,
        method: method.into(),
        headers: BTreeMap::new(),
        body: None,
        timeout_ms: 500,
        on_error: OnError::Deny,
        cache_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_service_authenticates_and_authorizes_and_failures_fail_closed() {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/auth", post(authenticate))
        .route("/acl/{user}", get(authorize))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let mut authorize_call = call(format!("http://{service}/acl/${{username}}"), "get");
    authorize_call
        .headers
        .insert("x-client".into(), "id=${clientid}".into());
    authorize_call.cache_ms = 60_000;
    let http_auth = HttpAuthConfig {
        authenticate: Some(call(format!("http://{service}/auth"), "post")),
        authorize: Some(authorize_call),
        priority: 500,
    };
    let mut cfg = test_config();
    cfg.mqtt.allow_anonymous = false;
    let broker = switchyard::Switchyard::core(cfg)
        .http_auth(http_auth)
        .hook(100, Arc::new(TenantCheck))
        .watch_files(false)
        .start()
        .await
        .unwrap();
    let addr = tcp_addr(&broker);
    let connack = |user: &'static str, password: &'static str| async move {
        let mut c = connect_packet(ProtocolVersion::V5, &format!("c-{user}"));
        c.username = Some(user.into());
        c.password = Some(bytes::Bytes::from_static(password.as_bytes()));
        Raw::connect(addr).await.handshake_with(c).await.code
    };

    assert_eq!(
        connack("bob", "x").await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        "deny"
    );
    assert_eq!(
        connack("anon", "").await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        "ignore, and no anonymous clients"
    );
    for failing in ["slow", "boom"] {
        let started = Instant::now();
        assert_eq!(
            connack(failing, "x").await,
            ReasonCode::SERVER_UNAVAILABLE,
            "{failing}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{failing}: {:?}",
            started.elapsed()
        );
    }

    let mut o = v5::options(addr, "alice-1");
    o.set_credentials("alice", "secret");
    let mut alice = v5::connect(o).await;
    for _ in 0..3 {
        alice
            .client
            .publish("allowed/x", v5::QoS::AtLeastOnce, false, "m")
            .await
            .unwrap();
        assert_eq!(alice.next_puback_reason().await, PubAckReason::Success);
    }
    assert_eq!(
        seen.acl_requests.load(Ordering::SeqCst),
        1,
        "one request, then the cache"
    );
    assert_eq!(
        *seen.last_client_header.lock(),
        "id=alice-1",
        "header template"
    );
    alice
        .client
        .publish("forbidden/x", v5::QoS::AtLeastOnce, false, "m")
        .await
        .unwrap();
    assert_eq!(
        alice.next_puback_reason().await,
        PubAckReason::NotAuthorized,
        "403"
    );

    // The service goes away: new questions fail closed at once, cached answers stand.
    server_task.abort();
    let _ = server_task.await;
    let started = Instant::now();
    alice
        .client
        .publish("allowed/y", v5::QoS::AtLeastOnce, false, "m")
        .await
        .unwrap();
    assert_eq!(
        alice.next_puback_reason().await,
        PubAckReason::NotAuthorized
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    alice
        .client
        .publish("allowed/x", v5::QoS::AtLeastOnce, false, "m")
        .await
        .unwrap();
    assert_eq!(
        alice.next_puback_reason().await,
        PubAckReason::Success,
        "cached"
    );
    assert_eq!(
        connack("alice", "secret").await,
        ReasonCode::SERVER_UNAVAILABLE
    );
}
