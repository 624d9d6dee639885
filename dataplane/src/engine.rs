//! The running data plane: the TUN device and its queues, the UDP sockets, the worker
//! and timer threads, and the host configuration of the interface (addresses,
//! routes). Configuration arrives as a whole [`Config`] and is swapped in atomically:
//! workers take the current table once per batch and never wait for reconfiguration.

use crate::config::{Config, IfAddr};
use crate::wireguard::{Drops, Emit, LocalService, OffPath, PeerTable, MIN_OUT_BUF};
use crate::worker::{self, Diverted, IoBackend, Offloads, TableSlot};
use ip_network::IpNetwork;
use parking_lot::Mutex;
use ringscale_sys::tun::{Tun, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};
use ringscale_sys::{netlink, udp};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the data plane runs; the defaults are what a router wants.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// Worker count (TUN queues and UDP sockets); 0 means one per online core.
    pub workers: usize,
    /// Use TUN segmentation offload and UDP GSO/GRO where the kernel has them.
    pub offload: bool,
    /// Packet I/O backend; `Auto` picks io_uring where the kernel allows it.
    pub io: IoBackend,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            workers: 0,
            offload: true,
            io: IoBackend::Auto,
        }
    }
}

/// A running data plane.
pub struct Engine {
    table: Arc<TableSlot>,
    /// The configuration the current table was built from (locked after `table`), for
    /// rebuilding it with other local addresses.
    config: Mutex<Config>,
    /// Where the packet path's relayed, disco/STUN and quad-100 outputs go.
    diverted: Arc<Diverted>,
    tun_name: String,
    ifindex: u32,
    /// The TUN was made persistent by someone else before we attached (`ip tuntap
    /// add`): it stays when we stop, as it was there before us.
    tun_persistent: bool,
    port: u16,
    offloads: Offloads,
    backend: IoBackend,
    /// The worker and timer threads, stopped by [`Engine::stop`] (and on drop).
    threads: Mutex<Threads>,
    /// What we put on the host, so a new configuration changes only the difference.
    host: Mutex<HostState>,
    /// For the control thread: the WireGuard port's socket (disco and STUN must leave
    /// from it so NAT mappings match), and a TUN queue for packets that arrived by DERP.
    off_path: OffPathIo,
}

/// The control thread's own handles on the packet path (disco, STUN, DERP).
struct OffPathIo {
    udp: UdpSocket,
    udp_v6: bool,
    /// A TUN queue and a decryption buffer for packets relayed by DERP.
    tun: Mutex<(Tun, Vec<u8>)>,
    /// The TUN expects a virtio_net_hdr in front of every write.
    tun_vnet_hdr: bool,
}

/// The engine's threads and what wakes each of them to stop.
#[derive(Default)]
struct Threads {
    /// Set when stopping; the epoll workers end at their next wake-up.
    stop: Arc<AtomicBool>,
    /// Dropped to stop the timer thread: its wait between ticks ends at once.
    timer_stop: Option<mpsc::Sender<()>>,
    /// The workers' sockets, shut for reading on stop to wake their receivers.
    sockets: Vec<UdpSocket>,
    /// Epoll workers and the timer thread.
    handles: Vec<JoinHandle<()>>,
    /// The io_uring workers: they stop through their own eventfd, cleanly (their
    /// requests cancelled) before the TUN goes.
    #[cfg(feature = "io-uring")]
    uring: Option<crate::uring::Workers>,
    stopped: bool,
}

/// How long [`Engine::stop`] waits for its threads before leaving the rest to exit
/// with the process (a thread that ignores its wake-up is a bug, not a reason to hang
/// the daemon's shutdown).
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct HostState {
    addresses: Vec<IfAddr>,
    routes: Vec<IpNetwork>,
    /// The policy router (table 52) owns routing; put no routes in main.
    main_routes_off: bool,
}

