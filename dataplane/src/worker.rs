//! Packet workers: one per TUN queue, each with its own UDP socket on the WireGuard
//! port, moving batches between them through the [`PeerTable`].
//!
//! The levers are the kernel's segmentation offloads, not the syscall interface
//! (baselines.md): a TUN read returns up to 64 KB of TCP (TSO), which we split into
//! MTU-sized packets, encrypt, and hand to the kernel as one UDP GSO send; a UDP GRO
//! receive returns up to 64 datagrams of one flow, which we decrypt and merge back into
//! one TUN write. Both batches are also the cipher's: a run's segments are sealed
//! together just before it is sent ([`Sealer`]), a receive's datagrams opened together
//! ([`PeerTable::decapsulate_batch`]).
//!
//! This module is the packet core both I/O backends share, and the simpler backend:
//! * [`Encryptor`] turns one TUN read into GSO runs of encrypted datagrams, written into
//!   buffers a [`Transmit`] implementation owns and sent by it;
//! * [`Decryptor`] turns one UDP receive (a GRO batch) into TUN writes in a buffer the
//!   caller owns;
//! * both take the time as an argument, read by the backend once per batch, and hand
//!   what is neither a datagram of theirs nor a TUN write (DERP relaying, disco/STUN,
//!   quad-100) to the caller, which passes it to the engine's [`Diverted`];
//! * the `epoll` backend ([`tun_to_network`], [`network_to_tun`]): two threads per
//!   worker with blocking syscalls. It is named `epoll` on the command line because
//!   that is the name users know for "plain syscalls, no io_uring"; blocking threads
//!   need no readiness polling at all, and each direction gets its own thread. TUN
//!   reads come in batches all the same: a blocking read, then what is queued already
//!   (read without waiting), all sent together;
//! * the `io_uring` backend lives in `uring.rs` and calls the same core.

use crate::offload::{Coalescer, OffloadError, Segmenter, VNET_HDR_LEN};
use crate::wireguard::{
    BatchKeys, Drops, Emit, LocalService, LookupMemo, OffPath, OpenBatch, PeerTable, DATA_HEADER,
    MIN_OUT_BUF, WG_OVERHEAD,
};
use parking_lot::Mutex;
use ringscale_aead::SealJob;
use ringscale_sys::{tun::Tun, udp};
use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Largest UDP payload one GSO send may carry (IPv4 limit, less headers).
pub(crate) const GSO_MAX_BYTES: usize = 65_000;
/// Most segments the kernel accepts in one UDP GSO send (UDP_MAX_SEGMENTS), and most
/// datagrams one UDP GRO receive returns (UDP_GRO_CNT_MAX).
pub(crate) const GSO_MAX_SEGMENTS: usize = 64;
/// Largest IP packet or datagram.
pub(crate) const MAX_PACKET: usize = 65_535;
/// Size of one transmit buffer: room for the output of a whole 64 KB TUN read (MTU-sized
/// segments grow by their headers and the WireGuard overhead) with space to spare.
pub const TX_BUFFER: usize = 2 * MAX_PACKET;
/// Size of the buffer a receive is decrypted (and coalesced) into: the decrypted
/// packets are smaller than the datagrams, plus one virtio_net_hdr per packet.
pub const RX_OUT_BUFFER: usize = 2 * MAX_PACKET + GSO_MAX_SEGMENTS * VNET_HDR_LEN;

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

/// Which packet I/O backend the workers use (daemon flag `--io`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring if the kernel allows it, else epoll.
    #[default]
    Auto,
    /// One io_uring per worker; refuse to start without it.
    IoUring,
    /// Plain syscalls on blocking threads, two per worker.
    Epoll,
}

impl IoBackend {
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::IoUring => "io_uring",
            IoBackend::Epoll => "epoll",
        }
    }
}

impl fmt::Display for IoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for IoBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoBackend::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(IoBackend::IoUring),
            "epoll" => Ok(IoBackend::Epoll),
            _ => Err(format!(
                "unknown I/O backend {s:?}: want auto, io_uring or epoll"
            )),
        }
    }
}

/// Decides the backend from what was asked and whether io_uring works here
/// (`uring_probe`: Ok, or why not). Returns the backend and, when `auto` fell back, the
/// reason to log. Asking for io_uring where it does not work is an error: a user who
/// forces it wants to know.
pub fn choose_backend(
    wanted: IoBackend,
    uring_probe: impl FnOnce() -> Result<(), String>,
) -> Result<(IoBackend, Option<String>), String> {
    match wanted {
        IoBackend::Epoll => Ok((IoBackend::Epoll, None)),
        IoBackend::IoUring => match uring_probe() {
            Ok(()) => Ok((IoBackend::IoUring, None)),
            Err(why) => Err(format!("io_uring backend unavailable: {why}")),
        },
        IoBackend::Auto => match uring_probe() {
            Ok(()) => Ok((IoBackend::IoUring, None)),
            Err(why) => Ok((IoBackend::Epoll, Some(why))),
        },
    }
}

/// The current peer table, replaced whole on reconfiguration.
pub type TableSlot = Mutex<Arc<PeerTable>>;

/// Where the engine sends the packet path's outputs that are neither a UDP datagram
/// of a worker nor a TUN write: WireGuard messages relayed through DERP and disco/STUN
/// datagrams go to the control thread ([`OffPath`], attached once it runs: until then
/// they are dropped, as plain WireGuard would), packets for quad-100 to the
/// [`LocalService`]. One per engine, shared by its workers, timer thread and itself.
pub struct Diverted {
    off_path: OnceLock<Arc<dyn OffPath>>,
    local: OnceLock<Arc<dyn LocalService>>,
    drops: Arc<Drops>,
}

impl Diverted {
    /// `drops`: where to count what finds no handler.
    pub fn new(drops: Arc<Drops>) -> Diverted {
        Diverted {
            off_path: OnceLock::new(),
            local: OnceLock::new(),
            drops,
        }
    }

    /// Attaches the control thread (once; later calls are ignored).
    pub fn set_off_path(&self, hook: Arc<dyn OffPath>) {
        let _ = self.off_path.set(hook);
    }

    /// Attaches the in-process service (once; later calls are ignored).
    pub fn set_local(&self, svc: Arc<dyn LocalService>) {
        let _ = self.local.set(svc);
    }

    /// Carries out `out` if it is one of this sink's kinds ([`Emit::Relay`],
    /// [`Emit::OffPath`], [`Emit::Local`]); gives back the others (datagrams and TUN
    /// writes, the caller's own).
    pub fn take<'a>(&self, out: Emit<'a>) -> Option<Emit<'a>> {
        match out {
            Emit::Relay {
                peer,
                region,
                packet,
            } => match self.off_path.get() {
                Some(h) => h.relay(&peer, region, packet),
                None => {
                    self.drops.no_endpoint.fetch_add(1, Ordering::Relaxed);
                }
            },
            Emit::OffPath(from, datagram) => match self.off_path.get() {
                Some(h) => h.non_wireguard(from, datagram),
                None => {
                    self.drops.invalid.fetch_add(1, Ordering::Relaxed);
                }
            },
            Emit::Local(pkt) => {
                if let Some(svc) = self.local.get() {
                    svc.deliver(pkt);
                }
            }
            other => return Some(other),
        }
        None
    }

    /// [`Diverted::take`] where only this sink's kinds can come (anything else would be
    /// a bug: logged and dropped).
    pub fn divert(&self, out: Emit<'_>) {
        if let Some(other) = self.take(out) {
            log::debug!("packet path output with no handler here: {other:?}");
        }
    }
}

