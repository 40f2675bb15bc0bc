//! TLS to upstreams through the real binary (SPEC §9 "Upstream TLS and protocol"): `https://`
//! endpoints served by test upstreams with certificates made by the test, a CA file, the
//! name to verify, mutual TLS, and what a failure looks like to the client (502).

mod support;

use http::StatusCode;
use std::path::Path;
use support::certs::{Ca, server_config, server_config_alpn};
use support::*;

/// `upstreams:` entry `name` with one endpoint at `url` and `extra` keys (indented 4).
fn upstream_yaml(name: &str, url: &str, extra: &str) -> String {
    format!("  {name}:\n    endpoints: [{{ url: \"{url}\" }}]\n{extra}")
}

/// A config with `upstreams` (YAML entries) and one route per upstream, at `/<name>/`.
fn gateway_yaml(upstreams: &[(&str, String)]) -> String {
    let mut y = String::from("server:\n  shutdown: { drain_delay: 0s, grace_period: 2s }\nupstreams:\n");
    for (_, entry) in upstreams {
        y.push_str(entry);
    }
    y.push_str("routes:\n");
    for (name, _) in upstreams {
        y.push_str(&format!(
            "  - name: {name}\n    paths: [{{ path: /{name}/, type: prefix }}]\n    upstream: {name}\n"
        ));
    }
    y
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_ca_file_and_the_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("upstream CA");
    ca.write(&dir.path().join("ca.crt"));
    // One upstream verified by a name that is not its address, one by its IP address.
    ca.leaf(dir.path(), "named", &["orders.internal"]);
    ca.leaf(dir.path(), "by-ip", &["127.0.0.1"]);
    let named = tls_upstream("named", server_config(dir.path(), "named", None)).await;
    let by_ip = tls_upstream("by-ip", server_config(dir.path(), "by-ip", None)).await;
    let ca_file = file(dir.path(), "ca.crt");
    let yaml = gateway_yaml(&[
        (
            "named",
            upstream_yaml(
                "named",
                &named.url(),
                &format!(
                    "    tls: {{ ca_file: \"{ca_file}\", server_name: orders.internal }}\n    health_check: {{ path: /healthz, interval: 200ms, timeout: 1s }}\n"
                ),
            ),
        ),
        ("byip", upstream_yaml("byip", &by_ip.url(), &format!("    tls: {{ ca_file: \"{ca_file}\" }}\n"))),
    ]) + "  - name: upload\n    paths: [{ path: /upload }]\n    upstream: named\n";
    // One worker: every request comes through the same pools (pools are per worker).
    let gw = gateway_with(&yaml, &[("NEXUS_WORKERS", "1")]);

    // A GET (the lean path) and a POST with a body (hyper's client), twice each, over TLS.
    for _ in 0..2 {
        let (status, _, body) = get(&gw.url("/named/a")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "named /named/a"));
        let req = http::Request::post(gw.url("/upload")).body(support::body("twelve bytes")).unwrap();
        let (status, _, body) = send(req).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "12"));
    }
    let seen = named.seen();
    let proxied: Vec<_> = seen.iter().filter(|s| s.uri != "/healthz").collect();
    assert_eq!(proxied.len(), 4);
    for s in &proxied {
        assert_eq!(s.tls, Some(("orders.internal".to_string(), false)), "SNI is the server_name");
    }
    // Keep-alive: one TLS connection for the GETs (the lean path's pool), one for the POSTs
    // (hyper's pool).
    for method in ["GET", "POST"] {
        let conns: std::collections::HashSet<_> =
            proxied.iter().filter(|s| s.method == method).map(|s| s.peer).collect();
        assert_eq!(conns.len(), 1, "{method}: {} connections for 2 requests", conns.len());
    }
    // Active health checks speak TLS too: the endpoint stays healthy and its checks arrive.
    assert!(eventually(5, || async { named.seen().iter().any(|s| s.uri == "/healthz" && s.tls.is_some()) }).await);
    let metrics = get(&gw.admin_url("/metrics")).await.2;
    let healthy = metrics
        .lines()
        .find(|l| l.starts_with("nexus_upstream_endpoint_healthy{") && l.contains(r#"upstream="named""#));
    assert!(healthy.is_some_and(|l| l.ends_with(" 1")), "{metrics}");

    // An IP address in the URL is verified against the certificate's IP address (no SNI sent).
    let (status, _, body) = get(&gw.url("/byip/x")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "by-ip /byip/x"));
    assert_eq!(by_ip.last().tls, Some((String::new(), false)));
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_is_a_502_and_a_rotated_ca_is_picked_up_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let real = Ca::new("real CA");
    let other = Ca::new("some other CA");
    real.leaf(dir.path(), "up", &["up.test"]);
    other.write(&dir.path().join("ca.crt"));
    let up = tls_upstream("up", server_config(dir.path(), "up", None)).await;
    let tls = format!("    tls: {{ ca_file: \"{}\", server_name: up.test }}\n", file(dir.path(), "ca.crt"));
    // A wrong name with the right CA fails too.
    let wrong_name = format!("    tls: {{ ca_file: \"{}\", server_name: other.test }}\n", file(dir.path(), "real.crt"));
    real.write(&dir.path().join("real.crt"));
    let gw = gateway(&gateway_yaml(&[
        ("up", upstream_yaml("up", &up.url(), &tls)),
        ("misnamed", upstream_yaml("misnamed", &up.url(), &wrong_name)),
    ]));

    for path in ["/up/x", "/misnamed/x"] {
        let (status, headers, body) = get(&gw.url(path)).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{path}: {body}");
        assert!(body.contains("bad_gateway"), "{body}");
        assert!(headers.contains_key("x-request-id"));
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    let metrics = get(&gw.admin_url("/metrics")).await.2;
    assert!(
        metrics.lines().any(|l| l.starts_with("nexus_upstream_requests_total{")
            && l.contains(r#"upstream="up""#)
            && l.contains(r#"outcome="error""#)),
        "a failed handshake is an error outcome\n{metrics}"
    );

    // The CA file is replaced (a Secret update); the YAML is unchanged. A reload re-reads it.
    real.write(&dir.path().join("ca.crt"));
    assert_eq!(post_json(&gw.admin_url("/admin/reload"), None).await.0, StatusCode::OK);
    let (status, _, body) = get(&gw.url("/up/y")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "up /up/y"));

    // A CA file that no longer parses: the reload keeps the running one.
    std::fs::write(dir.path().join("ca.crt"), "not a certificate").unwrap();
    post_json(&gw.admin_url("/admin/reload"), None).await;
    assert_eq!(get(&gw.url("/up/z")).await.0, StatusCode::OK);
    let metrics = get(&gw.admin_url("/metrics")).await.2;
    assert!(metrics.contains(r#"nexus_tls_reloads_total{result="error"}"#), "{metrics}");
}

#[tokio::test]
async fn protocol_auto_speaks_http2_to_an_endpoint_that_picks_h2_and_http1_to_one_that_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("upstream CA");
    ca.write(&dir.path().join("ca.crt"));
    ca.leaf(dir.path(), "up", &["up.test"]);
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];
    let h2 = tls_upstream("h2", server_config_alpn(dir.path(), "up", None, both)).await;
    let h1 = tls_upstream("h1", server_config(dir.path(), "up", None)).await;
    let tls = format!("    tls: {{ ca_file: \"{}\", server_name: up.test }}\n", file(dir.path(), "ca.crt"));
    // `protocol: auto` is the default: one upstream says it, the other leaves it out.
    let gw = gateway_with(
        &gateway_yaml(&[
            ("h2", upstream_yaml("h2", &h2.url(), &format!("    protocol: auto\n{tls}"))),
            ("h1", upstream_yaml("h1", &h1.url(), &tls)),
        ]),
        &[("NEXUS_WORKERS", "1")],
    );

    // A burst of first requests learns once, then GETs and POSTs go as the endpoint picked.
    let burst = (0..8).map(|i| {
        let (h2_url, h1_url) = (gw.url(&format!("/h2/{i}")), gw.url(&format!("/h1/{i}")));
        async move { (get(&h2_url).await.0, get(&h1_url).await.0) }
    });
    for statuses in futures_util::future::join_all(burst).await {
        assert_eq!(statuses, (StatusCode::OK, StatusCode::OK));
    }
    for (name, up) in [("h2", &h2), ("h1", &h1)] {
        let req = http::Request::post(gw.url(&format!("/{name}/post"))).body(support::body("twelve bytes")).unwrap();
        let (status, _, body) = send(req).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, format!("{name} /{name}/post").as_str()));
        assert_eq!(up.count(), 9);
    }
    assert!(h2.seen().iter().all(|s| s.version == http::Version::HTTP_2), "ALPN picked h2: every request on HTTP/2");
    assert_eq!(h2.connections(), 1, "HTTP/2: the connection that learned it carries every request");
    assert!(h1.seen().iter().all(|s| s.version == http::Version::HTTP_11), "ALPN picked http/1.1");

    // gRPC needs HTTP/2: to the endpoint that picked HTTP/1.1 it is UNAVAILABLE, naming why.
    let grpc = |name: &str| {
        http::Request::post(gw.url(&format!("/{name}/pkg.Svc/Call")))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(support::body("\0\0\0\0\0"))
            .unwrap()
    };
    let (status, headers, _) = send(grpc("h1")).await;
    assert_eq!((status, headers.get("grpc-status").map(|v| v.to_str().unwrap())), (StatusCode::OK, Some("14")));
    assert!(headers["grpc-message"].to_str().unwrap().contains("HTTP"), "{headers:?}");
    assert_eq!(h1.count(), 9, "nothing sent");
    let (status, _, _) = send(grpc("h2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h2.count(), 10);
    assert_eq!(h2.last().version, http::Version::HTTP_2);
}

#[tokio::test]
async fn upstreams_that_require_a_client_certificate_get_the_configured_one() {
    let dir = tempfile::tempdir().unwrap();
    let servers = Ca::new("server CA");
    let clients = Ca::new("client CA");
    servers.write(&dir.path().join("ca.crt"));
    servers.leaf(dir.path(), "up", &["up.test"]);
    clients.leaf(dir.path(), "gateway", &["gateway.test"]);
    let up = tls_upstream("up", server_config(dir.path(), "up", Some(&clients))).await;
    let base = format!("ca_file: \"{}\", server_name: up.test", file(dir.path(), "ca.crt"));
    let with_cert = format!(
        "    tls: {{ {base}, client_cert_file: \"{}\", client_key_file: \"{}\" }}\n",
        file(dir.path(), "gateway.crt"),
        file(dir.path(), "gateway.key")
    );
    let gw = gateway(&gateway_yaml(&[
        ("mtls", upstream_yaml("mtls", &up.url(), &with_cert)),
        ("anon", upstream_yaml("anon", &up.url(), &format!("    tls: {{ {base} }}\n"))),
    ]));

    let (status, _, body) = get(&gw.url("/mtls/a")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "up /mtls/a"));
    assert_eq!(up.last().tls, Some(("up.test".to_string(), true)), "the client certificate was presented");
    // Without a client certificate the upstream refuses the handshake (TLS 1.3 reports it
    // after the client's Finished, so on the first read): a 502, nothing served.
    let (status, _, body) = get(&gw.url("/anon/a")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(up.count(), 1);
    let metrics = get(&gw.admin_url("/metrics")).await.2;
    assert!(
        metrics.contains(r#"nexus_tls_certificate_expiry_timestamp_seconds{name="gateway.test"}"#),
        "the client certificate's expiry is exported\n{metrics}"
    );
}

#[tokio::test]
async fn validate_reads_the_upstream_tls_files_and_refuses_what_this_version_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    ca.leaf(dir.path(), "a", &["a.test"]);
    ca.leaf(dir.path(), "b", &["b.test"]);
    let yaml = gateway_yaml(&[
        (
            "files",
            upstream_yaml(
                "files",
                "https://127.0.0.1:1",
                &format!(
                    "    tls: {{ ca_file: \"{}\", client_cert_file: \"{}\", client_key_file: \"{}\" }}\n",
                    file(dir.path(), "missing-ca.crt"),
                    file(dir.path(), "a.crt"),
                    file(dir.path(), "b.key")
                ),
            ),
        ),
        ("plain", upstream_yaml("plain", "https://127.0.0.1:2", "")),
    ]);
    let path = dir.path().join("nexus.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let run =
        |args: &[&str]| std::process::Command::new(nexus_bin()).args(args).arg("--config").arg(&path).output().unwrap();
    let out = run(&["validate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("upstreams.files.tls.ca_file"), "{err}");
    assert!(err.contains("upstreams.files.tls.client_key_file") && err.contains("does not match"), "{err}");
    assert!(!err.contains("upstreams.plain"), "webpki roots need no file: {err}");
    assert!(run(&["validate", "--skip-files"]).status.success());
    assert!(refused_at_start(&yaml).contains("upstreams.files.tls.ca_file"));

    // Keys that cannot be honoured are errors with their paths, never ignored.
    let bad = gateway_yaml(&[
        ("h2", upstream_yaml("h2", "http://127.0.0.1:1", "    protocol: h2\n")),
        ("pair", upstream_yaml("pair", "https://127.0.0.1:1", "    tls: { client_cert_file: /x.crt }\n")),
        ("unused", upstream_yaml("unused", "http://127.0.0.1:1", "    tls: { server_name: x.test }\n")),
    ]);
    std::fs::write(&path, &bad).unwrap();
    let out = run(&["validate", "--skip-files"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for p in ["upstreams.h2.endpoints[0].url", "upstreams.pair.tls", "upstreams.unused.tls"] {
        assert!(err.contains(p), "{p}: {err}");
    }
}
