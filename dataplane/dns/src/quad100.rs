//! The quad-100 service: the packets the host sends to 100.100.100.100 or
//! fd7a:115c:a1e0::53 never reach WireGuard. The packet path hands them (copied, never
//! blocking: a full queue drops) to one thread that runs a small smoltcp interface
//! owning just those two addresses, with a UDP socket and a few TCP sockets on port 53.
//! The interface answers ICMP echo itself. Replies go straight back into the TUN.
//!
//! Queries are answered by the [`Resolver`] on this thread when they are local
//! (MagicDNS names, PTR); forwarded ones go to the [`Forwarder`]'s threads and their
//! answers come back through the same queue, so this thread never waits on the
//! network.

use super::doh::Https;
use super::forward::{ForwardError, Forwarder};
use super::resolver::{servfail, Action, Resolver, ResolverConfig};
use super::{QUAD100_V4, QUAD100_V6};
use ip_network::IpNetwork;
use parking_lot::Mutex;
use ringscale_dataplane::wireguard::LocalService;
use ringscale_dataplane::Engine;
use ringscale_sys::tun::{Tun, VNET_HDR_LEN};
use ringscale_wire::dns as wire;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};
use std::collections::VecDeque;
use std::io;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Packets and answers waiting for the service thread; beyond this the packet path
/// drops (DNS clients retry).
const QUEUE: usize = 1024;
/// TCP connections served at once (DNS over TCP is rare: truncated answers, zone
/// tools).
const TCP_SOCKETS: usize = 8;
/// A TCP connection with nothing going on for this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(30);
/// Queries of one TCP connection being forwarded at once (pipelining bound).
const TCP_MAX_PENDING: usize = 16;
/// Largest DNS message over TCP plus its length prefix.
const TCP_MAX_FRAME: usize = 2 + 65_535;
const UDP_PACKETS: usize = 64;
const UDP_BUFFER: usize = 64 * 1024;

/// Something for the service thread.
enum Event {
    /// An IP packet from the TUN to quad-100.
    Packet(Vec<u8>),
    /// A forwarded query's answer (or SERVFAIL), for the client it came from.
    Answer(Client, Vec<u8>),
    Stop,
}

/// Who asked a forwarded query.
#[derive(Clone, Copy, Debug)]
enum Client {
    Udp {
        endpoint: IpEndpoint,
        local: IpAddress,
        limit: usize,
    },
    /// A TCP connection; the generation tells a reused socket from the one that asked.
    Tcp { socket: usize, generation: u64 },
}

/// The packet path's side: queues the packets the engine hands over.
struct Intake {
    tx: SyncSender<Event>,
}

