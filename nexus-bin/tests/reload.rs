//! Hot reload, rollback and the admin API's config endpoints, through the real binary.

mod support;

use http::StatusCode;
use support::*;

fn routes(up: &Upstream, path: &str) -> String {
    config(&[("app", up.url())], &format!("  - name: app\n    paths: [{{ path: {path} }}]\n    upstream: app\n"))
}

#[tokio::test]
async fn reload_applies_a_new_version_and_keeps_history() {
    let up = upstream("app").await;
    let gw = gateway(&routes(&up, "/v1"));
    let before = get_json(&gw.admin_url("/admin/config")).await;
    assert_eq!(before["history"].as_array().unwrap().len(), 1);
    assert_eq!(before["version"].as_str().unwrap().len(), 12);
    assert_eq!(get(&gw.url("/v2/x")).await.0, StatusCode::NOT_FOUND);

    // Same content: no new version.
    let (status, headers, body) = post_json(&gw.admin_url("/admin/reload"), None).await;
    assert_eq!((status, body["result"].as_str()), (StatusCode::OK, Some("unchanged")));
    assert_eq!(headers["x-request-id"].len(), 36, "admin answers carry a request id");

    gw.write_config(&routes(&up, "/v2"));
    let (status, _, body) = post_json(&gw.admin_url("/admin/reload"), None).await;
    assert_eq!((status, body["result"].as_str()), (StatusCode::OK, Some("ok")), "{body}");
    assert_eq!(get(&gw.url("/v2/x")).await.0, StatusCode::OK);
    assert_eq!(get(&gw.url("/v1/x")).await.0, StatusCode::NOT_FOUND);
    let after = get_json(&gw.admin_url("/admin/config")).await;
    assert_eq!(after["history"][1], before["version"], "newest first");
    assert_eq!(after["last_reload"]["result"], "ok");
    assert_eq!(after["pinned"], false);
}

