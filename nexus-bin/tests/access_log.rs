//! The access log through the real binary (SPEC §9 "Tracing and access log"): one JSON line
//! per request on stdout, with the SPEC's fields.

mod support;

use http::{Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::Value;
use std::time::Duration;
use support::*;

const RSA1: &[u8] = include_bytes!("../../nexus-middleware/tests/fixtures/jwt/rsa1.pem");
const JWKS1: &str = include_str!("../../nexus-middleware/tests/fixtures/jwt/jwks-1.json");

fn token() -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = serde_json::json!({"sub": "alice", "iss": "https://issuer.test", "exp": exp});
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("key-1".into());
    encode(&h, &claims, &EncodingKey::from_rsa_pem(RSA1).unwrap()).unwrap()
}

/// The access-log lines written so far, once there are `n` of them (within 5 s).
async fn lines(gw: &Gateway, n: usize) -> Vec<Value> {
    assert!(
        eventually(5, || async { gw.access.lock().unwrap().len() >= n }).await,
        "expected {n} access-log lines, got {:?}",
        gw.access.lock().unwrap()
    );
    gw.access.lock().unwrap().iter().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

#[tokio::test]
async fn every_request_gets_one_json_line_with_the_spec_fields() {
    let up = upstream("app").await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, JWKS1).unwrap();
    let yaml = format!(
        "logging:\n  access_log: true\n\
         auth:\n  jwt:\n    main:\n      issuer: https://issuer.test\n      algorithms: [RS256]\n      jwks_file: {}\n\
         rate_limits:\n  one:\n    requests: 1\n    per: 1m\n\
         upstreams:\n  app:\n    endpoints: [{{ url: \"{}\" }}]\n\
         routes:\n  - name: open\n    paths: [{{ path: /open/, type: prefix }}]\n    upstream: app\n\
         \x20 - name: big\n    paths: [{{ path: /big/, type: prefix }}]\n    upstream: app\n\
         \x20 - name: api\n    paths: [{{ path: /api }}]\n    upstream: app\n    auth: main\n\
         \x20 - name: limited\n    paths: [{{ path: /limited }}]\n    upstream: app\n    rate_limit: one\n",
        jwks.display(),
        up.url()
    );
    let gw = gateway(&yaml);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";

    let req = Request::get(gw.url("/open/x?token=secret"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(Body::default())
        .unwrap();
    let (status, headers, body) = send(req).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app /open/x"));
    let open = &lines(&gw, 1).await[0];
    assert_eq!(open["request_id"], headers["x-request-id"].to_str().unwrap());
    assert_eq!(open["trace_id"], trace);
    assert_eq!(open["client_ip"], "127.0.0.1");
    assert_eq!(open["method"], "GET");
    assert_eq!(open["host"], gw.addr.to_string());
    assert_eq!(open["path"], "/open/x", "never the query string");
    assert_eq!(open["route"], "open");
    assert_eq!(open["upstream"], "app");
    assert_eq!(open["endpoint"], up.addr.to_string());
    assert_eq!(open["status"], 200);
    assert_eq!(open["bytes_sent"], body.len());
    assert!(open["duration_ms"].as_f64().is_some_and(|d| d > 0.0 && d < 5000.0), "{open}");
    assert!(open["timestamp"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')), "{open}");
    assert!(open["user"].is_null() && open["reason"].is_null(), "{open}");

    // The gateway's own answers say why; an authenticated request says who.
    assert_eq!(get(&gw.url("/limited")).await.0, StatusCode::OK);
    assert_eq!(get(&gw.url("/limited")).await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(get(&gw.url("/api")).await.0, StatusCode::UNAUTHORIZED);
    let authed = Request::get(gw.url("/api")).header("authorization", format!("Bearer {}", token()));
    assert_eq!(send(authed.body(Body::default()).unwrap()).await.0, StatusCode::OK);
    assert_eq!(get(&gw.url("/nowhere")).await.0, StatusCode::NOT_FOUND);
    // A streamed answer is logged when its last byte is out.
    assert_eq!(get(&gw.url("/big/200000")).await.2.len(), 200_000);
    // Probes are not logged.
    assert_eq!(get(&gw.url("/healthz")).await.0, StatusCode::OK);

    let all = lines(&gw, 7).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.access.lock().unwrap().len(), 7, "one line per request, none for the probe");
    let summary: Vec<(u64, &str, &str, &str)> = all
        .iter()
        .map(|l| {
            (
                l["status"].as_u64().unwrap(),
                l["route"].as_str().unwrap_or("-"),
                l["reason"].as_str().unwrap_or("-"),
                l["user"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        summary[1..],
        [
            (200, "limited", "-", "-"),
            (429, "limited", "rate_limited", "-"),
            (401, "api", "unauthorized", "-"),
            (200, "api", "-", "alice"),
            (404, "-", "route_not_found", "-"),
            (200, "big", "-", "-"),
        ]
    );
    assert_eq!(all[2]["upstream"], Value::Null, "a 429 never reached an upstream");
    assert!(
        all[1]["trace_id"].as_str().is_some_and(|t| t.len() == 32 && t != all[0]["trace_id"]),
        "no traceparent came: a trace of its own"
    );
    assert_eq!(all[6]["bytes_sent"], 200_000);
    assert_eq!(all[6]["endpoint"], up.addr.to_string());

    // Off (the default): nothing on stdout.
    let quiet = gateway(&config(
        &[("app", up.url())],
        "  - name: open\n    paths: [{ path: /, type: prefix }]\n    upstream: app\n",
    ));
    assert_eq!(get(&quiet.url("/x")).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(quiet.access.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_upstream_gets_one_traceparent_continuing_the_clients_trace() {
    let up = upstream("app").await;
    let yaml =
        config(&[("app", up.url())], "  - name: all\n    paths: [{ path: /, type: prefix }]\n    upstream: app\n")
            .replace("server:\n", "logging:\n  access_log: true\nserver:\n");
    let gw = gateway(&yaml);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sent = |values: &[&str]| {
        let mut req = Request::get(gw.url("/t"));
        for v in values {
            req = req.header("traceparent", *v);
        }
        req.header("tracestate", "vendor=abc").body(Body::default()).unwrap()
    };
    let seen = |s: &Seen| {
        let values: Vec<String> =
            s.headers.get_all("traceparent").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert_eq!(values.len(), 1, "one traceparent upstream, never two: {values:?}");
        let parts: Vec<String> = values[0].split('-').map(str::to_string).collect();
        assert_eq!((parts.len(), parts[0].as_str(), parts[1].len(), parts[2].len()), (4, "00", 32, 16), "{values:?}");
        parts
    };

    // A valid one is continued: same trace and flags, the gateway's span as the parent.
    assert_eq!(send(sent(&[&format!("00-{trace}-00f067aa0ba902b7-01")])).await.0, StatusCode::OK);
    let continued = seen(&up.last());
    assert_eq!((continued[1].as_str(), continued[3].as_str()), (trace, "01"));
    assert_ne!(continued[2], "00f067aa0ba902b7");
    assert_eq!(up.last().headers["tracestate"], "vendor=abc");
    // None, an invalid one, or two: a new trace.
    for values in [vec![], vec!["00-xyz"], vec![&*format!("00-{trace}-00f067aa0ba902b7-01"), "another"]] {
        assert_eq!(send(sent(&values)).await.0, StatusCode::OK);
        let started = seen(&up.last());
        assert_ne!(started[1], trace, "{values:?}");
        assert_eq!(started[3], "00");
    }
    // The access log names the trace the upstream saw.
    let logged = lines(&gw, 4).await;
    let upstream_traces: Vec<String> = up.seen().iter().map(|s| seen(s)[1].clone()).collect();
    let logged_traces: Vec<String> = logged.iter().map(|l| l["trace_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(logged_traces, upstream_traces);
}

#[tokio::test]
async fn a_connection_field_cannot_take_the_traceparent_away() {
    let up = upstream("app").await;
    let gw = gateway(&config(
        &[("app", up.url())],
        "  - name: all\n    paths: [{ path: /, type: prefix }]\n    upstream: app\n",
    ));
    let req = Request::get(gw.url("/c")).header("connection", "traceparent").body(Body::default()).unwrap();
    assert_eq!(send(req).await.0, StatusCode::OK);
    assert_eq!(up.last().headers.get_all("traceparent").iter().count(), 1);
}
