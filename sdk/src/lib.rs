//! Write a Switchyard plugin in Rust.
//!
//! The contract is the WIT world in `wit/plugin.wit` (`switchyard:plugin@0.3.0`); this crate
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
//!     fn authorize(_c: &ClientInfo, _op: Access, topic: String, _q: Qos) -> AclResult {
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

    /// Runs on every publish (and subscribe): the client is borrowed from the SDK's cache, which
    /// fetches it from the host once per connection.
    fn authorize(_client: &ClientInfo, _op: Access, _topic: String, _qos: Qos) -> AclResult {
        AclResult::Ignore
    }

    fn on_message_publish(_client: &ClientInfo, _msg: Message) -> MessageResult {
        MessageResult::Pass
    }

    fn on_client_event(_client: &ClientInfo, _event: ClientEvent) {}

    /// The client is the receiving one; for one that was not connected, a record with only
    /// its client id (empty when the message reached no session).
    fn on_message_event(_client: &ClientInfo, _event: MessageEvent) {}
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
    fn authorize(client: u64, op: Access, topic: String, qos: Qos) -> AclResult {
        with_client(client, |c| T::authorize(c, op, topic, qos))
    }
    fn on_message_publish(client: u64, msg: Message) -> MessageResult {
        with_client(client, |c| T::on_message_publish(c, msg))
    }
    fn on_client_event(client: u64, event: ClientEvent) {
        with_client(client, |c| T::on_client_event(c, event))
    }
    fn on_message_event(client: u64, event: MessageEvent) {
        with_client(client, |c| T::on_message_event(c, event))
    }
}

/// Clients this instance saw last, by handle, most recent first.
const CLIENTS_KEPT: usize = 32;

std::thread_local! {
    static CLIENTS: core::cell::RefCell<Vec<(u64, std::rc::Rc<ClientInfo>)>> =
        const { core::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with the client behind `handle`: from the cache, or fetched from the host once.
fn with_client<R>(handle: u64, f: impl FnOnce(&ClientInfo) -> R) -> R {
    // Handle 0 is a different offline client each time: never cached.
    if handle == 0 {
        return f(&host::lookup_client(0).unwrap_or_else(unknown_client));
    }
    let cached = CLIENTS.with(|c| {
        let mut clients = c.borrow_mut();
        let i = clients.iter().position(|(h, _)| *h == handle)?;
        let hit = clients.remove(i);
        let info = hit.1.clone();
        clients.insert(0, hit);
        Some(info)
    });
    let info = match cached {
        Some(info) => info,
        None => {
            let info = std::rc::Rc::new(host::lookup_client(handle).unwrap_or_else(unknown_client));
            CLIENTS.with(|c| {
                let mut clients = c.borrow_mut();
                clients.truncate(CLIENTS_KEPT - 1);
                clients.insert(0, (handle, info.clone()));
            });
            info
        }
    };
    f(&info)
}

/// What a hook sees if the host does not know the handle (it always should).
fn unknown_client() -> ClientInfo {
    ClientInfo {
        client_id: String::new(),
        username: None,
        peer_addr: String::new(),
        protocol: ProtocolVersion::V5,
        listener: String::new(),
        cert_common_name: None,
        attributes: Vec::new(),
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
