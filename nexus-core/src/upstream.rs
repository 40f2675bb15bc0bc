//! The upstream model: endpoint addresses parsed from config, independent of any
//! HTTP client.
//!
//! ```
//! use nexus_core::upstream::parse_endpoint_url;
//! let ep = parse_endpoint_url("http://127.0.0.1:8081").unwrap();
//! assert_eq!(ep.authority(), "127.0.0.1:8081");
//! assert!(parse_endpoint_url("ftp://x").is_err());
//! let tls = parse_endpoint_url("https://[::1]").unwrap();
//! assert_eq!((tls.authority(), tls.host(), tls.is_tls()), ("[::1]:443", "::1", true));
//! ```

/// An endpoint address: host and port, and whether it speaks TLS (`https://`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointAddr {
    authority: String,
    /// Where the host ends in `authority` (brackets of an IPv6 address included).
    host_len: usize,
    tls: bool,
}

impl EndpointAddr {
    /// `host:port`, the `endpoint` metric label.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The host, without the brackets of an IPv6 address: the TLS server name to verify
    /// unless `tls.server_name` says otherwise.
    pub fn host(&self) -> &str {
        self.authority[..self.host_len].trim_start_matches('[').trim_end_matches(']')
    }

    /// The endpoint is `https://`: connections to it speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

/// Parse an endpoint URL (`http://host[:port]` or `https://host[:port]`, no path, query or
/// credentials).
pub fn parse_endpoint_url(s: &str) -> Result<EndpointAddr, String> {
    let url = AbsoluteUrl::parse(s)?;
    let (tls, default_port) = match url.scheme.as_str() {
        "http" => (false, 80),
        "https" => (true, 443),
        other => {
            return Err(format!("{s:?}: scheme {other:?} is not supported (expected http or https)"));
        }
    };
    if url.credentials {
        return Err(format!("{s:?}: credentials in endpoint URLs are not allowed"));
    }
    if url.rest_after_authority {
        return Err(format!("{s:?}: an endpoint URL has no path, query or fragment (write http://host:port)"));
    }
    let port = url.port.unwrap_or(default_port);
    Ok(EndpointAddr { authority: format!("{}:{port}", url.host), host_len: url.host.len(), tls })
}

/// An absolute `scheme://[user@]host[:port][/...]` URL, as far as the config needs it
/// (endpoint URLs, `jwks_url`): scheme and host lowercased, IPv6 hosts in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsoluteUrl {
    /// Lowercased scheme (`http`, `https`, ...).
    pub scheme: String,
    /// Lowercased host; an IPv6 address keeps its brackets (`[::1]`).
    pub host: String,
    /// The explicit port, if any.
    pub port: Option<u16>,
    /// `user[:password]@` was given.
    pub credentials: bool,
    /// Something follows the authority other than a lone `/`: a path, query or fragment.
    pub rest_after_authority: bool,
}

impl AbsoluteUrl {
    /// Parse `s`, or say why it is not an absolute URL with a host.
    ///
    /// ```
    /// use nexus_core::upstream::AbsoluteUrl;
    /// let u = AbsoluteUrl::parse("HTTP://[::1]:8080/").unwrap();
    /// assert_eq!((u.scheme.as_str(), u.host.as_str(), u.port), ("http", "[::1]", Some(8080)));
    /// assert!(!u.rest_after_authority);
    /// assert!(AbsoluteUrl::parse("not a url").is_err());
    /// assert!(AbsoluteUrl::parse("http://h:99999").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("invalid URL {s:?}: {why}");
        // The fragment is not part of a request target; http::Uri does not take one.
        let (target, fragment) = match s.split_once('#') {
            Some((t, _)) => (t, true),
            None => (s, false),
        };
        let uri: http::Uri = target.parse().map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        let scheme = uri.scheme_str().ok_or_else(|| invalid("relative URL without a scheme"))?.to_ascii_lowercase();
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let host = authority.host();
        if host.is_empty() {
            return Err(invalid("empty host"));
        }
        // What follows the host: nothing, or `:port` (http::Uri keeps an out-of-range
        // port in the authority and reports no port at all).
        let after_host = authority.as_str().rsplit_once('@').map_or(authority.as_str(), |(_, h)| h);
        let port = match after_host[host.len()..].strip_prefix(':') {
            None => None,
            Some(p) => {
                Some(p.parse::<u16>().map_err(|_| invalid(&format!("port {p:?} is not a number from 0 to 65535")))?)
            }
        };
        let path = uri.path_and_query().map_or("", http::uri::PathAndQuery::as_str);
        Ok(Self {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            credentials: authority.as_str().contains('@'),
            rest_after_authority: fragment || !(path.is_empty() || path == "/"),
        })
    }

    /// Whether the host is `localhost` or a loopback address.
    ///
    /// ```
    /// use nexus_core::upstream::AbsoluteUrl;
    /// assert!(AbsoluteUrl::parse("http://[::1]/jwks").unwrap().is_loopback());
    /// assert!(AbsoluteUrl::parse("http://127.0.0.2:80/").unwrap().is_loopback());
    /// assert!(!AbsoluteUrl::parse("http://issuer.example.com/").unwrap().is_loopback());
    /// ```
    pub fn is_loopback(&self) -> bool {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        bare == "localhost" || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}
