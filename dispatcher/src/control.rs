//! (1.1) Operator actions of the server API that every node applies to its
//! own connections: kick (with an optional ban), disconnect, revoke.
//!
//! A bus stores what must outlive the action (a ban, a revocation: in
//! Redis with a TTL in a cluster, in the embedded store on one node) and
//! then hands the [`Control`] to every node's [`crate::Sink::control`]. The
//! Redis bus carries them on one control stream that each node reads from
//! where it left off, so a node that was away from Redis for a while still
//! applies what it missed when it returns.

use std::sync::Arc;

/// One operator action, applied by every node to its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Remove the user's connections from the room (`removed`, reason
    /// `kicked`, or `banned` when `ban_until` is set: their `join` is then
    /// `forbidden` until that time, in Unix ms).
    Kick {
        room: Arc<str>,
        user: Arc<str>,
        ban_until: Option<u64>,
    },
    /// Close every connection of the user with 4003.
    Disconnect { user: Arc<str> },
    /// Tokens of the user issued (`iat`) before `before` (Unix ms) are
    /// refused; live connections authenticated with one close with 4003.
    /// Remembered until `keep_until` (ms): the revocation's time plus the
    /// longest token lifetime the gateway accepts, after which every token
    /// it covers has expired anyway.
    Revoke {
        user: Arc<str>,
        before: u64,
        keep_until: u64,
    },
}

impl Control {
    /// The user it acts on.
    pub fn user(&self) -> &Arc<str> {
        match self {
            Control::Kick { user, .. } | Control::Disconnect { user } | Control::Revoke { user, .. } => user,
        }
    }

    /// Its name in logs, metrics and the control stream.
    pub fn kind(&self) -> &'static str {
        match self {
            Control::Kick { .. } => "kick",
            Control::Disconnect { .. } => "disconnect",
            Control::Revoke { .. } => "revoke",
        }
    }

    /// Its fields in the control stream: `k` kind, `u` user, `r` room,
    /// `t` the ban's end or the revocation's time (ms; `0`: no ban), `e`
    /// until when a revocation is kept.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![("k", self.kind().to_string()), ("u", self.user().to_string())];
        match self {
            Control::Kick { room, ban_until, .. } => {
                f.push(("r", room.to_string()));
                f.push(("t", ban_until.unwrap_or(0).to_string()));
            }
            Control::Disconnect { .. } => {}
            Control::Revoke { before, keep_until, .. } => {
                f.push(("t", before.to_string()));
                f.push(("e", keep_until.to_string()));
            }
        }
        f
    }

    /// The action a control stream entry's fields describe; `None` for an
    /// entry this version does not know (a newer node wrote it).
    pub fn from_fields(get: impl Fn(&str) -> Option<String>) -> Option<Control> {
        let user: Arc<str> = get("u")?.into();
        let num = |k: &str| get(k).and_then(|t| t.parse::<u64>().ok());
        match get("k")?.as_str() {
            "kick" => Some(Control::Kick {
                room: get("r")?.into(),
                user,
                ban_until: num("t").filter(|&t| t > 0),
            }),
            "disconnect" => Some(Control::Disconnect { user }),
            "revoke" => Some(Control::Revoke {
                user,
                before: num("t")?,
                keep_until: num("e")?,
            }),
            _ => None,
        }
    }
}

/// Whether a token issued at `iat` (Unix seconds; `None`: not said) falls
/// under a revocation of everything issued before `before` (Unix ms). A
/// token issued in the revocation's own second is not: JWT times are
/// whole seconds, and a backend that revokes and at once issues a new
/// token must not have the new one refused. One without `iat` cannot show
/// it is newer, so it is refused while the revocation stands.
pub fn is_revoked(iat: Option<u64>, before: u64) -> bool {
    match iat {
        Some(iat) => iat.saturating_add(1).saturating_mul(1000) <= before,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_stream_fields() {
        for c in [
            Control::Kick {
                room: "r1".into(),
                user: "u 1".into(),
                ban_until: Some(5),
            },
            Control::Kick {
                room: "r1".into(),
                user: "u".into(),
                ban_until: None,
            },
            Control::Disconnect { user: "u".into() },
            Control::Revoke {
                user: "u".into(),
                before: 1_700_000_000_000,
                keep_until: 1_700_000_100_000,
            },
        ] {
            let fields = c.fields();
            let get = |k: &str| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
            assert_eq!(Control::from_fields(get), Some(c));
        }
        assert_eq!(
            Control::from_fields(|k| (k == "k").then(|| "future".into()).or(Some("x".into()))),
            None
        );
    }

    #[test]
    fn a_token_of_the_revocations_second_stands() {
        let before = 1_700_000_000_500;
        assert!(is_revoked(Some(1_699_999_999), before));
        assert!(!is_revoked(Some(1_700_000_000), before));
        assert!(!is_revoked(Some(1_700_000_001), before));
        assert!(is_revoked(None, before));
    }
}
