//! The control thread's side of peer paths (Go's magicsock, minus the packet path):
//! - disco ([`ringscale_dataplane::disco::Disco`]) on the datagrams the workers hand
//!   over and on packets relayed by DERP; disco packets leave from the WireGuard port;
//! - DERP: a connection to our home region (chosen by STUN latency, else the lowest
//!   region ID), others on demand for peers homed elsewhere, closed after a minute
//!   idle; WireGuard packets for peers without a direct path go through them, and what
//!   arrives is fed to the data plane's decrypt path;
//! - STUN: binding requests to every region's STUN server from the WireGuard port, at
//!   start, on DERP map changes and every 20–26 s, giving region latencies and our
//!   public endpoint;
//! - the path each peer uses goes to the data plane (`PeerTable::set_endpoint`);
//! - our endpoints and home region go to control: [`Paths::report`] gives them and
//!   [`Paths::changed`] fires when they change (the control loop sends a lite map
//!   update).
//!
//! The workers never wait for this task: they pass datagrams and DERP-bound packets
//! through bounded queues and drop what does not fit, as a full socket buffer would.

use crate::derp::{self, DerpEvent, RegionClient};
use crate::disco::{self, Disco, Path, PeerInfo, Via};
use ringscale_control::netmap::NetMap;
use ringscale_dataplane::wireguard::OffPath;
use ringscale_dataplane::{Engine, Key};
use ringscale_tailcfg::{DerpMap, DerpRegion, DiscoPublic, NetInfo, PrivateKey};
use ringscale_wire::stun;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// How often disco timers run and the data plane's send activity is looked at.
const TICK: Duration = Duration::from_millis(250);
/// Queue depths between the workers and this task.
const DATAGRAM_QUEUE: usize = 256;
const RELAY_QUEUE: usize = 2048;
const DERP_EVENT_QUEUE: usize = 2048;
/// A DERP connection that is not our home is closed after this long unused.
const DERP_IDLE: Duration = Duration::from_secs(60);
/// STUN answers later than this are not counted.
const STUN_TIMEOUT: Duration = Duration::from_secs(3);
/// Switch home only to a region this much faster (and at most 2/3 the latency).
const HOME_HYSTERESIS: Duration = Duration::from_millis(10);

/// EndpointType values (tailcfg): local interface address, STUN-mapped address.
pub const ENDPOINT_LOCAL: i64 = 1;
pub const ENDPOINT_STUN: i64 = 2;

/// What the netmap and prefs say that paths need.
#[derive(Clone, Debug, Default)]
pub struct PathsUpdate {
    /// Our node private key: our DERP identity, and named in our disco pings.
    pub node_private: PrivateKey,
    pub peers: Vec<PeerInfo>,
    pub derp_map: Option<DerpMap>,
    /// Our local interface endpoints (address + WireGuard port).
    pub local_endpoints: Vec<SocketAddr>,
}

impl PathsUpdate {
    /// The disco-speaking peers of `netmap` (a zero disco key means the peer does not
    /// speak disco; its endpoint comes from the netmap alone).
    pub fn from_netmap(
        netmap: &NetMap,
        node_private: PrivateKey,
        local_endpoints: Vec<SocketAddr>,
    ) -> PathsUpdate {
        let peers = netmap
            .peers
            .values()
            .filter(|p| !p.disco_key.is_zero() && !p.key.is_zero())
            .map(|p| PeerInfo {
                node_key: p.key.0,
                disco_key: p.disco_key.0,
                endpoints: p.endpoints.clone(),
                home_derp: u16::try_from(p.home_derp).ok().filter(|r| *r > 0),
            })
            .collect();
        PathsUpdate {
            node_private,
            peers,
            derp_map: netmap.derp_map.clone(),
            local_endpoints,
        }
    }
}

/// What we tell control about our paths.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Endpoints and their EndpointTypes, in Go's order: STUN first, then local.
    pub endpoints: Vec<(SocketAddr, i64)>,
    /// Home DERP region (0: none).
    pub home_derp: u16,
    /// `"<region>-v4"` → seconds.
    pub derp_latency: BTreeMap<String, f64>,
}

