//! IPv4 and IPv6 headers as views over byte slices, and [`transport`], which finds the
//! transport header behind them.
//!
//! A view wraps any `T: AsRef<[u8]>` (`&[u8]`, `&mut [u8]`, `Vec<u8>`) without copying.
//! `new_checked` verifies once that every fixed field and the length the header claims
//! lie inside the buffer, so the accessors after it cannot panic; `new_unchecked` skips
//! that for callers that have checked already (an accessor then panics on a buffer
//! shorter than its field, like slice indexing). Accessors are `#[inline]`: they are
//! single loads on the data plane's per-packet path and take the caller's
//! optimisation level (this crate is built for size, the data plane for speed).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// IP protocol numbers (the IPv4 protocol field, the IPv6 next header field).
pub mod protocol {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMPV4: u8 = 1;
    pub const IGMP: u8 = 2;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6_ROUTING: u8 = 43;
    pub const IPV6_FRAGMENT: u8 = 44;
    pub const ICMPV6: u8 = 58;
    pub const IPV6_DEST_OPTS: u8 = 60;
    pub const SCTP: u8 = 132;
}

/// Why bytes are not the header they should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the fixed header.
    Truncated,
    /// The version nibble is not the one the view reads.
    Version,
    /// The header length field is below the minimum or beyond the length the header
    /// gives for the whole packet (IPv4 IHL, TCP data offset).
    HeaderLength,
    /// The packet length field claims more bytes than the buffer holds.
    LengthField,
    /// An IPv6 extension header runs past the end of the payload.
    ExtensionHeader,
    /// A non-first fragment at an offset where it could overwrite part of a transport
    /// header (RFC 1858); no filter can trust the first fragment's ports then.
    OverlappingFragment,
}

impl Error {
    pub fn as_str(self) -> &'static str {
        match self {
            Error::Truncated => "shorter than its fixed header",
            Error::Version => "wrong IP version",
            Error::HeaderLength => "header length field",
            Error::LengthField => "length field beyond the buffer",
            Error::ExtensionHeader => "truncated IPv6 extension header",
            Error::OverlappingFragment => "fragment overlapping a transport header",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Error {}

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

/// Fragment offsets (in bytes) below this could overlap a transport header: the largest
/// IPv4 header (60) plus a TCP header (20), RFC 1858's bound as Go's net/packet uses it.
pub const MIN_LATER_FRAGMENT_OFFSET: usize = 60 + 20;

/// The IP version of a packet, from its first nibble.
#[inline]
pub fn version(packet: &[u8]) -> Option<u8> {
    packet.first().map(|b| b >> 4)
}

/// An IPv4 header (RFC 791) at the start of `buffer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

pub mod ipv4 {
    /// The fixed header, without options.
    pub const HEADER_LEN: usize = 20;
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// A view without checks; accessors panic if `buffer` is shorter than their field.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// A view of a buffer holding a whole IPv4 header: version 4, IHL at least 5, IHL
    /// within the total length, the total length within the buffer (bytes after it,
    /// such as link padding, are allowed).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Ipv4Packet { buffer };
        packet.check()?;
        Ok(packet)
    }

    #[inline]
    fn check(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < ipv4::HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::Version);
        }
        let total = self.total_len();
        if total > b.len() {
            return Err(Error::LengthField);
        }
        let header = self.header_len();
        if header < ipv4::HEADER_LEN || header > total {
            return Err(Error::HeaderLength);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// IHL in bytes (options included).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[0] & 0x0f) * 4
    }

