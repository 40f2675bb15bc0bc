//! Connections to an endpoint: TCP with `TCP_NODELAY`, and TLS over it for `https://`
//! endpoints (feature `tls`; see [`crate::tls::UpstreamTls`]). Both the lean HTTP/1.1
//! exchange and hyper's client run over the one [`UpstreamIo`] type, so pooling, retries,
//! breakers and outlier detection treat a TLS endpoint like any other: a failed handshake
//! or a certificate that does not verify is a connect error.

use crate::error::{ErrorKind, ProxyError};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One connection to an endpoint: plain TCP or TLS over TCP.
#[derive(Debug)]
pub(crate) enum UpstreamIo {
    /// `http://`.
    Tcp(TcpStream),
    /// `https://` (boxed: a TLS session is large, and most connections are plain).
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl From<TcpStream> for UpstreamIo {
    fn from(tcp: TcpStream) -> Self {
        Self::Tcp(tcp)
    }
}

impl UpstreamIo {
    /// Whether the upstream picked HTTP/2 in ALPN (never, over plain TCP).
    pub(crate) fn alpn_is_h2(&self) -> bool {
        match self {
            Self::Tcp(_) => false,
            #[cfg(feature = "tls")]
            Self::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }

    /// Whether an idle connection can take a request: not closed by the upstream and
    /// nothing unasked-for waiting on it. Costs no system call unless the socket is readable.
    pub(crate) fn is_open_and_quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            Self::Tcp(tcp) => match tcp.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                // Readable while idle: closed, or stray bytes (or a stale readiness flag).
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            #[cfg(feature = "tls")]
            Self::Tls(tls) => match tls.get_ref().0.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                // Readable while idle is not a sign of trouble here: a TLS 1.3 server sends
                // its session tickets after the handshake. Let the session read them; only
                // application data (stray bytes), `close_notify` or an error mean "do not reuse".
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    let mut buf = ReadBuf::new(&mut probe);
                    Pin::new(&mut **tls).poll_read(&mut cx, &mut buf).is_pending()
                }
            },
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Self::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Self::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "tls")]
            Self::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Self::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Self::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// A connection being opened (see [`Connector::connect`]).
pub(crate) type ConnectFuture<'a> =
    Pin<Box<dyn std::future::Future<Output = Result<UpstreamIo, ProxyError>> + Send + 'a>>;

/// What a connection to an upstream offers in ALPN (see `UpstreamTlsTarget::handshake`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// The upstream's setting: `h2` for `protocol: h2`, else `http/1.1`.
    Default,
    /// `h2` alone (the HTTP/2 connections of a `protocol: auto` endpoint that picked it).
    H2,
    /// `h2`, then `http/1.1`: the server picks (`protocol: auto` learning what an endpoint speaks).
    Both,
}

/// How to open a connection to one endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    authority: String,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::UpstreamTlsTarget>,
    /// What its TLS connections offer in ALPN (plain TCP has no ALPN).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    offer: Offer,
}

impl Connector {
    /// Plain TCP to `authority` (`host:port`).
    pub(crate) fn tcp(authority: String) -> Self {
        Self {
            authority,
            #[cfg(feature = "tls")]
            tls: None,
            offer: Offer::Default,
        }
    }

    /// TLS to `authority`, verified and introduced as `target` says.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(authority: String, target: crate::tls::UpstreamTlsTarget) -> Self {
        Self { authority, tls: Some(target), offer: Offer::Default }
    }

    /// The same endpoint, its TLS connections offering `offer` in ALPN.
    pub(crate) fn offering(&self, offer: Offer) -> Self {
        Self { offer, ..self.clone() }
    }

    /// `host:port`.
    pub(crate) fn authority(&self) -> &str {
        &self.authority
    }

    /// Whether connections are TLS (and so can agree on a protocol through ALPN).
    pub(crate) fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// A connection to the endpoint: TCP (and the TLS handshake, for `https://`) within
    /// `timeout`. A refused or unreachable port, a failed handshake or a certificate that
    /// does not verify is [`ErrorKind::Connect`]; running out of time is
    /// [`ErrorKind::ConnectTimeout`].
    ///
    /// Boxed: a request's future holds it only while a connection is opened (rarely, with
    /// keep-alive), and inline it would carry the TLS handshake's state in every request's
    /// future, TLS or not (measured: -8% RPS at `wrk -c1000`, where a thousand of them are live).
    pub(crate) fn connect(&self, timeout: Duration) -> ConnectFuture<'_> {
        Box::pin(async move {
            match tokio::time::timeout(timeout, self.open()).await {
                Ok(result) => result,
                Err(_) => Err(ProxyError::new(ErrorKind::ConnectTimeout, None)),
            }
        })
    }

    async fn open(&self) -> Result<UpstreamIo, ProxyError> {
        let tcp = TcpStream::connect(self.authority.as_str())
            .await
            .map_err(|e| ProxyError::new(ErrorKind::Connect, Some(Box::new(e))))?;
        let _ = tcp.set_nodelay(true);
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return tls.handshake(tcp, self.offer).await.map(|s| UpstreamIo::Tls(Box::new(s)));
        }
        Ok(UpstreamIo::Tcp(tcp))
    }
}
