//! Switchyard's WebAssembly plugin host.
//!
//! A plugin is a component implementing the `switchyard:plugin` WIT world (`sdk/wit`, contract
//! 0.3.0; 0.2.0 guests load too). Each loaded plugin becomes a
//! [`switchyard_core::hooks::Hook`], known to the chain by `plugin:` and its canonical path:
//! - compiled once, pre-instantiated, instances from the pooling allocator, at most
//!   `max_instances` per plugin, warm ones kept per thread;
//! - every call runs as a wasmtime async call that yields to tokio at each epoch tick, with a
//!   tick budget (counted while the guest runs), a memory cap, no way to wait, and a
//!   wall-clock deadline from outside;
//! - a failed call follows the plugin's `on_error` (deny by default for authenticate and
//!   authorize); repeated failures of the guest open its circuit breaker, failures of the host
//!   never do.
//!
//! Modules:
//! - [`settings`]: the `[[plugin]]` table and load errors;
//! - `bindings`: the generated bindings of both contract versions;
//! - `runtime`: engine, compile and link, instances ([`WasmPlugin`]);
//! - `call`: one guarded guest call (instance cap, deadlines, failure classes);
//! - `breaker`: the circuit breaker;
//! - `convert`: core types to WIT types and back, the per-connection guest client record;
//! - `compat`: 0.2.0 guests behind the 0.3.0 host;
//! - `hook`: [`PluginHook`], a plugin as a link of the hook chain;
//! - `host`: the host side of the WIT world (log, kv store with its quota, client lookup);
//! - `pool`: the per-thread pool of warm instances;
//! - `http_import`: the `http-fetch` host function (allowed hosts, time and size bounds);
//! - [`http_auth`]: authentication and authorization by an HTTP service (a built-in hook);
//! - [`harness`]: load a plugin and call its hooks without a broker (plugin crates' tests);
//! - `standin`: what stands in for a required plugin whose file is missing;
//! - `manager`: [`PluginManager`], which plugins are loaded, reloads, removals, the watcher;
//! - `status`: `/plugins`, the problems `/health` reports, `/metrics`.

mod bindings;
mod breaker;
mod call;
mod compat;
mod convert;
pub mod harness;
mod hook;
mod host;
pub mod http_auth;
mod http_import;
mod manager;
mod pool;
mod runtime;
pub mod settings;
mod standin;
mod status;

pub use hook::PluginHook;
pub use http_auth::{HttpAuthConfig, HttpAuthHook};
pub use manager::PluginManager;
pub use runtime::{plugin_id, WasmPlugin};
pub use settings::{LoadError, OnError, PluginSettings};
