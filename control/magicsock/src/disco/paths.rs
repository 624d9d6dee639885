//! Path discovery for every disco-speaking peer, with no I/O (protocol.md §7.4, §7.5):
//! which endpoints to ping and when, what a pong proves, and which path the data plane
//! should use for each peer right now. The control thread feeds in disco packets, the
//! netmap and "we sent to this peer" notes, calls [`Disco::tick`] a few times a second,
//! and carries out what comes out of [`Disco::poll_transmit`] and
//! [`Disco::poll_path_change`].
//!
//! It behaves as Go's magicsock does, closely enough that a Go peer and we agree:
//! - a pong to one of our pings (matched by its TxID, within 5 s) makes the pinged
//!   address the best direct path if it is better or the old one is no longer trusted,
//!   and trusts it for 6.5 s; pongs on it while traffic flows (heartbeats every 3 s)
//!   keep the trust alive;
//! - without a trusted direct path, packets go through DERP (the peer's home region),
//!   and sending starts discovery: every candidate endpoint not pinged in the last 5 s
//!   is pinged, and a CallMeMaybe with our endpoints goes out through DERP;
//! - a Ping is answered with a Pong on the path it came from; a UDP ping's source
//!   becomes a candidate endpoint (forgotten 45 s after the last such ping);
//! - a CallMeMaybe (DERP only) replaces the peer's advertised endpoints and pings them.
//!
//! Security: a path moves only on a pong that decrypts with the peer's disco key and
//! carries the TxID of a ping we sent to that peer and have not yet seen answered.
//! Anything else is counted, dropped and reported to the caller as an error.

use super::message::{self, DiscoError, Message, Sealed, TxId};
use super::naclbox::SharedKey;
use ringscale_keys::{Key, PrivateKey};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Ping the best path this often while traffic flows (Go `heartbeatInterval`).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// How long a pong makes a direct path trusted (Go `trustUDPAddrDuration`).
pub const TRUST_UDP_ADDR_DURATION: Duration = Duration::from_millis(6500);
/// A ping without a pong after this long is forgotten (Go `pingTimeoutDuration`).
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two discovery pings to one endpoint (Go `discoPingInterval`).
pub const DISCO_PING_INTERVAL: Duration = Duration::from_secs(5);
/// A peer we sent to within this long has an active session (Go
/// `sessionActiveTimeout`); learned endpoints are also forgotten after it.
pub const SESSION_ACTIVE_TIMEOUT: Duration = Duration::from_secs(45);
/// With a working but slow direct path, look for a better one this often.
pub const UPGRADE_INTERVAL: Duration = Duration::from_secs(60);
/// A direct path this fast is not worth replacing.
pub const GOOD_ENOUGH_LATENCY: Duration = Duration::from_millis(5);
/// Most endpoints remembered per peer, so pings from many sources cannot grow memory.
const MAX_ENDPOINTS_PER_PEER: usize = 64;
/// Most unanswered pings remembered per peer.
const MAX_SENT_PINGS_PER_PEER: usize = 256;

pub use ringscale_dataplane::{derp_addr, derp_region_of, DERP_MAGIC_IP};

/// Where a disco message (or a packet) goes, or came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// A UDP datagram from the WireGuard socket.
    Udp(SocketAddr),
    /// Relayed by DERP `region` to or from the peer with this node key.
    Derp { region: u16, node: Key },
}

/// A disco packet to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub via: Via,
    pub packet: Vec<u8>,
}

/// How the data plane should reach a peer now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// UDP to this address.
    Direct(SocketAddr),
    /// Relayed through this DERP region.
    Derp(u16),
    /// Nowhere known yet.
    None,
}

impl Path {
    /// The endpoint the data plane's peer table takes: a direct address or the DERP
    /// pseudo address.
    pub fn endpoint(self) -> Option<SocketAddr> {
        match self {
            Path::Direct(a) => Some(a),
            Path::Derp(r) => Some(derp_addr(r)),
            Path::None => None,
        }
    }
}

/// What the netmap says about one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub node_key: Key,
    pub disco_key: Key,
    /// Candidate UDP endpoints (`Node.Endpoints`).
    pub endpoints: Vec<SocketAddr>,
    /// Home DERP region (`Node.HomeDERP`), if any.
    pub home_derp: Option<u16>,
}

/// Counters for status and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscoStats {
    pub pings_received: u64,
    pub pongs_sent: u64,
    pub pings_sent: u64,
    /// Pongs that answered one of our pings.
    pub pongs_matched: u64,
    /// Authentic pongs with a TxID we are not waiting for (late, duplicated, replayed).
    pub pongs_unmatched: u64,
    pub call_me_maybe_received: u64,
    pub call_me_maybe_sent: u64,
    /// Packets dropped for any [`DiscoError`].
    pub dropped: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct EndpointState {
    /// Listed in the netmap.
    from_netmap: bool,
    /// Listed in the peer's last CallMeMaybe.
    from_call_me_maybe: bool,
    /// Learned from a UDP ping's source: when the last such ping arrived.
    last_got_ping: Option<Instant>,
    /// When we last pinged it.
    last_ping: Option<Instant>,
    /// Latency of the last pong.
    latency: Option<Duration>,
}

