//! The io_uring backend: each worker thread owns one ring and drives both directions
//! of its TUN queue and UDP socket through it, calling the same packet core as the
//! epoll backend ([`Encryptor`], [`Decryptor`]).
//!
//! What is kept in flight per worker:
//! * a few READs on the TUN queue, each into its own buffer; completions are processed
//!   in the order the kernel posts them, which is the order the reads were served, so
//!   each flow's packets stay in order;
//! * likewise a few RECVMSGs on the UDP socket, each with a control buffer for the
//!   UDP_GRO segment size;
//! * SENDMSGs with a UDP_SEGMENT control message, one per GSO run, from a small pool of
//!   transmit buffers: a buffer is rewritten only once every send from it completed;
//! * WRITEs to the TUN of the coalesced packets of a receive, from a small pool of
//!   output buffers with the same rule.
//!
//! Each loop iteration submits everything queued (the sends of the reads just
//! processed, the writes of the receives just processed, the reads and receives to
//! post again) and waits for completions, in one `io_uring_enter`. All buffers and message headers are allocated when the worker
//! starts; nothing is allocated per packet. Kernel errors are logged and the operation
//! is retried or its packets dropped; they never stop the worker, except the TUN going
//! away.
//!
//! Memory safety rests on one rule: every pointer placed in a submission refers to
//! memory owned by the worker (boxed, so it does not move) that is neither touched nor
//! freed until the matching completion has been reaped. A worker returns only after
//! everything in flight has completed (`drain`), or leaks its buffers if it cannot wait.

use crate::offload::VNET_HDR_LEN;
use crate::wireguard::Emit;
use crate::worker::{
    self, gso_refused, Decryptor, Diverted, Encryptor, GsoRun, Offloads, TableSlot, Transmit,
    GSO_MAX_SEGMENTS, MAX_PACKET, RX_OUT_BUFFER, TX_BUFFER,
};
use io_uring::{opcode, squeue, types, IoUring, Probe};
use ringscale_sys::eventfd::EventFd;
use ringscale_sys::tun::Tun;
use ringscale_sys::udp::{self, RecvMsg};
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Submission queue size: one iteration usually queues a few reads, receives, sends and
/// writes; should it queue more, `push` submits early.
const SQ_ENTRIES: u32 = 256;
/// Completion queue size: larger than everything that can be in flight at once
/// (READS + RECVS + 1 + SEND_SLOTS + RX_BUFFERS * 64), so completions never overflow.
const CQ_ENTRIES: u32 = 1024;
/// Transmit buffers; sends complete at submission unless the socket buffer is full, so
/// usually one is in use. More let a worker keep reading while sends wait.
const TX_BUFFERS: usize = 4;
/// Sends in flight at most (message headers kept for them).
const SEND_SLOTS: usize = 32;
/// A TUN read is processed only with this many send slots free (a 64 KB read is two
/// GSO runs; one with many peers or handshakes can be more).
const MIN_FREE_SLOTS: usize = 8;
/// Output buffers for TUN writes.
const RX_BUFFERS: usize = 4;
/// TUN reads and UDP receives kept posted. Completions are handled in the order the
/// kernel posts them, which is the order the reads were served, so a flow's packets
/// stay in order; several let a busy worker pick up several reads per io_uring_enter
/// (without TSO each read is one packet, without GRO each receive one datagram).
const READS: usize = 4;
const RECVS: usize = 4;
/// Consecutive failed receives after which each further one waits a little, so a
/// persistent error cannot spin the worker.
const ERRORS_BEFORE_BACKOFF: u32 = 16;

const OP_TUN_READ: u64 = 1;
const OP_UDP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_TUN_WRITE: u64 = 4;
const OP_NOP: u64 = 5;
const OP_STOP: u64 = 6;
const OP_CANCEL: u64 = 7;

/// user_data: the operation, the slot or buffer it uses, and the length it moves.
fn user_data(op: u64, index: usize, len: usize) -> u64 {
    (op << 56) | ((index as u64 & 0xff_ffff) << 32) | (len as u64 & 0xffff_ffff)
}

fn decode(user_data: u64) -> (u64, usize, usize) {
    (
        user_data >> 56,
        ((user_data >> 32) & 0xff_ffff) as usize,
        (user_data & 0xffff_ffff) as usize,
    )
}