/// Opens the first TUN queue, with the offloads the kernel accepts. A kernel that
/// refuses TSO gets a TUN without virtio headers, so packets are plain IP both ways.
fn open_tun(name: &str, multi_queue: bool, offload: bool) -> io::Result<(Tun, Offloads)> {
    let mut off = Offloads::default();
    if offload {
        let tun = Tun::open_with(name, multi_queue, true)?;
        let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        if tun.set_offload(tso | TUN_F_USO4 | TUN_F_USO6).is_ok() {
            off.tun_tso = true;
            off.tun_uso = true;
            return Ok((tun, off));
        }
        if tun.set_offload(tso).is_ok() {
            off.tun_tso = true;
            return Ok((tun, off));
        }
        log::info!("kernel refused TUN offloads; using plain packets");
    }
    Ok((Tun::open_with(name, multi_queue, false)?, off))
}

impl Engine {
    /// Creates the TUN device `tun_name`, binds UDP `port` (0: any), configures the
    /// interface from `cfg` and starts the workers.
    pub fn start(
        cfg: &Config,
        tun_name: &str,
        port: u16,
        opts: EngineOptions,
    ) -> io::Result<Engine> {
        let workers = match opts.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let (backend, fallback) = worker::choose_backend(opts.io, uring_probe)
            .map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e))?;
        if let Some(why) = fallback {
            log::info!("io_uring unavailable ({why}); using the epoll backend");
        }
        let multi = workers > 1;
        let (first, mut offloads) = open_tun(tun_name, multi, opts.offload)?;
        let name = first.name().to_string();
        let mut queues = vec![first];
        for _ in 1..workers {
            queues.push(Tun::open_with(&name, true, offloads.tun_tso)?);
        }
        let ifindex = netlink::link_index(&name)?;
        netlink::set_link_up(ifindex, cfg.mtu as u32)
            .map_err(|e| io::Error::new(e.kind(), format!("set {name} up: {e}")))?;

        let first_sock = udp::bind_reuseport(port)
            .map_err(|e| io::Error::new(e.kind(), format!("bind UDP port {port}: {e}")))?;
        let port = first_sock.local_addr()?.port();
        let mut socks = vec![first_sock];
        for _ in 1..workers {
            socks.push(udp::bind_reuseport(port)?);
        }
        // Our WireGuard UDP must bypass table 52, or it would loop into the tunnel
        // once an exit node takes the default route.
        for s in &socks {
            ringscale_sys::fwmark::mark_socket(s);
        }
        offloads.udp_gso = opts.offload && udp::gso_supported(&socks[0]);
        offloads.udp_gro = opts.offload && socks.iter().all(udp::enable_gro);

        let table = PeerTable::new(cfg, None);
        let diverted = Arc::new(Diverted::new(table.drops.clone()));
        let engine = Engine {
            table: Arc::new(Mutex::new(Arc::new(table))),
            config: Mutex::new(cfg.clone()),
            diverted,
            tun_persistent: tun_is_persistent(&name),
            tun_name: name,
            ifindex,
            port,
            offloads,
            backend,
            threads: Mutex::new(Threads::default()),
            host: Mutex::new(HostState::default()),
            off_path: OffPathIo {
                udp: socks[0].try_clone()?,
                udp_v6: socks[0].local_addr()?.is_ipv6(),
                tun: Mutex::new((queues[0].try_clone()?, vec![0u8; 65_536 + 64])),
                tun_vnet_hdr: offloads.tun_tso,
            },
        };
        engine.apply_host(cfg)?;

        let timer_sock = socks[0].try_clone()?;
        // Threads go into `engine.threads` as they start, so that a failure half-way
        // stops those already running (through the engine's drop).
        let mut threads = engine.threads.lock();
        let stop = threads.stop.clone();
        #[cfg(feature = "io-uring")]
        if backend == IoBackend::IoUring {
            threads.uring = Some(crate::uring::Workers::new()?);
        }
        for (i, (tun, sock)) in queues.into_iter().zip(socks).enumerate() {
            threads.sockets.push(sock.try_clone()?);
            #[cfg(feature = "io-uring")]
            if let Some(w) = threads.uring.as_mut() {
                w.spawn(
                    i,
                    engine.table.clone(),
                    tun,
                    sock,
                    offloads,
                    engine.diverted.clone(),
                )?;
                continue;
            }
            let (tun_rx, sock_rx) = (tun.try_clone()?, sock.try_clone()?);
            let (slot, stop_tx, diverted) =
                (engine.table.clone(), stop.clone(), engine.diverted.clone());
            threads.handles.push(
                std::thread::Builder::new()
                    .name(format!("tun-to-net-{i}"))
                    .spawn(move || {
                        worker::tun_to_network(&slot, &tun, &sock, offloads, &stop_tx, &diverted)
                    })?,
            );
            let (slot, stop_rx, diverted) =
                (engine.table.clone(), stop.clone(), engine.diverted.clone());
            threads.handles.push(
                std::thread::Builder::new()
                    .name(format!("net-to-tun-{i}"))
                    .spawn(move || {
                        worker::network_to_tun(
                            &slot, &tun_rx, &sock_rx, offloads, &stop_rx, &diverted,
                        )
                    })?,
            );
        }
        let (slot, diverted) = (engine.table.clone(), engine.diverted.clone());
        let (timer_stop, timer_wait) = mpsc::channel();
        threads.timer_stop = Some(timer_stop);
        threads.handles.push(
            std::thread::Builder::new()
                .name("timers".into())
                .spawn(move || timer_loop(&slot, &timer_sock, &diverted, &timer_wait))?,
        );
        drop(threads);
        log::info!(
            "wireguard: {} up, mtu {}, udp port {}, {} peers, {workers} workers ({backend}), offloads {:?}, cipher {}",
            engine.tun_name,
            cfg.mtu,
            engine.port,
            cfg.peers.len(),
            engine.offloads,
            ringscale_aead::implementation()
        );
        Ok(engine)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the data plane and removes its interface: the workers and the timer
    /// thread are woken and joined (at most [`STOP_TIMEOUT`]), and the TUN device is
    /// deleted, with its addresses and routes, even while other handles on it (the
    /// off path's, quad-100's) are still open. Nothing is forwarded afterwards. Called
    /// again, or on drop after it, it does nothing.
    pub fn stop(&self) {
        let mut threads = self.threads.lock();
        if std::mem::replace(&mut threads.stopped, true) {
            return;
        }
        threads.stop.store(true, Ordering::Relaxed);
        threads.timer_stop = None;
        // io_uring workers first, through their eventfd: they cancel what is in flight
        // and close their queues themselves. A worker that fell back to blocking
        // syscalls is woken by what follows.
        #[cfg(feature = "io-uring")]
        if let Some(mut w) = threads.uring.take() {
            w.stop(STOP_TIMEOUT / 2);
        }
        for s in &threads.sockets {
            udp::shutdown_receive(s);
        }
        // Deleting the interface fails every blocked read on its queues. A persistent
        // TUN is left in place: epoll workers blocked reading it then end only with
        // the process.
        if self.tun_persistent {
            log::info!("{} is persistent; leaving it in place", self.tun_name);
            // Without what we put on it.
            let mut host = self.host.lock();
            for a in std::mem::take(&mut host.addresses) {
                let _ = netlink::del_address(self.ifindex, a);
            }
            for r in std::mem::take(&mut host.routes) {
                let _ = netlink::del_route(self.ifindex, r, netlink::TABLE_MAIN);
            }
        } else if let Err(e) = netlink::del_link(self.ifindex) {
            log::warn!("deleting {}: {e}", self.tun_name);
        }
        let end = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < end && threads.handles.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut left = 0;
        for t in std::mem::take(&mut threads.handles) {
            if t.is_finished() {
                let _ = t.join();
            } else {
                left += 1;
            }
        }
        if left > 0 {
            log::warn!("{left} data-plane threads did not stop within {STOP_TIMEOUT:?}");
        }
        log::info!("wireguard: {} stopped", self.tun_name);
    }

    pub fn tun_name(&self) -> &str {
        &self.tun_name
    }

    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// The packet I/O backend the workers run (never `Auto`).
    pub fn backend(&self) -> IoBackend {
        self.backend
    }

    pub fn table(&self) -> Arc<PeerTable> {
        self.table.lock().clone()
    }

    /// Hands disco/STUN datagrams and DERP-bound packets to `hook` (the control
    /// thread). Without it they are dropped, as plain WireGuard would.
    pub fn set_off_path(&self, hook: Arc<dyn OffPath>) {
        self.diverted.set_off_path(hook);
    }

    /// Sends a datagram from the WireGuard port (disco, STUN). Never blocks for long:
    /// a UDP send only waits for socket buffer space.
    pub fn send_udp(&self, to: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        let to = udp::for_socket(self.off_path.udp_v6, to);
        self.off_path.udp.send_to(datagram, to).map(drop)
    }

    /// A WireGuard message that arrived through DERP `region`: decrypt it as if it had
    /// come over UDP from the region's pseudo address, and write what it carries to the
    /// TUN. Replies (handshakes) go out on the peer's path.
    pub fn receive_relayed(&self, region: u16, packet: &[u8]) {
        let from = crate::derp_addr(region);
        let table = self.table();
        let mut guard = self.off_path.tun.lock();
        let (tun, buf) = &mut *guard;
        let hdr = if self.off_path.tun_vnet_hdr {
            crate::offload::VNET_HDR_LEN
        } else {
            0
        };
        if buf.len() < hdr + packet.len() + MIN_OUT_BUF {
            return;
        }
        let sock = &self.off_path.udp;
        let udp_v6 = self.off_path.udp_v6;
        let mut tun_range = None;
        let base = buf.as_ptr() as usize;
        let diverted = &self.diverted;
        let now = Instant::now();
        table.decapsulate(now, from, packet, &mut buf[hdr..], &mut |e| match e {
            Emit::Network(to, wire) => {
                if let Err(e) = sock.send_to(wire, udp::for_socket(udp_v6, to)) {
                    log::debug!("send to {to}: {e}");
                }
            }
            Emit::Tun(pkt) => {
                let start = pkt.as_ptr() as usize - base;
                tun_range = Some(start..start + pkt.len());
            }
            other => diverted.divert(other),
        });
        let Some(r) = tun_range else {
            return;
        };
        // A zero virtio_net_hdr says "one plain packet, checksums done".
        let Some(start) = r.start.checked_sub(hdr) else {
            return;
        };
        buf[start..r.start].fill(0);
        if let Err(e) = tun.write(&buf[start..r.end]) {
            log::debug!("write relayed packet to {}: {e}", tun.name());
        }
    }

    pub fn drops(&self) -> Arc<Drops> {
        self.table().drops.clone()
    }

    /// Applies a new configuration: peers (keeping the sessions of unchanged ones),
    /// addresses and routes.
    pub fn reconfigure(&self, cfg: &Config) -> io::Result<()> {
        let mut slot = self.table.lock();
        let next = Arc::new(PeerTable::new(cfg, Some(&slot)));
        *slot = next;
        *self.config.lock() = cfg.clone();
        drop(slot);
        self.apply_host(cfg)
    }

    /// Hands packets from the TUN to `addresses` (quad-100's) to `svc` instead of
    /// routing them to a peer. The current table is rebuilt with those addresses
    /// (keeping every session); later tables inherit them.
    pub fn set_local_service(&self, svc: Arc<dyn LocalService>, addresses: &[IpAddr]) {
        self.diverted.set_local(svc);
        let mut slot = self.table.lock();
        let table =
            PeerTable::new(&self.config.lock(), Some(&slot)).with_local_addresses(addresses);
        *slot = Arc::new(table);
    }

    /// A handle on the TUN for an in-process service to write its replies to, and
    /// whether writes to it start with a virtio-net header.
    pub fn tun_writer(&self) -> io::Result<(Tun, bool)> {
        Ok((
            self.off_path.tun.lock().0.try_clone()?,
            self.off_path.tun_vnet_hdr,
        ))
    }

    /// Routes `net` into the TUN through the main table (a local service's addresses,
    /// which must be reachable whether or not the policy router runs).
    pub fn add_service_route(&self, net: IpNetwork) -> io::Result<()> {
        netlink::add_route(self.ifindex, net, netlink::TABLE_MAIN)
    }

    /// Leaves routing to the policy router (`router::Router`, table 52): removes the
    /// routes this engine put in the main table and adds none from now on.
    pub fn leave_routes_to_router(&self) -> io::Result<()> {
        let mut host = self.host.lock();
        host.main_routes_off = true;
        for r in std::mem::take(&mut host.routes) {
            netlink::del_route(self.ifindex, r, netlink::TABLE_MAIN)?;
        }
        Ok(())
    }

    /// The TUN device's interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn apply_host(&self, cfg: &Config) -> io::Result<()> {
        let mut host = self.host.lock();
        for a in &cfg.addresses {
            if !host.addresses.contains(a) {
                netlink::add_address(self.ifindex, *a)
                    .map_err(|e| io::Error::new(e.kind(), format!("add address {a:?}: {e}")))?;
            }
        }
        for a in &host.addresses {
            if !cfg.addresses.contains(a) {
                netlink::del_address(self.ifindex, *a)?;
            }
        }
        host.addresses = cfg.addresses.clone();

        let wanted = if host.main_routes_off {
            Vec::new()
        } else {
            routes_for(cfg)
        };
        for r in &host.routes {
            if !wanted.contains(r) {
                netlink::del_route(self.ifindex, *r, netlink::TABLE_MAIN)?;
            }
        }
        for r in &wanted {
            if !host.routes.contains(r) {
                netlink::add_route(self.ifindex, *r, netlink::TABLE_MAIN)
                    .map_err(|e| io::Error::new(e.kind(), format!("add route {r}: {e}")))?;
            }
        }
        host.routes = wanted;
        Ok(())
    }
}

