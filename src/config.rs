//! The whole configuration file: the core's tables plus the plugin host's and the rule
//! engine's. Each crate owns and validates its own tables; this module only splits the file.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use switchyard_core::CoreConfig;
use switchyard_plugins::{HttpAuthConfig, HttpAuthHook, PluginSettings};
use switchyard_rules::config::DeadLetterConfig;
use switchyard_rules::{RulesConfig, SinkConfig};

/// A configuration file that cannot be read or does not validate; the message names the file
/// and the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

#[derive(Debug, Default)]
pub struct Config {
    pub core: CoreConfig,
    pub plugins: Vec<PluginSettings>,
    pub plugins_dir: Option<PathBuf>,
    pub rules: RulesConfig,
    pub sinks: BTreeMap<String, SinkConfig>,
    /// `[http_auth.authenticate]` and `[http_auth.authorize]`.
    pub http_auth: HttpAuthConfig,
    /// The file as written (every table), for the API's redacted view of the configuration.
    pub file_tables: toml::Table,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        // The data belongs with its configuration, wherever the broker is started from.
        if let Some(base) = path.parent() {
            let dirs = std::iter::once(&mut config.core.persistence.dir)
                .chain(config.sinks.values_mut().map(|s| &mut s.common.buffer_dir));
            for dir in dirs.filter(|d| d.is_relative()) {
                *dir = base.join(&*dir);
            }
            let http = &mut config.core.http;
            for file in [&mut http.password_file, &mut http.api_keys_file] {
                if !file.is_empty() && Path::new(file.as_str()).is_relative() {
                    *file = base.join(&*file).display().to_string();
                }
            }
            for pem in [&mut http.cert, &mut http.key].into_iter().flatten() {
                if pem.is_relative() {
                    *pem = base.join(&*pem);
                }
            }
            for sink in config.sinks.values_mut() {
                if let Some(DeadLetterConfig::File(f)) = &mut sink.common.dead_letter {
                    if f.is_relative() {
                        *f = base.join(&*f);
                    }
                }
                // A sink's CA file, like its buffer, sits with the configuration.
                if let Some(serde_json::Value::String(ca)) = sink.options.get_mut("ca_file") {
                    if Path::new(ca.as_str()).is_relative() {
                        *ca = base.join(&*ca).display().to_string();
                    }
                }
            }
        }
        Ok(config)
    }

    /// Parses `text`; `name` (the file) prefixes every error.
    pub fn parse(text: &str, name: &str) -> Result<Config, ConfigError> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            ConfigError(if what.is_empty() {
                format!("{name}: {e}")
            } else {
                format!("{name}: {what}: {e}")
            })
        };
        // Each crate owns its tables: take out the plugin host's and the rules', the core
        // rejects anything else.
        let mut table: toml::Table = toml::from_str(text).map_err(|e| err("", &e))?;
        let file_tables = table.clone();
        let plugins = match table.remove("plugin") {
            Some(v) => Vec::<PluginSettings>::deserialize(v).map_err(|e| err("plugin", &e))?,
            None => Vec::new(),
        };
        let plugins_dir = match table.remove("plugins_dir") {
            Some(toml::Value::String(s)) if !s.is_empty() => Some(PathBuf::from(s)),
            Some(toml::Value::String(_)) | None => None,
            Some(_) => return Err(err("plugins_dir", &"expected a folder path")),
        };
        let rules = match table.remove("rules") {
            Some(v) => RulesConfig::deserialize(v).map_err(|e| err("rules", &e))?,
            None => RulesConfig::default(),
        };
        let http_auth = match table.remove("http_auth") {
            Some(v) => {
                let c = HttpAuthConfig::deserialize(v).map_err(|e| err("http_auth", &e))?;
                HttpAuthHook::new(&c).map_err(|e| err("", &e))?;
                c
            }
            None => HttpAuthConfig::default(),
        };
        let mut sinks = BTreeMap::new();
        if let Some(v) = table.remove("sink") {
            let toml::Value::Table(t) = v else {
                return Err(err("sink", &"expected [sink.NAME] tables"));
            };
            for (sink, v) in t {
                let cfg =
                    SinkConfig::deserialize(v).map_err(|e| err(&format!("sink.{sink}"), &e))?;
                sinks.insert(sink, cfg);
            }
        }
        let core = CoreConfig::deserialize(toml::Value::Table(table)).map_err(|e| err("", &e))?;
        core.validate(name)
            .map_err(|e| ConfigError(e.to_string()))?;
        Ok(Config {
            core,
            plugins,
            plugins_dir,
            rules,
            sinks,
            http_auth,
            file_tables,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const DEFAULT_CONFIG: &str = include_str!("default_config.toml");

    #[test]
    fn default_config_file_parses_to_the_defaults() {
        let parsed = Config::parse(DEFAULT_CONFIG, "default").unwrap().core;
        let defaults = CoreConfig::default();
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            toml::to_string(&defaults).unwrap()
        );
    }

    #[test]
    fn default_rules_table_parses_to_the_defaults() {
        let parsed = Config::parse(DEFAULT_CONFIG, "default").unwrap();
        assert_eq!(
            format!("{:?}", parsed.rules),
            format!("{:?}", RulesConfig::default())
        );
        assert!(parsed.sinks.is_empty());
    }

    #[test]
    fn sink_tables_are_parsed_and_errors_name_the_sink() {
        let c = Config::parse(
            "[rules]\ndir = \"r\"\n[sink.alerts]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/a\"\n",
            "s.toml",
        )
        .unwrap();
        assert!(c.sinks.contains_key("alerts"));
        let err = Config::parse(
            "[sink.alerts]\nkind = \"webhook\"\nurl = \"http://x\"\nretries = 3\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("s.toml") && err.contains("sink.alerts") && err.contains("retries"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = Config::parse("[mqtt]\nmax_inflite = 3\n", "my.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("my.toml") && err.contains("max_inflite"),
            "{err}"
        );
    }

    #[test]
    fn plugin_tables_are_parsed_apart_from_the_core() {
        let c = Config::parse(
            "plugins_dir = \"plugins\"\n[[plugin]]\npath = \"a.wasm\"\non_error = \"ignore\"\nconfig = { secret = \"s\" }\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(c.plugins[0].config["secret"], "s");
        assert_eq!(c.plugins_dir.as_deref(), Some(Path::new("plugins")));
        let err = Config::parse("[[plugin]]\npath = \"a.wasm\"\ntimeout = 3\n", "p.toml")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("p.toml") && err.contains("timeout"), "{err}");
    }

    #[test]
    fn bad_value_names_key_and_file() {
        let err = Config::parse("[mqtt]\nmax_packet_size = 2\n", "my.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("my.toml") && err.contains("max_packet_size"),
            "{err}"
        );
        let err = Config::parse(
            "[[listener]]\nkind = \"tls\"\nbind = \"0.0.0.0:1\"\n",
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x.toml") && err.contains("cert"), "{err}");
        let err = Config::parse(
            "[[listener]]\nkind = \"udp\"\nbind = \"0.0.0.0:1\"\n",
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x.toml") && err.contains("udp"), "{err}");
    }
}
