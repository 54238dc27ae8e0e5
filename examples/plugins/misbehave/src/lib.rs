//! Test plugin: `config = { mode = "loop" | "alloc" | "trap" | "allow" | "gate" | "events" }`
//! decides what `authenticate` and `authorize` do ("gate" admits client ids starting with "ok-"
//! and refuses the rest; "events" also records client events in the kv store under "events").
//! Used by the host's sandbox, hot-swap and event tests; never deploy it.

use std::sync::OnceLock;
use switchyard_sdk::*;

static MODE: OnceLock<String> = OnceLock::new();

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
        _ => {}
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
        misbehave();
        AuthResult::Allow(vec![("role".into(), "tester".into())])
    }

    fn authorize(_c: &ClientInfo, _op: Access, _topic: String, _q: Qos) -> AclResult {
        misbehave();
        AclResult::Allow
    }

    fn on_client_event(client: &ClientInfo, event: String) {
        Self::record(client, &event);
    }
}

impl Misbehave {
    fn record(client: &ClientInfo, event: &str) {
        let mut log = host::kv_get("events").unwrap_or_default();
        log.extend_from_slice(format!("{}={};", client.client_id, event).as_bytes());
        host::kv_set("events", &log, None);
    }
}

export_plugin!(Misbehave);
