//! Which web pages may open a WebSocket to the node: the `Origin` header of
//! a browser's upgrade against `--allowed-origins`. Requests without an
//! `Origin` (native clients, servers, the loadtest) are never refused:
//! they can write any `Origin` they like, so the check protects browsers
//! and their users, not the node.

use std::net::IpAddr;

use http::{HeaderValue, Uri};

use super::AdmissionError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// `*`, or unset with JWT auth only: a page cannot act as a user
    /// without that user's token.
    Any,
    /// Unset while guests are served: a guest needs no credentials, so any
    /// page on the web could open guest connections from its visitors'
    /// browsers. Only pages served from the machine itself may.
    Loopback,
    /// These exact origins (`scheme://host[:port]`, lowercase).
    List(Vec<String>),
}

impl Origins {
    /// `list` as configured (`None` when unset); `anonymous` whether the
    /// node serves guests.
    pub fn parse(list: Option<&[String]>, anonymous: bool) -> Result<Origins, AdmissionError> {
        let Some(list) = list else {
            return Ok(if anonymous { Origins::Loopback } else { Origins::Any });
        };
        let list: Vec<&str> = list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
        if list.is_empty() {
            return Err(AdmissionError::BadOrigin(String::new()));
        }
        if list.contains(&"*") {
            return match list.len() {
                1 => Ok(Origins::Any),
                _ => Err(AdmissionError::BadOrigin(list.join(","))),
            };
        }
        list.iter()
            .map(|o| normalise(o).ok_or_else(|| AdmissionError::BadOrigin(o.to_string())))
            .collect::<Result<_, _>>()
            .map(Origins::List)
    }

    /// Whether an upgrade with this `Origin` header (if any) is let in.
    pub fn allows(&self, origin: Option<&HeaderValue>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        match self {
            Origins::Any => true,
            Origins::Loopback => is_loopback(origin.as_bytes()),
            Origins::List(list) => {
                let given = origin.as_bytes();
                list.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(given))
            }
        }
    }
}

/// `scheme://host[:port]` in lowercase, or `None` if `text` is not an
/// origin (a path, query or user info, or no host). A trailing `/` is
/// forgiven: browsers never send one, so it would match nothing.
fn normalise(text: &str) -> Option<String> {
    let uri: Uri = text.parse().ok()?;
    let (scheme, authority) = (uri.scheme_str()?, uri.authority()?);
    let bare = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
    (bare && !authority.as_str().contains('@')).then(|| format!("{scheme}://{authority}").to_ascii_lowercase())
}

/// An `http(s)` origin on `localhost` or a loopback address.
fn is_loopback(origin: &[u8]) -> bool {
    let Some(uri) = std::str::from_utf8(origin).ok().and_then(|s| s.parse::<Uri>().ok()) else {
        return false;
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return false;
    }
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(o: &Origins, origin: &str) -> bool {
        o.allows(Some(&HeaderValue::from_str(origin).unwrap()))
    }

    #[test]
    fn unset_means_loopback_pages_for_guests_and_any_page_with_jwt() {
        let guests = Origins::parse(None, true).unwrap();
        assert!(guests.allows(None), "no Origin: not a browser");
        for ok in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://[::1]:8443",
            "http://LOCALHOST",
        ] {
            assert!(allows(&guests, ok), "{ok}");
        }
        for refused in [
            "https://evil.example",
            "null",
            "http://localhost.evil.example",
            "file://",
        ] {
            assert!(!allows(&guests, refused), "{refused}");
        }
        assert!(allows(&Origins::parse(None, false).unwrap(), "https://evil.example"));
    }

    #[test]
    fn a_list_matches_exact_origins() {
        let list = Origins::parse(
            Some(&["https://Chat.example.com".into(), "http://a.test:8080/".into()]),
            true,
        )
        .unwrap();
        assert!(allows(&list, "https://chat.example.com"));
        assert!(allows(&list, "http://a.test:8080"));
        assert!(!allows(&list, "http://chat.example.com"), "scheme counts");
        assert!(!allows(&list, "https://chat.example.com:444"), "port counts");
        assert!(
            !allows(&list, "http://localhost"),
            "a list replaces the loopback default"
        );
        assert!(list.allows(None));
        assert_eq!(Origins::parse(Some(&["*".into()]), true).unwrap(), Origins::Any);
    }

    #[test]
    fn bad_lists_are_refused() {
        for bad in [
            vec!["*", "https://a.test"],
            vec!["chat.example.com"],
            vec!["https://a.test/path"],
            vec!["https://user@a.test"],
            vec![""],
        ] {
            let list: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            assert!(Origins::parse(Some(&list), false).is_err(), "{bad:?}");
        }
    }
}
