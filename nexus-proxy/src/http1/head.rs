//! Heads on the wire: request heads the server reads, response heads the client reads, and
//! how a body is framed, in one model. Field values are zero-copy slices of the read
//! buffer; field names that repeat the previous head's are not parsed again
//! ([`FieldNames`]).

use super::body::{LeanChunks, lean_chunk_data, lean_chunks};
use super::names::FieldNames;
use super::server::ClientBody;
use crate::headers::{self, HeadScan, LeanBody};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use std::io;
use std::mem::MaybeUninit;

/// Most request fields the lean server takes (hyper takes 100).
pub(crate) const MAX_REQUEST_FIELDS: usize = 64;
/// Most fields in a request head at all (hyper's server limit; more is 431).
pub(crate) const MAX_SERVER_FIELDS: usize = 100;
/// Most fields taken in a response head (hyper's default too).
pub(crate) const MAX_RESPONSE_FIELDS: usize = 100;
/// Largest response head (status line and fields); a longer one is a 502.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Largest trailer section accepted after a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;

/// How a message body is framed on the wire, read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body bytes (HEAD, 1xx, 204, 304, `Content-Length: 0`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunks, then a trailer section.
    Chunked,
    /// Until the sender closes (a response without a length, or whose last transfer coding
    /// is not chunked). Read only: this server never writes it.
    Close,
}

/// What parsing a head needs besides its bytes, kept per connection (nothing allocated per
/// head once warm).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// Field names and value spans of the head being parsed.
    fields: Vec<(HeaderName, usize, usize)>,
    /// The previous head's field names.
    names: FieldNames,
}

impl Scratch {
    /// The map of the fields collected, values sliced out of `head`, with room for `extra`
    /// more; `keep` says which go in.
    fn map(&mut self, head: &Bytes, extra: usize, keep: impl Fn(&HeaderName) -> bool) -> Option<HeaderMap> {
        let mut map = HeaderMap::with_capacity(self.fields.len() + extra);
        for (name, start, end) in self.fields.drain(..) {
            if keep(&name) {
                map.append(name, HeaderValue::from_maybe_shared(head.slice(start..end)).ok()?);
            }
        }
        Some(map)
    }
}

/// What the server made of the bytes at the start of its read buffer.
// The large variant is the common one; boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Parsed {
    /// More bytes needed.
    Partial,
    /// Not for the lean path: hyper takes the connection from here (nothing consumed).
    Handoff,
    /// Not an HTTP/1 request head, or one whose target or field values are invalid: the
    /// JSON 400 with this message, then close.
    BadRequest(&'static str),
    /// More fields than any path takes: the JSON 431, then close.
    TooLarge,
    /// A request with its whole body, if it has one; `close`: the client asked to close after
    /// this exchange.
    Ready { request: Request<ClientBody>, close: bool },
    /// A whole head whose body (a `Content-Length` of at most [`crate::headers::LEAN_BODY_MAX`],
    /// or small chunks) has not all arrived: the request takes this many bytes from the start
    /// of the buffer (at least this many, when chunked).
    AwaitBody(usize),
}

