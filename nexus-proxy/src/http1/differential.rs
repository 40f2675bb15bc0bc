//! The lean path and hyper must not disagree in the dangerous direction: a request head the
//! lean parser takes is one hyper's HTTP/1 server takes too, as the same method and target
//! and with a body of the same length. (The lean path refuses more than hyper does on purpose: a missing
//! `Host`, an invalid target or field value; and it hands to hyper whatever it does not take.)
//! Both use `httparse` underneath, so the decisions are compared, not the parses.

use super::head::{Parsed, Scratch, parse_request};
use bytes::BytesMut;
use http::{Method, Request, Version};
use http_body::Body;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

/// What hyper's server made of `input`: the first request's method, target, version and its
/// body's length (read to the end), or `None` when it took no request or could not read its body.
async fn hyper_takes(input: &[u8]) -> Option<(Method, String, Version, Option<u64>)> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let seen = Arc::new(Mutex::new(None));
    let record = Arc::clone(&seen);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let record = Arc::clone(&record);
        async move {
            let (method, target, version) = (req.method().clone(), req.uri().to_string(), req.version());
            let body = http_body_util::BodyExt::collect(req.into_body()).await;
            let mut slot = record.lock().unwrap();
            if slot.is_none()
                && let Ok(body) = body
            {
                *slot = Some((method, target, version, Some(body.to_bytes().len() as u64)));
            }
            Ok::<_, Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        // The test closes its side after the input: hyper still answers what it read.
        .half_close(true)
        .serve_connection(hyper_util::rt::TokioIo::new(server), svc);
    let (mut client, mut sink) = {
        let (read, write) = tokio::io::split(client);
        (write, read)
    };
    let _ = client.write_all(input).await;
    let _ = client.shutdown().await;
    let drain = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut sink, &mut out).await;
    });
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
    drain.abort();
    seen.lock().unwrap().take()
}

#[tokio::test]
async fn a_head_the_lean_path_takes_is_one_hyper_takes_the_same_way() {
    let seeds: [&[u8]; 11] = [
        b"GET /a/b?c=d HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Request-Id: abc\r\n\r\n",
        b"DELETE /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nAccept: */*\r\n\r\n",
        b"POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"OPTIONS /o HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
        b"GET /t HTTP/1.1\r\nHost: x\r\nX-A: a\tb\r\nX-B:\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
        b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: x\r\n\r\n1\r\n\r\r\n0\r\n\r\n",
        b"GET /k HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\nUser-Agent: ApacheBench/2.3\r\n\r\n",
        b"POST /q HTTP/1.0\r\nHost: x\r\nContent-Length: 2\r\n\r\nok",
    ];
    let rng = nexus_core::rng::Rng::seeded(23);
    let mut scratch = Scratch::default();
    let (mut taken, mut compared) = (0, 0);
    for i in 0..10_000 {
        let seed = seeds[i % seeds.len()];
        // One or two bytes replaced, the length kept (a truncated head is taken by neither).
        let mut input = seed.to_vec();
        let alphabet = b"\r\n: /\t\x00\x7f\x80Hh0%";
        for _ in 0..(i % 3).min(2) {
            let at = usize::try_from(rng.below(input.len() as u64)).unwrap_or(0);
            input[at] = alphabet[usize::try_from(rng.below(alphabet.len() as u64)).unwrap_or(0)];
        }
        let Parsed::Ready { request, .. } = parse_request(&mut BytesMut::from(&input[..]), &mut scratch) else {
            continue;
        };
        taken += 1;
        let hyper = hyper_takes(&input).await;
        let Some((method, target, version, length)) = hyper else {
            panic!("the lean path took a head hyper refuses: {:?}", String::from_utf8_lossy(&input));
        };
        assert_eq!(
            (&method, target.as_str(), version, length),
            (
                request.method(),
                request.uri().to_string().as_str(),
                request.version(),
                request.body().size_hint().exact()
            ),
            "{:?}",
            String::from_utf8_lossy(&input)
        );
        compared += 1;
    }
    assert!(taken > 2_000 && compared == taken, "{taken} heads taken, {compared} compared");
}
