//! The compiled route table and matcher.
//!
//! Matching never scans every route: hosts are hash lookups (exact, then each
//! wildcard suffix longest first, then host-less routes); exact paths are one
//! hash lookup; prefixes are one lookup per segment boundary of the request
//! path, longest first; only regex routes are tried in turn. Within one host
//! and path key, candidates are pre-sorted by the rest of SPEC §8's order (more
//! required headers, a method list, listing order), so the first candidate
//! whose methods and headers fit wins.
//!
//! ```
//! use http::Method;
//! use nexus_core::config::Config;
//! use nexus_core::router::{Match, RequestInfo, RouteTable};
//!
//! let config = Config::from_json(serde_json::json!({
//!     "upstreams": { "u": { "endpoints": [{ "url": "http://127.0.0.1:9" }] } },
//!     "routes": [
//!         { "name": "all", "paths": [{ "path": "/" }], "upstream": "u" },
//!         { "name": "users", "paths": [{ "path": "/users", "type": "exact" }],
//!           "methods": ["POST"], "upstream": "u" },
//!     ]
//! })).unwrap();
//! let table = RouteTable::from_config(&config).unwrap();
//! let post = table.match_request(&RequestInfo::new(&Method::POST, None, "/users"));
//! assert_eq!(post.route().unwrap().name(), "users");
//! // GET /users falls through to the catch-all prefix route.
//! let get = table.match_request(&RequestInfo::new(&Method::GET, None, "/users"));
//! assert_eq!(get.route().unwrap().name(), "all");
//! ```

use crate::config::{Config, ConfigError, ConfigErrors, PathConfig, PathKind, RouteConfig};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use std::borrow::Cow;
use std::collections::HashMap;

/// Route keys come from the config, not from clients, so a fast hasher is safe
/// here (a client cannot choose what collides); per-process seeds all the same.
type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

#[cfg(test)]
mod tests;

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    id: usize,
    config: RouteConfig,
    methods: Option<Vec<Method>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Route {
    /// Position in the config's `routes` list; stable for one table, so callers
    /// can keep per-route state in a `Vec` indexed by it.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The route's config.
    pub fn config(&self) -> &RouteConfig {
        &self.config
    }

    /// Methods this route accepts; `None` = any. `GET` implies `HEAD`.
    pub fn methods(&self) -> Option<&[Method]> {
        self.methods.as_deref()
    }

    fn accepts_method(&self, m: &Method) -> bool {
        match &self.methods {
            None => true,
            Some(ms) => ms.iter().any(|x| x == m || (*m == Method::HEAD && *x == Method::GET)),
        }
    }

    fn accepts_headers(&self, headers: Option<&HeaderMap>) -> bool {
        self.headers.iter().all(|(name, want)| headers.is_some_and(|h| h.get_all(name).iter().any(|v| v == want)))
    }
}

/// What the matcher needs to know of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    method: &'a Method,
    host: Option<&'a str>,
    path: &'a str,
    headers: Option<&'a HeaderMap>,
}

impl<'a> RequestInfo<'a> {
    /// A request with this method, `Host` (port and case are ignored) and
    /// *normalised* path (see [`crate::path::normalize`]).
    pub fn new(method: &'a Method, host: Option<&'a str>, path: &'a str) -> Self {
        Self { method, host, path, headers: None }
    }

    /// Add the request headers, for routes that require some.
    pub fn with_headers(mut self, headers: &'a HeaderMap) -> Self {
        self.headers = Some(headers);
        self
    }
}

/// Which host rule selected a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMatch {
    /// The route's exact host.
    Exact,
    /// The route's `*.` wildcard.
    Wildcard,
    /// The route has no host.
    Any,
}

/// A successful match.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    route: &'a Route,
    path: &'a PathConfig,
    host: HostMatch,
}

impl<'a> RouteMatch<'a> {
    /// The route.
    pub fn route(&self) -> &'a Route {
        self.route
    }

    /// The route's path entry that matched.
    pub fn matched_path(&self) -> &'a PathConfig {
        self.path
    }

    /// How the host matched.
    pub fn host_match(&self) -> HostMatch {
        self.host
    }

    /// The path the upstream should see: with `strip_prefix`, the matched
    /// prefix removed (never empty: at least `/`); otherwise `path` itself.
    pub fn upstream_path<'p>(&self, path: &'p str) -> Cow<'p, str> {
        if !self.route.config.strip_prefix || self.path.kind == PathKind::Regex {
            return Cow::Borrowed(path);
        }
        let n = self.path.path.trim_end_matches('/').len().min(path.len());
        let rest = &path[n..];
        if rest.is_empty() {
            Cow::Borrowed("/")
        } else if rest.starts_with('/') {
            Cow::Borrowed(rest)
        } else {
            Cow::Owned(format!("/{rest}"))
        }
    }
}

