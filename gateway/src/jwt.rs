//! Which key checks a client token, and with which algorithm.
//!
//! One static key (an HMAC secret, or an RSA or EC public key in PEM; the
//! algorithm pinned by configuration or by the key's kind), or a JWKS file:
//! each token names its key by `kid`, each key has its own algorithm, and
//! the file is checked every `jwt_jwks_refresh` and reloaded when it
//! changed, so keys rotate without a restart. A token whose header names
//! another algorithm than its key's is refused (no algorithm confusion).
//! A reload that fails keeps the keys it had, and says so in the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::RwLock;

use crate::config::{Config, ConfigError};
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
            Keys::Jwks(jwks) => format!("jwks ({} keys)", jwks.current().len()),
        }
    }

    /// Starts checking a JWKS file for changes every `every` (no-op for a
    /// static key); the check stops when these settings are dropped.
    pub fn watch(&self, every: Duration) {
        if let Keys::Jwks(jwks) = &self.keys {
            let weak = Arc::downgrade(jwks);
            tokio::spawn(reload_loop(weak, every));
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

/// A JWKS file and the keys last loaded from it.
pub struct Jwks {
    path: PathBuf,
    state: RwLock<Loaded>,
}

struct Loaded {
    keys: Arc<Vec<SetKey>>,
    /// The file's modification time and length when loaded.
    stamp: Option<(SystemTime, u64)>,
}

struct SetKey {
    kid: Option<String>,
    key: Arc<DecodingKey>,
    algorithm: Algorithm,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Jwks {
    /// Loads the set at `path`: it must hold at least one usable key.
    pub fn open(path: &Path) -> Result<Jwks, String> {
        let stamp = stamp(path);
        let keys = load(path)?;
        Ok(Jwks {
            path: path.to_path_buf(),
            state: RwLock::new(Loaded {
                keys: Arc::new(keys),
                stamp,
            }),
        })
    }

    fn current(&self) -> Arc<Vec<SetKey>> {
        self.state.read().keys.clone()
    }

    /// The key named `kid`; without a kid, the set's only key.
    fn key_for(&self, kid: Option<&str>) -> Option<(Arc<DecodingKey>, Algorithm)> {
        let keys = self.current();
        let found = match kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if keys.len() == 1 => keys.first(),
            None => None,
        }?;
        Some((found.key.clone(), found.algorithm))
    }

    /// Reloads the file if it changed since it was last loaded; a file that
    /// no longer loads leaves the keys as they were.
    fn reload_if_changed(&self) {
        let now = stamp(&self.path);
        if now == self.state.read().stamp {
            return;
        }
        match load(&self.path) {
            Ok(keys) => {
                tracing::info!(path = %self.path.display(), keys = keys.len(), "JWKS reloaded");
                crate::metrics::jwks_reload("ok");
                *self.state.write() = Loaded {
                    keys: Arc::new(keys),
                    stamp: now,
                };
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "JWKS not reloaded; keeping the keys it had");
                crate::metrics::jwks_reload("failed");
                self.state.write().stamp = now;
            }
        }
    }
}

async fn reload_loop(jwks: Weak<Jwks>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(jwks) = jwks.upgrade() else { return };
        jwks.reload_if_changed();
    }
}

/// The usable keys of a JWKS file: signature keys whose algorithm is named
/// or follows from their kind.
fn load(path: &Path) -> Result<Vec<SetKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| format!("{} is not a JWK set: {e}", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match jwk.common.key_algorithm {
            Some(a) => Algorithm::try_from(a)
                .map_err(|_| format!("key {:?}: algorithm {a:?} cannot sign", jwk.common.key_id))?,
            None => default_algorithm(&jwk.algorithm)
                .ok_or_else(|| format!("key {:?}: no \"alg\" and none follows from its kind", jwk.common.key_id))?,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {:?}: {e}", jwk.common.key_id))?;
        keys.push(SetKey {
            kid: jwk.common.key_id.clone(),
            key: Arc::new(key),
            algorithm,
        });
    }
    if keys.is_empty() {
        return Err(format!("{} holds no signature key", path.display()));
    }
    Ok(keys)
}

/// The algorithm a key without `alg` is used with.
fn default_algorithm(params: &AlgorithmParameters) -> Option<Algorithm> {
    Some(match params {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "andrcy10ZXN0LXNlY3JldC1udW1iZXItb25lLTAxMjM";

    fn write(dir: &Path, json: &str) -> PathBuf {
        let p = dir.join("jwks.json");
        std::fs::write(&p, json).unwrap();
        p
    }

    #[test]
    fn keys_by_kid_with_their_algorithms() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            &format!(
                r#"{{"keys":[{{"kty":"oct","kid":"a","alg":"HS384","k":"{K1}"}},{{"kty":"oct","kid":"b","k":"{K1}"}},{{"kty":"oct","kid":"e","use":"enc","k":"{K1}"}}]}}"#
            ),
        );
        let jwks = Jwks::open(&p).unwrap();
        assert_eq!(jwks.key_for(Some("a")).map(|k| k.1), Some(Algorithm::HS384));
        assert_eq!(
            jwks.key_for(Some("b")).map(|k| k.1),
            Some(Algorithm::HS256),
            "oct defaults to HS256"
        );
        assert!(jwks.key_for(Some("e")).is_none(), "encryption keys do not sign");
        assert!(jwks.key_for(None).is_none(), "no kid and more than one key");
    }

    #[test]
    fn a_bad_file_is_refused_and_a_bad_reload_keeps_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Jwks::open(&write(dir.path(), "{\"keys\":[]}")).is_err());
        assert!(Jwks::open(&write(dir.path(), "not json")).is_err());
        let p = write(dir.path(), &format!(r#"{{"keys":[{{"kty":"oct","k":"{K1}"}}]}}"#));
        let jwks = Jwks::open(&p).unwrap();
        assert!(jwks.key_for(None).is_some(), "the only key serves tokens without kid");
        std::fs::write(&p, "truncated {").unwrap();
        jwks.reload_if_changed();
        assert!(jwks.key_for(None).is_some());
    }
}
