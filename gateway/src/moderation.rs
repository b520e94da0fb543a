//! (1.1) Operator actions on this node's connections: every connection of
//! the node ([`Connections`], a slab the hub fills as connections open),
//! and the actions the bus hands the node ([`dispatcher::Control`]: kick,
//! disconnect, revoke), queued on each connection of the user for its own
//! task to carry out (see `conn::ops::control`), as it carries out
//! everything else it does.
//!
//! Why a scan and not a map from user to connections: the map cost about
//! 200 bytes per idle connection (`benches/idle_memory.sh`); the slab
//! costs 16, and the user's id on the handle fits in the allocator size
//! class the handle had. An action scans the node's connections once
//! (about a millisecond per 100,000), and operators act rarely.

use std::sync::Arc;

use dispatcher::Control;
use parking_lot::Mutex;
use slab::Slab;

use crate::hub::ConnHandle;

/// Every open connection of this node.
#[derive(Default)]
pub struct Connections {
    all: Mutex<Slab<Arc<ConnHandle>>>,
}

impl Connections {
    /// Registers a connection the hub makes; `make` gets its slot.
    pub fn add(&self, make: impl FnOnce(u32) -> ConnHandle) -> Arc<ConnHandle> {
        let mut all = self.all.lock();
        let entry = all.vacant_entry();
        let conn = Arc::new(make(entry.key() as u32));
        entry.insert(conn.clone());
        conn
    }

    /// The connection ended.
    pub fn remove(&self, conn: &ConnHandle) {
        let mut all = self.all.lock();
        let slot = conn.slot as usize;
        if all.get(slot).is_some_and(|c| c.id == conn.id) {
            all.remove(slot);
        }
    }

    /// The connections of `user` here.
    pub fn of_user(&self, user: &str) -> Vec<Arc<ConnHandle>> {
        self.all
            .lock()
            .iter()
            .filter(|(_, c)| c.queue.lock().user.as_deref() == Some(user))
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Queues `action` on every connection of its user here; how many.
    pub fn apply(&self, action: &Control) -> usize {
        let conns = self.of_user(action.user());
        for c in &conns {
            c.command(action.clone());
        }
        crate::metrics::operator_action(action.kind(), conns.len());
        conns.len()
    }
}