    /// DSCP and ECN.
    #[inline]
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// The total length field: header and payload, in bytes.
    #[inline]
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), 2))
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.buffer.as_ref()[6] & 0x40 != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        self.buffer.as_ref()[6] & 0x20 != 0
    }

    /// The three flag bits (reserved, DF, MF), in the low bits.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[6] >> 5
    }

    /// Where this fragment's data lies in the datagram, in bytes.
    #[inline]
    pub fn frag_offset(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), 6) & 0x1fff) * 8
    }

    /// Neither a later fragment nor one with more to follow.
    #[inline]
    pub fn is_unfragmented(&self) -> bool {
        be16(self.buffer.as_ref(), 6) & 0x3fff == 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[8]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[9]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 10)
    }

    #[inline]
    pub fn src_addr_bytes(&self) -> [u8; 4] {
        self.buffer.as_ref()[12..16].try_into().unwrap()
    }

    #[inline]
    pub fn dst_addr_bytes(&self) -> [u8; 4] {
        self.buffer.as_ref()[16..20].try_into().unwrap()
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src_addr_bytes())
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst_addr_bytes())
    }

    /// The bytes from the end of the header to the total length (checked views only).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        put_be16(self.buffer.as_mut(), 2, len)
    }

    #[inline]
    pub fn set_ident(&mut self, ident: u16) {
        put_be16(self.buffer.as_mut(), 4, ident)
    }

    #[inline]
    pub fn set_checksum(&mut self, checksum: u16) {
        put_be16(self.buffer.as_mut(), 10, checksum)
    }
}

/// An IPv6 fixed header (RFC 8200) at the start of `buffer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

pub mod ipv6 {
    /// The fixed header; extension headers follow it inside the payload.
    pub const HEADER_LEN: usize = 40;
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// A view without checks; accessors panic if `buffer` is shorter than their field.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// A view of a buffer holding the fixed header (version 6) and the payload length it
    /// gives (bytes after it are allowed).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Ipv6Packet { buffer };
        let b = packet.buffer.as_ref();
        if b.len() < ipv6::HEADER_LEN {
            return Err(Error::Truncated);
        }
        if packet.version() != 6 {
            return Err(Error::Version);
        }
        if packet.total_len() > b.len() {
            return Err(Error::LengthField);
        }
        Ok(packet)
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Version, traffic class and flow label: the first 32-bit word.
    #[inline]
    pub fn version_class_flow(&self) -> u32 {
        be32(self.buffer.as_ref(), 0)
    }

    #[inline]
    pub fn payload_len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), 4))
    }

    /// Fixed header plus payload length: where the packet ends.
    #[inline]
    pub fn total_len(&self) -> usize {
        ipv6::HEADER_LEN + self.payload_len()
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[6]
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[7]
    }

    #[inline]
    pub fn src_addr_bytes(&self) -> [u8; 16] {
        self.buffer.as_ref()[8..24].try_into().unwrap()
    }

    #[inline]
    pub fn dst_addr_bytes(&self) -> [u8; 16] {
        self.buffer.as_ref()[24..40].try_into().unwrap()
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.src_addr_bytes())
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.dst_addr_bytes())
    }

    /// Extension headers and upper-layer data (checked views only).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[ipv6::HEADER_LEN..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    #[inline]
    pub fn set_payload_len(&mut self, len: u16) {
        put_be16(self.buffer.as_mut(), 4, len)
    }
}

/// Which IPv6 extension headers [`transport`] steps over. The two users want different
/// things, and each choice is part of their contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Extensions {
    /// Only a Fragment header directly after the fixed header (what a host emits when
    /// it fragments at the source). Any other extension header is reported as the
    /// transport protocol, so a rule for that protocol number decides. This is Go's
    /// `net/packet.Parsed`, which the packet filter follows.
    FragmentFirst,
    /// Hop-by-hop and destination options headers, and a Fragment header among them.
    /// Stops at anything else, a routing header included (reported as protocol 43: a
    /// checksum over it would need the final destination from inside it).
    Options,
}

/// Whether a packet is a fragment, and which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    Whole,
    /// The first fragment (offset 0) of several, or an IPv6 fragment header at offset 0:
    /// the transport header is here, the rest of the datagram is not.
    First,
    /// A later fragment, at an offset of at least [`MIN_LATER_FRAGMENT_OFFSET`]: no
    /// transport header here.
    Later,
}

/// Where the transport header of an IP packet is, as the IP layer describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    pub v6: bool,
    /// The protocol of the header at `offset` (after the extension headers stepped over).
    pub protocol: u8,
    /// Offset of the transport header (for a later fragment: of its data).
    pub offset: usize,
    /// End of the IP packet by its length field; bytes beyond are not part of it.
    pub end: usize,
    pub fragment: Fragment,
}

impl Transport {
    /// The transport header and its data: `packet[offset..end]`.
    #[inline]
    pub fn bytes<'p>(&self, packet: &'p [u8]) -> &'p [u8] {
        &packet[self.offset..self.end]
    }
}