pub(crate) fn table(slot: &TableSlot) -> Arc<PeerTable> {
    slot.lock().clone()
}

/// Did the kernel refuse a UDP GSO send for a reason that will not go away (EIO: the
/// route's device cannot checksum for us, e.g. through IPsec)? Then GSO is switched off
/// for the worker, as the kernel's own tools do.
pub(crate) fn gso_refused(errno: i32) -> bool {
    errno == libc::EIO
}

// ---------------------------------------------------------------------------
// The packet core, TUN → network.

/// Encrypted datagrams for one endpoint, back to back in a transmit buffer, for one
/// send: `segment`-byte datagrams (the last may be shorter), or one datagram when
/// `segment` is 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GsoRun {
    pub to: SocketAddr,
    pub range: Range<usize>,
    pub segment: u16,
    pub count: usize,
}

/// The I/O half of the TUN → network direction: owns the buffers datagrams are
/// encrypted into, and sends them.
pub trait Transmit {
    /// The buffer the core encrypts into.
    fn buffer(&mut self) -> &mut [u8];
    /// Sends `run`, a part of [`Transmit::buffer`]. Those bytes stay untouched by the
    /// core until the transmitter says so (by `rewind` or `next_buffer`).
    fn send(&mut self, run: GsoRun);
    /// Called before each TUN read is processed: may the core write the buffer from its
    /// start again (every run handed over has left)?
    fn rewind(&mut self) -> bool;
    /// The buffer has too little room left: switch to an empty one. false when none is
    /// free now; the packet is then dropped.
    fn next_buffer(&mut self) -> bool;
    /// May runs have more than one datagram (UDP GSO)?
    fn gso(&self) -> bool;
}

/// Per-worker state of the TUN → network direction: split what one TUN read holds
/// into packets, encrypt each for its peer, and group the results into GSO runs.
pub struct Encryptor {
    batch: Batch,
}

/// The run being built, as positions in the transmitter's buffer.
struct Batch {
    start: usize,
    end: usize,
    segment: usize,
    count: usize,
    to: Option<SocketAddr>,
    /// The last datagram was shorter: UDP GSO allows nothing after it.
    closed: bool,
    sealer: Sealer,
}

/// Datagrams of the open run whose headers are written but which are not sealed yet:
/// the segments of super-packets, sealed together just before the run is sent
/// ([`TransportKey::seal_batch`] runs eight or sixteen packets of one key side by side,
/// ~30 % less cipher time per 1280-byte packet than one at a time).
struct Sealer {
    /// The segments' plaintext, back to back (the segmenter writes them here).
    plain: Box<[u8]>,
    plain_end: usize,
    jobs: Vec<SealJob>,
    /// Per job, its key's index in `keys`.
    job_keys: Vec<usize>,
    keys: BatchKeys,
}

impl Sealer {
    /// `plain_len`: room for the pending plaintext. A run holds at most
    /// [`GSO_MAX_BYTES`] on the wire, so [`MAX_PACKET`] is never short: its pending
    /// segments are sealed when the run is sent. (Should it be, what is pending is
    /// sealed early: harmless.)
    fn new(plain_len: usize) -> Sealer {
        Sealer {
            plain: vec![0; plain_len].into_boxed_slice(),
            plain_end: 0,
            jobs: Vec::with_capacity(2 * GSO_MAX_SEGMENTS),
            job_keys: Vec::with_capacity(2 * GSO_MAX_SEGMENTS),
            keys: BatchKeys::default(),
        }
    }

    /// Seals every pending datagram into `dst` (the transmit buffer), by runs of one key.
    fn seal(&mut self, dst: &mut [u8]) {
        let mut i = 0;
        while i < self.jobs.len() {
            let key = self.job_keys[i];
            let n = self.job_keys[i..].iter().take_while(|&&k| k == key).count();
            self.keys
                .get(key)
                .seal_batch(&self.plain, dst, &self.jobs[i..i + n]);
            i += n;
        }
        self.jobs.clear();
        self.job_keys.clear();
        self.keys.clear();
        self.plain_end = 0;
    }
}

impl Default for Encryptor {
    fn default() -> Self {
        Self::new()
    }
}

impl Encryptor {
    pub fn new() -> Encryptor {
        Self::with_plain_buffer(MAX_PACKET)
    }

    fn with_plain_buffer(plain_len: usize) -> Encryptor {
        Encryptor {
            batch: Batch {
                start: 0,
                end: 0,
                segment: 0,
                count: 0,
                to: None,
                closed: false,
                sealer: Sealer::new(plain_len),
            },
        }
    }

