//! `X-Request-Id` (SPEC §8): a client's id is kept when it is 1–128 visible
//! ASCII characters (0x21–0x7E); otherwise a new UUID v4 replaces it. The id
//! goes on the request (so the upstream and error bodies see it) and on the
//! response.
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt};
//! use nexus_middleware::RequestIdLayer;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RequestIdLayer::new())
//!     .service_fn(|req: http::Request<()>| async move {
//!         // The inner service always sees an id.
//!         assert!(req.headers().contains_key("x-request-id"));
//!         Ok::<_, std::convert::Infallible>(http::Response::new(()))
//!     });
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"].len(), 36);
//! # }
//! ```

use http::{HeaderMap, HeaderValue, Request, Response};
use nexus_core::error::REQUEST_ID;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Whether a client's request id may be kept: 1–128 bytes, each 0x21–0x7E.
pub fn is_valid(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len()) && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// A new random id (UUID v4, lower-case, hyphenated).
///
/// The 122 random bits come from `rand`'s thread-local generator (ChaCha12, seeded from the
/// OS and reseeded as it goes): unique, and not guessable from earlier ids, without a
/// system call or a lock per request. (It makes 256 bytes at a time, 16 ids' worth.)
pub fn generate() -> HeaderValue {
    // One u128 (four words of the block), not sixteen u8 draws; `uuid` sets the version and
    // variant bits.
    let random = rand::random::<u128>().to_le_bytes();
    let id = *uuid::Builder::from_random_bytes(random).into_uuid().as_bytes();
    // 8-4-4-4-12 digits from the hex table: ~40 instructions where `uuid`'s formatter took 177.
    let mut buf = [b'-'; uuid::fmt::Hyphenated::LENGTH];
    let hex = crate::hex::encode;
    hex(&id[..4], &mut buf[..8]);
    hex(&id[4..6], &mut buf[9..13]);
    hex(&id[6..8], &mut buf[14..18]);
    hex(&id[8..10], &mut buf[19..23]);
    hex(&id[10..], &mut buf[24..]);
    crate::hex::header_value(buf)
}

/// Make sure `headers` carries a valid `X-Request-Id` and return it.
///
/// ```
/// let mut h = http::HeaderMap::new();
/// h.insert("x-request-id", "bad id with spaces".parse().unwrap());
/// let id = nexus_middleware::request_id::ensure(&mut h);
/// assert_ne!(id, "bad id with spaces");
/// assert_eq!(h["x-request-id"], id);
/// ```
pub fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    // One hash of the name for the lookup and the write (an entry, not `get_all` + `insert`).
    match headers.entry(REQUEST_ID) {
        http::header::Entry::Occupied(mut o) => {
            let mut ids = o.iter();
            if let (Some(v), None) = (ids.next(), ids.next())
                && is_valid(v)
            {
                return v.clone();
            }
            // Invalid, or more than one: replaced by a single new id.
            let id = generate();
            o.insert(id.clone());
            id
        }
        http::header::Entry::Vacant(v) => v.insert(generate()).clone(),
    }
}

/// Adds [`RequestId`] to a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer {
    _priv: (),
}

impl RequestIdLayer {
    /// The layer.
    pub const fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

/// Ensures every request and its response carry `X-Request-Id`.
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

inner_service_accessors!(RequestId);

impl<S, B, ResB> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = ensure(req.headers_mut());
        ResponseFuture { inner: self.inner.call(req), id: Some(id) }
    }
}

pin_project! {
    /// Response future of [`RequestId`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            res.headers_mut().insert(REQUEST_ID, id);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{ServiceBuilder, ServiceExt};

    async fn roundtrip(id: Option<&[u8]>) -> (String, String) {
        let svc = ServiceBuilder::new().layer(RequestIdLayer::new()).service_fn(|req: Request<()>| async move {
            let seen = req.headers()[REQUEST_ID].to_str().unwrap().to_string();
            Ok::<_, std::convert::Infallible>(Response::new(seen))
        });
        let mut req = Request::new(());
        if let Some(id) = id {
            req.headers_mut().insert(REQUEST_ID, HeaderValue::from_bytes(id).unwrap());
        }
        let res = svc.oneshot(req).await.unwrap();
        let on_response = res.headers()[REQUEST_ID].to_str().unwrap().to_string();
        (res.into_body(), on_response)
    }

    #[tokio::test]
    async fn valid_client_id_is_kept_on_request_and_response() {
        let (seen, returned) = roundtrip(Some(b"abc-123_XYZ")).await;
        assert_eq!(seen, "abc-123_XYZ");
        assert_eq!(returned, "abc-123_XYZ");
    }

    #[tokio::test]
    async fn invalid_or_missing_ids_are_replaced_by_a_uuid() {
        let long = [b'a'; 129];
        for id in [None, Some(&b"has space"[..]), Some(&long[..]), Some(&b"\xe9t\xe9"[..])] {
            let (seen, returned) = roundtrip(id).await;
            assert_eq!(seen, returned);
            assert!(uuid::Uuid::parse_str(&seen).is_ok_and(|u| u.get_version_num() == 4), "{seen}");
        }
        let edge = [b'~'; 128];
        assert_eq!(roundtrip(Some(&edge)).await.0.len(), 128);
    }

    #[test]
    fn two_client_ids_are_replaced_by_one_new_id() {
        // Which one would be the request's? Neither: a new id, and only it, goes upstream.
        let mut h = http::HeaderMap::new();
        h.append(REQUEST_ID, HeaderValue::from_static("first"));
        h.append(REQUEST_ID, HeaderValue::from_static("second"));
        let id = ensure(&mut h);
        assert!(uuid::Uuid::parse_str(id.to_str().unwrap()).is_ok(), "{id:?}");
        assert_eq!(h.get_all(REQUEST_ID).iter().collect::<Vec<_>>(), [&id]);
    }

    #[test]
    fn generated_ids_are_distinct_across_threads() {
        let threads: Vec<_> =
            (0..4).map(|_| std::thread::spawn(|| (0..20_000).map(|_| generate()).collect::<Vec<_>>())).collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                let text = id.to_str().unwrap();
                let uuid = uuid::Uuid::parse_str(text).unwrap();
                assert_eq!(uuid.get_version(), Some(uuid::Version::Random), "{text}");
                assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{text}");
                // The canonical form: lower case, hyphens at 8-4-4-4-12.
                assert_eq!(uuid.hyphenated().to_string(), text);
                assert!(all.insert(id), "an id came twice");
            }
        }
        assert_eq!(all.len(), 80_000);
    }
}