impl EndpointState {
    fn keep(&self, now: Instant) -> bool {
        self.from_netmap
            || self.from_call_me_maybe
            || self
                .last_got_ping
                .is_some_and(|t| now.saturating_duration_since(t) <= SESSION_ACTIVE_TIMEOUT)
    }
}

#[derive(Clone, Copy, Debug)]
struct SentPing {
    to: SocketAddr,
    at: Instant,
}

#[derive(Clone, Copy, Debug)]
struct BestAddr {
    addr: SocketAddr,
    latency: Duration,
}

struct PeerState {
    disco_key: Key,
    shared: SharedKey,
    home_derp: Option<u16>,
    /// The region the peer's last DERP packet came through.
    derp_seen: Option<u16>,
    /// Netmap order of the endpoints, for the first-guess path.
    netmap_endpoints: Vec<SocketAddr>,
    endpoints: HashMap<SocketAddr, EndpointState>,
    sent_pings: HashMap<TxId, SentPing>,
    best: Option<BestAddr>,
    trust_until: Option<Instant>,
    last_send: Option<Instant>,
    last_full_ping: Option<Instant>,
    next_heartbeat: Option<Instant>,
    /// The path last reported through `poll_path_change`.
    reported: Path,
}

impl PeerState {
    fn trusted(&self, now: Instant) -> bool {
        self.best.is_some() && self.trust_until.is_some_and(|t| now < t)
    }

    fn derp_region(&self) -> Option<u16> {
        self.home_derp.or(self.derp_seen)
    }

    fn active(&self, now: Instant) -> bool {
        self.last_send
            .is_some_and(|t| now.saturating_duration_since(t) <= SESSION_ACTIVE_TIMEOUT)
    }

    /// Go `wantFullPingLocked`.
    fn want_full_ping(&self, now: Instant) -> bool {
        let (Some(best), Some(last)) = (self.best, self.last_full_ping) else {
            return true;
        };
        if !self.trusted(now) {
            return true;
        }
        best.latency > GOOD_ENOUGH_LATENCY
            && now.saturating_duration_since(last) >= UPGRADE_INTERVAL
    }

    fn reset(&mut self) {
        self.best = None;
        self.trust_until = None;
        self.last_full_ping = None;
        self.sent_pings.clear();
        for st in self.endpoints.values_mut() {
            st.last_ping = None;
            st.latency = None;
        }
    }
}

/// Ours: the keys and addresses every message needs, and the output queues.
struct Local {
    public: Key,
    private: PrivateKey,
    node_key: Option<Key>,
    our_endpoints: Vec<SocketAddr>,
    derp_regions: Vec<u16>,
    transmits: VecDeque<Transmit>,
    stats: DiscoStats,
}

impl Local {
    fn send(&mut self, peer: &PeerState, via: Via, msg: &Message) {
        let packet = message::seal(&self.public, &peer.shared, msg);
        self.transmits.push_back(Transmit { via, packet });
    }

    fn derp_usable(&self, region: u16) -> bool {
        self.derp_regions.contains(&region)
    }

    /// Starts a discovery ping to `to`.
    fn ping(&mut self, peer: &mut PeerState, to: SocketAddr, now: Instant) {
        if peer.sent_pings.len() >= MAX_SENT_PINGS_PER_PEER {
            expire_pings(peer, now);
            if peer.sent_pings.len() >= MAX_SENT_PINGS_PER_PEER {
                return;
            }
        }
        let mut tx_id = [0u8; message::TX_ID_LEN];
        ringscale_sys::random::fill(&mut tx_id);
        if let Some(st) = peer.endpoints.get_mut(&to) {
            st.last_ping = Some(now);
        }
        peer.sent_pings.insert(tx_id, SentPing { to, at: now });
        let msg = Message::Ping {
            tx_id,
            node_key: self.node_key,
            padding: 0,
        };
        self.send(peer, Via::Udp(to), &msg);
        self.stats.pings_sent += 1;
    }

    /// Go `sendDiscoPingsLocked`: ping every endpoint not pinged recently, and tell the
    /// peer through DERP to ping us back.
    fn ping_all(&mut self, peer: &mut PeerState, node: Key, now: Instant, call_me_maybe: bool) {
        peer.last_full_ping = Some(now);
        let due: Vec<SocketAddr> = peer
            .endpoints
            .iter()
            .filter(|(_, st)| {
                st.last_ping
                    .is_none_or(|t| now.saturating_duration_since(t) >= DISCO_PING_INTERVAL)
            })
            .map(|(a, _)| *a)
            .collect();
        for to in &due {
            self.ping(peer, *to, now);
        }
        if due.is_empty() || !call_me_maybe || self.our_endpoints.is_empty() {
            return;
        }
        if let Some(region) = peer.derp_region().filter(|r| self.derp_usable(*r)) {
            let msg = Message::CallMeMaybe {
                endpoints: self.our_endpoints.clone(),
            };
            self.send(peer, Via::Derp { region, node }, &msg);
            self.stats.call_me_maybe_sent += 1;
        }
    }

