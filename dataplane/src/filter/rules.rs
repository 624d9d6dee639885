//! The packet filter's configuration, as plain values in [`crate::Config`]: rules in
//! the shape of Tailscale's `FilterRule` (protocol.md §4.4) with the address forms
//! parsed, and the set of destinations this node accepts traffic for.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An inclusive range of addresses of one family. A CIDR, a single IP and an `a-b`
/// range all become one of these; `*` becomes two (all IPv4, all IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl IpRange {
    pub const ALL_V4: IpRange = IpRange {
        first: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        last: IpAddr::V4(Ipv4Addr::BROADCAST),
    };
    pub const ALL_V6: IpRange = IpRange {
        first: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        last: IpAddr::V6(Ipv6Addr::new(
            0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
        )),
    };

    pub fn single(ip: IpAddr) -> IpRange {
        IpRange {
            first: ip,
            last: ip,
        }
    }

    /// The addresses of `addr/bits`; host bits of `addr` are ignored.
    pub fn prefix(addr: IpAddr, bits: u8) -> IpRange {
        match addr {
            IpAddr::V4(a) => {
                let bits = bits.min(32) as u32;
                let host = u32::MAX.checked_shr(bits).unwrap_or(0);
                let n = u32::from(a) & !host;
                IpRange {
                    first: IpAddr::V4(n.into()),
                    last: IpAddr::V4((n | host).into()),
                }
            }
            IpAddr::V6(a) => {
                let bits = bits.min(128) as u32;
                let host = u128::MAX.checked_shr(bits).unwrap_or(0);
                let n = u128::from(a) & !host;
                IpRange {
                    first: IpAddr::V6(n.into()),
                    last: IpAddr::V6((n | host).into()),
                }
            }
        }
    }

    pub fn is_v6(&self) -> bool {
        self.first.is_ipv6()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.is_v6() && self.first <= ip && ip <= self.last
    }

    /// Parses one address-set form of a FilterRule: `*`, an IP, a CIDR (host bits must
    /// be clear, as Go requires) or an inclusive range `a-b` of one family.
    /// `cap:` forms are not addresses; the caller resolves them.
    pub fn parse_set(s: &str) -> Result<Vec<IpRange>, FilterParseError> {
        let bad = |why: &str| FilterParseError(format!("{s:?}: {why}"));
        if s == "*" {
            return Ok(vec![IpRange::ALL_V4, IpRange::ALL_V6]);
        }
        if let Some((addr, bits)) = s.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| bad("invalid IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits
                .parse()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| bad("invalid prefix length"))?;
            let r = IpRange::prefix(addr, bits);
            if r.first != addr {
                return Err(bad("contains non-network bits set"));
            }
            return Ok(vec![r]);
        }
        if s.matches('-').count() == 1 {
            let (a, b) = s.split_once('-').unwrap_or_default();
            let a: IpAddr = a.parse().map_err(|_| bad("invalid IP address"))?;
            let b: IpAddr = b.parse().map_err(|_| bad("invalid IP address"))?;
            if a.is_ipv4() != b.is_ipv4() || b < a {
                return Err(bad("invalid IP range"));
            }
            return Ok(vec![IpRange { first: a, last: b }]);
        }
        let ip: IpAddr = s.parse().map_err(|_| bad("invalid IP address"))?;
        Ok(vec![IpRange::single(ip)])
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A bad address form in a filter rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterParseError(pub String);

impl fmt::Display for FilterParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "packet filter: {}", self.0)
    }
}

impl std::error::Error for FilterParseError {}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: 65535,
    };

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

/// Destination addresses and the ports open on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DstRange {
    pub net: IpRange,
    pub ports: PortRange,
}

/// One rule: traffic of these IP protocols from these sources to these destinations
/// is accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterRule {
    /// IP protocol numbers. Control's empty list means TCP, UDP, ICMPv4 and ICMPv6;
    /// use [`FilterRule::DEFAULT_PROTOS`] for it.
    pub protos: Vec<u8>,
    pub srcs: Vec<IpRange>,
    pub dsts: Vec<DstRange>,
}

impl FilterRule {
    pub const DEFAULT_PROTOS: [u8; 4] = [6, 17, 1, 58];
}

/// The whole inbound policy: traffic from the tunnel must be addressed to one of
/// `local_nets` and be accepted by a rule (or be the return half of a flow this node
/// opened). No rules means nothing new gets in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterConfig {
    pub rules: Vec<FilterRule>,
    /// Our own addresses, and the routes we forward for (approved subnet routes, the
    /// internet for an exit node). A peer cannot make us forward anywhere else.
    pub local_nets: Vec<IpRange>,
    /// Our TCP services that do their own access checks and take connections whatever
    /// the rules say (PeerAPI, as in Go): (our address, port).
    pub open_tcp: Vec<(IpAddr, u16)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: &str, b: &str) -> IpRange {
        IpRange {
            first: a.parse().unwrap(),
            last: b.parse().unwrap(),
        }
    }

    #[test]
    fn parses_every_address_form() {
        assert_eq!(
            IpRange::parse_set("*").unwrap(),
            vec![IpRange::ALL_V4, IpRange::ALL_V6]
        );
        assert_eq!(
            IpRange::parse_set("100.64.0.0/10").unwrap(),
            vec![r("100.64.0.0", "100.127.255.255")]
        );
        assert_eq!(
            IpRange::parse_set("fd7a:115c:a1e0::/48").unwrap(),
            vec![r(
                "fd7a:115c:a1e0::",
                "fd7a:115c:a1e0:ffff:ffff:ffff:ffff:ffff"
            )]
        );
        assert_eq!(
            IpRange::parse_set("10.0.0.5").unwrap(),
            vec![r("10.0.0.5", "10.0.0.5")]
        );
        assert_eq!(
            IpRange::parse_set("10.0.0.5-10.0.1.7").unwrap(),
            vec![r("10.0.0.5", "10.0.1.7")]
        );
        assert_eq!(
            IpRange::parse_set("0.0.0.0/0").unwrap(),
            vec![IpRange::ALL_V4]
        );
    }

    #[test]
    fn refuses_bad_forms() {
        for bad in [
            "10.0.0.1/24",
            "10.0.0.0/33",
            "10.0.0.9-10.0.0.1",
            "10.0.0.1-fd7a::1",
            "nonsense",
            "",
            "1.2.3.4/x",
        ] {
            assert!(IpRange::parse_set(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn contains_respects_family() {
        let v4 = IpRange::prefix("10.1.0.0".parse().unwrap(), 16);
        assert!(v4.contains("10.1.200.3".parse().unwrap()));
        assert!(!v4.contains("10.2.0.0".parse().unwrap()));
        assert!(!IpRange::ALL_V4.contains("::1".parse().unwrap()));
        assert!(IpRange::ALL_V6.contains("::1".parse().unwrap()));
    }
}
