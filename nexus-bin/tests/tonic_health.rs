//! A real gRPC server and client through the binary (SPEC §9 "HTTP/2 and gRPC"): tonic's
//! standard health service (`tonic-health`, generated code, no protoc here) behind an `h2c`
//! upstream, called by tonic's generated client. Unary (`Check`) and server-streaming
//! (`Watch`) calls, an upstream error status arriving unchanged, the gateway's own answers as
//! the codes tonic reports, a client deadline cancelling a stream, and `health_check.type: grpc`
//! taking a NOT_SERVING endpoint out.

mod support;

use std::time::Duration;
use support::*;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A tonic server with the health service on 127.0.0.1; its address and the reporter that
/// sets the statuses it serves.
async fn tonic_upstream() -> (std::net::SocketAddr, tonic_health::server::HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
    (addr, reporter)
}

async fn channel(gw: &Gateway) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(gw.url("")).unwrap().connect().await.expect("tonic connects to the gateway")
}

async fn client(gw: &Gateway) -> HealthClient<tonic::transport::Channel> {
    HealthClient::new(channel(gw).await)
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest { service: service.into() }
}

#[tokio::test]
async fn tonic_calls_pass_through_and_the_gateways_answers_are_the_codes_tonic_reports() {
    let (addr, reporter) = tonic_upstream().await;
    let secret = "0123456789abcdef0123456789abcdef";
    let gw = gateway_with(
        &format!(
            "auth:\n  jwt:\n    main:\n      secret_env: TONIC_TEST_SECRET\n      algorithms: [HS256]\n\
             upstreams:\n  health:\n    endpoints: [{{ url: \"http://{addr}\" }}]\n    protocol: h2c\n\
             routes:\n  - name: health\n    paths: [{{ path: /grpc.health.v1.Health/, type: prefix }}]\n    upstream: health\n\
             \x20 - name: guarded\n    paths: [{{ path: /guarded.Svc/, type: prefix }}]\n    upstream: health\n    auth: main\n"
        ),
        &[("TONIC_TEST_SECRET", secret)],
    );
    reporter.set_service_status("orders", tonic_health::ServingStatus::NotServing).await;
    let mut health = client(&gw).await;

    // Unary: the whole-server status and a named service's, as the server sets them.
    let serving = health.check(check("")).await.expect("Check through the gateway").into_inner();
    assert_eq!(serving.status(), ServingStatus::Serving);
    assert_eq!(health.check(check("orders")).await.unwrap().into_inner().status(), ServingStatus::NotServing);

    // The upstream's own error status, with its message, arrives as the server sent it.
    let unknown = health.check(check("nope")).await.expect_err("an unknown service is NOT_FOUND");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // Server streaming: the current status at once, then each change as it happens.
    let mut watch = health.watch(check("orders")).await.expect("Watch through the gateway").into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::NotServing);
    reporter.set_service_status("orders", tonic_health::ServingStatus::Serving).await;
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::Serving);
    drop(watch);

    // A client deadline shorter than the stream: DEADLINE_EXCEEDED, from the gateway or tonic
    // itself, whichever sees it first; the gateway passed the deadline on (`grpc-timeout`).
    let mut short = tonic::Request::new(check("orders"));
    short.set_timeout(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let outcome = async {
        let mut stream = health.watch(short).await?.into_inner();
        loop {
            if stream.message().await?.is_none() {
                return Ok::<_, tonic::Status>(());
            }
        }
    };
    let ended = tokio::time::timeout(Duration::from_secs(5), outcome).await.expect("the deadline ends the call");
    assert_eq!(ended.expect_err("the stream outlived its deadline").code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(2));

    // The gateway's own answers: no route, and a route whose auth the call does not pass.
    let mut unrouted = tonic::client::Grpc::new(channel(&gw).await);
    unrouted.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, tonic_health::pb::HealthCheckResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/nowhere.Svc/Call");
    let status = unrouted.unary(tonic::Request::new(check("")), path, codec.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "no route: {status:?}");
    unrouted.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/guarded.Svc/Call");
    let status = unrouted.unary(tonic::Request::new(check("")), path, codec).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "no token: {status:?}");
    assert!(!status.message().is_empty());
}

#[tokio::test]
async fn a_grpc_health_check_takes_a_not_serving_tonic_endpoint_out_and_brings_it_back() {
    let (addr, reporter) = tonic_upstream().await;
    reporter.set_service_status("orders", tonic_health::ServingStatus::Serving).await;
    let gw = gateway(&format!(
        "upstreams:\n  orders:\n    endpoints: [{{ url: \"http://{addr}\" }}]\n    protocol: h2c\n\
         \x20   health_check: {{ type: grpc, service: orders, interval: 100ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1 }}\n\
         routes:\n  - name: health\n    paths: [{{ path: /grpc.health.v1.Health/, type: prefix }}]\n    upstream: orders\n"
    ));
    let mut health = client(&gw).await;
    assert_eq!(health.check(check("")).await.unwrap().into_inner().status(), ServingStatus::Serving);

    reporter.set_service_status("orders", tonic_health::ServingStatus::NotServing).await;
    let out = eventually(5, || {
        let mut health = health.clone();
        async move { health.check(check("")).await.is_err_and(|s| s.code() == Code::Unavailable) }
    })
    .await;
    assert!(out, "the NOT_SERVING endpoint is taken out: UNAVAILABLE from the gateway");

    reporter.set_service_status("orders", tonic_health::ServingStatus::Serving).await;
    let back = eventually(5, || {
        let mut health = health.clone();
        async move { health.check(check("")).await.is_ok() }
    })
    .await;
    assert!(back, "SERVING again: back in rotation");
}
