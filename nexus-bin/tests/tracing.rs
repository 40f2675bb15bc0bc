//! OpenTelemetry export through the real binary (SPEC §9 "Tracing and access log"): a fake
//! OTLP/HTTP collector on 127.0.0.1 decodes what the gateway posts to `/v1/traces`.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::time::Instant;

/// One exported span and the `service.name` of its resource.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    span: Span,
}

impl Exported {
    fn attr(&self, key: &str) -> Option<Value> {
        self.span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()?.value)
    }
    fn str(&self, key: &str) -> Option<String> {
        match self.attr(key)? {
            Value::StringValue(s) => Some(s),
            _ => None,
        }
    }
    fn int(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            Value::IntValue(i) => Some(i),
            _ => None,
        }
    }
    fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap()
    }
}

fn text(kv: &KeyValue) -> Option<&str> {
    match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// A collector that decodes every `POST /v1/traces` and keeps the spans.
async fn collector() -> (String, Arc<Mutex<Vec<Exported>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&spans);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let kept = Arc::clone(&kept);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let kept = Arc::clone(&kept);
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                        for rs in export.resource_spans {
                            let service = rs
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|kv| kv.key == "service.name")
                                .and_then(text)
                                .unwrap_or_default()
                                .to_owned();
                            for ss in rs.scope_spans {
                                for span in ss.spans {
                                    kept.lock().unwrap().push(Exported { service: service.clone(), span });
                                }
                            }
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    (format!("http://{addr}"), spans)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of trace `trace` (hex), once there are `n` (within 10 s: export runs every second).
async fn spans_of(spans: &Arc<Mutex<Vec<Exported>>>, trace: &str, n: usize) -> Vec<Exported> {
    let of = || spans.lock().unwrap().iter().filter(|s| hex(&s.span.trace_id) == trace).cloned().collect::<Vec<_>>();
    assert!(eventually(10, || async { of().len() >= n }).await, "expected {n} spans of {trace}, got {:?}", of());
    of()
}

#[tokio::test]
async fn a_sampled_request_exports_its_server_span_and_a_client_span_per_try() {
    let (endpoint, spans) = collector().await;
    let up = upstream("app").await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let yaml = format!(
        "tracing:\n  otlp_endpoint: {endpoint}\n  service_name: edge-test\n  sample_ratio: 1.0\n\
         upstreams:\n  app:\n    endpoints: [{{ url: \"{}\" }}, {{ url: \"{dead}\" }}]\n    retry: {{ max_retries: 1, initial_delay: 5ms }}\n\
         routes:\n  - name: orders\n    paths: [{{ path: /orders/, type: prefix }}]\n    upstream: app\n",
        up.url()
    );
    let gw = gateway(&yaml);

    // A client's sampled trace: continued, the gateway's server span under the client's span.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let req = Request::get(gw.url("/orders/7?secret=1"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(Body::default())
        .unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = up.last().headers["traceparent"].to_str().unwrap().to_owned();
    assert_eq!(&seen[3..35], trace, "the upstream's traceparent is in the client's trace");
    assert!(seen.ends_with("-01"), "sampled: {seen}");
    let tries = up.count();
    let all = spans_of(&spans, trace, 1 + tries).await;
    let server: Vec<_> = all.iter().filter(|s| s.kind() == SpanKind::Server).collect();
    let client: Vec<_> = all.iter().filter(|s| s.kind() == SpanKind::Client).collect();
    assert_eq!(server.len(), 1, "{all:?}");
    let server = server[0];
    assert_eq!(server.service, "edge-test", "resource service.name");
    assert_eq!(hex(&server.span.parent_span_id), "00f067aa0ba902b7", "child of the client's span");
    assert_eq!(server.str("http.request.method").as_deref(), Some("GET"));
    assert_eq!(server.str("url.path").as_deref(), Some("/orders/7"), "never the query string");
    assert_eq!(server.str("http.route").as_deref(), Some("orders"));
    assert_eq!(server.int("http.response.status_code"), Some(200));
    assert_eq!(server.str("nexus.request_id").as_deref(), headers["x-request-id"].to_str().ok());
    assert_eq!(server.str("nexus.upstream").as_deref(), Some("app"));
    assert!(server.span.end_time_unix_nano >= server.span.start_time_unix_nano);
    // Every try is a client span under the server span; the one that reached the upstream
    // is the parent named in the traceparent it carried.
    assert!(!client.is_empty());
    for c in &client {
        assert_eq!(c.span.parent_span_id, server.span.span_id, "client spans are children of the server span");
        assert_eq!(c.str("server.address").as_deref(), Some("127.0.0.1"));
        assert!(c.int("server.port").is_some_and(|p| p > 0));
    }
    let answered = client.iter().find(|c| c.int("http.response.status_code") == Some(200)).expect("a 200 try");
    assert_eq!(&seen[36..52], hex(&answered.span.span_id), "the upstream's parent is its try's span");
    assert_eq!(answered.int("server.port"), Some(i64::from(up.addr.port())));

    // Round robin sends one of the next requests to the closed port first: two tries, two
    // client spans (attempt 1 failed to connect, attempt 2 answered).
    let mut retried = None;
    for i in 0..4 {
        let before = spans.lock().unwrap().len();
        let (status, _, _) = get(&gw.url(&format!("/orders/{i}"))).await;
        assert_eq!(status, StatusCode::OK);
        let trace = up.last().headers["traceparent"].to_str().unwrap()[3..35].to_owned();
        let _ = before;
        let mine = spans_of(&spans, &trace, 2).await;
        let clients: Vec<_> = mine.into_iter().filter(|s| s.kind() == SpanKind::Client).collect();
        if clients.len() == 2 {
            retried = Some(clients);
            break;
        }
    }
    let clients = retried.expect("one request was retried");
    let first = clients.iter().find(|c| c.int("nexus.attempt") == Some(1)).expect("attempt 1");
    let second = clients.iter().find(|c| c.int("nexus.attempt") == Some(2)).expect("attempt 2");
    assert_eq!(first.str("error.type").as_deref(), Some("connect"));
    assert_eq!(second.int("http.response.status_code"), Some(200));
}

#[tokio::test]
async fn an_edge_that_does_not_respect_parent_sampling_keeps_the_trace_but_decides_itself() {
    let (endpoint, spans) = collector().await;
    let up = upstream("app").await;
    let yaml = format!(
        "tracing:\n  otlp_endpoint: {endpoint}\n  sample_ratio: 0.0\n  respect_parent_sampling: false\n\
         upstreams:\n  app:\n    endpoints: [{{ url: \"{}\" }}]\n\
         routes:\n  - name: all\n    paths: [{{ path: / }}]\n    upstream: app\n",
        up.url()
    );
    let gw = gateway(&yaml);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for _ in 0..5 {
        let req = Request::get(gw.url("/x"))
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .body(Body::default())
            .unwrap();
        assert_eq!(send(req).await.0, StatusCode::OK);
        let seen = up.last().headers["traceparent"].to_str().unwrap().to_owned();
        assert_eq!(&seen[3..35], trace, "the trace id is continued");
        assert!(seen.ends_with("-00"), "a client cannot force sampling: {seen}");
    }
    // Export runs every second: nothing arrives in two of them.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(spans.lock().unwrap().is_empty(), "{:?}", spans.lock().unwrap());
}

#[tokio::test]
async fn a_collector_that_never_answers_costs_counted_drops_and_no_latency() {
    // Accepts connections (the kernel's backlog) and never reads or answers them.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = upstream("app").await;
    let yaml = format!(
        "tracing:\n  otlp_endpoint: http://{}\n  sample_ratio: 1.0\n\
         upstreams:\n  app:\n    endpoints: [{{ url: \"{}\" }}]\n\
         routes:\n  - name: all\n    paths: [{{ path: / }}]\n    upstream: app\n",
        hung.local_addr().unwrap(),
        up.url()
    );
    let gw = gateway(&yaml);
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    // Requests for three seconds: the exports started meanwhile all hang.
    while Instant::now() < deadline {
        let t = Instant::now();
        assert_eq!(get(&gw.url("/x")).await.0, StatusCode::OK);
        slowest = slowest.max(t.elapsed());
        n += 1;
    }
    assert!(n > 20, "{n} requests in 3 s");
    assert!(slowest < Duration::from_millis(500), "a request waited for the collector: {slowest:?}");
    // The first batch's export times out after 5 s: its spans are counted as dropped.
    let dropped = || async {
        let metrics = get(&gw.admin_url("/metrics")).await.2;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("nexus_trace_spans_dropped_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(eventually(12, || async { dropped().await > 0.0 }).await, "no drop counted");
    drop(hung);
}