impl LocalService for Intake {
    fn deliver(&self, pkt: &[u8]) {
        match self.tx.try_send(Event::Packet(pkt.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => log::trace!("quad-100: queue full, dropping a packet"),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The running service. Dropping it stops its thread.
pub struct Quad100 {
    tx: SyncSender<Event>,
    resolver: Arc<Mutex<Arc<Resolver>>>,
    intake: Arc<Intake>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Quad100 {
    /// Starts quad-100 on `engine`'s TUN: packets to its two addresses are taken off
    /// the WireGuard path and answered here, and both addresses are routed into the TUN.
    /// A missing route costs MagicDNS over that family, not the service: it is logged.
    pub fn attach(engine: &Engine, mtu: u16, https: Https) -> io::Result<Quad100> {
        let (tun, vnet_hdr) = engine.tun_writer()?;
        let svc = Quad100::start(tun, vnet_hdr, mtu, https)?;
        engine.set_local_service(svc.local_service(), &[QUAD100_V4.into(), QUAD100_V6.into()]);
        for net in [
            IpNetwork::new(QUAD100_V4, 32).expect("a /32"),
            IpNetwork::new(QUAD100_V6, 128).expect("a /128"),
        ] {
            if let Err(e) = engine.add_service_route(net) {
                log::warn!("quad-100: route {net} into {}: {e}", engine.tun_name());
            }
        }
        Ok(svc)
    }

    /// Starts the service thread. Replies are written to `tun` (with a zeroed
    /// virtio_net_hdr in front when `vnet_hdr`); `mtu` is the TUN's.
    pub fn start(tun: Tun, vnet_hdr: bool, mtu: u16, https: Https) -> io::Result<Quad100> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let resolver = Arc::new(Mutex::new(Arc::new(Resolver::default())));
        let mut svc = Service::new(tx.clone(), resolver.clone(), tun, vnet_hdr, mtu, https);
        let thread = std::thread::Builder::new()
            .name("quad-100".into())
            .spawn(move || svc.run(rx))?;
        Ok(Quad100 {
            intake: Arc::new(Intake { tx: tx.clone() }),
            tx,
            resolver,
            thread: Some(thread),
        })
    }

    /// The packet path's hook (install it in the peer table).
    pub fn local_service(&self) -> Arc<dyn LocalService> {
        self.intake.clone()
    }

    /// Swaps in a new resolver configuration; queries from now on use it.
    pub fn set_config(&self, cfg: ResolverConfig) {
        *self.resolver.lock() = Arc::new(Resolver::new(cfg));
    }

    pub fn resolver(&self) -> Arc<Resolver> {
        self.resolver.lock().clone()
    }
}

impl Drop for Quad100 {
    fn drop(&mut self) {
        let _ = self.tx.send(Event::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// smoltcp's device: packets from the queue in, packets for the TUN out.
struct Queue {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    mtu: usize,
}

struct RxToken(Vec<u8>);
struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl Device for Queue {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(RxToken, TxToken<'_>)> {
        let pkt = self.rx.pop_front()?;
        Some((RxToken(pkt), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // The packets come from the local kernel, whose checksums are complete (the
        // segmenter finished offloaded ones) or not checked by anyone before us:
        // compute ours, verify nothing.
        let mut ck = ChecksumCapabilities::default();
        ck.ipv4 = Checksum::Tx;
        ck.udp = Checksum::Tx;
        ck.tcp = Checksum::Tx;
        ck.icmpv4 = Checksum::Tx;
        ck.icmpv6 = Checksum::Tx;
        caps.checksum = ck;
        caps
    }
}

/// One TCP socket of the pool and the DNS stream on it.
struct TcpConn {
    handle: SocketHandle,
    generation: u64,
    active: bool,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    pending: usize,
    last_activity: Instant,
}

struct Service {
    tx: SyncSender<Event>,
    resolver: Arc<Mutex<Arc<Resolver>>>,
    forwarder: Arc<Forwarder>,
    tun: Tun,
    vnet_hdr: bool,
    dev: Queue,
    iface: Interface,
    sockets: SocketSet<'static>,
    udp: SocketHandle,
    tcp: Vec<TcpConn>,
    epoch: Instant,
}

fn smol_now(epoch: Instant) -> SmolInstant {
    SmolInstant::from_micros(epoch.elapsed().as_micros() as i64)
}

impl Service {
    fn new(
        tx: SyncSender<Event>,
        resolver: Arc<Mutex<Arc<Resolver>>>,
        tun: Tun,
        vnet_hdr: bool,
        mtu: u16,
        https: Https,
    ) -> Service {
        let epoch = Instant::now();
        let mut dev = Queue {
            rx: VecDeque::new(),
            tx: Vec::new(),
            mtu: usize::from(mtu.max(1280)),
        };
        let mut config = Config::new(HardwareAddress::Ip);
        let mut seed = [0u8; 8];
        ringscale_sys::random::fill(&mut seed);
        config.random_seed = u64::from_le_bytes(seed);
        let mut iface = Interface::new(config, &mut dev, smol_now(epoch));
        iface.update_ip_addrs(|a| {
            // Two addresses fit smoltcp's default table exactly.
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(QUAD100_V4), 32));
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(QUAD100_V6), 128));
        });
        // Every client is "elsewhere": route all answers back out of the one link.
        let _ = iface.routes_mut().add_default_ipv4_route(QUAD100_V4);
        let _ = iface.routes_mut().add_default_ipv6_route(QUAD100_V6);

        let mut sockets = SocketSet::new(Vec::new());
        let mut udp_socket = udp::Socket::new(
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                vec![0; UDP_BUFFER],
            ),
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                vec![0; UDP_BUFFER],
            ),
        );
        udp_socket
            .bind(IpListenEndpoint {
                addr: None,
                port: 53,
            })
            .expect("binding port 53 on a fresh socket");
        let udp = sockets.add(udp_socket);
        let tcp = (0..TCP_SOCKETS)
            .map(|_| {
                let mut s = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; 4096]),
                    tcp::SocketBuffer::new(vec![0; 16 * 1024]),
                );
                s.set_timeout(Some(SmolDuration::from_secs(10)));
                let _ = s.listen(53);
                TcpConn {
                    handle: sockets.add(s),
                    generation: 0,
                    active: false,
                    inbuf: Vec::new(),
                    outbuf: Vec::new(),
                    pending: 0,
                    last_activity: epoch,
                }
            })
            .collect();
        Service {
            tx,
            resolver,
            forwarder: Forwarder::new(https),
            tun,
            vnet_hdr,
            dev,
            iface,
            sockets,
            udp,
            tcp,
            epoch,
        }
    }

