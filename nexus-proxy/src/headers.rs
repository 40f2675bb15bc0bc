//! Header rewriting between client and upstream (SPEC §4 and §8): hop-by-hop
//! headers removed in both directions, `X-Forwarded-*` set.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The fixed hop-by-hop headers (RFC 9110 §7.6.1 and the de-facto `Keep-Alive`); header `i`
/// is bit `1 << i` in [`remove_hop_by_hop`]'s scan. Standard names compare as enum tags.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("keep-alive"),
];
const CONNECTION_BIT: u8 = 1;
const UPGRADE_BIT: u8 = 1 << 1;

/// A `Connection` option rather than a header name (or nothing at all). Bytes: the
/// response path asks for every upstream `Connection` value, with no UTF-8 pass first.
fn is_connection_option(t: &[u8]) -> bool {
    t.is_empty()
        || t.eq_ignore_ascii_case(b"close")
        || t.eq_ignore_ascii_case(b"keep-alive")
        || t.eq_ignore_ascii_case(b"upgrade")
}

/// Whether `name` is hop-by-hop by itself (the fixed list or `Proxy-*`); the headers a
/// `Connection` value names are hop-by-hop too (see [`names_other_headers`]).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    // [`HOP_BY_HOP`] by length first: most names are ruled out by one integer comparison,
    // instead of six name comparisons (every field of every request and response comes here).
    let s = name.as_str();
    let fixed = match s.len() {
        2 => s == "te",
        7 => s == "upgrade" || s == "trailer",
        10 => s == "connection" || s == "keep-alive",
        17 => s == "transfer-encoding",
        _ => false,
    };
    fixed || s.starts_with("proxy-")
}

/// Whether a `Connection` value names headers (beyond the options close/keep-alive/upgrade).
pub(crate) fn names_other_headers(connection: &[u8]) -> bool {
    connection.split(|b| *b == b',').any(|t| !is_connection_option(t.trim_ascii()))
}

/// Whether the request asks for a protocol upgrade (`Connection: upgrade` and `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// What a request head says about how it can be sent and served, from one pass over its
/// fields (cheaper than a lookup per question: a request has a handful of fields). This is
/// the one place that says which requests the lean HTTP/1.1 paths take
/// ([`lean_upstream`](Self::lean_upstream), [`lean_server`](Self::lean_server)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HeadScan {
    /// An upgrade is asked for (as [`is_upgrade`]: an `Upgrade` field and `upgrade` in
    /// `Connection`).
    pub(crate) upgrade: bool,
    /// A `Connection` value names other headers (see [`names_other_headers`]).
    pub(crate) names_others: bool,
    /// The head frames a body: `Transfer-Encoding`, or a `Content-Length` other than `0`.
    pub(crate) framed: bool,
    /// A `Host` field is present.
    pub(crate) host: bool,
    /// `Connection: close` is asked for.
    pub(crate) close: bool,
    /// `Connection: keep-alive` is asked for (what keeps an HTTP/1.0 connection open).
    pub(crate) keep_alive: bool,
    /// An `Expect` field (`100-continue`).
    pub(crate) expect: bool,
    /// The `traceparent` (the gateway's, once it has set it) says sampled.
    pub(crate) sampled: bool,
    upgrade_field: bool,
    upgrade_token: bool,
    /// A `Transfer-Encoding` field.
    transfer_encoding: bool,
    /// `Transfer-Encoding` fields seen, and whether the first one's value is `chunked` alone.
    coding_fields: u8,
    chunked: bool,
    /// `Content-Length` fields seen, and the first one's value when it is plain digits.
    length_fields: u8,
    length: Option<u64>,
}

/// The largest body the lean server reads whole before the request goes on (the most a retry
/// keeps to send again, too): larger ones are streamed by hyper.
pub(crate) const LEAN_BODY_MAX: u64 = nexus_core::retry::MAX_REPLAY_BODY as u64;

/// A `Content-Length` value of plain digits (RFC 9110 §8.6: `1*DIGIT`; no sign, and not the
/// list of equal values [`crate::http1::parse_length`] also takes).
fn plain_length(value: &[u8]) -> Option<u64> {
    if value.contains(&b',') { None } else { crate::http1::parse_length(value) }
}

