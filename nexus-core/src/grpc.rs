//! gRPC clients cannot read the JSON error body of SPEC §4: a gRPC request
//! (`content-type: application/grpc*`) gets every answer the gateway makes itself as a
//! *trailers-only* gRPC response instead (SPEC §9): HTTP 200, `content-type:
//! application/grpc`, `grpc-status` mapped from the HTTP status, `grpc-message` the JSON
//! body's message (percent-encoded), no body; `X-Request-Id` and the other headers stay.
//!
//! The gateway's own answers are told apart from an upstream's by the [`GatewayError`] that
//! [`GatewayError::into_response`] leaves in the response's extensions; [`trailers_only`]
//! rewrites exactly those, so an upstream's own gRPC answers pass untouched.
//!
//! ```
//! use nexus_core::{ErrorCode, GatewayError, grpc};
//! let req = http::Request::post("/pkg.Svc/Call").header("content-type", "application/grpc+proto").body(()).unwrap();
//! assert!(grpc::is_grpc(req.headers()));
//! let res: http::Response<http_body_util::Full<bytes::Bytes>> =
//!     GatewayError::new(ErrorCode::Unauthorized).into_response("req-1");
//! let res = grpc::trailers_only(res);
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.headers()["grpc-status"], "16");
//! assert_eq!(res.headers()["grpc-message"], "authentication required");
//! assert_eq!(res.headers()["x-request-id"], "req-1");
//! ```

use crate::error::{ErrorCode, GatewayError};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

/// `grpc-status`.
pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// `grpc-timeout`: the client's deadline, and the one the gateway passes upstream.
pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// A `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
///
/// ```
/// use std::time::Duration;
/// use nexus_core::grpc::{parse_timeout, timeout_value};
/// assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
/// assert_eq!(parse_timeout(b"123456789m"), None, "nine digits");
/// assert_eq!(parse_timeout(b"10x"), None);
/// assert_eq!(timeout_value(Duration::from_millis(1500)), "1500m");
/// ```
pub fn parse_timeout(v: &[u8]) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `d` as a `grpc-timeout` value: milliseconds (rounded up, at least 1), or seconds when
/// that would take more than 8 digits.
pub fn timeout_value(d: std::time::Duration) -> HeaderValue {
    let ms = d.as_millis().max(1);
    if ms <= 99_999_999 {
        HeaderValue::from_str(&format!("{ms}m")).expect("digits and a unit")
    } else {
        HeaderValue::from_str(&format!("{}S", d.as_secs().min(99_999_999))).expect("digits and a unit")
    }
}

/// Whether a request with these headers is a gRPC request (`content-type: application/grpc`,
/// or `application/grpc+proto`, `application/grpc;...`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(is_grpc_value)
}

/// Whether a `content-type` value is gRPC's (see [`is_grpc`]).
pub fn is_grpc_value(value: &HeaderValue) -> bool {
    let v = value.as_bytes();
    v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc") && matches!(v.get(16), None | Some(b'+' | b';'))
}

/// The gRPC status code SPEC §9 maps the gateway's `code` to: 400 → 13 (INTERNAL),
/// 401 → 16 (UNAUTHENTICATED), 403 → 7 (PERMISSION_DENIED), 404/405 → 12 (UNIMPLEMENTED),
/// 413/431 → 8 (RESOURCE_EXHAUSTED), 429 → 8, 501 → 12, 502/503 → 14 (UNAVAILABLE),
/// 504 → 4 (DEADLINE_EXCEEDED), 500 → 13.
pub const fn status_of(code: ErrorCode) -> u8 {
    match code.status() {
        StatusCode::UNAUTHORIZED => 16,
        StatusCode::FORBIDDEN => 7,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => 12,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => {
            8
        }
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => 14,
        StatusCode::GATEWAY_TIMEOUT => 4,
        // 400, 500 and anything new: INTERNAL.
        _ => 13,
    }
}

/// The gateway's own answer in `res` (one [`GatewayError::into_response`] made) as a
/// trailers-only gRPC response; any other response is returned as it is.
pub fn trailers_only<B: From<Bytes>>(res: Response<B>) -> Response<B> {
    let (mut parts, body) = res.into_parts();
    let Some(error) = parts.extensions.remove::<GatewayError>() else {
        return Response::from_parts(parts, body);
    };
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.remove(header::CONTENT_LENGTH);
    h.insert(GRPC_STATUS, HeaderValue::from(u16::from(status_of(error.code()))));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(error.message())) {
        h.insert(GRPC_MESSAGE, message);
    }
    Response::from_parts(parts, B::from(Bytes::new()))
}

/// `grpc-message` encoding (gRPC over HTTP/2): bytes outside space and visible ASCII, and
/// `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn only_grpc_content_types_are_grpc() {
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC;charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/json", false),
            ("application/grp", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_grpc(&h), grpc, "{value}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn every_code_maps_as_the_spec_says() {
        use ErrorCode::*;
        let table = [
            (BadRequest, 13),
            (Unauthorized, 16),
            (Forbidden, 7),
            (RouteNotFound, 12),
            (MethodNotAllowed, 12),
            (PayloadTooLarge, 8),
            (HeadersTooLarge, 8),
            (RateLimited, 8),
            (NotImplemented, 12),
            (BadGateway, 14),
            (UpstreamUnavailable, 14),
            (ShuttingDown, 14),
            (GatewayTimeout, 4),
            (Internal, 13),
        ];
        for (code, grpc) in table {
            assert_eq!(status_of(code), grpc, "{code}");
        }
    }

    #[test]
    fn the_gateways_answer_is_rewritten_and_an_upstreams_is_not() {
        let mut res: Response<Full<Bytes>> =
            GatewayError::new(ErrorCode::RateLimited).with_message("100% used: ¡slow down!").into_response("id-7");
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        let res = trailers_only(res);
        assert_eq!(res.status(), 200);
        let h = res.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(h["grpc-message"], "100%25 used: %C2%A1slow down!");
        assert_eq!(
            (&h["x-request-id"], &h["retry-after"]),
            (&HeaderValue::from_static("id-7"), &HeaderValue::from_static("3"))
        );
        assert!(http_body::Body::is_end_stream(res.body()), "no body: trailers-only");

        let mut upstream: Response<Full<Bytes>> = Response::new(Full::new(Bytes::from_static(b"payload")));
        upstream.headers_mut().insert(GRPC_STATUS, HeaderValue::from_static("5"));
        let passed = trailers_only(upstream);
        assert_eq!(
            (passed.status(), &passed.headers()["grpc-status"]),
            (StatusCode::OK, &HeaderValue::from_static("5"))
        );
        assert!(!http_body::Body::is_end_stream(passed.body()));
    }
}