/// Parse a request head at the start of `buf` (consumed, with its body, when
/// [`Parsed::Ready`]). Taken: an HTTP/1.1 request (or an HTTP/1.0 one with `Host` and no
/// transfer coding) with an origin-form target that
/// [`HeadScan::lean_server`] allows (no body, or a small one framed by `Content-Length` or by
/// chunks that [`lean_chunks`] takes), of at most [`MAX_REQUEST_FIELDS`] fields. A chunked
/// body is taken as its data, with a `Content-Length` in place of `Transfer-Encoding`.
pub(crate) fn parse_request(buf: &mut BytesMut, scratch: &mut Scratch) -> Parsed {
    scratch.fields.clear();
    // Uninitialised slots: an array of empty headers costs a 2 KiB copy per request.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_REQUEST_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Too many fields for this path: hyper takes up to 100 (and the gateway answers 431
        // over `max_header_bytes`); more than that is the JSON 431 here (hyper's is bare).
        Err(httparse::Error::TooManyHeaders) => {
            let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_SERVER_FIELDS];
            let mut req = httparse::Request::new(&mut []);
            return match req.parse_with_uninit_headers(buf, &mut slots) {
                Err(httparse::Error::TooManyHeaders) => Parsed::TooLarge,
                _ => Parsed::Handoff,
            };
        }
        // Malformed (SPEC §4): hyper would close with a bare 400; the JSON answer instead.
        Err(_) => return Parsed::BadRequest("malformed request head"),
    };
    let (Some(method), Some(path), Some(minor @ (0 | 1))) = (req.method, req.path, req.version) else {
        return Parsed::Handoff;
    };
    let http10 = minor == 0;
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::Handoff };
    if method == Method::CONNECT || !path.starts_with('/') {
        return Parsed::Handoff;
    }
    let base = buf.as_ptr() as usize;
    let mut scan = HeadScan::default();
    for (i, h) in req.headers.iter().enumerate() {
        let Ok(name) = scratch.names.name(i, h.name.as_bytes()) else { return Parsed::Handoff };
        scan.field(&name, h.value);
        let start = h.value.as_ptr() as usize - base;
        scratch.fields.push((name, start, start + h.value.len()));
    }
    let Some(framing) = scan.lean_server() else { return Parsed::Handoff };
    // HTTP/1.0 (`ab -k`, old proxies and probes): without `Host`, or with a transfer coding
    // (RFC 9112 §6.1: faulty framing in HTTP/1.0), hyper takes the connection, as before.
    if http10 && (!scan.host || framing == LeanBody::Chunked) {
        return Parsed::Handoff;
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without `Host` is a 400 (one `Host` too many, or an
    // invalid one, is the gateway's to refuse: `crate::edge`).
    if !scan.host {
        return Parsed::BadRequest("missing Host");
    }
    // Where the body ends, and how many bytes of data it holds when chunked.
    let (whole, chunked) = match framing {
        LeanBody::Length(n) => (usize::try_from(n).map_or(usize::MAX, |b| len.saturating_add(b)), None),
        LeanBody::Chunked => match lean_chunks(&buf[len..]) {
            LeanChunks::Whole { wire, data } => (len + wire, Some(data)),
            // At least one byte more (re-scanned as bytes arrive, over at most
            // `MAX_LEAN_CHUNKS` size lines).
            LeanChunks::Partial => return Parsed::AwaitBody(buf.len() + 1),
            LeanChunks::Other => return Parsed::Handoff,
        },
    };
    if buf.len() < whole {
        return Parsed::AwaitBody(whole);
    }
    let path_start = path.as_ptr() as usize - base;
    let path_end = path_start + path.len();
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path_start..path_end)) else {
        return Parsed::BadRequest("invalid request target");
    };
    // Room for what the gateway adds (see `ADDED_REQUEST_FIELDS`). A chunked body goes on
    // as the data it carries, framed by a `Content-Length` instead (as nginx buffers one).
    let headers = match chunked {
        None => scratch.map(&head, super::ADDED_REQUEST_FIELDS, |_| true),
        Some(_) => scratch.map(&head, super::ADDED_REQUEST_FIELDS, |name| name != header::TRANSFER_ENCODING),
    };
    let Some(mut headers) = headers else { return Parsed::BadRequest("invalid header value") };
    let body = match chunked {
        Some(data) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(data));
            lean_chunk_data(&buf.split_to(whole - len).freeze(), data)
        }
        None if whole > len => buf.split_to(whole - len).freeze(),
        None => Bytes::new(),
    };
    let body = if body.is_empty() { ClientBody::Empty } else { ClientBody::Full(Some(body)) };
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    if http10 {
        // An HTTP/1.0 connection persists only when the client asks (RFC 9112 §9.3).
        *request.version_mut() = Version::HTTP_10;
        return Parsed::Ready { request, close: scan.close || !scan.keep_alive };
    }
    Parsed::Ready { request, close: scan.close }
}

/// A parsed response head and how its body is framed.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) response: Response<()>,
    pub(crate) framing: Framing,
    /// The connection can take another request once the body is read.
    pub(crate) keep_alive: bool,
}

