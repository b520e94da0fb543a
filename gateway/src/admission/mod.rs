//! Admission control: which WebSocket upgrades a node takes, and which
//! authenticated users it keeps. At the upgrade ([`Admission::admit`]),
//! in this order: the `Origin` allow-list (403), the memory budget, the
//! node's connection cap, the client IP's cap (each 503 with
//! `Retry-After`); after authentication, the user's cap
//! ([`Admission::admit_user`], `rate_limited` and close 4029). A [`Slot`]
//! counts a connection from its upgrade until its task ends, a
//! [`UserSlot`] from its authentication until then: both are guards, so
//! every way a connection ends gives the place back.
//!
//! - `client_ip`: who the client is (the peer, or a trusted proxy's header).
//! - `origin`: the `Origin` policy.
//! - `memory`: the process's resident memory against the budget.
//! - `ip_rate`: new connections per second per client address.
//! - `users`: the per-user connection cap and send rate, over the cluster
//!   (through Redis) or this node.

mod client_ip;
mod ip_rate;
mod memory;
mod origin;
mod users;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, header};
use parking_lot::Mutex;

pub use self::client_ip::{Cidr, ClientIp};
pub(crate) use self::memory::page_size;
pub use self::origin::Origins;
use self::users::UserLimits;
pub use self::users::UserSlot;
use crate::config::{Settings, UserLimitScope};
use dispatcher::redis_bus::UserCounts;

/// File descriptors kept out of the derived node cap, for what is not a
/// WebSocket: HTTP requests and probes, handshakes in flight, the store,
/// Redis, the CQL driver. At least this many, or a tenth of the limit.
const FD_MARGIN: u64 = 256;

/// Node cap when the open-file limit is unlimited or unreadable.
const FALLBACK_MAX_CONNECTIONS: usize = 100_000;

/// A bad admission setting.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("{0:?} is not an IP address or CIDR (e.g. 10.0.0.0/8, fd00::/8)")]
    BadProxy(String),
    #[error("{0:?} is not an HTTP header name")]
    BadHeader(String),
    #[error("{0} would never be read: set trusted_proxies, the proxies whose {0} is believed")]
    HeaderWithoutProxies(String),
    #[error("trusted proxies are set but client_ip_header is not: name the header they write (e.g. X-Forwarded-For)")]
    ProxiesWithoutHeader,
    #[error("{0:?} is not an origin: give scheme://host[:port] values, or * alone")]
    BadOrigin(String),
}

impl AdmissionError {
    /// The setting at fault, as `Config::validate` names it.
    pub fn setting(&self) -> &'static str {
        match self {
            AdmissionError::BadProxy(_) | AdmissionError::ProxiesWithoutHeader => "trusted_proxies",
            AdmissionError::BadHeader(_) | AdmissionError::HeaderWithoutProxies(_) => "client_ip_header",
            AdmissionError::BadOrigin(_) => "allowed_origins",
        }
    }
}

/// The parsed admission settings, checked by `Config::validate`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub client_ip: ClientIp,
    pub origins: Origins,
}

impl Policy {
    pub fn parse(
        trusted_proxies: &[String],
        client_ip_header: Option<&str>,
        allowed_origins: Option<&[String]>,
        anonymous: bool,
    ) -> Result<Policy, AdmissionError> {
        Ok(Policy {
            client_ip: ClientIp::parse(trusted_proxies, client_ip_header)?,
            origins: Origins::parse(allowed_origins, anonymous)?,
        })
    }
}

/// Why a connection was refused: the `reason` label of
/// `gateway_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Draining,
    Origin,
    Memory,
    NodeCap,
    IpCap,
    IpRate,
    UserCap,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Draining => "draining",
            Refusal::Origin => "origin",
            Refusal::Memory => "memory",
            Refusal::NodeCap => "node_cap",
            Refusal::IpCap => "ip_cap",
            Refusal::IpRate => "ip_rate",
            Refusal::UserCap => "user_cap",
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Draining => "draining\n",
            Refusal::Origin => "origin not allowed\n",
            Refusal::Memory => "node is short of memory, try again later\n",
            Refusal::NodeCap => "node is at its connection limit, try again later\n",
            Refusal::IpCap => "too many connections from this address\n",
            Refusal::IpRate => "too many new connections from this address, slow down\n",
            Refusal::UserCap => "too many connections for this user",
        }
    }
}

