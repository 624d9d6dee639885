//! Packet workers: one per TUN queue, each with its own UDP socket on the WireGuard
//! port, moving batches between them through the [`PeerTable`].
//!
//! The levers are the kernel's segmentation offloads, not the syscall interface
//! (baselines.md): a TUN read returns up to 64 KB of TCP (TSO), which we split into
//! MTU-sized packets, encrypt, and hand to the kernel as one UDP GSO send; a UDP GRO
//! receive returns up to 64 datagrams of one flow, which we decrypt and merge back into
//! one TUN write. Each direction runs on its own thread with blocking calls, so a
//! worker needs no readiness polling at all.

use crate::offload::{Coalescer, Segmenter, VNET_HDR_LEN};
use crate::sys::{tun::Tun, udp};
use crate::wireguard::{Emit, PeerTable, MIN_OUT_BUF, WG_OVERHEAD};
use parking_lot::Mutex;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::sync::Arc;

/// Largest UDP payload one GSO send may carry (IPv4 limit, less headers).
const GSO_MAX_BYTES: usize = 65_000;
/// Most segments the kernel accepts in one UDP GSO send (UDP_MAX_SEGMENTS).
const GSO_MAX_SEGMENTS: usize = 64;
/// Largest IP packet or datagram.
const MAX_PACKET: usize = 65_535;

/// What the kernel agreed to do for us, probed once at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// TUN has IFF_VNET_HDR and accepted TSO: reads may be 64 KB super-packets and
    /// writes may be coalesced.
    pub tun_tso: bool,
    /// TUN accepted USO: UDP super-packets both ways.
    pub tun_uso: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
}

/// The current peer table, replaced whole on reconfiguration.
pub type TableSlot = Mutex<Arc<PeerTable>>;

fn table(slot: &TableSlot) -> Arc<PeerTable> {
    slot.lock().clone()
}

fn send_plain(sock: &UdpSocket, is_v6: bool, to: SocketAddr, wire: &[u8]) {
    if let Err(e) = sock.send_to(wire, udp::for_socket(is_v6, to)) {
        log::debug!("send to {to}: {e}");
    }
}

/// Encrypted packets for one endpoint, laid out back to back for one GSO send. UDP GSO
/// needs every segment but the last to have the same size.
struct GsoBatch {
    buf: Vec<u8>,
    len: usize,
    segment: usize,
    count: usize,
    to: Option<SocketAddr>,
    /// The last segment was shorter: nothing more may follow it.
    closed: bool,
}

impl GsoBatch {
    fn new() -> GsoBatch {
        GsoBatch {
            buf: vec![0; 2 * MAX_PACKET],
            len: 0,
            segment: 0,
            count: 0,
            to: None,
            closed: false,
        }
    }

