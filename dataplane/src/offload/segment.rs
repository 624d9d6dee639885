//! TUN read path: split a GSO super-packet into the segments that go on the wire.
//!
//! What each segment gets, as `tcp_gso_segment` / `__udp_gso_segment` /
//! `inet_gso_segment` do it in the kernel:
//! * the IP and L4 headers of the super-packet, with the IPv4 total length / IPv6 payload
//!   length of the segment;
//! * IPv4: the ID of the super-packet plus the segment index, and a fresh header checksum;
//! * TCP: sequence number advanced by `gso_size` per segment; FIN and PSH only on the
//!   last segment, CWR only on the first;
//! * UDP: the UDP length of the datagram;
//! * a complete L4 checksum over the pseudo-header, header and payload.

use super::checksum::{self, finish, pseudo_header};
use super::virtio::{GsoKind, VirtioNetHdr, VNET_HDR_LEN};
use super::OffloadError;
use ringscale_wire::ip::{
    self, ipv6, protocol, Fragment, Ipv4Packet, Ipv6Extensions, Ipv6Packet, Transport,
};
use ringscale_wire::tcp::{self, TcpHeader};
use ringscale_wire::udp::{self, UdpHeader};

/// Finds the transport header of a whole, unfragmented packet whose length field
/// matches `packet.len()`. IPv6 hop-by-hop and destination options are stepped over; a
/// routing header (the pseudo-header would need the final destination) and fragments
/// are refused.
#[inline]
pub(crate) fn whole_packet_transport(packet: &[u8]) -> Result<Transport, OffloadError> {
    let t = ip::transport(packet, Ipv6Extensions::Options).map_err(|e| match e {
        ip::Error::OverlappingFragment => OffloadError::Unsupported("IP fragment"),
        e => OffloadError::Malformed(e.as_str()),
    })?;
    if t.end != packet.len() {
        return Err(OffloadError::Malformed(
            "IP length field differs from the packet length",
        ));
    }
    if t.fragment != Fragment::Whole {
        return Err(OffloadError::Unsupported("IP fragment"));
    }
    if t.v6 && t.protocol == protocol::IPV6_ROUTING {
        return Err(OffloadError::Unsupported("IPv6 routing header"));
    }
    Ok(t)
}

/// A validated super-packet (or plain packet) from the TUN, ready to be cut into
/// segments. Borrowing the packet, it holds no buffers of its own; each segment is
/// written into a buffer the caller passes.
#[derive(Clone, Debug)]
pub struct Segmenter<'a> {
    packet: &'a [u8],
    plan: Plan,
}

#[derive(Clone, Copy, Debug)]
enum Plan {
    /// `gso_type` NONE: the packet itself; `csum` is (csum_start, absolute offset of the
    /// checksum field) when NEEDS_CSUM asks us to complete it.
    Whole {
        csum: Option<(usize, usize)>,
    },
    Split(Split),
}

#[derive(Clone, Copy, Debug)]
struct Split {
    v6: bool,
    tcp: bool,
    l4_off: usize,
    /// IP + L4 header length, as parsed (not the kernel's `hdr_len`).
    hdr_len: usize,
    gso_size: usize,
    count: usize,
}

impl<'a> Segmenter<'a> {
    /// Validates what one read of an `IFF_VNET_HDR` TUN returned: the virtio_net_hdr
    /// followed by the packet.
    pub fn from_tun_read(read: &'a [u8]) -> Result<Self, OffloadError> {
        let hdr = VirtioNetHdr::parse(read)?;
        Segmenter::new(&hdr, &read[VNET_HDR_LEN..])
    }

