//! `protocol: auto` on an `https://` endpoint: HTTP/2 when the endpoint picks `h2` in ALPN,
//! HTTP/1.1 otherwise (Envoy's `auto_config`, per endpoint).
//!
//! The first request to the endpoint opens one connection offering `h2` and `http/1.1`, and
//! the server's pick decides how every later request goes: over the endpoint's multiplexed
//! HTTP/2 connections (which then offer `h2` alone) or over its HTTP/1.1 pool (`http/1.1`
//! alone). That first connection is kept, in the pool its protocol belongs to. If an HTTP/2
//! connection can no longer be opened (the server stopped offering `h2`, or is down), the
//! choice is forgotten and the next request learns again. Plain `http://` endpoints have no
//! ALPN: `auto` is HTTP/1.1 there (`h2c` says HTTP/2 with prior knowledge).

use crate::connect::Offer;
use crate::error::ProxyError;
use crate::h2::H2Pool;
use crate::http1::RawConn;
use crate::pool::EndpointPool;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// What an `auto` endpoint was found to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spoken {
    /// Not known yet: the next request learns it.
    Unknown = 0,
    /// The server picked `http/1.1` (or nothing) in ALPN.
    Http1 = 1,
    /// The server picked `h2`.
    H2 = 2,
}

/// The protocol an `auto` endpoint speaks, learned from ALPN.
#[derive(Debug)]
pub(crate) struct Learned {
    spoken: AtomicU8,
    /// Held while the protocol is learned: a burst of first requests opens one connection.
    learning: tokio::sync::Mutex<()>,
}

impl Learned {
    pub(crate) fn new() -> Self {
        Self { spoken: AtomicU8::new(Spoken::Unknown as u8), learning: tokio::sync::Mutex::new(()) }
    }

    /// What the endpoint speaks, as far as is known.
    pub(crate) fn now(&self) -> Spoken {
        match self.spoken.load(Ordering::Acquire) {
            1 => Spoken::Http1,
            2 => Spoken::H2,
            _ => Spoken::Unknown,
        }
    }

    /// Forget the choice: the next request learns again.
    pub(crate) fn forget(&self) {
        self.spoken.store(Spoken::Unknown as u8, Ordering::Release);
    }

    /// Learn what the endpoint speaks (unless another request just did): one connection
    /// offering both protocols, kept in `h2` or `http1` as the server picks.
    pub(crate) async fn learn<B>(
        &self,
        http1: &EndpointPool<B>,
        h2: &H2Pool<B>,
        timeout: Duration,
    ) -> Result<Spoken, ProxyError>
    where
        B: http_body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<nexus_core::BoxError>,
    {
        let _one_at_a_time = self.learning.lock().await;
        let known = self.now();
        if known != Spoken::Unknown {
            return Ok(known);
        }
        let both = http1.connector().offering(Offer::Both);
        let io = both.connect(timeout).await?;
        let spoken = if io.alpn_is_h2() {
            h2.adopt(io).await?;
            Spoken::H2
        } else {
            http1.checkin_raw(RawConn::new(io));
            Spoken::Http1
        };
        tracing::debug!(endpoint = %both.authority(), ?spoken, "learned what the endpoint speaks (ALPN)");
        self.spoken.store(spoken as u8, Ordering::Release);
        Ok(spoken)
    }
}
