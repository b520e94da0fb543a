//! `history`: a page of a room's stored messages, newest first or around
//! an id, from the bus (which merges the store with the stream window).

use dispatcher::{BusError, Page, StoredMessage};
use protocol::ErrorCode;
use protocol::encode::history_reply;
use protocol::request::HistoryPage;

use crate::Node;
use crate::auth::Identity;
use crate::conn::session::Session;
use crate::view::view;

impl Session {
    pub(super) async fn on_history(
        &mut self,
        id: Option<i64>,
        identity: &Identity,
        room: String,
        page: HistoryPage,
        limit: usize,
    ) {
        if !identity.may_join(&room) {
            return self.error(id, ErrorCode::Forbidden, &format!("not allowed to read room {room}"));
        }
        let page = match page {
            HistoryPage::Newest => Page::Newest,
            HistoryPage::Before(b) => Page::Before(b),
            HistoryPage::After(a) => Page::After(a),
        };
        let cap = self.handle.byte_budget() / 2;
        let messages = match fetch_page(&self.node, &room, page, limit, cap, &identity.user).await {
            Ok(Some(messages)) => messages,
            Ok(None) => return self.too_large(id),
            Err(e) => return self.unavailable(id, &e),
        };
        let reply = history_reply(id, &room, messages.iter().map(view));
        // One reply may take half of the connection's memory budget: a
        // larger page is refused rather than queued.
        if reply.len() > cap {
            return self.too_large(id);
        }
        self.reply(reply)
    }
}

impl Session {
    fn too_large(&self, id: Option<i64>) {
        self.error(
            id,
            ErrorCode::TooLarge,
            "history page too large for this connection; ask for fewer messages",
        )
    }
}

/// Messages read from the bus in one go: a page is read in chunks, so a
/// page refused for its size never sits in memory whole.
const CHUNK: usize = 32;

/// A message's share of an encoded history reply, near enough to stop
/// reading before the reply would be over its cap.
fn estimate(m: &StoredMessage) -> usize {
    m.body.len() + m.room.len() + m.from.len() + 96
}

/// Reads `page` of `room` in chunks, ascending, with `me` for `viewer`;
/// `None` once the messages read are over `cap` bytes (as the reply would
/// be).
async fn fetch_page(
    node: &Node,
    room: &str,
    page: Page,
    limit: usize,
    cap: usize,
    viewer: &str,
) -> Result<Option<Vec<StoredMessage>>, BusError> {
    let mut out: Vec<StoredMessage> = Vec::new();
    let mut bytes = 0;
    let mut cursor = page;
    while out.len() < limit {
        let want = CHUNK.min(limit - out.len());
        let chunk = {
            let _turn = node.heavy_reads.acquire().await;
            node.bus.history(room, cursor, want, Some(viewer)).await?
        };
        bytes += chunk.iter().map(estimate).sum::<usize>();
        if bytes > cap {
            return Ok(None);
        }
        let got = chunk.len();
        cursor = match cursor {
            // Newest and before-pages grow backwards: older chunks go first.
            Page::Newest | Page::Before(_) => match chunk.first() {
                Some(oldest) => Page::Before(oldest.id),
                None => break,
            },
            Page::After(_) => match chunk.last() {
                Some(newest) => Page::After(newest.id),
                None => break,
            },
        };
        if matches!(cursor, Page::After(_)) {
            out.extend(chunk);
        } else {
            out.splice(0..0, chunk);
        }
        if got < want {
            break;
        }
    }
    Ok(Some(out))
}
