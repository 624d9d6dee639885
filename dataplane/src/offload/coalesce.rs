//! TUN write path: coalesce a batch of decrypted IP packets into GSO super-packets (GRO).
//!
//! TCP segments merge when the kernel's `tcp_gro_receive` would merge them: same
//! addresses and ports, the sequence number continuing the previous segment, identical
//! ACK number, window, flags (PSH allowed on the last one, CWR on the first) and TCP
//! options (timestamps included), same IP TOS/TTL/DF (IPv6: traffic class, flow label
//! and hop limit), no IPv4 options or fragments, no SYN/FIN/RST/URG, every segment the
//! size of the first except a smaller last one, at most 64 KB in all, and valid
//! checksums (the merged packet is handed to the kernel as CHECKSUM_PARTIAL, so a bad
//! checksum would otherwise be silently repaired). UDP datagrams merge under the
//! equivalent rules when UDP GRO is enabled (the kernel must have accepted
//! `TUN_F_USO4|TUN_F_USO6`; older kernels refuse `GSO_UDP_L4` writes).
//!
//! Ordering: only the newest group of a flow can grow. A packet of the flow that does
//! not join it (a pure ACK, a FIN, a gap, a changed ACK number...) closes it, so the
//! output keeps every flow's packets in input order; outputs appear in the order of
//! their first packet. (Packets whose ports we do not read, IPv6 with extension headers
//! and IPv4 non-first fragments, belong to no flow here; TCP practically never sends
//! those, and a stray one could only be overtaken by later segments of its flow.)
//!
//! The work is two passes over the batch: a plan (which packets join which output,
//! kept as a linked list of packet indices per output), then the copy into the
//! caller's buffer. Nothing is moved in place and nothing is allocated after
//! [`Coalescer::new`].

use std::ops::Range;

use super::checksum::{self, fold, pseudo_header};
use super::virtio::{
    VirtioNetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN,
};
use super::OffloadError;
use ringscale_wire::ip::{ipv4, ipv6, protocol, Ipv4Packet, Ipv6Packet};
use ringscale_wire::tcp::{self, TcpHeader};
use ringscale_wire::udp::{self, UdpHeader};

/// Largest IP packet we build: the IPv4 total length field is 16 bits, and a TUN write
/// is bounded by it too.
const MAX_SUPER_PACKET: usize = 65535;
/// The kernel's UDP GRO stops at this many segments (UDP_GRO_CNT_MAX); stay within it.
const MAX_UDP_SEGMENTS: u32 = 64;

const NO_PACKET: u32 = u32::MAX;

/// Reusable GRO state for batches of up to `capacity` packets. One per worker.
pub struct Coalescer {
    udp_gro: bool,
    capacity: usize,
    /// Output groups of the current batch, in order of their first packet.
    groups: Vec<Group>,
    /// For each input packet, the next packet of its group (`NO_PACKET` at the end).
    next: Vec<u32>,
    flows: FlowTable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Written as is, behind an all-zero virtio_net_hdr.
    Single,
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug)]
struct Group {
    kind: Kind,
    v6: bool,
    /// Can still take packets (no PSH yet, no short segment yet, checksums fine).
    open: bool,
    /// The last TCP segment merged had PSH: the super-packet carries it.
    psh: bool,
    /// The first packet's L4 checksum has been verified (done once, on first merge).
    head_verified: bool,
    head: u32,
    tail: u32,
    segments: u32,
    l4_off: u16,
    /// IP + L4 header length, identical for every member.
    hdr_len: u16,
    /// Payload length of the first packet: every other one is this size or, last, smaller.
    gso_size: u16,
    /// IP length of the merged packet so far.
    total_len: u32,
    /// TCP: sequence number the next segment must carry.
    next_seq: u32,
}

impl Group {
    fn single(i: u32, len: usize) -> Self {
        Group {
            kind: Kind::Single,
            v6: false,
            open: false,
            psh: false,
            head_verified: false,
            head: i,
            tail: i,
            segments: 1,
            l4_off: 0,
            hdr_len: 0,
            gso_size: 0,
            total_len: len as u32,
            next_seq: 0,
        }
    }
}

/// What the first pass learns about one packet.
enum Class {
    /// Not TCP/UDP we can track (or not IP at all): passes through, belongs to no flow.
    Other,
    /// Belongs to a flow but cannot be merged (pure ACK, FIN, IP options...): passes
    /// through and closes its flow's open group.
    Barrier(FlowKey),
    /// May start or join a group.
    Candidate(FlowKey, Candidate),
}

#[derive(Clone, Copy)]
struct Candidate {
    v6: bool,
    tcp: bool,
    l4_off: usize,
    hdr_len: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

impl Coalescer {
    /// A coalescer for batches of up to `capacity` packets. `udp_gro`: also merge UDP
    /// (only if the TUN accepted USO offloads).
    pub fn new(capacity: usize, udp_gro: bool) -> Self {
        Coalescer {
            udp_gro,
            capacity,
            groups: Vec::with_capacity(capacity),
            next: vec![NO_PACKET; capacity],
            flows: FlowTable::new(capacity),
        }
    }

    /// Output bytes that always suffice for `packets`: their total length plus one
    /// virtio_net_hdr each (merging only removes bytes).
    pub fn out_len_needed<P: AsRef<[u8]>>(packets: &[P]) -> usize {
        packets
            .iter()
            .map(|p| p.as_ref().len() + VNET_HDR_LEN)
            .sum()
    }

