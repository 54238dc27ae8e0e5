//! ACL plugin: first matching rule wins, for publish and subscribe.
//!
//! ```toml
//! [[plugin]]
//! path = "target/plugins/acl.wasm"
//! config = { default = "deny", rules = [
//!   { permission = "allow", action = "all", topic = "users/%u/#" },
//!   { permission = "allow", action = "subscribe", topic = "public/#", role = "viewer" },
//! ] }
//! ```
//! `%u` is the user name, `%c` the client id; `role` matches the client attribute `role`
//! (set by an authenticating plugin such as jwt-auth). A rule may also name a `user`.
//!
//! Subscriptions follow the read model: a filter that lies inside a rule's tree gets that
//! rule's answer; a wildcard that merely overlaps a rule (`#` next to a deny on `secret/#`) is
//! granted with `filter`, and the broker asks `read` for each topic delivered through it, which
//! the subscribe rules answer topic by topic.
//! A client carrying `pub_topics` / `sub_topics` attributes (JSON lists of filters, from
//! jwt-auth's claims) is held to those lists first: outside them it is denied.

use serde::Deserialize;
use std::borrow::Cow;
use std::sync::OnceLock;
use switchyard_sdk::*;

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Permission {
    Allow,
    Deny,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Action {
    Publish,
    Subscribe,
    All,
}

#[derive(Deserialize)]
struct Rule {
    permission: Permission,
    action: Action,
    topic: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    role: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Default {
    Allow,
    Deny,
    Ignore,
}

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default = "ignore")]
    default: Default,
}

fn ignore() -> Default {
    Default::Ignore
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// Whether some topic matches both filters.
fn overlaps(a: &str, b: &str) -> bool {
    let mut a = a.split('/');
    let mut b = b.split('/');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            _ => return false,
        }
    }
}

/// Whether `topic` (or, for subscribe, every topic of the filter) is within `filter`.
fn covers(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The rule's filter for this client; borrowed when it has no `%u`/`%c` (most rules, and the
/// call runs on every publish).
fn substitute<'a>(pattern: &'a str, client: &ClientInfo) -> Option<Cow<'a, str>> {
    if !pattern.contains('%') {
        return Some(Cow::Borrowed(pattern));
    }
    let safe = |s: &str| !s.is_empty() && !s.contains(['+', '#', '/']);
    let mut out = pattern.to_string();
    if out.contains("%u") {
        let user = client.username.as_deref().filter(|u| safe(u))?;
        out = out.replace("%u", user);
    }
    if out.contains("%c") {
        if !safe(&client.client_id) {
            return None;
        }
        out = out.replace("%c", &client.client_id);
    }
    Some(Cow::Owned(out))
}

struct Acl;

impl Plugin for Acl {
    fn init(config: String) -> Result<Registration, String> {
        let parsed: Config =
            serde_json::from_str(&config).map_err(|e| format!("acl config: {e}"))?;
        let _ = CONFIG.set(parsed);
        Ok(Registration {
            hooks: HookSet::AUTHORIZE,
            topic_filters: Vec::new(),
        })
    }

    fn authorize(client: &ClientInfo, op: Access, topic: String, _qos: Qos) -> AclResult {
        let Some(cfg) = CONFIG.get() else {
            return AclResult::Deny(DenyReason::Unspecified);
        };
        let claim = match op {
            Access::Publish => "pub_topics",
            Access::Subscribe | Access::Read => "sub_topics",
        };
        if let Some((_, list)) = client.attributes.iter().find(|(k, _)| k == claim) {
            let filters: Vec<String> = serde_json::from_str(list).unwrap_or_default();
            if !filters.iter().any(|f| covers(f, &topic)) {
                return AclResult::Deny(DenyReason::NotAuthorized);
            }
        }
        let role = client
            .attributes
            .iter()
            .find(|(k, _)| k == "role")
            .map(|(_, v)| v.as_str());
        for rule in &cfg.rules {
            let action = matches!(
                (rule.action, op),
                (Action::All, _)
                    | (Action::Publish, Access::Publish)
                    | (Action::Subscribe, Access::Subscribe | Access::Read)
            );
            if !action
                || rule
                    .user
                    .as_deref()
                    .is_some_and(|u| client.username.as_deref() != Some(u))
                || rule.role.as_deref().is_some_and(|r| role != Some(r))
            {
                continue;
            }
            let Some(filter) = substitute(&rule.topic, client) else {
                continue;
            };
            if covers(&filter, &topic) {
                return match rule.permission {
                    Permission::Allow => AclResult::Allow,
                    Permission::Deny => AclResult::Deny(DenyReason::NotAuthorized),
                };
            }
            // A subscription this rule decides for some of its topics only: decided per topic.
            if op == Access::Subscribe && overlaps(&filter, &topic) {
                return AclResult::Filter;
            }
        }
        match cfg.default {
            Default::Allow => AclResult::Allow,
            Default::Deny => AclResult::Deny(DenyReason::NotAuthorized),
            Default::Ignore => AclResult::Ignore,
        }
    }
}

export_plugin!(Acl);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_overlap_when_some_topic_matches_both() {
        assert!(overlaps("#", "secret/x"));
        assert!(overlaps("a/+/c", "a/b/#"));
        assert!(overlaps("a/#", "a"));
        assert!(!overlaps("a/b", "a/c"));
        assert!(!overlaps("a/+", "a/b/c"));
        assert!(covers("secret/#", "secret/x/y"));
        assert!(!covers("secret/x", "secret/#"));
    }
}
