//! What sinks send: `${field}` templates (the core's [`Template`]) and an output's bytes.

use serde_json::Value;
pub use switchyard_core::template::Template;

/// The bytes a sink sends for an output: a string as is, anything else as JSON.
pub fn payload_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.as_bytes().to_vec(),
        other => serde_json::to_vec(other).unwrap_or_default(),
    }
}