impl HeadScan {
    /// Scan a map's fields.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut scan = Self::default();
        for (name, value) in headers {
            scan.field(name, value.as_bytes());
        }
        scan
    }

    /// Take one more field into account.
    #[inline]
    pub(crate) fn field(&mut self, name: &HeaderName, value: &[u8]) {
        if name == header::HOST {
            self.host = true;
        } else if name == header::CONTENT_LENGTH {
            self.framed |= value != b"0";
            if self.length_fields == 0 {
                self.length = plain_length(value);
            }
            self.length_fields = self.length_fields.saturating_add(1);
        } else if name == header::TRANSFER_ENCODING {
            self.framed = true;
            self.transfer_encoding = true;
            if self.coding_fields == 0 {
                self.chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            self.coding_fields = self.coding_fields.saturating_add(1);
        } else if name == header::UPGRADE {
            self.upgrade_field = true;
        } else if name == header::EXPECT {
            self.expect = true;
        } else if name == header::CONNECTION {
            self.names_others |= names_other_headers(value);
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    self.upgrade_token = true;
                }
            }
        } else if name == nexus_middleware::trace_context::TRACEPARENT {
            self.sampled = nexus_middleware::trace_context::is_sampled_value(value);
        }
        self.upgrade = self.upgrade_field && self.upgrade_token;
    }

    /// Sent upstream by the lean exchange (`http1::client`) when its body is empty too:
    /// no body framed, no upgrade.
    pub(crate) fn lean_upstream(&self) -> bool {
        !self.framed && !self.upgrade
    }

    /// A `Transfer-Encoding` field: the body is sent as hyper frames it.
    pub(crate) fn transfer_encoding(&self) -> bool {
        self.transfer_encoding
    }

    /// Served by the lean server loop (`http1::server`), and how the body it reads whole
    /// first is framed: nothing said of an upgrade (either half goes to hyper, which knows the
    /// rules), no `Expect`, and no body, or one framed by a single plain `Content-Length` of
    /// at most [`LEAN_BODY_MAX`], or by a single `Transfer-Encoding: chunked` without any
    /// `Content-Length` (whose chunks [`crate::http1`] reads, and takes only while they stay
    /// small). Any other framing goes to hyper behind the head gate, which refuses what SPEC
    /// §4 refuses.
    #[inline]
    pub(crate) fn lean_server(&self) -> Option<LeanBody> {
        if self.upgrade_field || self.upgrade_token || self.expect {
            return None;
        }
        if self.transfer_encoding {
            return (self.coding_fields == 1 && self.chunked && self.length_fields == 0).then_some(LeanBody::Chunked);
        }
        if !self.framed {
            return Some(LeanBody::Length(0));
        }
        self.length.filter(|n| self.length_fields == 1 && *n <= LEAN_BODY_MAX).map(LeanBody::Length)
    }
}

/// How a request body the lean server reads whole is framed ([`HeadScan::lean_server`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeanBody {
    /// This many bytes (`0`: no body).
    Length(u64),
    /// Chunks.
    Chunked,
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Remove hop-by-hop headers: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, and `Upgrade`
/// unless `upgrade` is true (then `Connection: upgrade` and `Upgrade` stay).
///
/// ```
/// use http::HeaderMap;
/// let mut h = HeaderMap::new();
/// h.insert("connection", "keep-alive, x-secret".parse().unwrap());
/// h.insert("x-secret", "1".parse().unwrap());
/// h.insert("proxy-authorization", "Basic x".parse().unwrap());
/// h.insert("x-kept", "1".parse().unwrap());
/// nexus_proxy::headers::remove_hop_by_hop(&mut h, false);
/// assert_eq!(h.len(), 1);
/// assert!(h.contains_key("x-kept"));
/// ```
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass to see which are present; usually none (requests) or `Connection` alone
    // (responses), and only those are looked up again.
    let mut present = 0u8;
    let mut proxy = false;
    for name in headers.keys() {
        match HOP_BY_HOP.iter().position(|h| h == name) {
            Some(i) => present |= 1 << i,
            None => proxy |= name.as_str().starts_with("proxy-"),
        }
    }
    if present & CONNECTION_BIT != 0 {
        // Headers named by Connection: rare beyond keep-alive/close/upgrade, so they are
        // only collected when one of the values names something else.
        let tokens = |v: &HeaderValue| -> Vec<HeaderName> {
            v.to_str()
                .ok()
                .into_iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|t| !is_connection_option(t.as_bytes()))
                .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
                .collect()
        };
        let mut listed = Vec::new();
        for v in headers.get_all(header::CONNECTION) {
            if !is_connection_option(v.as_bytes()) {
                listed.extend(tokens(v));
            }
        }
        for name in listed {
            headers.remove(name);
        }
    }
    if upgrade {
        present &= !(CONNECTION_BIT | UPGRADE_BIT);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    // Proxy-* (Proxy-Authorization, Proxy-Connection, ...): only when one was seen.
    if proxy {
        let names: Vec<HeaderName> = headers.keys().filter(|k| k.as_str().starts_with("proxy-")).cloned().collect();
        for n in names {
            headers.remove(n);
        }
    }
}

