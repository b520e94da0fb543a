//! Per-user limits: how many connections one user may hold, and how many
//! messages they may send per second over all of them. With Redis and
//! scope `cluster`, both count every node of the cluster
//! (`dispatcher::redis_bus::users` keeps the shares); otherwise this node.
//!
//! Connections are counted here first (a cheap refusal that needs no
//! Redis: this node's share can never exceed the cluster's total), then in
//! the cluster. Sends are counted per fixed [`WINDOW`] in a map of the
//! users who sent in it; with the cluster, a task adds this node's counts
//! to Redis every [`SYNC`] and reads back the totals, so a user over the
//! rate is refused on every node within one sync. Redis unreachable: the
//! cluster counts are skipped (logged) and this node's still hold; the
//! limits err towards letting users in, not locking them out.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dispatcher::redis_bus::UserCounts;
use parking_lot::Mutex;

use super::{Counts, Refusal};

/// Sends are counted in fixed windows this long.
pub const WINDOW: Duration = Duration::from_secs(10);

/// How often this node's send counts are added to the cluster's.
pub const SYNC: Duration = Duration::from_millis(250);

/// Hashes user ids: the cluster's keyed hash (the same on every node), or
/// a random key of this node's.
enum UserHasher {
    Cluster(Arc<UserCounts>),
    Node(std::collections::hash_map::RandomState),
}

pub struct UserLimits {
    hasher: UserHasher,
    /// Connection cap.
    limit: u32,
    /// This node's connections per user (`None`: no cap).
    local: Option<Counts<u64>>,
    /// Counts the cap over the cluster too.
    cluster: Option<Arc<UserCounts>>,
    sends: Option<Sends>,
}

impl UserLimits {
    /// `cluster`: the cluster's per-user counts, when the limits count
    /// over it. Starts the send sync when both it and a send rate are set.
    pub fn new(max_connections: u32, send_rate: f64, cluster: Option<Arc<UserCounts>>) -> Arc<UserLimits> {
        let per_window = (send_rate * WINDOW.as_secs_f64()).ceil() as u64;
        let limits = Arc::new(UserLimits {
            hasher: match &cluster {
                Some(c) => UserHasher::Cluster(c.clone()),
                None => UserHasher::Node(Default::default()),
            },
            limit: max_connections,
            local: Counts::new(max_connections),
            cluster: cluster.clone().filter(|_| max_connections > 0),
            sends: (per_window > 0).then(|| Sends {
                per_window,
                state: Mutex::new(SendWindow::default()),
            }),
        });
        if let (Some(cluster), Some(_)) = (cluster, &limits.sends) {
            tokio::spawn(sync_sends(Arc::downgrade(&limits), cluster));
        }
        limits
    }

    /// Whether any per-user limit is on (else no slot is needed).
    fn any(&self) -> bool {
        self.local.is_some() || self.sends.is_some()
    }

    fn key(&self, user: &str) -> u64 {
        match &self.hasher {
            UserHasher::Cluster(c) => c.user_hash(user),
            UserHasher::Node(h) => h.hash_one(user),
        }
    }

    /// Admits one more connection of `user`, or [`Refusal::UserCap`].
    /// `None`: no per-user limit is on.
    pub async fn admit(self: &Arc<Self>, user: &str) -> Result<Option<UserSlot>, Refusal> {
        if !self.any() {
            return Ok(None);
        }
        let key = self.key(user);
        let mut slot = UserSlot {
            limits: self.clone(),
            key,
            local: false,
            cluster: false,
        };
        if let Some(local) = &self.local {
            if !local.take(&key) {
                return Err(Refusal::UserCap);
            }
            slot.local = true;
        }
        if let Some(cluster) = &self.cluster {
            // Boxed: the connection's future keeps only a pointer to it.
            match Box::pin(cluster.take(key, self.limit)).await {
                Ok(true) => slot.cluster = true,
                Ok(false) => return Err(Refusal::UserCap),
                Err(e) => tracing::debug!(error = %e, "per-user count over the cluster skipped"),
            }
        }
        Ok(Some(slot))
    }
}