    /// The path the data plane should use for `peer` now.
    fn path(&self, peer: &PeerState, now: Instant) -> Path {
        if let (true, Some(best)) = (peer.trusted(now), peer.best) {
            return Path::Direct(best.addr);
        }
        if let Some(region) = peer.derp_region().filter(|r| self.derp_usable(*r)) {
            return Path::Derp(region);
        }
        if let Some(best) = peer.best {
            // Expired, but nothing better: keep using it while pings re-check it.
            return Path::Direct(best.addr);
        }
        // No DERP and nothing confirmed: the netmap's first endpoint is the best guess
        // (a Go peer accepts WireGuard from any address and answers via its own path).
        peer.netmap_endpoints
            .first()
            .map_or(Path::None, |a| Path::Direct(*a))
    }
}

fn expire_pings(peer: &mut PeerState, now: Instant) {
    peer.sent_pings
        .retain(|_, sp| now.saturating_duration_since(sp.at) < PING_TIMEOUT);
}

/// Go `betterAddr`: is `a` a better direct path than `b`? Points are the percentage by
/// which one is faster, plus bonuses for loopback (50), private addresses (20) and IPv6
/// (10); a change needs more than one point, so near-equal paths do not flap.
pub fn better_addr(a: (SocketAddr, Duration), b: Option<(SocketAddr, Duration)>) -> bool {
    let Some(b) = b else {
        return true;
    };
    if a.0 == b.0 {
        return false;
    }
    let (mut a_points, mut b_points) = (0i64, 0i64);
    let (al, bl) = (a.1.as_nanos() as i64, b.1.as_nanos() as i64);
    if al > bl && al > 0 {
        b_points = 100 - (bl * 100) / al;
    } else if bl > 0 {
        a_points = 100 - (al * 100) / bl;
    }
    let bonus = |ip: IpAddr| -> i64 {
        let base = if ip.is_loopback() {
            50
        } else if is_private(ip) {
            20
        } else {
            0
        };
        base + if ip.is_ipv6() { 10 } else { 0 }
    };
    a_points += bonus(a.0.ip());
    b_points += bonus(b.0.ip());
    if a_points <= 1 && b_points == 0 {
        return false;
    }
    a_points > b_points
}

/// RFC 1918 and RFC 4193 addresses (Go `netip.Addr.IsPrivate`).
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn is_v6_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Path discovery for all peers.
pub struct Disco {
    local: Local,
    /// Peers by node key.
    peers: HashMap<Key, PeerState>,
    /// Node key by disco key: the binding control vouches for.
    by_disco: HashMap<Key, Key>,
    path_changes: VecDeque<(Key, Path)>,
}

impl Disco {
    /// `private` is a fresh disco private key: Tailscale makes a new one on every start
    /// and never stores it.
    pub fn new(private: PrivateKey) -> Disco {
        Disco {
            local: Local {
                public: private.public(),
                private,
                node_key: None,
                our_endpoints: Vec::new(),
                derp_regions: Vec::new(),
                transmits: VecDeque::new(),
                stats: DiscoStats::default(),
            },
            peers: HashMap::new(),
            by_disco: HashMap::new(),
            path_changes: VecDeque::new(),
        }
    }

    /// Our disco public key, for MapRequest.DiscoKey.
    pub fn public_key(&self) -> Key {
        self.local.public
    }

    /// Our node key, sent in our pings so peers can map our disco key to it.
    pub fn set_node_key(&mut self, node_key: Key) {
        self.local.node_key = Some(node_key);
    }

    /// Our own endpoints, sent to peers in CallMeMaybe.
    pub fn set_our_endpoints(&mut self, endpoints: Vec<SocketAddr>) {
        self.local.our_endpoints = endpoints;
    }

    /// The DERP regions we can relay through (those in the DERP map).
    pub fn set_derp_regions(&mut self, regions: Vec<u16>, now: Instant) {
        self.local.derp_regions = regions;
        self.update_paths(now);
    }

    pub fn stats(&self) -> DiscoStats {
        self.local.stats
    }

    /// The path for `node` now (None for peers not known to disco).
    pub fn path(&self, node: &Key, now: Instant) -> Path {
        self.peers
            .get(node)
            .map_or(Path::None, |p| self.local.path(p, now))
    }

