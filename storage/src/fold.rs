//! What storing one new event does to its target, how a message is shown
//! in its state, how replay merges messages with events, and which read
//! markers `receipts` lists: the same for every store, so the stores
//! differ only in where they read and write.

use crate::{Change, ChangeKind, MessageState, StoredMessage};

/// A target's state after a new event.
pub(crate) struct Folded {
    pub(crate) state: MessageState,
    /// The latest body when edited.
    pub(crate) body: Option<String>,
    /// For a reaction: whether its holder row is now there (written when
    /// `Some`).
    pub(crate) holder: Option<bool>,
}

/// Folds event `m` (with `change`) into its target's current `state` and
/// `body`. `held`: whether `m.from` holds the reaction key (read by the
/// caller for `react`/`unreact`). `None` when nothing changes: the target
/// is deleted, or the reaction is held already (or not held, to unreact).
pub(crate) fn fold(
    mut state: MessageState,
    mut body: Option<String>,
    m: &StoredMessage,
    change: &Change,
    held: bool,
) -> Option<Folded> {
    if state.deleted {
        return None;
    }
    let holder = match &change.kind {
        ChangeKind::Edit => {
            body = Some(m.body.clone());
            None
        }
        ChangeKind::Delete => {
            body = None;
            None
        }
        ChangeKind::React(_) if !held => Some(true),
        ChangeKind::Unreact(_) if held => Some(false),
        ChangeKind::React(_) | ChangeKind::Unreact(_) => return None,
    };
    state.apply(&change.kind, m.ts);
    Some(Folded { state, body, holder })
}

/// Shows a message in its folded state: the latest body when edited, none
/// when deleted.
pub(crate) fn show(m: &mut StoredMessage, state: MessageState, body: Option<String>) {
    if state.deleted {
        m.body.clear();
    } else if let Some(b) = body {
        m.body = b;
    }
    m.state = state;
}

/// Replay's entries: `messages` (in their current state) and `events`,
/// each the first `limit` after one id; the first `limit` of both, in id
/// order, with the messages' reactions left to the react events.
pub(crate) fn merge_entries(
    mut messages: Vec<StoredMessage>,
    events: Vec<StoredMessage>,
    limit: usize,
) -> Vec<StoredMessage> {
    for m in &mut messages {
        m.state.reactions.clear();
    }
    messages.extend(events);
    messages.sort_by_key(|m| m.id);
    messages.truncate(limit);
    messages
}

/// The `limit` most recently moved read markers, from (user, message,
/// moved at ms): (user, message), the latest first.
pub fn most_recent_markers(mut markers: Vec<(String, u64, u64)>, limit: usize) -> Vec<(String, u64)> {
    markers.sort_by_key(|m| std::cmp::Reverse(m.2));
    markers.truncate(limit);
    markers.into_iter().map(|(user, msg, _)| (user, msg)).collect()
}
