//! Test support, independent of the code under test: a naive RFC 1071 checksum written
//! the textbook way, a small IPv4/IPv6 + TCP/UDP packet builder, checkers, and a
//! deterministic PRNG (no crate needed).

#![allow(dead_code)]

/// The textbook checksum over the concatenation of `parts`: big-endian 16-bit words added
/// one at a time into a u32 with end-around carry, complemented.
pub fn naive_checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut s: u32 = 0;
    for pair in bytes.chunks(2) {
        let hi = u32::from(pair[0]);
        let lo = u32::from(*pair.get(1).unwrap_or(&0));
        s += (hi << 8) | lo;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
    }
    !(s as u16)
}

/// xorshift64*: deterministic pseudo-random bytes for tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn u32(&mut self) -> u32 {
        (self.u64() >> 32) as u32
    }
    pub fn byte(&mut self) -> u8 {
        (self.u64() >> 56) as u8
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

/// IP header fields of a test packet.
#[derive(Clone, Debug)]
pub struct IpSpec {
    pub v6: bool,
    pub src: Vec<u8>,
    pub dst: Vec<u8>,
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
    pub df: bool,
    pub flow_label: u32,
    /// IPv4 options (a multiple of 4 bytes).
    pub options: Vec<u8>,
}

impl IpSpec {
    pub fn v4() -> Self {
        IpSpec {
            v6: false,
            src: vec![100, 64, 0, 1],
            dst: vec![100, 64, 0, 2],
            ttl: 64,
            tos: 0,
            id: 0x1234,
            df: true,
            flow_label: 0,
            options: vec![],
        }
    }
    pub fn v6() -> Self {
        let mut src = vec![0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0xab, 0x12];
        src.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        let mut dst = src.clone();
        dst[15] = 2;
        IpSpec {
            v6: true,
            src,
            dst,
            ttl: 64,
            tos: 0,
            id: 0,
            df: false,
            flow_label: 0x5_4321,
            options: vec![],
        }
    }
}

/// TCP header fields of a test packet.
#[derive(Clone, Debug)]
pub struct TcpSpec {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub options: Vec<u8>,
}

impl TcpSpec {
    pub fn new(seq: u32) -> Self {
        TcpSpec {
            sport: 40000,
            dport: 5201,
            seq,
            ack: 0x0bad_cafe,
            flags: ACK,
            window: 502,
            options: timestamps(0x0102_0304, 0x0a0b_0c0d),
        }
    }
}

/// NOP, NOP, Timestamps (kind 8, len 10): the options Linux puts on every segment.
pub fn timestamps(val: u32, ecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&val.to_be_bytes());
    o.extend_from_slice(&ecr.to_be_bytes());
    o
}

