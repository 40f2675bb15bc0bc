//! Why a forward failed, and what the client gets for it.

use nexus_core::{BoxError, ErrorCode, GatewayError};
use std::fmt;

/// Which side failed, as far as the proxy can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The connection to the endpoint could not be opened (refused, unreachable), or its
    /// TLS handshake failed (a certificate that does not verify, no common version).
    Connect,
    /// Opening the connection took longer than `connect_timeout`.
    ConnectTimeout,
    /// The upstream did not answer within the timeout.
    Timeout,
    /// The upstream reset the connection or sent a response that is not HTTP.
    Upstream,
    /// The client's request body failed (aborted, or over the size limit).
    ClientBody,
    /// The request body went over `max_request_body`.
    BodyTooLarge,
    /// Every endpoint is unhealthy or parked.
    NoHealthyEndpoint,
    /// The upstream's `max_concurrent_requests` is reached.
    Overloaded,
    /// The upstream's circuit breaker is open.
    CircuitOpen,
    /// A gRPC request to an upstream that speaks HTTP/1.1 (gRPC needs HTTP/2).
    ProtocolMismatch,
}

impl ErrorKind {
    /// A short name (`connect`, `timeout`, ...): a client span's `error.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::ConnectTimeout => "connect_timeout",
            Self::Timeout => "timeout",
            Self::Upstream => "upstream",
            Self::ClientBody => "client_body",
            Self::BodyTooLarge => "body_too_large",
            Self::NoHealthyEndpoint => "no_healthy_endpoint",
            Self::Overloaded => "overloaded",
            Self::CircuitOpen => "circuit_open",
            Self::ProtocolMismatch => "protocol_mismatch",
        }
    }
}

/// A failed forward: what failed, on which upstream, and the underlying cause.
#[derive(Debug)]
pub struct ProxyError {
    kind: ErrorKind,
    source: Option<BoxError>,
    retry_after: Option<u64>,
}

impl ProxyError {
    pub(crate) fn new(kind: ErrorKind, source: Option<BoxError>) -> Self {
        Self { kind, source, retry_after: None }
    }

    pub(crate) fn circuit_open(retry_after: u64) -> Self {
        Self { kind: ErrorKind::CircuitOpen, source: None, retry_after: Some(retry_after) }
    }

    /// Classify an error from hyper's client connection.
    pub(crate) fn from_hyper(err: hyper::Error) -> Self {
        let kind = if chain(&err).any(nexus_core::body::is_body_too_large) {
            ErrorKind::BodyTooLarge
        } else if err.is_user() || err.is_body_write_aborted() {
            ErrorKind::ClientBody
        } else {
            ErrorKind::Upstream
        };
        Self::new(kind, Some(Box::new(err)))
    }

    /// The client's request body failed while read ahead (413 when over the limit).
    pub(crate) fn client_body(err: BoxError) -> Self {
        let kind = if chain(&*err).any(nexus_core::body::is_body_too_large) {
            ErrorKind::BodyTooLarge
        } else {
            ErrorKind::ClientBody
        };
        Self::new(kind, Some(err))
    }

    /// The `retry_on` condition this failure is, if any: connect errors (and
    /// connect timeouts), response timeouts, broken connections.
    pub fn failure(&self) -> Option<nexus_core::retry::Failure> {
        use nexus_core::retry::Failure;
        match self.kind {
            ErrorKind::Connect | ErrorKind::ConnectTimeout => Some(Failure::Connect),
            ErrorKind::Timeout => Some(Failure::Timeout),
            ErrorKind::Upstream => Some(Failure::Reset),
            _ => None,
        }
    }

    /// What failed.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The connection could not be opened (nothing was sent: always safe to retry).
    pub fn is_connect(&self) -> bool {
        matches!(self.kind, ErrorKind::Connect | ErrorKind::ConnectTimeout)
    }

    /// A timeout, connecting or waiting for the answer.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout | ErrorKind::ConnectTimeout)
    }

    /// The client, not the upstream, caused the failure.
    pub fn is_client(&self) -> bool {
        matches!(self.kind, ErrorKind::ClientBody | ErrorKind::BodyTooLarge)
    }

    /// Seconds for `Retry-After` when the gateway itself refused (no healthy
    /// endpoint, in-flight cap): the client may try again soon.
    pub fn retry_after(&self) -> Option<u64> {
        match self.kind {
            ErrorKind::CircuitOpen => self.retry_after.or(Some(1)),
            ErrorKind::NoHealthyEndpoint | ErrorKind::Overloaded => Some(1),
            _ => None,
        }
    }

    /// The answer the client gets: 502, 503, 504, 413 or 400.
    pub fn to_gateway_error(&self) -> GatewayError {
        match self.kind {
            ErrorKind::Connect => {
                GatewayError::new(ErrorCode::BadGateway).with_message("upstream refused the connection")
            }
            ErrorKind::ConnectTimeout => {
                GatewayError::new(ErrorCode::GatewayTimeout).with_message("timed out connecting to the upstream")
            }
            ErrorKind::Timeout => GatewayError::new(ErrorCode::GatewayTimeout),
            ErrorKind::Upstream => GatewayError::new(ErrorCode::BadGateway),
            ErrorKind::BodyTooLarge => GatewayError::new(ErrorCode::PayloadTooLarge),
            ErrorKind::ClientBody => {
                GatewayError::new(ErrorCode::BadRequest).with_message("the request body could not be read")
            }
            ErrorKind::NoHealthyEndpoint => {
                GatewayError::new(ErrorCode::UpstreamUnavailable).with_message("no healthy endpoint")
            }
            ErrorKind::Overloaded => GatewayError::new(ErrorCode::UpstreamUnavailable)
                .with_message("upstream has too many requests in flight"),
            ErrorKind::CircuitOpen => {
                GatewayError::new(ErrorCode::UpstreamUnavailable).with_message("circuit breaker is open")
            }
            ErrorKind::ProtocolMismatch => GatewayError::new(ErrorCode::UpstreamUnavailable).with_message(
                "gRPC needs HTTP/2 to the upstream, and this upstream speaks HTTP/1.1 (set its protocol to h2 or h2c)",
            ),
        }
    }
}

pub(crate) fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ErrorKind::Connect => "connect error",
            ErrorKind::ConnectTimeout => "connect timeout",
            ErrorKind::Timeout => "upstream timeout",
            ErrorKind::Upstream => "upstream error",
            ErrorKind::ClientBody => "client body error",
            ErrorKind::BodyTooLarge => "request body too large",
            ErrorKind::NoHealthyEndpoint => "no healthy endpoint",
            ErrorKind::Overloaded => "upstream overloaded",
            ErrorKind::CircuitOpen => "circuit open",
            ErrorKind::ProtocolMismatch => "gRPC to an HTTP/1.1 upstream",
        };
        match &self.source {
            Some(s) => {
                write!(f, "{what}: {s}")?;
                let mut cur = s.source();
                while let Some(e) = cur {
                    write!(f, ": {e}")?;
                    cur = e.source();
                }
                Ok(())
            }
            None => f.write_str(what),
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}
