//! The whole gateway inside an axum app: the same YAML the `nexus` binary
//! reads, turned into one tower `Service` by `nexus-proxy` and mounted with
//! `Router::fallback_service`. Routes, auth, rate limits, breakers, retries,
//! timeouts, body and header limits, request ids and metrics behave exactly as
//! in the binary, because it is the binary's own request path. The app keeps
//! what belongs to a server: its listener and its own routes (`/hello` here). With
//! `nexus-proxy`'s `axum` feature the gateway reads the client's address from axum's
//! `ConnectInfo` (serve with `into_make_service_with_connect_info::<SocketAddr>()`); without an
//! address, a per-IP limit answers 500 instead of sharing one bucket among all clients.
//!
//! Run with
//!
//! ```sh
//! EMBED_JWT_SECRET=change-me-to-32-bytes-or-more!!! \
//!   cargo run --manifest-path examples/Cargo.toml -p example-embed-gateway -- 127.0.0.1:8081
//! curl -i http://127.0.0.1:3002/private          # 401: auth "main" holds
//! for i in 1 2 3; do curl -si http://127.0.0.1:3002/public | head -1; done   # 200 200 429
//! curl -i http://127.0.0.1:3002/hello            # the app's own route
//! ```

use axum::Router;
use axum::body::Body;
#[cfg(test)]
use axum::extract::{ConnectInfo, Request};
use axum::routing::get;
use nexus_proxy::config::{Config, ConfigErrors, Env, ProcessEnv};
use nexus_proxy::{Gateway, GatewayService};
use std::net::SocketAddr;
use std::sync::Arc;

/// The gateway's config: what an operator would put in `nexus.yaml`.
fn config(upstream: &str) -> Config {
    let yaml = format!(
        r#"
auth:
  jwt:
    main:
      algorithms: [HS256]
      secret_env: EMBED_JWT_SECRET
      forward_claims: {{ sub: X-User-Id }}
rate_limits:
  per-ip:
    requests: 2
    per: 1m
    key: client_ip
upstreams:
  api:
    endpoints:
      - url: http://{upstream}
routes:
  - name: private
    paths: [{{ path: /private, type: prefix }}]
    upstream: api
    auth: main
  - name: public
    paths: [{{ path: /public, type: prefix }}]
    upstream: api
    rate_limit: per-ip
"#
    );
    // The same YAML front end as the `nexus` binary (duplicate keys and every error with its path).
    Config::from_yaml(yaml.as_bytes()).expect("a valid config")
}

/// The app: its own `/hello`, and everything else through the gateway. `env`
/// holds the `*_env` secrets (the process environment when run).
fn app(upstream: &str, env: &dyn Env) -> Result<Router, ConfigErrors> {
    let gateway = Gateway::<Body>::with_env(&config(upstream), nexus_proxy::nexus_core::rng::Rng::from_entropy(), env)?;
    let gateway = GatewayService::new(Arc::new(gateway));
    Ok(Router::new().route("/hello", get(|| async { "hello from the app" })).fallback_service(gateway))
}

#[tokio::main]
async fn main() {
    let upstream = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".into());
    let app = match app(&upstream, &ProcessEnv) {
        Ok(app) => app,
        Err(errors) => {
            for e in &errors {
                eprintln!("  {e}");
            }
            std::process::exit(64);
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3002").await.expect("bind 127.0.0.1:3002");
    println!("gateway on http://127.0.0.1:3002 (/private needs a token, /public is 2 a minute per IP) -> {upstream}");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.expect("server");
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use http_body_util::BodyExt;
    use std::collections::HashMap;
    use tower::ServiceExt;

    const SECRET: &str = "a test secret of 32 bytes or more";

    fn env() -> HashMap<String, String> {
        HashMap::from([("EMBED_JWT_SECRET".to_string(), SECRET.to_string())])
    }

    /// An upstream on loopback that answers with the `X-User-Id` it was sent.
    async fn upstream() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let app = Router::new().fallback(|req: Request| async move {
                let user = req.headers().get("x-user-id").map(|v| v.to_str().unwrap().to_string());
                format!("upstream saw user {}", user.unwrap_or_default())
            });
            axum::serve(listener, app).await.unwrap();
        });
        addr
    }

    fn from(path: &str, ip: [u8; 4]) -> Request {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        req.extensions_mut().insert(ConnectInfo(SocketAddr::from((ip, 40000))));
        req
    }

    async fn json(res: axum::response::Response) -> serde_json::Value {
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn a_route_with_auth_answers_401_without_a_token_and_forwards_with_one() {
        let app = app(&upstream().await, &env()).unwrap();
        let res = app.clone().oneshot(from("/private/x", [192, 0, 2, 1])).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="nexus""#);
        assert_eq!(res.headers()["content-type"], "application/json");
        let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
        let body = json(res).await;
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(body["error"]["request_id"], id.as_str(), "the body names the response's request id");

        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 60;
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({ "sub": "alice", "exp": exp }),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let mut req = from("/private/x", [192, 0, 2, 1]);
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let res = app.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(&res.into_body().collect().await.unwrap().to_bytes()[..], b"upstream saw user alice");
    }

    #[tokio::test]
    async fn two_peers_get_two_buckets_and_each_gets_429_past_its_own_limit() {
        let app = app(&upstream().await, &env()).unwrap();
        for ip in [[192, 0, 2, 1], [192, 0, 2, 2]] {
            for remaining in ["1", "0"] {
                let res = app.clone().oneshot(from("/public", ip)).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK, "{ip:?}");
                assert_eq!(res.headers()["ratelimit-remaining"], remaining);
                assert_eq!(res.headers()["ratelimit-policy"], "2;w=60;burst=2");
            }
            let res = app.clone().oneshot(from("/public", ip)).await.unwrap();
            assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "{ip:?} past its own limit");
            assert_eq!(res.headers()["retry-after"], "30");
            assert_eq!(res.headers()["ratelimit-limit"], "2");
            assert_eq!(json(res).await["error"]["code"], "rate_limited");
        }
        // A server that gives no client address: refused, not one bucket for everyone.
        let res = app.clone().oneshot(Request::get("/public").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json(res).await["error"]["code"], "internal_error");
    }

    #[tokio::test]
    async fn the_app_keeps_its_own_routes_and_a_missing_secret_is_a_build_error() {
        let app = app(&upstream().await, &env()).unwrap();
        let res = app.oneshot(from("/hello", [192, 0, 2, 1])).await.unwrap();
        assert_eq!(&res.into_body().collect().await.unwrap().to_bytes()[..], b"hello from the app");
        let errors = super::app("127.0.0.1:9", &HashMap::new()).unwrap_err();
        assert_eq!(errors.iter().next().unwrap().path, "auth.jwt.main.secret_env");
    }
}
