//! A canary release composed in code, without the `nexus` binary or a YAML
//! file: `/` is split 90/10 between two versions of a service, sticky per
//! `X-User-Id` (a user stays on one side; moving the weight moves only the
//! users whose point crosses the new boundary), testers opt in to v2 with
//! `X-Canary: true`, and 10% of requests are mirrored to v2 as shadow traffic.
//! The random source is seeded, so the split is reproducible in tests.
//!
//! Run with
//!
//! ```sh
//! cargo run --manifest-path examples/Cargo.toml -p example-canary-split
//! for i in $(seq 20); do curl -s http://127.0.0.1:3001/; echo; done | sort | uniq -c
//! curl -s -H 'X-Canary: true' http://127.0.0.1:3001/
//! ```

use axum::Router;
use axum::body::Body;
use nexus_core::config::Config;
use nexus_core::rng::Rng;
use nexus_proxy::{Gateway, GatewayService};
use std::sync::Arc;

/// The gateway for two versions listening at `v1` and `v2` (`host:port`), with
/// the canary's weight in percent.
fn gateway(v1: &str, v2: &str, canary_percent: u32, seed: u64) -> Gateway<Body> {
    let config: Config = serde_json::from_value(serde_json::json!({
        "upstreams": {
            "v1": { "endpoints": [{ "url": format!("http://{v1}") }] },
            "v2": { "endpoints": [{ "url": format!("http://{v2}") }] },
        },
        "routes": [
            // More required headers win over the weighted default (A/B by header).
            { "name": "testers", "paths": [{ "path": "/" }], "headers": { "x-canary": "true" }, "upstream": "v2" },
            {
                "name": "web",
                "paths": [{ "path": "/" }],
                "split": [
                    { "upstream": "v1", "weight": 100 - canary_percent },
                    { "upstream": "v2", "weight": canary_percent },
                ],
                "sticky": "header:X-User-Id",
                "mirror": { "upstream": "v2", "percent": 10 },
            },
        ],
    }))
    .expect("a valid config");
    config.validate().expect("no config errors");
    Gateway::with_rng(&config, Rng::seeded(seed)).expect("gateway")
}

/// The app: every request goes through the gateway.
fn app(gateway: Gateway<Body>) -> Router {
    Router::new().fallback_service(GatewayService::new(Arc::new(gateway)))
}

/// A demo version of the service: answers its name.
async fn version(name: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let app = Router::new().fallback(move || async move { name });
        axum::serve(listener, app).await.expect("serve");
    });
    addr
}

#[tokio::main]
async fn main() {
    let (v1, v2) = (version("v1").await, version("v2").await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await.expect("bind 127.0.0.1:3001");
    println!("canary on http://127.0.0.1:3001 (90% v1 at {v1}, 10% v2 at {v2})");
    axum::serve(listener, app(gateway(&v1, &v2, 10, 7))).await.expect("server");
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn ask(app: &Router, headers: &[(&str, String)]) -> String {
        let mut req = Request::get("/");
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn ten_percent_canary_sticky_users_and_testers() {
        let (v1, v2) = (version("v1").await, version("v2").await);
        let app = app(gateway(&v1, &v2, 10, 7));
        let mut to_v2 = 0;
        for _ in 0..1000 {
            if ask(&app, &[]).await == "v2" {
                to_v2 += 1;
            }
        }
        // Binomial(1000, 0.1): mean 100, sd 9.5; ±6 sd.
        assert!((43..=157).contains(&to_v2), "{to_v2}");
        assert_eq!(ask(&app, &[("x-canary", "true".into())]).await, "v2");
        for u in 0..50 {
            let user = [("x-user-id", format!("user-{u}"))];
            let first = ask(&app, &user).await;
            assert_eq!(ask(&app, &user).await, first, "user-{u} stays on one side");
        }
    }

    #[tokio::test]
    async fn moving_the_weight_moves_only_the_new_band() {
        let (v1, v2) = (version("v1").await, version("v2").await);
        let (at10, at20) = (app(gateway(&v1, &v2, 10, 7)), app(gateway(&v1, &v2, 20, 7)));
        let mut moved = 0;
        for u in 0..500 {
            let user = [("x-user-id", format!("user-{u}"))];
            let (before, after) = (ask(&at10, &user).await, ask(&at20, &user).await);
            assert!(!(before == "v2" && after == "v1"), "user-{u} went back to v1");
            moved += usize::from(before != after);
        }
        assert!((20..=80).contains(&moved), "{moved} of 500 moved (expected ~50)");
    }
}
