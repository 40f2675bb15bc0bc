//! The hand-written HTTP/1.1 code, in one place, behind two entry points:
//!
//! - **serve a connection**: [`Server::serve_connection`] takes requests without a body, or
//!   with a small one framed by `Content-Length` or by a few plain chunks (read whole first),
//!   on a lean loop of its own and hands the rest of the connection to hyper (large bodies,
//!   other chunked ones, upgrades, HTTP/2 cleartext), see `server`;
//! - **exchange on a pooled connection**: the upstream side sends a request without a body,
//!   or with a small one that is all here, and reads the response straight off a
//!   keep-alive connection (`client`, used by the pool; other bodies go through hyper's
//!   client).
//!
//! Both read heads with one model (`head`: request and response heads, one `Framing`, field
//! names carried from head to head by `names`), and which requests take the lean paths is
//! decided in one place (`HeadScan::lean_server` and `lean_upstream` in
//! [`crate::headers`]). Why the lean paths exist at all, and what they save, is in each
//! file's docs and in `docs/load-test-report.md`.
//!
//! Under `--cfg fuzzing` (as `cargo fuzz` builds), the `fuzzing` module exposes the protocol
//! functions to the targets in `fuzz/`.

mod body;
mod client;
#[cfg(test)]
mod differential;
mod frames;
mod head;
mod names;
mod server;
mod sniff;
mod streams;
mod write;

pub(crate) use body::RawBody;
pub(crate) use client::{Client, ExchangeError, RawConn};
pub(crate) use head::parse_length;
pub use server::{ClientBody, Connection, Handler, Server};
pub use sniff::Refusal;
pub(crate) use sniff::only_chunked;

/// Room a request's field map is given for the fields the gateway adds: `X-Request-Id`,
/// `traceparent`, and on hyper's path `X-Forwarded-For/-Proto/-Host` (the lean exchange
/// writes those as it encodes the head) or forwarded claims. The lean parse sizes the map
/// with this and the front reserves the same, so on the lean path the reserve never
/// reallocates: a map sized for fewer grew on every request with two client fields
/// (~650 instructions).
pub(crate) const ADDED_REQUEST_FIELDS: usize = 5;

/// The protocol functions, for `fuzz/` (built only under `--cfg fuzzing`). Each checks the
/// properties its target stands for and panics when one does not hold.
#[cfg(fuzzing)]
pub mod fuzzing {
    use super::body::{Decoded, Decoder};
    use super::head::{self, Framing, Parsed, Scratch};
    use bytes::BytesMut;
    use http::{HeaderMap, HeaderName, HeaderValue, Method, header};

    /// Parse `data` as a request head: never a panic; a head that is taken has an
    /// origin-form target and the body its `Content-Length` says (none without one; a
    /// chunked body is taken as its data, with the length put in its place), and the bytes
    /// head and body used are gone from the buffer; a head waiting for its body names a
    /// length beyond the bytes there.
    pub fn request_head(data: &[u8]) {
        let mut buf = BytesMut::from(data);
        match head::parse_request(&mut buf, &mut Scratch::default()) {
            Parsed::Ready { request, .. } => {
                assert!(request.uri().path().starts_with('/'));
                // (Several `Content-Length: 0` fields are one empty body, as hyper takes them.)
                let body = match request.body() {
                    super::ClientBody::Full(Some(b)) => b.len(),
                    super::ClientBody::Empty => 0,
                    other => panic!("not a body the lean path reads: {other:?}"),
                };
                for v in request.headers().get_all(header::CONTENT_LENGTH) {
                    assert_eq!(v.to_str().unwrap().parse::<usize>().unwrap(), body);
                }
                assert!(!request.headers().contains_key(header::TRANSFER_ENCODING));
                assert!(request.headers().contains_key(header::HOST));
                assert!(buf.len() < data.len());
            }
            Parsed::AwaitBody(whole) => assert!(whole > data.len() && buf.len() == data.len()),
            _ => {}
        }
    }

    /// Parse `data` as a response head, twice on one connection's scratch (names carried
    /// over): never a panic; a head that parses is final (not 1xx), a 204/304 or a response
    /// to HEAD has no body, and hop-by-hop fields are gone.
    pub fn response_head(data: &[u8], head_request: bool) {
        let mut scratch = Scratch::default();
        for _ in 0..2 {
            let mut buf = BytesMut::from(data);
            if let Ok(Some(parsed)) = head::parse_response(&mut buf, &mut scratch, head_request) {
                let status = parsed.response.status();
                assert!(!status.is_informational());
                if head_request || status.as_u16() == 204 || status.as_u16() == 304 {
                    assert_eq!(parsed.framing, Framing::Empty);
                }
                for name in parsed.response.headers().keys() {
                    assert!(!crate::headers::is_hop_by_hop(name), "{name}");
                }
            }
        }
    }