/// Builds a worker's ring. Deferred task running (6.1+) makes completions arrive only
/// when the worker asks for them, in its own context, instead of interrupting it; older
/// kernels reject the flags, and get a plain ring.
fn new_ring() -> io::Result<IoUring> {
    let tuned = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(SQ_ENTRIES);
    match tuned {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES),
        r => r,
    }
}

/// Why io_uring_setup failed, in the user's terms.
fn setup_error(e: &io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSYS) => " (kernel without io_uring, or a seccomp filter)",
        Some(libc::EPERM) => " (kernel.io_uring_disabled, or a seccomp filter)",
        Some(libc::ENOMEM) => " (RLIMIT_MEMLOCK too low for a ring on kernels before 5.12)",
        _ => "",
    };
    format!("io_uring_setup: {e}{hint}")
}

/// Checks that this process can run the io_uring backend: a ring as the workers build
/// it, the opcodes they use, and one round trip through the kernel (a seccomp filter
/// may allow io_uring_setup and refuse io_uring_enter).
pub fn probe() -> Result<(), String> {
    let mut ring = new_ring().map_err(|e| setup_error(&e))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring opcode probe: {e}"))?;
    for (code, name) in [
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("the kernel's io_uring lacks {name}"));
        }
    }
    let nop = opcode::Nop::new()
        .build()
        .user_data(user_data(OP_NOP, 0, 0));
    // SAFETY: a NOP carries no pointers.
    unsafe { ring.submission().push(&nop) }.map_err(|_| "io_uring queue full".to_string())?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    let result = ring.completion().next().map(|c| c.result());
    match result {
        Some(r) if r >= 0 => Ok(()),
        Some(r) => Err(format!(
            "io_uring NOP failed: {}",
            io::Error::from_raw_os_error(-r)
        )),
        None => Err("io_uring NOP did not complete".into()),
    }
}

/// The running io_uring workers. Dropping this stops them: each cancels what it has in
/// flight and closes its TUN queue before the process goes on, so the interface is
/// gone when the daemon exits (a request still in flight at exit would keep the TUN
/// file open until the kernel's asynchronous ring teardown, tens of milliseconds
/// later, and a quick restart would find the old interface).
pub struct Workers {
    /// An eventfd every worker polls; signalled to stop them.
    stop: EventFd,
    /// Set with the eventfd, for a worker that fell back to blocking syscalls (those
    /// end when the engine wakes them: it shuts their socket and deletes the TUN).
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    pub fn new() -> io::Result<Workers> {
        Ok(Workers {
            stop: EventFd::new()?,
            stopping: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        })
    }

    /// Starts worker `index` on its TUN queue and UDP socket: one thread with one ring
    /// drives both directions. (A thread and ring per direction was measured too: no
    /// clear gain in throughput on 2 cores, and about 12 % more CPU per GB.)
    /// Relayed messages, disco/STUN and quad-100 packets go to `diverted`.
    pub fn spawn(
        &mut self,
        index: usize,
        slot: Arc<TableSlot>,
        tun: Tun,
        sock: UdpSocket,
        off: Offloads,
        diverted: Arc<Diverted>,
    ) -> io::Result<()> {
        let stop = self.stop.try_clone()?;
        let stopping = self.stopping.clone();
        let handle = std::thread::Builder::new()
            .name(format!("uring-{index}"))
            .spawn(move || run(&slot, tun, sock, stop, &stopping, off, diverted))?;
        self.threads.push(handle);
        Ok(())
    }

    /// Stops every worker and waits for them, at most `timeout` in all (a worker that
    /// fell back to blocking syscalls cannot be stopped this way; it ends with the
    /// process).
    pub fn stop(&mut self, timeout: Duration) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop.signal();
        let end = Instant::now() + timeout;
        while Instant::now() < end && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(2));
        }
        for t in std::mem::take(&mut self.threads) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// A worker thread: builds its ring (the ring belongs to the thread that made it) and