/// Set `X-Forwarded-For`, `-Proto` and `-Host` on a request going upstream.
///
/// `client` is the peer's IP as a header value (cache it per connection); `proto` is
/// `"http"` or `"https"` (how the request reached the gateway).
/// From an untrusted peer, `-Proto` and `-Host` are overwritten; from a trusted
/// proxy, values it sent are kept. `-For` is always appended to.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    trusted_peer: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let mut lines = headers.get_all(&X_FORWARDED_FOR).iter();
    let appended = lines.next().map(|first| {
        // Fold every earlier line into one, in order, then append this hop.
        let mut v = first.as_bytes().to_vec();
        for more in lines {
            v.extend_from_slice(b", ");
            v.extend_from_slice(more.as_bytes());
        }
        v.extend_from_slice(b", ");
        v.extend_from_slice(client.as_bytes());
        v
    });
    let value = match appended {
        Some(v) => HeaderValue::from_bytes(&v).unwrap_or_else(|_| client.clone()),
        None => client.clone(),
    };
    headers.insert(X_FORWARDED_FOR, value);
    if !trusted_peer || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !trusted_peer || !headers.contains_key(&X_FORWARDED_HOST) {
        match host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// Write a request's fields for the wire (`name: value\r\n` each) as [`remove_hop_by_hop`]
/// (no upgrade) and then [`set_forwarded`] would leave them, without changing the map: the
/// lean upstream exchange encodes straight from the client's map. The headers that a
/// `Connection` value names must already be gone (see [`HeadScan::names_others`]).
pub(crate) fn write_upstream_fields(
    headers: &HeaderMap,
    client: &HeaderValue,
    trusted_peer: bool,
    proto: &'static str,
    out: &mut Vec<u8>,
) {
    let field = |out: &mut Vec<u8>, name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    let (mut has_proto, mut has_host) = (false, false);
    // Found in the pass over the fields, instead of a lookup each (a hash of the name).
    let (mut has_for, mut host) = (false, None);
    for (name, value) in headers {
        if name == header::HOST {
            // The first, as `HeaderMap::get` (the edge refuses a second).
            host = host.or(Some(value));
        } else if name == X_FORWARDED_FOR {
            has_for = true;
            continue;
        } else if is_hop_by_hop(name) {
            continue;
        }
        if name == X_FORWARDED_PROTO {
            has_proto = true;
            if !trusted_peer {
                continue;
            }
        } else if name == X_FORWARDED_HOST {
            has_host = true;
            if !trusted_peer {
                continue;
            }
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    // X-Forwarded-For: the earlier lines folded into one, in order, then this hop.
    out.extend_from_slice(b"x-forwarded-for: ");
    if has_for {
        for earlier in headers.get_all(&X_FORWARDED_FOR) {
            out.extend_from_slice(earlier.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(client.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !trusted_peer || !has_proto {
        field(out, b"x-forwarded-proto", proto.as_bytes());
    }
    if (!trusted_peer || !has_host)
        && let Some(host) = host
    {
        field(out, b"x-forwarded-host", host.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire form of a map, one `name: value` line per field, sorted.
    fn lines(headers: &HeaderMap) -> Vec<String> {
        let mut out = Vec::new();
        for (n, v) in headers {
            out.push(format!("{}: {}", n, v.to_str().unwrap()));
        }
        out.sort();
        out
    }

    #[test]
    fn fields_written_for_the_wire_match_the_rewritten_map() {
        let cases: &[&[(&str, &str)]] = &[
            &[("host", "api.example.com")],
            &[("host", "h"), ("connection", "keep-alive"), ("keep-alive", "5"), ("te", "trailers"), ("x-a", "1")],
            &[("host", "h"), ("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2, 4.4.4.4")],
            &[
                ("host", "h"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "outer"),
                ("proxy-authorization", "x"),
            ],
            &[("accept", "*/*"), ("x-forwarded-host", "outer")],
            &[("host", "h"), ("connection", "close, x-secret"), ("x-secret", "1"), ("x-b", "2")],
        ];
        let client = HeaderValue::from_static("9.9.9.9");
        for fields in cases {
            let mut h = HeaderMap::new();
            for (n, v) in *fields {
                h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            for trusted in [false, true] {
                let mut expected = h.clone();
                remove_hop_by_hop(&mut expected, false);
                let host = expected.get(header::HOST).cloned();
                set_forwarded(&mut expected, &client, trusted, "http", host.as_ref());

                let mut map = h.clone();
                if HeadScan::of(&map).names_others {
                    remove_hop_by_hop(&mut map, false);
                }
                let mut wire = Vec::new();
                write_upstream_fields(&map, &client, trusted, "http", &mut wire);
                let mut got: Vec<String> =
                    String::from_utf8(wire).unwrap().split_terminator("\r\n").map(str::to_string).collect();
                got.sort();
                assert_eq!(got, lines(&expected), "{fields:?}, trusted: {trusted}");
            }
        }
    }

    #[test]
    fn one_scan_answers_as_the_lookups_do() {
        let scan = |fields: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in fields {
                h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(HeadScan::of(&h).upgrade, is_upgrade(&h), "{fields:?}");
            HeadScan::of(&h)
        };
        assert_eq!(scan(&[]), HeadScan::default());
        let zero = scan(&[("host", "a"), ("content-length", "0")]);
        assert!(zero.host && !zero.framed && zero.lean_upstream());
        assert_eq!(zero.lean_server(), Some(LeanBody::Length(0)));
        assert!(scan(&[("content-length", "5")]).framed);
        assert_eq!(scan(&[("content-length", "5")]).lean_server(), Some(LeanBody::Length(5)));
        assert!(scan(&[("content-length", "0"), ("content-length", "5")]).framed);
        assert_eq!(scan(&[("content-length", "0"), ("content-length", "5")]).lean_server(), None);
        assert!(scan(&[("transfer-encoding", "chunked")]).framed);
        assert_eq!(scan(&[("transfer-encoding", "Chunked ")]).lean_server(), Some(LeanBody::Chunked));
        // Anything but one `chunked` alone, or a length beside it, is hyper's to frame or refuse.
        for other in [
            &[("transfer-encoding", "gzip, chunked")][..],
            &[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "chunked"), ("content-length", "5")],
            &[("content-length", "0"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "chunked;x=1")],
            &[("transfer-encoding", "chunked"), ("expect", "100-continue")],
        ] {
            assert_eq!(scan(other).lean_server(), None, "{other:?}");
        }
        assert!(scan(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")]).upgrade);
        assert!(!scan(&[("connection", "upgrade")]).upgrade, "no Upgrade field");
        assert!(!scan(&[("upgrade", "websocket")]).upgrade, "Connection does not ask for it");
        assert!(!scan(&[("connection", "close, keep-alive, upgrade")]).names_others);
        assert!(scan(&[("connection", "close"), ("connection", "x-secret")]).names_others);
    }

    #[test]
    fn upgrade_headers_survive_only_for_upgrades() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        let mut kept = h.clone();
        remove_hop_by_hop(&mut kept, true);
        assert_eq!(kept["upgrade"], "websocket");
        assert_eq!(kept["connection"], "upgrade");
        remove_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn every_hop_by_hop_header_goes_and_the_rest_stay() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, X-Named, close"),
            ("x-named", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "1"),
            ("host", "a"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        remove_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn a_connection_value_names_other_headers_only_beyond_its_options() {
        for options in [&b"keep-alive"[..], b"Close", b" close ,\tUpgrade", b"", b"keep-alive,,"] {
            assert!(!names_other_headers(options), "{:?}", String::from_utf8_lossy(options));
        }
        for named in [&b"x-secret"[..], b"close, X-Secret", b"keep-alive2", b"clos\xc3\xa9"] {
            assert!(names_other_headers(named), "{:?}", String::from_utf8_lossy(named));
        }
    }

    #[test]
    fn hop_by_hop_names_are_the_fixed_list_and_proxy_ones() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in ["proxy-authorization", "proxy-authenticate", "proxy-connection"] {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            header::HOST,
            header::CONTENT_LENGTH,
            header::ACCEPT,
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("te-x"),
            HeaderName::from_static("upgrades"),
            HeaderName::from_static("keep-alives"),
            HeaderName::from_static("x-proxy-id"),
            HeaderName::from_static("proxy"),
        ] {
            assert!(!is_hop_by_hop(&name), "{name}");
        }
    }

    #[test]
    fn forwarded_headers_from_untrusted_peer_are_overwritten() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "1.1.1.1".parse().unwrap());
        h.insert(X_FORWARDED_PROTO, "https".parse().unwrap());
        h.insert(X_FORWARDED_HOST, "evil".parse().unwrap());
        let host = HeaderValue::from_static("api.example.com");
        set_forwarded(&mut h, &HeaderValue::from_static("9.9.9.9"), false, "http", Some(&host));
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 9.9.9.9");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "api.example.com");
        h.append(X_FORWARDED_FOR, "2.2.2.2".parse().unwrap());
        set_forwarded(&mut h, &HeaderValue::from_static("3.3.3.3"), false, "https", None);
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 9.9.9.9, 2.2.2.2, 3.3.3.3");
        assert_eq!(h[X_FORWARDED_PROTO], "https", "a request that came over TLS");
        assert!(!h.contains_key(X_FORWARDED_HOST));
    }

    #[test]
    fn forwarded_headers_from_trusted_proxy_are_kept() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_PROTO, "https".parse().unwrap());
        h.insert(X_FORWARDED_HOST, "public.example.com".parse().unwrap());
        set_forwarded(
            &mut h,
            &HeaderValue::from_static("10.0.0.1"),
            true,
            "http",
            Some(&HeaderValue::from_static("internal")),
        );
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "public.example.com");
    }
}
