//! The gRPC upstream of `scripts/grpc-bench.sh`: HTTP/2 with prior knowledge on the address given
//! (default `127.0.0.1:18090`), one thread; every request is answered with its own body (the call's
//! message back) and `grpc-status: 0` in the trailers, as a unary gRPC echo would.
//!
//! `cargo build --release -p nexus-benches --example grpc_echo`

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18090".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind the echo address");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let message =
                    req.into_body().collect().await.map(http_body_util::Collected::to_bytes).unwrap_or_default();
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let body = Full::new(message).with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
                let mut res = Response::new(body);
                res.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
                Ok::<_, Infallible>(res)
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(1000)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