    fn run(&mut self, rx: Receiver<Event>) {
        loop {
            let now = smol_now(self.epoch);
            let wait = self
                .iface
                .poll_delay(now, &self.sockets)
                .map_or(Duration::from_secs(1), |d| {
                    Duration::from_micros(d.total_micros())
                })
                .min(Duration::from_secs(1));
            let first = match rx.recv_timeout(wait) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // Take what else is queued too, so one poll handles a burst.
            for ev in first.into_iter().chain(rx.try_iter().take(QUEUE)) {
                match ev {
                    Event::Packet(p) => self.dev.rx.push_back(p),
                    Event::Answer(client, msg) => self.answer(client, msg),
                    Event::Stop => return,
                }
            }
            // Poll, serve the sockets, and poll again so replies leave at once.
            for _ in 0..2 {
                self.iface
                    .poll(smol_now(self.epoch), &mut self.dev, &mut self.sockets);
                self.serve_udp();
                self.serve_tcp();
            }
            self.flush();
        }
    }

    /// Writes what smoltcp sent into the TUN.
    fn flush(&mut self) {
        for pkt in self.dev.tx.drain(..) {
            let res = if self.vnet_hdr {
                let mut framed = vec![0u8; VNET_HDR_LEN + pkt.len()];
                framed[VNET_HDR_LEN..].copy_from_slice(&pkt);
                self.tun.write(&framed)
            } else {
                self.tun.write(&pkt)
            };
            if let Err(e) = res {
                log::debug!("quad-100: write to {}: {e}", self.tun.name());
            }
        }
    }

    fn resolver(&self) -> Arc<Resolver> {
        self.resolver.lock().clone()
    }

    /// Hands `query` to the forwarder; its answer (or SERVFAIL) comes back as an
    /// [`Event::Answer`] for `client`.
    fn forward(&self, query: Vec<u8>, upstreams: Vec<super::Upstream>, client: Client) {
        let tx = self.tx.clone();
        let q = query.clone();
        self.forwarder.forward(query, upstreams, move |res| {
            let answer = match res {
                Ok(a) => Some(a),
                Err(e) => {
                    if !matches!(e, ForwardError::NoUpstreams) {
                        log::debug!("quad-100: forwarding failed: {e}");
                    }
                    servfail(&q)
                }
            };
            if let Some(a) = answer {
                let _ = tx.send(Event::Answer(client, a));
            }
        });
    }

    fn serve_udp(&mut self) {
        let resolver = self.resolver();
        loop {
            let sock = self.sockets.get_mut::<udp::Socket>(self.udp);
            let (msg, meta) = match sock.recv() {
                Ok((data, meta)) => (data.to_vec(), meta),
                Err(_) => break,
            };
            let limit = wire::parse_query(&msg).map_or(wire::CLASSIC_UDP_MAX, |q| q.udp_limit());
            let local = meta.local_address.unwrap_or(IpAddress::Ipv4(QUAD100_V4));
            match resolver.handle(&msg) {
                Action::Reply(r) => {
                    let r = wire::truncate_for_udp(&r, limit);
                    self.send_udp(meta.endpoint, local, &r);
                }
                Action::Forward(ups) => self.forward(
                    msg,
                    ups,
                    Client::Udp {
                        endpoint: meta.endpoint,
                        local,
                        limit,
                    },
                ),
                Action::Drop => {}
            }
        }
    }