impl Report {
    /// The NetInfo for Hostinfo: PreferredDERP is what peers' `HomeDERP` is made from.
    pub fn net_info(&self) -> Option<NetInfo> {
        if self.home_derp == 0 && self.derp_latency.is_empty() {
            return None;
        }
        Some(NetInfo {
            preferred_derp: i64::from(self.home_derp),
            derp_latency: self.derp_latency.clone(),
            working_udp: (!self.derp_latency.is_empty()).then_some(true),
            ..Default::default()
        })
    }
}

/// Home region (protocol.md §10): the lowest STUN latency, but a reachable current home
/// is left only for one at least 10 ms faster and at most 2/3 of its latency; without
/// measurements the current home, else the lowest region ID that may be home.
pub fn choose_home(
    map: &BTreeMap<u16, DerpRegion>,
    latency: &HashMap<u16, Duration>,
    current: Option<u16>,
) -> Option<u16> {
    let eligible = |r: &DerpRegion| !r.no_measure_no_home && !r.avoid;
    let best = latency
        .iter()
        .filter(|(id, _)| map.get(id).is_some_and(eligible))
        .min_by_key(|(id, l)| (**l, **id))
        .map(|(id, l)| (*id, *l));
    let current = current.filter(|h| map.get(h).is_some_and(eligible));
    match (current, best) {
        (Some(cur), Some((id, l))) if id != cur => match latency.get(&cur) {
            Some(&cur_l) if !(l + HOME_HYSTERESIS <= cur_l && l * 3 <= cur_l * 2) => Some(cur),
            _ => Some(id),
        },
        (Some(cur), _) => Some(cur),
        (None, Some((id, _))) => Some(id),
        (None, None) => map.iter().find(|(_, r)| eligible(r)).map(|(id, _)| *id),
    }
}

/// Hands what the workers divert to the paths task, never blocking them.
struct Diverter {
    datagrams: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    relay: mpsc::Sender<(Key, u16, Vec<u8>)>,
}

impl OffPath for Diverter {
    fn non_wireguard(&self, from: SocketAddr, datagram: &[u8]) {
        let _ = self.datagrams.try_send((from, datagram.to_vec()));
    }

    fn relay(&self, peer: &Key, region: u16, packet: &[u8]) {
        let _ = self.relay.try_send((*peer, region, packet.to_vec()));
    }
}

struct Receivers {
    commands: mpsc::UnboundedReceiver<PathsUpdate>,
    datagrams: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    relay: mpsc::Receiver<(Key, u16, Vec<u8>)>,
}

/// Peer paths for one engine. Create it with [`Paths::new`] (which hooks it into the
/// engine), feed it with [`Paths::update`], and run [`Paths::run`] on the control
/// thread's runtime.
pub struct Paths {
    disco_public: Key,
    commands: mpsc::UnboundedSender<PathsUpdate>,
    report: Mutex<Report>,
    changed: Notify,
    /// Taken by `run`.
    pending: Mutex<Option<(Disco, Receivers)>>,
}

impl Paths {
    /// Hooks into `engine` and makes a fresh disco key (never stored: a new one every
    /// start, as Tailscale does).
    pub fn new(engine: &Engine) -> Arc<Paths> {
        let disco = Disco::new(ringscale_keys::PrivateKey::generate());
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (dg_tx, dg_rx) = mpsc::channel(DATAGRAM_QUEUE);
        let (relay_tx, relay_rx) = mpsc::channel(RELAY_QUEUE);
        engine.set_off_path(Arc::new(Diverter {
            datagrams: dg_tx,
            relay: relay_tx,
        }));
        Arc::new(Paths {
            disco_public: disco.public_key(),
            commands: cmd_tx,
            report: Mutex::new(Report::default()),
            changed: Notify::new(),
            pending: Mutex::new(Some((
                disco,
                Receivers {
                    commands: cmd_rx,
                    datagrams: dg_rx,
                    relay: relay_rx,
                },
            ))),
        })
    }