pub(crate) fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Parse a response head at the start of `buf`: `Ok(None)` when more bytes are needed.
/// Interim 1xx responses (100 Continue, 103 Early Hints) are skipped. Hop-by-hop fields are
/// left out as the head is parsed (no second pass over the map).
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    scratch: &mut Scratch,
    head_request: bool,
) -> io::Result<Option<ResponseHead>> {
    loop {
        scratch.fields.clear();
        // Uninitialised slots: a 100-field array of empty headers costs a 3 KiB copy per response.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_FIELDS];
        let mut parsed = httparse::Response::new(&mut []);
        let len =
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(invalid("upstream response head is too large"));
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(invalid("upstream response has too many header fields"));
                }
                Err(_) => return Err(invalid("upstream response is not valid HTTP/1")),
            };
        let code = parsed.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| invalid("upstream response has an invalid status code"))?;
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(invalid("upstream switched protocols on a request that asked for no upgrade"));
            }
            buf.advance(len);
            continue;
        }
        let base = buf.as_ptr() as usize;
        let mut length: Option<u64> = None;
        let mut chunked = None;
        let mut close = version == Version::HTTP_10;
        // A `Connection` value naming other headers: those are hop-by-hop too, and the
        // general remover runs on the map; otherwise hop-by-hop fields are never inserted.
        let mut named_other = false;
        for (i, h) in parsed.headers.iter().enumerate() {
            let name = scratch
                .names
                .name(i, h.name.as_bytes())
                .map_err(|_| invalid("upstream sent an invalid header name"))?;
            let start = h.value.as_ptr() as usize - base;
            if name == header::CONTENT_LENGTH {
                let n = parse_length(h.value).ok_or_else(|| invalid("upstream sent an invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(invalid("upstream sent conflicting Content-Length values"));
                }
                length = Some(n);
            } else if name == header::TRANSFER_ENCODING {
                // Only the last coding matters: chunked last frames the body.
                chunked = Some(last_token(h.value).eq_ignore_ascii_case(b"chunked"));
            } else if name == header::CONNECTION {
                named_other |= headers::names_other_headers(h.value);
                for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                        close = false;
                    }
                }
            }
            scratch.fields.push((name, start, start + h.value.len()));
        }
        let head = buf.split_to(len).freeze();
        // Room for what the gateway adds to a response (X-Request-Id, four RateLimit-*
        // fields): a map sized to the upstream's fields grows (and rehashes) on the first.
        let keep = |name: &HeaderName| {
            // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
            !(chunked.is_some() && name == header::CONTENT_LENGTH) && (named_other || !headers::is_hop_by_hop(name))
        };
        let mut fields = scratch.map(&head, 5, keep).ok_or_else(|| invalid("upstream sent an invalid header value"))?;
        if named_other {
            headers::remove_hop_by_hop(&mut fields, false);
        }
        let framing = if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Empty
        } else {
            match (chunked, length) {
                (Some(true), _) => Framing::Chunked,
                (Some(false), _) | (None, None) => Framing::Close,
                (None, Some(0)) => Framing::Empty,
                (None, Some(n)) => Framing::Length(n),
            }
        };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = fields;
        let keep_alive = !close && framing != Framing::Close;
        return Ok(Some(ResponseHead { response, framing, keep_alive }));
    }
}

/// `Content-Length`: decimal digits only (a list of equal values, as some servers send, too).
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let mut result = None;
    for part in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if result.is_some_and(|r| r != n) {
            return None;
        }
        result = Some(n);
    }
    result
}

fn last_token(value: &[u8]) -> &[u8] {
    value.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii()
}