    /// Coalesces `packets` (IP packets, no virtio_net_hdr) into `out`. Each output is a
    /// virtio_net_hdr followed by an IP packet, ready for one write to the TUN; its
    /// position in `out` goes to `spans[k]`. Returns the number of outputs.
    ///
    /// Errors only concern the caller's buffers; malformed packets are never an error
    /// here, they pass through untouched for the kernel to judge.
    pub fn coalesce<P: AsRef<[u8]>>(
        &mut self,
        packets: &[P],
        out: &mut [u8],
        spans: &mut [Range<usize>],
    ) -> Result<usize, OffloadError> {
        if packets.len() > self.capacity {
            return Err(OffloadError::BatchTooLarge {
                len: packets.len(),
                capacity: self.capacity,
            });
        }
        self.plan(packets);
        if self.groups.len() > spans.len() {
            return Err(OffloadError::TooManyOutputs {
                needed: self.groups.len(),
                available: spans.len(),
            });
        }
        let needed: usize = self
            .groups
            .iter()
            .map(|g| VNET_HDR_LEN + g.total_len as usize)
            .sum();
        if needed > out.len() {
            return Err(OffloadError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        let mut pos = 0;
        for (g, span) in self.groups.iter().zip(spans.iter_mut()) {
            let len = VNET_HDR_LEN + g.total_len as usize;
            write_group(g, packets, &self.next, &mut out[pos..pos + len]);
            *span = pos..pos + len;
            pos += len;
        }
        Ok(self.groups.len())
    }

    /// First pass: decide the groups.
    fn plan<P: AsRef<[u8]>>(&mut self, packets: &[P]) {
        self.groups.clear();
        self.flows.begin_batch();
        for (i, p) in packets.iter().enumerate() {
            let pkt = p.as_ref();
            let i = i as u32;
            self.next[i as usize] = NO_PACKET;
            match classify(pkt, self.udp_gro) {
                Class::Other => self.groups.push(Group::single(i, pkt.len())),
                Class::Barrier(key) => {
                    let slot = self.flows.find(&key);
                    self.flows.set(slot, key, self.groups.len() as u32);
                    self.groups.push(Group::single(i, pkt.len()));
                }
                Class::Candidate(key, c) => {
                    let slot = self.flows.find(&key);
                    let verdict = match self.flows.group(slot) {
                        Some(g) => self.try_join(g as usize, packets, i, &c),
                        None => Join::NewGroup,
                    };
                    match verdict {
                        Join::Joined => {}
                        Join::NewGroup => {
                            self.flows.set(slot, key, self.groups.len() as u32);
                            self.groups.push(new_group(i, pkt, &c));
                        }
                        Join::Alone => {
                            self.flows.set(slot, key, self.groups.len() as u32);
                            self.groups.push(Group::single(i, pkt.len()));
                        }
                    }
                }
            }
        }
    }

    /// Tries to append packet `i` to group `g` (the newest group of its flow).
    fn try_join<P: AsRef<[u8]>>(&mut self, g: usize, packets: &[P], i: u32, c: &Candidate) -> Join {
        let group = self.groups[g];
        let pkt = packets[i as usize].as_ref();
        let head = packets[group.head as usize].as_ref();
        if !group.open || group.kind != if c.tcp { Kind::Tcp } else { Kind::Udp } {
            return Join::NewGroup;
        }
        if c.hdr_len != usize::from(group.hdr_len)
            || c.payload > usize::from(group.gso_size)
            || group.total_len as usize + c.payload > MAX_SUPER_PACKET
            || !ip_headers_match(head, pkt, c.v6)
        {
            return Join::NewGroup;
        }
        let l4 = c.l4_off;
        if c.tcp {
            // Both headers were checked by classify, and their lengths are equal.
            let (p, h) = (
                TcpHeader::new_unchecked(&pkt[l4..c.hdr_len]),
                TcpHeader::new_unchecked(&head[l4..c.hdr_len]),
            );
            // Head flags never include PSH (PSH closes a group), and CWR may only lead.
            // Byte 12 holds the data offset (equal, as hdr_len is) and the AE/NS bit.
            if c.seq != group.next_seq
                || p.offset_byte() != h.offset_byte()
                || c.flags & tcp::CWR != 0
                || c.flags & !tcp::PSH != h.flags() & !tcp::CWR
                || p.ack_number() != h.ack_number()
                || p.window_len() != h.window_len()
                || p.options() != h.options()
            {
                return Join::NewGroup;
            }
        } else if group.segments >= MAX_UDP_SEGMENTS {
            return Join::NewGroup;
        }
        let proto = if c.tcp { protocol::TCP } else { protocol::UDP };
        if !group.head_verified {
            if !l4_checksum_valid(head, c.v6, proto, l4) {
                // The kernel will drop the head on its own checksum check; leave it alone.
                self.groups[g].open = false;
                return Join::NewGroup;
            }
            self.groups[g].head_verified = true;
        }
        if !l4_checksum_valid(pkt, c.v6, proto, l4) {
            return Join::Alone;
        }
        let group = &mut self.groups[g];
        self.next[group.tail as usize] = i;
        group.tail = i;
        group.segments += 1;
        group.total_len += c.payload as u32;
        group.next_seq = group.next_seq.wrapping_add(c.payload as u32);
        if c.payload < usize::from(group.gso_size) {
            group.open = false;
        }
        if c.tcp && c.flags & tcp::PSH != 0 {
            group.psh = true;
            group.open = false;
        }
        Join::Joined
    }
}

enum Join {
    Joined,
    /// Start a new (open) group with this packet; the flow's previous group is closed.
    NewGroup,
    /// Pass this packet through on its own (bad checksum); it closes the flow's group.
    Alone,
}

fn new_group(i: u32, pkt: &[u8], c: &Candidate) -> Group {
    let psh = c.tcp && c.flags & tcp::PSH != 0;
    Group {
        kind: if c.tcp { Kind::Tcp } else { Kind::Udp },
        v6: c.v6,
        open: !psh,
        psh: false,
        head_verified: false,
        head: i,
        tail: i,
        segments: 1,
        l4_off: c.l4_off as u16,
        hdr_len: c.hdr_len as u16,
        gso_size: c.payload as u16,
        total_len: pkt.len() as u32,
        next_seq: c.seq.wrapping_add(c.payload as u32),
    }
}

/// IP header fields that must agree for two packets to merge (the caller has checked
/// version, header length and protocol through the flow key and candidate checks).
fn ip_headers_match(a: &[u8], b: &[u8], v6: bool) -> bool {
    if v6 {
        let (a, b) = (Ipv6Packet::new_unchecked(a), Ipv6Packet::new_unchecked(b));
        a.version_class_flow() == b.version_class_flow() && a.hop_limit() == b.hop_limit()
    } else {
        // TOS; DF and reserved bits (MF is clear on candidates); TTL.
        let (a, b) = (Ipv4Packet::new_unchecked(a), Ipv4Packet::new_unchecked(b));
        a.tos() == b.tos() && a.flags() == b.flags() && a.ttl() == b.ttl()
    }
}

fn l4_checksum_valid(pkt: &[u8], v6: bool, proto: u8, l4_off: usize) -> bool {
    let l4 = &pkt[l4_off..];
    fold(checksum::sum(l4, pseudo_header(pkt, v6, proto, l4.len()))) == 0xffff
}

/// Reads what the plan needs from one packet, without trusting anything in it.
fn classify(pkt: &[u8], udp_gro: bool) -> Class {
    if pkt.len() > MAX_SUPER_PACKET || pkt.is_empty() {
        return Class::Other;
    }
    let v6 = match pkt[0] >> 4 {
        4 => false,
        6 => true,
        _ => return Class::Other,
    };
    // The length fields must describe exactly this packet.
    let (l4_off, proto, ip_mergeable) = if v6 {
        let Ok(ip) = Ipv6Packet::new_checked(pkt) else {
            return Class::Other;
        };
        if ip.total_len() != pkt.len() {
            return Class::Other;
        }
        // Extension headers: not merged, and not tracked (their ports are further in).
        (ipv6::HEADER_LEN, ip.next_header(), true)
    } else {
        let Ok(ip) = Ipv4Packet::new_checked(pkt) else {
            return Class::Other;
        };
        if ip.total_len() != pkt.len() {
            return Class::Other;
        }
        if ip.frag_offset() != 0 {
            return Class::Other; // a non-first fragment: no ports
        }
        let ihl = ip.header_len();
        let mergeable = ihl == ipv4::HEADER_LEN
            && !ip.more_frags()
            && checksum::fold(checksum::sum(&pkt[..ihl], 0)) == 0xffff;
        (ihl, ip.protocol(), mergeable)
    };
    let tcp = match proto {
        protocol::TCP => true,
        protocol::UDP if udp_gro => false,
        _ => return Class::Other,
    };
    // l4_off is within the packet: the length field matched.
    let l4 = &pkt[l4_off..];
    let l4_header = if tcp {
        match TcpHeader::new_checked(l4) {
            Ok(h) => h.header_len(),
            Err(_) => return Class::Other,
        }
    } else if l4.len() < udp::HEADER_LEN {
        return Class::Other;
    } else {
        udp::HEADER_LEN
    };
    let key = FlowKey::new(pkt, v6, proto, l4_off);
    let payload = pkt.len() - l4_off - l4_header;
    let (seq, flags) = if tcp {
        let h = TcpHeader::new_unchecked(l4);
        (h.seq_number(), h.flags())
    } else {
        (0, 0)
    };
    let mergeable = ip_mergeable
        && payload > 0
        && if tcp {
            flags & tcp::ACK != 0 && flags & (tcp::SYN | tcp::FIN | tcp::RST | tcp::URG) == 0
        } else {
            // The UDP length must describe the datagram, and a zero (absent) checksum
            // cannot be verified.
            let h = UdpHeader::new_unchecked(l4);
            h.length() == l4.len() && h.checksum() != 0
        };
    if !mergeable {
        return Class::Barrier(key);
    }
    Class::Candidate(
        key,
        Candidate {
            v6,
            tcp,
            l4_off,
            hdr_len: l4_off + l4_header,
            payload,
            seq,
            flags,
        },
    )
}

/// Second pass: writes one output (virtio_net_hdr + packet) into `dst`, which is exactly
/// its size.
fn write_group<P: AsRef<[u8]>>(g: &Group, packets: &[P], next: &[u32], dst: &mut [u8]) {
    let (hdr_bytes, pkt_out) = dst.split_at_mut(VNET_HDR_LEN);
    let head = packets[g.head as usize].as_ref();
    if g.segments == 1 {
        hdr_bytes.fill(0);
        pkt_out.copy_from_slice(head);
        return;
    }
    let h = usize::from(g.hdr_len);
    let l4 = usize::from(g.l4_off);
    pkt_out[..h].copy_from_slice(&head[..h]);
    let mut pos = h;
    let mut i = g.head;
    while i != NO_PACKET {
        let payload = &packets[i as usize].as_ref()[h..];
        pkt_out[pos..pos + payload.len()].copy_from_slice(payload);
        pos += payload.len();
        i = next[i as usize];
    }
    debug_assert_eq!(pos, pkt_out.len());

    let total = pkt_out.len();
    let l4_len = total - l4;
    // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum; the kernel adds
    // the L4 header and payload (TUN_F_CSUM).
    let proto = if g.kind == Kind::Tcp {
        protocol::TCP
    } else {
        protocol::UDP
    };
    let partial = fold(pseudo_header(pkt_out, g.v6, proto, l4_len));
    let (ip_header, l4_bytes) = pkt_out.split_at_mut(l4);
    if g.v6 {
        Ipv6Packet::new_unchecked(ip_header).set_payload_len((total - ipv6::HEADER_LEN) as u16);
    } else {
        Ipv4Packet::new_unchecked(&mut *ip_header).set_total_len(total as u16);
        let c = checksum::ipv4_header(ip_header);
        Ipv4Packet::new_unchecked(ip_header).set_checksum(c);
    }
    let (gso_type, csum_offset) = match g.kind {
        Kind::Tcp => {
            let mut h = TcpHeader::new_unchecked(l4_bytes);
            if g.psh {
                h.set_flags(h.flags() | tcp::PSH);
            }
            let ecn = if h.flags() & tcp::CWR != 0 {
                GSO_ECN
            } else {
                0
            };
            h.set_checksum(partial);
            let t = if g.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            (t | ecn, tcp::CHECKSUM_OFFSET)
        }
        _ => {
            let mut h = UdpHeader::new_unchecked(l4_bytes);
            h.set_len(l4_len as u16);
            h.set_checksum(partial);
            (GSO_UDP_L4, udp::CHECKSUM_OFFSET)
        }
    };
    let vnet = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type,
        hdr_len: g.hdr_len,
        gso_size: g.gso_size,
        csum_start: g.l4_off,
        csum_offset: csum_offset as u16,
    };
    hdr_bytes.copy_from_slice(&vnet.to_bytes());
}

/// A flow: addresses, ports, protocol, IP version.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
struct FlowKey {
    addrs: [u8; 32],
    ports: [u8; 4],
    proto: u8,
    v6: bool,
}

impl FlowKey {
    fn new(pkt: &[u8], v6: bool, proto: u8, l4_off: usize) -> Self {
        let mut addrs = [0u8; 32];
        if v6 {
            let ip = Ipv6Packet::new_unchecked(pkt);
            addrs[..16].copy_from_slice(&ip.src_addr_bytes());
            addrs[16..].copy_from_slice(&ip.dst_addr_bytes());
        } else {
            let ip = Ipv4Packet::new_unchecked(pkt);
            addrs[..4].copy_from_slice(&ip.src_addr_bytes());
            addrs[4..8].copy_from_slice(&ip.dst_addr_bytes());
        }
        // TCP's and UDP's ports are the header's first four bytes.
        let l4 = UdpHeader::new_unchecked(&pkt[l4_off..]);
        let [s0, s1] = l4.src_port().to_be_bytes();
        let [d0, d1] = l4.dst_port().to_be_bytes();
        FlowKey {
            addrs,
            ports: [s0, s1, d0, d1],
            proto,
            v6,
        }
    }

