//! The edge rules (SPEC §10) a request passes before anything else looks at it: one valid
//! authority to route on and forward, gateway-owned headers removed from client input, one
//! `Authorization` at most, no `CONNECT`, no transfer coding but `chunked`, and no `h2c`
//! upgrade. Both the binary and an embedder's [`crate::GatewayService`] run them (they are
//! the first step of [`crate::Gateway::serve`]).
//!
//! A request that breaks none of them (nearly all) costs one pass over its field names.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use nexus_core::config::Config;
use nexus_core::error::REQUEST_ID;
use nexus_core::{ErrorCode, GatewayError};

/// Header names the gateway fills itself; client input in any spelling that differs by `_`
/// for `-` (or by case: names are lower-case already) is removed.
const ALWAYS_OWNED: [&str; 5] =
    ["x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "traceparent"];

/// The edge rules of one config.
#[derive(Debug, Clone)]
pub(crate) struct Edge {
    /// Every header name any `forward_claims` fills (stripped on every route).
    claims: Box<[HeaderName]>,
    /// Bit `n` set: an owned name (or a claim's) is `n` bytes long. A spelling with `_` for `-`
    /// is as long as the name it spells, so a name of any other length (nearly every field a
    /// client sends) needs no search for `_`: one bit test instead of a `memchr` per field.
    owned_lengths: u64,
}

impl Default for Edge {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

/// What one pass over a request's fields found.
#[derive(Debug, Default)]
struct Seen {
    hosts: u32,
    authorizations: u32,
    /// Something to remove or rewrite: an owned name, an underscore spelling, a
    /// `Connection` value naming more than options, an `Upgrade`.
    cleanup: bool,
    transfer_encoding: bool,
    grpc: bool,
    sampled: bool,
    request_id: Option<HeaderValue>,
    /// Names and values, in bytes.
    size: usize,
}

/// What [`Edge::admit`] learnt of a request it let through.
#[derive(Debug, Clone)]
pub(crate) struct Admitted {
    /// A gRPC request (`content-type: application/grpc*`): the gateway's own answers to it
    /// are trailers-only gRPC responses.
    pub(crate) grpc: bool,
    /// Its `traceparent` (the gateway's, set before) says sampled: the route names itself on
    /// the answer for the server span.
    pub(crate) sampled: bool,
    /// Its (first) `X-Request-Id`, for the gateway's own answers after the request is gone
    /// upstream (502, 503, 504): found in this pass instead of a lookup per request.
    pub(crate) request_id: Option<HeaderValue>,
    /// The size of its fields as they came (names and values, in bytes), for the header-size
    /// limit: counted in this pass instead of one more.
    pub(crate) header_bytes: usize,
}

impl Edge {
    pub(crate) fn from_config(config: &Config) -> Self {
        let mut claims: Vec<HeaderName> = config
            .auth
            .jwt
            .values()
            .flat_map(|j| j.forward_claims.values())
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        claims.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        claims.dedup();
        Self::new(claims)
    }

    fn new(claims: Vec<HeaderName>) -> Self {
        let lengths = ALWAYS_OWNED.iter().map(|o| o.len()).chain(claims.iter().map(|c| c.as_str().len()));
        // (Lengths of 63 bytes and more share the top bit.)
        let owned_lengths = lengths.fold(0u64, |bits, len| bits | 1 << len.min(63));
        Self { claims: claims.into_boxed_slice(), owned_lengths }
    }

    /// Whether `name` may be an owned name spelled with `_` for `-` (see [`Edge::owns`]).
    #[inline]
    fn may_spell_owned(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        self.owned_lengths >> name.len().min(63) & 1 == 1 && has_underscore(name)
    }

    /// Check `req` and clean its head; `Err` is the answer (400, 405, 501).
    #[allow(clippy::result_large_err)]
    pub(crate) fn admit<B, R: From<Bytes>>(&self, req: &mut Request<B>) -> Result<Admitted, Response<R>> {
        if req.method() == Method::CONNECT {
            let mut res = refuse(
                req.headers(),
                ErrorCode::MethodNotAllowed,
                "CONNECT is not supported: this gateway is not a forward proxy",
            );
            // A 405 names what the target does support (RFC 9110 §15.5.6): every method but
            // CONNECT reaches the routes (extension methods too; these are the standard ones).
            res.headers_mut().insert(header::ALLOW, HeaderValue::from_static(ALLOW_BUT_CONNECT));
            return Err(res);
        }
        let mut seen = Seen::default();
        let mut host_ok = true;
        for (name, value) in req.headers() {
            seen.size += name.as_str().len() + value.len();
            if name == header::HOST {
                seen.hosts += 1;
                host_ok &= valid_authority(value.as_bytes());
            } else if name == header::AUTHORIZATION {
                seen.authorizations += 1;
            } else if name == header::TRANSFER_ENCODING {
                seen.transfer_encoding = true;
            } else if name == header::CONTENT_TYPE {
                seen.grpc = nexus_core::grpc::is_grpc_value(value);
            } else if name == header::CONNECTION {
                seen.cleanup |= crate::headers::names_other_headers(value.as_bytes());
            } else if name == REQUEST_ID {
                if seen.request_id.is_none() {
                    seen.request_id = Some(value.clone());
                }
            } else if name == header::UPGRADE || self.may_spell_owned(name) || self.claims.contains(name) {
                seen.cleanup = true;
            } else if name == header::EXPECT {
                // An HTTP/1.0 request's expectation is ignored (RFC 9110 §10.1.1): dropped.
                seen.cleanup |= req.version() <= http::Version::HTTP_10;
            } else if name == nexus_middleware::trace_context::TRACEPARENT {
                seen.sampled = nexus_middleware::trace_context::is_sampled_value(value.as_bytes());
            }
        }
        let headers = req.headers();
        if seen.hosts > 1 {
            return Err(refuse(headers, ErrorCode::BadRequest, "more than one Host field"));
        }
        if seen.authorizations > 1 {
            return Err(refuse(headers, ErrorCode::BadRequest, "more than one Authorization field"));
        }
        if !host_ok {
            return Err(refuse(headers, ErrorCode::BadRequest, "invalid Host"));
        }
        if seen.transfer_encoding {
            check_transfer_codings(headers)?;
        }
        // An absolute-form target's authority, and HTTP/2's `:authority`, win over `Host`:
        // what is routed on is what is forwarded.
        if let Some(authority) = req.uri().authority() {
            let text = authority.as_str();
            if !valid_authority(text.as_bytes()) {
                return Err(refuse(req.headers(), ErrorCode::BadRequest, "invalid request-target authority"));
            }
            if req.headers().get(header::HOST).is_none_or(|h| h.as_bytes() != text.as_bytes()) {
                let value = HeaderValue::from_str(text)
                    .map_err(|_| refuse(req.headers(), ErrorCode::BadRequest, "invalid request-target authority"))?;
                req.headers_mut().insert(header::HOST, value);
            }
        }
        if seen.cleanup {
            // HTTP/1.0 has no upgrades (RFC 9110 §7.8): such a request goes on without one.
            let http10 = req.version() <= http::Version::HTTP_10;
            self.clean(req.headers_mut(), http10);
        }
        Ok(Admitted { grpc: seen.grpc, sampled: seen.sampled, request_id: seen.request_id, header_bytes: seen.size })
    }

    /// Whether `name` is the gateway's (exactly, or spelled with `_` for `-`).
    fn owns(&self, name: &str) -> bool {
        let same = |owned: &str| {
            owned.len() == name.len()
                && owned.bytes().zip(name.bytes()).all(|(o, n)| o == n || (o == b'-' && n == b'_'))
        };
        ALWAYS_OWNED.iter().any(|o| *o != name && same(o)) || self.claims.iter().any(|c| same(c.as_str()))
    }

    /// Remove owned names from client input, keep `Connection` from naming them, and drop
    /// an `h2c` upgrade, or any upgrade or expectation of an HTTP/1.0 request
    /// (`no_upgrades`): the request goes on without it.
    fn clean(&self, headers: &mut HeaderMap, no_upgrades: bool) {
        let doomed: Vec<HeaderName> = headers.keys().filter(|n| self.owns(n.as_str())).cloned().collect();
        for name in doomed {
            headers.remove(name);
        }
        if no_upgrades {
            headers.remove(header::EXPECT);
        }
        let h2c = (no_upgrades && headers.contains_key(header::UPGRADE))
            || headers
                .get_all(header::UPGRADE)
                .iter()
                .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c")));
        if h2c {
            headers.remove(header::UPGRADE);
            headers.remove("http2-settings");
        }
        if !headers.contains_key(header::CONNECTION) {
            return;
        }
        let mut kept: Vec<&[u8]> = Vec::new();
        let mut changed = false;
        for value in headers.get_all(header::CONNECTION) {
            for token in value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                let lower = String::from_utf8_lossy(token).to_ascii_lowercase();
                let drop = token.is_empty()
                    || ALWAYS_OWNED.contains(&lower.as_str())
                    || self.owns(&lower)
                    || (h2c && (lower == "upgrade" || lower == "http2-settings"));
                if drop {
                    changed = true;
                } else {
                    kept.push(token);
                }
            }
        }
        if !changed {
            return;
        }
        let joined = kept.join(&b", "[..]);
        match HeaderValue::from_bytes(&joined) {
            Ok(v) if !joined.is_empty() => {
                headers.insert(header::CONNECTION, v);
            }
            _ => {
                headers.remove(header::CONNECTION);
            }
        }
    }
}

/// Whether `name` holds a `_`. The owned names are 11 to 17 bytes long (and `accept-encoding`,
/// `accept-language`, as long as `x-forwarded-for`, are in most browsers' requests): 8 to 16
/// bytes are two overlapping words, each tested for the byte at once, where `memchr` on so
/// short a slice costs about 60 instructions.
fn has_underscore(name: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let has = |word: u64| {
        let v = word ^ (u64::from(b'_') * ONES);
        v.wrapping_sub(ONES) & !v & (ONES << 7) != 0
    };
    match name.len() {
        8..=16 => {
            let (first, last) = (&name[..8], &name[name.len() - 8..]);
            has(u64::from_le_bytes(first.try_into().expect("8 bytes")))
                || has(u64::from_le_bytes(last.try_into().expect("8 bytes")))
        }
        _ => name.contains(&b'_'),
    }
}

/// `chunked` is the only transfer coding the gateway implements: any other is 501 (the
/// same judgement the HTTP/1 server's gate makes before hyper reads a head).
#[allow(clippy::result_large_err)]
fn check_transfer_codings<R: From<Bytes>>(headers: &HeaderMap) -> Result<(), Response<R>> {
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        if let Err(refusal) = crate::http1::only_chunked(value.as_bytes()) {
            let (code, message) = refusal.error();
            return Err(refuse(headers, code, message));
        }
    }
    Ok(())
}

