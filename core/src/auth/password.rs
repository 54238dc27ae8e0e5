//! The password file: one `user:$pbkdf2-sha512$ITERATIONS$SALT$HASH` line per user (salt and
//! hash in base64), like `mosquitto_passwd` writes. Verification is slow on purpose, so it runs on
//! the blocking pool, and a successful check is remembered by a fast keyed digest so reconnect
//! storms do not pay it again. An unknown user costs a derivation too (against a dummy entry),
//! so timing does not tell which user names exist; derivations in progress are bounded, so a
//! CONNECT flood queues instead of taking the whole blocking pool.

use crate::hooks::{AuthDecision, ConnectInfo, Hook, HookSet};
use crate::protocol::ReasonCode;
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use parking_lot::RwLock;
use sha2::{Digest, Sha256, Sha512};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const SCHEME: &str = "$pbkdf2-sha512$";
pub const DEFAULT_ITERATIONS: u32 = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("cannot read password file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write password file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("invalid user name {0:?}: it must be non-empty and contain no ':'")]
    InvalidUser(String),
}

#[derive(Clone)]
struct Entry {
    iterations: u32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

/// Hashes `password` with a fresh random salt, in the file's line format (without the user).
pub fn hash_password(password: &str, iterations: u32) -> String {
    use rand::RngCore;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let hash = derive(password.as_bytes(), &salt, iterations);
    format!(
        "{SCHEME}{iterations}${}${}",
        B64.encode(salt),
        B64.encode(hash)
    )
}

fn derive(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 64] {
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_entry(path: &Path, line_no: usize, rest: &str) -> Result<Entry, PasswordError> {
    let syntax = |message: &str| PasswordError::Syntax {
        path: path.to_path_buf(),
        line: line_no,
        message: message.to_string(),
    };
    let body = rest.strip_prefix(SCHEME).ok_or_else(|| {
        syntax(
            "unknown hash scheme (expected $pbkdf2-sha512$); plain-text passwords are not accepted",
        )
    })?;
    let mut parts = body.split('$');
    let (Some(iter), Some(salt), Some(hash), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(syntax("expected $pbkdf2-sha512$ITERATIONS$SALT$HASH"));
    };
    let iterations: u32 = iter
        .parse()
        .map_err(|_| syntax("iterations is not a number"))?;
    if iterations == 0 {
        return Err(syntax("iterations must be at least 1"));
    }
    let salt = B64.decode(salt).map_err(|_| syntax("salt is not base64"))?;
    let hash = B64.decode(hash).map_err(|_| syntax("hash is not base64"))?;
    if hash.len() != 64 {
        return Err(syntax("hash must be 64 bytes"));
    }
    Ok(Entry {
        iterations,
        salt,
        hash,
    })
}

fn read_lines(path: &Path) -> Result<Vec<(String, String)>, PasswordError> {
    let text = std::fs::read_to_string(path).map_err(|source| PasswordError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, rest)) = line.split_once(':') else {
            return Err(PasswordError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                message: "expected USER:HASH".into(),
            });
        };
        out.push((user.to_string(), rest.to_string()));
        parse_entry(path, i + 1, rest)?;
    }
    Ok(out)
}

