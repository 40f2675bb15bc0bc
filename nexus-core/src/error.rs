//! The JSON error body of SPEC §4, shared by every Nexus crate:
//!
//! ```json
//! {"error": {"status": 429, "code": "rate_limited", "message": "rate limit exceeded", "request_id": "..."}}
//! ```
//!
//! ```
//! use nexus_core::{ErrorCode, GatewayError};
//! let res: http::Response<http_body_util::Full<bytes::Bytes>> =
//!     GatewayError::new(ErrorCode::RouteNotFound).into_response("req-1");
//! assert_eq!(res.status(), 404);
//! assert_eq!(res.headers()["content-type"], "application/json");
//! assert_eq!(res.headers()["x-request-id"], "req-1");
//! ```

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use std::borrow::Cow;
use std::fmt;

/// `X-Request-Id`, lower-cased as `http` stores it.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The error codes of SPEC §4; each has one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 404: no route matches.
    RouteNotFound,
    /// 405: a route matches the path but not the method.
    MethodNotAllowed,
    /// 401: no token, or a token that fails validation.
    Unauthorized,
    /// 403: a valid token without a required claim.
    Forbidden,
    /// 429: rate limit exceeded.
    RateLimited,
    /// 503: circuit open, no healthy endpoint, or the in-flight cap reached.
    UpstreamUnavailable,
    /// 502: upstream refused, reset, or answered badly.
    BadGateway,
    /// 504: upstream or request timed out.
    GatewayTimeout,
    /// 413: request body over the limit.
    PayloadTooLarge,
    /// 431: request headers over the limit.
    HeadersTooLarge,
    /// 400: malformed request.
    BadRequest,
    /// 503: the gateway is draining.
    ShuttingDown,
    /// 500: a bug in the gateway (a caught panic).
    Internal,
    /// 501: a transfer coding the gateway does not implement (anything but `chunked`).
    NotImplemented,
}

impl ErrorCode {
    /// The HTTP status.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamUnavailable | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The machine-readable `code` field.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RouteNotFound => "route_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::BadGateway => "bad_gateway",
            Self::GatewayTimeout => "gateway_timeout",
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::BadRequest => "bad_request",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal_error",
            Self::NotImplemented => "not_implemented",
        }
    }

    /// The default human-readable message.
    pub const fn default_message(self) -> &'static str {
        match self {
            Self::RouteNotFound => "no route matches the request",
            Self::MethodNotAllowed => "method not allowed on this path",
            Self::Unauthorized => "authentication required",
            Self::Forbidden => "token lacks a required claim",
            Self::RateLimited => "rate limit exceeded",
            Self::UpstreamUnavailable => "upstream unavailable",
            Self::BadGateway => "upstream failed to answer",
            Self::GatewayTimeout => "upstream timed out",
            Self::PayloadTooLarge => "request body too large",
            Self::HeadersTooLarge => "request headers too large",
            Self::BadRequest => "malformed request",
            Self::ShuttingDown => "gateway is shutting down",
            Self::Internal => "internal gateway error",
            Self::NotImplemented => "transfer coding not implemented",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error the gateway answers itself, rendered as the JSON body of SPEC §4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    code: ErrorCode,
    message: Cow<'static, str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    status: u16,
    code: &'static str,
    message: &'a str,
    request_id: &'a str,
}

impl GatewayError {
    /// An error with the code's default message.
    pub const fn new(code: ErrorCode) -> Self {
        Self { code, message: Cow::Borrowed(code.default_message()) }
    }

    /// Replace the message.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = message.into();
        self
    }

    /// The code.
    pub const fn code(&self) -> ErrorCode {
        self.code
    }

    /// The HTTP status.
    pub const fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON body, with `request_id` as given.
    pub fn to_json(&self, request_id: &str) -> Bytes {
        let body = Body {
            error: Inner {
                status: self.code.status().as_u16(),
                code: self.code.as_str(),
                message: &self.message,
                request_id,
            },
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// The response: status, `Content-Type: application/json`, `X-Request-Id` and the body.
    /// The error itself rides along in the response's extensions, so a later step can tell
    /// the gateway's own answers from an upstream's (a gRPC request gets them as
    /// [`crate::grpc::trailers_only`] responses).
    pub fn into_response<B: From<Bytes>>(self, request_id: &str) -> Response<B> {
        let mut res = Response::new(B::from(self.to_json(request_id)));
        *res.status_mut() = self.code.status();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert(REQUEST_ID, v);
        }
        res.extensions_mut().insert(self);
        res
    }

    /// Like [`into_response`](Self::into_response), reading the request id from the request's headers.
    pub fn into_response_for<B: From<Bytes>>(self, request_headers: &http::HeaderMap) -> Response<B> {
        let id = request_headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
        self.into_response(id)
    }
}

impl From<ErrorCode> for GatewayError {
    fn from(code: ErrorCode) -> Self {
        Self::new(code)
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_matches_spec_shape_and_escapes() {
        let e = GatewayError::new(ErrorCode::RateLimited);
        let v: serde_json::Value = serde_json::from_slice(&e.to_json("a\"b")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"status": 429, "code": "rate_limited",
                "message": "rate limit exceeded", "request_id": "a\"b"}})
        );
    }

    #[test]
    fn every_code_has_a_distinct_name() {
        use ErrorCode::*;
        let all = [
            RouteNotFound,
            MethodNotAllowed,
            Unauthorized,
            Forbidden,
            RateLimited,
            UpstreamUnavailable,
            BadGateway,
            GatewayTimeout,
            PayloadTooLarge,
            HeadersTooLarge,
            BadRequest,
            ShuttingDown,
            Internal,
            NotImplemented,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), all.len());
        assert_eq!(HeadersTooLarge.status(), 431);
        assert_eq!(ShuttingDown.status(), 503);
    }
}
