//! The few header fields the packet filter decides on, read from an IP packet in place
//! (smoltcp `wire` style: no copies, no allocation). The rules follow Go's
//! `net/packet.Parsed`: a packet whose transport header is cut short, or a non-first
//! fragment at an offset that could overlap a transport header, is `Unknown` and gets
//! dropped, so that no fragment trick hides a port from the filter.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ICMPV4: u8 = 1;
pub const IGMP: u8 = 2;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMPV6: u8 = 58;
pub const SCTP: u8 = 132;
/// Tailscale's own message protocol (pings, rejects), always accepted.
pub const TSMP: u8 = 99;
const IPV6_FRAGMENT: u8 = 44;

/// Fragment offsets (in 8-byte blocks) below this could overlap a transport header
/// (RFC 1858); such fragments are refused.
const MIN_FRAG_BLOCKS: u16 = (60 + 20) / 8;
const MIN_TSMP_SIZE: usize = 7;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// What the transport layer of a packet is, as far as the filter cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Malformed, truncated, or a fragment that could hide a header: dropped.
    Unknown,
    /// A later fragment of a datagram; the first fragment carried the ports and was
    /// filtered, so these pass (the receiver drops orphans on reassembly).
    Fragment,
    /// Any IP protocol number, with ports for TCP/UDP/SCTP (zero otherwise).
    Ip(u8),
}

/// The parsed header of one packet. Addresses are kept as integers so rule matching
/// is integer comparison; IPv4 addresses occupy the low 32 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub v6: bool,
    pub proto: Proto,
    pub src: u128,
    pub dst: u128,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// ICMP type and code, when the packet is ICMP with a whole 8-byte header.
    pub icmp: Option<(u8, u8)>,
}

impl Parsed {
    /// Parses an IPv4 or IPv6 packet; None when it is neither (or shorter than an IP
    /// header), which the filter treats as Unknown.
    pub fn new(pkt: &[u8]) -> Option<Parsed> {
        match pkt.first()? >> 4 {
            4 => parse_v4(pkt),
            6 => parse_v6(pkt),
            _ => None,
        }
    }