    /// Where the next packet is encrypted to.
    fn tail(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Whether a packet of `wire` bytes for `to`, already written at the tail, can
    /// join the batch.
    fn fits(&self, to: SocketAddr, wire: usize, gso: bool) -> bool {
        if self.count == 0 {
            return true;
        }
        gso && !self.closed
            && self.to == Some(to)
            && wire <= self.segment
            && self.count < GSO_MAX_SEGMENTS
            && self.len + wire <= GSO_MAX_BYTES
    }

    fn push(&mut self, to: SocketAddr, wire: usize) {
        if self.count == 0 {
            self.segment = wire;
            self.to = Some(to);
        } else if wire < self.segment {
            self.closed = true;
        }
        self.len += wire;
        self.count += 1;
    }

    fn flush(&mut self, sock: &UdpSocket, is_v6: bool) {
        if let Some(to) = self.to.filter(|_| self.count > 0) {
            let dst = udp::for_socket(is_v6, to);
            let seg = if self.count > 1 {
                self.segment as u16
            } else {
                0
            };
            if let Err(e) = udp::send_segmented(sock, dst, &self.buf[..self.len], seg) {
                log::debug!("send {} packets to {to}: {e}", self.count);
            }
        }
        self.len = 0;
        self.count = 0;
        self.closed = false;
        self.to = None;
    }

    /// Sends the batch before a packet that did not join it (written at `wire_at`),
    /// and starts a new batch with that packet.
    fn restart_with(
        &mut self,
        wire_at: usize,
        wire: usize,
        to: SocketAddr,
        sock: &UdpSocket,
        is_v6: bool,
    ) {
        self.flush(sock, is_v6);
        self.buf.copy_within(wire_at..wire_at + wire, 0);
        self.push(to, wire);
    }

    /// Room left at the tail.
    fn room(&self) -> usize {
        self.buf.len() - self.len
    }
}

/// TUN → network: read, segment, encrypt, send in GSO batches.
pub fn tun_to_network(slot: &TableSlot, tun: &Tun, sock: &UdpSocket, off: Offloads) {
    let is_v6 = sock.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    let mut read = vec![0u8; VNET_HDR_LEN + MAX_PACKET];
    let mut segment = vec![0u8; MAX_PACKET];
    let mut batch = GsoBatch::new();
    loop {
        let n = match tun.read(&mut read) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("read from {}: {e}; packet path stopped", tun.name());
                return;
            }
        };
        let table = table(slot);
        let encrypt = |pkt: &[u8], batch: &mut GsoBatch| {
            // boringtun needs the packet plus its overhead, and a whole handshake
            // message, at the tail.
            if batch.room() < pkt.len() + WG_OVERHEAD + MIN_OUT_BUF {
                batch.flush(sock, is_v6);
            }
            let mut sent: Option<(SocketAddr, usize)> = None;
            table.encapsulate(pkt, batch.tail(), &mut |e| {
                if let Emit::Network(to, wire) = e {
                    sent = Some((to, wire.len()));
                }
            });
            if let Some((to, wire)) = sent {
                if batch.fits(to, wire, off.udp_gso) {
                    batch.push(to, wire);
                } else {
                    let at = batch.len;
                    batch.restart_with(at, wire, to, sock, is_v6);
                }
                if !off.udp_gso || batch.closed || batch.count >= GSO_MAX_SEGMENTS {
                    batch.flush(sock, is_v6);
                }
            }
        };
        if off.tun_tso {
            let seg = match Segmenter::from_tun_read(&read[..n]) {
                Ok(s) => s,
                Err(e) => {
                    log::debug!("dropping packet from {}: {e}", tun.name());
                    continue;
                }
            };
            for i in 0..seg.segment_count() {
                match seg.write_segment(i, &mut segment) {
                    Ok(len) => encrypt(&segment[..len], &mut batch),
                    Err(e) => {
                        log::debug!("segmenting: {e}");
                        break;
                    }
                }
            }
        } else {
            encrypt(&read[..n], &mut batch);
        }
        batch.flush(sock, is_v6);
    }
}

/// Network → TUN: receive GRO batches, decrypt, coalesce, write.
pub fn network_to_tun(slot: &TableSlot, tun: &Tun, sock: &UdpSocket, off: Offloads) {
    let is_v6 = sock.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    let mut recv = vec![0u8; MAX_PACKET];
    // Decrypted packets of one receive, back to back; at most the datagrams' size.
    let mut plain = vec![0u8; 2 * MAX_PACKET];
    let mut spans: Vec<Range<usize>> = Vec::with_capacity(GSO_MAX_SEGMENTS);
    let mut gro = Coalescer::new(GSO_MAX_SEGMENTS, off.tun_uso);
    let mut merged = vec![0u8; 2 * MAX_PACKET + GSO_MAX_SEGMENTS * VNET_HDR_LEN];
    let mut merged_spans: Vec<Range<usize>> = vec![0..0; GSO_MAX_SEGMENTS];
    loop {
        let (n, from, seg) = match udp::recv_segmented(sock, &mut recv) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // ICMP-induced errors and the like must not stop the receive path.
                log::debug!("udp receive: {e}");
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
        };
        let from = udp::canonical(from);
        let table = table(slot);
        let seg = if seg == 0 { n.max(1) } else { seg };
        spans.clear();
        let mut used = 0;
        for dgram in recv[..n].chunks(seg) {
            let base = plain.as_ptr() as usize;
            table.decapsulate(from, dgram, &mut plain[used..], &mut |e| match e {
                Emit::Network(to, wire) => send_plain(sock, is_v6, to, wire),
                Emit::Tun(pkt) => {
                    let start = pkt.as_ptr() as usize - base;
                    spans.push(start..start + pkt.len());
                }
            });
            if let Some(last) = spans.last() {
                used = used.max(last.end);
            }
        }
        if spans.is_empty() {
            continue;
        }
        if off.tun_tso {
            let packets: Vec<&[u8]> = spans.iter().map(|r| &plain[r.clone()]).collect();
            match gro.coalesce(&packets, &mut merged, &mut merged_spans) {
                Ok(count) => {
                    for r in &merged_spans[..count] {
                        if let Err(e) = tun.write(&merged[r.clone()]) {
                            log::debug!("write to {}: {e}", tun.name());
                        }
                    }
                }
                Err(e) => log::debug!("coalescing: {e}"),
            }
        } else {
            for r in &spans {
                if let Err(e) = tun.write(&plain[r.clone()]) {
                    log::debug!("write to {}: {e}", tun.name());
                }
            }
        }
    }
}