/// Finds the transport header of an IPv4 or IPv6 packet. Errors: a header cut short or
/// inconsistent (see [`Ipv4Packet::new_checked`], [`Ipv6Packet::new_checked`]), an
/// extension header running past the payload, a version other than 4 or 6, and a
/// later fragment that could overlap a transport header
/// ([`Error::OverlappingFragment`]). Does not look at the transport header itself.
#[inline]
pub fn transport(packet: &[u8], extensions: Ipv6Extensions) -> Result<Transport, Error> {
    match version(packet) {
        Some(4) => transport_v4(packet),
        Some(6) => transport_v6(packet, extensions),
        Some(_) => Err(Error::Version),
        None => Err(Error::Truncated),
    }
}

#[inline]
fn fragment(offset: usize, more: bool) -> Result<Fragment, Error> {
    match (offset, more) {
        (0, false) => Ok(Fragment::Whole),
        (0, true) => Ok(Fragment::First),
        (o, _) if o < MIN_LATER_FRAGMENT_OFFSET => Err(Error::OverlappingFragment),
        _ => Ok(Fragment::Later),
    }
}

#[inline]
fn transport_v4(packet: &[u8]) -> Result<Transport, Error> {
    let ip = Ipv4Packet::new_checked(packet)?;
    Ok(Transport {
        v6: false,
        protocol: ip.protocol(),
        offset: ip.header_len(),
        end: ip.total_len(),
        fragment: fragment(ip.frag_offset(), ip.more_frags())?,
    })
}

fn transport_v6(packet: &[u8], extensions: Ipv6Extensions) -> Result<Transport, Error> {
    use protocol::{HOP_BY_HOP, IPV6_DEST_OPTS, IPV6_FRAGMENT};
    let ip = Ipv6Packet::new_checked(packet)?;
    let end = ip.total_len();
    let mut t = Transport {
        v6: true,
        protocol: ip.next_header(),
        offset: ipv6::HEADER_LEN,
        end,
        fragment: Fragment::Whole,
    };
    // Each step moves at least 8 bytes forward inside `end` (at most 65535 + 40), so
    // the walk ends.
    loop {
        let options = extensions == Ipv6Extensions::Options;
        match t.protocol {
            HOP_BY_HOP | IPV6_DEST_OPTS if options => {
                let header = extension_header(packet, t.offset, end)?;
                t.protocol = header[0];
                t.offset += (usize::from(header[1]) + 1) * 8;
                if t.offset > end {
                    return Err(Error::ExtensionHeader);
                }
            }
            IPV6_FRAGMENT if options || t.offset == ipv6::HEADER_LEN => {
                if t.fragment != Fragment::Whole {
                    // A second fragment header: not a packet any host sends.
                    return Err(Error::ExtensionHeader);
                }
                let header = extension_header(packet, t.offset, end)?;
                t.protocol = header[0];
                t.offset += 8;
                // The M flag is not read: offset 0 is First even when it is the only
                // fragment (an atomic fragment still went through reassembly rules).
                t.fragment = fragment(usize::from(be16(header, 2) & 0xfff8), true)?;
                if t.fragment == Fragment::Later || !options {
                    return Ok(t);
                }
            }
            _ => return Ok(t),
        }
    }
}

/// The first 8 bytes of an extension header at `at`, which must lie before `end`.
#[inline]
fn extension_header(packet: &[u8], at: usize, end: usize) -> Result<&[u8], Error> {
    if at + 8 > end {
        return Err(Error::ExtensionHeader);
    }
    Ok(&packet[at..at + 8])
}

#[cfg(test)]
pub(crate) mod testpkt {
    //! Hand-built packets for this crate's tests.

