//! The one mapping from a stored message to the protocol's view of it, used
//! wherever a message is encoded: live `msg` events ([`crate::hub`]),
//! `join` replays and `history` replies ([`crate::conn`]), and the HTTP API
//! ([`crate::http`]). Here rather than in `protocol`, which knows nothing of
//! the bus or the store.

use dispatcher::StoredMessage;
use protocol::encode::MsgView;

/// Borrows `m` as a [`MsgView`] for encoding; copies nothing.
#[inline]
pub(crate) fn view(m: &StoredMessage) -> MsgView<'_> {
    MsgView {
        room: &m.room,
        id: m.id,
        from: &m.from,
        ts: m.ts,
        body: &m.body,
        reply_to: m.reply_to,
        change: m.change.as_ref(),
        state: Some(&m.state),
    }
}