    /// Our disco public key, for every MapRequest.
    pub fn disco_key(&self) -> DiscoPublic {
        DiscoPublic(self.disco_public)
    }

    /// A new netmap (or new local endpoints).
    pub fn update(&self, update: PathsUpdate) {
        let _ = self.commands.send(update);
    }

    /// Our endpoints and home region as control should know them.
    pub fn report(&self) -> Report {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Resolves when [`Paths::report`] changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn set_report(&self, r: Report) {
        let Ok(mut cur) = self.report.lock() else {
            return;
        };
        // Latencies move all the time; only endpoints and home matter to control.
        let significant = cur.endpoints != r.endpoints || cur.home_derp != r.home_derp;
        *cur = r;
        drop(cur);
        if significant {
            self.changed.notify_one();
        }
    }

    /// Runs until the engine goes away. Call once.
    pub async fn run(&self, engine: &Engine) {
        let Some((disco, rx)) = self.pending.lock().ok().and_then(|mut p| p.take()) else {
            log::error!("paths: run called twice");
            return;
        };
        let (derp_tx, derp_rx) = mpsc::channel(DERP_EVENT_QUEUE);
        let mut task = Task {
            paths: self,
            disco,
            engine,
            last_send: HashMap::new(),
            node_private: None,
            derp_map: BTreeMap::new(),
            regions: HashMap::new(),
            derp_events: derp_tx,
            home: None,
            stun_pending: HashMap::new(),
            latency: HashMap::new(),
            stun_endpoint: None,
            local_endpoints: Vec::new(),
            next_stun: Instant::now(),
        };
        task.run(rx, derp_rx).await;
    }
}

struct RegionConn {
    client: RegionClient,
    last_used: Instant,
}

struct Task<'a> {
    paths: &'a Paths,
    disco: Disco,
    engine: &'a Engine,
    /// The data plane's last-send stamp per peer, to notice new traffic.
    last_send: HashMap<Key, u64>,
    node_private: Option<ringscale_keys::PrivateKey>,
    /// Regions usable for DERP (with at least one non-STUN-only node).
    derp_map: BTreeMap<u16, DerpRegion>,
    regions: HashMap<u16, RegionConn>,
    derp_events: mpsc::Sender<DerpEvent>,
    home: Option<u16>,
    /// STUN transactions in flight: region and when sent.
    stun_pending: HashMap<stun::TxId, (u16, Instant)>,
    latency: HashMap<u16, Duration>,
    stun_endpoint: Option<SocketAddr>,
    local_endpoints: Vec<SocketAddr>,
    next_stun: Instant,
}

