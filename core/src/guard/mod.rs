//! What protects the broker from its clients as a crowd, beyond one connection's own limits
//! (those live with the connection and its session):
//!
//! - this module: [`Guard`], the door: bans, connections per source address, overload;
//! - [`bans`]: bans from the bans file and from flapping detection;
//! - [`rate`]: the token bucket behind connection and publish rates;
//! - [`overload`]: the monitor that flips the broker into overload and back.

pub mod bans;
pub mod overload;
pub mod rate;

use crate::config::LimitsConfig;
use crate::metrics::{Limit, Metrics};
use bans::{BanKey, Bans, FlappingPolicy};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::warn;

pub struct Guard {
    pub limits: LimitsConfig,
    pub bans: Bans,
    /// Open connections per source address (only when `max_connections_per_ip` is set).
    per_ip: Arc<Mutex<HashMap<IpAddr, u32>>>,
    /// Set by the overload monitor: new connections are refused and QoS 0 is shed.
    overloaded: AtomicBool,
    overload_reason: Mutex<Option<String>>,
}

/// Why a socket or a CONNECT is refused at the door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Banned(BanKey),
    TooManyFromAddress,
    Overloaded,
}

/// Holds one of an address's connection slots; gives it back when dropped.
pub struct IpSlot {
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.per_ip.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Guard {
    pub fn new(limits: LimitsConfig) -> Self {
        let policy = FlappingPolicy {
            client_max: limits.flapping_max_connects,
            user_max: limits.flapping_max_connects_per_user,
            ip_max: limits.flapping_max_connects_per_ip,
            window: Duration::from_secs(limits.flapping_window_s),
            ban: Duration::from_secs(limits.flapping_ban_s),
        };
        Self {
            limits,
            bans: Bans::new(policy),
            per_ip: Arc::default(),
            overloaded: AtomicBool::new(false),
            overload_reason: Mutex::new(None),
        }
    }

    pub fn is_overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// Why the broker is overloaded, for `/health`.
    pub fn overload_reason(&self) -> Option<String> {
        self.overload_reason.lock().clone()
    }

    pub(crate) fn set_overload_reason(&self, reason: Option<String>) {
        self.overloaded.store(reason.is_some(), Ordering::Relaxed);
        *self.overload_reason.lock() = reason;
    }

    /// A new socket from `ip`: refused when overloaded, banned, or its address has
    /// `max_connections_per_ip` open already. The slot is held for the connection's life.
    pub fn admit_socket(&self, ip: IpAddr, metrics: &Metrics) -> Result<Option<IpSlot>, Refusal> {
        if self.is_overloaded() {
            metrics.limit_hit(Limit::Overload);
            return Err(Refusal::Overloaded);
        }
        if self.bans.any() {
            let key = [BanKey::Ip(ip)];
            if let Some(k) = self.bans.banned(&key, Instant::now()) {
                metrics.limit_hit(Limit::Banned);
                return Err(Refusal::Banned(k.clone()));
            }
        }
        let max = self.limits.max_connections_per_ip;
        if max == 0 {
            return Ok(None);
        }
        let mut map = self.per_ip.lock();
        let n = map.entry(ip).or_insert(0);
        if *n as usize >= max {
            drop(map);
            metrics.limit_hit(Limit::IpConnections);
            return Err(Refusal::TooManyFromAddress);
        }
        *n += 1;
        Ok(Some(IpSlot {
            ip,
            per_ip: self.per_ip.clone(),
        }))
    }

    /// A CONNECT's client id and user name against the bans (the address was checked at
    /// accept; a ban added since is checked again here).
    pub fn admit_client(
        &self,
        client_id: &str,
        user: Option<&str>,
        ip: IpAddr,
        metrics: &Metrics,
    ) -> Result<(), Refusal> {
        if !self.bans.any() {
            return Ok(());
        }
        let mut keys = vec![BanKey::ClientId(client_id.to_string()), BanKey::Ip(ip)];
        if let Some(u) = user {
            keys.push(BanKey::User(u.to_string()));
        }
        match self.bans.banned(&keys, Instant::now()) {
            Some(k) => {
                metrics.limit_hit(Limit::Banned);
                Err(Refusal::Banned(k.clone()))
            }
            None => Ok(()),
        }
    }

    /// An admitted client's connection ended: flapping detection counts it.
    pub fn connection_ended(&self, client_id: &str, user: Option<&str>, ip: IpAddr) {
        let l = &self.limits;
        if l.flapping_max_connects == 0
            && l.flapping_max_connects_per_user == 0
            && l.flapping_max_connects_per_ip == 0
        {
            return;
        }
        let mut keys = vec![BanKey::ClientId(client_id.to_string()), BanKey::Ip(ip)];
        if let Some(u) = user {
            keys.push(BanKey::User(u.to_string()));
        }
        for key in self.bans.connection_ended(keys, Instant::now()) {
            warn!(banned = %key, ban_s = l.flapping_ban_s, window_s = l.flapping_window_s, "flapping: connected and dropped too often; banned");
        }
    }
}
