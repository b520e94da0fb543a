//! Client identity: JWT verification and anonymous guests.
//!
//! The algorithm is pinned by configuration; a token whose header names any
//! other (including `none`) is refused. `sub` and `exp` are required, `nbf`
//! is honoured, `aud`/`iss` are checked when configured. The optional
//! `rooms` claim replaces the default room policy for that user.

use std::sync::Arc;

use jsonwebtoken::{Validation, decode};
use serde::Deserialize;

use crate::config::{JwtSettings, Settings};

/// Longest user id accepted from a token.
const MAX_USER_LEN: usize = 256;

/// Who a connection is, once authenticated.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<str>,
    /// Room patterns this user may join.
    pub rooms: Arc<[String]>,
}

impl Identity {
    pub fn may_join(&self, room: &str) -> bool {
        protocol::room::allowed(&self.rooms, room)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token given and anonymous access is off")]
    TokenRequired,
    #[error("no JWT key is configured; only anonymous access is possible")]
    NoKey,
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

pub struct Authenticator {
    jwt: Option<(JwtSettings, Validation)>,
    anonymous: bool,
    default_rooms: Arc<[String]>,
}

/// jsonwebtoken needs exactly one crypto provider installed before the first
/// token (DEPENDENCIES.md trap 2); installing twice is harmless here.
pub fn install_crypto_provider() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

impl Authenticator {
    pub fn new(settings: &Settings) -> Self {
        install_crypto_provider();
        let jwt = settings.jwt.clone().map(|jwt| {
            let mut v = Validation::new(jwt.algorithm);
            v.set_required_spec_claims(&["exp", "sub"]);
            v.leeway = 5;
            v.validate_nbf = true;
            match &jwt.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            if let Some(iss) = &jwt.issuer {
                v.set_issuer(&[iss]);
            }
            (jwt, v)
        });
        Authenticator {
            jwt,
            anonymous: settings.anonymous,
            default_rooms: settings.config.default_rooms.clone().into(),
        }
    }

    /// Authenticates a token, or, with none, a guest when allowed.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        match token {
            Some(token) => self.verify(token),
            None if self.anonymous => Ok(self.guest()),
            None => Err(AuthError::TokenRequired),
        }
    }

    fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let (jwt, validation) = self.jwt.as_ref().ok_or(AuthError::NoKey)?;
        let data = decode::<Claims>(token, &jwt.key, validation).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > MAX_USER_LEN {
            return Err(AuthError::Invalid(format!("sub must be 1 to {MAX_USER_LEN} bytes")));
        }
        let rooms = match claims.rooms {
            Some(r) => r.into(),
            None => self.default_rooms.clone(),
        };
        Ok(Identity {
            user: claims.sub.into(),
            rooms,
        })
    }

    fn guest(&self) -> Identity {
        let n: u64 = rand::random();
        Identity {
            user: format!("guest-{n:016x}").into(),
            rooms: self.default_rooms.clone(),
        }
    }
}

/// The token of `Authorization: Bearer <token>`, if present.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}
