//! The lean parsers' unit tests: what is taken, what waits, what goes to hyper.

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
    let Parsed::Ready { request, close } = parse_one(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    else {
        panic!("a plain GET is taken")
    };
    assert_eq!(request.uri(), "/a?b=1");
    assert!(matches!(request.body(), ClientBody::Empty));
    assert_eq!(request.headers()["host"], "x");
    assert!(close);
    assert!(matches!(parse_one(b"GET /a HTTP/1.1\r\nHost: x\r\n"), Parsed::Partial));
    assert!(matches!(parse_one(b"DELETE /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"), Parsed::Ready { .. }));
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
    let Parsed::Ready { request, close } = parse_one(b"GET /a HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n")
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
    let Parsed::Ready { request, .. } = parse_one(b"POST /a HTTP/1.0\r\nHost: x\r\nContent-Length: 2\r\n\r\nok") else {
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
    assert!(matches!(parse_request(&mut buf, &mut Scratch::default()), Parsed::AwaitBody(n) if n == partial.len() + 2));
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
            let length = request.headers().get(header::CONTENT_LENGTH).map(|v| v.to_str().unwrap().parse::<usize>());
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
