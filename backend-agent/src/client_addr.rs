//! The real client behind a reverse proxy: trusted-proxy CIDRs and `X-Real-IP` /
//! `X-Forwarded-For` parsing, used by the hub upgrade and by the operator API.
//!
//! A forwarded address is honoured only when the TCP peer is a trusted proxy (for the API:
//! an address in `[http] trusted_proxies`; for the hub: a connection presenting a pinned proxy
//! certificate). `X-Real-IP` wins; otherwise the *last* `X-Forwarded-For` hop, which is the
//! one the proxy appended itself (earlier hops were written by the client and prove nothing).
//! A missing or unparsable header falls back to the peer address, so a misconfigured proxy
//! costs fairness, never availability.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use serde::Deserialize;

/// Header nginx sets to `$remote_addr` (the shipped config overwrites any client value).
pub const REAL_IP_HEADER: &str = "x-real-ip";
/// Header of proxy hops; only its last hop is used.
pub const FORWARDED_FOR_HEADER: &str = "x-forwarded-for";

/// One `address/prefix` network (a bare address is a host route: /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address or CIDR (e.g. \"127.0.0.1/32\", \"::1\")");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let net = canonical(net);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
        };
        if prefix > max {
            return Err(format!("{s:?}: prefix /{prefix} is longer than {max} bits"));
        }
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Whether `ip` is inside any of `trusted`.
pub fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack socket reports) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Reads one address as proxies write it: `1.2.3.4`, `::1`, `[::1]`, `[::1]:443` or
/// `1.2.3.4:443`.
fn parse_addr(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim();
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = raw.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    raw.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
        .map(canonical)
}

/// The client address the proxy forwarded: `X-Real-IP`, else the last `X-Forwarded-For`
/// hop. `None` when neither header holds a usable address. Call it only for a trusted proxy.
pub fn forwarded(headers: &HeaderMap) -> Option<IpAddr> {
    let real = headers
        .get_all(REAL_IP_HEADER)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(parse_addr);
    real.or_else(|| {
        headers
            .get_all(FORWARDED_FOR_HEADER)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(parse_addr)
    })
}

/// The address a request is limited and audited under: the forwarded client when `peer` is
/// in `trusted`, else `peer` itself.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    if is_trusted(trusted, peer) {
        forwarded(headers).unwrap_or(peer)
    } else {
        peer
    }
}

/// Axum extractor: the real client of an API request (see [`resolve`] and
/// `[http] trusted_proxies`), with the TCP peer it came from.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr {
    /// The client the limits and the audit key on.
    pub ip: IpAddr,
    /// The TCP peer (the proxy, when there is one).
    pub peer: SocketAddr,
}

impl ClientAddr {
    /// The client as a socket address (the peer's port; the client's own is not forwarded).
    pub fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.peer.port())
    }
}

impl FromRequestParts<crate::api::AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &crate::api::AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
        let ip = resolve(peer.ip(), &parts.headers, &state.trusted_proxies.load());
        Ok(ClientAddr { ip, peer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cidrs_parse_and_match() {
        let lo: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(lo.contains(ip("127.9.8.7")));
        assert!(lo.contains(ip("::ffff:127.0.0.1")), "mapped IPv4 counts");
        assert!(!lo.contains(ip("128.0.0.1")));
        assert!(!lo.contains(ip("::1")));
        let host: Cidr = "::1".parse().unwrap();
        assert_eq!(host.to_string(), "::1/128");
        assert!(host.contains(ip("::1")) && !host.contains(ip("::2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let net6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(net6.contains(ip("2001:db8:ffff::1")) && !net6.contains(ip("2001:db9::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "host",
            "10.0.0.1/x",
            "1.2.3.4/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn real_ip_wins_then_the_last_forwarded_hop() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.1, 203.0.113.5"),
            ("x-real-ip", "192.0.2.7"),
        ]);
        assert_eq!(forwarded(&h), Some(ip("192.0.2.7")));
        let h = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.5")]);
        assert_eq!(
            forwarded(&h),
            Some(ip("203.0.113.5")),
            "the proxy's own hop"
        );
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "[2001:db8::9]:443"),
        ]);
        assert_eq!(
            forwarded(&h),
            Some(ip("2001:db8::9")),
            "last header, last hop"
        );
        let h = headers(&[("x-real-ip", "garbage"), ("x-forwarded-for", "10.1.2.3")]);
        assert_eq!(
            forwarded(&h),
            Some(ip("10.1.2.3")),
            "unusable X-Real-IP is skipped"
        );
        assert_eq!(forwarded(&headers(&[("x-real-ip", "")])), None);
        assert_eq!(forwarded(&HeaderMap::new()), None);
    }

    #[test]
    fn headers_are_honoured_only_from_trusted_peers() {
        let trusted: Vec<Cidr> = vec!["127.0.0.1".parse().unwrap()];
        let h = headers(&[("x-real-ip", "192.0.2.7")]);
        assert_eq!(resolve(ip("127.0.0.1"), &h, &trusted), ip("192.0.2.7"));
        assert_eq!(
            resolve(ip("198.51.100.4"), &h, &trusted),
            ip("198.51.100.4"),
            "a client cannot name its own address"
        );
        assert_eq!(
            resolve(ip("127.0.0.1"), &HeaderMap::new(), &trusted),
            ip("127.0.0.1"),
            "no header: the proxy itself"
        );
        assert_eq!(resolve(ip("127.0.0.1"), &h, &[]), ip("127.0.0.1"));
    }
}