fn pseudo_bytes(ip: &IpSpec, proto: u8, l4_len: usize) -> Vec<u8> {
    let mut p = [ip.src.clone(), ip.dst.clone()].concat();
    if ip.v6 {
        p.extend_from_slice(&(l4_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    p
}

fn ip_header(ip: &IpSpec, proto: u8, l4_len: usize) -> Vec<u8> {
    if ip.v6 {
        let mut h = vec![0u8; 40];
        let word = (6u32 << 28) | (u32::from(ip.tos) << 20) | (ip.flow_label & 0xf_ffff);
        h[0..4].copy_from_slice(&word.to_be_bytes());
        h[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        h[6] = proto;
        h[7] = ip.ttl;
        h[8..24].copy_from_slice(&ip.src);
        h[24..40].copy_from_slice(&ip.dst);
        h
    } else {
        let ihl = 20 + ip.options.len();
        let mut h = vec![0u8; ihl];
        h[0] = 0x40 | (ihl / 4) as u8;
        h[1] = ip.tos;
        h[2..4].copy_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&ip.id.to_be_bytes());
        h[6] = if ip.df { 0x40 } else { 0 };
        h[8] = ip.ttl;
        h[9] = proto;
        h[12..16].copy_from_slice(&ip.src);
        h[16..20].copy_from_slice(&ip.dst);
        h[20..].copy_from_slice(&ip.options);
        let c = naive_checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }
}

fn tcp_header(t: &TcpSpec) -> Vec<u8> {
    let thl = 20 + t.options.len();
    assert_eq!(thl % 4, 0, "test TCP options must be padded");
    let mut h = vec![0u8; thl];
    h[0..2].copy_from_slice(&t.sport.to_be_bytes());
    h[2..4].copy_from_slice(&t.dport.to_be_bytes());
    h[4..8].copy_from_slice(&t.seq.to_be_bytes());
    h[8..12].copy_from_slice(&t.ack.to_be_bytes());
    h[12] = ((thl / 4) as u8) << 4;
    h[13] = t.flags;
    h[14..16].copy_from_slice(&t.window.to_be_bytes());
    h[20..].copy_from_slice(&t.options);
    h
}

/// A complete TCP packet with correct checksums.
pub fn tcp_packet(ip: &IpSpec, t: &TcpSpec, payload: &[u8]) -> Vec<u8> {
    let mut l4 = tcp_header(t);
    l4.extend_from_slice(payload);
    let c = naive_checksum(&[&pseudo_bytes(ip, 6, l4.len()), &l4]);
    l4[16..18].copy_from_slice(&c.to_be_bytes());
    [ip_header(ip, 6, l4.len()), l4].concat()
}

/// A complete UDP packet with correct checksums.
pub fn udp_packet(ip: &IpSpec, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = vec![0u8; 8];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(payload);
    let mut c = naive_checksum(&[&pseudo_bytes(ip, 17, l4.len()), &l4]);
    if c == 0 {
        c = 0xffff;
    }
    l4[6..8].copy_from_slice(&c.to_be_bytes());
    [ip_header(ip, 17, l4.len()), l4].concat()
}

fn vnet(
    flags: u8,
    gso_type: u8,
    hdr_len: usize,
    gso_size: usize,
    csum_start: usize,
    csum_offset: usize,
) -> Vec<u8> {
    // Native order, as the TUN uses it.
    let mut v = vec![flags, gso_type];
    for x in [hdr_len, gso_size, csum_start, csum_offset] {
        v.extend_from_slice(&(x as u16).to_ne_bytes());
    }
    v
}

/// Replaces the L4 checksum of `pkt` with the folded, uncomplemented pseudo-header sum,
/// as the kernel leaves it for CHECKSUM_PARTIAL (`th->check = ~tcp_v4_check(len, s, d, 0)`).
pub fn make_partial(pkt: &mut [u8], ip: &IpSpec, proto: u8, l4_off: usize, csum_at: usize) {
    let l4_len = pkt.len() - l4_off;
    let partial = !naive_checksum(&[&pseudo_bytes(ip, proto, l4_len)]);
    pkt[csum_at..csum_at + 2].copy_from_slice(&partial.to_be_bytes());
}

/// What a TUN with TSO hands us: virtio_net_hdr + one TCP super-packet carrying `payload`,
/// with a partial checksum.
pub fn tso_read(ip: &IpSpec, t: &TcpSpec, payload: &[u8], gso_size: usize, ecn: bool) -> Vec<u8> {
    let mut pkt = tcp_packet(ip, t, payload);
    let l4 = if ip.v6 { 40 } else { 20 + ip.options.len() };
    make_partial(&mut pkt, ip, 6, l4, l4 + 16);
    let gso_type = if ip.v6 { 4 } else { 1 } | if ecn { 0x80 } else { 0 };
    let hdr = vnet(1, gso_type, l4 + 20 + t.options.len(), gso_size, l4, 16);
    [hdr, pkt].concat()
}

/// What a TUN with USO hands us: virtio_net_hdr + one UDP super-packet.
pub fn uso_read(ip: &IpSpec, sport: u16, dport: u16, payload: &[u8], gso_size: usize) -> Vec<u8> {
    let mut pkt = udp_packet(ip, sport, dport, payload);
    let l4 = if ip.v6 { 40 } else { 20 };
    make_partial(&mut pkt, ip, 17, l4, l4 + 6);
    [vnet(1, 5, l4 + 8, gso_size, l4, 6), pkt].concat()
}

/// A parsed view of a test packet, read with plain indexing (independent of the code
/// under test).
#[derive(Debug)]
pub struct View<'a> {
    pub pkt: &'a [u8],
    pub v6: bool,
    pub l4: usize,
    pub proto: u8,
}

impl<'a> View<'a> {
    pub fn new(pkt: &'a [u8]) -> Self {
        let v6 = pkt[0] >> 4 == 6;
        let (l4, proto) = if v6 {
            (40, pkt[6])
        } else {
            (usize::from(pkt[0] & 15) * 4, pkt[9])
        };
        View { pkt, v6, l4, proto }
    }
    /// The packet length the IP header claims.
    pub fn ip_len_field(&self) -> usize {
        let be = |i: usize| usize::from(u16::from_be_bytes([self.pkt[i], self.pkt[i + 1]]));
        if self.v6 {
            be(4) + 40
        } else {
            be(2)
        }
    }
    pub fn ipv4_id(&self) -> u16 {
        u16::from_be_bytes([self.pkt[4], self.pkt[5]])
    }
    pub fn ipv4_header_ok(&self) -> bool {
        self.v6 || naive_checksum(&[&self.pkt[..self.l4]]) == 0
    }
    fn pseudo(&self) -> Vec<u8> {
        let (s, d) = if self.v6 {
            (&self.pkt[8..24], &self.pkt[24..40])
        } else {
            (&self.pkt[12..16], &self.pkt[16..20])
        };
        let ip = IpSpec {
            v6: self.v6,
            src: s.to_vec(),
            dst: d.to_vec(),
            ..IpSpec::v4()
        };
        pseudo_bytes(&ip, self.proto, self.pkt.len() - self.l4)
    }
    /// The L4 checksum verifies over pseudo-header, header and payload.
    pub fn l4_checksum_ok(&self) -> bool {
        naive_checksum(&[&self.pseudo(), &self.pkt[self.l4..]]) == 0
    }
    /// The L4 checksum field holds exactly the folded pseudo-header sum (CHECKSUM_PARTIAL).
    pub fn l4_checksum_is_partial(&self) -> bool {
        let at = self.l4 + if self.proto == 6 { 16 } else { 6 };
        u16::from_be_bytes([self.pkt[at], self.pkt[at + 1]]) == !naive_checksum(&[&self.pseudo()])
    }
    pub fn seq(&self) -> u32 {
        u32::from_be_bytes(self.pkt[self.l4 + 4..self.l4 + 8].try_into().unwrap())
    }
    pub fn tcp_flags(&self) -> u8 {
        self.pkt[self.l4 + 13]
    }
    pub fn tcp_header_len(&self) -> usize {
        usize::from(self.pkt[self.l4 + 12] >> 4) * 4
    }
    pub fn udp_len_field(&self) -> usize {
        usize::from(u16::from_be_bytes([
            self.pkt[self.l4 + 4],
            self.pkt[self.l4 + 5],
        ]))
    }
    pub fn payload(&self) -> &'a [u8] {
        let hl = if self.proto == 6 {
            self.tcp_header_len()
        } else {
            8
        };
        &self.pkt[self.l4 + hl..]
    }
}

/// Recomputes the TCP/UDP checksum of `pkt` after a test edited its header.
pub fn fix_l4_checksum(pkt: &mut [u8]) {
    let v = View::new(pkt);
    let at = v.l4 + if v.proto == 6 { 16 } else { 6 };
    let (pseudo, l4) = (v.pseudo(), v.l4);
    pkt[at..at + 2].copy_from_slice(&[0, 0]);
    let c = naive_checksum(&[&pseudo, &pkt[l4..]]);
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
}
