//! The admin listener (axum): probes, the active config, and explain.

use crate::config_file::LoadedConfig;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use nexus_core::router::RouteTable;
use nexus_core::{ErrorCode, GatewayError};
use nexus_health::{ReadinessGate, probe};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the admin API reads.
#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    loaded: Arc<LoadedConfig>,
    table: Arc<RouteTable>,
    gate: ReadinessGate,
}

impl AdminState {
    pub(crate) fn new(loaded: &LoadedConfig, gate: ReadinessGate) -> Self {
        let table = RouteTable::from_config(&loaded.config).unwrap_or_default();
        Self { loaded: Arc::new(loaded.clone()), table: Arc::new(table), gate }
    }
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { probe::liveness::<axum::body::Body>() }))
        .route(
            "/readyz",
            get(|State(s): State<AdminState>| async move { probe::readiness::<axum::body::Body>(&s.gate) }),
        )
        .route("/admin/config", get(config))
        .route("/admin/explain", get(explain))
        .fallback(|headers: HeaderMap| async move {
            GatewayError::new(ErrorCode::RouteNotFound).into_response_for::<axum::body::Body>(&headers)
        })
        .with_state(state)
}

pub(crate) async fn serve(listener: TcpListener, state: AdminState, mut stop: watch::Receiver<bool>) {
    let app = router(state);
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}

async fn config(State(s): State<AdminState>) -> Response {
    let l = &s.loaded;
    let loaded_at = l.loaded_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    axum::Json(json!({
        "version": l.version,
        "loaded_at": loaded_at,
        "source": l.source.display().to_string(),
        "routes": l.config.routes.len(),
        "upstreams": l.config.upstreams.len(),
        "history": [l.version],
        "pinned": false,
        "last_reload": Value::Null,
    }))
    .into_response()
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
    match explain_request(&s.loaded, &s.table, &method, host.as_deref(), &path, &headers) {
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
