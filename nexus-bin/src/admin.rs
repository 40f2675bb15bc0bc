//! The admin listener (axum): probes, the active config, reload, rollback and explain.

use crate::config_file::LoadedConfig;
use crate::reload::{Reload, Reloader};
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use nexus_core::router::RouteTable;
use nexus_core::{ErrorCode, GatewayError};
use nexus_health::shutdown::Phase;
use nexus_health::{ReadinessGate, probe};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the admin API reads and drives.
#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    reloader: Arc<Reloader>,
    gate: ReadinessGate,
    /// Bearer token for mutating calls; `None` = open (the listener defaults to loopback).
    token: Option<Arc<str>>,
    metrics: Option<PrometheusHandle>,
}

impl AdminState {
    pub(crate) fn new(
        reloader: Arc<Reloader>,
        gate: ReadinessGate,
        token: Option<String>,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        Self { reloader, gate, token: token.filter(|t| !t.is_empty()).map(Into::into), metrics }
    }
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { probe::liveness::<axum::body::Body>() }))
        .route(
            "/readyz",
            get(|State(s): State<AdminState>| async move { probe::readiness::<axum::body::Body>(&s.gate) }),
        )
        .route("/metrics", get(prometheus))
        .route("/admin/config", get(config))
        .route("/admin/reload", post(reload))
        .route("/admin/rollback", post(rollback))
        .route("/admin/explain", get(explain))
        .route("/admin/upstreams", get(upstreams))
        .route("/admin/routes", get(routes))
        .fallback(|headers: HeaderMap| async move {
            GatewayError::new(ErrorCode::RouteNotFound).into_response_for::<axum::body::Body>(&headers)
        })
        .with_state(state)
        // Admin answers carry X-Request-Id too (SPEC §4: every response).
        .layer(nexus_middleware::RequestIdLayer::new())
}

