//! `history`: a page of a room's stored messages, newest first or around
//! an id, from the bus (which merges the store with the stream window).

use dispatcher::Page;
use protocol::ErrorCode;
use protocol::encode::history_reply;
use protocol::request::HistoryPage;

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
        match self.node.bus.history(&room, page, limit).await {
            Ok(messages) => {
                let reply = history_reply(id, &room, messages.iter().map(view));
                // One reply may take half of the connection's memory budget:
                // a larger page is refused rather than queued.
                if reply.len() > self.handle.byte_budget() / 2 {
                    return self.error(
                        id,
                        ErrorCode::TooLarge,
                        "history page too large for this connection; ask for fewer messages",
                    );
                }
                self.reply(reply)
            }
            Err(e) => self.error(id, ErrorCode::Unavailable, &e.to_string()),
        }
    }
}
