//! Go's `netip.Prefix`, and Tailscale's address ranges.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A Go `netip.Prefix`: an address and a prefix length, host bits kept as written
/// (`"100.64.0.1/32"`, `"192.168.1.0/24"`, `"::/0"`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    bits: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixParseError(String);

impl fmt::Display for PrefixParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad prefix {:?}", self.0)
    }
}

impl std::error::Error for PrefixParseError {}

impl IpPrefix {
    /// The same address with another prefix length; None if too long.
    pub fn with_bits(&self, bits: u8) -> Option<IpPrefix> {
        IpPrefix::new(self.addr(), bits)
    }

    /// None if `bits` exceeds the address length.
    pub fn new(addr: IpAddr, bits: u8) -> Option<IpPrefix> {
        (bits <= max_bits(&addr)).then_some(IpPrefix { addr, bits })
    }

    /// The single-address prefix (/32 or /128) of `addr`.
    pub fn host(addr: IpAddr) -> IpPrefix {
        IpPrefix {
            addr,
            bits: max_bits(&addr),
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn bits(&self) -> u8 {
        self.bits
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn is_single_ip(&self) -> bool {
        self.bits == max_bits(&self.addr)
    }

    /// The prefix with its host bits cleared.
    pub fn masked(&self) -> IpPrefix {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let m = u32::MAX.checked_shl(32 - self.bits as u32).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
            }
            IpAddr::V6(a) => {
                let m = u128::MAX.checked_shl(128 - self.bits as u32).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
            }
        };
        IpPrefix {
            addr,
            bits: self.bits,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr.is_ipv4(), ip.is_ipv4()) {
            (true, true) | (false, false) => {
                IpPrefix { addr: ip, ..*self }.masked().addr == self.masked().addr
            }
            _ => false,
        }
    }

    /// `0.0.0.0/0` or `::/0`: an exit-node route.
    pub fn is_exit_route(&self) -> bool {
        self.bits == 0
    }

    /// The data plane's network type (host bits cleared, as routing tables want).
    pub fn to_network(&self) -> ip_network::IpNetwork {
        ip_network::IpNetwork::new_truncate(self.addr, self.bits)
            .expect("IpPrefix bits are validated at construction")
    }
}

fn max_bits(a: &IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

/// Go's `netipx.ComparePrefix` order: IPv4 first, then shorter prefixes, then address.
impl Ord for IpPrefix {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (max_bits(&self.addr), self.bits, self.addr).cmp(&(
            max_bits(&other.addr),
            other.bits,
            other.addr,
        ))
    }
}

impl PartialOrd for IpPrefix {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for IpPrefix {
    type Err = PrefixParseError;
    fn from_str(s: &str) -> Result<Self, PrefixParseError> {
        let err = || PrefixParseError(s.chars().take(64).collect());
        let (a, b) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = a.parse().map_err(|_| err())?;
        // Go refuses signs and leading zeros in the length.
        if b.is_empty() || b.len() > 3 || !b.bytes().all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        if b.len() > 1 && b.starts_with('0') {
            return Err(err());
        }
        let bits: u8 = b.parse().map_err(|_| err())?;
        IpPrefix::new(addr, bits).ok_or_else(err)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

impl fmt::Debug for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for IpPrefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// Tailscale's address ranges (`net/tsaddr`): 100.64.0.0/10 minus the ChromeOS VM range
/// 100.115.92.0/23, and fd7a:115c:a1e0::/48.
pub fn is_tailscale_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let n = u32::from(a);
            let cgnat = n & 0xffc0_0000 == 0x6440_0000;
            let chromeos = n & 0xffff_fe00 == 0x6473_5c00;
            cgnat && !chromeos
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_tailscale_ip(IpAddr::V4(v4)),
            None => u128::from(a) >> 80 == 0xfd7a_115c_a1e0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_keep_host_bits_and_sort_like_go() {
        let p: IpPrefix = "192.168.1.7/24".parse().unwrap();
        assert_eq!(p.to_string(), "192.168.1.7/24");
        assert_eq!(p.masked().to_string(), "192.168.1.0/24");
        assert_eq!(p.to_network().to_string(), "192.168.1.0/24");
        assert!(p.contains("192.168.1.200".parse().unwrap()));
        assert!(!p.contains("192.168.2.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        let v6: IpPrefix = "fd7a:115c:a1e0::1/128".parse().unwrap();
        assert!(v6.is_single_ip());
        assert!("::/0".parse::<IpPrefix>().unwrap().is_exit_route());
        let mut v: Vec<IpPrefix> = [
            "::/0",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "192.168.1.0/24",
            "10.0.0.0/16",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        v.sort();
        let got: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "0.0.0.0/0",
                "10.0.0.0/8",
                "10.0.0.0/16",
                "192.168.1.0/24",
                "::/0"
            ]
        );
        for bad in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "fe80::1%eth0/64",
            "x/1",
        ] {
            assert!(bad.parse::<IpPrefix>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn tailscale_ip_ranges() {
        for (ip, want) in [
            ("100.64.0.1", true),
            ("100.127.255.254", true),
            ("100.63.255.255", false),
            ("100.128.0.0", false),
            ("100.115.92.5", false), // ChromeOS VM range
            ("fd7a:115c:a1e0::1", true),
            ("fd7a:115c:a1e1::1", false),
            ("::ffff:100.64.0.1", true),
            ("10.0.0.1", false),
        ] {
            assert_eq!(is_tailscale_ip(ip.parse().unwrap()), want, "{ip}");
        }
    }
}
