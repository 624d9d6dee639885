//! The running data plane: the TUN device and its queues, the UDP sockets, the worker
//! and timer threads, and the host configuration of the interface (addresses,
//! routes). Configuration arrives as a whole [`Config`] and is swapped in atomically:
//! workers take the current table once per batch and never wait for reconfiguration.

use crate::config::{Config, IfAddr};
use crate::sys::tun::{Tun, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};
use crate::sys::{netlink, udp};
use crate::wireguard::{Drops, Emit, PeerTable, MIN_OUT_BUF};
use crate::worker::{self, Offloads, TableSlot};
use ip_network::IpNetwork;
use parking_lot::Mutex;
use std::io;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the data plane runs; the defaults are what a router wants.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// Worker count (TUN queues and UDP sockets); 0 means one per online core.
    pub workers: usize,
    /// Use TUN segmentation offload and UDP GSO/GRO where the kernel has them.
    pub offload: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            workers: 0,
            offload: true,
        }
    }
}

/// A running data plane.
pub struct Engine {
    table: Arc<TableSlot>,
    tun_name: String,
    ifindex: u32,
    port: u16,
    offloads: Offloads,
    /// What we put on the host, so a new configuration changes only the difference.
    host: Mutex<HostState>,
}

#[derive(Default)]
struct HostState {
    addresses: Vec<IfAddr>,
    routes: Vec<IpNetwork>,
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
        offloads.udp_gso = opts.offload && udp::gso_supported(&socks[0]);
        offloads.udp_gro = opts.offload && socks.iter().all(udp::enable_gro);

        let engine = Engine {
            table: Arc::new(Mutex::new(Arc::new(PeerTable::new(cfg, None)))),
            tun_name: name,
            ifindex,
            port,
            offloads,
            host: Mutex::new(HostState::default()),
        };
        engine.apply_host(cfg)?;

        let timer_sock = socks[0].try_clone()?;
        for (i, (tun, sock)) in queues.into_iter().zip(socks).enumerate() {
            let (tun_rx, sock_rx) = (tun.try_clone()?, sock.try_clone()?);
            let slot = engine.table.clone();
            std::thread::Builder::new()
                .name(format!("tun-to-net-{i}"))
                .spawn(move || worker::tun_to_network(&slot, &tun, &sock, offloads))?;
            let slot = engine.table.clone();
            std::thread::Builder::new()
                .name(format!("net-to-tun-{i}"))
                .spawn(move || worker::network_to_tun(&slot, &tun_rx, &sock_rx, offloads))?;
        }
        let slot = engine.table.clone();
        std::thread::Builder::new()
            .name("timers".into())
            .spawn(move || timer_loop(&slot, &timer_sock))?;
        log::info!(
            "wireguard: {} up, mtu {}, udp port {}, {} peers, {workers} workers, offloads {:?}",
            engine.tun_name,
            cfg.mtu,
            engine.port,
            cfg.peers.len(),
            engine.offloads
        );
        Ok(engine)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn tun_name(&self) -> &str {
        &self.tun_name
    }

    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    pub fn table(&self) -> Arc<PeerTable> {
        self.table.lock().clone()
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
        drop(slot);
        self.apply_host(cfg)
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

        let wanted = routes_for(cfg);
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

fn timer_loop(slot: &TableSlot, sock: &UdpSocket) {
    let is_v6 = sock.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    let mut out = vec![0u8; MIN_OUT_BUF.max(1500)];
    let mut last_reset = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let table = slot.lock().clone();
        table.tick(&mut out, &mut |e| {
            if let Emit::Network(to, wire) = e {
                if let Err(e) = sock.send_to(wire, udp::for_socket(is_v6, to)) {
                    log::debug!("send to {to}: {e}");
                }
            }
        });
        if last_reset.elapsed() >= Duration::from_secs(1) {
            table.reset_rate_limit();
            last_reset = Instant::now();
        }
    }
}