    /// Replaces the set of disco peers with what the netmap says. Peers whose disco key
    /// changed start over (the peer restarted: old paths and pings mean nothing).
    pub fn set_peers(&mut self, peers: &[PeerInfo], now: Instant) {
        let mut keep: HashMap<Key, ()> = HashMap::with_capacity(peers.len());
        self.by_disco.clear();
        for info in peers {
            if info.disco_key.0 == [0; 32] {
                continue;
            }
            keep.insert(info.node_key, ());
            self.by_disco.insert(info.disco_key, info.node_key);
            let peer = self
                .peers
                .entry(info.node_key)
                .or_insert_with(|| PeerState {
                    disco_key: info.disco_key,
                    shared: SharedKey::new(&self.local.private, &info.disco_key.0),
                    home_derp: None,
                    derp_seen: None,
                    netmap_endpoints: Vec::new(),
                    endpoints: HashMap::new(),
                    sent_pings: HashMap::new(),
                    best: None,
                    trust_until: None,
                    last_send: None,
                    last_full_ping: None,
                    next_heartbeat: None,
                    reported: Path::None,
                });
            if peer.disco_key != info.disco_key {
                log::debug!(
                    "disco: peer {:?} has a new disco key; starting over",
                    info.node_key
                );
                peer.disco_key = info.disco_key;
                peer.shared = SharedKey::new(&self.local.private, &info.disco_key.0);
                peer.reset();
            }
            peer.home_derp = info.home_derp;
            peer.netmap_endpoints = info.endpoints.clone();
            for st in peer.endpoints.values_mut() {
                st.from_netmap = false;
            }
            for ep in info.endpoints.iter().take(MAX_ENDPOINTS_PER_PEER) {
                peer.endpoints.entry(*ep).or_default().from_netmap = true;
            }
            peer.endpoints.retain(|_, st| st.keep(now));
            if let Some(best) = peer.best {
                if !peer.endpoints.contains_key(&best.addr) {
                    peer.best = None;
                    peer.trust_until = None;
                }
            }
        }
        self.peers.retain(|k, _| keep.contains_key(k));
        self.update_paths(now);
    }

    /// The data plane sent to `node`: keep its session active, and start discovery if
    /// it has no trusted direct path (Go `endpoint.send`).
    pub fn note_send(&mut self, node: &Key, now: Instant) {
        let Some(peer) = self.peers.get_mut(node) else {
            return;
        };
        peer.last_send = Some(now);
        if peer.next_heartbeat.is_none() {
            peer.next_heartbeat = Some(now + HEARTBEAT_INTERVAL);
        }
        if !peer.trusted(now) {
            self.local.ping_all(peer, *node, now, true);
        }
    }

    /// A disco packet that arrived on the WireGuard UDP socket from `from`.
    pub fn handle_udp(
        &mut self,
        from: SocketAddr,
        pkt: &[u8],
        now: Instant,
    ) -> Result<(), DiscoError> {
        self.receive(Via::Udp(from), pkt, now)
    }

    /// A disco packet relayed by DERP `region` from the peer with node key `node`.
    pub fn handle_derp(
        &mut self,
        region: u16,
        node: Key,
        pkt: &[u8],
        now: Instant,
    ) -> Result<(), DiscoError> {
        self.receive(Via::Derp { region, node }, pkt, now)
    }

    fn receive(&mut self, via: Via, pkt: &[u8], now: Instant) -> Result<(), DiscoError> {
        let r = self.receive_inner(via, pkt, now);
        if r.is_err() {
            self.local.stats.dropped += 1;
        }
        r
    }