    /// A TCP segment that opens a connection: SYN without ACK.
    pub fn is_tcp_syn(&self) -> bool {
        self.proto == Proto::Ip(TCP) && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    pub fn is_icmp_echo_reply(&self) -> bool {
        matches!(
            (self.proto, self.icmp),
            (Proto::Ip(ICMPV4), Some((0, 0))) | (Proto::Ip(ICMPV6), Some((129, 0)))
        )
    }

    /// ICMP errors (unreachable, time exceeded, parameter problem, packet too big):
    /// they answer something we sent.
    pub fn is_icmp_error(&self) -> bool {
        match (self.proto, self.icmp) {
            (Proto::Ip(ICMPV4), Some((t, _))) => matches!(t, 3 | 11 | 12),
            (Proto::Ip(ICMPV6), Some((t, _))) => matches!(t, 1..=4),
            _ => false,
        }
    }

    pub fn src_ip(&self) -> IpAddr {
        to_ip(self.v6, self.src)
    }

    pub fn dst_ip(&self) -> IpAddr {
        to_ip(self.v6, self.dst)
    }

    /// Multicast destinations never cross the tunnel (Go drops them both ways).
    pub fn dst_is_multicast(&self) -> bool {
        if self.v6 {
            self.dst >> 120 == 0xff
        } else {
            self.dst >> 28 == 0xe
        }
    }

    /// Link-local unicast destinations, except the cloud metadata/DNS address
    /// 169.254.169.254 that Go lets through.
    pub fn dst_is_link_local(&self) -> bool {
        if self.v6 {
            self.dst >> 118 == 0xfe80 >> 6
        } else {
            self.dst >> 16 == 0xa9fe && self.dst != 0xa9fe_a9fe
        }
    }
}

fn to_ip(v6: bool, a: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn parse_v4(b: &[u8]) -> Option<Parsed> {
    if b.len() < 20 {
        return None;
    }
    let mut p = Parsed {
        v6: false,
        proto: Proto::Ip(b[9]),
        src: u32::from_be_bytes([b[12], b[13], b[14], b[15]]) as u128,
        dst: u32::from_be_bytes([b[16], b[17], b[18], b[19]]) as u128,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        icmp: None,
    };
    let total = be16(b, 2) as usize;
    let header = ((b[0] & 0x0f) as usize) << 2;
    if b.len() < total || header < 20 || header > total {
        p.proto = Proto::Unknown;
        return Some(p);
    }
    let frag = be16(b, 6);
    let more_fragments = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    if offset != 0 {
        p.proto = if offset < MIN_FRAG_BLOCKS {
            Proto::Unknown
        } else {
            Proto::Fragment
        };
        return Some(p);
    }
    if b[9] == TSMP && more_fragments {
        p.proto = Proto::Unknown;
        return Some(p);
    }
    transport(&mut p, &b[header..total]);
    Some(p)
}

fn parse_v6(b: &[u8]) -> Option<Parsed> {
    if b.len() < 40 {
        return None;
    }
    let mut p = Parsed {
        v6: true,
        proto: Proto::Ip(b[6]),
        src: u128::from_be_bytes(b[8..24].try_into().ok()?),
        dst: u128::from_be_bytes(b[24..40].try_into().ok()?),
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        icmp: None,
    };
    let total = be16(b, 4) as usize + 40;
    if b.len() < total {
        p.proto = Proto::Unknown;
        return Some(p);
    }
    let mut start = 40;
    // The only extension header looked through is a Fragment header right after the
    // base header (what a host emits when it fragments at the source); any other
    // extension header is just a protocol number, as in Go.
    if b[6] == IPV6_FRAGMENT {
        if total < 48 {
            p.proto = Proto::Unknown;
            return Some(p);
        }
        let offset = be16(b, 42) >> 3;
        if offset != 0 {
            p.proto = if offset < MIN_FRAG_BLOCKS {
                Proto::Unknown
            } else {
                Proto::Fragment
            };
            return Some(p);
        }
        p.proto = Proto::Ip(b[40]);
        start = 48;
    }
    transport(&mut p, &b[start..total]);
    Some(p)
}

/// Reads ports, flags or ICMP type from the transport header; a header cut short
/// makes the packet Unknown.
fn transport(p: &mut Parsed, sub: &[u8]) {
    let Proto::Ip(proto) = p.proto else { return };
    let need = match proto {
        TCP => 20,
        UDP | SCTP | ICMPV4 | ICMPV6 => 8,
        IGMP => 8,
        TSMP => MIN_TSMP_SIZE,
        // Our internal "fragment" number must never come off the wire.
        0xff => usize::MAX,
        _ => 0,
    };
    if sub.len() < need {
        p.proto = Proto::Unknown;
        return;
    }
    match proto {
        TCP | UDP | SCTP => {
            p.src_port = be16(sub, 0);
            p.dst_port = be16(sub, 2);
            if proto == TCP {
                p.tcp_flags = sub[13];
            }
        }
        ICMPV4 | ICMPV6 => p.icmp = Some((sub[0], sub[1])),
        _ => {}
    }
}

#[cfg(test)]
pub(crate) mod build {
    //! Packet builders for the filter's tests.

    use std::net::IpAddr;

    /// An IP packet with `l4` as its payload (checksums left zero: the filter reads
    /// no checksum).
    pub fn ip(src: &str, dst: &str, proto: u8, l4: &[u8]) -> Vec<u8> {
        let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = 20 + l4.len();
                let mut p = vec![
                    0x45,
                    0,
                    (total >> 8) as u8,
                    total as u8,
                    0,
                    0,
                    0x40,
                    0,
                    64,
                    proto,
                    0,
                    0,
                ];
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                p.extend_from_slice(l4);
                p
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let len = l4.len();
                let mut p = vec![0x60, 0, 0, 0, (len >> 8) as u8, len as u8, proto, 64];
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                p.extend_from_slice(l4);
                p
            }
            _ => panic!("mixed families"),
        }
    }

    pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut l4 = vec![0u8; 20];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4[12] = 5 << 4;
        l4[13] = flags;
        ip(src, dst, super::TCP, &l4)
    }

    pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
        let mut l4 = vec![0u8; 12];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4[4..6].copy_from_slice(&12u16.to_be_bytes());
        ip(src, dst, super::UDP, &l4)
    }

    pub fn icmp(src: &str, dst: &str, kind: u8) -> Vec<u8> {
        let v6 = src.contains(':');
        let proto = if v6 { super::ICMPV6 } else { super::ICMPV4 };
        ip(src, dst, proto, &[kind, 0, 0, 0, 0, 1, 0, 1])
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn reads_ports_flags_and_icmp() {
        let p = Parsed::new(&tcp("100.64.0.1", "100.64.0.2", 40000, 22, 0x02)).unwrap();
        assert_eq!(p.proto, Proto::Ip(TCP));
        assert_eq!((p.src_port, p.dst_port), (40000, 22));
        assert!(p.is_tcp_syn());
        let synack = Parsed::new(&tcp("100.64.0.1", "100.64.0.2", 40000, 22, 0x12)).unwrap();
        assert!(!synack.is_tcp_syn());
        let u = Parsed::new(&udp("fd7a::1", "fd7a::2", 5353, 53)).unwrap();
        assert!(u.v6);
        assert_eq!(u.dst_ip(), "fd7a::2".parse::<IpAddr>().unwrap());
        assert!(Parsed::new(&icmp("1.2.3.4", "100.64.0.1", 0))
            .unwrap()
            .is_icmp_echo_reply());
        assert!(Parsed::new(&icmp("1.2.3.4", "100.64.0.1", 3))
            .unwrap()
            .is_icmp_error());
        assert!(Parsed::new(&icmp("::1", "fd7a::1", 2))
            .unwrap()
            .is_icmp_error());
        assert!(!Parsed::new(&icmp("::1", "fd7a::1", 128))
            .unwrap()
            .is_icmp_error());
    }

    #[test]
    fn truncated_transport_header_is_unknown() {
        let mut p = tcp("100.64.0.1", "100.64.0.2", 1, 2, 0x02);
        p.truncate(30);
        p[2..4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(Parsed::new(&p).unwrap().proto, Proto::Unknown);
        // The IP length claims more than arrived.
        let mut q = udp("100.64.0.1", "100.64.0.2", 1, 2);
        q.truncate(25);
        assert_eq!(Parsed::new(&q).unwrap().proto, Proto::Unknown);
        assert!(Parsed::new(&[0x45; 10]).is_none());
        assert!(Parsed::new(&[0x10; 40]).is_none());
        assert!(Parsed::new(&[]).is_none());
    }

    #[test]
    fn fragments() {
        let mut later = udp("100.64.0.1", "100.64.0.2", 1, 2);
        later[6..8].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(Parsed::new(&later).unwrap().proto, Proto::Fragment);
        // An offset inside where a transport header could be is refused.
        let mut sneaky = udp("100.64.0.1", "100.64.0.2", 1, 2);
        sneaky[6..8].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(Parsed::new(&sneaky).unwrap().proto, Proto::Unknown);
        // IPv6 first fragment: the ports behind the fragment header are read.
        let mut l4 = vec![UDP, 0, 0, 0, 0, 0, 0, 1];
        l4.extend_from_slice(&[0x12, 0x34, 0, 53, 0, 8, 0, 0]);
        let first = ip("fd7a::1", "fd7a::2", 44, &l4);
        let p = Parsed::new(&first).unwrap();
        assert_eq!((p.proto, p.dst_port), (Proto::Ip(UDP), 53));
    }

    #[test]
    fn multicast_and_link_local() {
        let m = Parsed::new(&udp("100.64.0.1", "224.0.0.251", 5353, 5353)).unwrap();
        assert!(m.dst_is_multicast());
        let m6 = Parsed::new(&udp("fd7a::1", "ff02::fb", 5353, 5353)).unwrap();
        assert!(m6.dst_is_multicast());
        let ll = Parsed::new(&udp("fd7a::1", "fe80::1", 1, 2)).unwrap();
        assert!(ll.dst_is_link_local());
        let meta = Parsed::new(&udp("100.64.0.1", "169.254.169.254", 1, 53)).unwrap();
        assert!(!meta.dst_is_link_local());
        let ll4 = Parsed::new(&udp("100.64.0.1", "169.254.1.1", 1, 53)).unwrap();
        assert!(ll4.dst_is_link_local());
    }
}
