//! `/metrics` through the real binary: SPEC §5 names and labels, and `promtool check metrics`.

mod support;

use http::{Request, StatusCode};
use std::io::Write;
use std::process::{Command, Stdio};
use support::*;

#[tokio::test]
async fn metrics_have_the_spec_names_and_pass_promtool() {
    let up = upstream("app").await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    // `dead` has outlier detection, so its ejection series exist too (and need help text).
    let yaml = config(
        &[("app", up.url()), ("dead", dead)],
        "  - name: api\n    paths: [{ path: /api }]\n    strip_prefix: true\n    upstream: app\n\
         \x20 - name: broken\n    paths: [{ path: /broken }]\n    upstream: dead\n",
    )
    .replace(
        "\nroutes:",
        "\n    outlier_detection: { consecutive_gateway_errors: 1, max_ejection_percent: 100 }\nroutes:",
    );
    let gw = gateway(&yaml);
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/api/x")).await.0, StatusCode::OK);
    }
    assert_eq!(get(&gw.url("/api/status/503")).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&gw.url("/nowhere")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&gw.url("/broken")).await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(send(Request::get(gw.url("/healthz")).body(body("")).unwrap()).await.0, StatusCode::OK);

    let (status, headers, text) = get(&gw.admin_url("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    for needle in [
        r#"http_requests_total{route="api",method="GET",status="200",upstream="app"} 3"#,
        r#"http_requests_total{route="api",method="GET",status="503",upstream="app"} 1"#,
        r#"http_requests_total{route="_unmatched",method="GET",status="404",upstream=""} 1"#,
        r#"http_requests_total{route="broken",method="GET",status="502",upstream="dead"} 1"#,
        r#"http_request_duration_seconds_bucket{route="api",method="GET",status="200",le="0.0005"}"#,
        r#"http_request_duration_seconds_count{route="api",method="GET",status="200"} 3"#,
        r#"nexus_upstream_requests_total{upstream="app",endpoint=""#,
        r#"outcome="success"} 3"#,
        r#"outcome="error"} 1"#,
        r#"nexus_upstream_endpoint_healthy{upstream="app",endpoint=""#,
        r#"nexus_upstream_endpoint_ejected{upstream="dead",endpoint=""#,
        r#"nexus_outlier_ejections_total{upstream="dead",endpoint=""#,
        r#"nexus_config_reloads_total{result="ok"} 0"#,
        "nexus_config_version_info{version=",
        "nexus_inflight_requests",
        "nexus_build_info{version=",
    ] {
        assert!(text.contains(needle), "missing {needle}\n{text}");
    }
    assert!(!text.contains(r#"nexus_upstream_endpoint_ejected{upstream="app""#), "no series without outlier detection");
    assert!(!text.contains("/healthz"), "probes are not counted under their path");
    assert!(!text.contains("route=\"/"), "routes are labelled by name, never by raw path");

    let promtool = which("promtool").expect("promtool is missing: run `make test` (it installs Debian's prometheus)");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn reloads_are_counted_by_result() {
    let up = upstream("app").await;
    let yaml = config(&[("app", up.url())], "  - name: a\n    paths: [{ path: / }]\n    upstream: app\n");
    let gw = gateway(&yaml);
    gw.write_config("routes: [ { name: x } ]\n");
    assert_eq!(post_json(&gw.admin_url("/admin/reload"), None).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    gw.write_config(&yaml.replace("name: a", "name: b"));
    let (_, _, body) = post_json(&gw.admin_url("/admin/reload"), None).await;
    let version = body["version"].as_str().unwrap().to_string();
    let text = get(&gw.admin_url("/metrics")).await.2;
    assert!(text.contains(r#"nexus_config_reloads_total{result="error"} 1"#), "{text}");
    assert!(text.contains(r#"nexus_config_reloads_total{result="ok"} 1"#), "{text}");
    assert!(text.contains(&format!(r#"nexus_config_version_info{{version="{version}"}} 1"#)), "{text}");
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(cmd)).find(|p| p.is_file())
}
