//! `[[acl]]` rules: first match wins; `%u` and `%c` in a rule's topic stand for the client's user
//! name and client id. A rule with a placeholder never matches a client whose name contains a
//! wildcard or a level separator, so names cannot widen a rule.

use crate::config::{AclAction, AclRule, Permission};
use crate::hooks::{Access, AclDecision, ClientInfo, Hook, HookSet};
use crate::protocol::{QoS, ReasonCode};
use crate::topic;
use async_trait::async_trait;
use std::borrow::Cow;

pub struct AclRules {
    rules: Vec<AclRule>,
    default: Permission,
}

impl AclRules {
    pub fn new(rules: Vec<AclRule>, default: Permission) -> Self {
        Self { rules, default }
    }

    fn rule_filter<'a>(rule: &'a AclRule, client: &ClientInfo) -> Option<Cow<'a, str>> {
        if !rule.topic.contains('%') {
            return Some(Cow::Borrowed(&rule.topic));
        }
        let safe = |s: &str| !s.is_empty() && !s.contains(['+', '#', '/']);
        let mut t = rule.topic.clone();
        if t.contains("%u") {
            let user = client.username.as_deref().filter(|u| safe(u))?;
            t = t.replace("%u", user);
        }
        if t.contains("%c") {
            if !safe(&client.client_id) {
                return None;
            }
            t = t.replace("%c", &client.client_id);
        }
        Some(Cow::Owned(t))
    }

    pub fn check(&self, client: &ClientInfo, access: Access, target: &str) -> Permission {
        // A shared subscription is checked by the filter it shares.
        let target = match (access, topic::parse_shared(target)) {
            (Access::Subscribe, Some(Ok((_, inner)))) => inner,
            _ => target,
        };
        for rule in &self.rules {
            let action_matches = matches!(
                (rule.action, access),
                (AclAction::All, _)
                    | (AclAction::Publish, Access::Publish)
                    | (AclAction::Subscribe, Access::Subscribe)
            );
            if !action_matches {
                continue;
            }
            if rule
                .user
                .as_deref()
                .is_some_and(|u| client.username.as_deref() != Some(u))
            {
                continue;
            }
            if rule
                .client
                .as_deref()
                .is_some_and(|c| &*client.client_id != c)
            {
                continue;
            }
            let Some(filter) = Self::rule_filter(rule, client) else {
                continue;
            };
            let hit = match access {
                Access::Publish => topic::matches(&filter, target),
                // Allowing needs the rule to cover the whole subscription; denying needs only an
                // overlap, so `#` cannot be used to read a denied tree.
                Access::Subscribe => match rule.permission {
                    Permission::Allow => topic::filter_covers(&filter, target),
                    Permission::Deny => topic::filters_overlap(&filter, target),
                },
            };
            if hit {
                return rule.permission;
            }
        }
        self.default
    }
}

#[async_trait]
impl Hook for AclRules {
    fn name(&self) -> &str {
        "builtin:acl"
    }
    fn interests(&self) -> HookSet {
        HookSet::AUTHORIZE
    }
    async fn authorize(&self, c: &ClientInfo, a: Access, topic: &str, _q: QoS) -> AclDecision {
        match self.check(c, a, topic) {
            Permission::Allow => AclDecision::Allow,
            Permission::Deny => AclDecision::Deny(ReasonCode::NOT_AUTHORIZED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtocolVersion;
    use std::sync::Arc;

    fn client(user: Option<&str>, id: &str) -> ClientInfo {
        ClientInfo {
            client_id: Arc::from(id),
            username: user.map(Arc::from),
            peer_addr: "127.0.0.1:1".parse().unwrap(),
            protocol: ProtocolVersion::V5,
            listener: Arc::from("tcp"),
            cert_common_name: None,
            attributes: vec![],
            extension: Default::default(),
        }
    }

    fn rule(p: Permission, a: AclAction, t: &str) -> AclRule {
        AclRule {
            permission: p,
            action: a,
            topic: t.into(),
            user: None,
            client: None,
        }
    }

    #[test]
    fn first_match_wins_with_substitution() {
        let acl = AclRules::new(
            vec![
                rule(Permission::Allow, AclAction::All, "users/%u/#"),
                rule(Permission::Deny, AclAction::Subscribe, "secret/#"),
                rule(Permission::Deny, AclAction::All, "users/#"),
            ],
            Permission::Allow,
        );
        let alice = client(Some("alice"), "c1");
        assert_eq!(
            acl.check(&alice, Access::Publish, "users/alice/x"),
            Permission::Allow
        );
        assert_eq!(
            acl.check(&alice, Access::Publish, "users/bob/x"),
            Permission::Deny
        );
        assert_eq!(
            acl.check(&alice, Access::Subscribe, "secret/a"),
            Permission::Deny
        );
        assert_eq!(acl.check(&alice, Access::Subscribe, "#"), Permission::Deny);
        assert_eq!(
            acl.check(&alice, Access::Subscribe, "public/a"),
            Permission::Allow
        );
        let sneaky = client(Some("+"), "c2");
        assert_eq!(
            acl.check(&sneaky, Access::Publish, "users/x/y"),
            Permission::Deny
        );
    }
}