/// runs; should the ring fail here after the probe succeeded, the worker falls back to
/// blocking syscalls rather than stop.
fn run(
    slot: &Arc<TableSlot>,
    tun: Tun,
    sock: UdpSocket,
    stop: EventFd,
    stopping: &Arc<AtomicBool>,
    off: Offloads,
    diverted: Arc<Diverted>,
) {
    let ring = match new_ring() {
        Ok(r) => r,
        Err(e) => {
            log::error!(
                "worker on {}: {}; falling back to blocking syscalls",
                tun.name(),
                setup_error(&e)
            );
            fallback(slot, tun, sock, off, stopping, diverted);
            return;
        }
    };
    let mut w = match Worker::new(ring, tun, sock, stop, off, diverted) {
        Ok(w) => w,
        Err(e) => {
            log::error!("io_uring worker: {e}");
            return;
        }
    };
    w.run(slot);
}

/// The epoll backend's two threads for this worker's queue and socket; returns when
/// both have ended.
fn fallback(
    slot: &Arc<TableSlot>,
    tun: Tun,
    sock: UdpSocket,
    off: Offloads,
    stopping: &Arc<AtomicBool>,
    diverted: Arc<Diverted>,
) {
    let (tun2, sock2) = match (tun.try_clone(), sock.try_clone()) {
        (Ok(t), Ok(s)) => (t, s),
        _ => {
            log::error!("cannot duplicate worker descriptors; worker stopped");
            return;
        }
    };
    let slot2 = slot.clone();
    let stopping2 = stopping.clone();
    let diverted2 = diverted.clone();
    let spawned = std::thread::Builder::new()
        .name("tun-to-net-fallback".into())
        .spawn(move || worker::tun_to_network(&slot2, &tun2, &sock2, off, &stopping2, &diverted2));
    if let Err(e) = &spawned {
        log::error!("cannot start a fallback thread: {e}");
    }
    worker::network_to_tun(slot, &tun, &sock, off, stopping, &diverted);
    if let Ok(t) = spawned {
        let _ = t.join();
    }
}

/// One SENDMSG in flight: its message header, and the transmit buffer its data is in.
struct SendSlot {
    msg: udp::SendMsg,
    buffer: usize,
}

/// The transmit side's buffers and message headers.
struct TxState {
    bufs: Vec<Box<[u8]>>,
    /// Sends in flight per buffer.
    inflight: [u32; TX_BUFFERS],
    current: usize,
    slots: Box<[SendSlot]>,
    free: Vec<usize>,
    gso: bool,
}

impl TxState {
    /// Room to process a TUN read: enough send slots, and a buffer nothing is sent from.
    fn has_room(&self) -> bool {
        self.free.len() >= MIN_FREE_SLOTS && self.inflight.contains(&0)
    }
}

/// [`Transmit`] over the ring: a run becomes a SENDMSG submitted with the next
/// `io_uring_enter`.
struct UringTx<'a> {
    ring: &'a mut IoUring,
    tx: &'a mut TxState,
    sock: RawFd,
    is_v6: bool,
}

impl Transmit for UringTx<'_> {
    fn buffer(&mut self) -> &mut [u8] {
        &mut self.tx.bufs[self.tx.current]
    }

    fn send(&mut self, run: GsoRun) {
        let Some(i) = self.tx.free.pop() else {
            log::debug!("no send slot free: dropping {} packets", run.count);
            return;
        };
        let current = self.tx.current;
        let data = &self.tx.bufs[current][run.range.clone()];
        let slot = &mut self.tx.slots[i];
        slot.msg
            .fill(udp::for_socket(self.is_v6, run.to), data, run.segment);
        slot.buffer = current;
        let sqe = opcode::SendMsg::new(types::Fd(self.sock), slot.msg.as_ptr())
            .build()
            .user_data(user_data(OP_SEND, i, data.len()));
        if push(self.ring, &sqe) {
            self.tx.inflight[current] += 1;
        } else {
            log::debug!("io_uring full: dropping {} packets", run.count);
            self.tx.free.push(i);
        }
    }

    fn rewind(&mut self) -> bool {
        self.tx.inflight[self.tx.current] == 0
    }

    fn next_buffer(&mut self) -> bool {
        // The current buffer first if everything from it has left: it is in cache.
        let cur = self.tx.current;
        let next = (0..TX_BUFFERS)
            .map(|k| (cur + k) % TX_BUFFERS)
            .find(|&b| self.tx.inflight[b] == 0);
        match next {
            Some(b) => {
                self.tx.current = b;
                true
            }
            None => false,
        }
    }

    fn gso(&self) -> bool {
        self.tx.gso
    }
}

