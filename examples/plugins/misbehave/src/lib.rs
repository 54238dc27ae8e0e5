//! Test plugin: `config = { mode = "loop" | "alloc" | "trap" | "sleep" | "spin" | "allow" |
//! "gate" | "fickle" | "events" | "flood" | "fetch" }` decides what `authenticate` and `authorize` do ("sleep" sleeps
//! 10 s; "spin" computes for `spin_ms` (default 100) and then allows; "gate" admits client ids
//! starting with "ok-" and refuses the rest; "fickle" traps for client ids starting with "boom"
//! and admits the rest; "events" also records client and message events in
//! the kv store under "events"; "flood" logs `lines` lines per call and fills the kv store
//! until it is refused, recording the refusal under "kv-refused"; "fetch" asks `url` over
//! `http-fetch` with `?client=ID` and admits on a 200 answer of "yes", recording an error's
//! kind under "fetch-error").
//! Used by the host's sandbox, hot-swap, breaker and event tests; never deploy it.

use std::sync::OnceLock;
use switchyard_sdk::*;

static MODE: OnceLock<String> = OnceLock::new();
static SPIN_MS: OnceLock<u64> = OnceLock::new();
static LINES: OnceLock<u64> = OnceLock::new();
static URL: OnceLock<String> = OnceLock::new();

/// The "fetch" mode's decision.
fn fetch(client_id: &str) -> AuthResult {
    let url = format!(
        "{}?client={client_id}",
        URL.get().map_or("", String::as_str)
    );
    let req = host::HttpRequest {
        method: "GET".into(),
        url,
        headers: vec![],
        body: None,
    };
    match host::http_fetch(&req) {
        Ok(resp) if resp.status == 200 && resp.body == b"yes" => AuthResult::Allow(AuthSuccess {
            attributes: vec![],
            data: None,
        }),
        Ok(_) => AuthResult::Deny(DenyReason::NotAuthorized),
        Err(e) => {
            let kind = match e {
                host::HttpError::NotAllowed => "not-allowed".to_string(),
                host::HttpError::Timeout => "timeout".to_string(),
                host::HttpError::TooLarge => "too-large".to_string(),
                host::HttpError::Failed(why) => format!("failed: {why}"),
            };
            let _ = host::kv_set("fetch-error", kind.as_bytes(), None);
            AuthResult::Deny(DenyReason::NotAuthorized)
        }
    }
}

fn misbehave() {
    match MODE.get().map(String::as_str) {
        Some("loop") => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Some("alloc") => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Some("trap") => panic!("misbehave: trapping on purpose"),
        Some("sleep") => std::thread::sleep(std::time::Duration::from_secs(10)),
        Some("spin") => {
            let until = host::now_ms() + SPIN_MS.get().copied().unwrap_or(100);
            while host::now_ms() < until {
                std::hint::black_box(0u64);
            }
        }
        Some("flood") => flood(),
        _ => {}
    }
}

/// Logs `lines` lines, then fills the kv store until the quota refuses an entry.
fn flood() {
    for i in 0..LINES.get().copied().unwrap_or(100) {
        host::log(
            host::Level::Info,
            &format!("flood line {i}: {}", "x".repeat(4096)),
        );
    }
    for i in 0..100_000u32 {
        if let Err(e) = host::kv_set(&format!("k{i}"), &[0u8; 1024], None) {
            let _ = host::kv_set("kv-refused", format!("{e:?} at {i}").as_bytes(), None);
            return;
        }
    }
}

struct Misbehave;

impl Plugin for Misbehave {
    fn init(config: String) -> Result<Registration, String> {
        let v: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let mode = v
            .get("mode")
            .and_then(|m| m.as_str())
            .unwrap_or("allow")
            .to_string();
        let _ = SPIN_MS.set(v.get("spin_ms").and_then(|m| m.as_u64()).unwrap_or(100));
        let _ = LINES.set(v.get("lines").and_then(|m| m.as_u64()).unwrap_or(100));
        let _ = URL.set(
            v.get("url")
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_string(),
        );
        let mut hooks = HookSet::AUTHENTICATE | HookSet::AUTHORIZE;
        if mode == "events" {
            hooks |= HookSet::CLIENT_EVENTS | HookSet::MESSAGE_EVENTS;
        }
        let _ = MODE.set(mode);
        Ok(Registration {
            hooks,
            topic_filters: vec![],
        })
    }

    fn authenticate(req: ConnectRequest) -> AuthResult {
        if MODE.get().map(String::as_str) == Some("gate")
            && !req.client.client_id.starts_with("ok-")
        {
            return AuthResult::Deny(DenyReason::NotAuthorized);
        }
        if MODE.get().map(String::as_str) == Some("fetch") {
            return fetch(&req.client.client_id);
        }
        if MODE.get().map(String::as_str) == Some("fickle")
            && req.client.client_id.starts_with("boom")
        {
            panic!("misbehave: fickle about {}", req.client.client_id);
        }
        misbehave();
        AuthResult::Allow(AuthSuccess {
            attributes: vec![("role".into(), "tester".into())],
            data: None,
        })
    }

    fn authorize(_c: &ClientInfo, _op: Access, _topic: String, _q: Qos) -> AclResult {
        misbehave();
        AclResult::Allow
    }

    fn on_client_event(client: &ClientInfo, event: ClientEvent) {
        let text = match event {
            ClientEvent::Connected => "connected".to_string(),
            ClientEvent::Disconnected(why) => format!("disconnected({why})"),
            ClientEvent::Subscribed(s) => format!("subscribed({})", s.filter),
            ClientEvent::Unsubscribed(f) => format!("unsubscribed({f})"),
        };
        Self::record(client, &text);
    }

    fn on_message_event(client: &ClientInfo, event: MessageEvent) {
        let kind = match event.kind {
            MessageEventKind::Delivered => "delivered".to_string(),
            MessageEventKind::Acked => "acked".to_string(),
            MessageEventKind::Dropped(why) => format!("dropped[{why}]"),
        };
        // The record is the receiving client's own: its user name proves it.
        let user = client.username.as_deref().unwrap_or("-");
        Self::record(client, &format!("{kind}({}|{user})", event.topic));
    }
}

impl Misbehave {
    fn record(client: &ClientInfo, event: &str) {
        let mut log = host::kv_get("events").unwrap_or_default();
        log.extend_from_slice(format!("{}={};", client.client_id, event).as_bytes());
        let _ = host::kv_set("events", &log, None);
    }
}

export_plugin!(Misbehave);
