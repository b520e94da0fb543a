//! API keys: any number, each with a name (`GATEWAY_API_KEYS=
//! "backend=<key>,ops=<key>"`, plus `GATEWAY_API_KEY` as `default`), so a
//! key is rotated by adding the new one, moving callers, then removing the
//! old. A presented key is compared with every configured key in constant
//! time (`subtle`), so neither which key nor how much of one matched shows
//! in the time taken; the name, never the key, goes to logs and metrics.

use subtle::ConstantTimeEq;

use super::ApiError;
use protocol::ErrorCode;

/// One configured key.
#[derive(Clone)]
struct ApiKey {
    name: String,
    key: Vec<u8>,
}

/// The configured keys.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| &k.name)).finish()
    }
}

/// What is wrong with a key setting.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0:?} is not name=key")]
    NotNamed(String),
    #[error("key name {0:?} must be 1 to 64 characters of [A-Za-z0-9_.-]")]
    BadName(String),
    #[error("the key named {0:?} is shorter than 16 bytes")]
    Short(String),
    #[error("two keys are named {0:?}")]
    DuplicateName(String),
}

impl ApiKeys {
    /// From `GATEWAY_API_KEY` (named `default`) and `GATEWAY_API_KEYS`
    /// (`name=key` each).
    pub fn parse(single: Option<&str>, named: &[String]) -> Result<ApiKeys, KeyError> {
        let mut keys = Vec::new();
        if let Some(key) = single {
            keys.push(ApiKey {
                name: "default".into(),
                key: key.as_bytes().to_vec(),
            });
        }
        for entry in named.iter().filter(|e| !e.trim().is_empty()) {
            let (name, key) = entry
                .split_once('=')
                .ok_or_else(|| KeyError::NotNamed(entry.chars().take(8).collect::<String>() + "..."))?;
            let name = name.trim();
            if name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return Err(KeyError::BadName(name.into()));
            }
            if key.len() < 16 {
                return Err(KeyError::Short(name.into()));
            }
            if keys.iter().any(|k: &ApiKey| k.name == name) {
                return Err(KeyError::DuplicateName(name.into()));
            }
            keys.push(ApiKey {
                name: name.into(),
                key: key.as_bytes().to_vec(),
            });
        }
        Ok(ApiKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The name of the key `given` is, comparing with every key.
    pub fn check(&self, given: Option<&str>) -> Result<&str, ApiError> {
        if self.keys.is_empty() {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "the server API is off: set GATEWAY_API_KEYS or GATEWAY_API_KEY",
            ));
        }
        let given = given.unwrap_or("").as_bytes();
        let mut found = None;
        for k in &self.keys {
            // Every key is compared, whatever matched before.
            if bool::from(k.key.as_slice().ct_eq(given)) {
                found = Some(k.name.as_str());
            }
        }
        found.ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing or wrong API key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_key_that_matched() {
        let keys = ApiKeys::parse(
            Some("old-key"),
            &["backend=0123456789abcdef".into(), "ops=fedcba9876543210".into()],
        )
        .unwrap();
        assert_eq!(keys.check(Some("old-key")).unwrap(), "default");
        assert_eq!(keys.check(Some("fedcba9876543210")).unwrap(), "ops");
        assert_eq!(keys.check(Some("0123456789abcdef")).unwrap(), "backend");
        assert!(keys.check(Some("0123456789abcdeX")).is_err());
        assert!(keys.check(Some("")).is_err());
        assert!(keys.check(None).is_err());
        assert!(ApiKeys::default().check(Some("x")).is_err());
    }

    #[test]
    fn refuses_bad_settings() {
        assert!(matches!(
            ApiKeys::parse(None, &["nokey".into()]),
            Err(KeyError::NotNamed(_))
        ));
        assert!(matches!(
            ApiKeys::parse(None, &["a b=0123456789abcdef".into()]),
            Err(KeyError::BadName(_))
        ));
        assert!(matches!(
            ApiKeys::parse(None, &["a=short".into()]),
            Err(KeyError::Short(_))
        ));
        assert!(matches!(
            ApiKeys::parse(None, &["a=0123456789abcdef".into(), "a=0123456789abcdeg".into()]),
            Err(KeyError::DuplicateName(_))
        ));
        assert!(format!("{:?}", ApiKeys::parse(None, &["a=0123456789abcdef".into()]).unwrap()).contains("\"a\""));
    }
}
