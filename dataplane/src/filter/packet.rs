//! The filter's summary of a packet: the few header fields it decides on, read in
//! place through ringscale-wire's views (no copies, no allocation). The rules follow
//! Go's `net/packet.Parsed`: a packet whose transport header is cut short, or a
//! non-first fragment at an offset that could overlap a transport header, is `Unknown`
//! and gets dropped, so that no fragment trick hides a port from the filter.

use ringscale_wire::icmp::{self, IcmpHeader};
use ringscale_wire::ip::{self, ipv4, ipv6, Fragment, Ipv4Packet, Ipv6Extensions, Ipv6Packet};
use ringscale_wire::tcp::{self, TcpHeader};
use ringscale_wire::udp::{self, UdpHeader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ringscale_wire::ip::protocol::{ICMPV4, ICMPV6, IGMP, SCTP, TCP, UDP};
/// Tailscale's own message protocol (pings, rejects), always accepted.
pub const TSMP: u8 = 99;

const MIN_TSMP_SIZE: usize = 7;

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
        let (v6, src, dst) = match ip::version(pkt)? {
            4 if pkt.len() >= ipv4::HEADER_LEN => {
                let ip = Ipv4Packet::new_unchecked(pkt);
                let (s, d) = (ip.src_addr_bytes(), ip.dst_addr_bytes());
                (
                    false,
                    u32::from_be_bytes(s).into(),
                    u32::from_be_bytes(d).into(),
                )
            }
            6 if pkt.len() >= ipv6::HEADER_LEN => {
                let ip = Ipv6Packet::new_unchecked(pkt);
                let (s, d) = (ip.src_addr_bytes(), ip.dst_addr_bytes());
                (true, u128::from_be_bytes(s), u128::from_be_bytes(d))
            }
            _ => return None,
        };
        let mut p = Parsed {
            v6,
            proto: Proto::Unknown,
            src,
            dst,
            src_port: 0,
            dst_port: 0,
            tcp_flags: 0,
            icmp: None,
        };
        // Lengths that disagree with the buffer, an IPv6 fragment header cut short and
        // a later fragment that could overlap a transport header all leave Unknown.
        let Ok(t) = ip::transport(pkt, Ipv6Extensions::FragmentFirst) else {
            return Some(p);
        };
        match t.fragment {
            Fragment::Later => p.proto = Proto::Fragment,
            // A TSMP message must arrive whole (IPv4, as in Go).
            Fragment::First if !v6 && t.protocol == TSMP => {}
            Fragment::Whole | Fragment::First => {
                p.proto = Proto::Ip(t.protocol);
                p.read_transport(t.bytes(pkt));
            }
        }
        Some(p)
    }

    /// Reads ports, flags or ICMP type from the transport header; a header cut short
    /// makes the packet Unknown.
    fn read_transport(&mut self, sub: &[u8]) {
        let Proto::Ip(proto) = self.proto else { return };
        let need = match proto {
            // Go does not check TCP's data offset, only that the fixed header is there.
            TCP => tcp::HEADER_LEN,
            UDP | SCTP => udp::HEADER_LEN,
            ICMPV4 | ICMPV6 => icmp::HEADER_LEN,
            IGMP => 8,
            TSMP => MIN_TSMP_SIZE,
            // Our internal "fragment" number must never come off the wire.
            0xff => usize::MAX,
            _ => 0,
        };
        if sub.len() < need {
            self.proto = Proto::Unknown;
            return;
        }
        match proto {
            TCP => {
                let h = TcpHeader::new_unchecked(sub);
                (self.src_port, self.dst_port) = (h.src_port(), h.dst_port());
                self.tcp_flags = h.flags();
            }
            // SCTP's ports sit where UDP's do.
            UDP | SCTP => {
                let h = UdpHeader::new_unchecked(sub);
                (self.src_port, self.dst_port) = (h.src_port(), h.dst_port());
            }
            ICMPV4 | ICMPV6 => {
                let h = IcmpHeader::new_unchecked(sub);
                self.icmp = Some((h.msg_type(), h.code()));
            }
            _ => {}
        }
    }

    /// A TCP segment that opens a connection: SYN without ACK.
    pub fn is_tcp_syn(&self) -> bool {
        self.proto == Proto::Ip(TCP) && self.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN
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

    /// Every cut of a valid packet is None (no IP header) or Unknown: the length field
    /// claims more than arrived. Never a panic, never the ports of a partial header.
    #[test]
    fn every_truncation_is_none_or_unknown() {
        let mut frag6 = vec![UDP, 0, 0, 0, 0, 0, 0, 1];
        frag6.extend_from_slice(&[0x12, 0x34, 0, 53, 0, 8, 0, 0]);
        let packets = [
            tcp("100.64.0.1", "100.64.0.2", 1, 2, 0x02),
            udp("fd7a::1", "fd7a::2", 5353, 53),
            icmp("1.2.3.4", "100.64.0.1", 3),
            ip("fd7a::1", "fd7a::2", 44, &frag6),
        ];
        for p in &packets {
            assert!(matches!(Parsed::new(p).unwrap().proto, Proto::Ip(_)));
            for cut in 0..p.len() {
                if let Some(q) = Parsed::new(&p[..cut]) {
                    assert_eq!(q.proto, Proto::Unknown, "cut at {cut}");
                }
            }
        }
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
