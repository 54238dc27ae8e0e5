//! Who is refused at the door: bans by client id, user name or IP address, either listed in
//! `[limits] bans_file` (read at start and on SIGHUP; no expiry), set by flapping detection
//! (a client id, user name or IP that ended more than `flapping_max_connects` connections within
//! `flapping_window_s` is banned for `flapping_ban_s`), or set by an operator through the HTTP
//! API (kept in a file of the persistence folder, so they outlive a restart).

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BanKey {
    ClientId(String),
    User(String),
    Ip(IpAddr),
}

impl std::fmt::Display for BanKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BanKey::ClientId(c) => write!(f, "client id {c:?}"),
            BanKey::User(u) => write!(f, "user {u:?}"),
            BanKey::Ip(ip) => write!(f, "address {ip}"),
        }
    }
}

impl BanKey {
    /// The key as the bans file and the HTTP API name it: (`clientid` | `username` | `ip`,
    /// value).
    pub fn parts(&self) -> (&'static str, String) {
        match self {
            BanKey::ClientId(c) => ("clientid", c.clone()),
            BanKey::User(u) => ("username", u.clone()),
            BanKey::Ip(ip) => ("ip", ip.to_string()),
        }
    }

    /// The inverse of [`BanKey::parts`]; `None` for an unknown kind or a bad address.
    pub fn from_parts(kind: &str, value: &str) -> Option<BanKey> {
        match kind {
            "clientid" => Some(BanKey::ClientId(value.to_string())),
            "username" => Some(BanKey::User(value.to_string())),
            "ip" => value.parse().ok().map(BanKey::Ip),
            _ => None,
        }
    }
}

/// One `[[ban]]` of the bans file: exactly one of the three keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BanEntry {
    clientid: Option<String>,
    username: Option<String>,
    ip: Option<IpAddr>,
    #[allow(dead_code)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BansFile {
    #[serde(default)]
    ban: Vec<BanEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum BansError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: cannot save operators' bans: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Operators' bans as kept on disk: expiry as a wall-clock time, which means the same after a
/// restart (an `Instant` does not).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredBans {
    bans: Vec<StoredBan>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredBan {
    kind: String,
    value: String,
    /// Unix milliseconds; absent: until lifted.
    until_unix_ms: Option<u64>,
}

/// Reads a bans file: `[[ban]]` tables with one of `clientid`, `username`, `ip`.
pub fn load_bans_file(path: &Path) -> Result<Vec<BanKey>, BansError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| BansError::Read {
        path: shown.clone(),
        source,
    })?;
    let file: BansFile = toml::from_str(&text).map_err(|e| BansError::Parse {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    file.ban
        .into_iter()
        .enumerate()
        .map(|(i, b)| match (b.clientid, b.username, b.ip) {
            (Some(c), None, None) => Ok(BanKey::ClientId(c)),
            (None, Some(u), None) => Ok(BanKey::User(u)),
            (None, None, Some(ip)) => Ok(BanKey::Ip(ip)),
            _ => Err(BansError::Parse {
                path: shown.clone(),
                message: format!("ban #{}: give exactly one of clientid, username, ip", i + 1),
            }),
        })
        .collect()
}

/// The unexpired bans of a file [`Bans::save`] wrote, read at `now` (`now_ms` on the wall).
fn restore(
    shown: &str,
    bytes: &[u8],
    now: Instant,
    now_ms: u64,
) -> Result<Vec<(BanKey, Option<Instant>)>, BansError> {
    let parse = |message: String| BansError::Parse {
        path: shown.to_string(),
        message,
    };
    let file: StoredBans = serde_json::from_slice(bytes).map_err(|e| parse(e.to_string()))?;
    let mut restored = Vec::new();
    for b in file.bans {
        let key = BanKey::from_parts(&b.kind, &b.value)
            .ok_or_else(|| parse(format!("not a ban: {} {:?}", b.kind, b.value)))?;
        match b.until_unix_ms {
            None => restored.push((key, None)),
            Some(ms) if ms > now_ms => {
                restored.push((key, Some(now + Duration::from_millis(ms - now_ms))))
            }
            // Expired while the broker was down.
            Some(_) => {}
        }
    }
    Ok(restored)
}

/// Flapping thresholds; a zero count turns detection off for that kind of key.
#[derive(Debug, Clone, Copy)]
pub struct FlappingPolicy {
    pub client_max: u32,
    pub user_max: u32,
    pub ip_max: u32,
    pub window: Duration,
    pub ban: Duration,
}

/// Connections ended by one key within the current window.
#[derive(Debug)]
struct Tally {
    window_start: Instant,
    ended: u32,
}

#[derive(Debug, Default)]
struct State {
    /// From the bans file: no expiry.
    listed: Vec<BanKey>,
    /// From flapping detection: until when.
    flapping: HashMap<BanKey, Instant>,
    /// Set by an operator (HTTP API): until when, or for good.
    manual: HashMap<BanKey, Option<Instant>>,
    tallies: HashMap<BanKey, Tally>,
    last_sweep: Option<Instant>,
}

/// Keys tracked for flapping at once. A storm of made-up client ids is not flapping, and must
/// not grow the table without bound: past this, new keys are not tracked until a sweep.
const MAX_TALLIES: usize = 100_000;

#[derive(Debug)]
pub struct Bans {
    policy: FlappingPolicy,
    state: Mutex<State>,
    /// Where operators' bans are kept, once [`Bans::keep_in`] named a file.
    store: OnceLock<PathBuf>,
    /// One save at a time, each of the state as it is when it starts: the last save written
    /// is of the newest state.
    saving: Mutex<()>,
}

/// A ban in force, for `/bans` and the logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BanInfo {
    /// As [`BanKey`]'s `Display` writes it: `client id "x"`, `user "u"`, `address 1.2.3.4`.
    pub who: String,
    /// `clientid`, `username` or `ip`, and the value: what `DELETE /api/v1/bans` names.
    pub kind: &'static str,
    pub value: String,
    pub source: &'static str,
    /// Seconds left; `None` for a listed ban.
    pub expires_in_s: Option<u64>,
}