/// Queues `sqe`, submitting what is queued if the submission queue is full. false if
/// it could not be queued (then no completion will come for it).
fn push(ring: &mut IoUring, sqe: &squeue::Entry) -> bool {
    for _ in 0..2 {
        // SAFETY: every pointer in the worker's submissions refers to memory the
        // worker owns, which stays in place and untouched until the completion (see
        // the module comment): the buffers and the boxed SendMsg/RecvMsg headers
        // (ringscale_sys::udp states the rules a header's submission must keep).
        if unsafe { ring.submission().push(sqe) }.is_ok() {
            return true;
        }
        if let Err(e) = ring.submit() {
            log::debug!("io_uring submit: {e}");
            return false;
        }
    }
    false
}

/// A datagram WireGuard answers with (handshake, cookie, keepalive): rare, so sent
/// directly, without waiting if the socket buffer is full.
fn send_now(sock: &UdpSocket, is_v6: bool, to: SocketAddr, data: &[u8]) {
    if let Err(e) = udp::send_to_nonblocking(sock, udp::for_socket(is_v6, to), data) {
        log::debug!("send to {to}: {e}");
    }
}

/// Where a read or receive buffer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Free: to be posted.
    Idle,
    /// The kernel owns it until the completion.
    Posted,
    /// Holds a completed read or receive waiting to be processed.
    Ready,
}

struct Worker {
    ring: IoUring,
    tun: Tun,
    sock: UdpSocket,
    is_v6: bool,
    off: Offloads,
    diverted: Arc<Diverted>,
    /// The eventfd that says stop, and whether a poll on it is posted.
    stop: EventFd,
    stop_posted: bool,
    stopping: bool,

    // TUN → network.
    read_bufs: Vec<Box<[u8]>>,
    read_state: [Slot; READS],
    /// Completed reads (buffer, length) in completion order, waiting for transmit room.
    reads_ready: VecDeque<(usize, usize)>,
    tun_stopped: bool,
    enc: Encryptor,
    tx: TxState,

    // Network → TUN.
    recv_bufs: Vec<Box<[u8]>>,
    recv_slots: Box<[RecvMsg]>,
    recv_state: [Slot; RECVS],
    /// Completed receives (buffer, length, sender, GRO segment size) in completion
    /// order, waiting for an output buffer.
    recvs_ready: VecDeque<(usize, usize, SocketAddr, usize)>,
    recv_errors: u32,
    dec: Decryptor,
    rx_bufs: Vec<Box<[u8]>>,
    /// TUN writes in flight per output buffer.
    rx_inflight: [u32; RX_BUFFERS],
    writes: Vec<Range<usize>>,
    gso_warned: bool,
}

impl Worker {
    fn new(
        ring: IoUring,
        tun: Tun,
        sock: UdpSocket,
        stop: EventFd,
        off: Offloads,
        diverted: Arc<Diverted>,
    ) -> io::Result<Worker> {
        let is_v6 = sock.local_addr()?.is_ipv6();
        // Large zeroed allocations are fresh pages, resident only once used: buffers
        // kept for bursts cost no memory until a burst comes.
        let buf = |n: usize| vec![0u8; n].into_boxed_slice();
        Ok(Worker {
            ring,
            tun,
            sock,
            is_v6,
            off,
            diverted,
            stop,
            stop_posted: false,
            stopping: false,
            read_bufs: (0..READS).map(|_| buf(VNET_HDR_LEN + MAX_PACKET)).collect(),
            read_state: [Slot::Idle; READS],
            reads_ready: VecDeque::with_capacity(READS),
            tun_stopped: false,
            enc: Encryptor::new(),
            tx: TxState {
                bufs: (0..TX_BUFFERS).map(|_| buf(TX_BUFFER)).collect(),
                inflight: [0; TX_BUFFERS],
                current: 0,
                slots: (0..SEND_SLOTS)
                    .map(|_| SendSlot {
                        msg: udp::SendMsg::new(),
                        buffer: 0,
                    })
                    .collect(),
                free: (0..SEND_SLOTS).rev().collect(),
                gso: off.udp_gso,
            },
            recv_bufs: (0..RECVS).map(|_| buf(MAX_PACKET)).collect(),
            recv_slots: (0..RECVS).map(|_| RecvMsg::new()).collect(),
            recv_state: [Slot::Idle; RECVS],
            recvs_ready: VecDeque::with_capacity(RECVS),
            recv_errors: 0,
            dec: Decryptor::new(off.tun_uso),
            rx_bufs: (0..RX_BUFFERS).map(|_| buf(RX_OUT_BUFFER)).collect(),
            rx_inflight: [0; RX_BUFFERS],
            writes: Vec::with_capacity(GSO_MAX_SEGMENTS),
            gso_warned: false,
        })
    }

