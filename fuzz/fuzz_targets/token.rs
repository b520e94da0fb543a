//! The JWT path: `gateway::auth::Authenticator`, built from settings the
//! way the node builds it (`--jwt-secret`, HS256; and once more with
//! `--jwt-audience` and `--jwt-issuer`), verifying tokens that are either
//! any text or structurally valid JWTs signed with the same secret whose
//! header and claims come from the fuzz input.
//!
//! It never panics, and a token it accepts always yields a user id that is
//! 1 to 256 bytes with no control characters (`protocol::user`'s rule), and
//! was signed as HS256 (the pinned algorithm) with an `exp`; with the
//! audience and issuer configured, it carried both.

#![no_main]

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway::auth::Authenticator;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

const SECRET: &str = "fuzz-secret-0123456789abcdef";
const AUDIENCE: &str = "chat";
const ISSUER: &str = "https://issuer.test";

fn authenticator(flags: &[&str]) -> Authenticator {
    let mut args = vec!["gateway", "--jwt-secret", SECRET];
    args.extend(flags);
    let settings = gateway::Config::load(args)
        .expect("flags")
        .validate()
        .expect("settings");
    Authenticator::new(&settings)
}

/// Checks that the harness reaches acceptance: a plain good token passes.
fn accepts(auth: Authenticator, claims: &str) -> Authenticator {
    let good = sign(r#"{"alg":"HS256","typ":"JWT"}"#, claims);
    let who = auth.authenticate(Some(&good)).expect("a good token is accepted");
    assert_eq!(&*who.user, "u1");
    auth
}

static PLAIN: LazyLock<Authenticator> =
    LazyLock::new(|| accepts(authenticator(&[]), &format!(r#"{{"sub":"u1","exp":{}}}"#, now() + 3600)));

static AUD_ISS: LazyLock<Authenticator> = LazyLock::new(|| {
    accepts(
        authenticator(&["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER]),
        &format!(
            r#"{{"sub":"u1","exp":{},"aud":"{AUDIENCE}","iss":"{ISSUER}"}}"#,
            now() + 3600
        ),
    )
});

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `header.claims.signature`, HS256 under [`SECRET`].
fn sign(header: &str, claims: &str) -> String {
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("HMAC signs");
    format!("{message}.{signature}")
}

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any text as the token.
    Raw(String),
    /// A token signed with the secret.
    Signed {
        header: Header,
        claims: Vec<(Key, Val)>,
        /// Appended to the signed token.
        tail: Option<String>,
    },
}

#[derive(Arbitrary, Debug)]
enum Header {
    Hs256,
    Hs256Typ,
    Alg(String),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Key {
    Sub,
    Exp,
    Nbf,
    Iat,
    Aud,
    Iss,
    Rooms,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    /// An hour from now.
    Soon,
    /// An hour ago.
    Past,
    Strs(Vec<String>),
    /// Text put in as it is (valid JSON or not).
    Raw(String),
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

impl Header {
    fn json(&self) -> String {
        match self {
            Header::Hs256 => r#"{"alg":"HS256"}"#.to_string(),
            Header::Hs256Typ => r#"{"alg":"HS256","typ":"JWT"}"#.to_string(),
            Header::Alg(alg) => format!(r#"{{"alg":{}}}"#, json_str(alg)),
            Header::Raw(raw) => raw.clone(),
        }
    }
}

impl Key {
    fn json(&self) -> String {
        let name = match self {
            Key::Sub => "sub",
            Key::Exp => "exp",
            Key::Nbf => "nbf",
            Key::Iat => "iat",
            Key::Aud => "aud",
            Key::Iss => "iss",
            Key::Rooms => "rooms",
            Key::Other(other) => other,
        };
        json_str(name)
    }
}

impl Val {
    fn json(&self) -> String {
        match self {
            Val::Str(s) => json_str(s),
            Val::Int(n) => n.to_string(),
            Val::Float(f) => serde_json::to_string(f).expect("a float serialises"),
            Val::Bool(b) => b.to_string(),
            Val::Null => "null".to_string(),
            Val::Soon => (now() + 3600).to_string(),
            Val::Past => (now() - 3600).to_string(),
            Val::Strs(v) => serde_json::to_string(v).expect("strings serialise"),
            Val::Raw(raw) => raw.clone(),
        }
    }
}

/// The header field checked, as serde_json reads it. Fields not named
/// here are skipped unread, as jsonwebtoken skips them (a number beyond
/// f64 in one is no concern); a field given twice is an error, as it is
/// for jsonwebtoken.
#[derive(Deserialize, Debug)]
struct HeaderSeen {
    alg: Option<Value>,
}

/// The claims every accepted token has, read as [`HeaderSeen`] is.
#[derive(Deserialize, Debug)]
struct ClaimsSeen {
    sub: Option<Value>,
    exp: Option<Value>,
}

/// The claims checked when the audience and issuer are configured (when
/// they are not, jsonwebtoken ignores them, whatever they hold).
#[derive(Deserialize, Debug)]
struct AudIssSeen {
    aud: Option<Value>,
    iss: Option<Value>,
}

fuzz_target!(|input: Input| {
    let (token, signed) = match &input {
        Input::Raw(token) => (token.clone(), None),
        Input::Signed { header, claims, tail } => {
            let fields: Vec<String> = claims
                .iter()
                .map(|(k, v)| format!("{}:{}", k.json(), v.json()))
                .collect();
            let (header, claims) = (header.json(), format!("{{{}}}", fields.join(",")));
            let mut token = sign(&header, &claims);
            if let Some(tail) = tail {
                token.push_str(tail);
            }
            (token, Some((header, claims)))
        }
    };
    for (auth, aud_iss) in [(&*PLAIN, false), (&*AUD_ISS, true)] {
        let Ok(identity) = auth.authenticate(Some(&token)) else {
            continue;
        };
        let user = &*identity.user;
        assert!(!user.is_empty() && user.len() <= 256, "user id of {} bytes", user.len());
        assert!(
            !user.chars().any(char::is_control),
            "control character in user id {user:?}"
        );
        assert!(protocol::user::is_valid_user_id(user), "{user:?}");
        // What was signed, as serde_json reads it (a raw token passing would
        // mean a forged signature).
        let (header, claims) = signed.as_ref().expect("only tokens signed here pass");
        let header: HeaderSeen = serde_json::from_str(header).expect("an accepted header is JSON");
        assert_eq!(header.alg, Some(Value::from("HS256")), "{header:?}");
        let seen: ClaimsSeen = serde_json::from_str(claims).expect("accepted claims are JSON");
        assert_eq!(seen.sub, Some(Value::from(user)), "{seen:?}");
        assert!(seen.exp.as_ref().is_some_and(Value::is_number), "{seen:?}");
        if aud_iss {
            let seen: AudIssSeen = serde_json::from_str(claims).expect("accepted aud and iss are JSON");
            let aud_ok = match &seen.aud {
                Some(Value::String(a)) => a == AUDIENCE,
                Some(Value::Array(all)) => all.iter().any(|a| a == AUDIENCE),
                _ => false,
            };
            assert!(aud_ok, "audience not {AUDIENCE}: {seen:?}");
            assert_eq!(seen.iss, Some(Value::from(ISSUER)), "{seen:?}");
        }
    }
});