/// The trailer section after the last chunk: `Ok(Some(None))` for none, `Ok(None)` when
/// more bytes are needed.
pub(crate) fn parse_trailers(buf: &mut BytesMut) -> io::Result<Option<Option<HeaderMap>>> {
    if buf.starts_with(b"\r\n") {
        buf.advance(2);
        return Ok(Some(None));
    }
    if buf.starts_with(b"\n") {
        buf.advance(1);
        return Ok(Some(None));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((used, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value))
                else {
                    return Err(invalid("upstream sent an invalid trailer field"));
                };
                map.append(name, value);
            }
            buf.advance(used);
            Ok(Some(Some(map)))
        }
        Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILERS => Ok(None),
        _ => Err(invalid("upstream sent invalid trailers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body;

    fn parse_one(raw: &[u8]) -> Parsed {
        parse_request(&mut BytesMut::from(raw), &mut Scratch::default())
    }

    /// Every one of `heads` is handed to hyper.
    fn all_handed_off(heads: &[&[u8]]) {
        for head in heads {
            assert!(matches!(parse_one(head), Parsed::Handoff), "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn the_fronts_reserve_never_grows_a_lean_requests_map() {
        for n in 1..=40 {
            let fields: String = (1..n).map(|i| format!("X-F{i}: v\r\n")).collect();
            let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
            let Parsed::Ready { mut request, .. } = parse_one(raw.as_bytes()) else { panic!("{n} fields are taken") };
            assert_eq!(request.headers().len(), n);
            let room = request.headers().capacity();
            request.headers_mut().reserve(crate::http1::ADDED_REQUEST_FIELDS);
            assert_eq!(request.headers().capacity(), room, "{n} fields: the reserve reallocated the map");
        }
    }

    #[test]
    fn plain_requests_are_taken_and_the_rest_goes_to_hyper() {
        let Parsed::Ready { request, close } =
            parse_one(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        else {
            panic!("a plain GET is taken")
        };
        assert_eq!(request.uri(), "/a?b=1");
        assert!(matches!(request.body(), ClientBody::Empty));
        assert_eq!(request.headers()["host"], "x");
        assert!(close);
        assert!(matches!(parse_one(b"GET /a HTTP/1.1\r\nHost: x\r\n"), Parsed::Partial));
        assert!(matches!(
            parse_one(b"DELETE /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
            Parsed::Ready { .. }
        ));
        all_handed_off(&[
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /a HTTP/1.0\r\n\r\n",
            b"GET http://example.com/a HTTP/1.1\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        ]);
        // More fields than taken here: hyper's limit is higher (and the gateway's 431 applies).
        let many = format!("GET /a HTTP/1.1\r\n{}\r\n", "x-f: 1\r\n".repeat(MAX_REQUEST_FIELDS + 1));
        assert!(matches!(parse_one(many.as_bytes()), Parsed::Handoff));
        // More than any path takes: refused here, with the JSON answer.
        let too_many = format!("GET /a HTTP/1.1\r\n{}\r\n", "x-f: 1\r\n".repeat(MAX_SERVER_FIELDS + 1));
        assert!(matches!(parse_one(too_many.as_bytes()), Parsed::TooLarge));
        for malformed in [
            &b"GARBAGE\r\n\r\n"[..],
            b"NOT HTTP AT ALL\r\n\r\n",
            b"GET /a HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /a HTTP/9.9\r\n\r\n",
            b"GET /a<b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nX-Host: x\r\n\r\n",
        ] {
            assert!(matches!(parse_one(malformed), Parsed::BadRequest(_)), "{}", String::from_utf8_lossy(malformed));
        }
    }

    #[test]
    fn http10_requests_with_a_host_are_taken_and_kept_open_only_when_they_ask() {
        let Parsed::Ready { request, close } =
            parse_one(b"GET /a HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n")
        else {
            panic!("an HTTP/1.0 GET asking for keep-alive is taken")
        };
        assert_eq!((request.version(), request.uri().path(), close), (Version::HTTP_10, "/a", false));
        // HTTP/1.0 closes unless asked not to, and `close` wins over `keep-alive`.
        for head in [
            &b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n"[..],
            b"GET /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n",
        ] {
            let Parsed::Ready { request, close } = parse_one(head) else { panic!("{}", String::from_utf8_lossy(head)) };
            assert!(close && request.version() == Version::HTTP_10, "{}", String::from_utf8_lossy(head));
        }
        let Parsed::Ready { request, .. } = parse_one(b"POST /a HTTP/1.0\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        else {
            panic!("an HTTP/1.0 body framed by its length is taken")
        };
        assert_eq!(request.body().size_hint().exact(), Some(2));
        // No Host (optional in HTTP/1.0), a transfer coding (faulty framing in HTTP/1.0), an
        // expectation or an upgrade: hyper's, with its own HTTP/1.0 rules, as before.
        all_handed_off(&[
            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /a HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET /ws HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ]);
    }

    #[test]
    fn a_small_body_framed_by_one_content_length_is_read_whole_and_the_rest_goes_to_hyper() {
        let mut buf = BytesMut::from(&b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b"[..]);
        let Parsed::Ready { request, close: false } = parse_request(&mut buf, &mut Scratch::default()) else {
            panic!("a small body is taken")
        };
        let ClientBody::Full(Some(body)) = request.body() else { panic!("the body is read whole") };
        assert_eq!((request.method(), &body[..]), (&Method::POST, &b"hello"[..]));
        assert_eq!(&buf[..], b"GET /b", "the next request's bytes stay");
        // Not all here yet: the head is not consumed, and the request is this long.
        let partial = b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel";
        let mut buf = BytesMut::from(&partial[..]);
        assert!(
            matches!(parse_request(&mut buf, &mut Scratch::default()), Parsed::AwaitBody(n) if n == partial.len() + 2)
        );
        assert_eq!(buf.len(), partial.len());
        // The largest body read whole, and one byte more.
        let max = crate::headers::LEAN_BODY_MAX;
        let at_max = format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {max}\r\n\r\n");
        assert!(matches!(parse_one(at_max.as_bytes()), Parsed::AwaitBody(_)));
        let over = format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", max + 1);
        assert!(matches!(parse_one(over.as_bytes()), Parsed::Handoff));
        // Any other length field is hyper's (behind the head gate, which refuses SPEC §4's cases).
        all_handed_off(&[
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\nhello",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        ]);
        // A body without `Host` is refused as a head without one is.
        assert!(matches!(parse_one(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"), Parsed::BadRequest(_)));
    }

    #[test]
    fn small_plain_chunks_are_read_whole_as_data_with_a_length_and_the_rest_goes_to_hyper() {
        let head = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n";
        let taken = |body: &str, next: &str| {
            let mut buf = BytesMut::from(format!("{head}{body}{next}").as_bytes());
            let Parsed::Ready { request, close: false } = parse_request(&mut buf, &mut Scratch::default()) else {
                panic!("{body:?} is taken")
            };
            assert_eq!(&buf[..], next.as_bytes(), "exactly the body is consumed: {body:?}");
            let (parts, body) = request.into_parts();
            assert!(!parts.headers.contains_key(header::TRANSFER_ENCODING));
            assert_eq!(parts.headers["x-a"], "1");
            let data = match body {
                ClientBody::Full(Some(b)) => b,
                ClientBody::Empty => Bytes::new(),
                other => panic!("{other:?}"),
            };
            assert_eq!(parts.headers[header::CONTENT_LENGTH], data.len().to_string().as_str());
            data
        };
        assert_eq!(taken("5\r\nhello\r\n0\r\n\r\n", "GET /b"), "hello");
        assert_eq!(taken("3\r\nabc\r\nA\r\n0123456789\r\n1\r\n!\r\n0\r\n\r\n", ""), "abc0123456789!");
        assert_eq!(taken("0\r\n\r\n", "GET /b HTTP/1.1\r\n"), "");
        assert_eq!(taken("000004\r\nwiki\r\n0\r\n\r\n", ""), "wiki");
        // A body that is so far a plain one waits (the head stays, nothing is consumed),
        // wherever it was cut.
        let whole = format!("{head}5\r\nhello\r\n0\r\n\r\n");
        for cut in head.len()..whole.len() {
            let mut buf = BytesMut::from(&whole.as_bytes()[..cut]);
            let parsed = parse_request(&mut buf, &mut Scratch::default());
            assert!(matches!(parsed, Parsed::AwaitBody(n) if n > cut), "cut at {cut}: {parsed:?}");
            assert_eq!(buf.len(), cut);
        }
        // Anything but the plainest form is hyper's to frame or to refuse, from the head on.
        let max = usize::try_from(crate::headers::LEAN_BODY_MAX).unwrap();
        let many: String = "1\r\nx\r\n".repeat(super::super::body::MAX_LEAN_CHUNKS + 1);
        for body in [
            "5;ext=1\r\nhello\r\n0\r\n\r\n".to_string(),
            "5\nhello\r\n0\r\n\r\n".to_string(),
            "5\r\nhello\n0\r\n\r\n".to_string(),
            "5\r\nhelloX\r\n0\r\n\r\n".to_string(),
            "5 \r\nhello\r\n0\r\n\r\n".to_string(),
            "0\r\nX-Sum: 1\r\n\r\n".to_string(),
            "-5\r\nhello\r\n0\r\n\r\n".to_string(),
            "0000005\r\nhello\r\n0\r\n\r\n".to_string(),
            format!("{:x}\r\n", max + 1),
            format!("{:x}\r\n{}\r\n1\r\n", max, "x".repeat(max)),
            many,
        ] {
            let mut buf = BytesMut::from(format!("{head}{body}").as_bytes());
            let len = buf.len();
            let parsed = parse_request(&mut buf, &mut Scratch::default());
            assert!(matches!(parsed, Parsed::Handoff), "{body:?}: {parsed:?}");
            assert_eq!(buf.len(), len);
        }
        // The largest body read whole.
        let at_max = format!("{head}{:x}\r\n{}\r\n0\r\n\r\n", max, "x".repeat(max));
        assert!(matches!(parse_one(at_max.as_bytes()), Parsed::Ready { .. }));
    }

    /// Mutated and truncated request heads: taken, handed to hyper, refused or waited for,
    /// never a panic; a head that is taken has a method, an origin-form target and the body
    /// its `Content-Length` says.
    #[test]
    fn arbitrary_request_heads_never_panic() {
        let seeds: [&[u8]; 3] = [
            b"GET /a/b?c=d HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Request-Id: abc\r\n\r\n",
            b"DELETE /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nAccept: */*\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
        ];
        let rng = nexus_core::rng::Rng::seeded(11);
        let mut scratch = Scratch::default();
        for i in 0..20_000 {
            let bytes = rng.mutate(seeds[i % seeds.len()], b"\r\n: /%#\x800", 3);
            if let Parsed::Ready { request, .. } = parse_request(&mut BytesMut::from(&bytes[..]), &mut scratch) {
                assert!(request.uri().path().starts_with('/'));
                let length =
                    request.headers().get(header::CONTENT_LENGTH).map(|v| v.to_str().unwrap().parse::<usize>());
                let body = request.body().size_hint().exact().unwrap();
                assert_eq!(length.map(Result::unwrap).unwrap_or(0) as u64, body);
                assert!(!request.headers().contains_key(header::TRANSFER_ENCODING));
                assert!(request.headers().contains_key(header::HOST));
            }
        }
    }

    #[test]
    fn field_names_carried_from_the_previous_head_are_only_reused_where_they_match() {
        let mut scratch = Scratch::default();
        let mut parse = |head: &[u8]| {
            let mut buf = BytesMut::from(head);
            parse_response(&mut buf, &mut scratch, false).unwrap().unwrap().response.headers().clone()
        };
        let first = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nServer: s\r\n\r\n");
        assert_eq!((first["x-a"].as_bytes(), first["server"].as_bytes()), (&b"1"[..], &b"s"[..]));
        // Same names in another case, a different name in the second place, one more field.
        let second = parse(b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 2\r\nX-B: 2\r\nSERVER: t\r\nX-C: 3\r\n\r\n");
        let names: Vec<&str> = second.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-length", "x-b", "server", "x-c"]);
        assert_eq!(second["server"], "t");
        assert!(!second.contains_key("x-a"));
        // Fewer fields than before.
        let third = parse(b"HTTP/1.1 204 No Content\r\nX-A: 9\r\n\r\n");
        assert_eq!(third.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-a"]);
    }

    /// Mutated and truncated response heads: parsed, refused or waited for, never a panic,
    /// and a head that parses keeps its framing consistent with its status.
    #[test]
    fn arbitrary_response_heads_never_panic() {
        let seeds: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 204 No Content\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7, 7\r\nProxy-X: y\r\n\r\n",
            b"HTTP/1.1 502 Bad\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        ];
        let rng = nexus_core::rng::Rng::seeded(7);
        let mut scratch = Scratch::default();
        for i in 0..20_000 {
            let bytes = rng.mutate(seeds[i % seeds.len()], b"\r\n:, 0z\x80\0", 3);
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(head)) = parse_response(&mut buf, &mut scratch, i % 5 == 0) {
                let status = head.response.status();
                if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                    assert_eq!(head.framing, Framing::Empty);
                }
                assert!(!status.is_informational());
            }
        }
    }

    #[test]
    fn content_length_is_digits_or_a_list_of_one_value() {
        assert_eq!(parse_length(b"12"), Some(12));
        assert_eq!(parse_length(b"7, 7"), Some(7));
        assert_eq!(parse_length(b"7, 8"), None);
        assert_eq!(parse_length(b"-1"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"99999999999999999999"), None);
    }
}