    /// Validates `packet` (an IP packet, without the virtio_net_hdr) against `hdr`.
    pub fn new(hdr: &VirtioNetHdr, packet: &'a [u8]) -> Result<Self, OffloadError> {
        let (kind, _ecn) = hdr.gso_kind()?;
        if packet.is_empty() {
            return Err(OffloadError::Malformed("empty packet"));
        }
        if usize::from(hdr.hdr_len) > packet.len() {
            return Err(OffloadError::Malformed(
                "virtio_net_hdr hdr_len is beyond the packet",
            ));
        }
        let csum_start = usize::from(hdr.csum_start);
        let csum_offset = usize::from(hdr.csum_offset);
        if kind == GsoKind::None {
            let csum = if hdr.needs_csum() {
                let at = csum_start + csum_offset;
                if at + 2 > packet.len() {
                    return Err(OffloadError::Malformed(
                        "checksum field is beyond the packet",
                    ));
                }
                Some((csum_start, at))
            } else {
                None
            };
            return Ok(Segmenter {
                packet,
                plan: Plan::Whole { csum },
            });
        }

        let l3 = whole_packet_transport(packet)?;
        let version_ok = match kind {
            GsoKind::TcpV4 => !l3.v6,
            GsoKind::TcpV6 => l3.v6,
            _ => true,
        };
        if !version_ok {
            return Err(OffloadError::Malformed(
                "gso_type does not match the IP version",
            ));
        }
        let tcp = kind != GsoKind::UdpL4;
        let (proto, want_csum_offset) = if tcp {
            (protocol::TCP, tcp::CHECKSUM_OFFSET)
        } else {
            (protocol::UDP, udp::CHECKSUM_OFFSET)
        };
        if l3.protocol != proto {
            return Err(OffloadError::Malformed(
                "gso_type does not match the transport protocol",
            ));
        }
        if hdr.needs_csum() && (csum_start != l3.offset || csum_offset != want_csum_offset) {
            return Err(OffloadError::Malformed(
                "csum_start/csum_offset do not point at the L4 checksum",
            ));
        }
        let l4_header = if tcp {
            // l3.offset is within the packet: its length field matched.
            TcpHeader::new_checked(&packet[l3.offset..])
                .map_err(|e| match e {
                    ip::Error::Truncated => OffloadError::Malformed("truncated TCP header"),
                    _ => OffloadError::Malformed("TCP data offset"),
                })?
                .header_len()
        } else {
            udp::HEADER_LEN
        };
        let hdr_len = l3.offset + l4_header;
        if hdr_len > packet.len() {
            return Err(OffloadError::Malformed(
                "transport header is beyond the packet",
            ));
        }
        let gso_size = usize::from(hdr.gso_size);
        if gso_size == 0 {
            return Err(OffloadError::Malformed("gso_size is zero"));
        }
        let payload = packet.len() - hdr_len;
        Ok(Segmenter {
            packet,
            plan: Plan::Split(Split {
                v6: l3.v6,
                tcp,
                l4_off: l3.offset,
                hdr_len,
                gso_size,
                count: payload.div_ceil(gso_size).max(1),
            }),
        })
    }

    /// How many packets this read becomes.
    pub fn segment_count(&self) -> usize {
        match self.plan {
            Plan::Whole { .. } => 1,
            Plan::Split(s) => s.count,
        }
    }

    /// Length of segment `i` (0 if there is no such segment).
    pub fn segment_len(&self, i: usize) -> usize {
        match self.plan {
            Plan::Whole { .. } => {
                if i == 0 {
                    self.packet.len()
                } else {
                    0
                }
            }
            Plan::Split(s) => {
                if i >= s.count {
                    return 0;
                }
                let start = s.hdr_len + i * s.gso_size;
                let end = (start + s.gso_size).min(self.packet.len());
                s.hdr_len + (end - start)
            }
        }
    }

    /// The longest segment: the buffer size each segment needs.
    pub fn max_segment_len(&self) -> usize {
        self.segment_len(0)
    }

    /// Writes segment `i` (a complete IP packet) to the start of `out`; returns its length.
    pub fn write_segment(&self, i: usize, out: &mut [u8]) -> Result<usize, OffloadError> {
        let count = self.segment_count();
        if i >= count {
            return Err(OffloadError::NoSuchSegment { index: i, count });
        }
        let len = self.segment_len(i);
        let available = out.len();
        let out = out.get_mut(..len).ok_or(OffloadError::BufferTooSmall {
            needed: len,
            available,
        })?;
        match self.plan {
            Plan::Whole { csum } => {
                out.copy_from_slice(self.packet);
                if let Some((start, at)) = csum {
                    store_completed_checksum(out, start, at);
                }
            }
            Plan::Split(s) => s.write(self.packet, i, out),
        }
        Ok(len)
    }