/// Whether the TUN device `name` has IFF_PERSIST (it outlives its queues' descriptors).
fn tun_is_persistent(name: &str) -> bool {
    const IFF_PERSIST: u32 = 0x0800;
    std::fs::read_to_string(format!("/sys/class/net/{name}/tun_flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & IFF_PERSIST != 0)
}

#[cfg(feature = "io-uring")]
fn uring_probe() -> Result<(), String> {
    crate::uring::probe()
}

#[cfg(not(feature = "io-uring"))]
fn uring_probe() -> Result<(), String> {
    Err("this build has no io_uring support (cargo feature io-uring)".into())
}

/// Routes for the peers' AllowedIPs. Default routes are left out: sending everything
/// into the tunnel needs policy routing so our own UDP does not loop (the exit-node
/// client installs that), and a plain default route would cut the underlay.
fn routes_for(cfg: &Config) -> Vec<IpNetwork> {
    let mut routes: Vec<IpNetwork> = Vec::new();
    for p in &cfg.peers {
        for net in &p.allowed_ips {
            if net.netmask() == 0 {
                log::warn!("not routing {net} into the tunnel: default routes need exit-node mode");
                continue;
            }
            if !routes.contains(net) {
                routes.push(*net);
            }
        }
    }
    routes
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Longest the timer thread sleeps: the workers move WireGuard's deadlines without
/// waking it (a first packet starts a handshake due for retransmit in 5 s), so it looks
/// again this often, as it used to tick; and the handshake rate limiter's window moves
/// on about every second.
const TIMER_MAX_SLEEP: Duration = Duration::from_millis(250);
/// Shortest: a deadline that stays in the past must not make the thread spin.
const TIMER_MIN_SLEEP: Duration = Duration::from_millis(10);

/// Runs the current table's timers when it says they are due (at most
/// [`TIMER_MAX_SLEEP`] apart), sending what they emit, until `stop`'s sender is
/// dropped.
fn timer_loop(slot: &TableSlot, sock: &UdpSocket, diverted: &Diverted, stop: &mpsc::Receiver<()>) {
    let is_v6 = sock.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    let mut out = vec![0u8; MIN_OUT_BUF.max(1500)];
    loop {
        let table = slot.lock().clone();
        let now = Instant::now();
        table.handle_timeout(now, &mut out, &mut |e| {
            if let Some(Emit::Network(to, wire)) = diverted.take(e) {
                if let Err(e) = sock.send_to(wire, udp::for_socket(is_v6, to)) {
                    log::debug!("send to {to}: {e}");
                }
            }
        });
        let wait = table
            .poll_timeout()
            .map_or(TIMER_MAX_SLEEP, |at| at.saturating_duration_since(now));
        drop(table);
        match stop.recv_timeout(wait.clamp(TIMER_MIN_SLEEP, TIMER_MAX_SLEEP)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}
