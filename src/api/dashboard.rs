//! The dashboard: one page, its script and style sheet, and mqtt.js, all compiled into the
//! binary (see `build.rs`). Nothing is fetched from anywhere else, so it works offline.

use super::Shared;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");
const MQTT_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/mqtt.min.js"));

/// Scripts and styles only from here; MQTT over WebSocket to this host's listeners.
/// mqtt.js runs its keep-alive timer in a worker made from a `blob:` URL.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                   script-src 'self'; worker-src 'self' blob:; style-src 'self'; \
                   frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    res.headers_mut()
        .insert("content-security-policy", HeaderValue::from_static(CSP));
    res
}

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/mqtt.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", MQTT_JS) }),
        )
}
