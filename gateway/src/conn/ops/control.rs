//! (1.1) Operator actions on this connection (see [`crate::moderation`]):
//! a kick leaves the room with a `removed` event (reason `kicked`, or
//! `banned`); a disconnect, or a revocation that covers this connection's
//! token, closes it with 4003. And the checks at authentication and
//! `join` that make a revocation or a ban hold for new attempts too.

use dispatcher::{Control, control::is_revoked};
use protocol::close;
use protocol::encode::Obj;

use crate::auth::Identity;
use crate::conn::end::End;
use crate::conn::session::Session;

impl Session {
    /// Carries out the operator actions queued for this connection.
    pub(in crate::conn) async fn on_commands(&mut self, actions: Vec<Control>) {
        for action in actions {
            match action {
                Control::Kick { room, ban_until, .. } => {
                    if self.joined(&room).is_some() {
                        self.leave(&room).await;
                        let reason = if ban_until.is_some() { "banned" } else { "kicked" };
                        self.reply(Obj::new("removed").str("room", &room).str("reason", reason).finish());
                    }
                }
                Control::Disconnect { .. } => {
                    self.end = Some(End::Close(close::DISCONNECTED, "disconnected by an operator"));
                }
                Control::Revoke { before, .. } => {
                    if self
                        .identity
                        .as_ref()
                        .is_some_and(|i| !i.is_guest() && is_revoked(i.issued_at(), before))
                    {
                        self.end = Some(End::Close(close::DISCONNECTED, "token revoked"));
                    }
                }
            }
        }
    }

    /// Whether `identity`'s token was revoked (guests have no token). The
    /// bus unreachable: let it pass (logged); authentication must not stop
    /// on a Redis blip, and live connections are closed when the
    /// revocation reaches this node.
    pub(super) async fn token_revoked(&self, identity: &Identity) -> bool {
        if identity.is_guest() {
            return false;
        }
        match self.node.bus.revoked(&identity.user).await {
            Ok(Some(before)) => is_revoked(identity.issued_at(), before),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "token revocations not readable: token let through");
                false
            }
        }
    }
}
