//! Who the client is, for the per-IP cap: the socket's peer address, or,
//! only when the peer is a trusted proxy, the right-most untrusted address
//! of the configured forwarding header (`X-Forwarded-For` style: a
//! comma-separated list, each proxy appending the address it saw). Taking
//! the right-most untrusted entry matters: everything left of it was
//! written by the client and can be forged.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::{HeaderMap, HeaderName};

use super::AdmissionError;

/// An IP network: an address and a prefix length (a bare address is a
/// network of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip, self.prefix) == net,
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip, self.prefix) == net,
            _ => false,
        }
    }
}

fn mask_v4(ip: std::net::Ipv4Addr, prefix: u8) -> std::net::Ipv4Addr {
    let bits = u32::from(ip);
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    (bits & mask).into()
}

fn mask_v6(ip: std::net::Ipv6Addr, prefix: u8) -> std::net::Ipv6Addr {
    let bits = u128::from(ip);
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    (bits & mask).into()
}

impl FromStr for Cidr {
    type Err = AdmissionError;

    /// `10.0.0.0/8`, `fd00::/8`, or a bare address. Host bits below the
    /// prefix are ignored (`10.1.2.3/8` is `10.0.0.0/8`), as proxies'
    /// configurations usually mean.
    fn from_str(s: &str) -> Result<Cidr, AdmissionError> {
        let bad = || AdmissionError::BadProxy(s.to_string());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let net = addr.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        let net = match net {
            IpAddr::V4(v4) => IpAddr::V4(mask_v4(v4, prefix)),
            IpAddr::V6(v6) => IpAddr::V6(mask_v6(v6, prefix)),
        };
        Ok(Cidr { net, prefix })
    }
}

/// How the client IP is found: the trusted proxies and their header.
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: Vec<Cidr>,
    /// Unset: no header is ever read.
    header: Option<HeaderName>,
}

impl ClientIp {
    /// The two settings go together: a header without trusted proxies
    /// would never be read, and proxies without a header mean nothing.
    pub fn parse(trusted: &[String], header: Option<&str>) -> Result<ClientIp, AdmissionError> {
        let trusted = trusted
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.parse())
            .collect::<Result<Vec<Cidr>, _>>()?;
        let header = match header {
            None => None,
            Some(name) => Some(
                HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| AdmissionError::BadHeader(name.to_string()))?,
            ),
        };
        match (trusted.is_empty(), &header) {
            (true, Some(h)) => Err(AdmissionError::HeaderWithoutProxies(h.to_string())),
            (false, None) => Err(AdmissionError::ProxiesWithoutHeader),
            _ => Ok(ClientIp { trusted, header }),
        }
    }

    pub(super) fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The client's address for a request from `peer`. A chain that
    /// cannot be read (an entry that is not an address) falls back to the
    /// peer: the entry was written by a proxy we trust, so guessing past it
    /// would trust the client.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        let Some(name) = &self.header else {
            return peer;
        };
        if !self.is_trusted(peer) {
            return peer;
        }
        // Several header lines form one list, in order (RFC 9110 5.3).
        let values = match headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str())
            .collect::<Result<Vec<&str>, _>>()
        {
            Ok(v) => v,
            Err(_) => return peer,
        };
        let mut leftmost = peer;
        for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
            let Some(ip) = parse_entry(entry) else {
                return peer;
            };
            if !self.is_trusted(ip) {
                return ip;
            }
            leftmost = ip;
        }
        // Every hop is a trusted proxy: the farthest one is the best we know.
        leftmost
    }
}

/// One list entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, or
/// `[2001:db8::1]:5678`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
        .map(|ip: IpAddr| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cidrs_contain_their_addresses() {
        let net: Cidr = "10.1.2.3/8".parse().unwrap();
        assert!(net.contains(ip("10.200.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(
            net.contains(ip("::ffff:10.0.0.9")),
            "IPv4-mapped IPv6 is the IPv4 address"
        );
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/", "1.2.3.4/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn header_is_read_only_from_trusted_peers_right_to_left() {
        let c = ClientIp::parse(&["10.0.0.0/8".into(), "127.0.0.1".into()], Some("X-Forwarded-For")).unwrap();
        // Untrusted peer: its header is ignored.
        assert_eq!(c.resolve(ip("192.0.2.7"), &headers(&["203.0.113.5"])), ip("192.0.2.7"));
        // Trusted peer: the right-most untrusted entry, skipping proxies.
        assert_eq!(
            c.resolve(ip("127.0.0.1"), &headers(&["1.1.1.1, 203.0.113.5", "10.0.0.2"])),
            ip("203.0.113.5")
        );
        assert_eq!(
            c.resolve(ip("127.0.0.1"), &headers(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
        assert_eq!(
            c.resolve(ip("127.0.0.1"), &headers(&["198.51.100.1:80"])),
            ip("198.51.100.1")
        );
        // No header, or garbage where a proxy's entry should be: the peer.
        assert_eq!(c.resolve(ip("127.0.0.1"), &headers(&[])), ip("127.0.0.1"));
        assert_eq!(
            c.resolve(ip("127.0.0.1"), &headers(&["1.1.1.1, junk"])),
            ip("127.0.0.1")
        );
        // Only proxies in the chain: the farthest.
        assert_eq!(
            c.resolve(ip("127.0.0.1"), &headers(&["10.0.0.1, 10.0.0.2"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn settings_go_together() {
        assert!(ClientIp::parse(&[], None).is_ok());
        assert!(matches!(
            ClientIp::parse(&[], Some("X-Forwarded-For")),
            Err(AdmissionError::HeaderWithoutProxies(_))
        ));
        assert!(matches!(
            ClientIp::parse(&["10.0.0.0/8".into()], None),
            Err(AdmissionError::ProxiesWithoutHeader)
        ));
        assert!(matches!(
            ClientIp::parse(&["10.0.0.0/8".into()], Some("bad header")),
            Err(AdmissionError::BadHeader(_))
        ));
    }
}
