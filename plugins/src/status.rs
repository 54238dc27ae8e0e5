//! What operators see of the plugins: `GET /plugins` (loaded, missing, load errors, each
//! plugin's breaker and counters), the problems `/health` reports, and the `/metrics` series.

use crate::manager::PluginManager;
use crate::runtime::WasmPlugin;
use std::sync::{Arc, Weak};
use std::time::UNIX_EPOCH;

pub(crate) struct PluginStatus(pub(crate) Weak<PluginManager>);

fn plugins_by_name(manager: &PluginManager) -> Vec<Arc<WasmPlugin>> {
    let mut plugins: Vec<Arc<WasmPlugin>> = manager
        .loaded
        .lock()
        .values()
        .map(|l| l.plugin.clone())
        .collect();
    plugins.sort_by(|a, b| a.name().cmp(b.name()));
    plugins
}

impl switchyard_core::metrics::MetricsSource for PluginStatus {
    fn status(&self) -> Option<serde_json::Value> {
        let manager = self.0.upgrade()?;
        let mut plugins: Vec<serde_json::Value> = manager
            .loaded
            .lock()
            .iter()
            .map(|(path, l)| {
                let p = &l.plugin;
                let (kv_entries, kv_bytes) = p.kv.usage();
                serde_json::json!({
                    "name": p.name(), "id": p.id(), "path": path, "version": l.version,
                    "contract": p.contract(), "priority": p.priority(),
                    "required": p.settings.required,
                    "breaker": p.breaker_state(), "calls": p.calls(), "failures": p.failures(),
                    "host_failures": p.host_failures(), "rejected": p.rejected(),
                    "events_dropped": p.events_dropped(), "log_dropped": p.log_dropped(),
                    "kv_entries": kv_entries, "kv_bytes": kv_bytes,
                })
            })
            .collect();
        plugins.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let missing: Vec<serde_json::Value> = manager
            .missing
            .lock()
            .iter()
            .map(|(path, m)| {
                serde_json::json!({
                    "name": m.name, "path": path, "required": m.required,
                    "authenticates_or_authorizes": m.gate,
                    "since_unix_s": m.since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                })
            })
            .collect();
        Some(serde_json::json!({
            "plugins": plugins,
            "missing": missing,
            "load_errors": manager.last_errors.lock().values().collect::<Vec<_>>(),
        }))
    }

    fn problems(&self) -> Vec<String> {
        let Some(manager) = self.0.upgrade() else {
            return Vec::new();
        };
        let mut out: Vec<String> = manager
            .missing
            .lock()
            .iter()
            .map(|(path, m)| {
                if m.required {
                    format!(
                        "required plugin {} ({}) is missing: every client is refused",
                        m.name,
                        path.display()
                    )
                } else {
                    format!(
                        "authentication/ACL plugin {} ({}) was removed: clients meet the next hook or the listener's defaults (SIGHUP acknowledges)",
                        m.name,
                        path.display()
                    )
                }
            })
            .collect();
        for p in plugins_by_name(&manager) {
            if !p.breaker.is_closed() {
                out.push(format!(
                    "plugin {}: breaker {} after repeated failures; its hooks answer with on_error",
                    p.name(),
                    p.breaker_state()
                ));
            }
        }
        out.sort();
        out
    }

    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let Some(manager) = self.0.upgrade() else {
            return;
        };
        let plugins = plugins_by_name(&manager);
        type Read = fn(&WasmPlugin) -> u64;
        let series: [(&str, &str, &str, Read); 7] = [
            (
                "switchyard_plugin_calls_total",
                "counter",
                "Hook calls into each WASM plugin.",
                |p| p.calls(),
            ),
            (
                "switchyard_plugin_failures_total",
                "counter",
                "Calls the guest failed: trapped, over its time or memory, or tried to wait.",
                |p| p.failures(),
            ),
            (
                "switchyard_plugin_host_failures_total",
                "counter",
                "Calls the host could not run (no instance in time, pool exhausted); not held against the plugin.",
                |p| p.host_failures(),
            ),
            (
                "switchyard_plugin_rejected_total",
                "counter",
                "Calls answered with on_error while the plugin's breaker was open.",
                |p| p.rejected(),
            ),
            (
                "switchyard_plugin_breaker_open",
                "gauge",
                "1 while a plugin's circuit breaker is open or half-open.",
                |p| u64::from(!p.breaker.is_closed()),
            ),
            (
                "switchyard_plugin_events_dropped_total",
                "counter",
                "Events not delivered: the plugin's queue was full.",
                |p| p.events_dropped(),
            ),
            (
                "switchyard_plugin_log_dropped_total",
                "counter",
                "Log lines over the plugin's log_per_s.",
                |p| p.log_dropped(),
            ),
        ];
        for (name, kind, help, read) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for p in &plugins {
                let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {}", p.name(), read(p));
            }
        }
    }
}