    /// Writes every segment into `out[k][headroom..]` and its length into `lens[k]`;
    /// returns the number of segments.
    pub fn write_all<B: AsMut<[u8]>>(
        &self,
        out: &mut [B],
        headroom: usize,
        lens: &mut [usize],
    ) -> Result<usize, OffloadError> {
        let count = self.segment_count();
        let available = out.len().min(lens.len());
        if count > available {
            return Err(OffloadError::TooManyOutputs {
                needed: count,
                available,
            });
        }
        for (i, (buf, len)) in out.iter_mut().zip(lens.iter_mut()).take(count).enumerate() {
            let buf = buf.as_mut();
            let available = buf.len();
            let dst = buf
                .get_mut(headroom..)
                .ok_or(OffloadError::BufferTooSmall {
                    needed: headroom + self.segment_len(i),
                    available,
                })?;
            *len = self.write_segment(i, dst)?;
        }
        Ok(count)
    }
}

impl Split {
    /// `out` is exactly segment `i`'s length.
    fn write(&self, packet: &[u8], i: usize, out: &mut [u8]) {
        let h = self.hdr_len;
        let l4 = self.l4_off;
        let seg_len = out.len();
        let start = h + i * self.gso_size;
        out[..h].copy_from_slice(&packet[..h]);
        out[h..].copy_from_slice(&packet[start..start + (seg_len - h)]);

        let (ip_header, l4_bytes) = out.split_at_mut(l4);
        if self.v6 {
            Ipv6Packet::new_unchecked(ip_header)
                .set_payload_len((seg_len - ipv6::HEADER_LEN) as u16);
        } else {
            let ident = Ipv4Packet::new_unchecked(packet).ident();
            let mut ip = Ipv4Packet::new_unchecked(&mut *ip_header);
            ip.set_total_len(seg_len as u16);
            ip.set_ident(ident.wrapping_add(i as u16));
            let c = checksum::ipv4_header(ip_header);
            Ipv4Packet::new_unchecked(ip_header).set_checksum(c);
        }

        let l4_len = l4_bytes.len();
        let (proto, csum_at) = if self.tcp {
            let seq = TcpHeader::new_unchecked(&packet[l4..]).seq_number();
            let mut tcp = TcpHeader::new_unchecked(&mut *l4_bytes);
            tcp.set_seq_number(seq.wrapping_add((i * self.gso_size) as u32));
            let mut flags = tcp.flags();
            if i + 1 < self.count {
                flags &= !(tcp::FIN | tcp::PSH);
            }
            if i > 0 {
                flags &= !tcp::CWR;
            }
            tcp.set_flags(flags);
            tcp.set_checksum(0);
            (protocol::TCP, tcp::CHECKSUM_OFFSET)
        } else {
            let mut udp = UdpHeader::new_unchecked(&mut *l4_bytes);
            udp.set_len(l4_len as u16);
            udp.set_checksum(0);
            (protocol::UDP, udp::CHECKSUM_OFFSET)
        };
        let s = checksum::sum(l4_bytes, pseudo_header(packet, self.v6, proto, l4_len));
        // A computed UDP checksum of zero is sent as all ones (zero means "none").
        l4_bytes[csum_at..csum_at + 2].copy_from_slice(&nonzero(finish(s)).to_be_bytes());
    }
}

