//! Test a plugin without a broker: build the plugin crate for wasm32-wasip2, load the component
//! exactly as the broker does (same host, limits and hook), and call one hook at a time. For
//! plain `#[test]` functions in the plugin's own crate:
//!
//! ```ignore
//! use switchyard_plugins::harness::Harness;
//!
//! #[test]
//! fn secrets_are_denied() {
//!     let wasm = Harness::build(env!("CARGO_MANIFEST_DIR")).unwrap();
//!     let plugin = Harness::load(&wasm, serde_json::json!({})).unwrap();
//!     let alice = Harness::client("c1", Some("alice"));
//!     assert!(matches!(
//!         plugin.authorize(&alice, Access::Publish, "secret/x"),
//!         AclDecision::Deny(_)
//!     ));
//! }
//! ```
//!
//! The harness runs its own runtime: call it from synchronous tests, not from inside
//! `#[tokio::test]`.

use crate::runtime::WasmPlugin;
use crate::settings::{LoadError, PluginSettings};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use switchyard_core::hooks::{
    Access, AclDecision, AuthDecision, ClientInfo, ConnectInfo, Hook, MessageDecision,
};
use switchyard_core::protocol::{ProtocolVersion, QoS};
use switchyard_core::Message;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("cannot run cargo: {0}")]
    Cargo(std::io::Error),
    #[error("cargo build of {manifest} failed:\n{stderr}")]
    Build { manifest: String, stderr: String },
    #[error("no component found in {0}")]
    NoComponent(PathBuf),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
}

pub struct Harness {
    plugin: Arc<WasmPlugin>,
    hook: Arc<dyn Hook>,
    runtime: tokio::runtime::Runtime,
}

impl Harness {
    /// The component of the plugin crate at `manifest_dir`, built for wasm32-wasip2 in release
    /// (into `target/harness` beside the crate, or under `CARGO_TARGET_DIR`). When
    /// `SWITCHYARD_PLUGINS_DIR` is set and holds `NAME.wasm`, that file is used instead (what
    /// the broker's own test run does with the components it built already).
    pub fn build(manifest_dir: impl AsRef<Path>) -> Result<PathBuf, HarnessError> {
        let dir = manifest_dir.as_ref();
        let name = crate_name(dir)?;
        let file = format!("{}.wasm", name.replace('-', "_"));
        if let Some(prebuilt) = std::env::var_os("SWITCHYARD_PLUGINS_DIR") {
            let p = PathBuf::from(prebuilt).join(&file);
            if p.exists() {
                return Ok(p);
            }
        }
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("target"))
            .join("harness");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = dir.join("Cargo.toml");
        let out = std::process::Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir)
            .output()
            .map_err(HarnessError::Cargo)?;
        if !out.status.success() {
            return Err(HarnessError::Build {
                manifest: manifest.display().to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let built = target_dir.join("wasm32-wasip2/release").join(&file);
        if built.exists() {
            Ok(built)
        } else {
            Err(HarnessError::NoComponent(built))
        }
    }

    /// Loads the component at `path` with `config` (the `[[plugin]]` entry's `config`), with
    /// the default limits of a `[[plugin]]` entry.
    pub fn load(path: impl Into<PathBuf>, config: serde_json::Value) -> Result<Self, HarnessError> {
        Self::load_with(PluginSettings {
            config,
            ..PluginSettings::for_path(path.into())
        })
    }

    /// Loads a plugin with every setting of its `[[plugin]]` entry.
    pub fn load_with(settings: PluginSettings) -> Result<Self, HarnessError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(HarnessError::Runtime)?;
        let plugin = runtime.block_on(WasmPlugin::load(settings))?;
        let hook = plugin.hook();
        Ok(Self {
            plugin,
            hook,
            runtime,
        })
    }

    /// A client as the broker would describe it after CONNECT (v5, on `tcp:test`).
    pub fn client(id: &str, username: Option<&str>) -> ClientInfo {
        ClientInfo {
            client_id: id.into(),
            username: username.map(Into::into),
            peer_addr: ([127, 0, 0, 1], 50000).into(),
            protocol: ProtocolVersion::V5,
            listener: "tcp:test".into(),
            cert_common_name: None,
            attributes: Vec::new(),
            extension: Default::default(),
        }
    }

    /// `authenticate` for a plain CONNECT of `client` with `password`.
    pub fn connect(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthDecision {
        self.authenticate(&ConnectInfo {
            client: client.clone(),
            password: password.map(Bytes::copy_from_slice),
            clean_start: true,
            keep_alive: 60,
            auth: None,
        })
    }

    pub fn authenticate(&self, req: &ConnectInfo) -> AuthDecision {
        self.runtime.block_on(self.hook.authenticate(req))
    }

    pub fn authorize(&self, client: &ClientInfo, access: Access, topic: &str) -> AclDecision {
        self.runtime
            .block_on(self.hook.authorize(client, access, topic, QoS::AtLeastOnce))
    }

    pub fn on_publish(&self, client: &ClientInfo, msg: &Message) -> MessageDecision {
        self.runtime.block_on(self.hook.on_publish(client, msg))
    }

    /// The loaded plugin: its counters, breaker, kv store.
    pub fn plugin(&self) -> &WasmPlugin {
        &self.plugin
    }
}

/// The `name` of the crate's `[package]`.
fn crate_name(dir: &Path) -> Result<String, HarnessError> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).map_err(HarnessError::Cargo)?;
    let mut in_package = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(v) = line.strip_prefix("name").map(str::trim_start) {
                if let Some(v) = v.strip_prefix('=') {
                    return Ok(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    Err(HarnessError::NoComponent(dir.join("Cargo.toml")))
}
