//! Numbers: `/health`, `/metrics`, the counters as JSON with a one-second history of 15
//! minutes (for the dashboard's charts), the listeners and the redacted configuration.

use super::{ApiResult, Params, Shared};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::Duration;

/// Samples kept: 15 minutes at one a second.
const HISTORY: usize = 900;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub t_ms: u64,
    pub clients: u64,
    pub sessions: u64,
    pub retained: u64,
    pub subscriptions: u64,
    /// Per second, over the last second.
    pub messages_in: u64,
    pub messages_out: u64,
    pub dropped: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

/// The core's series by name and value.
fn counters(broker: &switchyard_core::Broker) -> Vec<(&'static str, u64)> {
    switchyard_core::http::series(broker)
        .into_iter()
        .map(|s| (s.name, s.value))
        .collect()
}

fn value(counters: &[(&'static str, u64)], name: &str) -> u64 {
    counters
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| *v)
}

/// Takes a sample a second until shutdown.
pub async fn sample(api: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = counters(&api.broker);
    loop {
        tokio::select! {
            _ = api.broker.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = counters(&api.broker);
        let rate = |name| value(&now, name).saturating_sub(value(&last, name));
        let s = Sample {
            t_ms: switchyard_core::clock::now_ms(),
            clients: value(&now, "clients_connected"),
            sessions: value(&now, "sessions"),
            retained: value(&now, "retained_messages"),
            subscriptions: value(&now, "subscriptions"),
            messages_in: rate("messages_received"),
            messages_out: rate("messages_sent"),
            dropped: rate("messages_dropped"),
            bytes_in: rate("bytes_received"),
            bytes_out: rate("bytes_sent"),
        };
        let mut samples = api.history.samples.lock();
        if samples.len() == HISTORY {
            samples.pop_front();
        }
        samples.push_back(s);
        drop(samples);
        last = now;
    }
}

pub async fn health(State(api): State<Shared>) -> Json<Value> {
    Json(switchyard_core::http::health(&api.broker))
}

pub async fn prometheus(State(api): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        switchyard_core::http::prometheus(&api.broker),
    )
}

pub async fn metrics(State(api): State<Shared>) -> ApiResult {
    let counters: serde_json::Map<String, Value> = counters(&api.broker)
        .into_iter()
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect();
    let limits: serde_json::Map<String, Value> = switchyard_core::metrics::Limit::ALL
        .iter()
        .map(|l| {
            (
                l.as_str().to_string(),
                json!(api.broker.metrics.limit_hits(*l)),
            )
        })
        .collect();
    Ok(Json(json!({
        "counters": counters,
        "limit_hits": limits,
        "health": switchyard_core::http::health(&api.broker),
    })))
}

#[derive(serde::Deserialize)]
pub struct HistoryQuery {
    /// The last this many seconds (default and most: 900).
    seconds: Option<usize>,
}

pub async fn history(State(api): State<Shared>, Params(q): Params<HistoryQuery>) -> ApiResult {
    let want = q.seconds.unwrap_or(HISTORY).min(HISTORY);
    let samples = api.history.samples.lock();
    let skip = samples.len().saturating_sub(want);
    let data: Vec<&Sample> = samples.iter().skip(skip).collect();
    Ok(Json(json!({ "interval_s": 1, "data": data })))
}

pub async fn listeners(State(api): State<Shared>) -> ApiResult {
    let rows: Vec<Value> = api
        .listeners
        .iter()
        .map(|(kind, addr, path)| {
            json!({ "kind": format!("{kind:?}").to_lowercase().replace('_', "-"), "bind": addr.to_string(), "port": addr.port(), "path": path })
        })
        .collect();
    Ok(Json(json!({ "data": rows })))
}

pub async fn config(State(api): State<Shared>) -> ApiResult {
    Ok(Json(api.effective_config.clone()))
}

/// Key names whose values are secrets.
const SECRET_WORDS: [&str; 7] = [
    "password",
    "secret",
    "token",
    "credential",
    "private",
    "api_key",
    "sasl",
];

/// `value` with every secret replaced by `"<redacted>"`: values of keys naming one, and the
/// password part of URLs (`postgres://user:pass@host`).
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                let secret = SECRET_WORDS.iter().any(|w| k.contains(w)) && !k.ends_with("_file");
                if secret && !v.is_null() && v.as_str() != Some("") {
                    *v = json!("<redacted>");
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) => {
            if let Some((scheme, rest)) = s.split_once("://") {
                if let Some((userinfo, host)) = rest.split_once('@') {
                    if let Some((user, _)) = userinfo.split_once(':') {
                        *s = format!("{scheme}://{user}:<redacted>@{host}");
                    }
                }
            }
            // libpq key=value strings: `password=...`.
            if let Some(at) = s.find("password=") {
                let end = s[at..].find(' ').map_or(s.len(), |e| at + e);
                s.replace_range(at + 9..end, "<redacted>");
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_wherever_they_sit() {
        let mut v = json!({
            "http": { "token": "t0p", "password_file": "users.txt" },
            "sink": { "pg": { "url": "postgres://app:hunter2@db/x", "conn": "host=db password=hunter2 user=a" },
                      "k": { "sasl_password": "p", "options": [{ "client_secret": "s" }] } },
            "listener": [{ "key": "server.key" }],
        });
        redact(&mut v);
        let text = v.to_string();
        assert!(!text.contains("t0p") && !text.contains("hunter2"), "{text}");
        assert!(!text.contains("\"p\"") && !text.contains("\"s\""), "{text}");
        assert_eq!(v["http"]["password_file"], "users.txt");
        assert_eq!(v["sink"]["pg"]["url"], "postgres://app:<redacted>@db/x");
        assert_eq!(v["listener"][0]["key"], "server.key");
    }
}
