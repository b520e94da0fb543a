//! (1.1) Operator actions on this node's connections: which connections
//! each user has ([`UserConns`], registered when a connection takes an
//! identity), and the actions the bus hands the node
//! ([`dispatcher::Control`]: kick, disconnect, revoke), queued on each of
//! the user's connections for its own task to carry out (see
//! `conn::ops::control`), as it carries out everything else it does.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use dispatcher::Control;
use parking_lot::Mutex;

use crate::hub::ConnHandle;

const STRIPES: usize = 16;

/// One stripe: users hashed to it, each with their connections.
type Stripe = Mutex<HashMap<Arc<str>, Vec<Arc<ConnHandle>>>>;

/// The connections of each user on this node.
pub struct UserConns {
    stripes: Vec<Stripe>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for UserConns {
    fn default() -> Self {
        UserConns {
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }
}

impl UserConns {
    fn stripe(&self, user: &str) -> &Stripe {
        &self.stripes[(self.hasher.hash_one(user) % STRIPES as u64) as usize]
    }

    /// The connection now belongs to `user` (once, when it authenticates).
    pub fn add(&self, user: &Arc<str>, conn: &Arc<ConnHandle>) {
        self.stripe(user)
            .lock()
            .entry(user.clone())
            .or_default()
            .push(conn.clone());
    }

    /// The connection of `user` ended.
    pub fn remove(&self, user: &str, conn_id: u64) {
        let mut map = self.stripe(user).lock();
        if let Some(conns) = map.get_mut(user) {
            conns.retain(|c| c.id != conn_id);
            if conns.is_empty() {
                map.remove(user);
            }
        }
    }

    /// How many connections `user` has here.
    pub fn count(&self, user: &str) -> usize {
        self.stripe(user).lock().get(user).map_or(0, Vec::len)
    }

    /// Queues `action` on every connection of its user here; how many.
    pub fn apply(&self, action: &Control) -> usize {
        let conns: Vec<Arc<ConnHandle>> = self
            .stripe(action.user())
            .lock()
            .get(action.user().as_ref())
            .cloned()
            .unwrap_or_default();
        for c in &conns {
            c.command(action.clone());
        }
        crate::metrics::operator_action(action.kind(), conns.len());
        conns.len()
    }
}