    /// IPv4 (20-byte header) around `l4`, checksum left zero.
    pub fn v4(proto: u8, l4: &[u8]) -> Vec<u8> {
        let total = 20 + l4.len();
        let mut p = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 7, 0x40, 0];
        p.extend_from_slice(&[64, proto, 0, 0, 100, 64, 0, 1, 100, 64, 0, 2]);
        p.extend_from_slice(l4);
        p
    }

    /// IPv6 around `l4` (which may start with extension headers).
    pub fn v6(next: u8, l4: &[u8]) -> Vec<u8> {
        let len = l4.len();
        let mut p = vec![0x60, 0, 0, 0, (len >> 8) as u8, len as u8, next, 64];
        p.extend_from_slice(&[0xfd, 0x7a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[0xfd, 0x7a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(l4);
        p
    }

    /// A TCP header (data offset 5 + `options`/4 words) and payload.
    pub fn tcp(sport: u16, dport: u16, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        t[8..12].copy_from_slice(&0x0a0b_0c0du32.to_be_bytes());
        t[12] = (((20 + options.len()) / 4) << 4) as u8;
        t[13] = flags;
        t[14..16].copy_from_slice(&1000u16.to_be_bytes());
        t.extend_from_slice(options);
        t.extend_from_slice(payload);
        t
    }

    pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let len = 8 + payload.len();
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        u.extend_from_slice(payload);
        u
    }

    /// A hop-by-hop or destination options header of 8 bytes (PadN), then `next`.
    pub fn options_header(next: u8) -> Vec<u8> {
        vec![next, 0, 1, 4, 0, 0, 0, 0]
    }

    /// An IPv6 fragment header: offset in bytes (a multiple of 8), M flag.
    pub fn fragment_header(next: u8, offset: u16, more: bool) -> Vec<u8> {
        let field = offset | u16::from(more);
        let f = field.to_be_bytes();
        vec![next, 0, f[0], f[1], 0, 0, 0, 1]
    }
}

#[cfg(test)]
mod tests {
    use super::protocol::*;
    use super::testpkt::*;
    use super::*;

    fn t(packet: &[u8], ext: Ipv6Extensions) -> Result<(u8, usize, usize, Fragment), Error> {
        transport(packet, ext).map(|t| {
            assert_eq!(t.v6, packet[0] >> 4 == 6);
            (t.protocol, t.offset, t.end, t.fragment)
        })
    }

    #[test]
    fn ipv4_fields() {
        let p = v4(UDP, &udp(1, 2, b"abc"));
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert_eq!((ip.version(), ip.header_len(), ip.total_len()), (4, 20, 31));
        assert_eq!((ip.ident(), ip.ttl(), ip.protocol()), (7, 64, UDP));
        assert!(ip.dont_frag() && !ip.more_frags() && ip.is_unfragmented());
        assert_eq!(ip.src_addr(), Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(ip.payload(), &udp(1, 2, b"abc")[..]);
        let mut q = p.clone();
        let mut ip = Ipv4Packet::new_unchecked(&mut q[..]);
        ip.set_total_len(40);
        ip.set_ident(0xbeef);
        ip.set_checksum(0x1234);
        assert_eq!(
            (ip.total_len(), ip.ident(), ip.checksum()),
            (40, 0xbeef, 0x1234)
        );
    }

    #[test]
    fn ipv6_fields() {
        let p = v6(TCP, &tcp(1, 2, 0x10, &[], b"xy"));
        let ip = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(
            (ip.payload_len(), ip.total_len(), ip.next_header()),
            (22, 62, TCP)
        );
        assert_eq!((ip.hop_limit(), ip.version_class_flow()), (64, 0x6000_0000));
        assert_eq!(ip.dst_addr(), "fd7a::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip.src_addr(), "fd7a::1".parse::<Ipv6Addr>().unwrap());
        let mut q = p.clone();
        Ipv6Packet::new_unchecked(&mut q[..]).set_payload_len(7);
        assert_eq!(Ipv6Packet::new_unchecked(&q[..]).payload_len(), 7);
    }

    #[test]
    fn finds_transport_header() {
        use Ipv6Extensions::*;
        let p4 = v4(TCP, &tcp(1, 2, 0x10, &[], b"abc"));
        assert_eq!(t(&p4, Options), Ok((TCP, 20, 43, Fragment::Whole)));
        // IPv4 options (IHL 6).
        let mut p4o = v4(UDP, &udp(1, 2, b"x"));
        p4o.splice(20..20, [1, 1, 1, 0]);
        p4o[0] = 0x46;
        p4o[3] += 4;
        assert_eq!(t(&p4o, FragmentFirst), Ok((UDP, 24, 33, Fragment::Whole)));
        // Link padding after the datagram is not part of it.
        let mut padded = p4.clone();
        padded.extend_from_slice(&[0; 3]);
        assert_eq!(t(&padded, Options), Ok((TCP, 20, 43, Fragment::Whole)));
        let p6 = v6(UDP, &udp(1, 2, b"xyz"));
        assert_eq!(t(&p6, FragmentFirst), Ok((UDP, 40, 51, Fragment::Whole)));
    }

    #[test]
    fn ipv6_extension_headers_by_mode() {
        use Ipv6Extensions::*;
        let hbh = v6(HOP_BY_HOP, &[options_header(UDP), udp(1, 2, b"x")].concat());
        assert_eq!(t(&hbh, Options), Ok((UDP, 48, 57, Fragment::Whole)));
        assert_eq!(
            t(&hbh, FragmentFirst),
            Ok((HOP_BY_HOP, 40, 57, Fragment::Whole))
        );
        let chain = [
            options_header(IPV6_DEST_OPTS),
            options_header(IPV6_ROUTING),
            vec![UDP, 0, 0, 0, 0, 0, 0, 0],
            udp(1, 2, b"x"),
        ]
        .concat();
        let routed = v6(HOP_BY_HOP, &chain);
        assert_eq!(
            t(&routed, Options),
            Ok((IPV6_ROUTING, 56, 73, Fragment::Whole))
        );

        let first = v6(
            IPV6_FRAGMENT,
            &[fragment_header(UDP, 0, true), udp(1, 2, b"x")].concat(),
        );
        assert_eq!(t(&first, FragmentFirst), Ok((UDP, 48, 57, Fragment::First)));
        assert_eq!(t(&first, Options), Ok((UDP, 48, 57, Fragment::First)));
        let later = v6(
            IPV6_FRAGMENT,
            &[fragment_header(UDP, 1480, false), vec![0; 16]].concat(),
        );
        assert_eq!(t(&later, FragmentFirst), Ok((UDP, 48, 64, Fragment::Later)));
        let sneaky = v6(
            IPV6_FRAGMENT,
            &[fragment_header(UDP, 8, false), vec![0; 16]].concat(),
        );
        assert_eq!(t(&sneaky, FragmentFirst), Err(Error::OverlappingFragment));
        // Behind a hop-by-hop header the fragment header is stepped over only with Options.
        let deep = v6(
            HOP_BY_HOP,
            &[
                options_header(IPV6_FRAGMENT),
                fragment_header(UDP, 0, true),
                udp(1, 2, b""),
            ]
            .concat(),
        );
        assert_eq!(t(&deep, Options), Ok((UDP, 56, 64, Fragment::First)));
        assert_eq!(
            t(&deep, FragmentFirst),
            Ok((HOP_BY_HOP, 40, 64, Fragment::Whole))
        );
        // An options header claiming to run past the end.
        let mut long = hbh.clone();
        long[41] = 200;
        assert_eq!(t(&long, Options), Err(Error::ExtensionHeader));
    }

    #[test]
    fn ipv4_fragments() {
        let mut p = v4(UDP, &udp(1, 2, b"xyz"));
        p[6] = 0x20; // MF
        assert_eq!(t(&p, Ipv6Extensions::Options).unwrap().3, Fragment::First);
        p[6..8].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(t(&p, Ipv6Extensions::Options).unwrap().3, Fragment::Later);
        p[6..8].copy_from_slice(&9u16.to_be_bytes()); // 72 bytes: could hide a TCP header
        assert_eq!(
            t(&p, Ipv6Extensions::Options),
            Err(Error::OverlappingFragment)
        );
        p[6..8].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(t(&p, Ipv6Extensions::Options).unwrap().3, Fragment::Later);
    }

    #[test]
    fn rejects_inconsistent_headers() {
        let p4 = v4(TCP, &tcp(1, 2, 0x10, &[], b"abc"));
        let mut bad = p4.clone();
        bad[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&bad[..]), Err(Error::HeaderLength));
        bad[0] = 0x4f;
        assert_eq!(Ipv4Packet::new_checked(&bad[..]), Err(Error::HeaderLength));
        bad[0] = 0x55;
        assert_eq!(Ipv4Packet::new_checked(&bad[..]), Err(Error::Version));
        assert_eq!(
            transport(&bad, Ipv6Extensions::Options),
            Err(Error::Version)
        );
        assert_eq!(
            transport(&[], Ipv6Extensions::Options),
            Err(Error::Truncated)
        );
        let p6 = v6(UDP, &udp(1, 2, b"xyz"));
        let mut bad6 = p6.clone();
        bad6[0] = 0x40;
        assert_eq!(Ipv6Packet::new_checked(&bad6[..]), Err(Error::Version));
    }

    /// Every cut of a valid packet is an error (or, where the cut falls in bytes the
    /// length fields do not cover, the same answer), never a panic.
    #[test]
    fn every_truncation_is_an_error() {
        let packets = [
            v4(TCP, &tcp(1, 2, 0x10, &[1, 1, 1, 0], b"abc")),
            v6(UDP, &udp(1, 2, b"xyz")),
            v6(
                HOP_BY_HOP,
                &[
                    options_header(IPV6_FRAGMENT),
                    fragment_header(UDP, 0, true),
                    udp(1, 2, b""),
                ]
                .concat(),
            ),
            v6(
                IPV6_FRAGMENT,
                &[fragment_header(UDP, 0, true), udp(1, 2, b"")].concat(),
            ),
        ];
        for p in &packets {
            for ext in [Ipv6Extensions::Options, Ipv6Extensions::FragmentFirst] {
                assert!(transport(p, ext).is_ok());
                for cut in 0..p.len() {
                    assert!(transport(&p[..cut], ext).is_err(), "cut at {cut} of {p:?}");
                }
            }
            for cut in 0..p.len() {
                assert!(Ipv4Packet::new_checked(&p[..cut]).is_err());
                assert!(Ipv6Packet::new_checked(&p[..cut]).is_err());
            }
        }
    }

    /// Random bytes behind a plausible first byte: whatever the views accept, their
    /// accessors can read without panicking.
    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 120) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = b.first_mut() {
                *first = [0x45, 0x46, 0x4f, 0x60][(next() % 4) as usize];
            }
            if b.len() > 6 && next() % 2 == 0 {
                b[6] = [HOP_BY_HOP, IPV6_FRAGMENT, IPV6_DEST_OPTS, TCP][(next() % 4) as usize];
            }
            if b.len() > 5 && next() % 2 == 0 {
                // A length field that fits the buffer, so the walk gets further.
                let plen = (b.len().saturating_sub(40)) as u16;
                let total = b.len() as u16;
                b[2..4].copy_from_slice(&total.to_be_bytes());
                b[4..6].copy_from_slice(&plen.to_be_bytes());
            }
            for ext in [Ipv6Extensions::Options, Ipv6Extensions::FragmentFirst] {
                if let Ok(t) = transport(&b, ext) {
                    assert!(t.offset <= t.end && t.end <= b.len());
                    let l4 = t.bytes(&b);
                    if let Ok(h) = crate::tcp::TcpHeader::new_checked(l4) {
                        let _ = (h.options(), h.flags(), h.urgent_at());
                    }
                    if let Ok(h) = crate::udp::UdpHeader::new_checked(l4) {
                        let _ = (h.length(), h.checksum());
                    }
                }
            }
            if let Ok(ip) = Ipv4Packet::new_checked(&b[..]) {
                let _ = (ip.payload(), ip.dst_addr(), ip.frag_offset());
            }
            if let Ok(ip) = Ipv6Packet::new_checked(&b[..]) {
                let _ = (ip.payload(), ip.dst_addr(), ip.hop_limit());
            }
        }
    }

    /// The length fields shrunk instead of the buffer: extension headers now run past
    /// the payload, which must be an error too.
    #[test]
    fn every_short_length_field_is_an_error_or_a_shorter_packet() {
        let p = v6(
            HOP_BY_HOP,
            &[
                options_header(IPV6_FRAGMENT),
                fragment_header(UDP, 0, true),
                udp(1, 2, b""),
            ]
            .concat(),
        );
        for len in 0..p.len() - 40 {
            let mut q = p.clone();
            q[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            match transport(&q, Ipv6Extensions::Options) {
                Ok(t) => assert!(t.offset <= t.end && t.end == 40 + len),
                Err(e) => assert_eq!(e, Error::ExtensionHeader, "payload length {len}"),
            }
        }
    }
}