    fn receive_inner(&mut self, via: Via, pkt: &[u8], now: Instant) -> Result<(), DiscoError> {
        let sealed = Sealed::parse(pkt)?;
        let node = *self
            .by_disco
            .get(&sealed.sender)
            .ok_or(DiscoError::UnknownSender)?;
        let peer = self.peers.get_mut(&node).ok_or(DiscoError::UnknownSender)?;
        let msg = sealed.open(&peer.shared)?;
        if let Via::Derp { region, node: src } = via {
            // The DERP server vouches for the sender's node key; it must be the one
            // control bound to this disco key.
            if src != node {
                return Err(DiscoError::WrongPath);
            }
            peer.derp_seen = Some(region);
        }
        match msg {
            Message::Ping {
                tx_id, node_key, ..
            } => {
                if node_key.is_some_and(|k| k != node) {
                    return Err(DiscoError::WrongNodeKey);
                }
                self.local.stats.pings_received += 1;
                let src = match via {
                    Via::Udp(from) => from,
                    Via::Derp { region, .. } => derp_addr(region),
                };
                self.local.send(peer, via, &Message::Pong { tx_id, src });
                self.local.stats.pongs_sent += 1;
                if let Via::Udp(from) = via {
                    let known = peer.endpoints.contains_key(&from);
                    if known || peer.endpoints.len() < MAX_ENDPOINTS_PER_PEER {
                        let st = peer.endpoints.entry(from).or_default();
                        if !st.from_netmap {
                            st.last_got_ping = Some(now);
                        }
                    }
                    // A new way in while we are talking and have no trusted path: check
                    // it now rather than at the next heartbeat.
                    let due = peer.endpoints.get(&from).is_some_and(|st| {
                        st.last_ping
                            .is_none_or(|t| now.saturating_duration_since(t) >= DISCO_PING_INTERVAL)
                    });
                    if due && peer.active(now) && !peer.trusted(now) {
                        self.local.ping(peer, from, now);
                    }
                }
            }
            Message::Pong { tx_id, .. } => {
                let Some(sp) = peer.sent_pings.remove(&tx_id) else {
                    self.local.stats.pongs_unmatched += 1;
                    log::debug!("disco: pong from {node:?} for a ping we did not send (or already answered)");
                    return Ok(());
                };
                if now.saturating_duration_since(sp.at) >= PING_TIMEOUT {
                    self.local.stats.pongs_unmatched += 1;
                    return Ok(());
                }
                self.local.stats.pongs_matched += 1;
                let latency = now.saturating_duration_since(sp.at);
                let Some(st) = peer.endpoints.get_mut(&sp.to) else {
                    // No longer an endpoint we care about.
                    return Ok(());
                };
                st.latency = Some(latency);
                let current = peer.best.map(|b| (b.addr, b.latency));
                if !peer.trusted(now) || better_addr((sp.to, latency), current) {
                    if peer.best.map(|b| b.addr) != Some(sp.to) {
                        log::info!(
                            "disco: peer {node:?} now reachable directly at {} ({latency:.1?})",
                            sp.to
                        );
                    }
                    peer.best = Some(BestAddr {
                        addr: sp.to,
                        latency,
                    });
                }
                if let Some(best) = peer.best.as_mut().filter(|b| b.addr == sp.to) {
                    best.latency = latency;
                    peer.trust_until = Some(now + TRUST_UDP_ADDR_DURATION);
                }
            }
            Message::CallMeMaybe { endpoints } => {
                let Via::Derp { .. } = via else {
                    return Err(DiscoError::WrongPath);
                };
                self.local.stats.call_me_maybe_received += 1;
                for st in peer.endpoints.values_mut() {
                    st.from_call_me_maybe = false;
                }
                for ep in endpoints {
                    if is_v6_link_local(ep.ip()) {
                        continue;
                    }
                    if peer.endpoints.len() >= MAX_ENDPOINTS_PER_PEER
                        && !peer.endpoints.contains_key(&ep)
                    {
                        break;
                    }
                    peer.endpoints.entry(ep).or_default().from_call_me_maybe = true;
                }
                peer.endpoints.retain(|_, st| st.keep(now));
                for st in peer.endpoints.values_mut() {
                    st.last_ping = None;
                }
                self.local.ping_all(peer, node, now, false);
            }
            Message::Unknown { kind } => {
                log::trace!("disco: ignoring message type {kind} from {node:?}");
            }
        }
        self.update_path(node, now);
        Ok(())
    }

    /// Timers: ping timeouts, forgetting learned endpoints, heartbeats, trust expiry.
    /// Call a few times a second.
    pub fn tick(&mut self, now: Instant) {
        for (node, peer) in self.peers.iter_mut() {
            expire_pings(peer, now);
            peer.endpoints.retain(|_, st| st.keep(now));
            if let Some(best) = peer.best {
                if !peer.endpoints.contains_key(&best.addr) {
                    peer.best = None;
                    peer.trust_until = None;
                }
            }
            let Some(due) = peer.next_heartbeat else {
                continue;
            };
            if now < due {
                continue;
            }
            if !peer.active(now) {
                // Idle session: heartbeats stop until the next send.
                peer.next_heartbeat = None;
                continue;
            }
            peer.next_heartbeat = Some(now + HEARTBEAT_INTERVAL);
            if let Some(best) = peer.best {
                self.local.ping(peer, best.addr, now);
            }
            if peer.want_full_ping(now) {
                self.local.ping_all(peer, *node, now, true);
            }
        }
        self.update_paths(now);
    }

