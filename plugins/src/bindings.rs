//! The generated host bindings, one module per contract version the host loads: `v3` for
//! `switchyard:plugin@0.3.0` (the SDK's `sdk/wit`), `v2` for 0.2.0 guests (`plugins/wit/v0.2.0`).
//! Guest calls are async so a long-running guest yields to the executor at every epoch tick
//! instead of holding a runtime thread; host functions stay plain and quick.

pub mod v3 {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "mqtt-plugin",
        exports: { default: async },
        // The one host function that waits (on the network): async, so it does not hold a
        // runtime thread.
        imports: { "switchyard:plugin/host.http-fetch": async },
    });
}

pub mod v2 {
    wasmtime::component::bindgen!({
        path: "wit/v0.2.0",
        world: "mqtt-plugin",
        exports: { default: async },
    });
}

/// The types of the current contract, which the rest of the host speaks.
pub use v3::switchyard::plugin::types as wit;
