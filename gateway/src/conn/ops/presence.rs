//! `presence`: the users in a room, from the bus across the cluster, or
//! from the hub's registry when the bus knows no more than this node.

use std::sync::Arc;

use protocol::ErrorCode;
use protocol::encode::Obj;

use crate::auth::Identity;
use crate::conn::session::Session;

impl Session {
    pub(super) async fn on_presence(&mut self, id: Option<i64>, identity: &Identity, room: String) {
        if !identity.may_join(&room) {
            return self.error(id, ErrorCode::Forbidden, &format!("not allowed to see room {room}"));
        }
        let users: Vec<Arc<str>> = match self.node.bus.presence(&room).await {
            Ok(Some(users)) => users.into_iter().map(Arc::from).collect(),
            Ok(None) => self.node.hub.presence(&room),
            Err(e) => return self.unavailable(id, &e),
        };
        self.reply(
            Obj::new("presence")
                .id(id)
                .str("room", &room)
                .str_array("users", users.iter().map(|u| &**u))
                .finish(),
        );
    }
}
