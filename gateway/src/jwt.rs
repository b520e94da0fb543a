//! Which key checks a client token, and with which algorithm.
//!
//! One static key (an HMAC secret, or an RSA or EC public key in PEM; the
//! algorithm pinned by configuration or by the key's kind), or a JWK set
//! from a file or a URL ([`crate::jwks`]): each token names its key by
//! `kid`, each key has its own algorithm, and the set is followed so keys
//! rotate without a restart. A token whose header names another algorithm
//! than its key's is refused (no algorithm confusion).

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::{Config, ConfigError};
use crate::jwks::Jwks;
use dispatcher::settings::invalid;

/// How client tokens are checked, derived from the JWT settings.
#[derive(Clone)]
pub struct JwtSettings {
    keys: Keys,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

#[derive(Clone)]
enum Keys {
    Static {
        key: Arc<DecodingKey>,
        algorithm: Algorithm,
    },
    Jwks(Arc<Jwks>),
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("keys", &self.describe())
            .finish_non_exhaustive()
    }
}

impl JwtSettings {
    /// The JWT settings of `c`, checked; `None` when no key is configured.
    pub fn from_config(c: &Config) -> Result<Option<JwtSettings>, ConfigError> {
        let pinned = match &c.jwt_algorithm {
            None => None,
            Some(name) => Some(
                name.parse::<Algorithm>()
                    .map_err(|_| invalid("jwt_algorithm", format!("unknown algorithm {name:?}")))?,
            ),
        };
        let keys = match (&c.jwt_secret, &c.jwt_public_key, &c.jwt_jwks) {
            (None, None, None) => {
                if pinned.is_some() {
                    return Err(invalid(
                        "jwt_algorithm",
                        "set without GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWT_JWKS",
                    ));
                }
                return Ok(None);
            }
            (Some(secret), None, None) => static_secret(secret, pinned)?,
            (None, Some(pem_or_path), None) => static_public_key(pem_or_path, pinned)?,
            (None, None, Some(path)) => {
                if pinned.is_some() {
                    return Err(invalid(
                        "jwt_algorithm",
                        "not with jwt_jwks: each key of the set names its own",
                    ));
                }
                let jwks = Jwks::open(path).map_err(|e| invalid("jwt_jwks", e))?;
                Keys::Jwks(Arc::new(jwks))
            }
            _ => {
                return Err(invalid(
                    "jwt_secret",
                    "set one of jwt_secret, jwt_public_key and jwt_jwks",
                ));
            }
        };
        Ok(Some(JwtSettings {
            keys,
            audience: c.jwt_audience.clone(),
            issuer: c.jwt_issuer.clone(),
        }))
    }

    /// The key and algorithm that check a token whose header says `kid`
    /// and `alg`; `None` when no key fits (unknown kid, other algorithm).
    pub fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Option<(Arc<DecodingKey>, Algorithm)> {
        let (key, algorithm) = match &self.keys {
            Keys::Static { key, algorithm } => (key.clone(), *algorithm),
            Keys::Jwks(jwks) => jwks.key_for(kid)?,
        };
        (algorithm == alg).then_some((key, algorithm))
    }

    /// For the start-up log: the pinned algorithm, or the key set's size.
    pub fn describe(&self) -> String {
        match &self.keys {
            Keys::Static { algorithm, .. } => format!("{algorithm:?}"),
            Keys::Jwks(jwks) => jwks.describe(),
        }
    }

    /// Starts following a JWK set's file or URL every `every` (no-op for
    /// a static key); it stops when these settings are dropped.
    pub fn watch(&self, every: Duration) {
        if let Keys::Jwks(jwks) = &self.keys {
            jwks.watch(every);
        }
    }

    /// Whether there is a key to check tokens with (a JWK set from a URL
    /// has none until its first fetch).
    pub fn has_keys(&self) -> bool {
        match &self.keys {
            Keys::Static { .. } => true,
            Keys::Jwks(jwks) => !jwks.is_empty(),
        }
    }
}

fn static_secret(secret: &str, pinned: Option<Algorithm>) -> Result<Keys, ConfigError> {
    if secret.len() < 16 {
        return Err(invalid("jwt_secret", "must be at least 16 bytes"));
    }
    let algorithm = pinned.unwrap_or(Algorithm::HS256);
    if !matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(invalid(
            "jwt_algorithm",
            format!("{algorithm:?} needs jwt_public_key, not a secret"),
        ));
    }
    Ok(Keys::Static {
        key: Arc::new(DecodingKey::from_secret(secret.as_bytes())),
        algorithm,
    })
}

fn static_public_key(pem_or_path: &str, pinned: Option<Algorithm>) -> Result<Keys, ConfigError> {
    let pem = if pem_or_path.trim_start().starts_with("-----BEGIN") {
        pem_or_path.as_bytes().to_vec()
    } else {
        std::fs::read(pem_or_path).map_err(|e| invalid("jwt_public_key", format!("reading {pem_or_path}: {e}")))?
    };
    let (key, algorithm) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        let alg = pinned.unwrap_or(Algorithm::RS256);
        if !matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) {
            return Err(invalid("jwt_algorithm", format!("{alg:?} does not fit an RSA key")));
        }
        (key, alg)
    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        let alg = pinned.unwrap_or(Algorithm::ES256);
        if !matches!(alg, Algorithm::ES256 | Algorithm::ES384) {
            return Err(invalid("jwt_algorithm", format!("{alg:?} does not fit an EC key")));
        }
        (key, alg)
    } else {
        return Err(invalid("jwt_public_key", "not an RSA or EC public key in PEM"));
    };
    Ok(Keys::Static {
        key: Arc::new(key),
        algorithm,
    })
}