    fn hash(&self) -> u64 {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = u64::from(u32::from_ne_bytes(self.ports))
            | u64::from(self.proto) << 32
            | u64::from(self.v6) << 40;
        for w in self.addrs.chunks_exact(8) {
            h = (h.rotate_left(5) ^ u64::from_ne_bytes(w.try_into().unwrap())).wrapping_mul(K);
        }
        h ^ (h >> 29)
    }
}

/// Flow → newest group of the batch. Open addressing with linear probing, at most half
/// full; entries from earlier batches are recognised by their generation, so starting
/// a batch costs nothing.
struct FlowTable {
    slots: Vec<FlowSlot>,
    generation: u32,
}

#[derive(Clone, Copy, Default)]
struct FlowSlot {
    generation: u32,
    group: u32,
    key: FlowKey,
}

impl FlowTable {
    fn new(capacity: usize) -> Self {
        let size = (capacity.max(1) * 2).next_power_of_two();
        FlowTable {
            slots: vec![FlowSlot::default(); size],
            generation: 0,
        }
    }

    fn begin_batch(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.slots.fill(FlowSlot::default());
            self.generation = 1;
        }
    }

    /// The slot holding `key`, or the empty slot where it belongs. There is always an
    /// empty slot: a batch has at most `capacity` flows in `2 * capacity` slots.
    fn find(&self, key: &FlowKey) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = key.hash() as usize & mask;
        loop {
            let s = &self.slots[i];
            if s.generation != self.generation || s.key == *key {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    fn group(&self, slot: usize) -> Option<u32> {
        let s = &self.slots[slot];
        (s.generation == self.generation).then_some(s.group)
    }

    fn set(&mut self, slot: usize, key: FlowKey, group: u32) {
        self.slots[slot] = FlowSlot {
            generation: self.generation,
            group,
            key,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::testpkt::*;

    type Output = (VirtioNetHdr, Vec<u8>);

    fn run(c: &mut Coalescer, pkts: &[Vec<u8>]) -> Vec<Output> {
        let mut out = vec![0u8; Coalescer::out_len_needed(pkts)];
        let mut spans = vec![0..0; pkts.len()];
        let n = c.coalesce(pkts, &mut out, &mut spans).unwrap();
        let mut end = 0;
        spans[..n]
            .iter()
            .map(|r| {
                assert_eq!(r.start, end, "outputs are packed back to back");
                end = r.end;
                (
                    VirtioNetHdr::parse(&out[r.clone()]).unwrap(),
                    out[r.start + 10..r.end].to_vec(),
                )
            })
            .collect()
    }

    fn gro(pkts: &[Vec<u8>]) -> Vec<Output> {
        run(&mut Coalescer::new(pkts.len().max(1), false), pkts)
    }

    /// Consecutive segments of one flow with the given payload sizes.
    fn segments(ip: &IpSpec, t: &TcpSpec, sizes: &[usize], rng: &mut Rng) -> Vec<Vec<u8>> {
        let mut seq = t.seq;
        sizes
            .iter()
            .map(|&n| {
                let p = tcp_packet(ip, &TcpSpec { seq, ..t.clone() }, &rng.bytes(n));
                seq = seq.wrapping_add(n as u32);
                p
            })
            .collect()
    }

    fn payload_of(p: &[u8]) -> Vec<u8> {
        View::new(p).payload().to_vec()
    }

    /// A pass-through output: all-zero header and the packet byte for byte.
    fn assert_passthrough(o: &Output, pkt: &[u8]) {
        assert_eq!(o.0, VirtioNetHdr::default());
        assert_eq!(o.1, pkt);
    }

    /// A merged TCP output as the kernel expects it from a TUN with TUN_F_CSUM/TSO.
    fn assert_merged_tcp(o: &Output, members: &[Vec<u8>]) {
        let (h, pkt) = o;
        let first = View::new(&members[0]);
        let v = View::new(pkt);
        let hdr_len = first.l4 + first.tcp_header_len();
        assert_eq!(h.flags, 1, "NEEDS_CSUM");
        assert_eq!(h.gso_type & 0x7f, if first.v6 { 4 } else { 1 });
        assert_eq!(
            h.gso_type & 0x80 != 0,
            first.tcp_flags() & CWR != 0,
            "ECN bit iff CWR"
        );
        assert_eq!(usize::from(h.hdr_len), hdr_len);
        assert_eq!(usize::from(h.gso_size), first.payload().len());
        assert_eq!((usize::from(h.csum_start), h.csum_offset), (first.l4, 16));
        assert_eq!(v.ip_len_field(), pkt.len());
        assert!(pkt.len() <= 65535);
        assert!(v.ipv4_header_ok());
        assert!(v.l4_checksum_is_partial());
        assert_eq!(v.seq(), first.seq());
        let last_flags = View::new(members.last().unwrap()).tcp_flags();
        assert_eq!(v.tcp_flags(), first.tcp_flags() | (last_flags & PSH));
        // Headers other than flags, lengths and checksums are the first packet's.
        if first.v6 {
            assert_eq!(pkt[..4], members[0][..4]);
            assert_eq!(pkt[6..40], members[0][6..40]);
        } else {
            assert_eq!(
                pkt[4..10],
                members[0][4..10],
                "IPv4 ID, flags, TTL, protocol"
            );
            assert_eq!(pkt[12..20], members[0][12..20]);
        }
        assert_eq!(
            pkt[first.l4..first.l4 + 13],
            members[0][first.l4..first.l4 + 13]
        );
        assert_eq!(
            pkt[first.l4 + 14..first.l4 + 16],
            members[0][first.l4 + 14..first.l4 + 16]
        );
        assert_eq!(
            pkt[first.l4 + 18..hdr_len],
            members[0][first.l4 + 18..hdr_len]
        );
        let joined: Vec<u8> = members.iter().flat_map(|m| payload_of(m)).collect();
        assert_eq!(v.payload(), &joined[..]);
    }

    #[test]
    fn one_flow_becomes_one_super_packet_v4_and_v6() {
        let mut rng = Rng::new(21);
        for ip in [IpSpec::v4(), IpSpec::v6()] {
            let t = TcpSpec::new(0xffff_fc00);
            let mut pkts = segments(&ip, &t, &[1208; 10], &mut rng);
            let mut last = TcpSpec::new(0xffff_fc00u32.wrapping_add(12080));
            last.flags = ACK | PSH;
            pkts.push(tcp_packet(&ip, &last, &rng.bytes(333)));
            let out = gro(&pkts);
            assert_eq!(out.len(), 1, "v6={}", ip.v6);
            assert_merged_tcp(&out[0], &pkts);
            assert_eq!(View::new(&out[0].1).tcp_flags(), ACK | PSH);
        }
    }

    #[test]
    fn psh_ends_a_group_and_cwr_only_leads() {
        let mut rng = Rng::new(22);
        let ip = IpSpec::v4();
        let mut t = TcpSpec::new(1);
        t.flags = ACK | CWR;
        let mut pkts = segments(&ip, &t, &[1000; 4], &mut rng);
        // Segment 1 has PSH (and no CWR), segments 2 and 3 plain ACK.
        for (i, flags) in [(1, ACK | PSH), (2, ACK), (3, ACK)] {
            let s = TcpSpec {
                seq: 1 + 1000 * i as u32,
                flags,
                ..t.clone()
            };
            pkts[i] = tcp_packet(&ip, &s, &payload_of(&pkts[i]));
        }
        let out = gro(&pkts);
        assert_eq!(out.len(), 2);
        assert_merged_tcp(&out[0], &pkts[..2]);
        assert_eq!(View::new(&out[0].1).tcp_flags(), ACK | PSH | CWR);
        assert_eq!(out[0].0.gso_type, 1 | 0x80);
        assert_merged_tcp(&out[1], &pkts[2..]);

        // A CWR segment cannot be appended.
        let mut pkts = segments(&ip, &TcpSpec::new(1), &[1000; 2], &mut rng);
        let s = TcpSpec {
            seq: 1001,
            flags: ACK | CWR,
            ..TcpSpec::new(0)
        };
        pkts[1] = tcp_packet(&ip, &s, &payload_of(&pkts[1]));
        let out = gro(&pkts);
        assert_eq!(out.len(), 2);
        assert_passthrough(&out[0], &pkts[0]);
        assert_passthrough(&out[1], &pkts[1]);
    }

    #[test]
    fn interleaved_flows_merge_separately_in_first_packet_order() {
        let mut rng = Rng::new(23);
        let ip = IpSpec::v4();
        let a = segments(&ip, &TcpSpec::new(100), &[1200; 3], &mut rng);
        let mut tb = TcpSpec::new(9000);
        tb.sport = 40001;
        let b = segments(&ip, &tb, &[1200; 2], &mut rng);
        let mut ip6 = IpSpec::v6();
        ip6.src[15] = 9;
        let c = segments(&ip6, &TcpSpec::new(5), &[1200; 1], &mut rng);
        let batch = vec![
            a[0].clone(),
            b[0].clone(),
            a[1].clone(),
            b[1].clone(),
            a[2].clone(),
            c[0].clone(),
        ];
        let out = gro(&batch);
        assert_eq!(out.len(), 3);
        assert_merged_tcp(&out[0], &a);
        assert_merged_tcp(&out[1], &b);
        assert_passthrough(&out[2], &c[0]);
    }

    #[test]
    fn packets_that_cannot_merge_close_the_flow_and_keep_order() {
        let mut rng = Rng::new(24);
        let ip = IpSpec::v4();
        let s = segments(&ip, &TcpSpec::new(1), &[1000; 4], &mut rng);
        let pure_ack = tcp_packet(&ip, &TcpSpec::new(2001), b"");
        let batch = vec![
            s[0].clone(),
            s[1].clone(),
            pure_ack.clone(),
            s[2].clone(),
            s[3].clone(),
        ];
        let out = gro(&batch);
        assert_eq!(out.len(), 3);
        assert_merged_tcp(&out[0], &s[..2]);
        assert_passthrough(&out[1], &pure_ack);
        assert_merged_tcp(&out[2], &s[2..]);

        // FIN: passes through after the data before it.
        let mut fin = TcpSpec::new(3001);
        fin.flags = ACK | FIN | PSH;
        let fin = tcp_packet(&ip, &fin, &payload_of(&s[3]));
        let out = gro(&[s[0].clone(), s[1].clone(), s[2].clone(), fin.clone()]);
        assert_eq!(out.len(), 2);
        assert_merged_tcp(&out[0], &s[..3]);
        assert_passthrough(&out[1], &fin);
    }

    #[test]
    fn header_differences_prevent_merging() {
        let mut rng = Rng::new(25);
        let payload = rng.bytes(1000);
        let base_t = TcpSpec::new(1);
        let next_t = TcpSpec::new(1001);
        type Tweak = fn(&mut IpSpec, &mut TcpSpec);
        let cases: &[(&str, bool, Tweak)] = &[
            ("sequence gap", false, |_, t| t.seq += 1),
            ("ack number", false, |_, t| t.ack += 1),
            ("window", false, |_, t| t.window += 1),
            ("timestamp value", false, |_, t| {
                t.options = timestamps(0x0102_0305, 0x0a0b_0c0d)
            }),
            ("option length", false, |_, t| t.options.truncate(8)),
            ("ECE", false, |_, t| t.flags |= ECE),
            ("SYN", false, |_, t| t.flags |= SYN),
            ("RST", false, |_, t| t.flags |= RST),
            ("URG", false, |_, t| t.flags |= URG),
            ("no ACK", false, |_, t| t.flags = PSH),
            ("TTL", false, |ip, _| ip.ttl -= 1),
            ("TOS", false, |ip, _| ip.tos = 4),
            ("DF", false, |ip, _| ip.df = false),
            ("IPv4 options", false, |ip, _| ip.options = vec![1, 1, 1, 1]),
            ("v6 hop limit", true, |ip, _| ip.ttl = 1),
            ("v6 traffic class", true, |ip, _| ip.tos = 0x10),
            ("v6 flow label", true, |ip, _| ip.flow_label ^= 1),
        ];
        for (what, v6, tweak) in cases {
            let base_ip = if *v6 { IpSpec::v6() } else { IpSpec::v4() };
            let (mut ip, mut t) = (base_ip.clone(), next_t.clone());
            tweak(&mut ip, &mut t);
            let pkts = vec![
                tcp_packet(&base_ip, &base_t, &payload),
                tcp_packet(&ip, &t, &payload),
            ];
            let out = gro(&pkts);
            assert_eq!(out.len(), 2, "{what} must prevent merging");
            assert_passthrough(&out[0], &pkts[0]);
            assert_passthrough(&out[1], &pkts[1]);
        }
        // The AE (formerly NS) bit, next to the data offset.
        let mut ae = tcp_packet(&IpSpec::v4(), &next_t, &payload);
        ae[20 + 12] |= 1;
        fix_l4_checksum(&mut ae);
        let pkts = vec![tcp_packet(&IpSpec::v4(), &base_t, &payload), ae];
        assert_eq!(gro(&pkts).len(), 2, "AE bit must prevent merging");
        // Control: unchanged, they do merge.
        let pkts = vec![
            tcp_packet(&IpSpec::v4(), &base_t, &payload),
            tcp_packet(&IpSpec::v4(), &next_t, &payload),
        ];
        assert_eq!(gro(&pkts).len(), 1);
    }

    #[test]
    fn only_the_last_segment_may_be_smaller() {
        let mut rng = Rng::new(26);
        let ip = IpSpec::v6();
        let s = segments(&ip, &TcpSpec::new(1), &[1200, 800, 1200], &mut rng);
        let out = gro(&s);
        assert_eq!(out.len(), 2);
        assert_merged_tcp(&out[0], &s[..2]);
        assert_passthrough(&out[1], &s[2]);
        let s = segments(&ip, &TcpSpec::new(1), &[800, 1200], &mut rng);
        assert_eq!(gro(&s).len(), 2, "a larger segment cannot follow");
    }

    #[test]
    fn super_packets_stay_within_64k() {
        let mut rng = Rng::new(27);
        for ip in [IpSpec::v4(), IpSpec::v6()] {
            let s = segments(&ip, &TcpSpec::new(1), &[1208; 60], &mut rng);
            let out = gro(&s);
            let hdr = if ip.v6 { 72 } else { 52 };
            let first = (65535 - hdr) / 1208;
            assert_eq!(out.len(), 2);
            assert_merged_tcp(&out[0], &s[..first]);
            assert_merged_tcp(&out[1], &s[first..]);
        }
    }

    #[test]
    fn bad_checksums_are_never_merged() {
        let mut rng = Rng::new(28);
        let ip = IpSpec::v4();
        let s = segments(&ip, &TcpSpec::new(1), &[1000; 3], &mut rng);
        let mut bad = s.clone();
        let n = bad[1].len();
        bad[1][n - 1] ^= 1;
        let out = gro(&bad);
        assert_eq!(out.len(), 3);
        for (o, p) in out.iter().zip(&bad) {
            assert_passthrough(o, p);
        }
        let mut bad = s.clone();
        bad[0][n - 1] ^= 1;
        let out = gro(&bad);
        assert_eq!(out.len(), 2);
        assert_passthrough(&out[0], &bad[0]);
        assert_merged_tcp(&out[1], &s[1..]);
        // A corrupt IPv4 header checksum: passes through (the kernel drops it).
        let mut bad = s.clone();
        bad[1][8] = 1;
        let out = gro(&bad);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn non_tcp_and_garbage_pass_through() {
        let mut rng = Rng::new(29);
        let ip = IpSpec::v4();
        let s = segments(&ip, &TcpSpec::new(1), &[1000; 2], &mut rng);
        let udp = udp_packet(&ip, 1, 2, &[5; 100]);
        let mut icmp = udp.clone();
        icmp[9] = 1;
        let mut frag = s[0].clone();
        frag[6] = 0x20;
        let mut v6_ext = tcp_packet(&IpSpec::v6(), &TcpSpec::new(1), &[1; 8]);
        v6_ext[6] = 0; // says hop-by-hop follows
        let batch = vec![
            vec![],
            vec![0x45],
            vec![0x60; 39],
            rng.bytes(1500),
            s[0][..s[0].len() - 1].to_vec(),
            icmp,
            udp,
            frag,
            v6_ext,
            s[0].clone(),
            s[1].clone(),
        ];
        let out = gro(&batch);
        assert_eq!(out.len(), batch.len() - 1);
        for (o, p) in out.iter().zip(&batch[..batch.len() - 2]) {
            assert_passthrough(o, p);
        }
        assert_merged_tcp(&out[batch.len() - 2], &s);
    }

    #[test]
    fn udp_gro_when_enabled() {
        let mut rng = Rng::new(30);
        for ip in [IpSpec::v4(), IpSpec::v6()] {
            let mut pkts: Vec<Vec<u8>> = (0..5)
                .map(|_| udp_packet(&ip, 7, 8, &rng.bytes(1200)))
                .collect();
            pkts.push(udp_packet(&ip, 7, 8, &rng.bytes(300)));
            assert_eq!(gro(&pkts).len(), 6, "UDP GRO is off by default");
            let out = run(&mut Coalescer::new(8, true), &pkts);
            assert_eq!(out.len(), 1);
            let (h, p) = &out[0];
            let v = View::new(p);
            assert_eq!(
                (h.flags, h.gso_type, h.gso_size, h.csum_offset),
                (1, 5, 1200, 6)
            );
            assert_eq!(
                (usize::from(h.csum_start), usize::from(h.hdr_len)),
                (v.l4, v.l4 + 8)
            );
            assert_eq!(v.ip_len_field(), p.len());
            assert!(v.ipv4_header_ok());
            assert_eq!(v.udp_len_field(), p.len() - v.l4);
            assert!(v.l4_checksum_is_partial());
            let joined: Vec<u8> = pkts.iter().flat_map(|m| payload_of(m)).collect();
            assert_eq!(v.payload(), &joined[..]);
        }
        // Zero checksum, size growth, other port: not merged.
        let ip = IpSpec::v4();
        let mut zero = udp_packet(&ip, 7, 8, &[1; 100]);
        zero[26..28].copy_from_slice(&[0, 0]);
        let pkts = vec![
            udp_packet(&ip, 7, 8, &[1; 100]),
            zero,
            udp_packet(&ip, 7, 8, &[1; 100]),
        ];
        assert_eq!(run(&mut Coalescer::new(8, true), &pkts).len(), 3);
        let pkts = vec![
            udp_packet(&ip, 7, 8, &[1; 100]),
            udp_packet(&ip, 7, 8, &[1; 101]),
        ];
        assert_eq!(run(&mut Coalescer::new(8, true), &pkts).len(), 2);
        let pkts = vec![
            udp_packet(&ip, 7, 8, &[1; 100]),
            udp_packet(&ip, 7, 9, &[1; 100]),
        ];
        assert_eq!(run(&mut Coalescer::new(8, true), &pkts).len(), 2);
        // At most 64 datagrams per super-packet.
        let pkts: Vec<Vec<u8>> = (0..70)
            .map(|i| udp_packet(&ip, 7, 8, &[i as u8; 100]))
            .collect();
        let out = run(&mut Coalescer::new(70, true), &pkts);
        assert_eq!(out.len(), 2);
        assert_eq!(View::new(&out[0].1).payload().len(), 6400);
    }

    #[test]
    fn state_does_not_leak_between_batches() {
        let mut rng = Rng::new(31);
        let s = segments(&IpSpec::v4(), &TcpSpec::new(1), &[1000; 4], &mut rng);
        let mut c = Coalescer::new(4, false);
        c.flows.generation = u32::MAX - 1; // also crosses the generation wrap
        for _ in 0..3 {
            assert_eq!(run(&mut c, &s[..2]).len(), 1);
            let out = run(&mut c, &s[2..3]);
            assert_eq!(out.len(), 1);
            assert_passthrough(&out[0], &s[2]);
        }
    }

    #[test]
    fn caller_buffer_errors() {
        let s = segments(
            &IpSpec::v4(),
            &TcpSpec::new(1),
            &[1000; 3],
            &mut Rng::new(32),
        );
        let mut c = Coalescer::new(2, false);
        let mut out = vec![0u8; 10_000];
        let mut spans = vec![0..0; 3];
        assert!(matches!(
            c.coalesce(&s, &mut out, &mut spans),
            Err(OffloadError::BatchTooLarge { .. })
        ));
        let mut c = Coalescer::new(3, false);
        assert!(matches!(
            c.coalesce(&s, &mut out[..3000], &mut spans),
            Err(OffloadError::BufferTooSmall { .. })
        ));
        let garbage = vec![vec![1u8; 10]; 3];
        assert!(matches!(
            c.coalesce(&garbage, &mut out, &mut spans[..2]),
            Err(OffloadError::TooManyOutputs { .. })
        ));
        // Exactly the merged size is enough.
        let need = 10 + 20 + 32 + 3000;
        assert_eq!(
            c.coalesce(&s, &mut out[..need], &mut spans[..1]).unwrap(),
            1
        );
    }

    #[test]
    fn random_batches_never_panic_and_keep_every_byte() {
        let mut rng = Rng::new(33);
        let mut c = Coalescer::new(32, true);
        let mut out = vec![0u8; 32 * 1400];
        let mut spans = vec![0..0; 32];
        for round in 0..3000 {
            let ip = if round % 2 == 0 {
                IpSpec::v4()
            } else {
                IpSpec::v6()
            };
            let mut batch = segments(&ip, &TcpSpec::new(rng.u32()), &[1100; 12], &mut rng);
            batch.extend((0..8).map(|_| udp_packet(&ip, 1, 2, &[3; 900])));
            for _ in 0..rng.below(6) {
                let i = rng.below(batch.len());
                let at = rng.below(batch[i].len());
                batch[i][at] = rng.byte();
                if rng.below(4) == 0 {
                    let keep = rng.below(batch[i].len());
                    batch[i].truncate(keep);
                }
            }
            let n = c.coalesce(&batch, &mut out, &mut spans).unwrap();
            assert!(n >= 1 && n <= batch.len());
            // Payload bytes are conserved: merging only drops repeated headers.
            let in_bytes: usize = batch.iter().map(Vec::len).sum();
            let out_bytes: usize = spans[..n].iter().map(|r| r.len() - 10).sum();
            assert!(out_bytes <= in_bytes);
        }
    }
}
