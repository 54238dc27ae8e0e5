//! Write a Switchyard plugin in Rust.
//!
//! The contract is the WIT world in `wit/plugin.wit` (`switchyard:plugin@0.1.0`); this crate
//! generates its bindings and adds [`Plugin`], a trait with a default for every hook, so a
//! plugin implements only what it needs:
//!
//! ```ignore
//! use switchyard_sdk::*;
//!
//! struct DenySecrets;
//!
//! impl Plugin for DenySecrets {
//!     fn init(_config: String) -> Result<Registration, String> {
//!         Ok(Registration { hooks: HookSet::AUTHORIZE, topic_filters: vec![] })
//!     }
//!     fn authorize(_c: ClientInfo, _op: Access, topic: String, _q: Qos) -> AclResult {
//!         if topic.starts_with("secret/") { AclResult::Deny(DenyReason::NotAuthorized) } else { AclResult::Ignore }
//!     }
//! }
//!
//! export_plugin!(DenySecrets);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` is a component.

/// Generated from the WIT world. In a module of its own: the generated export macros are
/// `#[macro_export]`ed to the crate root and would clash with their own re-exports there.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "mqtt-plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_mqtt_plugin",
        default_bindings_module: "switchyard_sdk::bindings",
    });
}

pub use bindings::switchyard::plugin::host;
pub use bindings::switchyard::plugin::types::*;
use bindings::Guest;

/// A Switchyard plugin. Every hook has a default that leaves the decision to others.
pub trait Plugin {
    /// Receives the plugin's `config` table as JSON; returns what the plugin wants to be called for.
    fn init(config: String) -> Result<Registration, String>;

    fn authenticate(_req: ConnectRequest) -> AuthResult {
        AuthResult::Ignore
    }

    fn authorize(_client: ClientInfo, _op: Access, _topic: String, _qos: Qos) -> AclResult {
        AclResult::Ignore
    }

    fn on_message_publish(_client: ClientInfo, _msg: Message) -> MessageResult {
        MessageResult::Pass
    }

    fn on_client_event(_client: ClientInfo, _event: String) {}
}

/// Bridges a [`Plugin`] to the generated exports; used by [`export_plugin!`].
#[doc(hidden)]
pub struct Adapter<T>(core::marker::PhantomData<T>);

impl<T: Plugin> Guest for Adapter<T> {
    fn init(config: String) -> Result<Registration, String> {
        T::init(config)
    }
    fn authenticate(req: ConnectRequest) -> AuthResult {
        T::authenticate(req)
    }
    fn authorize(client: ClientInfo, op: Access, topic: String, qos: Qos) -> AclResult {
        T::authorize(client, op, topic, qos)
    }
    fn on_message_publish(client: ClientInfo, msg: Message) -> MessageResult {
        T::on_message_publish(client, msg)
    }
    fn on_client_event(client: ClientInfo, event: String) {
        T::on_client_event(client, event)
    }
}

/// Exports a [`Plugin`] implementation as the component's `mqtt-plugin` world.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        type __SwitchyardPluginExport = $crate::Adapter<$plugin>;
        $crate::bindings::__export_mqtt_plugin!(__SwitchyardPluginExport with_types_in $crate::bindings);
    };
}

/// Logs through the broker's log.
pub fn log(level: host::Level, msg: &str) {
    host::log(level, msg);
}