/// The standard methods a route can serve: all of RFC 9110's but `CONNECT`, and `PATCH`.
const ALLOW_BUT_CONNECT: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

fn refuse<R: From<Bytes>>(headers: &HeaderMap, code: ErrorCode, message: &'static str) -> Response<R> {
    let mut res: Response<R> = GatewayError::new(code).with_message(message).into_response_for(headers);
    // SPEC §4: a malformed request closes the connection; so does a CONNECT (tunnel bytes
    // may follow it at once) and a body in a coding that cannot be framed (501): whatever
    // follows on the connection must not be read as a request.
    res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// `Host` / authority syntax (RFC 9110 §7.2, RFC 3986 §3.2): a reg-name, an IPv4 address or
/// a bracketed IP literal, then an optional `:port`; no userinfo, no `/`, no whitespace.
pub(crate) fn valid_authority(value: &[u8]) -> bool {
    let host_end = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|b| *b == b']') else { return false };
        let literal = &value[1..end];
        if literal.is_empty() || !literal.iter().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')) {
            return false;
        }
        end + 1
    } else {
        // One pass over the name (a `Host` is checked on every request).
        let name = value.iter().position(|b| !REG_NAME[usize::from(*b)]).unwrap_or(value.len());
        if name == 0 {
            return false;
        }
        name
    };
    match &value[host_end..] {
        [] => true,
        [b':', port @ ..] => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// The bytes of a reg-name (RFC 3986 §3.2.2: unreserved, pct-encoded, sub-delims), as a
/// table: a `Host` is checked on every request.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        // (`i` < 256: the cast is exact.)
        #[allow(clippy::cast_possible_truncation)]
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric();
        i += 1;
    }
    let extra = b"-._~%!$&'()*+,;=";
    let mut j = 0;
    while j < extra.len() {
        table[extra[j] as usize] = true;
        j += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(claims: &[&'static str]) -> Edge {
        Edge::new(claims.iter().map(|c| HeaderName::from_static(c)).collect())
    }

    fn admit(edge: &Edge, req: &mut Request<()>) -> Result<(), u16> {
        edge.admit::<(), Bytes>(req).map(|_| ()).map_err(|r| r.status().as_u16())
    }

    fn request(target: &str, fields: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(target);
        for (n, v) in fields {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn authorities_are_checked_as_rfc_3986_writes_them() {
        for ok in ["example.com", "api.example.com:8080", "10.0.0.1", "[::1]:443", "[2001:db8::1]", "a-b_c~d", "x:"] {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "evil.com/.example.com", "user@host", "a b", "host:port", "[::1", "[::1]x", ":80", "h:123456"] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn one_valid_host_and_the_targets_authority_wins() {
        let e = edge(&[]);
        assert_eq!(admit(&e, &mut request("/a", &[("host", "x"), ("host", "y")])), Err(400));
        assert_eq!(admit(&e, &mut request("/a", &[("host", "evil.com/.example.com")])), Err(400));
        assert_eq!(admit(&e, &mut request("/a", &[("host", "internal.example.com")])), Ok(()));
        let mut absolute = request("http://public.test/x", &[("host", "internal.example.com")]);
        assert_eq!(admit(&e, &mut absolute), Ok(()));
        assert_eq!(absolute.headers()["host"], "public.test", "routed and forwarded on the target's authority");
        let mut h2 = request("http://api.test:8443/x", &[]);
        assert_eq!(admit(&e, &mut h2), Ok(()));
        assert_eq!(h2.headers()["host"], "api.test:8443");
        assert_eq!(admit(&e, &mut request("http://user@public.test/x", &[])), Err(400));
    }

    #[test]
    fn connect_codings_and_authorization_lines_are_refused() {
        let e = edge(&[]);
        let mut connect = Request::builder().method(Method::CONNECT).uri("example.com:443").body(()).unwrap();
        let refused = e.admit::<(), Bytes>(&mut connect).unwrap_err();
        assert_eq!(refused.status(), 405);
        assert_eq!(refused.headers()["allow"], "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH");
        assert_eq!(refused.headers()["connection"], "close");
        assert_eq!(admit(&e, &mut request("/", &[("transfer-encoding", "gzip, chunked")])), Err(501));
        assert_eq!(admit(&e, &mut request("/", &[("transfer-encoding", "chunked")])), Ok(()));
        let two = [("authorization", "Bearer a"), ("authorization", "Bearer b")];
        assert_eq!(admit(&e, &mut request("/", &two)), Err(400));
    }

    #[test]
    fn owned_headers_go_in_any_spelling_and_connection_cannot_name_them() {
        let e = edge(&["x-user-id"]);
        let mut req = request(
            "/",
            &[
                ("x-user-id", "admin"),
                ("x_user_id", "admin"),
                ("x_forwarded_for", "1.2.3.4"),
                ("x_request_id", "spoof"),
                ("x-forwarded-for", "5.6.7.8"),
                ("x_other", "kept"),
                ("connection", "keep-alive, X-User-Id, x-request-id, x-custom"),
            ],
        );
        assert_eq!(admit(&e, &mut req), Ok(()));
        let h = req.headers();
        for gone in ["x-user-id", "x_user_id", "x_forwarded_for", "x_request_id"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!((h["x-forwarded-for"].as_bytes(), h["x_other"].as_bytes()), (&b"5.6.7.8"[..], &b"kept"[..]));
        assert_eq!(h["connection"], "keep-alive, x-custom");
    }

    #[test]
    fn underscore_spellings_are_found_at_every_owned_length_and_only_there() {
        // A claim header of 70 bytes: lengths past 63 share one bit.
        const LONG: &str = "x-a-claim-header-name-longer-than-sixty-three-bytes-for-the-length-bit";
        let e = edge(&["x-user-id", LONG]);
        let long_underscored = LONG.replace('-', "_");
        let mut req = request(
            "/",
            &[
                ("x_user_id", "admin"),
                (long_underscored.as_str(), "admin"),
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ("x_forwarded_proto", "http"),
                ("x_forwarded_host", "evil"),
                // Not owned: as long as an owned name (12, `x-request-id`), or not.
                ("x_request_ix", "kept"),
                ("x_b", "kept"),
                ("sec_fetch_mode_", "kept"),
            ],
        );
        assert_eq!(admit(&e, &mut req), Ok(()));
        let h = req.headers();
        for gone in ["x_user_id", long_underscored.as_str(), "x_forwarded_proto", "x_forwarded_host"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        for kept in ["traceparent", "x_request_ix", "x_b", "sec_fetch_mode_"] {
            assert!(h.contains_key(kept), "{kept}");
        }
    }

    #[test]
    fn an_underscore_is_found_at_every_place_of_every_length() {
        for len in 0..=40 {
            let clean = vec![b'a'; len];
            assert!(!has_underscore(&clean), "{len}");
            // Bytes next to `_` in value (`^`, `` ` ``) and the same bits in other lanes.
            let near: Vec<u8> = (0..len).map(|i| [b'^', b'`', b'\x5e', b'\xdf'][i % 4]).collect();
            assert!(!has_underscore(&near), "{near:?}");
            for at in 0..len {
                let mut with = clean.clone();
                with[at] = b'_';
                assert!(has_underscore(&with), "{len} at {at}");
            }
        }
    }

    #[test]
    fn an_h2c_upgrade_is_dropped_and_a_websocket_one_kept() {
        let e = edge(&[]);
        let mut req = request(
            "/",
            &[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"), ("http2-settings", "AAMAAABkAAQ")],
        );
        assert_eq!(admit(&e, &mut req), Ok(()));
        assert!(req.headers().get("upgrade").is_none() && req.headers().get("http2-settings").is_none());
        assert!(req.headers().get("connection").is_none());
        let mut old = request("/", &[("connection", "Upgrade"), ("upgrade", "websocket")]);
        *old.version_mut() = http::Version::HTTP_10;
        assert_eq!(admit(&e, &mut old), Ok(()));
        assert!(old.headers().get("upgrade").is_none(), "HTTP/1.0 has no upgrades");
        let mut expecting = request("/", &[("expect", "100-continue")]);
        *expecting.version_mut() = http::Version::HTTP_10;
        assert_eq!(admit(&e, &mut expecting), Ok(()));
        assert!(expecting.headers().get("expect").is_none(), "an HTTP/1.0 expectation is ignored");
        let mut ws = request("/", &[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(admit(&e, &mut ws), Ok(()));
        assert_eq!(ws.headers()["upgrade"], "websocket");
        assert_eq!(ws.headers()["connection"], "Upgrade");
    }
}
