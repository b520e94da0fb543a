//! (1.1) Room events that change an earlier message (`edit`, `delete`,
//! `react`, `unreact`) and the state they fold into (what `history` shows).
//!
//! Shared by the stores (which keep the events and the folded state), the
//! bus (which orders them among the messages) and the encoder. An event is
//! an entry of the room like a message: its own id in the room's order.

/// What an event does to its target message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A new body (the entry's `body`).
    Edit,
    Delete,
    React(String),
    Unreact(String),
}

impl ChangeKind {
    /// The op of its request and its event.
    pub fn op(&self) -> &'static str {
        match self {
            ChangeKind::Edit => "edit",
            ChangeKind::Delete => "delete",
            ChangeKind::React(_) => "react",
            ChangeKind::Unreact(_) => "unreact",
        }
    }

    /// The reaction key of `react`/`unreact`.
    pub fn key(&self) -> Option<&str> {
        match self {
            ChangeKind::React(k) | ChangeKind::Unreact(k) => Some(k),
            _ => None,
        }
    }
}

/// A room entry that is an event: which message it changes, and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Change {
    pub target: u64,
    pub kind: ChangeKind,
}

/// One reaction key on a message: how many users hold it, and whether the
/// reader is one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    pub key: String,
    pub count: u32,
    pub me: bool,
}

/// A message's current state after its events, as `history` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageState {
    /// When it was last edited (the body is then the latest one).
    pub edited: Option<u64>,
    /// Deleted: shown as a tombstone, without body or reactions.
    pub deleted: bool,
    /// Ordered by key (as the stores keep them).
    pub reactions: Vec<Reaction>,
}

impl MessageState {
    pub fn is_plain(&self) -> bool {
        self.edited.is_none() && !self.deleted && self.reactions.is_empty()
    }

    /// Applies one event made at `ts` (the caller has checked it is allowed
    /// and, for reactions, that it changes something; an edit's new body
    /// is the caller's to keep).
    pub fn apply(&mut self, kind: &ChangeKind, ts: u64) {
        match kind {
            ChangeKind::Edit => self.edited = Some(ts),
            ChangeKind::Delete => {
                self.deleted = true;
                self.reactions.clear();
            }
            ChangeKind::React(key) => match self.reactions.binary_search_by(|r| r.key.as_str().cmp(key)) {
                Ok(i) => self.reactions[i].count += 1,
                Err(i) => self.reactions.insert(
                    i,
                    Reaction {
                        key: key.clone(),
                        count: 1,
                        me: false,
                    },
                ),
            },
            ChangeKind::Unreact(key) => {
                if let Ok(i) = self.reactions.binary_search_by(|r| r.key.as_str().cmp(key)) {
                    self.reactions[i].count = self.reactions[i].count.saturating_sub(1);
                    if self.reactions[i].count == 0 {
                        self.reactions.remove(i);
                    }
                }
            }
        }
    }
}

/// Most distinct reaction keys on one message.
pub const MAX_REACTION_KEYS: usize = 20;
/// Longest reaction key, in bytes.
pub const MAX_REACTION_KEY_LEN: usize = 32;

/// 1 to 32 bytes of text without control characters.
pub fn is_valid_reaction_key(key: &str) -> bool {
    (1..=MAX_REACTION_KEY_LEN).contains(&key.len()) && !key.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_count_and_vanish_at_zero() {
        let mut s = MessageState::default();
        s.apply(&ChangeKind::React("👍".into()), 1);
        s.apply(&ChangeKind::React("👍".into()), 2);
        s.apply(&ChangeKind::React("x".into()), 3);
        assert_eq!(
            s.reactions
                .iter()
                .map(|r| (r.key.as_str(), r.count))
                .collect::<Vec<_>>(),
            vec![("x", 1), ("👍", 2)]
        );
        s.apply(&ChangeKind::Unreact("x".into()), 4);
        s.apply(&ChangeKind::Unreact("👍".into()), 5);
        assert_eq!(s.reactions.len(), 1);
        s.apply(&ChangeKind::Edit, 6);
        assert_eq!(s.edited, Some(6));
        s.apply(&ChangeKind::Delete, 7);
        assert!(s.deleted && s.reactions.is_empty());
    }

    #[test]
    fn reaction_keys() {
        assert!(is_valid_reaction_key("👍"));
        assert!(is_valid_reaction_key(&"a".repeat(32)));
        assert!(!is_valid_reaction_key(&"a".repeat(33)));
        assert!(!is_valid_reaction_key(""));
        assert!(!is_valid_reaction_key("a\nb"));
    }
}
