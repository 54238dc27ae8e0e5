//! What takes a `required = true` plugin's place in the hook chain while its file is missing:
//! a hook with the same id that refuses every client and every operation, so removing the
//! plugin never lets in someone it would have kept out.

use async_trait::async_trait;
use std::sync::Arc;
use switchyard_core::hooks::{
    Access, AclDecision, AuthDecision, ClientInfo, ConnectInfo, Hook, HookSet,
};
use switchyard_core::protocol::{QoS, ReasonCode};

pub(crate) struct StandIn {
    pub(crate) id: Arc<str>,
    pub(crate) name: Arc<str>,
}

#[async_trait]
impl Hook for StandIn {
    fn name(&self) -> &str {
        &self.name
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn interests(&self) -> HookSet {
        HookSet::AUTHENTICATE | HookSet::AUTHORIZE
    }

    async fn authenticate(&self, _c: &ConnectInfo) -> AuthDecision {
        AuthDecision::Deny(ReasonCode::SERVER_UNAVAILABLE)
    }

    async fn authorize(&self, _c: &ClientInfo, _a: Access, _t: &str, _q: QoS) -> AclDecision {
        AclDecision::Deny(ReasonCode::NOT_AUTHORIZED)
    }
}