/// 0 and 0xffff are the same one's-complement value; 0 would mean "no checksum" in UDP
/// over IPv4, so the kernel stores 0xffff (CSUM_MANGLED_0) for either protocol.
fn nonzero(c: u16) -> u16 {
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// Completes a CHECKSUM_PARTIAL checksum: the field at `at` holds the pseudo-header sum;
/// sum everything from `start` (field included) and store the result there, as the
/// kernel's `skb_checksum_help` does.
fn store_completed_checksum(pkt: &mut [u8], start: usize, at: usize) {
    let c = nonzero(finish(checksum::sum(&pkt[start..], 0)));
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// In-place version of the `gso_type` NONE case: completes the checksum of `packet` if
/// `hdr` has NEEDS_CSUM; does nothing otherwise. Refuses GSO headers (those need
/// [`Segmenter`]) and offsets beyond the packet.
pub fn complete_checksum(hdr: &VirtioNetHdr, packet: &mut [u8]) -> Result<(), OffloadError> {
    if hdr.gso_kind()?.0 != GsoKind::None {
        return Err(OffloadError::Unsupported("GSO packet must be segmented"));
    }
    if !hdr.needs_csum() {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > packet.len() {
        return Err(OffloadError::Malformed(
            "checksum field is beyond the packet",
        ));
    }
    store_completed_checksum(packet, start, at);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::testpkt::*;

    /// Segments `read` into fresh buffers.
    fn split(read: &[u8]) -> Vec<Vec<u8>> {
        let seg = Segmenter::from_tun_read(read).unwrap();
        let mut bufs = vec![vec![0u8; seg.max_segment_len() + 7]; seg.segment_count()];
        let mut lens = vec![0; bufs.len()];
        let n = seg.write_all(&mut bufs, 7, &mut lens).unwrap();
        assert_eq!(n, seg.segment_count());
        bufs.iter()
            .zip(&lens)
            .map(|(b, &l)| b[7..7 + l].to_vec())
            .collect()
    }

    /// Everything a receiver would check on the segments of a TCP super-packet.
    fn check_tcp_segments(segs: &[Vec<u8>], ip: &IpSpec, t: &TcpSpec, payload: &[u8], gso: usize) {
        assert_eq!(segs.len(), payload.len().div_ceil(gso));
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let v = View::new(s);
            let last = i + 1 == segs.len();
            assert_eq!(v.ip_len_field(), s.len(), "segment {i} IP length");
            assert!(v.ipv4_header_ok(), "segment {i} IPv4 header checksum");
            assert!(v.l4_checksum_ok(), "segment {i} TCP checksum");
            if !ip.v6 {
                assert_eq!(
                    v.ipv4_id(),
                    ip.id.wrapping_add(i as u16),
                    "segment {i} IPv4 ID"
                );
                assert_eq!(s[8], ip.ttl);
            } else {
                assert_eq!(
                    s[..4],
                    tcp_packet(ip, t, b"")[..4],
                    "traffic class and flow label kept"
                );
            }
            assert_eq!(
                v.seq(),
                t.seq.wrapping_add((i * gso) as u32),
                "segment {i} seq"
            );
            let mut want_flags = t.flags;
            if !last {
                want_flags &= !(FIN | PSH);
            }
            if i > 0 {
                want_flags &= !CWR;
            }
            assert_eq!(v.tcp_flags(), want_flags, "segment {i} flags");
            assert_eq!(
                &s[v.l4 + 20..v.l4 + v.tcp_header_len()],
                &t.options[..],
                "options copied"
            );
            assert_eq!(s[v.l4 + 8..v.l4 + 12], t.ack.to_be_bytes());
            assert_eq!(s[v.l4 + 14..v.l4 + 16], t.window.to_be_bytes());
            if !last {
                assert_eq!(v.payload().len(), gso);
            }
            joined.extend_from_slice(v.payload());
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn tcp_v4_with_timestamps_odd_tail_psh_fin_cwr() {
        let mut rng = Rng::new(1);
        let payload = rng.bytes(10_000);
        let ip = IpSpec::v4();
        let mut t = TcpSpec::new(0xffff_f000); // sequence numbers wrap inside the packet
        t.flags = ACK | PSH | FIN | CWR;
        let read = tso_read(&ip, &t, &payload, 1188, true);
        let segs = split(&read);
        check_tcp_segments(&segs, &ip, &t, &payload, 1188);
        assert_eq!(segs.last().unwrap().len(), 20 + 32 + 10_000 % 1188);
    }

    #[test]
    fn tcp_v6_with_timestamps() {
        let mut rng = Rng::new(2);
        let payload = rng.bytes(65535 - 40 - 32);
        let ip = IpSpec::v6();
        let mut t = TcpSpec::new(7);
        t.flags = ACK | PSH;
        let read = tso_read(&ip, &t, &payload, 1208, false);
        let segs = split(&read);
        check_tcp_segments(&segs, &ip, &t, &payload, 1208);
        assert!(segs.iter().all(|s| s.len() <= 1280));
    }

    #[test]
    fn tcp_v4_ip_id_wraps_and_ip_options_are_kept() {
        let payload = Rng::new(3).bytes(5000);
        let mut ip = IpSpec::v4();
        ip.id = 0xfffe;
        ip.options = vec![0x94, 4, 0, 0]; // Router Alert
        let mut t = TcpSpec::new(1);
        t.options = vec![];
        let read = tso_read(&ip, &t, &payload, 1000, false);
        let segs = split(&read);
        check_tcp_segments(&segs, &ip, &t, &payload, 1000);
        assert_eq!(View::new(&segs[2]).ipv4_id(), 0);
        assert!(segs.iter().all(|s| s[20..24] == [0x94, 4, 0, 0]));
    }

    #[test]
    fn exact_multiple_and_single_segment() {
        let ip = IpSpec::v4();
        let mut t = TcpSpec::new(100);
        t.flags = ACK | FIN;
        let payload = Rng::new(4).bytes(3 * 500);
        let segs = split(&tso_read(&ip, &t, &payload, 500, false));
        check_tcp_segments(&segs, &ip, &t, &payload, 500);
        let segs = split(&tso_read(&ip, &t, &payload[..400], 500, false));
        check_tcp_segments(&segs, &ip, &t, &payload[..400], 500);
    }

    #[test]
    fn udp_uso_v4_and_v6() {
        for ip in [IpSpec::v4(), IpSpec::v6()] {
            let payload = Rng::new(5).bytes(4000);
            let read = uso_read(&ip, 4242, 53, &payload, 1200);
            let segs = split(&read);
            assert_eq!(segs.len(), 4);
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                let v = View::new(s);
                assert_eq!(v.ip_len_field(), s.len());
                assert!(v.ipv4_header_ok());
                assert!(v.l4_checksum_ok(), "v6={} datagram {i}", ip.v6);
                assert_eq!(v.udp_len_field(), s.len() - v.l4);
                assert_eq!(s[v.l4..v.l4 + 4], [0x10, 0x92, 0, 53]);
                if !ip.v6 {
                    assert_eq!(v.ipv4_id(), ip.id + i as u16);
                }
                assert_eq!(v.payload().len(), if i < 3 { 1200 } else { 400 });
                joined.extend_from_slice(v.payload());
            }
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn needs_csum_without_gso_completes_the_checksum() {
        for ip in [IpSpec::v4(), IpSpec::v6()] {
            let l4 = if ip.v6 { 40 } else { 20 };
            let mut tcp = tcp_packet(&ip, &TcpSpec::new(9), b"hello, partial checksum!");
            make_partial(&mut tcp, &ip, 6, l4, l4 + 16);
            let mut udp = udp_packet(&ip, 1, 2, b"odd length");
            make_partial(&mut udp, &ip, 17, l4, l4 + 6);
            for (pkt, off) in [(tcp, 16u16), (udp, 6)] {
                assert!(
                    !View::new(&pkt).l4_checksum_ok(),
                    "test packet starts partial"
                );
                let hdr = VirtioNetHdr {
                    flags: crate::offload::virtio::F_NEEDS_CSUM,
                    csum_start: l4 as u16,
                    csum_offset: off,
                    ..Default::default()
                };
                let read = [&hdr.to_bytes()[..], &pkt].concat();
                let segs = split(&read);
                assert_eq!(segs.len(), 1);
                assert!(View::new(&segs[0]).l4_checksum_ok());
                let mut in_place = pkt.clone();
                complete_checksum(&hdr, &mut in_place).unwrap();
                assert_eq!(in_place, segs[0]);
            }
        }
    }

    #[test]
    fn plain_packet_passes_unchanged() {
        let pkt = udp_packet(&IpSpec::v4(), 1, 2, b"as is");
        let read = [&[0u8; 10][..], &pkt].concat();
        assert_eq!(split(&read), vec![pkt.clone()]);
        let mut same = pkt.clone();
        complete_checksum(&VirtioNetHdr::default(), &mut same).unwrap();
        assert_eq!(same, pkt);
    }

    fn tso_sample() -> Vec<u8> {
        tso_read(&IpSpec::v4(), &TcpSpec::new(1), &[7u8; 3000], 1000, false)
    }

    fn ne16(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }

    #[test]
    fn malformed_reads_are_errors() {
        let good = tso_sample();
        assert!(Segmenter::from_tun_read(&good).is_ok());
        let err = |r: &[u8]| Segmenter::from_tun_read(r).unwrap_err();

        assert!(matches!(err(&good[..9]), OffloadError::Malformed(_)));
        assert!(
            matches!(err(&good[..10]), OffloadError::Malformed(_)),
            "header only"
        );
        let mut r = good.clone();
        r[2..4].copy_from_slice(&ne16(5000));
        assert!(
            matches!(err(&r), OffloadError::Malformed(_)),
            "hdr_len beyond packet"
        );
        let mut r = good.clone();
        r[4..6].copy_from_slice(&ne16(0));
        assert!(matches!(err(&r), OffloadError::Malformed(_)), "gso_size 0");
        let mut r = good.clone();
        r[1] = 4; // TCPV6 on an IPv4 packet
        assert!(matches!(err(&r), OffloadError::Malformed(_)));
        let mut r = good.clone();
        r[1] = 5; // UDP_L4 on a TCP packet
        assert!(matches!(err(&r), OffloadError::Malformed(_)));
        let mut r = good.clone();
        r[1] = 3; // UFO
        assert!(matches!(err(&r), OffloadError::Unsupported(_)));
        let mut r = good.clone();
        r[6..8].copy_from_slice(&ne16(24));
        assert!(
            matches!(err(&r), OffloadError::Malformed(_)),
            "csum_start not at TCP"
        );
        let mut r = good.clone();
        r[8..10].copy_from_slice(&ne16(6));
        assert!(
            matches!(err(&r), OffloadError::Malformed(_)),
            "csum_offset not TCP's"
        );
        let r = &good[..good.len() - 1];
        assert!(
            matches!(err(r), OffloadError::Malformed(_)),
            "IP total length disagrees"
        );
        let mut r = good.clone();
        r[10 + 20 + 12] = 0x40; // TCP data offset 4
        assert!(matches!(err(&r), OffloadError::Malformed(_)));
        // A 60-byte TCP header claimed where only 32 bytes of header and 10 of data exist.
        let mut s = tso_read(&IpSpec::v4(), &TcpSpec::new(1), &[1u8; 10], 1000, false);
        s[10 + 20 + 12] = 0xf0;
        assert!(matches!(err(&s), OffloadError::Malformed(_)));
        let mut r = good.clone();
        r[10 + 6] |= 0x20; // MF
        assert!(matches!(err(&r), OffloadError::Unsupported(_)));
        let mut r = good.clone();
        r[10] = 0x65; // IP version 6 with an IPv4 body
        assert!(matches!(err(&r), OffloadError::Malformed(_)));

        // NEEDS_CSUM without GSO: the checksum field must be inside the packet.
        let pkt = udp_packet(&IpSpec::v4(), 1, 2, b"ab");
        let hdr = VirtioNetHdr {
            flags: 1,
            csum_start: 20,
            csum_offset: 9,
            ..Default::default()
        };
        assert!(Segmenter::new(&hdr, &pkt).is_err());
        assert!(complete_checksum(&hdr, &mut pkt.clone()).is_err());
        let gso = VirtioNetHdr { gso_type: 1, ..hdr };
        assert!(complete_checksum(&gso, &mut pkt.clone()).is_err());
    }

    #[test]
    fn short_output_buffers_are_errors() {
        let good = tso_sample();
        let seg = Segmenter::from_tun_read(&good).unwrap();
        assert_eq!(seg.segment_count(), 3);
        let mut small = [0u8; 1000];
        assert!(matches!(
            seg.write_segment(0, &mut small),
            Err(OffloadError::BufferTooSmall { .. })
        ));
        let mut big = [0u8; 2000];
        assert!(matches!(
            seg.write_segment(3, &mut big),
            Err(OffloadError::NoSuchSegment { .. })
        ));
        let mut bufs = vec![vec![0u8; 2000]; 2];
        let mut lens = [0; 3];
        assert!(matches!(
            seg.write_all(&mut bufs, 0, &mut lens),
            Err(OffloadError::TooManyOutputs { .. })
        ));
        let mut bufs = vec![vec![0u8; 1060]; 3];
        assert!(matches!(
            seg.write_all(&mut bufs, 16, &mut lens),
            Err(OffloadError::BufferTooSmall { .. })
        ));
        assert!(seg.write_all(&mut bufs, 0, &mut lens).is_ok());
    }

    #[test]
    fn random_corruption_never_panics() {
        let mut rng = Rng::new(11);
        let samples = [
            tso_sample(),
            tso_read(&IpSpec::v6(), &TcpSpec::new(5), &[3u8; 2500], 700, true),
            uso_read(&IpSpec::v4(), 1, 2, &[9u8; 2000], 600),
        ];
        let mut out = vec![0u8; 70_000];
        for _ in 0..20_000 {
            let mut r = samples[rng.below(samples.len())].clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(r.len().min(80));
                r[at] = rng.byte();
            }
            r.truncate(rng.below(r.len() + 1).max(r.len() - rng.below(3)));
            if let Ok(seg) = Segmenter::from_tun_read(&r) {
                for i in 0..seg.segment_count().min(8) {
                    let n = seg.write_segment(i, &mut out).unwrap();
                    assert_eq!(n, seg.segment_len(i));
                }
            }
        }
    }

    /// (v6, transport offset, protocol) of a whole packet.
    fn l3(pkt: &[u8]) -> Result<(bool, usize, u8), OffloadError> {
        whole_packet_transport(pkt).map(|t| (t.v6, t.offset, t.protocol))
    }

    #[test]
    fn finds_transport_header() {
        let p4 = tcp_packet(&IpSpec::v4(), &TcpSpec::new(1), b"abc");
        assert_eq!(l3(&p4).unwrap(), (false, 20, 6));
        let mut ip = IpSpec::v4();
        ip.options = vec![1, 1, 1, 0];
        let p4o = udp_packet(&ip, 1, 2, b"x");
        assert_eq!(l3(&p4o).unwrap(), (false, 24, 17));
        let p6 = udp_packet(&IpSpec::v6(), 1, 2, b"xyz");
        assert_eq!(l3(&p6).unwrap(), (true, 40, 17));
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
        assert_eq!(l3(&q).unwrap(), (true, 48, 17));
        q[40] = 43; // hop-by-hop followed by routing header
        assert!(matches!(l3(&q), Err(OffloadError::Unsupported(_))));
        // Hop-by-hop followed by a fragment header (first of several).
        let mut f = q[..48].to_vec();
        f[40] = 44;
        f.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 9]);
        f.extend_from_slice(&q[48..]);
        let plen = (f.len() - 40) as u16;
        f[4..6].copy_from_slice(&plen.to_be_bytes());
        assert!(matches!(l3(&f), Err(OffloadError::Unsupported(_))));
        q[40] = 60; // destination options claiming to run past the end
        q[49] = 200;
        q[48] = 60;
        assert!(matches!(l3(&q), Err(OffloadError::Malformed(_))));
    }

    #[test]
    fn rejects_inconsistent_headers() {
        let p4 = tcp_packet(&IpSpec::v4(), &TcpSpec::new(1), b"abc");
        assert!(
            l3(&p4[..p4.len() - 1]).is_err(),
            "total length beyond packet"
        );
        let mut padded = p4.clone();
        padded.push(0);
        assert!(l3(&padded).is_err(), "total length short of the packet");
        let mut bad = p4.clone();
        bad[0] = 0x44;
        assert!(l3(&bad).is_err(), "IHL below 5");
        bad[0] = 0x4f;
        assert!(l3(&bad).is_err(), "IHL beyond packet");
        let mut frag = p4.clone();
        frag[6] = 0x20; // MF
        assert!(matches!(l3(&frag), Err(OffloadError::Unsupported(_))));
        frag[6] = 0;
        frag[7] = 1; // offset 8
        assert!(matches!(l3(&frag), Err(OffloadError::Unsupported(_))));
        frag[7] = 100; // offset 800
        assert!(matches!(l3(&frag), Err(OffloadError::Unsupported(_))));
        let mut v5 = p4.clone();
        v5[0] = 0x55;
        assert!(l3(&v5).is_err());
        assert!(l3(&[]).is_err());
        assert!(l3(&p4[..19]).is_err());
        let p6 = udp_packet(&IpSpec::v6(), 1, 2, b"xyz");
        assert!(l3(&p6[..39]).is_err());
        let mut p6f = p6.clone();
        p6f[6] = 44;
        assert!(l3(&p6f).is_err());
    }

    /// Every cut of a super-packet is refused (never a panic), whatever the header says.
    #[test]
    fn every_truncated_read_is_refused() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        for ip in [IpSpec::v4(), IpSpec::v6()] {
            let tso = tso_read(&ip, &TcpSpec::new(1), &payload, 1000, false);
            let uso = uso_read(&ip, 1, 2, &payload, 1000);
            for read in [tso, uso] {
                assert!(Segmenter::from_tun_read(&read).is_ok());
                for cut in 0..read.len() {
                    assert!(
                        Segmenter::from_tun_read(&read[..cut]).is_err(),
                        "cut at {cut}"
                    );
                }
            }
        }
    }
}
