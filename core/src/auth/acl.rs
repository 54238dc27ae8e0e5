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

    /// The rules that apply to `client` for `access`, with their filters resolved.
    fn applicable<'a>(
        &'a self,
        client: &'a ClientInfo,
        access: Access,
    ) -> impl Iterator<Item = (Permission, Cow<'a, str>)> + 'a {
        self.rules.iter().filter_map(move |rule| {
            let action_matches = matches!(
                (rule.action, access),
                (AclAction::All, _)
                    | (AclAction::Publish, Access::Publish)
                    | (AclAction::Subscribe, Access::Subscribe | Access::Read)
            );
            let user_matches = rule
                .user
                .as_deref()
                .is_none_or(|u| client.username.as_deref() == Some(u));
            let client_matches = rule
                .client
                .as_deref()
                .is_none_or(|c| &*client.client_id == c);
            if !(action_matches && user_matches && client_matches) {
                return None;
            }
            Some((rule.permission, Self::rule_filter(rule, client)?))
        })
    }

    /// First match wins. A publish or a read (one delivered topic) takes the first rule whose
    /// filter matches the topic.
    pub fn check(&self, client: &ClientInfo, access: Access, target: &str) -> AclDecision {
        if access == Access::Subscribe {
            return self.check_subscription(client, target);
        }
        let permission = self
            .applicable(client, access)
            .find(|(_, filter)| topic::matches(filter, target))
            .map_or(self.default, |(p, _)| p);
        Self::decision(permission)
    }

    /// A subscription is decided by the first rule whose filter covers it whole — unless an
    /// earlier rule with the other permission overlaps part of it: then the subscription is
    /// granted with read checks (`Filter`) and the first-match rule decides each delivered
    /// topic. So `#` next to `deny secret/x` is granted without `secret/x`, and a
    /// subscription inside a denied tree is refused.
    fn check_subscription(&self, client: &ClientInfo, target: &str) -> AclDecision {
        // A shared subscription is checked by the filter it shares.
        let target = match topic::parse_shared(target) {
            Some(Ok((_, inner))) => inner,
            _ => target,
        };
        let mut overlapped = [false; 2];
        let seen = |p: Permission| usize::from(p == Permission::Deny);
        let mut decided = self.default;
        for (permission, filter) in self.applicable(client, Access::Subscribe) {
            if topic::filter_covers(&filter, target) {
                decided = permission;
                break;
            }
            if topic::filters_overlap(&filter, target) {
                overlapped[seen(permission)] = true;
            }
        }
        let other = match decided {
            Permission::Allow => Permission::Deny,
            Permission::Deny => Permission::Allow,
        };
        if overlapped[seen(other)] {
            AclDecision::Filter
        } else {
            Self::decision(decided)
        }
    }

    fn decision(p: Permission) -> AclDecision {
        match p {
            Permission::Allow => AclDecision::Allow,
            Permission::Deny => AclDecision::Deny(ReasonCode::NOT_AUTHORIZED),
        }
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
        self.check(c, a, topic)
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
        let deny = AclDecision::Deny(ReasonCode::NOT_AUTHORIZED);
        assert_eq!(
            acl.check(&alice, Access::Publish, "users/alice/x"),
            AclDecision::Allow
        );
        assert_eq!(acl.check(&alice, Access::Publish, "users/bob/x"), deny);
        assert_eq!(acl.check(&alice, Access::Subscribe, "secret/a"), deny);
        assert_eq!(acl.check(&alice, Access::Subscribe, "secret/#"), deny);
        assert_eq!(
            acl.check(&alice, Access::Subscribe, "public/a"),
            AclDecision::Allow
        );
        let sneaky = client(Some("+"), "c2");
        assert_eq!(acl.check(&sneaky, Access::Publish, "users/x/y"), deny);
    }

    #[test]
    fn wildcards_next_to_deny_rules_are_granted_with_read_checks() {
        let acl = AclRules::new(
            vec![
                rule(Permission::Allow, AclAction::All, "users/%u/#"),
                rule(Permission::Deny, AclAction::Subscribe, "secret/x"),
                rule(Permission::Deny, AclAction::All, "users/#"),
            ],
            Permission::Allow,
        );
        let alice = client(Some("alice"), "c1");
        let deny = AclDecision::Deny(ReasonCode::NOT_AUTHORIZED);
        for filter in ["#", "secret/+", "users/+/inbox", "$share/g/#"] {
            assert_eq!(
                acl.check(&alice, Access::Subscribe, filter),
                AclDecision::Filter,
                "{filter}"
            );
        }
        // Inside a denied tree, or covered by one rule: decided outright.
        assert_eq!(acl.check(&alice, Access::Subscribe, "users/bob/#"), deny);
        assert_eq!(
            acl.check(&alice, Access::Subscribe, "users/alice/#"),
            AclDecision::Allow
        );
        assert_eq!(
            acl.check(&alice, Access::Subscribe, "public/#"),
            AclDecision::Allow
        );
        // What is read through `#`: the first rule matching each topic.
        assert_eq!(acl.check(&alice, Access::Read, "secret/x"), deny);
        assert_eq!(
            acl.check(&alice, Access::Read, "secret/y"),
            AclDecision::Allow
        );
        assert_eq!(acl.check(&alice, Access::Read, "users/bob/inbox"), deny);
        assert_eq!(
            acl.check(&alice, Access::Read, "users/alice/inbox"),
            AclDecision::Allow
        );
        // Default deny with one allowed tree: `#` reads only that tree.
        let strict = AclRules::new(
            vec![rule(Permission::Allow, AclAction::All, "users/%u/#")],
            Permission::Deny,
        );
        assert_eq!(acl_filter(&strict, &alice, "#"), AclDecision::Filter);
        assert_eq!(acl_filter(&strict, &alice, "other/#"), deny);
        assert_eq!(strict.check(&alice, Access::Read, "other/x"), deny);
    }

    fn acl_filter(acl: &AclRules, c: &ClientInfo, filter: &str) -> AclDecision {
        acl.check(c, Access::Subscribe, filter)
    }
}
