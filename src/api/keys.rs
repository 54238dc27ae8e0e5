//! API keys for automation: made and revoked through the API, shown once, kept only as
//! SHA-256 hashes in a JSON file (mode 0600) so a copy of the file lets nobody in.

use super::auth::{random_token, same};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredKey {
    pub id: String,
    pub name: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    pub created_ms: u64,
    /// Who made it.
    pub created_by: String,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

pub struct ApiKeys {
    path: Option<PathBuf>,
    keys: Mutex<Vec<StoredKey>>,
}

fn hex_digest(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ApiKeys {
    /// Reads the key file at `path` (absent: no keys yet). Without a path keys live in memory.
    pub fn open(path: Option<PathBuf>) -> Result<ApiKeys, String> {
        let keys = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("API key file {}: {e}", p.display()))?;
                serde_json::from_str::<KeyFile>(&text)
                    .map_err(|e| format!("API key file {}: {e}", p.display()))?
                    .keys
            }
            _ => Vec::new(),
        };
        Ok(ApiKeys {
            path,
            keys: Mutex::new(keys),
        })
    }

    pub fn count(&self) -> usize {
        self.keys.lock().len()
    }

    /// The keys without their hashes.
    pub fn list(&self) -> Vec<serde_json::Value> {
        self.keys
            .lock()
            .iter()
            .map(|k| {
                serde_json::json!({
                    "id": k.id, "name": k.name, "created_ms": k.created_ms,
                    "created_by": k.created_by,
                })
            })
            .collect()
    }

    /// The name of the key `presented`, if it is one of ours.
    pub fn find(&self, presented: &str) -> Option<String> {
        let hash = hex_digest(presented);
        self.keys
            .lock()
            .iter()
            .find(|k| same(k.hash.as_bytes(), hash.as_bytes()))
            .map(|k| k.name.clone())
    }

    /// Makes a key; returns its record and the key itself, which is not kept.
    pub fn create(&self, name: &str, by: &str) -> Result<(StoredKey, String), String> {
        let id = random_token(6);
        let key = format!("sy_{}", random_token(32));
        let stored = StoredKey {
            id,
            name: name.to_string(),
            hash: hex_digest(&key),
            created_ms: switchyard_core::clock::now_ms(),
            created_by: by.to_string(),
        };
        let mut keys = self.keys.lock();
        keys.push(stored.clone());
        if let Err(e) = self.save(&keys) {
            keys.pop();
            return Err(e);
        }
        Ok((stored, key))
    }

    /// Revokes key `id`; returns whether it existed.
    pub fn revoke(&self, id: &str) -> Result<bool, String> {
        let mut keys = self.keys.lock();
        let before = keys.len();
        keys.retain(|k| k.id != id);
        if keys.len() == before {
            return Ok(false);
        }
        self.save(&keys)?;
        Ok(true)
    }

    fn save(&self, keys: &[StoredKey]) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(&KeyFile {
            keys: keys.to_vec(),
        })
        .map_err(|e| e.to_string())?;
        switchyard_core::files::replace(path, text.as_bytes(), true)
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}
