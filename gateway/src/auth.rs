//! Client identity: JWT verification and anonymous guests.
//!
//! The algorithm is pinned by configuration; a token whose header names any
//! other (including `none`) is refused. `sub` and `exp` are required, `nbf`
//! is honoured, `aud`/`iss` are required and checked when configured (RFC
//! 8725 3.9: a token minted for another service must not pass for one of
//! ours). `sub` must be a valid user id ([`protocol::user`]): it is shown
//! to other clients. The optional `rooms` claim replaces the default room
//! policy for that user; the optional `mod` claim (1.1) names the rooms
//! they moderate. `exp` is kept: a connection outlives its token only by
//! `token_expiry_grace`, unless it sends `refresh` (see `conn::ops::auth`).
//!
//! A refused token is answered with a short fixed reason; the library's
//! (claim names, offsets, encodings) is logged at debug, never sent.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use serde::Deserialize;

use crate::config::{JwtSettings, Settings};

/// Who a connection is, once authenticated.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<str>,
    /// Room patterns this user may join.
    pub rooms: Arc<[String]>,
    /// (1.1) Room patterns this user moderates (the `mod` claim).
    pub mods: Option<Arc<[String]>>,
    /// The token's `exp` (Unix seconds); 0 for guests (no expiry). Not an
    /// `Option`: the identity lives in every connection.
    pub expires_at: u64,
    /// (1.1) The token's `iat` (Unix seconds), for revocations; 0 when the
    /// token has none (a revocation covers both alike). Not an `Option`:
    /// 8 bytes more in every connection's task moved it to the next
    /// allocator size class.
    pub iat: u64,
}

impl Identity {
    pub fn may_join(&self, room: &str) -> bool {
        protocol::room::allowed(&self.rooms, room)
    }

    /// Whether this user moderates `room` (the `mod` claim).
    pub fn moderates(&self, room: &str) -> bool {
        self.mods.as_deref().is_some_and(|m| protocol::room::allowed(m, room))
    }

    /// A guest: no token, nothing to revoke.
    pub fn is_guest(&self) -> bool {
        self.expires_at == 0
    }

    /// The token's `iat`, when it has one.
    pub fn issued_at(&self) -> Option<u64> {
        (self.iat != 0).then_some(self.iat)
    }

    /// Seconds until the token expires (0 once it has); `None` for guests.
    pub fn expires_in(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        (self.expires_at != 0).then(|| self.expires_at.saturating_sub(now))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no token given and anonymous access is off")]
    TokenRequired,
    #[error("no JWT key is configured; only anonymous access is possible")]
    NoKey,
    #[error("{reason}")]
    Invalid {
        reason: &'static str,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error(
        "invalid token: sub must be 1 to {} bytes without control, bidirectional or invisible format characters",
        protocol::user::MAX_USER_LEN
    )]
    BadUser,
    /// (1.1) Revocations are kept as long as the longest lifetime accepted.
    #[error("token lifetime is over the {0} this server accepts")]
    TooLong(String),
    /// (1.1) Issued before a revocation of the user's tokens.
    #[error("token revoked")]
    Revoked,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// A NumericDate: RFC 7519 allows fractions.
    exp: f64,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default, rename = "mod")]
    mods: Option<Vec<String>>,
}

impl AuthError {
    /// Why, as the `reason` label of `gateway_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::TokenRequired => "token_required",
            AuthError::NoKey => "no_key",
            AuthError::Invalid { source, .. } => match source.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not_yet_valid",
                _ => "invalid",
            },
            AuthError::BadUser => "bad_user",
            AuthError::TooLong(_) => "lifetime",
            AuthError::Revoked => "revoked",
        }
    }
}

pub struct Authenticator {
    jwt: Option<JwtSettings>,
    anonymous: bool,
    default_rooms: Arc<[String]>,
    /// (1.1) The longest token lifetime accepted (`exp` - `iat`, or `exp` -
    /// now without `iat`).
    max_lifetime: std::time::Duration,
}

/// jsonwebtoken needs exactly one crypto provider installed before the first
/// token (DEPENDENCIES.md trap 2); installing twice is harmless here.
pub fn install_crypto_provider() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

impl Authenticator {
    pub fn new(settings: &Settings) -> Self {
        install_crypto_provider();
        if let Some(jwt) = &settings.jwt
            && tokio::runtime::Handle::try_current().is_ok()
        {
            jwt.watch(settings.config.jwt_jwks_refresh);
        }
        Authenticator {
            jwt: settings.jwt.clone(),
            anonymous: settings.anonymous,
            default_rooms: settings.config.default_rooms.clone().into(),
            max_lifetime: settings.config.token_max_lifetime,
        }
    }

    /// Whether tokens can be checked now (a JWK set from a URL has no keys
    /// until its first fetch): part of `/readyz`.
    pub fn ready(&self) -> bool {
        self.jwt.as_ref().is_none_or(|j| j.has_keys())
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
        let jwt = self.jwt.as_ref().ok_or(AuthError::NoKey)?;
        let refused = |source: jsonwebtoken::errors::Error| {
            tracing::debug!(error = %source, "token refused");
            AuthError::Invalid {
                reason: "invalid token",
                source,
            }
        };
        let header = decode_header(token).map_err(refused)?;
        // The key the header names, used only with its own algorithm.
        let (key, algorithm) = jwt
            .key_for(header.kid.as_deref(), header.alg)
            .ok_or_else(|| refused(ErrorKind::InvalidAlgorithm.into()))?;
        let data = decode::<Claims>(token, &key, &validation(jwt, algorithm)).map_err(|source| {
            tracing::debug!(error = %source, "token refused");
            let reason = match source.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not valid yet",
                _ => "invalid token",
            };
            AuthError::Invalid { reason, source }
        })?;
        let claims = data.claims;
        if !protocol::user::is_valid_user_id(&claims.sub) {
            tracing::debug!(
                sub_bytes = claims.sub.len(),
                "token refused: sub is not a valid user id"
            );
            return Err(AuthError::BadUser);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let lifetime = claims.exp - claims.iat.unwrap_or(now);
        // The leeway of the other time claims.
        if lifetime > self.max_lifetime.as_secs_f64() + 5.0 {
            tracing::debug!(lifetime, "token refused: lifetime over the maximum");
            return Err(AuthError::TooLong(
                humantime::format_duration(self.max_lifetime).to_string(),
            ));
        }
        let rooms = match claims.rooms {
            Some(r) => r.into(),
            None => self.default_rooms.clone(),
        };
        Ok(Identity {
            user: claims.sub.into(),
            rooms,
            mods: claims.mods.map(Into::into),
            // At least 1: 0 is a guest's.
            expires_at: (claims.exp.max(1.0)) as u64,
            iat: claims.iat.map_or(0, |t| t.max(0.0) as u64),
        })
    }

    fn guest(&self) -> Identity {
        let n: u64 = rand::random();
        Identity {
            user: format!("guest-{n:016x}").into(),
            rooms: self.default_rooms.clone(),
            mods: None,
            expires_at: 0,
            iat: 0,
        }
    }
}

/// What a token checked with `algorithm` must satisfy: `exp` and `sub`
/// always, `nbf` when given, `aud`/`iss` required when configured
/// (jsonwebtoken checks them only when the token has them, unless they are
/// required).
fn validation(jwt: &JwtSettings, algorithm: Algorithm) -> Validation {
    let mut v = Validation::new(algorithm);
    let mut required = vec!["exp", "sub"];
    v.leeway = 5;
    v.validate_exp = true;
    v.validate_nbf = true;
    match &jwt.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    if let Some(iss) = &jwt.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
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
