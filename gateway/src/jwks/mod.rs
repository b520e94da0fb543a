//! A JWK set (RFC 7517) from a file or a URL, and the keys last loaded
//! from it: each key named by `kid`, each with its own algorithm.
//!
//! A file is checked every `jwt_jwks_refresh` and reloaded when its
//! modification time or length changed. A URL ([`fetch`]) is fetched at
//! start and then every `jwt_jwks_refresh` with `If-None-Match`; until the
//! first fetch succeeds the node has no keys (tokens are refused, `/readyz`
//! says not ready) and retries every second. A reload that fails keeps the
//! keys it had, and says so in the log and in
//! `gateway_auth_jwks_reloads_total{result="failed"}`.

mod fetch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::RwLock;

use self::fetch::{Fetched, Fetcher};

/// Retry interval while a URL's set has never loaded.
const FIRST_LOAD_RETRY: Duration = Duration::from_secs(1);

/// A JWK set's source and the keys last loaded from it.
pub struct Jwks {
    source: Source,
    state: RwLock<Loaded>,
}

enum Source {
    File(PathBuf),
    Url(Box<Fetcher>),
}

#[derive(Default)]
struct Loaded {
    keys: Arc<Vec<SetKey>>,
    /// A file's modification time and length when loaded.
    stamp: Option<(SystemTime, u64)>,
    /// A URL's `ETag` when fetched.
    etag: Option<String>,
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
    /// The set at `source`: a file (loaded now: it must hold at least one
    /// usable key) or an `http(s)://` URL (fetched once [`Jwks::watch`]
    /// runs).
    pub fn open(source: &Path) -> Result<Jwks, String> {
        if let Some(url) = source.to_str().filter(|s| fetch::is_url(s)) {
            return Ok(Jwks {
                source: Source::Url(Box::new(Fetcher::new(url)?)),
                state: RwLock::new(Loaded::default()),
            });
        }
        let stamp = stamp(source);
        let keys = load_file(source)?;
        Ok(Jwks {
            source: Source::File(source.to_path_buf()),
            state: RwLock::new(Loaded {
                keys: Arc::new(keys),
                stamp,
                etag: None,
            }),
        })
    }

    /// How many keys are loaded now.
    pub fn len(&self) -> usize {
        self.state.read().keys.len()
    }

    /// No keys yet (a URL's set before its first fetch).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// For the start-up log.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::File(path) => format!("jwks {} ({} keys)", path.display(), self.len()),
            Source::Url(f) => format!("jwks {} ({} keys, fetched in the background)", f.url(), self.len()),
        }
    }

    /// The key named `kid`; without a kid, the set's only key.
    pub fn key_for(&self, kid: Option<&str>) -> Option<(Arc<DecodingKey>, Algorithm)> {
        let keys = self.state.read().keys.clone();
        let found = match kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if keys.len() == 1 => keys.first(),
            None => None,
        }?;
        Some((found.key.clone(), found.algorithm))
    }

    /// Starts following the source every `every`; stops when the set is
    /// dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        tokio::spawn(reload_loop(Arc::downgrade(self), every));
    }

    /// Reloads a file if it changed since it was last loaded; a file that
    /// no longer loads leaves the keys as they were.
    fn reload_file(&self, path: &Path) {
        let now = stamp(path);
        if now == self.state.read().stamp {
            return;
        }
        let loaded = load_file(path);
        self.state.write().stamp = now;
        self.replace(&path.display().to_string(), loaded, None);
    }

    /// Fetches the URL's set unless unchanged.
    async fn refetch(&self, fetcher: &Fetcher) {
        let etag = self.state.read().etag.clone();
        let loaded = match fetcher.fetch(etag.as_deref()).await {
            Ok(Fetched::NotModified) => return,
            Ok(Fetched::Changed { text, etag }) => (parse(&text, &fetcher.url().to_string()), etag),
            Err(e) => (Err(e), None),
        };
        self.replace(&fetcher.url().to_string(), loaded.0, loaded.1);
    }

    fn replace(&self, origin: &str, loaded: Result<Vec<SetKey>, String>, etag: Option<String>) {
        match loaded {
            Ok(keys) => {
                tracing::info!(source = origin, keys = keys.len(), "JWKS loaded");
                crate::metrics::jwks_reload("ok");
                let mut state = self.state.write();
                state.keys = Arc::new(keys);
                state.etag = etag;
            }
            Err(e) => {
                tracing::warn!(source = origin, error = %e, "JWKS not loaded; keeping the keys it had");
                crate::metrics::jwks_reload("failed");
            }
        }
    }
}

async fn reload_loop(jwks: Weak<Jwks>, every: Duration) {
    let mut first = true;
    loop {
        let wait = {
            let Some(jwks) = jwks.upgrade() else { return };
            match &jwks.source {
                Source::File(path) if !first => jwks.reload_file(path),
                Source::File(_) => {}
                Source::Url(fetcher) => jwks.refetch(fetcher).await,
            }
            if jwks.is_empty() {
                FIRST_LOAD_RETRY.min(every)
            } else {
                every
            }
        };
        first = false;
        tokio::time::sleep(wait).await;
    }
}

fn load_file(path: &Path) -> Result<Vec<SetKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// The usable keys of a JWK set: signature keys whose algorithm is named
/// or follows from their kind. `origin` names the set in errors.
fn parse(text: &str, origin: &str) -> Result<Vec<SetKey>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("{origin} is not a JWK set: {e}"))?;
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
        return Err(format!("{origin} holds no signature key"));
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
        jwks.reload_file(&p);
        assert!(jwks.key_for(None).is_some());
    }

    #[test]
    fn urls_are_told_from_files() {
        assert!(Jwks::open(Path::new("http://127.0.0.1:1/jwks.json")).is_ok_and(|j| j.is_empty()));
        assert!(Jwks::open(Path::new("https://")).is_err(), "no host");
        assert!(
            Jwks::open(Path::new("./http-keys.json")).is_err(),
            "a file, and missing"
        );
    }
}