/// One authenticated connection's place in its user's counts; dropping it
/// gives the places back.
pub struct UserSlot {
    limits: Arc<UserLimits>,
    key: u64,
    local: bool,
    cluster: bool,
}

impl UserSlot {
    /// Whether this slot is `user`'s (a repeated `auth` of the same user
    /// keeps its place instead of taking a second one).
    pub fn is_for(&self, user: &str) -> bool {
        self.limits.key(user) == self.key
    }

    /// Charges one message to the user's rate: `false` when they are over
    /// it (on this node, or over the cluster as last synced).
    pub fn send_ok(&self) -> bool {
        match &self.limits.sends {
            Some(sends) => sends.take(self.key),
            None => true,
        }
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        if self.local
            && let Some(local) = &self.limits.local
        {
            local.release(&self.key);
        }
        if self.cluster
            && let Some(cluster) = &self.limits.cluster
        {
            cluster.give_back(self.key);
        }
    }
}

struct Sends {
    per_window: u64,
    state: Mutex<SendWindow>,
}

/// The users who sent in the current window.
#[derive(Default)]
struct SendWindow {
    number: u64,
    users: HashMap<u64, Share>,
}

#[derive(Default, Clone, Copy)]
struct Share {
    /// The cluster's total as last read (including what this node added).
    synced: u64,
    /// Sent here since the last sync.
    unsynced: u32,
}

fn window_number() -> u64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    secs / WINDOW.as_secs()
}

impl Sends {
    fn take(&self, user: u64) -> bool {
        let now = window_number();
        let mut w = self.state.lock();
        if w.number != now {
            w.number = now;
            w.users.clear();
        }
        let share = w.users.entry(user).or_default();
        if share.synced + u64::from(share.unsynced) >= self.per_window {
            return false;
        }
        share.unsynced += 1;
        true
    }

    /// This window's unsynced counts, now counted as synced-in-flight.
    fn drain(&self) -> (u64, Vec<(u64, u32)>) {
        let mut w = self.state.lock();
        let counts = w
            .users
            .iter_mut()
            .filter(|(_, s)| s.unsynced > 0)
            .map(|(user, s)| {
                let n = std::mem::take(&mut s.unsynced);
                // Until Redis answers, what was sent here still counts.
                s.synced += u64::from(n);
                (*user, n)
            })
            .collect();
        (w.number, counts)
    }

    fn synced(&self, number: u64, counts: &[(u64, u32)], totals: &[u64]) {
        let mut w = self.state.lock();
        if w.number != number {
            return;
        }
        for ((user, _), &total) in counts.iter().zip(totals) {
            if let Some(s) = w.users.get_mut(user) {
                s.synced = s.synced.max(total);
            }
        }
    }
}

/// Adds this node's send counts to the cluster's every [`SYNC`], while the
/// limits are in use.
async fn sync_sends(limits: Weak<UserLimits>, cluster: Arc<UserCounts>) {
    let mut tick = tokio::time::interval(SYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(limits) = limits.upgrade() else { return };
        let Some(sends) = &limits.sends else { return };
        let (number, counts) = sends.drain();
        if counts.is_empty() {
            continue;
        }
        match cluster.add_sends(number, WINDOW, &counts).await {
            Ok(totals) => sends.synced(number, &counts, &totals),
            Err(e) => tracing::debug!(error = %e, "per-user send counts over the cluster skipped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_are_refused_past_the_window_budget_and_synced_totals_count() {
        let s = Sends {
            per_window: 5,
            state: Mutex::new(SendWindow::default()),
        };
        assert!((0..5).all(|_| s.take(1)), "five fit");
        assert!(!s.take(1), "the sixth does not");
        assert!(s.take(2), "another user has a budget of their own");
        let (number, counts) = s.drain();
        assert_eq!(counts.len(), 2);
        assert!(!s.take(1), "sent but not yet synced still counts");
        // The cluster says user 2 sent 5 in all (4 on other nodes).
        let totals = vec![5; counts.len()];
        s.synced(number, &counts, &totals);
        assert!(!s.take(2), "over the cluster's total");
    }
}
