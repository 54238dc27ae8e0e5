//! Switchyard's WebAssembly plugin host.
//!
//! A plugin is a component implementing the `switchyard:plugin` WIT world (`sdk/wit`). Each
//! loaded plugin becomes a [`switchyard_core::hooks::Hook`]:
//! - compiled once, pre-instantiated (`MqttPluginPre`), instances from the pooling allocator;
//! - a bounded pool of warm instances, kept per thread, so calls do not pay instantiation, do
//!   not serialise and do not move instances between cores;
//! - every call runs as a wasmtime async call that yields to tokio at each epoch tick, under a
//!   deadline and a memory cap, with an empty WASI context (no files, environment, sockets or
//!   clocks beyond the host's);
//! - a trap, timeout or out-of-memory fails that call only: it follows the plugin's `on_error`
//!   policy (deny by default for authenticate/authorize), is logged and counted, and the
//!   instance is thrown away; after repeated failures the plugin is disabled (its calls follow
//!   `on_error` without running it).

//!
//! Modules:
//! - [`settings`]: the `[[plugin]]` table and load errors;
//! - `runtime`: engine, compile and link, warm instances, guarded calls ([`WasmPlugin`]);
//! - `convert`: core types to WIT types and back, the per-connection guest client record;
//! - `hook`: [`PluginHook`], a plugin as a link of the hook chain;
//! - `host`: the host side of the WIT world (imports the guest calls, its key-value store);
//! - `pool`: the per-thread pool of warm instances;
//! - `manager`: [`PluginManager`], which plugins are loaded, reloads and the watcher.

mod convert;
mod hook;
mod host;
mod manager;
mod pool;
mod runtime;
pub mod settings;

pub use hook::PluginHook;
pub use manager::PluginManager;
pub use runtime::WasmPlugin;
pub use settings::{LoadError, OnError, PluginSettings};
