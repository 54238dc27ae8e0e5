//! Switchyard's routing core.
//!
//! - [`protocol`]: MQTT 3.1/3.1.1/5.0 packets, decode and encode, reason codes.
//! - [`topic`]: topic name/filter validation and the subscription tree.
//! - [`message`]: a message as routed (topic, payload, properties, expiry, publisher).
//! - [`session`]: the session state machine, backpressure and the [`session::SessionStore`].
//! - [`broker`]: the router and session registry; retained messages; wills.
//! - [`persist`]: durability — the journal, recovery and snapshots behind `[persistence]`.
//! - [`client`]: the client pipeline every front end shares, and the MQTT connection
//!   (handshake, inbound, outbound).
//! - [`read_check`]: per-topic read checks of wildcard subscriptions next to deny rules.
//! - [`transport`]: TCP, TLS, WebSocket, WSS listeners and the `ws-json` bridge.
//! - [`guard`]: the door every client passes: bans and flapping, connections per address,
//!   rates, overload protection.
//! - [`hooks`]: the [`hooks::Hook`] trait that plugins, rules and built-ins implement.
//! - [`auth`]: the built-in password file and ACL rules.
//! - [`config`]: the core's part of the TOML configuration.
//! - [`server`]: start and stop a whole broker from a config.
//! - [`sys`], [`metrics`]: counters and the `$SYS` topics.
//! - [`http`]: what `/health`, Prometheus `/metrics` and the API's metrics report.
//! - [`clock`]: wall-clock Unix milliseconds; [`files`]: files replaced whole or not at all.
//! - [`log_limit`]: rate and size limits for what extensions write to the log.
//! - [`template`]: `${field}` templates over JSON (sinks, HTTP authentication).
//! - `fuzzing` (feature `fuzzing`, hidden): the checks behind the fuzz targets in `fuzz/`.

pub mod auth;
pub mod broker;
pub mod client;
pub mod clock;
pub mod config;
pub mod files;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod hooks;
pub mod http;
pub mod log_limit;
pub mod message;
pub mod metrics;
pub mod persist;
pub mod protocol;
pub mod read_check;
pub mod server;
pub mod session;
pub mod sys;
pub mod template;
pub mod topic;
pub mod transport;

pub use broker::Broker;
pub use config::CoreConfig;
pub use message::Message;
pub use server::Server;