    /// The next disco packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.local.transmits.pop_front()
    }

    /// The next change of a peer's path, for the data plane.
    pub fn poll_path_change(&mut self) -> Option<(Key, Path)> {
        self.path_changes.pop_front()
    }

    fn update_path(&mut self, node: Key, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&node) {
            let path = self.local.path(peer, now);
            if path != peer.reported {
                peer.reported = path;
                self.path_changes.push_back((node, path));
            }
        }
    }

    fn update_paths(&mut self, now: Instant) {
        for (node, peer) in self.peers.iter_mut() {
            let path = self.local.path(peer, now);
            if path != peer.reported {
                log::debug!("disco: peer {node:?} path {:?} -> {path:?}", peer.reported);
                peer.reported = path;
                self.path_changes.push_back((*node, path));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A_ADDR: &str = "10.0.0.1:41641";
    const B_ADDR: &str = "10.0.0.2:41641";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Two disco instances that know each other, as two nodes of one tailnet would.
    struct Pair {
        a: Disco,
        b: Disco,
        a_node: Key,
        b_node: Key,
        now: Instant,
    }

    impl Pair {
        fn new(derp: bool) -> Pair {
            let (a_node, b_node) = (
                PrivateKey::from_bytes([0xa1; 32]).public(),
                PrivateKey::from_bytes([0xb1; 32]).public(),
            );
            let mut a = Disco::new(PrivateKey::generate());
            let mut b = Disco::new(PrivateKey::generate());
            let now = Instant::now();
            a.set_node_key(a_node);
            b.set_node_key(b_node);
            a.set_our_endpoints(vec![addr(A_ADDR)]);
            b.set_our_endpoints(vec![addr(B_ADDR)]);
            let home = derp.then_some(900);
            if derp {
                a.set_derp_regions(vec![900], now);
                b.set_derp_regions(vec![900], now);
            }
            a.set_peers(
                &[PeerInfo {
                    node_key: b_node,
                    disco_key: b.public_key(),
                    endpoints: vec![addr(B_ADDR)],
                    home_derp: home,
                }],
                now,
            );
            b.set_peers(
                &[PeerInfo {
                    node_key: a_node,
                    disco_key: a.public_key(),
                    endpoints: vec![addr(A_ADDR)],
                    home_derp: home,
                }],
                now,
            );
            Pair {
                a,
                b,
                a_node,
                b_node,
                now,
            }
        }

        /// Delivers everything queued, both ways, until quiet; `udp_ok` decides whether
        /// UDP gets through (a firewall in between when false). Returns what was sent.
        fn exchange(&mut self, udp_ok: bool) -> Vec<Transmit> {
            let mut log = Vec::new();
            for _ in 0..10 {
                let mut moved = false;
                while let Some(t) = self.a.poll_transmit() {
                    moved = true;
                    log.push(t.clone());
                    deliver(&mut self.b, self.a_node, addr(A_ADDR), &t, udp_ok, self.now);
                }
                while let Some(t) = self.b.poll_transmit() {
                    moved = true;
                    log.push(t.clone());
                    deliver(&mut self.a, self.b_node, addr(B_ADDR), &t, udp_ok, self.now);
                }
                if !moved {
                    break;
                }
            }
            log
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
            self.a.tick(self.now);
            self.b.tick(self.now);
        }
    }

    fn deliver(
        to: &mut Disco,
        from_node: Key,
        from_addr: SocketAddr,
        t: &Transmit,
        udp_ok: bool,
        now: Instant,
    ) {
        match t.via {
            Via::Udp(_) if udp_ok => to.handle_udp(from_addr, &t.packet, now).unwrap(),
            Via::Udp(_) => {}
            Via::Derp { region, .. } => to.handle_derp(region, from_node, &t.packet, now).unwrap(),
        }
    }

    fn drain_paths(d: &mut Disco) -> Vec<(Key, Path)> {
        std::iter::from_fn(|| d.poll_path_change()).collect()
    }

    #[test]
    fn sending_pings_the_peer_and_a_pong_makes_the_path_direct() {
        let mut p = Pair::new(true);
        // With DERP in the map, DERP is the path until a pong proves UDP.
        assert_eq!(drain_paths(&mut p.a), vec![(p.b_node, Path::Derp(900))]);
        p.a.note_send(&p.b_node, p.now);
        let sent = p.exchange(true);
        assert!(
            sent.iter().any(|t| matches!(t.via, Via::Derp { .. })),
            "no CallMeMaybe via DERP"
        );
        assert_eq!(p.a.path(&p.b_node, p.now), Path::Direct(addr(B_ADDR)));
        assert_eq!(
            drain_paths(&mut p.a),
            vec![(p.b_node, Path::Direct(addr(B_ADDR)))]
        );
        // B was called (CallMeMaybe) and pinged back: B trusts the path too.
        assert_eq!(p.b.path(&p.a_node, p.now), Path::Direct(addr(A_ADDR)));
        assert_eq!(p.a.stats().pongs_matched, 1);
    }

    #[test]
    fn trust_lapses_to_derp_without_pongs_and_heartbeats_keep_it() {
        let mut p = Pair::new(true);
        p.a.note_send(&p.b_node, p.now);
        p.exchange(true);
        drain_paths(&mut p.a);
        // Traffic keeps flowing: heartbeats every 3 s keep the path trusted.
        for _ in 0..10 {
            p.a.note_send(&p.b_node, p.now);
            p.advance(HEARTBEAT_INTERVAL);
            p.exchange(true);
            assert_eq!(p.a.path(&p.b_node, p.now), Path::Direct(addr(B_ADDR)));
        }
        assert!(
            drain_paths(&mut p.a).is_empty(),
            "path flapped while pongs came back"
        );
        // UDP breaks: after the trust window the path falls back to DERP.
        for _ in 0..3 {
            p.a.note_send(&p.b_node, p.now);
            p.advance(HEARTBEAT_INTERVAL);
            p.exchange(false);
        }
        assert_eq!(p.a.path(&p.b_node, p.now), Path::Derp(900));
        assert_eq!(drain_paths(&mut p.a), vec![(p.b_node, Path::Derp(900))]);
        // UDP is back: the next round of pings upgrades to direct again.
        p.a.note_send(&p.b_node, p.now);
        p.advance(HEARTBEAT_INTERVAL);
        p.exchange(true);
        assert_eq!(p.a.path(&p.b_node, p.now), Path::Direct(addr(B_ADDR)));
    }

    #[test]
    fn idle_sessions_stop_heartbeating() {
        let mut p = Pair::new(true);
        p.a.note_send(&p.b_node, p.now);
        p.exchange(true);
        let pings_before = p.a.stats().pings_sent;
        for _ in 0..30 {
            p.advance(HEARTBEAT_INTERVAL);
            p.exchange(true);
        }
        // Pings while the session was active (45 s), none after.
        let during = p.a.stats().pings_sent - pings_before;
        assert!((10..=20).contains(&during), "{during} heartbeat pings");
        let after = p.a.stats().pings_sent;
        for _ in 0..10 {
            p.advance(HEARTBEAT_INTERVAL);
        }
        assert_eq!(p.a.stats().pings_sent, after);
    }

    #[test]
    fn without_derp_the_first_endpoint_is_the_guess_until_confirmed() {
        let mut p = Pair::new(false);
        assert_eq!(
            drain_paths(&mut p.a),
            vec![(p.b_node, Path::Direct(addr(B_ADDR)))]
        );
        p.a.note_send(&p.b_node, p.now);
        let sent = p.exchange(true);
        assert!(sent.iter().all(|t| matches!(t.via, Via::Udp(_))));
        assert_eq!(p.a.stats().pongs_matched, 1);
    }

    #[test]
    fn forged_and_replayed_pongs_never_move_a_path() {
        let mut p = Pair::new(true);
        p.a.note_send(&p.b_node, p.now);
        // Capture A's ping instead of delivering it.
        let ping = p.a.poll_transmit().unwrap();
        assert!(matches!(ping.via, Via::Udp(_)));
        while p.a.poll_transmit().is_some() {}
        // B answers a ping A never sent (its own TxID): authentic but unmatched.
        let b_peer = p.b.peers.get(&p.a_node).unwrap();
        let forged = message::seal(
            &p.b.local.public,
            &b_peer.shared,
            &Message::Pong {
                tx_id: [0x55; 12],
                src: addr(A_ADDR),
            },
        );
        let evil = addr("203.0.113.66:666");
        p.a.handle_udp(evil, &forged, p.now).unwrap();
        assert_eq!(p.a.path(&p.b_node, p.now), Path::Derp(900));
        assert_eq!(p.a.stats().pongs_unmatched, 1);
        // A pong sealed with a key that is not B's does not even open.
        let stranger = Disco::new(PrivateKey::generate());
        let stranger_shared = SharedKey::new(&stranger.local.private, &p.a.public_key().0);
        let fake = message::seal(
            &p.b.public_key(),
            &stranger_shared,
            &Message::Pong {
                tx_id: [0x55; 12],
                src: addr(A_ADDR),
            },
        );
        assert_eq!(p.a.handle_udp(evil, &fake, p.now), Err(DiscoError::BadBox));
        // An unknown sender key is refused before any crypto.
        let unknown = message::seal(
            &stranger.public_key(),
            &stranger_shared,
            &Message::Unknown { kind: 1 },
        );
        assert_eq!(
            p.a.handle_udp(evil, &unknown, p.now),
            Err(DiscoError::UnknownSender)
        );
        // The real pong is accepted once; its replay is not.
        p.b.handle_udp(addr(A_ADDR), &ping.packet, p.now).unwrap();
        let pong = p.b.poll_transmit().unwrap();
        p.a.handle_udp(addr(B_ADDR), &pong.packet, p.now).unwrap();
        assert_eq!(p.a.path(&p.b_node, p.now), Path::Direct(addr(B_ADDR)));
        p.a.handle_udp(evil, &pong.packet, p.now).unwrap();
        assert_eq!(p.a.path(&p.b_node, p.now), Path::Direct(addr(B_ADDR)));
        assert_eq!(p.a.stats().pongs_unmatched, 2);
        assert_eq!(p.a.stats().dropped, 2);
    }

    #[test]
    fn pings_are_answered_on_their_path_and_checked_for_their_node_key() {
        let mut p = Pair::new(true);
        let b_peer = p.b.peers.get(&p.a_node).unwrap();
        let ping = |node_key| {
            message::seal(
                &p.b.local.public,
                &b_peer.shared,
                &Message::Ping {
                    tx_id: [7; 12],
                    node_key,
                    padding: 0,
                },
            )
        };
        let (good, bad) = (ping(Some(p.b_node)), ping(Some(Key([9; 32]))));
        let from = addr("198.51.100.9:5555");
        p.a.handle_udp(from, &good, p.now).unwrap();
        let t = p.a.poll_transmit().unwrap();
        assert_eq!(t.via, Via::Udp(from));
        let a_peer = p.b.peers.get(&p.a_node).unwrap();
        let msg = Sealed::parse(&t.packet)
            .unwrap()
            .open(&a_peer.shared)
            .unwrap();
        assert_eq!(
            msg,
            Message::Pong {
                tx_id: [7; 12],
                src: from
            }
        );
        // Over DERP the pong goes back through DERP with the pseudo address as source.
        p.a.handle_derp(901, p.b_node, &good, p.now).unwrap();
        let t = p.a.poll_transmit().unwrap();
        assert_eq!(
            t.via,
            Via::Derp {
                region: 901,
                node: p.b_node
            }
        );
        let msg = Sealed::parse(&t.packet)
            .unwrap()
            .open(&a_peer.shared)
            .unwrap();
        assert_eq!(
            msg,
            Message::Pong {
                tx_id: [7; 12],
                src: derp_addr(901)
            }
        );
        // A ping naming another node key, or relayed from another node, is refused.
        assert_eq!(
            p.a.handle_udp(from, &bad, p.now),
            Err(DiscoError::WrongNodeKey)
        );
        assert_eq!(
            p.a.handle_derp(900, Key([3; 32]), &good, p.now),
            Err(DiscoError::WrongPath)
        );
        assert!(p.a.poll_transmit().is_none());
    }

    #[test]
    fn call_me_maybe_only_counts_over_derp_and_triggers_pings() {
        let mut p = Pair::new(true);
        let b_peer = p.b.peers.get(&p.a_node).unwrap();
        let new_ep = addr("192.0.2.50:41641");
        let cmm = message::seal(
            &p.b.local.public,
            &b_peer.shared,
            &Message::CallMeMaybe {
                endpoints: vec![new_ep, addr("[fe80::1]:41641")],
            },
        );
        assert_eq!(
            p.a.handle_udp(addr(B_ADDR), &cmm, p.now),
            Err(DiscoError::WrongPath)
        );
        p.a.handle_derp(900, p.b_node, &cmm, p.now).unwrap();
        let pinged: Vec<Via> = std::iter::from_fn(|| p.a.poll_transmit())
            .map(|t| t.via)
            .collect();
        assert!(pinged.contains(&Via::Udp(new_ep)));
        assert!(pinged.contains(&Via::Udp(addr(B_ADDR))));
        assert!(!pinged
            .iter()
            .any(|v| matches!(v, Via::Udp(a) if a.ip().is_ipv6())));
    }

    #[test]
    fn a_new_disco_key_resets_the_peer() {
        let mut p = Pair::new(true);
        p.a.note_send(&p.b_node, p.now);
        p.exchange(true);
        assert_eq!(p.a.path(&p.b_node, p.now), Path::Direct(addr(B_ADDR)));
        let restarted = Disco::new(PrivateKey::generate());
        p.a.set_peers(
            &[PeerInfo {
                node_key: p.b_node,
                disco_key: restarted.public_key(),
                endpoints: vec![addr(B_ADDR)],
                home_derp: Some(900),
            }],
            p.now,
        );
        assert_eq!(p.a.path(&p.b_node, p.now), Path::Derp(900));
    }

    #[test]
    fn better_addr_prefers_faster_and_private_with_hysteresis() {
        let ms = Duration::from_millis;
        let public = addr("203.0.113.1:1");
        let private = addr("10.0.0.1:1");
        assert!(better_addr((public, ms(10)), None));
        assert!(better_addr(
            (public, ms(10)),
            Some((addr("198.51.100.1:1"), ms(20)))
        ));
        assert!(!better_addr(
            (public, ms(20)),
            Some((addr("198.51.100.1:1"), ms(10)))
        ));
        // 1% faster is not worth a switch.
        assert!(!better_addr(
            (public, Duration::from_micros(9950)),
            Some((addr("198.51.100.1:1"), ms(10)))
        ));
        // A private address wins at equal latency, even a bit slower.
        assert!(better_addr((private, ms(11)), Some((public, ms(10)))));
        assert!(!better_addr((public, ms(10)), Some((private, ms(10)))));
        assert!(!better_addr((public, ms(10)), Some((public, ms(1)))));
    }

    #[test]
    fn derp_pseudo_addresses_round_trip() {
        assert_eq!(derp_region_of(derp_addr(900)), Some(900));
        assert_eq!(derp_region_of(addr("127.3.3.41:900")), None);
        assert_eq!(derp_region_of(addr("[::ffff:127.3.3.40]:7")), Some(7));
    }
}
