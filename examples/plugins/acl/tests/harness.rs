//! The acl plugin as the broker runs it: the component built for wasm32-wasip2, loaded by the
//! plugin host's harness, its hooks called one by one.
#![cfg(not(target_arch = "wasm32"))]

use serde_json::json;
use switchyard_core::hooks::{Access, AclDecision};
use switchyard_plugins::harness::{Harness, HarnessError};
use switchyard_plugins::LoadError;

fn component() -> std::path::PathBuf {
    Harness::build(env!("CARGO_MANIFEST_DIR")).expect("the acl component builds")
}

#[test]
fn users_own_their_tree_and_wildcards_next_to_a_deny_rule_are_filtered() {
    let acl = Harness::load(
        component(),
        json!({"default": "deny", "rules": [
            {"permission": "deny", "action": "subscribe", "topic": "users/+/secret/#"},
            {"permission": "allow", "action": "all", "topic": "users/%u/#"}
        ]}),
    )
    .unwrap();
    let alice = Harness::client("a1", Some("alice"));
    assert_eq!(
        acl.authorize(&alice, Access::Publish, "users/alice/x"),
        AclDecision::Allow
    );
    assert!(matches!(
        acl.authorize(&alice, Access::Publish, "users/bob/x"),
        AclDecision::Deny(_)
    ));
    // Her whole tree overlaps the denied secrets: granted, then decided topic by topic.
    assert_eq!(
        acl.authorize(&alice, Access::Subscribe, "users/alice/#"),
        AclDecision::Filter
    );
    assert!(matches!(
        acl.authorize(&alice, Access::Read, "users/alice/secret/key"),
        AclDecision::Deny(_)
    ));
    assert_eq!(
        acl.authorize(&alice, Access::Read, "users/alice/notes"),
        AclDecision::Allow
    );
    assert!(matches!(
        acl.authorize(&alice, Access::Subscribe, "users/alice/secret/#"),
        AclDecision::Deny(_)
    ));
    assert_eq!(acl.plugin().failures(), 0);
}

#[test]
fn a_config_it_cannot_read_is_refused_at_load() {
    let err = Harness::load(component(), json!({"rules": "not a list"})).err();
    assert!(
        matches!(err, Some(HarnessError::Load(LoadError::Init { .. }))),
        "{err:?}"
    );
}