    /// Decode `data` as a chunked body, whole and fed in pieces of `piece` bytes: never a
    /// panic, and the same data, trailers and outcome either way. A body the lean server's
    /// scan takes whole is one the decoder reads to the same data, ending at the same byte,
    /// without trailers; one it waits for is one the decoder has not found the end of.
    pub fn chunked_body(data: &[u8], piece: usize) {
        let whole = decode(data, data.len().max(1));
        let pieces = decode(data, piece.max(1));
        assert_eq!(whole, pieces);
        match super::body::lean_chunks(data) {
            super::body::LeanChunks::Whole { wire, data: n } => {
                let lean = super::body::lean_chunk_data(&bytes::Bytes::copy_from_slice(&data[..wire]), n);
                assert_eq!(lean.len(), n);
                assert_eq!(decode(&data[..wire], wire.max(1)), Ok((lean.to_vec(), None, true)));
            }
            // (It may wait on bytes the decoder already refuses: the next ones settle it.)
            super::body::LeanChunks::Partial => assert!(!matches!(whole, Ok((_, _, true))), "{whole:?}"),
            super::body::LeanChunks::Other => {}
        }
    }

    fn decode(wire: &[u8], piece: usize) -> Result<(Vec<u8>, Option<HeaderMap>, bool), String> {
        let mut decoder = Decoder::new(Framing::Chunked);
        let (mut buf, mut data, mut trailers) = (BytesMut::new(), Vec::new(), None);
        let mut pieces = wire.chunks(piece);
        loop {
            match decoder.decode(&mut buf).map_err(|e| e.to_string())? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers, true)),
                Decoded::More => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return Ok((data, trailers, false)),
                },
            }
        }
    }

    /// Encode a request head for the upstream from `method`, `target` and `fields` (skipped
    /// when they are not a valid request) and parse it back with `httparse`: it parses whole,
    /// with the same method and target, and its fields are what the hyper path's rewrite
    /// (hop-by-hop removed, `X-Forwarded-*` set) leaves. Also round-trips `fields` as a
    /// chunked body through the server's chunk encoder and the client's decoder.
    pub fn encode_round_trip(method: &[u8], target: &[u8], fields: &[(&[u8], &[u8])], trusted: bool) {
        let (Ok(method), Ok(uri)) = (Method::from_bytes(method), http::Uri::try_from(target)) else { return };
        if uri.scheme().is_some() || !target.starts_with(b"/") {
            return;
        }
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            // A value with surrounding whitespace never comes from a parser (both trim it).
            if value.trim_ascii() != *value {
                return;
            }
            let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) else {
                return;
            };
            map.append(name, value);
        }
        // Neither server path takes more than 100 fields (hyper's limit; the lean path's is lower).
        if map.len() > 100 {
            return;
        }
        let scan = crate::headers::HeadScan::of(&map);
        if !scan.lean_upstream() {
            return;
        }
        if scan.names_others {
            crate::headers::remove_hop_by_hop(&mut map, false);
        }
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = method.clone();
        parts.uri = uri;
        parts.headers = map;
        let ip = HeaderValue::from_static("192.0.2.1");
        let mut out = Vec::new();
        super::client::encode_head(&parts, &super::Client { ip: &ip, trusted, proto: "http" }, 0, &mut out);

        let mut slots = [httparse::EMPTY_HEADER; 256];
        let mut parsed = httparse::Request::new(&mut slots);
        let Ok(httparse::Status::Complete(len)) = parsed.parse(&out) else {
            panic!("the encoded head does not parse: {:?}", String::from_utf8_lossy(&out));
        };
        assert_eq!(len, out.len());
        assert_eq!(parsed.method, Some(method.as_str()));
        assert_eq!(parsed.path, Some(parts.uri.path_and_query().map_or("/", |p| p.as_str())));
        let mut expected = parts.headers.clone();
        crate::headers::remove_hop_by_hop(&mut expected, false);
        let host = expected.get(header::HOST).cloned();
        crate::headers::set_forwarded(&mut expected, &ip, trusted, "http", host.as_ref());
        if matches!(method, Method::POST | Method::PUT | Method::PATCH)
            && !expected.contains_key(header::CONTENT_LENGTH)
        {
            expected.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        let mut got = HeaderMap::new();
        for f in parsed.headers.iter() {
            got.append(HeaderName::from_bytes(f.name.as_bytes()).unwrap(), HeaderValue::from_bytes(f.value).unwrap());
        }
        assert_eq!(sorted(&got), sorted(&expected), "{:?}", String::from_utf8_lossy(&out));

        let mut chunked = Vec::new();
        let mut sent = Vec::new();
        for (_, value) in fields.iter().filter(|(_, v)| !v.is_empty()) {
            super::write::encode_chunk(value, &mut chunked);
            sent.extend_from_slice(value);
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(decode(&chunked, 3), Ok((sent, None, true)));
    }

    /// Pass `data` through the gate in front of hyper's parser, whole and in pieces of
    /// `piece` bytes: never a panic, and what hyper would read, and the refusal, are the same
    /// either way (`data`'s first `prefix` bytes come as the lean path's replay).
    pub fn gate(data: &[u8], piece: usize, prefix: usize) {
        let whole = super::sniff::gate_through(data, data.len().max(1), 0);
        let pieces = super::sniff::gate_through(data, piece.max(1), prefix);
        assert_eq!(whole, pieces);
    }

    fn sorted(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = map.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
        v.sort();
        v
    }
}
