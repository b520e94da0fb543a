//! Fetching a JWKS from a URL (`http://` or `https://`, Mozilla's roots):
//! one `GET` with `If-None-Match`, bounded in time and size, so an
//! identity provider's key set can be followed without a restart.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A key set larger than this is refused.
const MAX_BYTES: usize = 1 << 20;

/// Time one fetch may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Fetcher {
    url: Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

pub enum Fetched {
    /// The set's text, and its `ETag` if the server gave one.
    Changed { text: String, etag: Option<String> },
    /// 304: the set is the one last fetched.
    NotModified,
}

/// Whether `source` names a URL rather than a file.
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

impl Fetcher {
    pub fn new(url: &str) -> Result<Fetcher, String> {
        let url: Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if url.host().is_none() {
            return Err(format!("{url} has no host"));
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Fetcher {
            url,
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// Fetches the set unless it still has `etag`.
    pub async fn fetch(&self, etag: Option<&str>) -> Result<Fetched, String> {
        let mut req = Request::get(self.url.clone()).header(header::ACCEPT, "application/json");
        if let Some(tag) = etag {
            req = req.header(header::IF_NONE_MATCH, tag);
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let fetch = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("GET {}: {e}", self.url))?;
            match resp.status() {
                StatusCode::NOT_MODIFIED => return Ok(Fetched::NotModified),
                StatusCode::OK => {}
                s => return Err(format!("GET {}: {s}", self.url)),
            }
            let etag = resp
                .headers()
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let body = Limited::new(resp.into_body(), MAX_BYTES)
                .collect()
                .await
                .map_err(|e| format!("GET {}: body: {e} (at most {MAX_BYTES} bytes)", self.url))?
                .to_bytes();
            let text = String::from_utf8(body.to_vec()).map_err(|_| format!("GET {}: not UTF-8", self.url))?;
            Ok(Fetched::Changed { text, etag })
        };
        tokio::time::timeout(TIMEOUT, fetch)
            .await
            .map_err(|_| format!("GET {}: no answer in {TIMEOUT:?}", self.url))?
    }
}
