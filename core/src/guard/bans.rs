//! Who is refused at the door: bans by client id, user name or IP address, either listed in
//! `[limits] bans_file` (read at start and on SIGHUP; no expiry) or set by flapping detection
//! (a client id, user name or IP that ended more than `flapping_max_connects` connections within
//! `flapping_window_s` is banned for `flapping_ban_s`).

use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
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
        }
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

    /// An operator's ban of `key`, until `until` or for good.
    pub fn add(&self, key: BanKey, until: Option<Instant>) {
        self.state.lock().manual.insert(key, until);
    }

    /// Lifts an operator's or a flapping ban of `key`; a listed one stays (it is the bans
    /// file's). Returns whether one was lifted.
    pub fn remove(&self, key: &BanKey) -> bool {
        let mut st = self.state.lock();
        let manual = st.manual.remove(key).is_some();
        st.flapping.remove(key).is_some() || manual
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