/// Connections per key (client IP, user), up to `limit` each. Keys are
/// removed at zero, so the map holds only keys with live connections.
struct Counts<K> {
    limit: u32,
    held: Mutex<HashMap<K, u32>>,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new(limit: u32) -> Option<Counts<K>> {
        (limit > 0).then(|| Counts {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn take(&self, key: &K) -> bool {
        let mut held = self.held.lock();
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= self.limit {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, key: &K) {
        let mut held = self.held.lock();
        if let Some(n) = held.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                held.remove(key);
            }
        }
    }
}

/// The node's admission state, shared by every upgrade and connection.
pub struct Admission {
    policy: Policy,
    max_connections: usize,
    open: AtomicUsize,
    per_ip: Option<Counts<IpAddr>>,
    ip_rates: Option<ip_rate::IpRates>,
    /// Keyed by a hash of the user id: an entry costs 12 bytes, not a
    /// second reference to the id's text.
    users: Arc<UserLimits>,
    memory: memory::Memory,
}

impl Admission {
    /// The limits of `settings`, defaults resolved (the node cap from the
    /// open-file limit, the memory budget from the cgroup or the machine),
    /// and logged. `cluster`: the cluster's per-user counts (Redis), used
    /// unless the per-user limits are scoped to the node.
    pub fn new(settings: &Settings, cluster: Option<Arc<UserCounts>>) -> Arc<Admission> {
        let c = &settings.config;
        let max_connections = match c.max_connections {
            0 => derived_max_connections(),
            n => n,
        };
        if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE)
            && max_connections as u64 >= soft
        {
            tracing::warn!(
                max_connections,
                open_file_limit = soft,
                "max_connections is not below the open-file limit: accepts will fail before the cap refuses"
            );
        }
        let a = Admission {
            policy: settings.admission.clone(),
            max_connections,
            open: AtomicUsize::new(0),
            per_ip: Counts::new(c.max_connections_per_ip),
            ip_rates: ip_rate::IpRates::new(c.connection_rate_per_ip, c.connection_burst_per_ip),
            users: UserLimits::new(
                c.max_connections_per_user,
                c.user_send_rate,
                cluster.filter(|_| c.user_limit_scope == UserLimitScope::Cluster),
            ),
            memory: memory::Memory::new(c.max_memory),
        };
        tracing::info!(
            max_connections,
            per_ip = c.max_connections_per_ip,
            rate_per_ip = c.connection_rate_per_ip,
            per_user = c.max_connections_per_user,
            user_send_rate = c.user_send_rate,
            user_scope = ?c.user_limit_scope,
            max_memory = a.memory.budget(),
            origins = ?a.policy.origins,
            "admission limits"
        );
        Arc::new(a)
    }

    /// Whether a TCP connection just accepted from `peer` may be served: a
    /// client address over its connection rate is not (a trusted proxy's
    /// clients are counted at the upgrade, by the address it names).
    pub fn accept(&self, peer: IpAddr) -> bool {
        match &self.ip_rates {
            Some(rates) if !self.policy.client_ip.is_trusted(peer.to_canonical()) => rates.take(peer),
            _ => true,
        }
    }

    /// Admits an upgrade from `peer` with these request headers, or says
    /// why not. The slot counts the connection until it is dropped.
    pub fn admit(self: &Arc<Self>, headers: &HeaderMap, peer: IpAddr) -> Result<Slot, Refusal> {
        if !self.policy.origins.allows(headers.get(header::ORIGIN)) {
            return Err(Refusal::Origin);
        }
        if self.memory.over_budget() {
            return Err(Refusal::Memory);
        }
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_connections).then_some(n + 1)
            })
            .map_err(|_| Refusal::NodeCap)?;
        // From here on, dropping the slot gives the node's place back.
        let mut slot = Slot {
            admission: self.clone(),
            ip: None,
        };
        let proxied = self.policy.client_ip.is_trusted(peer.to_canonical());
        if self.per_ip.is_some() || (proxied && self.ip_rates.is_some()) {
            let ip = self.policy.client_ip.resolve(peer, headers);
            if proxied
                && let Some(rates) = &self.ip_rates
                && !rates.take(ip)
            {
                return Err(Refusal::IpRate);
            }
            if let Some(per_ip) = &self.per_ip {
                if !per_ip.take(&ip) {
                    return Err(Refusal::IpCap);
                }
                slot.ip = Some(ip);
            }
        }
        Ok(slot)
    }

    /// Admits one more connection of `user` (on this node or over the
    /// cluster), or [`Refusal::UserCap`]. The slot counts it until it is
    /// dropped; `None` when no per-user limit is on.
    pub async fn admit_user(&self, user: &str) -> Result<Option<UserSlot>, Refusal> {
        self.users.admit(user).await
    }

    /// WebSocket connections admitted and not yet ended.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// The open-file soft limit (which the binary raises to the hard limit
/// at start) less a margin for everything that is not a WebSocket.
fn derived_max_connections() -> usize {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) if soft != rlimit::INFINITY && soft > 2 * FD_MARGIN => {
            (soft - (soft / 10).max(FD_MARGIN)) as usize
        }
        Ok((soft, _)) if soft != rlimit::INFINITY => (soft / 2) as usize,
        _ => FALLBACK_MAX_CONNECTIONS,
    }
}

/// One admitted connection: its place in the node's count and its IP's.
pub struct Slot {
    admission: Arc<Admission>,
    /// Set when counted per IP.
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
        if let (Some(ip), Some(per_ip)) = (&self.ip, &self.admission.per_ip) {
            per_ip.release(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_give_places_back_and_forget_empty_keys() {
        let c: Counts<u8> = Counts::new(2).unwrap();
        assert!(c.take(&1) && c.take(&1) && !c.take(&1));
        assert!(c.take(&2));
        c.release(&1);
        assert!(c.take(&1));
        c.release(&1);
        c.release(&1);
        c.release(&2);
        assert!(c.held.lock().is_empty());
        assert!(Counts::<u8>::new(0).is_none(), "0 is off");
    }

    #[test]
    fn derived_cap_leaves_a_margin() {
        let n = derived_max_connections();
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        assert!(
            n > 0 && (n as u64) < soft.max(FALLBACK_MAX_CONNECTIONS as u64 + 1),
            "{n} of {soft}"
        );
    }
}
