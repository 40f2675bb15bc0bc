//! Retries of one upstream, run by the [`RetryLoop`] that `RetryLayer` runs too: each retry
//! is decided by [`Retries::next`] (policy, budget, deadline, counter). What is the
//! upstream's own is its [`Tries`]: where a try goes (an endpoint not tried yet), and that
//! the head is borrowed by every try (no copy per try for a request without a body).

use super::{ClientInfo, Outgoing, Upstream, deadline_from, to_origin_form};
use crate::body::UpstreamBody;
use crate::error::ProxyError;
use crate::headers::{self, HeadScan};
use crate::replay::SendBody;
use futures_util::FutureExt;
use futures_util::future::Either;
use http::{Request, Response};
use http_body::Body;
use nexus_core::BoxError;
use nexus_core::retry::Outcome;
use nexus_middleware::retry::{Retries, RetryLoop, Tries};
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

impl<B> Upstream<B>
where
    B: Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Idempotent requests with a `retry` block: the body is read ahead (up to
    /// 64 KiB) so it can be sent again; retries wait a jittered backoff (or the
    /// upstream's `Retry-After`, when not longer than `max_delay`), go to an
    /// endpoint not tried yet when there is one, stay within the request's
    /// `timeout`, and only while the upstream's retry budget allows.
    pub(super) fn forward_with_retries<'a>(
        &'a self,
        req: Request<SendBody<B>>,
        scan: HeadScan,
        client: &'a ClientInfo,
        timeout: Duration,
        retry: &'a Retries,
    ) -> impl Future<Output = Result<Response<UpstreamBody<B>>, ProxyError>> + 'a {
        // One clock read for the request: the budget's deposit, and its deadline.
        let deadline = deadline_from(retry.begin(), timeout);
        let (mut parts, body) = req.into_parts();
        if scan.framed || !body.is_end_stream() {
            // A body to read ahead first: boxed, so a GET's future stays small.
            return Either::Left(Box::pin(self.retries_with_body(parts, body, scan, client, deadline, retry)));
        }
        // Nothing to send but the head (a GET, mostly): it is made ready for the wire once
        // and every try borrows it, instead of a copy of the head per try.
        to_origin_form(&mut parts, scan.host);
        if scan.names_others {
            headers::remove_hop_by_hop(&mut parts.headers, false);
        }
        Either::Right(async move { self.retry_loop(&parts, None, scan, client, deadline, retry).await })
    }

    /// [`forward_with_retries`](Self::forward_with_retries) for a request with a body.
    async fn retries_with_body(
        &self,
        mut parts: http::request::Parts,
        body: SendBody<B>,
        scan: HeadScan,
        client: &ClientInfo,
        deadline: tokio::time::Instant,
        retry: &Retries,
    ) -> Result<Response<UpstreamBody<B>>, ProxyError> {
        let replay = match body.replayable().await? {
            Ok(replay) => replay,
            // Too large to keep: sent once, never retried.
            Err(once) => {
                let once = Request::from_parts(parts, once);
                return self.attempt(Outgoing::Owned(once, scan), client, deadline, 0, (0, scan.sampled)).await.0;
            }
        };
        // An empty body after all (chunked with no data): the head alone, borrowed per try.
        let lean = !scan.framed && replay.body::<B>().is_end_stream();
        if lean {
            to_origin_form(&mut parts, scan.host);
            if scan.names_others {
                headers::remove_hop_by_hop(&mut parts.headers, false);
            }
        }
        self.retry_loop(&parts, (!lean).then_some(&replay), scan, client, deadline, retry).await
    }

    /// Try, and try again while the policy, the deadline and the budget allow (the one
    /// [`RetryLoop`] that `RetryLayer` runs too). `replay`: the body to send with each try;
    /// without it `parts` is a head ready for the wire.
    fn retry_loop<'s>(
        &'s self,
        parts: &'s http::request::Parts,
        replay: Option<&'s crate::replay::Replay>,
        scan: HeadScan,
        client: &'s ClientInfo,
        deadline: tokio::time::Instant,
        retry: &'s Retries,
    ) -> impl Future<Output = Result<Response<UpstreamBody<B>>, ProxyError>> + 's {
        let start = move |avoid, retries| {
            let out = match replay {
                None => Outgoing::Lean(parts),
                Some(replay) => Outgoing::Owned(rebuild(parts, replay.body()), scan),
            };
            self.attempt(out, client, deadline, avoid, (retries, scan.sampled))
        };
        let tries = EndpointTries { start, avoid: 0, body: PhantomData };
        RetryLoop::new(tries, retry, Some(deadline)).map(|(result, _)| result)
    }
}

/// An upstream's tries of one request: each goes to an endpoint not tried yet, while a
/// healthy one is left. `start(avoid, retries)` sends a try, avoiding the endpoints of the
/// bitmask `avoid`, and gives its answer and the endpoint it went to.
struct EndpointTries<S, B> {
    start: S,
    /// The endpoints tried (bit `i`: endpoint `i`; the first 64 are told apart).
    avoid: u64,
    body: PhantomData<fn() -> B>,
}

impl<S, F, B> Tries for EndpointTries<S, B>
where
    S: FnMut(u64, u32) -> F,
    F: Future<Output = (Result<Response<UpstreamBody<B>>, ProxyError>, Option<usize>)>,
{
    type Output = F::Output;
    type Future = F;

    fn start(&mut self, retries: u32) -> F {
        (self.start)(self.avoid, retries)
    }

    fn outcome<'o>(&mut self, (result, endpoint): &'o Self::Output) -> Option<Outcome<'o>> {
        if let Some(i) = endpoint.filter(|i| *i < 64) {
            self.avoid |= 1 << i;
        }
        match result {
            Ok(res) => Some(Outcome::Answered(res.status().as_u16(), res.headers())),
            // The gateway's own refusals (circuit open, no healthy endpoint, the client's
            // body) are never retried.
            Err(e) => e.failure().map(|failure| Outcome::Failed(Some(failure))),
        }
    }
}

/// The same request again, with a fresh copy of the body.
pub(crate) fn rebuild<T>(parts: &http::request::Parts, body: T) -> Request<T> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}