/// The outcome of matching.
#[derive(Debug, Clone)]
pub enum Match<'a> {
    /// A route serves the request.
    Found(RouteMatch<'a>),
    /// Routes match the path but not the method: 405 with these in `Allow`.
    MethodNotAllowed {
        /// Methods that would match.
        allow: Vec<Method>,
    },
    /// Nothing matches: 404.
    NotFound,
}

impl<'a> Match<'a> {
    /// The route, when found.
    pub fn route(&self) -> Option<&'a Route> {
        match self {
            Match::Found(m) => Some(m.route),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cand {
    route: u32,
    path: u32,
}

#[derive(Debug, Default)]
struct Group {
    exact: Map<Vec<Cand>>,
    prefix: Map<Vec<Cand>>,
    regex: Vec<(Regex, Vec<Cand>)>,
}

/// The compiled route table: immutable, cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact_hosts: Map<Group>,
    wildcard_hosts: Map<Group>,
    any_host: Group,
}

impl RouteTable {
    /// Compile the routes of a (validated) config.
    pub fn from_config(config: &Config) -> Result<Self, ConfigErrors> {
        Self::from_routes(config.routes.iter().cloned())
    }

    /// Compile routes given in code.
    pub fn from_routes(routes: impl IntoIterator<Item = RouteConfig>) -> Result<Self, ConfigErrors> {
        let mut table = RouteTable::default();
        let mut errors = Vec::new();
        for (id, config) in routes.into_iter().enumerate() {
            let p = format!("routes[{id}]");
            let methods = config.methods.as_ref().map(|ms| {
                ms.iter()
                    .filter_map(|m| match Method::from_bytes(m.as_bytes()) {
                        Ok(m) => Some(m),
                        Err(_) => {
                            errors.push(ConfigError::new(format!("{p}.methods"), format!("{m:?} is not a method")));
                            None
                        }
                    })
                    .collect()
            });
            let mut headers = Vec::new();
            for (n, v) in &config.headers {
                match (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(v)) {
                    (Ok(n), Ok(v)) => headers.push((n, v)),
                    _ => errors.push(ConfigError::new(format!("{p}.headers.{n}"), "invalid header")),
                }
            }
            let group = match config.host.as_deref() {
                None => &mut table.any_host,
                Some(h) => {
                    if let Err(e) = check_host_pattern(h) {
                        errors.push(ConfigError::new(format!("{p}.host"), e));
                        continue;
                    }
                    let h = h.to_ascii_lowercase();
                    match h.strip_prefix('*') {
                        Some(suffix) => table.wildcard_hosts.entry(suffix.into()).or_default(),
                        None => table.exact_hosts.entry(h.into()).or_default(),
                    }
                }
            };
            for (pi, path) in config.paths.iter().enumerate() {
                let cand = Cand { route: id as u32, path: pi as u32 };
                match path.kind {
                    PathKind::Exact => group.exact.entry(path.path.as_str().into()).or_default().push(cand),
                    PathKind::Prefix => {
                        group.prefix.entry(path.path.trim_end_matches('/').into()).or_default().push(cand);
                    }
                    PathKind::Regex => {
                        if let Some((_, cands)) =
                            group.regex.iter_mut().find(|(r, _)| r.as_str() == anchored(&path.path))
                        {
                            cands.push(cand);
                        } else {
                            match Regex::new(&anchored(&path.path)) {
                                Ok(r) => group.regex.push((r, vec![cand])),
                                Err(e) => errors.push(ConfigError::new(
                                    format!("{p}.paths[{pi}].path"),
                                    format!("invalid regex: {e}"),
                                )),
                            }
                        }
                    }
                }
            }
            table.routes.push(Route { id, config, methods, headers });
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let routes = &table.routes;
        let sort = |cands: &mut Vec<Cand>| {
            cands.sort_by_key(|c| {
                let r = &routes[c.route as usize];
                (std::cmp::Reverse(r.headers.len()), r.methods.is_none(), c.route)
            });
        };
        for g in table.exact_hosts.values_mut().chain(table.wildcard_hosts.values_mut()).chain([&mut table.any_host]) {
            g.exact.values_mut().for_each(sort);
            g.prefix.values_mut().for_each(sort);
            g.regex.iter_mut().for_each(|(_, c)| sort(c));
        }
        Ok(table)
    }

    /// The routes, in config order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The routes in precedence order (SPEC §8), as `GET /admin/routes` lists them: host
    /// (exact, then wildcards with the longer suffix first, then none), then the route's
    /// highest-precedence path (exact, then longer prefixes, then regexes), more required
    /// headers, a method list before any method, and config order. (A request is matched
    /// path by path; a route with several paths is placed by its strongest one.)
    pub fn in_precedence_order(&self) -> Vec<&Route> {
        let key = |r: &Route| {
            let host = match r.config.host.as_deref() {
                Some(h) if h.starts_with('*') => (1, std::cmp::Reverse(h.len())),
                Some(_) => (0, std::cmp::Reverse(0)),
                None => (2, std::cmp::Reverse(0)),
            };
            let path = r
                .config
                .paths
                .iter()
                .map(|p| match p.kind {
                    PathKind::Exact => (0, std::cmp::Reverse(p.path.len())),
                    PathKind::Prefix => (1, std::cmp::Reverse(p.path.trim_end_matches('/').len())),
                    PathKind::Regex => (2, std::cmp::Reverse(0)),
                })
                .min()
                .unwrap_or((3, std::cmp::Reverse(0)));
            (host, path, std::cmp::Reverse(r.headers.len()), r.methods.is_none(), r.id)
        };
        let mut routes: Vec<&Route> = self.routes.iter().collect();
        routes.sort_by_key(|r| key(r));
        routes
    }

    /// How many routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Find the route for a request (SPEC §8 precedence).
    pub fn match_request<'t>(&'t self, req: &RequestInfo<'_>) -> Match<'t> {
        let mut allow: Vec<Method> = Vec::new();
        if let Some(raw) = req.host {
            let host = normalize_host(raw);
            if let Some(g) = self.exact_hosts.get(host.as_ref())
                && let Some(m) = self.match_group(g, req, HostMatch::Exact, &mut allow)
            {
                return Match::Found(m);
            }
            if !self.wildcard_hosts.is_empty() {
                // Suffixes at each dot, longest first: ".b.example.com", ".example.com", ".com".
                for (i, _) in host.match_indices('.') {
                    if let Some(g) = self.wildcard_hosts.get(&host[i..])
                        && let Some(m) = self.match_group(g, req, HostMatch::Wildcard, &mut allow)
                    {
                        return Match::Found(m);
                    }
                }
            }
        }
        if let Some(m) = self.match_group(&self.any_host, req, HostMatch::Any, &mut allow) {
            return Match::Found(m);
        }
        if allow.is_empty() {
            Match::NotFound
        } else {
            if allow.contains(&Method::GET) && !allow.contains(&Method::HEAD) {
                allow.push(Method::HEAD);
            }
            Match::MethodNotAllowed { allow }
        }
    }

    fn match_group<'t>(
        &'t self,
        g: &'t Group,
        req: &RequestInfo<'_>,
        host: HostMatch,
        allow: &mut Vec<Method>,
    ) -> Option<RouteMatch<'t>> {
        let path = req.path;
        if !g.exact.is_empty()
            && let Some(c) = g.exact.get(path).and_then(|c| self.pick(c, req, host, allow))
        {
            return Some(c);
        }
        if !g.prefix.is_empty() {
            let mut key = path.trim_end_matches('/');
            loop {
                if let Some(c) = g.prefix.get(key).and_then(|c| self.pick(c, req, host, allow)) {
                    return Some(c);
                }
                match key.rfind('/') {
                    Some(i) => key = &key[..i],
                    None => break,
                }
            }
        }
        for (re, cands) in &g.regex {
            if re.is_match(path)
                && let Some(c) = self.pick(cands, req, host, allow)
            {
                return Some(c);
            }
        }
        None
    }