    /// Handles one TUN read at `now` (starting with its virtio_net_hdr when `tun_tso`):
    /// every packet in it is encrypted and handed to `tx` in as few runs as UDP GSO
    /// allows. What does not leave as a datagram of a run (messages relayed through
    /// DERP, packets for quad-100) goes to `divert` at once.
    pub fn process(
        &mut self,
        table: &PeerTable,
        now: Instant,
        read: &[u8],
        tun_tso: bool,
        tx: &mut impl Transmit,
        divert: &mut dyn FnMut(Emit<'_>),
    ) {
        self.process_more(table, now, read, tun_tso, tx, divert);
        self.flush(tx);
    }

    /// As [`Encryptor::process`], but the last run stays open so that the packets of
    /// the next read can join it: without TSO every read is one packet, and a backend
    /// that has several reads completed at once sends them with one GSO send instead
    /// of one each. The caller must [`Encryptor::flush`] after its last read.
    pub fn process_more(
        &mut self,
        table: &PeerTable,
        now: Instant,
        read: &[u8],
        tun_tso: bool,
        tx: &mut impl Transmit,
        divert: &mut dyn FnMut(Emit<'_>),
    ) {
        // Writing from the buffer's start again is only possible with no run open.
        if self.batch.count == 0 && tx.rewind() {
            self.batch.restart();
        }
        let mut memo = LookupMemo::default();
        if tun_tso {
            let seg = match Segmenter::from_tun_read(read) {
                Ok(s) => s,
                Err(e) => {
                    log::debug!("dropping packet from the TUN: {e}");
                    return;
                }
            };
            for i in 0..seg.segment_count() {
                if let Err(e) = self
                    .batch
                    .encrypt_segment(table, &mut memo, now, &seg, i, tx, divert)
                {
                    log::debug!("segmenting: {e}");
                    break;
                }
            }
        } else {
            self.batch.encrypt(table, &mut memo, now, read, tx, divert);
        }
    }

    /// Sends the open run, if any.
    pub fn flush(&mut self, tx: &mut impl Transmit) {
        self.batch.flush(tx);
    }
}

impl Batch {
    /// Starts over at the buffer's start (nothing pending).
    fn restart(&mut self) {
        debug_assert!(self.sealer.jobs.is_empty());
        self.start = 0;
        self.end = 0;
        self.count = 0;
        self.closed = false;
        self.to = None;
    }

    /// Makes room for a packet of `len` bytes behind the open run (sending it and
    /// switching buffers if need be); false when there is none (drop the packet).
    fn make_room(&mut self, len: usize, tx: &mut impl Transmit) -> bool {
        // boringtun needs the packet plus its overhead, and a whole handshake message,
        // at the tail.
        let need = len + WG_OVERHEAD + MIN_OUT_BUF;
        if tx.buffer().len().saturating_sub(self.end) < need {
            self.flush(tx);
            if !tx.next_buffer() {
                log::debug!("no transmit buffer free: dropping a packet");
                return false;
            }
            self.restart();
            return tx.buffer().len() >= need;
        }
        true
    }

    /// Encrypts `pkt` (the caller's buffer: sealed at once).
    fn encrypt<'t>(
        &mut self,
        table: &'t PeerTable,
        memo: &mut LookupMemo<'t>,
        now: Instant,
        pkt: &[u8],
        tx: &mut impl Transmit,
        divert: &mut dyn FnMut(Emit<'_>),
    ) {
        if !self.make_room(pkt.len(), tx) {
            return;
        }
        let buf = tx.buffer();
        let base = buf.as_ptr() as usize;
        let mut sent: Option<(SocketAddr, usize, usize)> = None;
        table.encapsulate_with(memo, now, pkt, &mut buf[self.end..], &mut |e| match e {
            Emit::Network(to, wire) => {
                sent = Some((to, wire.as_ptr() as usize - base, wire.len()));
            }
            other => divert(other),
        });
        if let Some((to, at, wire)) = sent {
            self.add(to, at, wire, tx);
        }
    }

    /// Encrypts segment `i` of a super-packet: written into the sealer's buffer, its
    /// header now, its sealing when the run is sent. Err: the segment cannot be made.
    #[allow(clippy::too_many_arguments)]
    fn encrypt_segment<'t>(
        &mut self,
        table: &'t PeerTable,
        memo: &mut LookupMemo<'t>,
        now: Instant,
        seg: &Segmenter,
        i: usize,
        tx: &mut impl Transmit,
        divert: &mut dyn FnMut(Emit<'_>),
    ) -> Result<(), OffloadError> {
        if !self.make_room(seg.segment_len(i), tx) {
            return Ok(());
        }
        let sealer = &mut self.sealer;
        if sealer.plain.len() - sealer.plain_end < seg.segment_len(i) {
            sealer.seal(tx.buffer());
        }
        let at = sealer.plain_end;
        let len = seg.write_segment(i, &mut sealer.plain[at..])?;
        let buf = tx.buffer();
        let base = buf.as_ptr() as usize;
        let mut sent: Option<(SocketAddr, usize, usize)> = None;
        let deferred = table.encapsulate_deferred(
            memo,
            now,
            &sealer.plain[at..at + len],
            &mut buf[self.end..],
            &mut sealer.keys,
            &mut |e| match e {
                Emit::Network(to, wire) => {
                    sent = Some((to, wire.as_ptr() as usize - base, wire.len()));
                }
                other => divert(other),
            },
        );
        if let Some(d) = deferred {
            sealer.jobs.push(SealJob {
                counter: d.counter,
                plaintext: at..at + len,
                out_start: self.end + DATA_HEADER,
            });
            sealer.job_keys.push(d.key);
            sealer.plain_end = at + len;
            sent = Some((d.to, self.end, len + WG_OVERHEAD));
        }
        if let Some((to, at, wire)) = sent {
            self.add(to, at, wire, tx);
        }
        Ok(())
    }

    /// Adds the datagram boringtun wrote at `at` (`wire` bytes, for `to`) to the run.
    fn add(&mut self, to: SocketAddr, at: usize, wire: usize, tx: &mut impl Transmit) {
        if at != self.end {
            // boringtun writes at the start of the buffer it is given; should that ever
            // change, keep the run contiguous anyway (never for a deferred seal: its
            // header is ours).
            tx.buffer().copy_within(at..at + wire, self.end);
        }
        let gso = tx.gso();
        if !self.fits(to, wire, gso) {
            self.flush(tx);
        }
        if self.count == 0 {
            self.segment = wire;
            self.to = Some(to);
        } else if wire < self.segment {
            self.closed = true;
        }
        self.end += wire;
        self.count += 1;
        if !gso || self.closed || self.count >= GSO_MAX_SEGMENTS {
            self.flush(tx);
        }
    }

    /// Can a datagram of `wire` bytes for `to` join the run?
    fn fits(&self, to: SocketAddr, wire: usize, gso: bool) -> bool {
        if self.count == 0 {
            return true;
        }
        gso && !self.closed
            && self.to == Some(to)
            && wire <= self.segment
            && self.count < GSO_MAX_SEGMENTS
            && self.end - self.start + wire <= GSO_MAX_BYTES
    }

    /// Seals what is pending and hands the run to the transmitter; the next run starts
    /// where it ended. (A datagram written behind the run may be sealed too: harmless.)
    fn flush(&mut self, tx: &mut impl Transmit) {
        if !self.sealer.jobs.is_empty() {
            self.sealer.seal(tx.buffer());
        }
        if let Some(to) = self.to.filter(|_| self.count > 0) {
            let segment = if self.count > 1 {
                self.segment as u16
            } else {
                0
            };
            tx.send(GsoRun {
                to,
                range: self.start..self.end,
                segment,
                count: self.count,
            });
        }
        self.start = self.end;
        self.count = 0;
        self.closed = false;
        self.to = None;
    }
}

// ---------------------------------------------------------------------------
// The packet core, network → TUN.

/// Per-worker state of the network → TUN direction: decrypt the datagrams of one
/// receive and, with TUN offload, coalesce them into super-packets.
pub struct Decryptor {
    /// Decrypted packets of one receive, back to back (only when coalescing: otherwise
    /// they are decrypted straight into the caller's buffer).
    plain: Box<[u8]>,
    spans: Vec<Range<usize>>,
    gro: Coalescer,
    /// The coalescer's outputs, as positions in the caller's buffer.
    merged: Vec<Range<usize>>,
    /// Reused allocation for the coalescer's list of packets (empty between calls).
    packets: Vec<&'static [u8]>,
    /// The data packets of one receive, opened together.
    opens: OpenBatch,
}

/// Reuses a vector's allocation for references of another lifetime. The standard
/// library collects a mapped `IntoIter` in place when the element layout is the same,
/// which it is here; at worst this would allocate.
fn recycle<'b>(mut v: Vec<&[u8]>) -> Vec<&'b [u8]> {
    v.clear();
    v.into_iter()
        .map(|_| -> &'b [u8] { unreachable!() })
        .collect()
}

impl Decryptor {
    /// `tun_uso`: the TUN takes UDP super-packets, so UDP is coalesced too.
    pub fn new(tun_uso: bool) -> Decryptor {
        Decryptor {
            plain: vec![0; 2 * MAX_PACKET].into_boxed_slice(),
            spans: Vec::with_capacity(GSO_MAX_SEGMENTS),
            gro: Coalescer::new(GSO_MAX_SEGMENTS, tun_uso),
            merged: vec![0..0; GSO_MAX_SEGMENTS],
            packets: Vec::with_capacity(GSO_MAX_SEGMENTS),
            opens: OpenBatch::with_capacity(GSO_MAX_SEGMENTS),
        }
    }

    /// Handles one receive from `from`: `data` is one datagram, or with `segment` > 0 a
    /// GRO batch of `segment`-byte datagrams. What goes to the TUN is written into `out`
    /// (at least [`RX_OUT_BUFFER`] bytes; with a virtio_net_hdr in front when
    /// `tun_tso`), one write each, at the positions pushed to `writes` (cleared
    /// first). Everything else goes to `other` at once: datagrams WireGuard answers with
    /// (handshakes, cookies: [`Emit::Network`]), and what leaves the packet path
    /// (relayed handshakes, disco/STUN).
    #[allow(clippy::too_many_arguments)]
    pub fn process(
        &mut self,
        table: &PeerTable,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        segment: usize,
        tun_tso: bool,
        out: &mut [u8],
        writes: &mut Vec<Range<usize>>,
        other: &mut impl FnMut(Emit<'_>),
    ) {
        writes.clear();
        let dst: &mut [u8] = if tun_tso { &mut self.plain } else { out };
        let spans = if tun_tso {
            &mut self.spans
        } else {
            &mut *writes
        };
        spans.clear();
        let base = dst.as_ptr() as usize;
        let mut memo = LookupMemo::default();
        table.decapsulate_batch(
            &mut memo,
            now,
            from,
            data,
            segment,
            dst,
            &mut self.opens,
            &mut |e| match e {
                Emit::Tun(pkt) => {
                    let start = pkt.as_ptr() as usize - base;
                    spans.push(start..start + pkt.len());
                }
                e => other(e),
            },
        );
        if !tun_tso || self.spans.is_empty() {
            return;
        }
        // The coalescer takes at most GSO_MAX_SEGMENTS packets at a time; a GRO receive
        // never holds more, but a bigger batch must not lose packets either.
        let mut packets = recycle(std::mem::take(&mut self.packets));
        let mut pos = 0;
        for chunk in self.spans.chunks(GSO_MAX_SEGMENTS) {
            packets.clear();
            packets.extend(chunk.iter().map(|r| &self.plain[r.clone()]));
            match self
                .gro
                .coalesce(&packets, &mut out[pos..], &mut self.merged)
            {
                Ok(count) => {
                    for r in &self.merged[..count] {
                        writes.push(pos + r.start..pos + r.end);
                    }
                    pos = writes.last().map_or(pos, |r| r.end);
                }
                Err(e) => log::debug!("coalescing: {e}"),
            }
        }
        self.packets = recycle(packets);
    }
}

// ---------------------------------------------------------------------------
// The epoll backend: two blocking threads per worker.

fn send_plain(sock: &UdpSocket, is_v6: bool, to: SocketAddr, wire: &[u8]) {
    if let Err(e) = sock.send_to(wire, udp::for_socket(is_v6, to)) {
        log::debug!("send to {to}: {e}");
    }
}

/// Sends each run at once with one sendmsg, so the buffer is free again right after.
struct SyscallTx<'a> {
    sock: &'a UdpSocket,
    is_v6: bool,
    buf: Box<[u8]>,
    gso: bool,
}

impl Transmit for SyscallTx<'_> {
    fn buffer(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    fn send(&mut self, run: GsoRun) {
        let dst = udp::for_socket(self.is_v6, run.to);
        let data = &self.buf[run.range.clone()];
        let Err(e) = udp::send_segmented(self.sock, dst, data, run.segment) else {
            return;
        };
        if run.segment > 0 && e.raw_os_error().is_some_and(gso_refused) {
            log::warn!("kernel refused a UDP GSO send ({e}); sending datagrams one by one");
            self.gso = false;
            for d in data.chunks(usize::from(run.segment)) {
                send_plain(self.sock, self.is_v6, run.to, d);
            }
        } else {
            log::debug!("send {} packets to {}: {e}", run.count, run.to);
        }
    }

    fn rewind(&mut self) -> bool {
        true
    }

    fn next_buffer(&mut self) -> bool {
        true
    }

    fn gso(&self) -> bool {
        self.gso
    }
}

/// TUN → network on a blocking thread: read, segment, encrypt, send in GSO batches.
///
/// Each batch is one blocking read and then up to [`READ_BATCH`] − 1 more of what is
/// queued already (see [`TunQueue`]); the packets of all of them go through one
/// [`Encryptor`] run, sent when the batch ends, so small packets (no TSO: one per read)
/// that arrived together leave in one UDP GSO send instead of one sendmsg each, as on
/// the io_uring backend. The thread waits only in that first read, inside the kernel,
/// and ends when a read fails for good: the TUN went away, which is also how the
/// engine stops it (it sets `stop` and deletes the interface). Relayed messages and
/// quad-100 packets go to `diverted`.
pub fn tun_to_network(
    slot: &TableSlot,
    tun: &Tun,
    sock: &UdpSocket,
    off: Offloads,
    stop: &AtomicBool,
    diverted: &Diverted,
) {
    let mut tx = SyscallTx {
        sock,
        is_v6: sock.local_addr().map(|a| a.is_ipv6()).unwrap_or(false),
        buf: vec![0; TX_BUFFER].into_boxed_slice(),
        gso: off.udp_gso,
    };
    let e = encrypt_batches(
        &mut TunQueue::new(tun),
        slot,
        off.tun_tso,
        &mut tx,
        &mut |e| diverted.divert(e),
    );
    if !stop.load(Ordering::Relaxed) {
        log::error!("read from {}: {e}; packet path stopped", tun.name());
    }
}

/// Most TUN reads in one batch: as many datagrams as one GSO send takes, so small
/// packets fill whole sends. The bound makes a queue that never runs empty still send
/// its open run and pick up a new peer table now and then.
///
/// The transmit buffer's room is no bound here, unlike on io_uring: [`SyscallTx`]
/// sends each run before it returns, so when a packet does not fit behind the open
/// run the core sends that run and starts the buffer over (`next_buffer` is always
/// true); a batch can be any size.
const READ_BATCH: usize = GSO_MAX_SEGMENTS;

/// Where the TUN → network thread reads: the TUN queue ([`TunQueue`]), or in tests a
/// script of reads.
trait ReadSource {
    /// The next packet, waiting for it.
    fn read_wait(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// The next packet if one is queued already; None if not, or if reading failed
    /// (an error that lasts is reported by the next `read_wait`).
    fn read_queued(&mut self, buf: &mut [u8]) -> Option<usize>;
}

/// A TUN queue read in batches with plain syscalls.
///
/// The thread blocks in read(2) itself, no readiness polling: the descriptor stays
/// blocking. What else is queued once that read returns is read without waiting by
/// preadv2(RWF_NOWAIT), which makes just that call non-blocking (EAGAIN when the queue
/// is empty). Setting O_NONBLOCK instead would change the queue's other handles too
/// (they are dup'd, so they share the open file description: the network → TUN
/// thread and the control thread write through them), and a second descriptor with
/// its own flags cannot be had (opening /dev/net/tun again attaches a new queue).
///
/// Kernels that refuse RWF_NOWAIT on a TUN (before 5.9) get poll(2) with a zero
/// timeout before each further read instead: one syscall more per packet, still one
/// send per batch. The read after a "readable" poll does not block because this thread
/// is the queue's only reader.
struct TunQueue<'a> {
    tun: &'a Tun,
    /// RWF_NOWAIT works (until the kernel says otherwise).
    nowait: bool,
}

impl<'a> TunQueue<'a> {
    fn new(tun: &'a Tun) -> TunQueue<'a> {
        TunQueue { tun, nowait: true }
    }

    /// A queue read with poll(2) before each further read, as on old kernels.
    #[cfg(test)]
    fn with_poll(tun: &'a Tun) -> TunQueue<'a> {
        TunQueue { tun, nowait: false }
    }
}

/// Errors by which the kernel says it cannot do preadv2(RWF_NOWAIT) here (a seccomp
/// filter may answer EPERM).
fn nowait_unsupported(errno: i32) -> bool {
    matches!(
        errno,
        libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS | libc::EPERM
    )
}

impl ReadSource for TunQueue<'_> {
    fn read_wait(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tun.read(buf)
    }

    fn read_queued(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.nowait {
            match self.tun.read_nowait(buf) {
                Ok(n) => return n,
                Err(e) if e.raw_os_error().is_some_and(nowait_unsupported) => {
                    log::info!(
                        "{}: reads without waiting refused ({e}); polling before each read",
                        self.tun.name()
                    );
                    self.nowait = false;
                }
                Err(e) => {
                    log::debug!("read from {}: {e}", self.tun.name());
                    return None;
                }
            }
        }
        match self.tun.readable_now() {
            Ok(true) => match self.tun.read(buf) {
                Ok(n) => Some(n),
                Err(e) => {
                    log::debug!("read from {}: {e}", self.tun.name());
                    None
                }
            },
            Ok(false) => None,
            Err(e) => {
                log::debug!("poll on {}: {e}", self.tun.name());
                None
            }
        }
    }
}

/// Runs batches until a blocking read fails for another reason than a signal; returns
/// that error. All buffers are allocated here, once.
fn encrypt_batches(
    src: &mut impl ReadSource,
    slot: &TableSlot,
    tun_tso: bool,
    tx: &mut impl Transmit,
    divert: &mut dyn FnMut(Emit<'_>),
) -> io::Error {
    let mut read = vec![0u8; VNET_HDR_LEN + MAX_PACKET];
    let mut enc = Encryptor::new();
    loop {
        if let Err(e) = encrypt_batch(src, slot, &mut enc, &mut read, tun_tso, tx, divert) {
            return e;
        }
    }
}

/// One batch: waits for a read, takes up to [`READ_BATCH`] − 1 more that are queued
/// already, feeds each to the encryptor as it comes (one read buffer is enough: the
/// core has encrypted a read into the transmit buffer before the next is read), and
/// sends what is left open at the end. Returns the number of reads.
fn encrypt_batch(
    src: &mut impl ReadSource,
    slot: &TableSlot,
    enc: &mut Encryptor,
    read: &mut [u8],
    tun_tso: bool,
    tx: &mut impl Transmit,
    divert: &mut dyn FnMut(Emit<'_>),
) -> io::Result<usize> {
    let first = loop {
        match src.read_wait(read) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    // The table and the time as of this batch: a new configuration applies from the
    // next; one clock read serves every packet of the batch.
    let table = table(slot);
    let now = Instant::now();
    let mut reads = 0;
    let mut next = Some(first);
    while let Some(n) = next {
        reads += 1;
        // An empty read carries no packet (WireGuard would send a keepalive for it).
        if n > 0 {
            enc.process_more(&table, now, &read[..n], tun_tso, tx, divert);
        }
        next = if reads < READ_BATCH {
            src.read_queued(read)
        } else {
            None
        };
    }
    enc.flush(tx);
    Ok(reads)
}

/// Network → TUN on a blocking thread: receive GRO batches, decrypt, coalesce, write.
/// Ends once `stop` is set; the engine then shuts the socket for reading
/// ([`udp::shutdown_receive`]) so that a receive waiting for a datagram returns.
/// Disco/STUN datagrams and relayed handshake answers go to `diverted`.
pub fn network_to_tun(
    slot: &TableSlot,
    tun: &Tun,
    sock: &UdpSocket,
    off: Offloads,
    stop: &AtomicBool,
    diverted: &Diverted,
) {
    let is_v6 = sock.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    let mut recv = vec![0u8; MAX_PACKET];
    let mut dec = Decryptor::new(off.tun_uso);
    let mut out = vec![0u8; RX_OUT_BUFFER];
    let mut writes: Vec<Range<usize>> = Vec::with_capacity(GSO_MAX_SEGMENTS);
    while !stop.load(Ordering::Relaxed) {
        let (n, from, seg) = match udp::recv_segmented(sock, &mut recv) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Woken to stop (the socket was shut): not an error worth a line.
            Err(_) if stop.load(Ordering::Relaxed) => return,
            Err(e) => {
                // ICMP-induced errors and the like must not stop the receive path.
                log::debug!("udp receive: {e}");
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
        };
        let from = udp::canonical(from);
        // One clock read per receive: a GRO batch of up to 64 datagrams.
        dec.process(
            &table(slot),
            Instant::now(),
            from,
            &recv[..n],
            seg,
            off.tun_tso,
            &mut out,
            &mut writes,
            &mut |e| {
                if let Some(Emit::Network(to, wire)) = diverted.take(e) {
                    send_plain(sock, is_v6, to, wire);
                }
            },
        );
        for r in &writes {
            if let Err(e) = tun.write(&out[r.clone()]) {
                log::debug!("write to {}: {e}", tun.name());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, PeerConfig};
    use crate::offload::testpkt;
    use crate::Key;
    use boringtun::x25519::{PublicKey, StaticSecret};

    /// Records what the core sends; every buffer is free again at once.
    struct FakeTx {
        buf: Vec<u8>,
        runs: Vec<GsoRun>,
        data: Vec<Vec<u8>>,
        gso: bool,
    }

    impl Transmit for FakeTx {
        fn buffer(&mut self) -> &mut [u8] {
            &mut self.buf
        }
        fn send(&mut self, run: GsoRun) {
            self.data.push(self.buf[run.range.clone()].to_vec());
            self.runs.push(run);
        }
        fn rewind(&mut self) -> bool {
            true
        }
        fn next_buffer(&mut self) -> bool {
            true
        }
        fn gso(&self) -> bool {
            self.gso
        }
    }

    const EP_A: &str = "192.0.2.1:51820";
    const EP_B: &str = "192.0.2.2:51820";

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn config(private: u8, peer: u8, peer_ip: &str, endpoint: &str) -> Config {
        let peer_public = PublicKey::from(&StaticSecret::from([peer; 32]));
        Config {
            private_key: ringscale_keys::PrivateKey::from_bytes([private; 32]),
            listen_port: 0,
            addresses: vec![],
            mtu: 1280,
            peers: vec![PeerConfig {
                public_key: Key(peer_public.to_bytes()),
                allowed_ips: vec![peer_ip.parse().unwrap()],
                endpoint: Some(ep(endpoint)),
                persistent_keepalive: None,
            }],
            filter: None,
        }
    }

    /// An IPv4 TCP packet from 10.0.0.1 to 10.0.0.2 (40 header bytes: no options).
    fn tcp_v4(seq: u32, payload: &[u8]) -> Vec<u8> {
        testpkt::tcp_packet(&ip_a_to_b(), &tcp(seq), payload)
    }

    fn ip_a_to_b() -> testpkt::IpSpec {
        testpkt::IpSpec {
            src: vec![10, 0, 0, 1],
            dst: vec![10, 0, 0, 2],
            ..testpkt::IpSpec::v4()
        }
    }

    fn tcp(seq: u32) -> testpkt::TcpSpec {
        testpkt::TcpSpec {
            options: vec![],
            ..testpkt::TcpSpec::new(seq)
        }
    }

    /// Two peer tables with a completed handshake, A (10.0.0.1) and B (10.0.0.2).
    fn connected() -> (PeerTable, PeerTable) {
        let a = PeerTable::new(&config(1, 2, "10.0.0.2/32", EP_B), None);
        let b = PeerTable::new(&config(2, 1, "10.0.0.1/32", EP_A), None);
        let mut out = vec![0u8; 4096];
        let mut wire: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        a.encapsulate(Instant::now(), &tcp_v4(0, b"hello"), &mut out, &mut |e| {
            if let Emit::Network(to, w) = e {
                wire.push((to, w.to_vec()));
            }
        });
        let mut delivered = 0;
        for _ in 0..10 {
            for (to, w) in std::mem::take(&mut wire) {
                let (table, from) = if to == ep(EP_B) {
                    delivered += 1;
                    (&b, ep(EP_A))
                } else {
                    (&a, ep(EP_B))
                };
                table.decapsulate(Instant::now(), from, &w, &mut out, &mut |e| {
                    if let Emit::Network(to, w) = e {
                        wire.push((to, w.to_vec()));
                    }
                });
            }
        }
        assert!(delivered >= 2, "handshake did not complete");
        (a, b)
    }

    /// A TSO read from the TUN: a virtio_net_hdr and one 64 KB TCP super-packet.
    fn tso_read(payload: &[u8], mss: u16) -> Vec<u8> {
        testpkt::tso_read(&ip_a_to_b(), &tcp(1000), payload, usize::from(mss), false)
    }

    /// TCP payload of what B writes to its TUN, in order.
    fn tun_payload(writes: &[Range<usize>], out: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for r in writes {
            let pkt = &out[r.start + VNET_HDR_LEN..r.end];
            v.extend_from_slice(&pkt[40..]);
        }
        v
    }

    fn round_trip(gso: bool) -> (Vec<GsoRun>, Vec<u8>, usize) {
        let (a, b) = connected();
        let payload: Vec<u8> = (0..65_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut tx = FakeTx {
            buf: vec![0; TX_BUFFER],
            runs: vec![],
            data: vec![],
            gso,
        };
        Encryptor::new().process(
            &a,
            Instant::now(),
            &tso_read(&payload, 1240),
            true,
            &mut tx,
            &mut no_divert,
        );
        let mut dec = Decryptor::new(true);
        let mut out = vec![0u8; RX_OUT_BUFFER];
        let mut writes = Vec::new();
        let mut received = Vec::new();
        let mut tun_writes = 0;
        for (run, data) in tx.runs.iter().zip(&tx.data) {
            dec.process(
                &b,
                Instant::now(),
                ep(EP_A),
                data,
                usize::from(run.segment),
                true,
                &mut out,
                &mut writes,
                &mut |e| panic!("unexpected output {e:?}"),
            );
            tun_writes += writes.len();
            received.extend(tun_payload(&writes, &out));
        }
        assert!(received == payload, "payload changed on the way");
        (tx.runs, received, tun_writes)
    }

    #[test]
    fn a_super_packet_becomes_two_gso_runs_and_one_write_each() {
        let (runs, _, tun_writes) = round_trip(true);
        // 65000 bytes in 1240-byte segments: 52 full and one of 520; each full one is
        // 40 + 1240 + 32 = 1312 bytes on the wire, so 49 fit under the 65000-byte limit.
        let counts: Vec<usize> = runs.iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![49, 4]);
        assert!(runs.iter().all(|r| r.segment == 1312));
        assert!(runs.iter().all(|r| r.range.len() <= GSO_MAX_BYTES));
        assert_eq!(
            runs[0].range.end, runs[1].range.start,
            "runs not back to back"
        );
        assert_eq!(runs[1].range.len(), 3 * 1312 + 40 + 520 + 32);
        assert!(runs.iter().all(|r| r.to == ep(EP_B)));
        // The receiver coalesces each GRO batch back into one super-packet.
        assert_eq!(tun_writes, 2);
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_send() {
        let (runs, _, tun_writes) = round_trip(false);
        assert_eq!(runs.len(), 53);
        assert!(runs.iter().all(|r| r.count == 1 && r.segment == 0));
        assert_eq!(tun_writes, 53);
    }

    #[test]
    fn reads_processed_together_leave_in_one_gso_send() {
        let (a, _b) = connected();
        let mut tx = FakeTx {
            buf: vec![0; TX_BUFFER],
            runs: vec![],
            data: vec![],
            gso: true,
        };
        let mut enc = Encryptor::new();
        // Five plain reads (no TSO: one packet each), as a backend gets them from one
        // io_uring_enter: one run of five equal datagrams, sent at the flush.
        for i in 0..5 {
            enc.process_more(
                &a,
                Instant::now(),
                &tcp_v4(i * 100, &[7; 100]),
                false,
                &mut tx,
                &mut no_divert,
            );
        }
        assert!(tx.runs.is_empty(), "a run was sent before the flush");
        enc.flush(&mut tx);
        assert_eq!(tx.runs.len(), 1);
        assert_eq!((tx.runs[0].count, tx.runs[0].segment), (5, 172));
        // One read at a time (`process`): a send each.
        for i in 0..3 {
            enc.process(
                &a,
                Instant::now(),
                &tcp_v4(i * 100, &[7; 100]),
                false,
                &mut tx,
                &mut no_divert,
            );
        }
        assert_eq!(tx.runs.len(), 4);
        assert!(tx.runs[1..].iter().all(|r| r.count == 1));
    }

    /// Segments sealed early because the plaintext buffer is full (a buffer for three
    /// segments here), and runs of several super-packets' segments, all reach B intact
    /// and in order.
    #[test]
    fn segments_sealed_early_or_late_all_arrive_in_order() {
        for plain_len in [4000, MAX_PACKET] {
            let (a, b) = connected();
            let big: Vec<u8> = (0..30_000u32).map(|i| (i % 253) as u8).collect();
            let mut enc = Encryptor::with_plain_buffer(plain_len);
            let mut tx = fake_tx(TX_BUFFER, true);
            let mut want = Vec::new();
            for k in 0..3u32 {
                let seq = 1000 + k * 30_000;
                let read = testpkt::tso_read(&ip_a_to_b(), &tcp(seq), &big, 1240, false);
                enc.process_more(&a, Instant::now(), &read, true, &mut tx, &mut no_divert);
                want.extend_from_slice(&big);
            }
            enc.flush(&mut tx);
            let got = decrypt_runs(&b, &tx);
            assert_eq!(got.len(), 3 * 25, "plain buffer {plain_len}");
            let payload: Vec<u8> = got.iter().flat_map(|p| p[40..].to_vec()).collect();
            assert!(payload == want, "plain buffer {plain_len}: payload changed");
        }
    }

    /// In one GRO receive opened as a batch, a forged datagram and a replayed one are
    /// dropped and counted; every other datagram reaches the TUN, in order.
    #[test]
    fn a_receive_batch_drops_forged_and_replayed_datagrams_alone() {
        let (a, b) = connected();
        let payload: Vec<u8> = (0..40_000u32).map(|i| (i * 13 + i / 7) as u8).collect();
        let mut tx = fake_tx(TX_BUFFER, true);
        Encryptor::new().process(
            &a,
            Instant::now(),
            &tso_read(&payload, 1240),
            true,
            &mut tx,
            &mut no_divert,
        );
        assert_eq!(tx.runs.len(), 1);
        let seg = usize::from(tx.runs[0].segment);
        let mut data = tx.data[0].clone();
        let count = data.len().div_ceil(seg);
        assert_eq!(count, 33);
        // Datagram 10: one ciphertext bit flipped. Datagram 21: a copy of 20.
        data[10 * seg + 100] ^= 0x04;
        data.copy_within(20 * seg..21 * seg, 21 * seg);
        let rejected = b.drops.rejected.load(std::sync::atomic::Ordering::Relaxed);
        let mut dec = Decryptor::new(true);
        let mut out = vec![0u8; RX_OUT_BUFFER];
        let mut writes = Vec::new();
        dec.process(
            &b,
            Instant::now(),
            ep(EP_A),
            &data,
            seg,
            true,
            &mut out,
            &mut writes,
            &mut |e| panic!("unexpected output {e:?}"),
        );
        let mut want = Vec::new();
        for (i, chunk) in payload.chunks(1240).enumerate() {
            if i != 10 && i != 21 {
                want.extend_from_slice(chunk);
            }
        }
        assert!(
            tun_payload(&writes, &out) == want,
            "wrong packets delivered"
        );
        assert_eq!(
            b.drops.rejected.load(std::sync::atomic::Ordering::Relaxed),
            rejected + 2
        );
    }

    /// Records what the DERP path gets, as the control thread would.
    #[derive(Default)]
    struct RecordingOffPath(Mutex<Vec<Vec<u8>>>);

    impl crate::wireguard::OffPath for RecordingOffPath {
        fn non_wireguard(&self, _: SocketAddr, _: &[u8]) {}
        fn relay(&self, _: &Key, _: u16, packet: &[u8]) {
            self.0.lock().push(packet.to_vec());
        }
    }

    /// For runs that must divert nothing.
    fn no_divert(e: Emit<'_>) {
        panic!("unexpected diverted output {e:?}");
    }

    /// A super-packet for a peer reached over DERP is handed to the control thread
    /// segment by segment, each already sealed (it leaves at once, not with a run).
    #[test]
    fn segments_relayed_over_derp_are_sealed_when_handed_over() {
        let (a, b) = connected();
        let hook = Arc::new(RecordingOffPath::default());
        let diverted = Diverted::new(a.drops.clone());
        diverted.set_off_path(hook.clone());
        let b_key = Key(PublicKey::from(&StaticSecret::from([2; 32])).to_bytes());
        assert!(a.set_endpoint(&b_key, Some(crate::derp_addr(1))));
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 241) as u8).collect();
        let mut tx = fake_tx(TX_BUFFER, true);
        Encryptor::new().process(
            &a,
            Instant::now(),
            &tso_read(&payload, 1240),
            true,
            &mut tx,
            &mut |e| assert!(diverted.take(e).is_none(), "not a relayed message"),
        );
        assert!(tx.runs.is_empty(), "DERP traffic went out over UDP");
        let relayed = hook.0.lock().clone();
        assert_eq!(relayed.len(), 9);
        let mut out = vec![0u8; MAX_PACKET];
        let mut got = Vec::new();
        for d in &relayed {
            b.decapsulate(Instant::now(), ep(EP_A), d, &mut out, &mut |e| {
                if let Emit::Tun(p) = e {
                    got.extend_from_slice(&p[40..]);
                }
            });
        }
        assert!(
            got == payload,
            "relayed segments do not open to the payload"
        );
    }

    // ----- The epoll backend's TUN → network batches.

    /// TUN reads as the kernel hands them out, in bursts queued together: `read_wait`
    /// starts on the next burst when the current one is used up (an error when none is
    /// left: the TUN went away); `read_queued` takes from the current burst.
    struct ScriptedReads {
        bursts: std::collections::VecDeque<std::collections::VecDeque<Vec<u8>>>,
        current: std::collections::VecDeque<Vec<u8>>,
        waits: usize,
        /// Most `read_queued` calls that returned a packet in one batch.
        longest_batch: usize,
        queued_in_batch: usize,
    }

    impl ScriptedReads {
        fn new(bursts: Vec<Vec<Vec<u8>>>) -> ScriptedReads {
            ScriptedReads {
                bursts: bursts.into_iter().map(Into::into).collect(),
                current: Default::default(),
                waits: 0,
                longest_batch: 0,
                queued_in_batch: 0,
            }
        }

        fn copy_out(pkt: Vec<u8>, buf: &mut [u8]) -> usize {
            buf[..pkt.len()].copy_from_slice(&pkt);
            pkt.len()
        }
    }

    impl ReadSource for ScriptedReads {
        fn read_wait(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.waits += 1;
            self.queued_in_batch = 0;
            if self.current.is_empty() {
                self.current = self
                    .bursts
                    .pop_front()
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADFD))?;
            }
            Ok(Self::copy_out(self.current.pop_front().unwrap(), buf))
        }

        fn read_queued(&mut self, buf: &mut [u8]) -> Option<usize> {
            let pkt = self.current.pop_front()?;
            self.queued_in_batch += 1;
            self.longest_batch = self.longest_batch.max(self.queued_in_batch);
            Some(Self::copy_out(pkt, buf))
        }
    }

    fn fake_tx(size: usize, gso: bool) -> FakeTx {
        FakeTx {
            buf: vec![0; size],
            runs: vec![],
            data: vec![],
            gso,
        }
    }

    /// Every packet B gets out of the sent runs, in the order they were sent.
    fn decrypt_runs(b: &PeerTable, tx: &FakeTx) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; MAX_PACKET];
        let mut got = Vec::new();
        for (run, data) in tx.runs.iter().zip(&tx.data) {
            let seg = if run.segment == 0 {
                data.len()
            } else {
                usize::from(run.segment)
            };
            let dgrams: Vec<&[u8]> = data.chunks(seg).collect();
            assert_eq!(dgrams.len(), run.count, "run of {} datagrams", run.count);
            for d in dgrams {
                b.decapsulate(Instant::now(), ep(EP_A), d, &mut out, &mut |e| match e {
                    Emit::Tun(p) => got.push(p.to_vec()),
                    e => panic!("unexpected output {e:?}"),
                });
            }
        }
        got
    }

    /// Runs the epoll backend's TUN → network loop over `bursts` until the reads run
    /// out (as when the TUN goes away).
    fn run_batches(
        a: PeerTable,
        bursts: Vec<Vec<Vec<u8>>>,
        tun_tso: bool,
        tx: &mut FakeTx,
    ) -> ScriptedReads {
        let slot: TableSlot = Mutex::new(Arc::new(a));
        let mut src = ScriptedReads::new(bursts);
        let e = encrypt_batches(&mut src, &slot, tun_tso, tx, &mut no_divert);
        assert_eq!(e.raw_os_error(), Some(libc::EBADFD), "stopped for {e}");
        src
    }

    #[test]
    fn queued_tun_reads_leave_in_one_send_per_batch() {
        let (a, b) = connected();
        let small: Vec<Vec<u8>> = (0..5).map(|i| tcp_v4(i * 100, &[1; 100])).collect();
        // Mixed sizes: a shorter datagram ends a GSO run (the next one starts at the
        // buffer's start again). In a 4 KB transmit buffer the seventh packet does not
        // fit behind the three before it, though it could join their run: the open
        // run is sent and the buffer starts over.
        let mixed: Vec<Vec<u8>> = [1000, 1000, 400, 1000, 1000, 1000, 1000, 60]
            .iter()
            .enumerate()
            .map(|(i, &n)| tcp_v4(10_000 + i as u32 * 1000, &vec![i as u8; n]))
            .collect();
        let mut tx = fake_tx(4096, true);
        let src = run_batches(a, vec![small.clone(), mixed.clone()], false, &mut tx);
        // One blocking read per burst, then the failing one that stops the loop.
        assert_eq!(src.waits, 3);
        let counts: Vec<usize> = tx.runs.iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![5, 3, 3, 2], "runs: {:?}", tx.runs);
        let wire_1000 = 20 + 20 + 1000 + 32;
        assert_eq!(tx.runs[0].segment, 20 + 20 + 100 + 32);
        assert!(tx.runs[1..]
            .iter()
            .all(|r| usize::from(r.segment) == wire_1000));
        assert_eq!(tx.runs[2].range, 0..3 * wire_1000);
        assert_eq!(tx.runs[3].range, 0..wire_1000 + 20 + 20 + 60 + 32);
        let sent: Vec<Vec<u8>> = small.into_iter().chain(mixed).collect();
        assert!(decrypt_runs(&b, &tx) == sent, "packets lost or reordered");
    }

    #[test]
    fn without_gso_a_batch_still_sends_every_packet_in_order() {
        let (a, b) = connected();
        let pkts: Vec<Vec<u8>> = [100, 1200, 30, 1200]
            .iter()
            .enumerate()
            .map(|(i, &n)| tcp_v4(i as u32 * 2000, &vec![9; n]))
            .collect();
        let mut tx = fake_tx(TX_BUFFER, false);
        run_batches(a, vec![pkts.clone()], false, &mut tx);
        assert!(tx.runs.iter().all(|r| r.count == 1 && r.segment == 0));
        assert!(decrypt_runs(&b, &tx) == pkts, "packets lost or reordered");
    }

    #[test]
    fn a_long_queue_is_read_in_bounded_batches() {
        let (a, b) = connected();
        let n = 2 * READ_BATCH + 10;
        let pkts: Vec<Vec<u8>> = (0..n as u32).map(|i| tcp_v4(i * 50, &[3; 50])).collect();
        let mut tx = fake_tx(TX_BUFFER, true);
        let src = run_batches(a, vec![pkts.clone()], false, &mut tx);
        // Three batches (a blocking read each) and the failing read.
        assert_eq!(src.waits, 4);
        assert_eq!(src.longest_batch, READ_BATCH - 1);
        let counts: Vec<usize> = tx.runs.iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![READ_BATCH, READ_BATCH, 10]);
        assert!(decrypt_runs(&b, &tx) == pkts, "packets lost or reordered");
    }

    #[test]
    fn tso_reads_and_plain_reads_batch_together() {
        let (a, b) = connected();
        let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        // A super-packet, a small packet (a virtio_net_hdr without GSO) and another
        // super-packet, queued together.
        let mut plain = vec![0u8; VNET_HDR_LEN];
        plain.extend(tcp_v4(50_000, b"ack-sized"));
        let reads = vec![
            tso_read(&big, 1240),
            plain,
            testpkt::tso_read(&ip_a_to_b(), &tcp(90_000), &big, 1240, false),
        ];
        let mut tx = fake_tx(TX_BUFFER, true);
        run_batches(a, vec![reads], true, &mut tx);
        // 20000 bytes in 1240-byte segments: 16 full and a short one that ends the run.
        let counts: Vec<usize> = tx.runs.iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![17, 1, 17]);
        let got = decrypt_runs(&b, &tx);
        let payload: Vec<u8> = got.iter().flat_map(|p| p[40..].to_vec()).collect();
        let want = [&big[..], b"ack-sized", &big[..]].concat();
        assert!(payload == want, "payload changed on the way");
    }

    #[test]
    fn empty_and_interrupted_reads_send_nothing() {
        struct Flaky(usize);
        impl ReadSource for Flaky {
            fn read_wait(&mut self, _: &mut [u8]) -> io::Result<usize> {
                self.0 += 1;
                match self.0 {
                    1 => Err(io::Error::from_raw_os_error(libc::EINTR)),
                    2 => Ok(0),
                    _ => Err(io::Error::from_raw_os_error(libc::EBADFD)),
                }
            }
            fn read_queued(&mut self, _: &mut [u8]) -> Option<usize> {
                None
            }
        }
        let (a, _b) = connected();
        let slot: TableSlot = Mutex::new(Arc::new(a));
        let mut tx = fake_tx(TX_BUFFER, true);
        let e = encrypt_batches(&mut Flaky(0), &slot, false, &mut tx, &mut no_divert);
        assert_eq!(e.raw_os_error(), Some(libc::EBADFD));
        // A signal does not stop the thread, and an empty read is no keepalive.
        assert!(tx.runs.is_empty());
    }

    /// The TUN queue against the kernel (needs root; ignored by default, run by
    /// tests/run.sh): in a network namespace of its own, datagrams routed into a TUN are
    /// read one by blocking read, the rest without waiting, in order, and an empty queue
    /// answers at once. Both ways of not waiting: RWF_NOWAIT, and poll for kernels
    /// without it.
    #[test]
    #[ignore = "needs root: creates a TUN device in a private network namespace; tests/run.sh runs it"]
    fn tun_queue_reads_what_is_queued_without_waiting() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        // A thread of its own, so that a read that blocks cannot hang the test.
        std::thread::spawn(move || {
            let _ = done_tx.send(std::panic::catch_unwind(tun_queue_check));
        });
        match done_rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(Ok(())) => {}
            Ok(Err(p)) => std::panic::resume_unwind(p),
            Err(_) => panic!("a TUN read blocked"),
        }
    }

    fn tun_queue_check() {
        use std::process::Command;
        ringscale_sys::netns::unshare_net().expect("unshare(CLONE_NEWNET) needs root");
        let sh = |cmd: &str| {
            let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
            assert!(st.success(), "{cmd}");
        };
        // No IPv6 router solicitations or MLD reports between our datagrams.
        sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
        let tun = Tun::open_with("rsbatch0", false, false).unwrap();
        sh("ip addr add 10.231.0.1/24 dev rsbatch0 && ip link set rsbatch0 up");
        let sock = UdpSocket::bind("10.231.0.1:0").unwrap();
        let mut buf = vec![0u8; MAX_PACKET];
        for poll in [false, true] {
            let mut q = if poll {
                TunQueue::with_poll(&tun)
            } else {
                TunQueue::new(&tun)
            };
            assert_eq!(q.read_queued(&mut buf), None, "empty queue (poll: {poll})");
            let sizes = [10usize, 500, 1200];
            for &n in &sizes {
                sock.send_to(&vec![n as u8; n], "10.231.0.2:9").unwrap();
            }
            let mut got = vec![q.read_wait(&mut buf).unwrap()];
            while let Some(n) = q.read_queued(&mut buf[..]) {
                got.push(n);
                assert!(got.len() <= sizes.len(), "more packets than sent");
                // The payload of the last read: each datagram's bytes are its size.
                assert!(buf[28..n].iter().all(|&b| b == (n - 28) as u8));
            }
            // IPv4 + UDP headers around each datagram, all of them, in order.
            let want: Vec<usize> = sizes.iter().map(|n| n + 28).collect();
            assert_eq!(got, want, "poll: {poll}");
            assert_eq!(q.nowait, !poll, "RWF_NOWAIT refused on this kernel");
        }
    }

    #[test]
    fn backend_names_parse_back() {
        for b in [IoBackend::Auto, IoBackend::IoUring, IoBackend::Epoll] {
            assert_eq!(b.name().parse::<IoBackend>(), Ok(b));
        }
        assert!("kqueue".parse::<IoBackend>().is_err());
        assert!("".parse::<IoBackend>().is_err());
    }

    #[test]
    fn auto_falls_back_to_epoll_and_says_why() {
        let r = choose_backend(IoBackend::Auto, || Err("io_uring_setup: EPERM".into()));
        assert_eq!(
            r,
            Ok((IoBackend::Epoll, Some("io_uring_setup: EPERM".into())))
        );
        let r = choose_backend(IoBackend::Auto, || Ok(()));
        assert_eq!(r, Ok((IoBackend::IoUring, None)));
    }

    #[test]
    fn forced_io_uring_is_an_error_where_it_does_not_work() {
        let r = choose_backend(IoBackend::IoUring, || Err("ENOSYS".into()));
        assert!(r.unwrap_err().contains("ENOSYS"));
    }

    #[test]
    fn epoll_does_not_probe() {
        let r = choose_backend(IoBackend::Epoll, || panic!("probed"));
        assert_eq!(r, Ok((IoBackend::Epoll, None)));
    }

    #[test]
    fn recycled_vector_keeps_its_allocation() {
        let mut v: Vec<&'static [u8]> = Vec::with_capacity(64);
        let ptr = v.as_ptr();
        let data = [1u8, 2, 3];
        let mut w = recycle(std::mem::take(&mut v));
        w.push(&data[..]);
        assert_eq!(w.as_ptr(), ptr);
        v = recycle(w);
        assert!(v.is_empty());
        assert_eq!(v.as_ptr(), ptr);
    }
}