pub(crate) async fn serve(listener: TcpListener, state: AdminState, mut phase: watch::Receiver<Phase>) {
    let app = router(state);
    let shutdown = async move {
        let _ = phase.wait_for(|p| *p == Phase::Stopping).await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}

async fn prometheus(State(s): State<AdminState>) -> Response {
    let text = s.metrics.as_ref().map(PrometheusHandle::render).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn upstreams(State(s): State<AdminState>) -> Response {
    let snapshot = s.reloader.front().snapshot();
    let upstreams: Vec<Value> = snapshot
        .gateway()
        .upstreams()
        .values()
        .map(|u| {
            json!({
                "name": u.name(),
                // Without a circuit_breaker block there is no breaker: traffic always passes.
                "circuit": u.circuit_state().map_or("closed", nexus_core::breaker::State::as_str),
                "in_flight": u.in_flight(),
                "endpoints": u.endpoints().iter().enumerate().map(|(i, e)| json!({
                    "url": e.url(),
                    "healthy": e.is_healthy(),
                    // Outlier detection's ejection, as wall-clock time; null while in rotation.
                    "ejected_until": u.ejected_for(i).map(|left| crate::reload::rfc3339(std::time::SystemTime::now() + left)),
                    "in_flight": e.in_flight(),
                    "idle_connections": e.idle_connections(),
                    "last_check": e.health().last_check().map(|c| json!({
                        "at": crate::reload::rfc3339(c.at),
                        "ok": c.ok,
                        "message": c.message,
                    })),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    axum::Json(json!({ "upstreams": upstreams })).into_response()
}

/// The running routes in precedence order (SPEC §9's shape).
async fn routes(State(s): State<AdminState>) -> Response {
    let snapshot = s.reloader.front().snapshot();
    let routes: Vec<Value> = snapshot.gateway().table().in_precedence_order().into_iter().map(route_json).collect();
    axum::Json(json!({ "routes": routes })).into_response()
}

fn route_json(route: &nexus_core::router::Route) -> Value {
    let c = route.config();
    let mut r = json!({
        "name": c.name,
        "host": c.host,
        "paths": c.paths.iter().map(|p| json!({ "path": p.path, "type": p.kind })).collect::<Vec<_>>(),
        "methods": c.methods,
        "headers": c.headers,
        "auth": c.auth,
        "rate_limit": c.rate_limit,
        "timeout": c.timeout.map(|t| t.to_string()),
    });
    match (&c.upstream, &c.split) {
        (_, Some(split)) => r["split"] = json!(split),
        (upstream, None) => r["upstream"] = json!(upstream),
    }
    r
}

async fn config(State(s): State<AdminState>) -> Response {
    axum::Json(s.reloader.describe()).into_response()
}

/// Mutating calls need `Authorization: Bearer <token>` when a token is configured:
/// `Some(401 response)` when the call may not proceed.
fn unauthorized(s: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &s.token else { return None };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut res: Response = GatewayError::new(ErrorCode::Unauthorized)
        .with_message("admin token required")
        .into_response_for::<axum::body::Body>(headers);
    res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"nexus-admin\""));
    Some(res)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn reload(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(res) = unauthorized(&s, &headers) {
        return res;
    }
    match s.reloader.reload("admin API").await {
        Reload::Applied(version) => axum::Json(json!({ "result": "ok", "version": version })).into_response(),
        Reload::Unchanged => {
            axum::Json(json!({ "result": "unchanged", "version": s.reloader.current().version })).into_response()
        }
        Reload::Failed(errors) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(
                json!({ "result": "error", "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>() }),
            ),
        )
            .into_response(),
    }
}

async fn rollback(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(res) = unauthorized(&s, &headers) {
        return res;
    }
    match s.reloader.rollback().await {
        Ok(version) => axum::Json(json!({ "result": "ok", "version": version, "pinned": true })).into_response(),
        Err(why) => (StatusCode::CONFLICT, axum::Json(json!({ "result": "error", "error": why }))).into_response(),
    }
}

async fn explain(State(s): State<AdminState>, RawQuery(q): RawQuery) -> Response {
    let mut method = "GET".to_string();
    let mut host = None;
    let mut path = "/".to_string();
    let mut headers = Vec::new();
    for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        match &*k {
            "method" => method = v.into_owned(),
            "host" => host = Some(v.into_owned()),
            "path" => path = v.into_owned(),
            "header" => headers.push(v.into_owned()),
            _ => {}
        }
    }
    let loaded = s.reloader.current();
    let snapshot = s.reloader.front().snapshot();
    match explain_request(&loaded, snapshot.gateway().table(), &method, host.as_deref(), &path, &headers) {
        Ok(answer) => {
            let status = if answer["matched"] == true { StatusCode::OK } else { StatusCode::NOT_FOUND };
            (status, axum::Json(answer)).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": e }))).into_response(),
    }
}

fn explain_request(
    loaded: &LoadedConfig,
    table: &RouteTable,
    method: &str,
    host: Option<&str>,
    path: &str,
    header_args: &[String],
) -> Result<Value, String> {
    let method =
        Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| format!("invalid method {method:?}"))?;
    let mut headers = HeaderMap::new();
    for h in header_args {
        let (name, value) = h.split_once(':').ok_or_else(|| format!("header {h:?} is not \"Name: value\""))?;
        let name =
            HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| format!("invalid header name in {h:?}"))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| format!("invalid header value in {h:?}"))?;
        headers.append(name, value);
    }
    let host = host
        .map(str::to_string)
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string));
    Ok(nexus_core::explain::explain(&loaded.config, table, &method, host.as_deref(), path, &headers))
}

/// `nexus explain --config PATH METHOD URL [-H 'Name: value']...`: the same answer, offline.
pub(crate) fn explain_cli(loaded: &LoadedConfig, method: &str, url: &str, headers: &[String]) -> Result<Value, String> {
    let table = RouteTable::from_config(&loaded.config).map_err(|e| e.to_string())?;
    let (host, path) = if url.starts_with('/') {
        (None, url.to_string())
    } else {
        let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        (uri.authority().map(|a| a.as_str().to_string()), uri.path().to_string())
    };
    explain_request(loaded, &table, method, host.as_deref(), &path, headers)
}
