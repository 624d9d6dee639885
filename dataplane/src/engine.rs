//! The I/O around [`PeerTable`]: the TUN device, the UDP socket, the threads that move
//! packets between them, and the host configuration of the interface (addresses,
//! routes). Configuration arrives as a whole [`Config`] and is swapped in atomically:
//! packet threads take the current table once per packet batch and never block on
//! reconfiguration.

use crate::config::{Config, IfAddr};
use crate::sys::{netlink, tun::Tun, udp};
use crate::wireguard::{Drops, Emit, PeerTable, MIN_OUT_BUF, WG_OVERHEAD};
use ip_network::IpNetwork;
use parking_lot::Mutex;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest datagram or packet we handle.
const MAX_PACKET: usize = 65535;

struct Shared {
    table: Mutex<Arc<PeerTable>>,
    tun: Tun,
    udp: UdpSocket,
    udp_is_v6: bool,
}

impl Shared {
    fn table(&self) -> Arc<PeerTable> {
        self.table.lock().clone()
    }

    fn send(&self, to: SocketAddr, wire: &[u8]) {
        if let Err(e) = self.udp.send_to(wire, udp::for_socket(self.udp_is_v6, to)) {
            log::debug!("send to {to}: {e}");
        }
    }
}

/// A running data plane.
pub struct Engine {
    shared: Arc<Shared>,
    ifindex: u32,
    port: u16,
    /// What we put on the host, so a new configuration changes only the difference.
    host: Mutex<HostState>,
}

#[derive(Default)]
struct HostState {
    addresses: Vec<IfAddr>,
    routes: Vec<IpNetwork>,
}

impl Engine {
    /// Creates the TUN device `tun_name`, binds UDP `port` (0: any), configures the
    /// interface from `cfg` and starts the packet threads.
    pub fn start(cfg: &Config, tun_name: &str, port: u16) -> io::Result<Engine> {
        let tun = Tun::open(tun_name)?;
        let ifindex = netlink::link_index(tun.name())?;
        netlink::set_link_up(ifindex, cfg.mtu as u32)
            .map_err(|e| io::Error::new(e.kind(), format!("set {} up: {e}", tun.name())))?;
        let udp = udp::bind(port)
            .map_err(|e| io::Error::new(e.kind(), format!("bind UDP port {port}: {e}")))?;
        let local = udp.local_addr()?;
        let shared = Arc::new(Shared {
            table: Mutex::new(Arc::new(PeerTable::new(cfg, None))),
            tun,
            udp,
            udp_is_v6: local.is_ipv6(),
        });
        let engine = Engine {
            shared,
            ifindex,
            port: local.port(),
            host: Mutex::new(HostState::default()),
        };
        engine.apply_host(cfg)?;
        engine.spawn_threads()?;
        log::info!(
            "wireguard: {} up, mtu {}, udp port {}, {} peers",
            engine.shared.tun.name(),
            cfg.mtu,
            engine.port,
            cfg.peers.len()
        );
        Ok(engine)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn tun_name(&self) -> &str {
        self.shared.tun.name()
    }

    pub fn drops(&self) -> Arc<Drops> {
        self.shared.table().drops.clone()
    }

    pub fn table(&self) -> Arc<PeerTable> {
        self.shared.table()
    }

    /// Applies a new configuration: peers (keeping the sessions of unchanged ones),
    /// addresses and routes.
    pub fn reconfigure(&self, cfg: &Config) -> io::Result<()> {
        let mut slot = self.shared.table.lock();
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

    fn spawn_threads(&self) -> io::Result<()> {
        let s = self.shared.clone();
        std::thread::Builder::new()
            .name("tun-rx".into())
            .spawn(move || tun_loop(&s))?;
        let s = self.shared.clone();
        std::thread::Builder::new()
            .name("udp-rx".into())
            .spawn(move || udp_loop(&s))?;
        let s = self.shared.clone();
        std::thread::Builder::new()
            .name("timers".into())
            .spawn(move || timer_loop(&s))?;
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

fn tun_loop(s: &Shared) {
    let mut pkt = vec![0u8; MAX_PACKET];
    let mut out = vec![0u8; MAX_PACKET + WG_OVERHEAD];
    loop {
        let n = match s.tun.read(&mut pkt) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("read from {}: {e}; packet path stopped", s.tun.name());
                return;
            }
        };
        s.table()
            .encapsulate(&pkt[..n], &mut out, &mut |e| match e {
                Emit::Network(to, wire) => s.send(to, wire),
                Emit::Tun(_) => {}
            });
    }
}

fn udp_loop(s: &Shared) {
    let mut dgram = vec![0u8; MAX_PACKET];
    let mut out = vec![0u8; MAX_PACKET.max(MIN_OUT_BUF)];
    loop {
        let (n, from) = match s.udp.recv_from(&mut dgram) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Transient errors (ICMP-induced ECONNREFUSED and the like) must not
                // stop the receive path.
                log::debug!("udp receive: {e}");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let from = udp::canonical(from);
        s.table()
            .decapsulate(from, &dgram[..n], &mut out, &mut |e| match e {
                Emit::Network(to, wire) => s.send(to, wire),
                Emit::Tun(pkt) => {
                    if let Err(e) = s.tun.write(pkt) {
                        log::debug!("write to tun: {e}");
                    }
                }
            });
    }
}

fn timer_loop(s: &Shared) {
    let mut out = vec![0u8; MIN_OUT_BUF.max(1500)];
    let mut last_reset = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let table = s.table();
        table.tick(&mut out, &mut |e| {
            if let Emit::Network(to, wire) = e {
                s.send(to, wire)
            }
        });
        if last_reset.elapsed() >= Duration::from_secs(1) {
            table.reset_rate_limit();
            last_reset = Instant::now();
        }
    }
}
