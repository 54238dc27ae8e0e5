//! Embeds the dashboard's browser library (mqtt.js, pinned in src/api/dashboard) into the
//! binary. Without it (npm never ran) the broker still builds: the topic explorer then says
//! how to install it.

use std::path::PathBuf;

const MQTT_JS: &str = "src/api/dashboard/node_modules/mqtt/dist/mqtt.min.js";

fn main() {
    println!("cargo:rerun-if-changed={MQTT_JS}");
    println!("cargo:rerun-if-changed=src/api/dashboard/package-lock.json");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    let bytes = std::fs::read(MQTT_JS).unwrap_or_else(|_| {
        println!("cargo:warning=mqtt.js is not installed: run scripts/install-build-deps, then rebuild, for the dashboard's topic explorer");
        b"window.mqtt = null;\n".to_vec()
    });
    if let Err(e) = std::fs::write(out.join("mqtt.min.js"), bytes) {
        panic!("cannot write to OUT_DIR: {e}");
    }
}
