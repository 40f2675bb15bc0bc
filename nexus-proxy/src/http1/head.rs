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
    /// A request with its whole body, if it has one; `close`: the connection closes after
    /// this exchange (the client asked to, or it is HTTP/1.0 and did not ask to keep it).
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
mod tests;
