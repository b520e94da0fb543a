//! The demo chat page (`GATEWAY_DEMO`, on by default): `GET /` is
//! `assets/demo/index.html`, `GET /demo/<file>` any other file there.
//!
//! The files are built from `clients/demo` (on the TypeScript client in
//! `clients/js`) and committed, then embedded at compile time, so the
//! binary serves the page with no Node.js and nothing on disk. Every
//! answer carries an `ETag` (revalidated with `If-None-Match`, as the files
//! change only with the binary) and a Content-Security-Policy that allows
//! the page's own scripts and styles and WebSockets to any gateway.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use include_dir::{Dir, include_dir};

static ASSETS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/assets/demo");

/// The page loads only its own files; it may open WebSockets to other
/// gateways (`?gateways=`), and cannot be framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    body: Bytes,
    etag: HeaderValue,
    content_type: &'static str,
}

/// Every embedded file by its URL path.
fn assets() -> &'static HashMap<String, Asset> {
    static MAP: OnceLock<HashMap<String, Asset>> = OnceLock::new();
    MAP.get_or_init(|| {
        ASSETS
            .files()
            .map(|f| {
                let name = f.path().to_string_lossy().into_owned();
                let url = if name == "index.html" {
                    "/".to_owned()
                } else {
                    format!("/demo/{name}")
                };
                let mut h = std::collections::hash_map::DefaultHasher::new();
                f.contents().hash(&mut h);
                let etag = HeaderValue::from_str(&format!("\"{:016x}\"", h.finish())).expect("hex is a header value");
                let asset = Asset {
                    body: Bytes::from_static(f.contents()),
                    etag,
                    content_type: content_type(&name),
                };
                (url, asset)
            })
            .collect()
    })
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") | Some("map") => "application/json",
        _ => "application/octet-stream",
    }
}

/// The answer for a GET or HEAD of an embedded file; `None`: not one.
pub(crate) fn serve<B>(req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let asset = assets().get(req.uri().path())?;
    let fresh = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|v| v == asset.etag || v == "*");
    let builder = Response::builder()
        .header(header::ETAG, asset.etag.clone())
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::CONTENT_SECURITY_POLICY, CSP);
    let response = if fresh {
        builder.status(StatusCode::NOT_MODIFIED).body(Full::new(Bytes::new()))
    } else {
        let body = if req.method() == Method::HEAD {
            Bytes::new()
        } else {
            asset.body.clone()
        };
        builder
            .header(header::CONTENT_TYPE, asset.content_type)
            .header(header::CONTENT_LENGTH, asset.body.len())
            .body(Full::new(body))
    };
    Some(response.expect("static response parts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, etag: Option<&HeaderValue>) -> Option<Response<Full<Bytes>>> {
        let mut req = Request::get(path);
        if let Some(e) = etag {
            req = req.header(header::IF_NONE_MATCH, e);
        }
        serve(&req.body(()).unwrap())
    }

    #[test]
    fn the_page_is_at_the_root_and_revalidates_by_etag() {
        let page = get("/", None).expect("index.html is embedded");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let etag = page.headers()[header::ETAG].clone();
        let again = get("/", Some(&etag)).unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(get("/index.html", None).is_none(), "the page has one address");
        assert!(get("/demo/../Cargo.toml", None).is_none());
        assert!(get("/demo/nothing.js", None).is_none());
    }

    #[test]
    fn every_file_the_page_names_is_embedded() {
        let page = std::str::from_utf8(ASSETS.get_file("index.html").unwrap().contents()).unwrap();
        let mut named = 0;
        for part in page.split("\"/demo/").skip(1) {
            let file = &part[..part.find('"').unwrap()];
            assert!(
                get(&format!("/demo/{file}"), None).is_some(),
                "{file} is named by index.html but not embedded"
            );
            named += 1;
        }
        assert!(named > 0, "index.html names its script and style under /demo/");
    }
}
