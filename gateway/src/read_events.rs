//! (1.1) `read` events, coalesced: a node publishes at most one per user
//! and room per second. A marker that moves again within the second is
//! kept (the latest) and published by [`flush`] once the second is over,
//! so the last position always goes out. Node-wide state, one entry per
//! (room, user) that moved in the last seconds: no timer per connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dispatcher::EventKind;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::Node;

/// The least time between two `read` events of one user in one room.
pub const EVERY: Duration = Duration::from_secs(1);

/// (room, user).
type Key = (Arc<str>, Arc<str>);

#[derive(Default)]
pub struct ReadEvents {
    slots: Mutex<HashMap<Key, Slot>>,
}

struct Slot {
    sent_at: Instant,
    /// A newer marker waiting for its second.
    pending: Option<u64>,
}

impl ReadEvents {
    /// `user`'s marker in `room` moved to `msg`: the id to publish now, or
    /// `None` when one went out less than a second ago (then it waits).
    pub fn offer(&self, room: &Arc<str>, user: &Arc<str>, msg: u64, now: Instant) -> Option<u64> {
        let mut slots = self.slots.lock();
        match slots.get_mut(&(room.clone(), user.clone())) {
            Some(slot) if now < slot.sent_at + EVERY => {
                slot.pending = Some(slot.pending.map_or(msg, |p| p.max(msg)));
                None
            }
            _ => {
                slots.insert(
                    (room.clone(), user.clone()),
                    Slot {
                        sent_at: now,
                        pending: None,
                    },
                );
                Some(msg)
            }
        }
    }

    /// The waiting markers whose second is over (now counted as sent), and
    /// forgets entries with nothing waiting that are past their second.
    fn due(&self, now: Instant) -> Vec<(Arc<str>, Arc<str>, u64)> {
        let mut out = Vec::new();
        self.slots.lock().retain(|(room, user), slot| {
            if now < slot.sent_at + EVERY {
                return true;
            }
            match slot.pending.take() {
                Some(msg) => {
                    out.push((room.clone(), user.clone(), msg));
                    slot.sent_at = now;
                    true
                }
                None => false,
            }
        });
        out
    }
}

/// Publishes waiting `read` events every quarter second until shutdown.
pub async fn flush(node: Arc<Node>) {
    let mut tick = tokio::time::interval(EVERY / 4);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.shutdown.cancelled() => return,
        }
        for (room, user, msg) in node.read_events.due(Instant::now()) {
            if let Err(e) = node.bus.publish_event(room, EventKind::Read { msg }, user, None).await {
                tracing::debug!(error = %e, "read event not published");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_a_second_and_the_last_one_goes_out() {
        let r = ReadEvents::default();
        let (room, user): (Arc<str>, Arc<str>) = ("r".into(), "u".into());
        let t0 = Instant::now();
        assert_eq!(r.offer(&room, &user, 5, t0), Some(5));
        assert_eq!(r.offer(&room, &user, 7, t0 + Duration::from_millis(100)), None);
        assert_eq!(r.offer(&room, &user, 6, t0 + Duration::from_millis(200)), None);
        assert!(r.due(t0 + Duration::from_millis(500)).is_empty(), "within the second");
        let due = r.due(t0 + Duration::from_millis(1000));
        assert_eq!(due, vec![(room.clone(), user.clone(), 7)], "the latest marker");
        // Counted as sent then: the next one waits again.
        assert_eq!(r.offer(&room, &user, 9, t0 + Duration::from_millis(1500)), None);
        assert_eq!(r.due(t0 + Duration::from_millis(2000)).len(), 1);
        // Idle entries are forgotten.
        assert!(r.due(t0 + Duration::from_millis(3100)).is_empty());
        assert!(r.slots.lock().is_empty());
        // Another user is not held back.
        assert_eq!(r.offer(&room, &"v".into(), 1, t0), Some(1));
    }
}
