//! Helpers the small bench binaries share.

use std::sync::Arc;
use switchyard_core::hooks::ClientInfo;
use switchyard_core::protocol::ProtocolVersion;

/// The value after `name` on the command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A connected v5 client as hooks see it.
pub fn client(id: &str, user: &str) -> ClientInfo {
    ClientInfo {
        client_id: Arc::from(id),
        username: Some(Arc::from(user)),
        peer_addr: "127.0.0.1:40000".parse().expect("literal address"),
        protocol: ProtocolVersion::V5,
        listener: Arc::from("tcp:bench"),
        cert_common_name: None,
        attributes: Vec::new(),
        extension: Default::default(),
    }
}
