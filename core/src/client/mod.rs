//! Client connections and the pipeline every front end shares.
//!
//! - [`pipeline`]: the protocol-neutral path of a publish, a subscribe, an unsubscribe and the
//!   outbound batch ([`pipeline::Attachment`]); the MQTT connection and `ws-json` both use it.
//! - [`handshake`]: the first packet: CONNECT within the timeout, admission, session attach,
//!   CONNACK.
//! - [`enhanced_auth`]: MQTT 5 enhanced authentication (AUTH rounds) at CONNECT.
//! - [`connection`]: one MQTT connection's state, its main loop (read, drain, keep-alive) and
//!   its end (DISCONNECT, will, detach).
//! - [`inbound`]: packets from the client, translated into pipeline calls and session
//!   transitions.
//! - [`outbound`]: what goes to the client: control packets, deliveries (with topic aliases),
//!   and writes that keep reading so neither side can deadlock.

mod connection;
mod enhanced_auth;
mod handshake;
mod inbound;
mod outbound;
pub mod pipeline;

pub use handshake::serve;
pub use pipeline::Attachment;

use crate::broker::Broker;
use std::sync::Arc;

/// What a connection knows about the listener that accepted it.
pub struct ListenerContext {
    pub broker: Arc<Broker>,
    /// `kind:bind`, for logs and `ClientInfo::listener`.
    pub name: Arc<str>,
    pub allow_anonymous: bool,
}