#[tokio::test]
async fn invalid_reload_is_422_and_the_old_routes_keep_serving() {
    let up = upstream("app").await;
    let gw = gateway(&routes(&up, "/v1"));
    gw.write_config("routes:\n  - { name: broken, paths: [{ path: / }], upstream: nowhere }\n");
    let (status, _, body) = post_json(&gw.admin_url("/admin/reload"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["errors"][0].as_str().unwrap().contains("routes[0].upstream"), "{body}");
    assert_eq!(get(&gw.url("/v1/still")).await.0, StatusCode::OK);
    let cfg = get_json(&gw.admin_url("/admin/config")).await;
    assert_eq!(cfg["last_reload"]["result"], "error");
    assert!(cfg["last_reload"]["errors"][0].as_str().unwrap().contains("unknown upstream"));
    assert_eq!(cfg["history"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_changed_listener_address_is_refused_rather_than_half_applied() {
    let up = upstream("app").await;
    let gw = gateway(&routes(&up, "/v1"));
    // (The harness passes --listen/--admin-listen, which win over the file; reuse_port has no flag.)
    let changed = routes(&up, "/v2").replace("server:\n", "server:\n  reuse_port: true\n");
    gw.write_config(&changed);
    let (status, _, body) = post_json(&gw.admin_url("/admin/reload"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["errors"][0].as_str().unwrap().contains("server.reuse_port"), "{body}");
    assert_eq!(get(&gw.url("/v1/x")).await.0, StatusCode::OK, "nothing of the new file applied");
}

#[tokio::test]
async fn settings_taken_at_start_are_refused_by_a_reload_not_silently_kept() {
    let up = upstream("app").await;
    let gw = gateway(&routes(&up, "/v1"));
    // (`logging.*` is refused the same way; the harness's --log-level/--log-format win over the file.)
    let changed = format!("admin:\n  token_env: OTHER_TOKEN\n{}", routes(&up, "/v2"));
    gw.write_config(&changed);
    let (status, _, body) = post_json(&gw.admin_url("/admin/reload"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let errors = body["errors"].to_string();
    assert!(errors.contains("admin.token_env") && errors.contains("needs a restart"), "{body}");
    assert_eq!(get(&gw.url("/v1/x")).await.0, StatusCode::OK, "nothing of the new file applied");
}

#[tokio::test]
async fn rollback_restores_the_previous_version_and_pins_it() {
    let up = upstream("app").await;
    let gw = gateway(&routes(&up, "/v1"));
    let (status, _, _) = post_json(&gw.admin_url("/admin/rollback"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing to roll back to");

    gw.write_config(&routes(&up, "/v2"));
    assert_eq!(post_json(&gw.admin_url("/admin/reload"), None).await.0, StatusCode::OK);
    let (status, _, body) = post_json(&gw.admin_url("/admin/rollback"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get(&gw.url("/v1/x")).await.0, StatusCode::OK);
    assert_eq!(get(&gw.url("/v2/x")).await.0, StatusCode::NOT_FOUND);
    let cfg = get_json(&gw.admin_url("/admin/config")).await;
    assert_eq!(cfg["pinned"], true);
    // The file still holds v2: a reload must not undo the rollback...
    let (_, _, body) = post_json(&gw.admin_url("/admin/reload"), None).await;
    assert_eq!(body["result"], "unchanged");
    assert_eq!(get(&gw.url("/v1/x")).await.0, StatusCode::OK);
    // ...until the file changes again.
    gw.write_config(&routes(&up, "/v3"));
    assert_eq!(post_json(&gw.admin_url("/admin/reload"), None).await.2["result"], "ok");
    assert_eq!(get(&gw.url("/v3/x")).await.0, StatusCode::OK);
    assert_eq!(get_json(&gw.admin_url("/admin/config")).await["pinned"], false);
}

#[tokio::test]
async fn mutating_admin_calls_need_the_token_when_one_is_set() {
    let up = upstream("app").await;
    let gw = gateway_with(&routes(&up, "/v1"), &[("NEXUS_ADMIN_TOKEN", "s3cret")]);
    let (status, headers, _) = post_json(&gw.admin_url("/admin/reload"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert_eq!(post_json(&gw.admin_url("/admin/reload"), Some("wrong")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(post_json(&gw.admin_url("/admin/reload"), Some("s3cret")).await.0, StatusCode::OK);
    // Reads stay open.
    assert_eq!(get(&gw.admin_url("/admin/config")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn sighup_reloads() {
    let up = upstream("app").await;
    let gw = gateway(&routes(&up, "/v1"));
    // Overwrite in place and signal; the file watcher may also fire: either way v2 must serve.
    gw.write_config(&routes(&up, "/v2"));
    let pid = gw.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    assert!(eventually(5, || async { get(&gw.url("/v2/x")).await.0 == StatusCode::OK }).await);
}

#[tokio::test]
async fn a_configmap_style_symlink_swap_triggers_a_reload() {
    #[cfg(unix)]
    {
        use std::os::unix::fs::symlink;
        let up = upstream("app").await;
        // The layout kubelet makes: nexus.yaml -> ..data/nexus.yaml, ..data -> ..<timestamp>.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..2026_01")).unwrap();
        std::fs::write(d.join("..2026_01/nexus.yaml"), routes(&up, "/v1")).unwrap();
        symlink("..2026_01", d.join("..data")).unwrap();
        symlink("..data/nexus.yaml", d.join("nexus.yaml")).unwrap();
        let path = d.join("nexus.yaml");
        let gw = start(dir, path, &[]);
        assert_eq!(get(&gw.url("/v1/x")).await.0, StatusCode::OK);

        let d = gw.config_path.parent().unwrap().to_path_buf();
        std::fs::create_dir(d.join("..2026_02")).unwrap();
        std::fs::write(d.join("..2026_02/nexus.yaml"), routes(&up, "/v2")).unwrap();
        symlink("..2026_02", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert!(
            eventually(10, || async { get(&gw.url("/v2/x")).await.0 == StatusCode::OK }).await,
            "the symlink swap was not picked up"
        );
        let cfg = get_json(&gw.admin_url("/admin/config")).await;
        assert_eq!(cfg["history"].as_array().unwrap().len(), 2);
    }
}

#[tokio::test]
async fn requests_in_flight_finish_on_the_config_they_started_with() {
    let up = upstream("app").await;
    let gw = gateway(&routes(&up, "/slow"));
    let url = gw.url("/slow/700");
    let in_flight = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    gw.write_config(&routes(&up, "/other"));
    assert_eq!(post_json(&gw.admin_url("/admin/reload"), None).await.0, StatusCode::OK);
    assert_eq!(get(&gw.url("/slow/1")).await.0, StatusCode::NOT_FOUND, "the new config is serving");
    let (status, _, text) = in_flight.await.unwrap();
    assert_eq!((status, text.as_str()), (StatusCode::OK, "slow done"));
}

#[tokio::test]
async fn admin_routes_lists_the_running_routes_in_precedence_order() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let routes = "  - name: catch-all\n    paths: [{ path: /, type: prefix }]\n    upstream: a\n\
                  \x20 - name: health\n    paths: [{ path: /health, type: exact }]\n    methods: [GET]\n    upstream: a\n\
                  \x20 - name: api-canary\n    host: api.example.com\n    paths: [{ path: /api }]\n    timeout: 2s\n\
                  \x20   split: [{ upstream: a, weight: 90 }, { upstream: b, weight: 10 }]\n";
    let gw = gateway(&config(&[("a", a.url()), ("b", b.url())], routes));
    let v = get_json(&gw.admin_url("/admin/routes")).await;
    let names: Vec<&str> = v["routes"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["api-canary", "health", "catch-all"], "exact host, then exact path, then the prefix");
    let canary = &v["routes"][0];
    assert_eq!(canary["host"], "api.example.com");
    assert_eq!(canary["paths"], serde_json::json!([{ "path": "/api", "type": "prefix" }]));
    assert_eq!(canary["split"][1], serde_json::json!({ "upstream": "b", "weight": 10 }));
    assert!(canary.get("upstream").is_none() && canary["timeout"] == "2s" && canary["auth"].is_null(), "{canary}");
    assert_eq!(
        (&v["routes"][1]["methods"], &v["routes"][2]["upstream"]),
        (&serde_json::json!(["GET"]), &serde_json::json!("a"))
    );
}

#[tokio::test]
async fn admin_upstreams_shows_endpoints_and_live_in_flight_counts() {
    let up = upstream("app").await;
    let gw = gateway(&routes(&up, "/"));
    let url = gw.url("/slow/600");
    let pending = tokio::spawn(async move { get(&url).await });
    assert!(eventually(5, || async { up.count() == 1 }).await);
    let v = get_json(&gw.admin_url("/admin/upstreams")).await;
    let app = &v["upstreams"][0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["circuit"], "closed");
    assert_eq!(app["in_flight"], 1);
    assert_eq!(app["endpoints"][0]["url"], up.url());
    assert_eq!(app["endpoints"][0]["healthy"], true);
    assert_eq!(app["endpoints"][0]["in_flight"], 1);
    assert_eq!(pending.await.unwrap().0, StatusCode::OK);
    let v = get_json(&gw.admin_url("/admin/upstreams")).await;
    assert_eq!(v["upstreams"][0]["in_flight"], 0, "the slot is freed when the response is done");
    assert_eq!(v["upstreams"][0]["endpoints"][0]["idle_connections"], 1);
}

#[tokio::test]
async fn a_client_loop_across_reloads_sees_no_failure() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let cfg = |to: &str| {
        config(
            &[("blue", blue.url()), ("green", green.url())],
            &format!("  - name: app\n    paths: [{{ path: / }}]\n    upstream: {to}\n"),
        )
    };
    let gw = gateway(&cfg("blue"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> =
        (0..4).map(|_| tokio::spawn(client_loop(gw.url("/flip"), std::sync::Arc::clone(&stop)))).collect();
    for to in ["green", "blue", "green"] {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        gw.write_config(&cfg(to));
        assert_eq!(post_json(&gw.admin_url("/admin/reload"), None).await.0, StatusCode::OK);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, retried) = join_loops(loops).await;
    eprintln!("reloads under load: {ok} ok, {failed} failed, {retried} retried");
    assert_eq!((failed, retried), (0, 0), "{ok} ok");
    assert!(blue.count() > 0 && green.count() > 0);
    assert_eq!(get(&gw.url("/x")).await.2, "green /x", "the last reload is serving");
}