impl Bans {
    pub fn new(policy: FlappingPolicy) -> Self {
        Self {
            policy,
            state: Mutex::new(State::default()),
            store: OnceLock::new(),
            saving: Mutex::new(()),
        }
    }

    /// Keeps operators' bans in `path` from now on, after putting back the ones it holds that
    /// have not expired (a missing file holds none). Returns how many came back.
    pub fn keep_in(&self, path: PathBuf) -> Result<usize, BansError> {
        let shown = path.display().to_string();
        let restored = match std::fs::read(&path) {
            Ok(bytes) => restore(&shown, &bytes, Instant::now(), crate::clock::now_ms())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(BansError::Read {
                    path: shown,
                    source,
                })
            }
        };
        let count = restored.len();
        self.state.lock().manual.extend(restored);
        let _ = self.store.set(path);
        Ok(count)
    }

    /// Writes the operators' bans in force to the file [`Bans::keep_in`] named, if any.
    fn save(&self) -> Result<(), BansError> {
        let Some(path) = self.store.get() else {
            return Ok(());
        };
        let _one_at_a_time = self.saving.lock();
        let (now, now_ms) = (Instant::now(), crate::clock::now_ms());
        let bans = self
            .state
            .lock()
            .manual
            .iter()
            .filter(|(_, until)| until.is_none_or(|u| u > now))
            .map(|(key, until)| {
                let (kind, value) = key.parts();
                StoredBan {
                    kind: kind.to_string(),
                    value,
                    until_unix_ms: until
                        .map(|u| now_ms + u.saturating_duration_since(now).as_millis() as u64),
                }
            })
            .collect();
        let write = |source| BansError::Write {
            path: path.display().to_string(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&StoredBans { bans })
            .map_err(|e| write(std::io::Error::other(e)))?;
        crate::files::replace(path, &bytes, true).map_err(write)
    }

    /// Replaces the listed bans (the bans file was read again).
    pub fn set_listed(&self, listed: Vec<BanKey>) {
        self.state.lock().listed = listed;
    }

    /// Whether any ban is in force (the common answer, no: nothing else to look at).
    pub fn any(&self) -> bool {
        let st = self.state.lock();
        !st.listed.is_empty() || !st.flapping.is_empty() || !st.manual.is_empty()
    }

    /// An operator's ban of `key`, until `until` or for good. It is in force even when it
    /// cannot be saved (the error says so).
    pub fn add(&self, key: BanKey, until: Option<Instant>) -> Result<(), BansError> {
        self.state.lock().manual.insert(key, until);
        self.save()
    }

    /// Lifts an operator's or a flapping ban of `key`; a listed one stays (it is the bans
    /// file's). Returns whether one was lifted.
    pub fn remove(&self, key: &BanKey) -> Result<bool, BansError> {
        let (manual, flapping) = {
            let mut st = self.state.lock();
            (
                st.manual.remove(key).is_some(),
                st.flapping.remove(key).is_some(),
            )
        };
        if manual {
            self.save()?;
        }
        Ok(manual || flapping)
    }

    /// The first of `keys` that is banned now.
    pub fn banned<'a>(&self, keys: &'a [BanKey], now: Instant) -> Option<&'a BanKey> {
        let st = self.state.lock();
        if st.listed.is_empty() && st.flapping.is_empty() && st.manual.is_empty() {
            return None;
        }
        keys.iter().find(|k| {
            st.listed.contains(k)
                || st.flapping.get(*k).is_some_and(|until| *until > now)
                || st
                    .manual
                    .get(*k)
                    .is_some_and(|until| until.is_none_or(|u| u > now))
        })
    }

    fn threshold(&self, key: &BanKey) -> u32 {
        match key {
            BanKey::ClientId(_) => self.policy.client_max,
            BanKey::User(_) => self.policy.user_max,
            BanKey::Ip(_) => self.policy.ip_max,
        }
    }

    /// A connection of these keys ended. Returns the keys this made flap (now banned).
    pub fn connection_ended(&self, keys: Vec<BanKey>, now: Instant) -> Vec<BanKey> {
        let window = self.policy.window;
        let mut banned = Vec::new();
        let mut st = self.state.lock();
        for key in keys {
            let max = self.threshold(&key);
            if max == 0 {
                continue;
            }
            if st.tallies.len() >= MAX_TALLIES && !st.tallies.contains_key(&key) {
                // A sweep is a pass over the whole table: at most one a second.
                if st
                    .last_sweep
                    .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
                {
                    st.tallies
                        .retain(|_, t| now.saturating_duration_since(t.window_start) <= window);
                    st.last_sweep = Some(now);
                }
                if st.tallies.len() >= MAX_TALLIES {
                    continue;
                }
            }
            let tally = st.tallies.entry(key.clone()).or_insert(Tally {
                window_start: now,
                ended: 0,
            });
            if now.saturating_duration_since(tally.window_start) > window {
                tally.window_start = now;
                tally.ended = 0;
            }
            tally.ended += 1;
            if tally.ended > max {
                tally.ended = 0;
                st.flapping.insert(key.clone(), now + self.policy.ban);
                banned.push(key);
            }
        }
        // Forget old tallies and expired bans now and then, not on every disconnect.
        if st
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) > window)
        {
            st.tallies
                .retain(|_, t| now.saturating_duration_since(t.window_start) <= window);
            st.flapping.retain(|_, until| *until > now);
            st.manual.retain(|_, until| until.is_none_or(|u| u > now));
            st.last_sweep = Some(now);
        }
        banned
    }

    pub fn list(&self, now: Instant) -> Vec<BanInfo> {
        let st = self.state.lock();
        let listed = st.listed.iter().map(|k| BanInfo {
            who: k.to_string(),
            kind: k.parts().0,
            value: k.parts().1,
            source: "bans_file",
            expires_in_s: None,
        });
        let flapping = st
            .flapping
            .iter()
            .filter(|(_, u)| **u > now)
            .map(|(k, u)| BanInfo {
                who: k.to_string(),
                kind: k.parts().0,
                value: k.parts().1,
                source: "flapping",
                expires_in_s: Some(u.saturating_duration_since(now).as_secs()),
            });
        let manual = st
            .manual
            .iter()
            .filter(|(_, u)| u.is_none_or(|u| u > now))
            .map(|(k, u)| BanInfo {
                who: k.to_string(),
                kind: k.parts().0,
                value: k.parts().1,
                source: "api",
                expires_in_s: u.map(|u| u.saturating_duration_since(now).as_secs()),
            });
        listed.chain(flapping).chain(manual).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> FlappingPolicy {
        FlappingPolicy {
            client_max: 3,
            user_max: 0,
            ip_max: 0,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(300),
        }
    }

    #[test]
    fn a_client_id_that_flaps_is_banned_for_the_ban_period() {
        let bans = Bans::new(policy());
        let t0 = Instant::now();
        let keys = || {
            vec![
                BanKey::ClientId("dev".into()),
                BanKey::Ip([10, 0, 0, 1].into()),
            ]
        };
        for i in 0..3 {
            assert!(bans
                .connection_ended(keys(), t0 + Duration::from_secs(i))
                .is_empty());
        }
        let now = t0 + Duration::from_secs(4);
        assert_eq!(
            bans.connection_ended(keys(), now),
            vec![BanKey::ClientId("dev".into())]
        );
        assert!(bans.banned(&keys(), now).is_some());
        // IP flapping is off (0): only the client id is banned, and only for the ban period.
        assert!(bans
            .banned(&[BanKey::Ip([10, 0, 0, 1].into())], now)
            .is_none());
        assert!(bans
            .banned(&keys(), now + Duration::from_secs(301))
            .is_none());
    }

    #[test]
    fn a_storm_of_made_up_client_ids_does_not_grow_the_table_without_bound() {
        let bans = Bans::new(policy());
        let t0 = Instant::now();
        for i in 0..(MAX_TALLIES + 5000) {
            bans.connection_ended(vec![BanKey::ClientId(format!("id-{i}"))], t0);
        }
        assert!(bans.state.lock().tallies.len() <= MAX_TALLIES);
    }

    #[test]
    fn connections_spread_over_windows_are_not_flapping() {
        let bans = Bans::new(policy());
        let t0 = Instant::now();
        for i in 0..20 {
            let now = t0 + Duration::from_secs(i * 30);
            assert!(bans
                .connection_ended(vec![BanKey::ClientId("ok".into())], now)
                .is_empty());
        }
    }

    #[test]
    fn operators_bans_are_kept_with_their_wall_clock_expiry_and_expired_ones_stay_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans.json");
        let bans = Bans::new(policy());
        assert_eq!(bans.keep_in(path.clone()).unwrap(), 0, "no file yet");
        let hour = Instant::now() + Duration::from_secs(3600);
        bans.add(BanKey::ClientId("forever".into()), None).unwrap();
        bans.add(BanKey::User("hour".into()), Some(hour)).unwrap();
        bans.add(BanKey::Ip([192, 0, 2, 9].into()), Some(hour))
            .unwrap();
        assert!(bans.remove(&BanKey::Ip([192, 0, 2, 9].into())).unwrap());

        let again = Bans::new(policy());
        assert_eq!(again.keep_in(path.clone()).unwrap(), 2);
        let now = Instant::now();
        let forever = [BanKey::ClientId("forever".into())];
        assert!(again
            .banned(&forever, now + Duration::from_secs(1 << 30))
            .is_some());
        let user = [BanKey::User("hour".into())];
        assert!(again
            .banned(&user, now + Duration::from_secs(3500))
            .is_some());
        assert!(again
            .banned(&user, now + Duration::from_secs(3700))
            .is_none());
        assert!(again
            .banned(&[BanKey::Ip([192, 0, 2, 9].into())], now)
            .is_none());

        // Read two hours later, the hour's ban has run out while the broker was down.
        let bytes = std::fs::read(&path).unwrap();
        let later = crate::clock::now_ms() + 7_200_000;
        let restored = restore("bans.json", &bytes, Instant::now(), later).unwrap();
        assert_eq!(restored, vec![(BanKey::ClientId("forever".into()), None)]);

        std::fs::write(
            &path,
            r#"{"bans": [{"kind": "ip", "value": "x", "until_unix_ms": null}]}"#,
        )
        .unwrap();
        let e = Bans::new(policy()).keep_in(path).unwrap_err().to_string();
        assert!(e.contains("bans.json") && e.contains("not a ban"), "{e}");
    }

    #[test]
    fn the_bans_file_names_exactly_one_key_per_ban() {
        let dir = std::env::temp_dir().join(format!("bans-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "[[ban]]\nip = \"192.0.2.7\"\n[[ban]]\nclientid = \"x\"\nreason = \"abuse\"\n",
        )
        .unwrap();
        assert_eq!(load_bans_file(&good).unwrap().len(), 2);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[[ban]]\nip = \"192.0.2.7\"\nusername = \"u\"\n").unwrap();
        let e = load_bans_file(&bad).unwrap_err().to_string();
        assert!(e.contains("exactly one"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
