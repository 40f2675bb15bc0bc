//! The upstream model: endpoint addresses parsed from config, independent of any
//! HTTP client.
//!
//! ```
//! use nexus_core::upstream::parse_endpoint_url;
//! let ep = parse_endpoint_url("http://127.0.0.1:8081").unwrap();
//! assert_eq!(ep.authority(), "127.0.0.1:8081");
//! assert!(parse_endpoint_url("ftp://x").is_err());
//! ```

/// An endpoint address: plain-HTTP host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointAddr {
    authority: String,
}

impl EndpointAddr {
    /// `host:port`, the `endpoint` metric label.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

/// Parse an endpoint URL (`http://host[:port]`, no path, query or credentials).
pub fn parse_endpoint_url(s: &str) -> Result<EndpointAddr, String> {
    let url = url::Url::parse(s).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(format!("{s:?}: https endpoints are not supported yet; use http://"));
        }
        other => {
            return Err(format!("{s:?}: scheme {other:?} is not supported (expected http)"));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{s:?}: credentials in endpoint URLs are not allowed"));
    }
    if url.path() != "/" && !url.path().is_empty() || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?}: an endpoint URL has no path, query or fragment (write http://host:port)"));
    }
    let host = url.host_str().ok_or_else(|| format!("{s:?} has no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    Ok(EndpointAddr { authority: format!("{host}:{port}") })
}
