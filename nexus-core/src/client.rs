//! Who the client is: the peer address of the connection, and the client IP
//! derived from `X-Forwarded-For` when the peer is a trusted proxy.
//!
//! The server puts a [`PeerAddr`] into each request's extensions (or, in an axum app with
//! the `axum` feature, axum's `ConnectInfo`); the proxy (for `X-Forwarded-For`) and
//! rate-limit keys (`client_ip`) read it through [`peer_of`].
//!
//! ```
//! use nexus_core::client::client_ip;
//! let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
//! let mut headers = http::HeaderMap::new();
//! headers.insert("x-forwarded-for", "203.0.113.7, 10.1.2.3".parse().unwrap());
//! let peer = "10.0.0.1".parse().unwrap();
//! assert_eq!(client_ip(peer, &headers, &trusted), "203.0.113.7".parse::<std::net::IpAddr>().unwrap());
//! ```

use http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// The TCP peer of the connection a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The peer of the connection a request arrived on, as its server exposes it: a
/// [`PeerAddr`], or (with this crate's `axum` feature) axum's `ConnectInfo<SocketAddr>`, which
/// `Router::into_make_service_with_connect_info::<SocketAddr>()` inserts. `None` when the
/// server gave neither: a per-client limit must then refuse, never share one bucket.
///
/// ```
/// use nexus_core::client::{PeerAddr, peer_of};
/// let mut req = http::Request::new(());
/// assert_eq!(peer_of(req.extensions()), None);
/// req.extensions_mut().insert(PeerAddr("192.0.2.7:40000".parse().unwrap()));
/// assert_eq!(peer_of(req.extensions()), Some("192.0.2.7:40000".parse().unwrap()));
/// ```
pub fn peer_of(extensions: &http::Extensions) -> Option<SocketAddr> {
    if let Some(p) = extensions.get::<PeerAddr>() {
        return Some(p.0);
    }
    #[cfg(feature = "axum")]
    if let Some(c) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(c.0);
    }
    None
}

/// Whether `ip` lies in one of the `trusted` networks.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client IP: the peer itself, unless the peer is a trusted proxy; then the
/// right-most `X-Forwarded-For` hop that is not itself trusted (the left-most
/// when every hop is trusted). Unparsable hops end the walk.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return canonical(peer);
    }
    let mut last = canonical(peer);
    let values: Vec<&str> = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    for hop in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(ip) = parse_hop(hop.trim()) else {
            return last;
        };
        if !is_trusted(ip, trusted) {
            return ip;
        }
        last = ip;
    }
    last
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(ip, &xff("1.2.3.4"), &["10.0.0.0/8".parse().unwrap()]), ip);
        assert_eq!(client_ip(ip, &xff("1.2.3.4"), &[]), ip);
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(client_ip(peer, &xff("6.6.6.6, 1.2.3.4, 10.0.0.2"), &trusted), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, &xff("10.0.0.3, 10.0.0.2"), &trusted), "10.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
        assert_eq!(client_ip(peer, &xff("garbage, 10.0.0.2"), &trusted), "10.0.0.2".parse::<IpAddr>().unwrap());
    }
}