impl Task<'_> {
    async fn run(&mut self, mut rx: Receivers, mut derp_rx: mpsc::Receiver<DerpEvent>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.commands.recv() => match cmd {
                    Some(u) => self.apply(u),
                    None => return,
                },
                Some((from, dgram)) = rx.datagrams.recv() => self.datagram(from, &dgram),
                Some((peer, region, packet)) = rx.relay.recv() => self.relay(region, peer, packet),
                Some(ev) = derp_rx.recv() => self.derp_event(ev),
                _ = tick.tick() => self.tick(),
            }
            self.flush();
        }
    }

    fn apply(&mut self, u: PathsUpdate) {
        let now = Instant::now();
        if !u.node_private.is_zero() {
            let public = u.node_private.public();
            if self.node_private.as_ref() != Some(&u.node_private.0) {
                // DERP connections identify us by the node key: start them over.
                self.regions.clear();
                self.node_private = Some(u.node_private.0);
            }
            self.disco.set_node_key(public);
        }
        self.local_endpoints = u.local_endpoints;
        let map: BTreeMap<u16, DerpRegion> = u
            .derp_map
            .and_then(|m| m.regions)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(id, r)| Some((u16::try_from(id).ok().filter(|i| *i > 0)?, r?)))
            .filter(|(_, r)| r.nodes.iter().any(|n| !n.stun_only))
            .collect();
        if map != self.derp_map {
            self.derp_map = map;
            self.regions.retain(|id, _| self.derp_map.contains_key(id));
            self.latency.retain(|id, _| self.derp_map.contains_key(id));
            self.next_stun = now;
        }
        self.choose_home();
        // A build without DERP still uses the map's STUN servers, but never relays.
        let relays = match derp::ENABLED {
            true => self.derp_map.keys().copied().collect(),
            false => Vec::new(),
        };
        self.disco.set_derp_regions(relays, now);
        self.disco.set_peers(&u.peers, now);
        self.last_send
            .retain(|k, _| u.peers.iter().any(|p| p.node_key == *k));
        self.publish();
        // A reconfiguration may have built new peers: give every peer its path again.
        let table = self.engine.table();
        for p in &u.peers {
            let path = self.disco.path(&p.node_key, now);
            if path != Path::None {
                table.set_endpoint(&p.node_key, path.endpoint());
            }
        }
    }

    fn choose_home(&mut self) {
        let home = choose_home(&self.derp_map, &self.latency, self.home);
        if home == self.home {
            return;
        }
        if let Some(old) = self.home.and_then(|h| self.regions.get(&h)) {
            old.client.set_preferred(false);
        }
        self.home = home;
        if let Some(h) = home {
            log::info!("paths: home DERP region is {h}");
            if let Some(c) = self.region(h) {
                c.client.set_preferred(true);
            }
        }
    }

    /// The connection to `region`, started if needed.
    fn region(&mut self, region: u16) -> Option<&mut RegionConn> {
        if !derp::ENABLED {
            return None;
        }
        let key = self.node_private.clone()?;
        let info = self.derp_map.get(&region)?.clone();
        let preferred = self.home == Some(region);
        let events = self.derp_events.clone();
        let conn = self.regions.entry(region).or_insert_with(|| RegionConn {
            client: derp::spawn_region(info, key, preferred, events),
            last_used: Instant::now(),
        });
        conn.last_used = Instant::now();
        Some(conn)
    }

    fn relay(&mut self, region: u16, peer: Key, packet: Vec<u8>) {
        match self.region(region) {
            Some(conn) => {
                if !conn.client.send(peer, packet) {
                    log::trace!("paths: DERP region {region} queue full; packet dropped");
                }
            }
            None => log::trace!("paths: no DERP region {region} for {peer:?}; packet dropped"),
        }
    }

    fn derp_event(&mut self, ev: DerpEvent) {
        match ev {
            DerpEvent::Packet {
                region,
                src,
                packet,
            } => {
                if let Some(c) = self.regions.get_mut(&region) {
                    c.last_used = Instant::now();
                }
                if disco::looks_like_disco(&packet) {
                    if let Err(e) = self.disco.handle_derp(region, src, &packet, Instant::now()) {
                        log::debug!("paths: disco via DERP {region} from {src:?} dropped: {e}");
                    }
                } else {
                    self.engine.receive_relayed(region, &packet);
                }
            }
            DerpEvent::Connected(region) | DerpEvent::Disconnected(region) => {
                log::debug!("paths: DERP region {region} connection changed");
            }
        }
    }

    fn datagram(&mut self, from: SocketAddr, dgram: &[u8]) {
        if disco::looks_like_disco(dgram) {
            if let Err(e) = self.disco.handle_udp(from, dgram, Instant::now()) {
                log::debug!("paths: disco packet from {from} dropped: {e}");
            }
            return;
        }
        match stun::parse_response(dgram) {
            Ok((tx, mapped)) => {
                let Some((region, sent)) = self.stun_pending.remove(&tx) else {
                    log::debug!("paths: STUN answer from {from} for no request of ours");
                    return;
                };
                let rtt = sent.elapsed();
                if rtt <= STUN_TIMEOUT {
                    self.latency.insert(region, rtt);
                }
                if self.stun_endpoint != Some(mapped) {
                    log::info!("paths: STUN (region {region}) sees us at {mapped}");
                    self.stun_endpoint = Some(mapped);
                }
                self.choose_home();
                self.publish();
            }
            Err(e) => log::debug!("paths: {} bytes from {from} dropped: {e}", dgram.len()),
        }
    }

    /// Sends a STUN request to the first STUN-capable node of every region.
    fn stun_round(&mut self, now: Instant) {
        self.stun_pending
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < STUN_TIMEOUT);
        for (id, region) in &self.derp_map {
            if region.no_measure_no_home {
                continue;
            }
            let Some(to) = region.nodes.iter().find_map(|n| {
                let port = match n.stun_port {
                    -1 => return None,
                    0 => 3478,
                    p => u16::try_from(p).ok()?,
                };
                let ip: IpAddr = n.ipv4.parse().or_else(|_| n.host_name.parse()).ok()?;
                Some(SocketAddr::new(ip, port))
            }) else {
                continue;
            };
            let mut tx = [0u8; 12];
            ringscale_sys::random::fill(&mut tx);
            if let Err(e) = self.engine.send_udp(to, &stun::request(&tx)) {
                log::debug!("paths: STUN request to {to}: {e}");
                continue;
            }
            self.stun_pending.insert(tx, (*id, now));
        }
    }

    /// Our endpoints for peers (CallMeMaybe) and for control (lite map update).
    fn publish(&mut self) {
        let mut endpoints: Vec<(SocketAddr, i64)> = Vec::new();
        if let Some(s) = self.stun_endpoint {
            endpoints.push((s, ENDPOINT_STUN));
        }
        for l in &self.local_endpoints {
            if !endpoints.iter().any(|(a, _)| a == l) {
                endpoints.push((*l, ENDPOINT_LOCAL));
            }
        }
        self.disco
            .set_our_endpoints(endpoints.iter().map(|(a, _)| *a).collect());
        let derp_latency = self
            .latency
            .iter()
            .map(|(id, l)| (format!("{id}-v4"), l.as_secs_f64()))
            .collect();
        self.paths.set_report(Report {
            endpoints,
            home_derp: self.home.unwrap_or(0),
            derp_latency,
        });
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let table = self.engine.table();
        for peer in table.peers() {
            let stamp = peer.last_send_ms();
            if stamp == 0 {
                continue;
            }
            let seen = self.last_send.entry(peer.key).or_insert(0);
            if *seen != stamp {
                *seen = stamp;
                self.disco.note_send(&peer.key, now);
            }
        }
        self.disco.tick(now);
        let home = self.home;
        self.regions.retain(|id, c| {
            Some(*id) == home || now.saturating_duration_since(c.last_used) < DERP_IDLE
        });
        if now >= self.next_stun && !self.derp_map.is_empty() {
            self.stun_round(now);
            let mut b = [0u8; 1];
            ringscale_sys::random::fill(&mut b);
            // 20–26 s, randomised so nodes do not STUN in lockstep.
            self.next_stun = now + Duration::from_millis(20_000 + u64::from(b[0]) * 6000 / 255);
        }
    }

    /// Carries out what disco decided: packets to send, paths to set.
    fn flush(&mut self) {
        while let Some(t) = self.disco.poll_transmit() {
            match t.via {
                Via::Udp(to) => {
                    if let Err(e) = self.engine.send_udp(to, &t.packet) {
                        log::debug!("paths: disco to {to}: {e}");
                    }
                }
                Via::Derp { region, node } => self.relay(region, node, t.packet),
            }
        }
        let mut table = None;
        while let Some((node, path)) = self.disco.poll_path_change() {
            let table = table.get_or_insert_with(|| self.engine.table());
            if path != Path::None {
                log::debug!("paths: {node:?} now via {path:?}");
                table.set_endpoint(&node, path.endpoint());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringscale_tailcfg::{DerpNode, DiscoPublic, Node, NodePublic};

    fn region(id: u16, no_home: bool) -> DerpRegion {
        DerpRegion {
            region_id: i64::from(id),
            no_measure_no_home: no_home,
            nodes: vec![DerpNode {
                name: format!("{id}a"),
                ..DerpNode::default()
            }],
            ..DerpRegion::default()
        }
    }

    #[test]
    fn home_is_the_fastest_region_with_hysteresis() {
        let map: BTreeMap<u16, DerpRegion> = [
            (1, region(1, false)),
            (2, region(2, false)),
            (3, region(3, true)),
        ]
        .into_iter()
        .collect();
        let ms = Duration::from_millis;
        // Nothing measured: the lowest eligible ID, or the current home.
        assert_eq!(choose_home(&map, &HashMap::new(), None), Some(1));
        assert_eq!(choose_home(&map, &HashMap::new(), Some(2)), Some(2));
        // Never a NoMeasureNoHome region, however fast.
        let lat: HashMap<u16, Duration> = [(1, ms(50)), (3, ms(1))].into_iter().collect();
        assert_eq!(choose_home(&map, &lat, None), Some(1));
        // 40 vs 50 ms: 10 ms faster but not under 2/3: stay.
        let lat: HashMap<u16, Duration> = [(1, ms(50)), (2, ms(40))].into_iter().collect();
        assert_eq!(choose_home(&map, &lat, Some(1)), Some(1));
        assert_eq!(choose_home(&map, &lat, None), Some(2));
        // 20 vs 50 ms: move.
        let lat: HashMap<u16, Duration> = [(1, ms(50)), (2, ms(20))].into_iter().collect();
        assert_eq!(choose_home(&map, &lat, Some(1)), Some(2));
        // The current home was not measured (unreachable): the measured one wins.
        let lat: HashMap<u16, Duration> = [(2, ms(90))].into_iter().collect();
        assert_eq!(choose_home(&map, &lat, Some(1)), Some(2));
        // A home that left the map is replaced.
        assert_eq!(choose_home(&map, &HashMap::new(), Some(7)), Some(1));
    }

    #[test]
    fn netmap_peers_without_disco_are_left_to_the_netmap() {
        let mut nm = NetMap::new();
        nm.peers.insert(
            1,
            Node {
                id: 1,
                key: NodePublic(Key([1; 32])),
                disco_key: DiscoPublic(Key([2; 32])),
                endpoints: vec!["10.0.0.1:41641".parse().unwrap()],
                home_derp: 900,
                ..Node::default()
            },
        );
        nm.peers.insert(
            2,
            Node {
                id: 2,
                key: NodePublic(Key([3; 32])),
                ..Node::default()
            },
        );
        nm.peers.insert(
            3,
            Node {
                id: 3,
                key: NodePublic(Key([4; 32])),
                disco_key: DiscoPublic(Key([5; 32])),
                home_derp: 1 << 20,
                ..Node::default()
            },
        );
        let u = PathsUpdate::from_netmap(&nm, PrivateKey::generate(), vec![]);
        assert_eq!(
            u.peers.len(),
            2,
            "the peer without a disco key is not disco's"
        );
        assert_eq!(u.peers[0].node_key, Key([1; 32]));
        assert_eq!(u.peers[0].home_derp, Some(900));
        assert_eq!(u.peers[0].endpoints.len(), 1);
        // A region ID beyond the pseudo address's port range cannot be used.
        assert_eq!(u.peers[1].home_derp, None);
    }

    #[test]
    fn report_carries_home_and_latency_into_net_info() {
        assert_eq!(Report::default().net_info(), None);
        let r = Report {
            endpoints: vec![("198.51.100.1:41641".parse().unwrap(), ENDPOINT_STUN)],
            home_derp: 900,
            derp_latency: [("900-v4".to_string(), 0.004)].into_iter().collect(),
        };
        let ni = r.net_info().unwrap();
        assert_eq!(ni.preferred_derp, 900);
        assert_eq!(ni.derp_latency["900-v4"], 0.004);
        assert_eq!(ni.working_udp, Some(true));
    }
}
