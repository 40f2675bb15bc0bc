//! The command line as an operator uses it.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::nexus_bin;

fn write(yaml: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nexus.yaml");
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

fn nexus(args: &[&str]) -> std::process::Output {
    Command::new(nexus_bin()).args(args).env_remove("NEXUS_CONFIG").output().unwrap()
}

#[test]
fn validate_accepts_the_documented_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/nexus.yaml");
    let out = nexus(&["validate", "--config", example]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("config OK ("), "{stdout}");
}

#[test]
fn validate_prints_plural_aware_summary() {
    let (_d, path) = write(
        "upstreams:\n  a: { endpoints: [{ url: \"http://127.0.0.1:1\" }] }\n  b: { endpoints: [{ url: \"http://127.0.0.1:2\" }] }\n\
         routes:\n  - { name: r, paths: [{ path: / }], upstream: a }\n",
    );
    let out = nexus(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config OK (1 route, 2 upstreams)");
}

#[test]
fn validate_reports_every_error_with_its_field_path_and_exits_1() {
    let (_d, path) = write(
        "upstreams:\n  user-v1:\n    endpoints: [{ url: \"http://127.0.0.1:1\" }]\n    timeout: 5 parsecs\n\
         routes:\n  - { name: a, paths: [{ path: / }], upstreamz: user-v1 }\n  - { name: b, paths: [{ path: /b }], upstream: user-v3 }\n",
    );
    let out = nexus(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in
        ["upstreams.user-v1.timeout", "routes[0].upstreamz", "routes[1].upstream: unknown upstream \"user-v3\""]
    {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn running_with_an_invalid_config_exits_64_with_the_same_errors() {
    let (_d, path) = write("routes:\n  - { name: a, paths: [{ path: / }], upstream: nope }\n");
    let out = nexus(&["--config", path.to_str().unwrap(), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes[0].upstream"));
}

#[test]
fn explain_names_the_route_offline() {
    let (_d, path) = write(
        "upstreams:\n  u: { endpoints: [{ url: \"http://127.0.0.1:1\" }] }\n\
         routes:\n  - { name: canary, paths: [{ path: /api }], headers: { x-canary: \"true\" }, upstream: u }\n  - { name: stable, paths: [{ path: /api }], upstream: u }\n",
    );
    let p = path.to_str().unwrap();
    let out = nexus(&["explain", "--config", p, "GET", "http://api.example.com/api/users", "-H", "X-Canary: true"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["route"], "canary");
    let out = nexus(&["explain", "--config", p, "GET", "/api/users"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["route"], "stable");
    let out = nexus(&["explain", "--config", p, "GET", "/nothing"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["matched"].as_bool(), v["status"].as_u64()), (Some(false), Some(404)));
}

#[test]
fn validate_and_explain_take_no_listener_or_log_flags() {
    // They never listen or log: a flag they would accept and ignore is refused instead.
    let help = String::from_utf8_lossy(&nexus(&["validate", "--help"]).stdout).into_owned();
    assert!(help.contains("--config"), "{help}");
    for flag in ["--listen", "--admin-listen", "--log-level", "--log-format"] {
        assert!(!help.contains(flag), "validate --help lists {flag}:\n{help}");
    }
    let out = nexus(&["validate", "--config", "x.yaml", "--listen", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"), "{}", String::from_utf8_lossy(&out.stderr));
    // The gateway and the demo still take them.
    let top = String::from_utf8_lossy(&nexus(&["--help"]).stdout).into_owned();
    let demo = String::from_utf8_lossy(&nexus(&["demo", "--help"]).stdout).into_owned();
    for flag in ["--listen", "--admin-listen", "--log-level", "--log-format"] {
        assert!(top.contains(flag) && demo.contains(flag), "{flag} missing:\n{top}\n{demo}");
    }
}

#[test]
fn version_flag_prints_the_version() {
    let out = nexus(&["--version"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("nexus {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn demo_serves_both_versions_and_exits_0_on_sigterm() {
    let mut child = Command::new(nexus_bin())
        .args(["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("nexus demo is running: gateway http://") {
                let (gw, admin) = rest.split_once(", admin http://").unwrap();
                let _ = tx.send((gw.to_string(), admin.to_string()));
            }
        }
    });
    let (addr, admin) = rx.recv_timeout(Duration::from_secs(20)).expect("demo did not start");
    // The built-in config has nothing to re-read: a reload finds it unchanged.
    let (status, _, body) = support::post_json(&format!("http://{admin}/admin/reload"), None).await;
    assert_eq!((status.as_u16(), &body["result"]), (200, &serde_json::json!("unchanged")), "{body}");
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..200 {
        let (status, _, text) = support::get(&format!("http://{addr}/")).await;
        assert_eq!(status, 200);
        if text.contains("v1") {
            v1 += 1;
        } else if text.contains("v2") {
            v2 += 1;
        }
    }
    // 90/10 over 200 draws: v2 ~ Binomial(200, 0.1), mean 20, sd 4.2.
    assert_eq!(v1 + v2, 200);
    assert!((5..=45).contains(&v2), "v1={v1} v2={v2}");
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}