    fn run(&mut self, slot: &TableSlot) {
        let mut enter_errors = 0u32;
        loop {
            if self.stopping {
                return self.shut_down();
            }
            if !self.stop_posted {
                let sqe =
                    opcode::PollAdd::new(types::Fd(self.stop.as_raw_fd()), libc::POLLIN as u32)
                        .build()
                        .user_data(user_data(OP_STOP, 0, 0));
                self.stop_posted = push(&mut self.ring, &sqe);
            }
            self.pump_tun(slot);
            self.pump_udp(slot);
            match self.ring.submit_and_wait(1) {
                Ok(_) => enter_errors = 0,
                // Interrupted, or completions to reap first: both handled below.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => {
                    enter_errors += 1;
                    if enter_errors == 1 || enter_errors.is_power_of_two() {
                        log::error!("io_uring_enter on {}: {e}", self.tun.name());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            self.reap();
        }
    }

    /// Processes completed TUN reads, in order, while there is room for their output,
    /// and keeps every free read buffer posted.
    fn pump_tun(&mut self, slot: &TableSlot) {
        if !self.reads_ready.is_empty() && self.tx.has_room() {
            // One table and one clock read for all the reads completed together.
            let table = worker::table(slot);
            let now = Instant::now();
            let diverted = &self.diverted;
            // The reads completed together go out together: a run stays open from one
            // read to the next (one GSO send for many small packets) and is sent when
            // they are all processed.
            let mut tx = UringTx {
                ring: &mut self.ring,
                tx: &mut self.tx,
                sock: self.sock.as_raw_fd(),
                is_v6: self.is_v6,
            };
            while let Some(&(i, n)) = self.reads_ready.front() {
                if !tx.tx.has_room() {
                    break;
                }
                self.reads_ready.pop_front();
                self.read_state[i] = Slot::Idle;
                self.enc.process_more(
                    &table,
                    now,
                    &self.read_bufs[i][..n],
                    self.off.tun_tso,
                    &mut tx,
                    &mut |e| diverted.divert(e),
                );
            }
            self.enc.flush(&mut tx);
        }
        if self.tun_stopped {
            return;
        }
        for i in 0..READS {
            if self.read_state[i] != Slot::Idle {
                continue;
            }
            let buf = &mut self.read_bufs[i];
            // Offset -1: "the current position", the only meaning a stream has.
            let sqe = opcode::Read::new(
                types::Fd(self.tun.as_raw_fd()),
                buf.as_mut_ptr(),
                buf.len() as u32,
            )
            .offset(u64::MAX)
            .build()
            .user_data(user_data(OP_TUN_READ, i, 0));
            if push(&mut self.ring, &sqe) {
                self.read_state[i] = Slot::Posted;
            }
        }
    }

    /// Processes completed receives, in order, while an output buffer is free, and
    /// keeps every free receive buffer posted.
    fn pump_udp(&mut self, slot: &TableSlot) {
        if !self.recvs_ready.is_empty() && self.rx_inflight.contains(&0) {
            let table = worker::table(slot);
            let now = Instant::now();
            while let Some(&(i, n, from, segment)) = self.recvs_ready.front() {
                let Some(b) = self.rx_inflight.iter().position(|&n| n == 0) else {
                    break;
                };
                self.recvs_ready.pop_front();
                self.recv_state[i] = Slot::Idle;
                let (sock, is_v6) = (&self.sock, self.is_v6);
                let diverted = &self.diverted;
                self.dec.process(
                    &table,
                    now,
                    from,
                    &self.recv_bufs[i][..n],
                    segment,
                    self.off.tun_tso,
                    &mut self.rx_bufs[b],
                    &mut self.writes,
                    &mut |e| {
                        if let Some(Emit::Network(to, wire)) = diverted.take(e) {
                            send_now(sock, is_v6, to, wire);
                        }
                    },
                );
                for r in &self.writes {
                    let data = &self.rx_bufs[b][r.clone()];
                    let sqe = opcode::Write::new(
                        types::Fd(self.tun.as_raw_fd()),
                        data.as_ptr(),
                        data.len() as u32,
                    )
                    .offset(u64::MAX)
                    .build()
                    .user_data(user_data(OP_TUN_WRITE, b, data.len()));
                    if push(&mut self.ring, &sqe) {
                        self.rx_inflight[b] += 1;
                    } else {
                        log::debug!("io_uring full: dropping a packet for the TUN");
                    }
                }
            }
        }
        if self.recv_errors > ERRORS_BEFORE_BACKOFF {
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 0..RECVS {
            if self.recv_state[i] != Slot::Idle {
                continue;
            }
            let recv = &mut self.recv_slots[i];
            recv.prepare(&mut self.recv_bufs[i]);
            let sqe = opcode::RecvMsg::new(types::Fd(self.sock.as_raw_fd()), recv.as_mut_ptr())
                .build()
                .user_data(user_data(OP_UDP_RECV, i, 0));
            if push(&mut self.ring, &sqe) {
                self.recv_state[i] = Slot::Posted;
            }
        }
    }

    /// Handles every completion available, in the order the kernel posted them.
    fn reap(&mut self) {
        let mut done = [(0u64, 0i32); 64];
        loop {
            let mut n = 0;
            for cqe in self.ring.completion() {
                done[n] = (cqe.user_data(), cqe.result());
                n += 1;
                if n == done.len() {
                    break;
                }
            }
            for &(ud, res) in &done[..n] {
                self.complete(ud, res);
            }
            if n < done.len() {
                return;
            }
        }
    }

    fn complete(&mut self, ud: u64, res: i32) {
        let (op, index, len) = decode(ud);
        let err = (res < 0).then(|| io::Error::from_raw_os_error(-res));
        match op {
            OP_STOP => {
                self.stop_posted = false;
                if res > 0 {
                    self.stopping = true;
                }
            }
            OP_TUN_READ if index < READS => {
                self.read_state[index] = Slot::Idle;
                match err {
                    None if res > 0 => {
                        self.read_state[index] = Slot::Ready;
                        self.reads_ready.push_back((index, res as usize));
                    }
                    None => {}
                    Some(e) => match -res {
                        libc::EINTR | libc::EAGAIN | libc::ECANCELED => {}
                        libc::EBADF | libc::EBADFD | libc::ENODEV => {
                            if !self.tun_stopped {
                                log::error!(
                                    "read from {}: {e}; packet path stopped",
                                    self.tun.name()
                                );
                            }
                            self.tun_stopped = true;
                        }
                        _ => log::debug!("read from {}: {e}", self.tun.name()),
                    },
                }
            }
            OP_UDP_RECV if index < RECVS => {
                self.recv_state[index] = Slot::Idle;
                if let Some(e) = err {
                    if -res != libc::ECANCELED && -res != libc::EINTR {
                        // ICMP-induced errors and the like must not stop the receive path.
                        log::debug!("udp receive: {e}");
                        self.recv_errors = self.recv_errors.saturating_add(1);
                    }
                    return;
                }
                self.recv_errors = 0;
                let recv = &self.recv_slots[index];
                if recv.truncated() {
                    log::debug!("udp receive truncated: dropped");
                    return;
                }
                match recv.result() {
                    Some((from, segment)) => {
                        self.recv_state[index] = Slot::Ready;
                        self.recvs_ready
                            .push_back((index, res as usize, from, segment));
                    }
                    None => log::debug!("udp receive from an unknown address family"),
                }
            }
            OP_SEND => {
                let Some(slot) = self.tx.slots.get(index) else {
                    return;
                };
                let (buffer, segment) = (slot.buffer, slot.msg.segment());
                self.tx.inflight[buffer] = self.tx.inflight[buffer].saturating_sub(1);
                self.tx.free.push(index);
                match err {
                    Some(e) if segment > 0 && gso_refused(-res) => {
                        if !self.gso_warned {
                            log::warn!(
                                "kernel refused a UDP GSO send ({e}); sending datagrams one by one"
                            );
                            self.gso_warned = true;
                        }
                        self.tx.gso = false;
                    }
                    Some(e) => log::debug!("send of {len} bytes: {e}"),
                    None if (res as usize) < len => {
                        log::debug!("short send: {res} of {len} bytes")
                    }
                    None => {}
                }
            }
            OP_TUN_WRITE => {
                if let Some(n) = self.rx_inflight.get_mut(index) {
                    *n = n.saturating_sub(1);
                }
                match err {
                    Some(e) => log::debug!("write to {}: {e}", self.tun.name()),
                    None if (res as usize) < len => {
                        log::debug!("short write to {}: {res} of {len} bytes", self.tun.name())
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }

    /// Cancels the reads and receives, waits for everything in flight, and returns:
    /// the worker's ring, TUN queue and socket close with nothing referring to them.
    fn shut_down(&mut self) {
        self.reads_ready.clear();
        self.recvs_ready.clear();
        let mut targets = Vec::with_capacity(READS + RECVS + 1);
        for (i, st) in self.read_state.iter_mut().enumerate() {
            if *st == Slot::Posted {
                targets.push(user_data(OP_TUN_READ, i, 0));
            } else {
                *st = Slot::Idle;
            }
        }
        for (i, st) in self.recv_state.iter_mut().enumerate() {
            if *st == Slot::Posted {
                targets.push(user_data(OP_UDP_RECV, i, 0));
            } else {
                *st = Slot::Idle;
            }
        }
        if self.stop_posted {
            targets.push(user_data(OP_STOP, 0, 0));
        }
        for target in targets {
            let sqe = opcode::AsyncCancel::new(target)
                .build()
                .user_data(user_data(OP_CANCEL, 0, 0));
            push(&mut self.ring, &sqe);
        }
        self.drain();
    }

    /// Waits for everything in flight before the worker's memory goes away.
    fn drain(&mut self) {
        while self.in_flight() {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    // Cannot wait: leak the buffers rather than free memory the kernel
                    // may still write.
                    log::error!("io_uring_enter while stopping: {e}");
                    std::mem::forget(std::mem::take(&mut self.read_bufs));
                    std::mem::forget(std::mem::take(&mut self.recv_bufs));
                    std::mem::forget(std::mem::replace(&mut self.recv_slots, Box::new([])));
                    std::mem::forget(std::mem::take(&mut self.tx.bufs));
                    std::mem::forget(std::mem::replace(&mut self.tx.slots, Box::new([])));
                    std::mem::forget(std::mem::take(&mut self.rx_bufs));
                    return;
                }
            }
            self.reap();
            // Completions that arrive now are not processed: the worker is stopping.
            for st in self.read_state.iter_mut().chain(self.recv_state.iter_mut()) {
                if *st == Slot::Ready {
                    *st = Slot::Idle;
                }
            }
            self.reads_ready.clear();
            self.recvs_ready.clear();
        }
    }

    fn in_flight(&self) -> bool {
        self.read_state.contains(&Slot::Posted)
            || self.recv_state.contains(&Slot::Posted)
            || self.stop_posted
            || self.tx.inflight.iter().any(|&n| n > 0)
            || self.rx_inflight.iter().any(|&n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        for (op, index, len) in [
            (OP_TUN_READ, 0, 0),
            (OP_SEND, SEND_SLOTS - 1, 65_000),
            (OP_TUN_WRITE, RX_BUFFERS - 1, MAX_PACKET + VNET_HDR_LEN),
        ] {
            assert_eq!(decode(user_data(op, index, len)), (op, index, len));
        }
    }

    #[test]
    fn probe_succeeds_where_io_uring_works() {
        // This machine has io_uring (baselines.md); a failure here names the reason.
        if let Err(e) = probe() {
            panic!("io_uring probe failed: {e}");
        }
    }
}