    fn pick<'t>(
        &'t self,
        cands: &[Cand],
        req: &RequestInfo<'_>,
        host: HostMatch,
        allow: &mut Vec<Method>,
    ) -> Option<RouteMatch<'t>> {
        for c in cands {
            let route = &self.routes[c.route as usize];
            if !route.accepts_headers(req.headers) {
                continue;
            }
            if route.accepts_method(req.method) {
                return Some(RouteMatch { route, path: &route.config.paths[c.path as usize], host });
            }
            for m in route.methods.iter().flatten() {
                if !allow.contains(m) {
                    allow.push(m.clone());
                }
            }
        }
        None
    }
}

fn anchored(re: &str) -> String {
    format!("^(?:{re})$")
}

/// Lower-case a `Host` value and drop its port; borrows when already lower-case.
///
/// One backward scan over bytes for the port's `:` (a `Host` ends with it, so it is a few bytes
/// away) and one pass for upper case: this runs on every request.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let b = raw.as_bytes();
    let mut end = if b.first() == Some(&b'[') {
        b.iter().position(|&c| c == b']').map_or(b.len(), |i| i + 1)
    } else {
        b.iter().rposition(|&c| c == b':').unwrap_or(b.len())
    };
    if end > 0 && b[end - 1] == b'.' {
        end -= 1;
    }
    // `end` is at an ASCII byte or the end, so a char boundary.
    let host = &raw[..end];
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Check a route's `host`: an exact name or `*.suffix`, no port.
pub fn check_host_pattern(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.contains('*') {
        return Err(format!("{h:?}: a wildcard is only allowed as a leading \"*.\" (e.g. \"*.example.com\")"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')) {
        return Err(format!("{h:?} is not a host name"));
    }
    if !name.starts_with('[') && name.contains(':') {
        return Err(format!("{h:?}: the host is matched without its port; remove \":port\""));
    }
    Ok(())
}