/// Adds or replaces `user` in the file at `path` (created if missing).
pub fn set_password(path: &Path, user: &str, password: &str) -> Result<(), PasswordError> {
    if user.is_empty() || user.contains(':') || user.contains('\n') {
        return Err(PasswordError::InvalidUser(user.to_string()));
    }
    let mut lines = if path.exists() {
        read_lines(path)?
    } else {
        Vec::new()
    };
    let hashed = hash_password(password, DEFAULT_ITERATIONS);
    match lines.iter_mut().find(|(u, _)| u == user) {
        Some(l) => l.1 = hashed,
        None => lines.push((user.to_string(), hashed)),
    }
    let mut text = String::new();
    for (u, h) in &lines {
        text.push_str(&format!("{u}:{h}\n"));
    }
    std::fs::write(path, text).map_err(|source| PasswordError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The authenticate hook over a loaded password file.
pub struct PasswordFile {
    users: HashMap<String, Entry>,
    /// user → SHA-256(salt ‖ password) of the last password that verified.
    verified: RwLock<HashMap<String, [u8; 32]>>,
    /// What an unknown user's password is checked against: as costly as a real entry.
    dummy: Entry,
    derivations: std::sync::Arc<tokio::sync::Semaphore>,
    /// Derivations run, and the most that ran at once (for tests and the curious).
    derived: std::sync::atomic::AtomicU64,
    running: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Derivations that may run at once: beyond it, checks wait their turn.
fn derivation_slots() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl PasswordFile {
    pub fn load(path: &Path) -> Result<Self, PasswordError> {
        let mut users = HashMap::new();
        for (i, (user, rest)) in read_lines(path)?.into_iter().enumerate() {
            users.insert(user, parse_entry(path, i + 1, &rest)?);
        }
        // As costly as the costliest real entry, so no user name answers faster.
        let iterations = users
            .values()
            .map(|e: &Entry| e.iterations)
            .max()
            .unwrap_or(DEFAULT_ITERATIONS);
        let dummy = Entry {
            iterations,
            salt: vec![0x5a; 16],
            hash: vec![0; 64],
        };
        Ok(Self {
            users,
            verified: RwLock::new(HashMap::new()),
            dummy,
            derivations: std::sync::Arc::new(tokio::sync::Semaphore::new(derivation_slots())),
            derived: Default::default(),
            running: Default::default(),
            peak: Default::default(),
        })
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    fn fast_digest(entry: &Entry, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(&entry.salt);
        h.update(password);
        h.finalize().into()
    }

    pub async fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(entry) = self.users.get(user) else {
            // The same work as for a real user, and the answer is no.
            let _ = self.derive_matches(&self.dummy, password).await;
            return false;
        };
        let digest = Self::fast_digest(entry, password);
        if self
            .verified
            .read()
            .get(user)
            .is_some_and(|d| constant_time_eq(d, &digest))
        {
            return true;
        }
        let ok = self.derive_matches(entry, password).await;
        if ok {
            self.verified.write().insert(user.to_string(), digest);
        }
        ok
    }
}

impl PasswordFile {
    /// Whether `password` derives to `entry`'s hash: on the blocking pool, at most
    /// `derivation_slots()` at once.
    async fn derive_matches(&self, entry: &Entry, password: &[u8]) -> bool {
        use std::sync::atomic::Ordering;
        let Ok(_slot) = self.derivations.clone().acquire_owned().await else {
            return false;
        };
        self.derived.fetch_add(1, Ordering::Relaxed);
        let (running, peak) = (self.running.clone(), self.peak.clone());
        let e = entry.clone();
        let pw = password.to_vec();
        tokio::task::spawn_blocking(move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let ok = constant_time_eq(&derive(&pw, &e.salt, e.iterations), &e.hash);
            running.fetch_sub(1, Ordering::SeqCst);
            ok
        })
        .await
        .unwrap_or(false)
    }

    /// Derivations run since load, and the most that ran at once.
    pub fn derivation_stats(&self) -> (u64, usize) {
        use std::sync::atomic::Ordering;
        (
            self.derived.load(Ordering::Relaxed),
            self.peak.load(Ordering::SeqCst),
        )
    }
}

#[async_trait]
impl Hook for PasswordFile {
    fn name(&self) -> &str {
        "builtin:password-file"
    }
    fn interests(&self) -> HookSet {
        HookSet::AUTHENTICATE
    }
    async fn authenticate(&self, c: &ConnectInfo) -> AuthDecision {
        let Some(user) = c.client.username.as_deref() else {
            // Anonymous: the listener's allow_anonymous decides.
            return AuthDecision::Ignore;
        };
        let password = c.password.as_deref().unwrap_or_default();
        if self.verify(user, password).await {
            AuthDecision::Allow(Vec::new())
        } else {
            AuthDecision::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn set_and_verify_round_trip() {
        let dir = std::env::temp_dir().join(format!("sy-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        set_password(&path, "alice", "s3cret").unwrap();
        set_password(&path, "bob", "hunter2").unwrap();
        set_password(&path, "alice", "changed").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret") && !text.contains("changed"));
        let pf = PasswordFile::load(&path).unwrap();
        assert_eq!(pf.user_count(), 2);
        assert!(pf.verify("alice", b"changed").await);
        assert!(pf.verify("alice", b"changed").await, "cached path");
        assert!(!pf.verify("alice", b"s3cret").await);
        let (before, _) = pf.derivation_stats();
        assert!(!pf.verify("carol", b"x").await);
        assert_eq!(
            pf.derivation_stats().0,
            before + 1,
            "an unknown user costs a derivation, like a known one"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_checks_runs_a_bounded_number_of_derivations_at_once() {
        let dir = std::env::temp_dir().join(format!("sy-pw3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        set_password(&path, "alice", "s3cret").unwrap();
        let pf = std::sync::Arc::new(PasswordFile::load(&path).unwrap());
        let flood: Vec<_> = (0..4 * derivation_slots())
            .map(|i| {
                let pf = pf.clone();
                tokio::spawn(
                    async move { pf.verify("alice", format!("wrong-{i}").as_bytes()).await },
                )
            })
            .collect();
        for f in flood {
            assert!(!f.await.unwrap());
        }
        let (derived, peak) = pf.derivation_stats();
        assert_eq!(derived, 4 * derivation_slots() as u64);
        assert!(peak <= derivation_slots(), "peak {peak}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let dir = std::env::temp_dir().join(format!("sy-pw2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        std::fs::write(&path, "# users\nalice:plaintext\n").unwrap();
        let err = PasswordFile::load(&path).err().unwrap().to_string();
        assert!(err.contains(":2:"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
