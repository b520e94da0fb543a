//! `auth`: authenticates the connection with a token (or as a guest). A
//! refused token ends the connection with 4001.
//!
//! A token issued before a revocation of its user (1.1) is refused too: at
//! `auth` (or in the upgrade's header) with close 4003, at `refresh` with
//! an error only.
//!
//! `refresh` (1.1): a new token for the same user moves the connection's
//! expiry; rooms its `rooms` claim no longer grants are left (`removed`,
//! reason `access`). A token that does not pass is refused and the
//! connection keeps its old one until that expires.

use std::sync::Arc;

use protocol::encode::Obj;
use protocol::{ErrorCode, close};

use crate::auth::{AuthError, Identity};
use crate::conn::end::End;
use crate::conn::session::Session;

impl Session {
    /// Takes the result of an `Authorization` header: a bad one is
    /// answered and ends the connection.
    pub(in crate::conn) async fn header_auth(&mut self, header_auth: Result<Identity, AuthError>) {
        match header_auth {
            Ok(identity) => {
                if !self.refuse_revoked(None, &identity, true).await && self.admit_user(None, &identity).await {
                    self.set_identity(identity);
                }
            }
            Err(e) => {
                crate::metrics::auth_failed(e.reason());
                self.error(None, ErrorCode::Unauthorized, &e.to_string());
                self.end = Some(End::Close(close::UNAUTHORIZED, "unauthorized"));
            }
        }
    }

    /// (1.1) A token issued before a revocation of its user: refused with
    /// `unauthorized`, and (`closing`: at `auth`) the connection closed
    /// 4003. Says whether it was.
    async fn refuse_revoked(&mut self, id: Option<i64>, identity: &Identity, closing: bool) -> bool {
        if !self.token_revoked(identity).await {
            return false;
        }
        let e = AuthError::Revoked;
        crate::metrics::auth_failed(e.reason());
        self.error(id, ErrorCode::Unauthorized, &e.to_string());
        if closing {
            self.end = Some(End::Close(close::DISCONNECTED, "token revoked"));
        }
        true
    }

    pub(super) async fn on_auth(&mut self, id: Option<i64>, token: Option<&str>) {
        match self.node.auth.authenticate(token) {
            Ok(identity) => {
                if self.refuse_revoked(id, &identity, true).await || !self.admit_user(id, &identity).await {
                    return;
                }
                let mut ok = Obj::new("ok")
                    .id(id)
                    .str("user", &identity.user)
                    .str("node", &self.node.node_id);
                if let Some(secs) = identity.expires_in() {
                    ok = ok.num("expires_in", secs);
                }
                self.reply(ok.finish());
                self.set_identity(identity);
            }
            Err(e) => {
                crate::metrics::auth_failed(e.reason());
                self.error(id, ErrorCode::Unauthorized, &e.to_string());
                self.end = Some(End::Close(close::UNAUTHORIZED, "unauthorized"));
            }
        }
    }
}

impl Session {
    pub(super) async fn on_refresh(&mut self, id: Option<i64>, current: &Identity, token: &str) {
        let identity = match self.node.auth.authenticate(Some(token)) {
            Ok(identity) => identity,
            Err(e) => {
                crate::metrics::auth_failed(e.reason());
                return self.error(id, ErrorCode::Unauthorized, &e.to_string());
            }
        };
        if identity.user != current.user {
            return self.error(id, ErrorCode::Forbidden, "the token is for another user");
        }
        if self.refuse_revoked(id, &identity, false).await {
            return;
        }
        let lost: Vec<Arc<str>> = self
            .rooms
            .iter()
            .filter(|j| !identity.may_join(&j.room))
            .map(|j| j.room.clone())
            .collect();
        for room in lost {
            self.leave(&room).await;
            self.reply(Obj::new("removed").str("room", &room).str("reason", "access").finish());
        }
        let mut ok = Obj::new("ok").id(id);
        if let Some(secs) = identity.expires_in() {
            ok = ok.num("expires_in", secs);
        }
        self.reply(ok.finish());
        self.set_identity(identity);
    }
}
