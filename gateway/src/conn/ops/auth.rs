//! `auth`: authenticates the connection with a token (or as a guest). A
//! refused token ends the connection with 4001.

use protocol::encode::Obj;
use protocol::{ErrorCode, close};

use crate::conn::end::End;
use crate::conn::session::Session;

impl Session {
    pub(super) async fn on_auth(&mut self, id: Option<i64>, token: Option<&str>) {
        match self.node.auth.authenticate(token) {
            Ok(identity) => {
                if !self.admit_user(id, &identity).await {
                    return;
                }
                self.reply(
                    Obj::new("ok")
                        .id(id)
                        .str("user", &identity.user)
                        .str("node", &self.node.node_id)
                        .finish(),
                );
                self.identity = Some(identity);
            }
            Err(e) => {
                self.error(id, ErrorCode::Unauthorized, &e.to_string());
                self.end = Some(End::Close(close::UNAUTHORIZED, "unauthorized"));
            }
        }
    }
}
