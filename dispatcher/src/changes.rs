//! (1.1) Whether an edit, deletion or reaction may be stored, judged
//! against its target message's current state: the rules of PROTOCOL.md
//! in one place, for every bus.
//!
//! - `edit`: the author only; `delete`: the author or a moderator of the
//!   room; neither on a deleted or missing message (`not_found`).
//! - `react`: a key the user holds already changes nothing; a 21st
//!   distinct key is refused. `unreact` of a key not held changes nothing.
//!
//! [`Target`] is what a bus knows of one message while it checks a batch:
//! checks that pass are applied to it, so two events on one message in the
//! same batch are judged in order.

use std::collections::{BTreeMap, HashMap};

use protocol::event::MAX_REACTION_KEYS;
use storage::{ChangeKind, HistoryStore, StoredMessage};

use crate::BusError;

/// Sets `me` on the reactions `user` holds in a page (ascending), as the
/// store has them: one read of the user's reactions over the page's id
/// range, when the page has any reactions. Without a store, nothing.
pub async fn mark_mine(
    store: Option<&dyn HistoryStore>,
    room: &str,
    user: &str,
    page: &mut [StoredMessage],
) -> Result<(), BusError> {
    let (Some(store), Some(first), Some(last)) = (store, page.first(), page.last()) else {
        return Ok(());
    };
    if page.iter().all(|m| m.state.reactions.is_empty()) {
        return Ok(());
    }
    for (msg, key) in store.reactions_by(room, user, first.id, last.id).await? {
        if let Ok(i) = page.binary_search_by_key(&msg, |m| m.id)
            && let Some(r) = page[i].state.reactions.iter_mut().find(|r| r.key == key)
        {
            r.me = true;
        }
    }
    Ok(())
}

/// Why an event is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such message, or it is deleted.
    NotFound,
    /// Not the author (nor, for `delete`, a moderator).
    NotAllowed,
    /// The message has as many distinct reaction keys as it may.
    TooManyKeys,
    /// A reaction held already, or an unreaction of one not held: nothing
    /// to store (answered `ok` without an id).
    Unchanged,
}

/// One target message as a batch of events sees it.
#[derive(Debug, Clone)]
pub struct Target {
    from: String,
    deleted: bool,
    /// Users per reaction key.
    counts: BTreeMap<String, u32>,
    /// Whether (user, key) is held, as far as loaded or changed.
    held: HashMap<(String, String), bool>,
}

impl Target {
    /// The message as a store (or window) has it, in its current state.
    pub fn new(m: &StoredMessage) -> Target {
        Target {
            from: m.from.clone(),
            deleted: m.state.deleted,
            counts: m.state.reactions.iter().map(|r| (r.key.clone(), r.count)).collect(),
            held: HashMap::new(),
        }
    }

    /// Whether this (user, key) is already known; else load it with
    /// [`Target::set_held`] before [`Target::check`].
    pub fn knows(&self, user: &str, key: &str) -> bool {
        self.held.contains_key(&(user.to_owned(), key.to_owned()))
    }

    pub fn set_held(&mut self, user: &str, key: &str, held: bool) {
        self.held.insert((user.to_owned(), key.to_owned()), held);
    }

    /// Judges `kind` by `user` (`moderator`: may delete others' messages)
    /// and, when allowed, applies it here. For reactions the holder must be
    /// known ([`Target::knows`]); an unknown one counts as not held.
    pub fn check(&mut self, kind: &ChangeKind, user: &str, moderator: bool) -> Result<(), Refusal> {
        if self.deleted {
            return Err(Refusal::NotFound);
        }
        match kind {
            ChangeKind::Edit if user != self.from => Err(Refusal::NotAllowed),
            ChangeKind::Edit => Ok(()),
            ChangeKind::Delete if user != self.from && !moderator => Err(Refusal::NotAllowed),
            ChangeKind::Delete => {
                self.deleted = true;
                Ok(())
            }
            ChangeKind::React(key) | ChangeKind::Unreact(key) => {
                let slot = (user.to_owned(), key.clone());
                let held = self.held.get(&slot).copied().unwrap_or(false);
                let react = matches!(kind, ChangeKind::React(_));
                if react == held {
                    return Err(Refusal::Unchanged);
                }
                if react && !self.counts.contains_key(key) && self.counts.len() >= MAX_REACTION_KEYS {
                    return Err(Refusal::TooManyKeys);
                }
                let count = self.counts.entry(key.clone()).or_default();
                if react {
                    *count += 1;
                } else {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        self.counts.remove(key);
                    }
                }
                self.held.insert(slot, react);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(from: &str) -> Target {
        Target::new(&StoredMessage::new("r", 1, from, 0, "1"))
    }

    #[test]
    fn edit_and_delete_rights() {
        let mut t = target("ann");
        assert_eq!(t.check(&ChangeKind::Edit, "bob", false), Err(Refusal::NotAllowed));
        assert_eq!(
            t.check(&ChangeKind::Edit, "bob", true),
            Err(Refusal::NotAllowed),
            "moderators delete, not edit"
        );
        assert_eq!(t.check(&ChangeKind::Edit, "ann", false), Ok(()));
        assert_eq!(t.check(&ChangeKind::Delete, "bob", false), Err(Refusal::NotAllowed));
        assert_eq!(t.check(&ChangeKind::Delete, "bob", true), Ok(()));
        assert_eq!(
            t.check(&ChangeKind::Edit, "ann", false),
            Err(Refusal::NotFound),
            "deleted"
        );
        assert_eq!(t.check(&ChangeKind::Delete, "ann", false), Err(Refusal::NotFound));
        assert_eq!(
            t.check(&ChangeKind::React("x".into()), "ann", false),
            Err(Refusal::NotFound)
        );
    }

    #[test]
    fn reactions_once_per_user_and_at_most_twenty_keys() {
        let mut t = target("ann");
        let react = |k: &str| ChangeKind::React(k.into());
        assert_eq!(t.check(&react("a"), "bob", false), Ok(()));
        assert_eq!(t.check(&react("a"), "bob", false), Err(Refusal::Unchanged));
        assert_eq!(
            t.check(&ChangeKind::Unreact("a".into()), "cat", false),
            Err(Refusal::Unchanged)
        );
        for i in 1..MAX_REACTION_KEYS {
            assert_eq!(t.check(&react(&format!("k{i}")), "bob", false), Ok(()));
        }
        assert_eq!(t.check(&react("one-too-many"), "bob", false), Err(Refusal::TooManyKeys));
        assert_eq!(t.check(&react("a"), "cat", false), Ok(()), "an existing key is fine");
        assert_eq!(t.check(&ChangeKind::Unreact("k1".into()), "bob", false), Ok(()));
        assert_eq!(t.check(&react("now-fits"), "bob", false), Ok(()));
    }
}