    fn send_udp(&mut self, endpoint: IpEndpoint, local: IpAddress, msg: &[u8]) {
        let mut meta = udp::UdpMetadata::from(endpoint);
        meta.local_address = Some(local);
        let sock = self.sockets.get_mut::<udp::Socket>(self.udp);
        if let Err(e) = sock.send_slice(msg, meta) {
            log::debug!("quad-100: UDP answer to {endpoint} not sent: {e}");
        }
    }

    fn answer(&mut self, client: Client, msg: Vec<u8>) {
        match client {
            Client::Udp {
                endpoint,
                local,
                limit,
            } => {
                let msg = wire::truncate_for_udp(&msg, limit);
                self.send_udp(endpoint, local, &msg);
            }
            Client::Tcp { socket, generation } => {
                let Some(c) = self.tcp.get_mut(socket) else {
                    return;
                };
                if c.generation != generation || !c.active {
                    return; // the connection is gone
                }
                c.pending = c.pending.saturating_sub(1);
                if let Ok(len) = u16::try_from(msg.len()) {
                    c.outbuf.extend_from_slice(&len.to_be_bytes());
                    c.outbuf.extend_from_slice(&msg);
                }
                c.last_activity = Instant::now();
            }
        }
    }

    fn serve_tcp(&mut self) {
        let resolver = self.resolver();
        for i in 0..self.tcp.len() {
            let mut forwards = Vec::new();
            {
                let c = &mut self.tcp[i];
                let sock = self.sockets.get_mut::<tcp::Socket>(c.handle);
                if !sock.is_open() {
                    // Closed: ready the socket for the next client.
                    if c.active {
                        c.active = false;
                        c.generation += 1;
                        c.inbuf.clear();
                        c.outbuf.clear();
                        c.pending = 0;
                    }
                    let _ = sock.listen(53);
                    continue;
                }
                if sock.is_listening() {
                    continue;
                }
                if !c.active {
                    c.active = true;
                    c.last_activity = Instant::now();
                }
                let mut buf = [0u8; 4096];
                while sock.can_recv() {
                    match sock.recv_slice(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            c.inbuf.extend_from_slice(&buf[..n]);
                            c.last_activity = Instant::now();
                        }
                        Err(_) => break,
                    }
                    if c.inbuf.len() > TCP_MAX_FRAME {
                        break;
                    }
                }
                log::trace!(
                    "quad-100: tcp socket {i} {:?}, {} bytes in, {} out",
                    sock.state(),
                    c.inbuf.len(),
                    c.outbuf.len()
                );
                // Whole frames: a two-byte length, then the message.
                let mut bad = false;
                while c.inbuf.len() >= 2 && c.pending < TCP_MAX_PENDING {
                    let len = usize::from(u16::from_be_bytes([c.inbuf[0], c.inbuf[1]]));
                    if len == 0 {
                        // A zero-length message is nothing a resolver sends; drop the
                        // connection rather than guess at the stream's framing.
                        bad = true;
                        break;
                    }
                    if c.inbuf.len() < 2 + len {
                        break;
                    }
                    let msg: Vec<u8> = c.inbuf[2..2 + len].to_vec();
                    c.inbuf.drain(..2 + len);
                    match resolver.handle(&msg) {
                        Action::Reply(r) => {
                            c.outbuf.extend_from_slice(&(r.len() as u16).to_be_bytes());
                            c.outbuf.extend_from_slice(&r);
                        }
                        Action::Forward(ups) => {
                            c.pending += 1;
                            forwards.push((msg, ups));
                        }
                        // Not a query (or no header): nothing sane follows on this
                        // stream either.
                        Action::Drop => {
                            bad = true;
                            break;
                        }
                    }
                }
                if bad || c.last_activity.elapsed() > TCP_IDLE {
                    sock.abort();
                    c.inbuf.clear();
                    c.outbuf.clear();
                    continue;
                }
                if !c.outbuf.is_empty() && sock.can_send() {
                    if let Ok(n) = sock.send_slice(&c.outbuf) {
                        c.outbuf.drain(..n);
                    }
                }
                // The client finished sending and everything asked is answered (a
                // partial frame left behind can never complete).
                if sock.state() == tcp::State::CloseWait && c.pending == 0 && c.outbuf.is_empty() {
                    sock.close();
                }
            }
            let (socket, generation) = (i, self.tcp[i].generation);
            for (msg, ups) in forwards {
                self.forward(msg, ups, Client::Tcp { socket, generation });
            }
        }
    }
}
