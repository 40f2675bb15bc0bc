//! Fetching a JWKS over HTTP(S): hyper's pooled client with rustls (webpki
//! roots), a timeout, a size cap, and the `Cache-Control: max-age` it answers.
//! Only with the `jwks-url` feature; without it a JWKS URL is a build error that
//! names the feature.

use super::keys::KeySet;
use http::Uri;
use std::time::Duration;
#[cfg(feature = "jwks-url")]
use {
    bytes::Bytes,
    http::{Request, StatusCode, header},
    http_body_util::{BodyExt, Empty, Limited},
    hyper_rustls::HttpsConnector,
    hyper_util::client::legacy::Client,
    hyper_util::client::legacy::connect::HttpConnector,
    hyper_util::rt::TokioExecutor,
};

/// Largest JWKS document accepted.
#[cfg(feature = "jwks-url")]
const MAX_JWKS_BYTES: usize = 1 << 20;

#[cfg(feature = "jwks-url")]
pub(crate) struct Fetcher {
    url: Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

#[cfg(feature = "jwks-url")]
impl Fetcher {
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let url: Uri = url.parse().map_err(|e| format!("invalid JWKS URL {url:?}: {e}"))?;
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self { url, client, timeout })
    }

    pub(crate) fn url(&self) -> &Uri {
        &self.url
    }

    /// The key set and the `max-age` the server gave it.
    pub(crate) async fn fetch(&self) -> Result<(KeySet, Option<Duration>), String> {
        let req = Request::get(self.url.clone())
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let res = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| format!("no answer from {} within {:?}", self.url, self.timeout))?
            .map_err(|e| format!("cannot fetch {}: {e}", self.url))?;
        if res.status() != StatusCode::OK {
            return Err(format!("{} answered {}", self.url, res.status()));
        }
        let max_age = res.headers().get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).and_then(max_age);
        let body = tokio::time::timeout(self.timeout, Limited::new(res.into_body(), MAX_JWKS_BYTES).collect())
            .await
            .map_err(|_| format!("{} did not send the key set within {:?}", self.url, self.timeout))?
            .map_err(|e| format!("cannot read the key set from {}: {e}", self.url))?
            .to_bytes();
        Ok((KeySet::jwks(&body)?, max_age))
    }
}

/// Without the `jwks-url` feature there is nothing to fetch with: no value of this type exists.
#[cfg(not(feature = "jwks-url"))]
pub(crate) enum Fetcher {}

#[cfg(not(feature = "jwks-url"))]
impl Fetcher {
    pub(crate) fn new(url: &str, _timeout: Duration) -> Result<Self, String> {
        Err(format!("fetching the JWKS URL {url:?} needs nexus-middleware's `jwks-url` feature"))
    }

    pub(crate) fn url(&self) -> &Uri {
        match *self {}
    }

    #[allow(clippy::unused_async)]
    pub(crate) async fn fetch(&self) -> Result<(KeySet, Option<Duration>), String> {
        match *self {}
    }
}

/// `max-age=N` from a `Cache-Control` value (`no-store`/`no-cache` mean 0).
#[cfg_attr(not(feature = "jwks-url"), allow(dead_code))]
fn max_age(v: &str) -> Option<Duration> {
    v.split(',').map(str::trim).find_map(|d| {
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        let (k, n) = d.split_once('=')?;
        k.trim().eq_ignore_ascii_case("max-age").then(|| n.trim().parse().ok().map(Duration::from_secs))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(max_age("public, max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
