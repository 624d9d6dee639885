//! The few IPv4/IPv6 header facts offload needs, read from byte slices.

use super::OffloadError;

pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;

pub(crate) const IPV4_MIN_HEADER: usize = 20;
pub(crate) const IPV6_HEADER: usize = 40;

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
pub(crate) fn put_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put_be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Where the transport header of an IP packet starts and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct L3 {
    pub v6: bool,
    /// Offset of the L4 header (IPv4 header length, or 40 + IPv6 extension headers).
    pub l4_off: usize,
    pub proto: u8,
}

/// Parses the IP header of a whole, unfragmented packet and checks that its length field
/// matches `pkt.len()`. IPv6 hop-by-hop and destination options are stepped over; a
/// routing header (the pseudo-header would need the final destination) and fragments are
/// refused.
pub(crate) fn parse_l3(pkt: &[u8]) -> Result<L3, OffloadError> {
    let first = *pkt
        .first()
        .ok_or(OffloadError::Malformed("empty IP packet"))?;
    match first >> 4 {
        4 => {
            if pkt.len() < IPV4_MIN_HEADER {
                return Err(OffloadError::Malformed("shorter than an IPv4 header"));
            }
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < IPV4_MIN_HEADER || ihl > pkt.len() {
                return Err(OffloadError::Malformed("IPv4 header length"));
            }
            if usize::from(be16(pkt, 2)) != pkt.len() {
                return Err(OffloadError::Malformed(
                    "IPv4 total length differs from the packet length",
                ));
            }
            if be16(pkt, 6) & 0x3fff != 0 {
                return Err(OffloadError::Unsupported("IPv4 fragment"));
            }
            Ok(L3 {
                v6: false,
                l4_off: ihl,
                proto: pkt[9],
            })
        }
        6 => {
            if pkt.len() < IPV6_HEADER {
                return Err(OffloadError::Malformed("shorter than an IPv6 header"));
            }
            if usize::from(be16(pkt, 4)) + IPV6_HEADER != pkt.len() {
                return Err(OffloadError::Malformed(
                    "IPv6 payload length differs from the packet length",
                ));
            }
            let mut next = pkt[6];
            let mut off = IPV6_HEADER;
            loop {
                match next {
                    IPV6_HOP_BY_HOP | IPV6_DEST_OPTS => {
                        if off + 8 > pkt.len() {
                            return Err(OffloadError::Malformed("truncated IPv6 extension header"));
                        }
                        next = pkt[off];
                        off += (usize::from(pkt[off + 1]) + 1) * 8;
                    }
                    IPV6_ROUTING => return Err(OffloadError::Unsupported("IPv6 routing header")),
                    IPV6_FRAGMENT => return Err(OffloadError::Unsupported("IPv6 fragment")),
                    proto => {
                        if off > pkt.len() {
                            return Err(OffloadError::Malformed("truncated IPv6 extension header"));
                        }
                        return Ok(L3 {
                            v6: true,
                            l4_off: off,
                            proto,
                        });
                    }
                }
            }
        }
        _ => Err(OffloadError::Malformed("IP version is neither 4 nor 6")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::testpkt::*;

    #[test]
    fn finds_transport_header() {
        let p4 = tcp_packet(&IpSpec::v4(), &TcpSpec::new(1), b"abc");
        assert_eq!(
            parse_l3(&p4).unwrap(),
            L3 {
                v6: false,
                l4_off: 20,
                proto: 6
            }
        );
        let mut ip = IpSpec::v4();
        ip.options = vec![1, 1, 1, 0];
        let p4o = udp_packet(&ip, 1, 2, b"x");
        assert_eq!(
            parse_l3(&p4o).unwrap(),
            L3 {
                v6: false,
                l4_off: 24,
                proto: 17
            }
        );
        let p6 = udp_packet(&IpSpec::v6(), 1, 2, b"xyz");
        assert_eq!(
            parse_l3(&p6).unwrap(),
            L3 {
                v6: true,
                l4_off: 40,
                proto: 17
            }
        );
    }

    #[test]
    fn steps_over_ipv6_options_headers() {
        let p6 = udp_packet(&IpSpec::v6(), 1, 2, b"xyz");
        // Insert an 8-byte hop-by-hop header (PadN) between the fixed header and UDP.
        let mut q = p6[..40].to_vec();
        q[6] = 0;
        q.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        q.extend_from_slice(&p6[40..]);
        let plen = (q.len() - 40) as u16;
        q[4..6].copy_from_slice(&plen.to_be_bytes());
        assert_eq!(
            parse_l3(&q).unwrap(),
            L3 {
                v6: true,
                l4_off: 48,
                proto: 17
            }
        );
        q[40] = 43; // hop-by-hop followed by routing header
        assert!(matches!(parse_l3(&q), Err(OffloadError::Unsupported(_))));
        q[40] = 60; // destination options claiming to run past the end
        q[49] = 200;
        q[48] = 60;
        assert!(parse_l3(&q).is_err());
    }

    #[test]
    fn rejects_inconsistent_headers() {
        let p4 = tcp_packet(&IpSpec::v4(), &TcpSpec::new(1), b"abc");
        assert!(
            parse_l3(&p4[..p4.len() - 1]).is_err(),
            "total length beyond packet"
        );
        let mut bad = p4.clone();
        bad[0] = 0x44;
        assert!(parse_l3(&bad).is_err(), "IHL below 5");
        bad[0] = 0x4f;
        assert!(parse_l3(&bad).is_err(), "IHL beyond packet");
        let mut frag = p4.clone();
        frag[6] = 0x20; // MF
        assert!(parse_l3(&frag).is_err());
        frag[6] = 0;
        frag[7] = 1; // offset 8
        assert!(parse_l3(&frag).is_err());
        let mut v5 = p4.clone();
        v5[0] = 0x55;
        assert!(parse_l3(&v5).is_err());
        assert!(parse_l3(&[]).is_err());
        assert!(parse_l3(&p4[..19]).is_err());
        let p6 = udp_packet(&IpSpec::v6(), 1, 2, b"xyz");
        assert!(parse_l3(&p6[..39]).is_err());
        let mut p6f = p6.clone();
        p6f[6] = 44;
        assert!(parse_l3(&p6f).is_err());
    }
}
