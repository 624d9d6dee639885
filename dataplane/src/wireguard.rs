//! The WireGuard side of the packet path, with no I/O: the peer table built from a
//! [`Config`], and what to do with a packet from the TUN, a datagram from the network,
//! or a timeout. The I/O layer feeds packets in and carries out the [`Emit`]s.
//!
//! It is stepped by the caller, as quinn-proto's `Connection` is: time comes in as an
//! argument (the workers read the clock once per batch), every output is an [`Emit`]
//! handed to the caller, and timers are polled ([`PeerTable::poll_timeout`],
//! [`PeerTable::handle_timeout`]). Nothing here reads the clock, sends, or holds a hook
//! to someone who does.

use crate::allowed_ips::AllowedIps;
use crate::config::Config;
use crate::filter::{Filter, Verdict};
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Encapsulation, Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ip_network::IpNetwork;
use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};
use ringscale_aead::{BadTag, OpenJob, TransportKey, TAG_LEN};
use ringscale_keys::Key;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Handshakes per second above which we answer with cookies (WireGuard's "under load").
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// Room boringtun needs in an output buffer beyond the packet (header, tag, and at least
/// a whole handshake message).
pub const WG_OVERHEAD: usize = 32;
pub const MIN_OUT_BUF: usize = 148;
/// A data message's header: type, receiver index, counter; the ciphertext follows.
pub const DATA_HEADER: usize = 16;

/// The keys of a batch of packets sealed or opened together, referred to by index:
/// usually one, as the segments of a super-packet all go to one peer and a GRO receive
/// comes from one. Holding them here keeps a key alive across a rekey until its
/// packets are done.
#[derive(Default)]
pub struct BatchKeys {
    keys: Vec<Arc<TransportKey>>,
}

impl BatchKeys {
    /// The index of `key`, added if new (the comparison is by identity, one pointer
    /// compare per packet in the common case).
    fn index_of(&mut self, key: &Arc<TransportKey>) -> usize {
        match self.keys.iter().rposition(|k| Arc::ptr_eq(k, key)) {
            Some(i) => i,
            None => {
                self.keys.push(Arc::clone(key));
                self.keys.len() - 1
            }
        }
    }

    pub fn get(&self, index: usize) -> &TransportKey {
        &self.keys[index]
    }

    /// Forgets the keys (after every packet that used them was sealed).
    pub fn clear(&mut self) {
        self.keys.clear();
    }
}

/// Reusable state of [`PeerTable::decapsulate_batch`] (one per worker): the data
/// packets of a receive waiting to be opened together.
#[derive(Default)]
pub struct OpenBatch {
    jobs: Vec<OpenJob>,
    /// Per job: its receiver index and its key's index in `keys`.
    meta: Vec<(u32, usize)>,
    keys: BatchKeys,
}

impl OpenBatch {
    pub fn with_capacity(packets: usize) -> OpenBatch {
        OpenBatch {
            jobs: Vec::with_capacity(packets),
            meta: Vec::with_capacity(packets),
            keys: BatchKeys::default(),
        }
    }
}

/// A packet [`PeerTable::encapsulate_deferred`] left to seal: with key `key` (an index
/// into [`BatchKeys`]) under `counter`, then to be sent to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferredSeal {
    pub to: SocketAddr,
    pub counter: u64,
    pub key: usize,
}

/// Something the I/O layer must do: every output of the peer table is one of these.
#[derive(Debug)]
pub enum Emit<'a> {
    /// Send a datagram to this endpoint.
    Network(SocketAddr, &'a [u8]),
    /// Write a decrypted IP packet to the TUN.
    Tun(&'a [u8]),
    /// Send a WireGuard message for `peer` through DERP `region` (the peer's path is a
    /// relay: see [`crate::derp_addr`]); an [`OffPath::relay`] takes it.
    Relay {
        peer: Key,
        region: u16,
        packet: &'a [u8],
    },
    /// A packet from the TUN for the in-process service that owns its destination
    /// (quad-100, [`PeerTable::with_local_addresses`]); a [`LocalService`] takes it.
    Local(&'a [u8]),
    /// A datagram on the WireGuard socket that is disco or STUN, not WireGuard
    /// ([`is_off_path_datagram`]); an [`OffPath::non_wireguard`] takes it.
    OffPath(SocketAddr, &'a [u8]),
}

/// The last AllowedIPs answer, kept while one batch is processed. The segments of a TUN
/// super-packet share their destination and the packets of one GRO receive their source,
/// so one trie lookup serves the whole batch: the lookup per packet was about 4 % of all
/// CPU in a single-stream profile (bench point-to-point, perf). It borrows the table it
/// answers for, so it cannot outlive a reconfiguration.
#[derive(Default)]
pub struct LookupMemo<'t> {
    last: Option<(IpAddr, Option<&'t Arc<Peer>>)>,
    /// The batch's `now` in [`Peer::last_send_ms`] units, worked out once per batch.
    send_ms: Option<(Instant, u64)>,
}

impl<'t> LookupMemo<'t> {
    /// `now` in [`Peer::last_send_ms`] units.
    fn send_ms(&mut self, shared: &Shared, now: Instant) -> u64 {
        match self.send_ms {
            Some((at, ms)) if at == now => ms,
            _ => {
                let ms = shared.ms_at(now);
                self.send_ms = Some((now, ms));
                ms
            }
        }
    }

    fn lookup(&mut self, by_ip: &'t AllowedIps<Arc<Peer>>, addr: IpAddr) -> Option<&'t Arc<Peer>> {
        match self.last {
            Some((a, peer)) if a == addr => peer,
            _ => {
                let peer = by_ip.lookup(addr);
                self.last = Some((addr, peer));
                peer
            }
        }
    }
}

/// Where packets go that leave the per-packet path: the control thread, which runs
/// disco, STUN and the DERP connections. The I/O layer hands it [`Emit::OffPath`] and
/// [`Emit::Relay`]. Implementations copy what they need and hand it over without
/// blocking (a full queue drops the packet).
pub trait OffPath: Send + Sync {
    /// A datagram on the WireGuard socket that is disco or STUN, not WireGuard.
    fn non_wireguard(&self, from: SocketAddr, datagram: &[u8]);
    /// A WireGuard message for `peer` whose path is DERP `region`.
    fn relay(&self, peer: &Key, region: u16, packet: &[u8]);
}

pub use ringscale_wire::disco::is_off_path_datagram;

/// What all the tables of one engine share: the time base of [`Peer::last_send_ms`].
#[derive(Default)]
struct Shared {
    /// The first instant any of the tables was given.
    epoch: OnceLock<Instant>,
}

impl Shared {
    /// Milliseconds from the epoch to `now`, at least 1 (0 means never).
    fn ms_at(&self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_init(|| now);
        (now.saturating_duration_since(epoch).as_millis() as u64).max(1)
    }
}

/// Counters of what was dropped and why; read by status and tests.
#[derive(Default, Debug)]
pub struct Drops {
    /// Datagrams that are not WireGuard, fail MAC checks, or name no known peer.
    pub invalid: AtomicU64,
    /// Datagrams that failed decryption, replays, or expired sessions.
    pub rejected: AtomicU64,
    /// Decrypted packets whose source address is not in the sending peer's AllowedIPs.
    pub bad_source: AtomicU64,
    /// Packets from the TUN to an address no peer is allowed.
    pub no_route: AtomicU64,
    /// Packets for a peer with no endpoint to send to.
    pub no_endpoint: AtomicU64,
    /// Packets the packet filter refused (ACLs; from the tunnel, or outbound
    /// multicast/link-local/malformed).
    pub filtered: AtomicU64,
    /// Packets a replaced table would have had to start WireGuard state for (a worker
    /// still on it across a reconfiguration).
    pub retired_table: AtomicU64,
}

impl Drops {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A service inside this process that owns some addresses (quad-100): packets from the
/// TUN to them ([`PeerTable::with_local_addresses`]) are handed over as [`Emit::Local`]
/// instead of being routed to a peer, and the I/O layer delivers them here.
pub trait LocalService: Send + Sync {
    /// Takes a copy of the packet; must not block.
    fn deliver(&self, pkt: &[u8]);
}

/// What every peer's [`Tunn`] of one table is made with besides the peer's own facts:
/// our static key and the handshake rate limiter, shared by all peers.
struct Identity {
    private: StaticSecret,
    rate_limiter: Arc<RateLimiter>,
}

/// A peer's boringtun state, made when the peer is first used (a packet to or from
/// it, or a persistent keepalive). A `Tunn` is about 11 KB whatever it holds — eight
/// session slots with their AEAD keys, inline — and most peers of a large tailnet are
/// never talked to: made up front, Tunns were over half of the daemon's memory per
/// netmap peer (heaptrack, 100 peers). A Tunn that does not exist yet is in the state a
/// fresh one would be in: no sessions, no handshake, nothing queued, zero counters,
/// and timers that do nothing without a keepalive (peers with one are made by the
/// first [`PeerTable::handle_timeout`]). Go's engine likewise configures WireGuard
/// only with the peers in use.
///
/// One `LazyTunn` serves every table that has the peer with the same key, identity and
/// keepalive (an `Arc` shared by their [`Peer`]s): a worker still on the table before a
/// reconfiguration uses the very session the new table uses. Were it a copy (or moved
/// out), that worker would find no state and make a second Tunn with the same session
/// index, whose handshake would race the real one.
struct LazyTunn {
    tunn: Mutex<Option<Box<Tunn>>>,
    peer: Key,
    keepalive: Option<u16>,
    index: u32,
    identity: Arc<Identity>,
}

impl LazyTunn {
    fn new(peer: Key, keepalive: Option<u16>, index: u32, identity: &Arc<Identity>) -> LazyTunn {
        LazyTunn {
            tunn: Mutex::new(None),
            peer,
            keepalive,
            index,
            identity: identity.clone(),
        }
    }

    fn make(&self, now: Instant) -> Box<Tunn> {
        Box::new(Tunn::new_at(
            self.identity.private.clone(),
            PublicKey::from(self.peer.0),
            None,
            self.keepalive,
            self.index,
            Some(self.identity.rate_limiter.clone()),
            now,
        ))
    }

    /// The peer's Tunn, made now if it does not exist yet, unless `retired` (the table
    /// asking was replaced: it must not start WireGuard state of its own). The flag is
    /// read under the lock, so state is made only by a table that was current then.
    fn lock_or_make(
        &self,
        now: Instant,
        retired: &AtomicBool,
    ) -> Option<MappedMutexGuard<'_, Tunn>> {
        MutexGuard::try_map(self.tunn.lock(), |t| {
            if t.is_none() && !retired.load(Ordering::Acquire) {
                *t = Some(self.make(now));
            }
            t.as_deref_mut()
        })
        .ok()
    }

    /// The peer's Tunn if it was ever made: reading stats or running timers of a peer
    /// never used must not make one.
    fn lock_made(&self) -> Option<MappedMutexGuard<'_, Tunn>> {
        MutexGuard::try_map(self.tunn.lock(), |t| t.as_deref_mut()).ok()
    }
}

/// One peer: its WireGuard state and where it was last heard from.
pub struct Peer {
    pub key: Key,
    /// Upper 24 bits of our session indices; routes incoming packets to this peer.
    index: u32,
    keepalive: Option<u16>,
    tunn: Arc<LazyTunn>,
    endpoint: Mutex<Option<SocketAddr>>,
    /// The endpoint the configuration gave; a new configuration with the same value
    /// keeps the roamed-to endpoint instead of resetting it.
    configured_endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNetwork>,
    /// The endpoint was set by path discovery ([`PeerTable::set_endpoint`]): incoming
    /// packets do not move it, and new configurations keep it.
    pinned: AtomicBool,
    /// When we last sent to this peer, in [`Peer::last_send_ms`] units (0: never).
    last_send: AtomicU64,
}

impl Peer {
    pub fn endpoint(&self) -> Option<SocketAddr> {
        *self.endpoint.lock()
    }

    /// When we last sent to this peer: milliseconds from the first instant the engine's
    /// tables were given (0: never). Only its changes mean something to callers.
    pub fn last_send_ms(&self) -> u64 {
        self.last_send.load(Ordering::Relaxed)
    }

    fn note_send(&self, now_ms: u64) {
        // Store only when it changed: a read-mostly cache line for the packet path.
        if self.last_send.load(Ordering::Relaxed) != now_ms {
            self.last_send.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Time since the last handshake as of `now`, bytes sent, bytes received.
    pub fn stats_at(&self, now: Instant) -> (Option<Duration>, usize, usize) {
        match self.tunn.lock_made() {
            Some(tunn) => {
                let (hs, tx, rx, _, _) = tunn.stats_at(now);
                (hs, tx, rx)
            }
            // What a fresh Tunn reports.
            None => (None, 0, 0),
        }
    }

    /// [`Peer::stats_at`] now, for status output (the packet path never asks).
    pub fn stats(&self) -> (Option<Duration>, usize, usize) {
        self.stats_at(Instant::now())
    }
}

static NEXT_INDEX: AtomicU32 = AtomicU32::new(1);

fn next_index() -> u32 {
    // 24 bits: boringtun shifts the index left by 8 for its session counter.
    NEXT_INDEX.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff
}

/// The peers of one configuration, looked up by destination address, session index
/// and public key. Immutable once built; a new configuration builds a new table that
/// keeps the sessions of peers whose keys did not change, and retires the old one.
pub struct PeerTable {
    private: StaticSecret,
    public: PublicKey,
    peers: Vec<Arc<Peer>>,
    by_ip: AllowedIps<Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    by_key: HashMap<Key, Arc<Peer>>,
    rate_limiter: Arc<RateLimiter>,
    identity: Arc<Identity>,
    /// The packet filter; None lets everything through (plain WireGuard).
    filter: Option<Filter>,
    pub drops: Arc<Drops>,
    shared: Arc<Shared>,
    /// Addresses owned by an in-process service: packets to them become [`Emit::Local`].
    local_addrs: Vec<IpAddr>,
    /// A newer table replaced this one ([`PeerTable::new`] with this as `previous`).
    /// Workers may still hold it for a batch; it goes on using the WireGuard state it
    /// shares with its successor but makes none (no handshake for a peer the new table
    /// may not have, or has with other settings).
    retired: AtomicBool,
}

impl PeerTable {
    /// The table for `cfg`. With `previous` (the table in use), this is a
    /// reconfiguration: the WireGuard state (sessions, handshakes, timers) of every peer
    /// whose key, keepalive and our own key are unchanged is kept, shared with
    /// `previous`, which is retired.
    pub fn new(cfg: &Config, previous: Option<&PeerTable>) -> PeerTable {
        if let Some(p) = previous {
            p.retired.store(true, Ordering::Release);
        }
        let private = StaticSecret::from(*cfg.private_key.expose_secret_bytes());
        let public = PublicKey::from(&private);
        // Same public key = same private key (as X25519 uses it, clamped).
        let same_identity = previous.is_some_and(|p| p.public == public);
        let rate_limiter = match previous {
            Some(p) if same_identity => p.rate_limiter.clone(),
            _ => Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
        };
        let drops = previous.map(|p| p.drops.clone()).unwrap_or_default();
        let shared = previous.map(|p| p.shared.clone()).unwrap_or_default();
        let identity = match previous {
            Some(p) if same_identity => p.identity.clone(),
            _ => Arc::new(Identity {
                private: private.clone(),
                rate_limiter: rate_limiter.clone(),
            }),
        };
        let mut table = PeerTable {
            private: private.clone(),
            public,
            peers: Vec::with_capacity(cfg.peers.len()),
            by_ip: AllowedIps::default(),
            by_index: HashMap::with_capacity(cfg.peers.len()),
            by_key: HashMap::with_capacity(cfg.peers.len()),
            rate_limiter: rate_limiter.clone(),
            identity: identity.clone(),
            // Remembered outbound flows carry over, so new rules do not cut replies.
            filter: cfg.filter.as_ref().map(|f| {
                Filter::new(
                    f,
                    previous.and_then(|p| p.filter.as_ref()).map(|p| p.flows()),
                )
            }),
            drops,
            shared,
            local_addrs: previous.map(|p| p.local_addrs.clone()).unwrap_or_default(),
            retired: AtomicBool::new(false),
        };
        for pc in &cfg.peers {
            let old = previous
                .filter(|_| same_identity)
                .and_then(|p| p.by_key.get(&pc.public_key))
                .filter(|old| old.keepalive == pc.persistent_keepalive);
            let peer = match old {
                Some(old)
                    if old.allowed_ips == pc.allowed_ips
                        && (old.configured_endpoint == pc.endpoint
                            || old.pinned.load(Ordering::Relaxed)) =>
                {
                    old.clone()
                }
                Some(old) => {
                    // Same session, new routing facts: a new Peer sharing the WireGuard
                    // state. The old table stays valid for packets already in flight,
                    // on the same sessions. A path found by discovery outlives
                    // configuration changes.
                    let pinned = old.pinned.load(Ordering::Relaxed);
                    let endpoint = if old.configured_endpoint == pc.endpoint || pinned {
                        old.endpoint()
                    } else {
                        pc.endpoint
                    };
                    Arc::new(Peer {
                        key: pc.public_key,
                        index: old.index,
                        keepalive: pc.persistent_keepalive,
                        tunn: old.tunn.clone(),
                        endpoint: Mutex::new(endpoint),
                        configured_endpoint: pc.endpoint,
                        allowed_ips: pc.allowed_ips.clone(),
                        pinned: AtomicBool::new(pinned),
                        last_send: AtomicU64::new(old.last_send_ms()),
                    })
                }
                None => {
                    let index = next_index();
                    Arc::new(Peer {
                        key: pc.public_key,
                        index,
                        keepalive: pc.persistent_keepalive,
                        tunn: Arc::new(LazyTunn::new(
                            pc.public_key,
                            pc.persistent_keepalive,
                            index,
                            &identity,
                        )),
                        endpoint: Mutex::new(pc.endpoint),
                        configured_endpoint: pc.endpoint,
                        allowed_ips: pc.allowed_ips.clone(),
                        pinned: AtomicBool::new(false),
                        last_send: AtomicU64::new(0),
                    })
                }
            };
            for net in &peer.allowed_ips {
                table.by_ip.insert(*net, peer.clone());
            }
            table.by_index.insert(peer.index, peer.clone());
            table.by_key.insert(peer.key, peer.clone());
            table.peers.push(peer);
        }
        table
    }

    pub fn peers(&self) -> &[Arc<Peer>] {
        &self.peers
    }

    pub fn peer_for(&self, addr: IpAddr) -> Option<&Arc<Peer>> {
        self.by_ip.lookup(addr)
    }

    pub fn peer_by_key(&self, key: &Key) -> Option<&Arc<Peer>> {
        self.by_key.get(key)
    }

    /// This table with packets from the TUN to `addrs` handed to an in-process service
    /// ([`Emit::Local`]) instead of routed. Tables built from it keep the addresses.
    pub fn with_local_addresses(mut self, addrs: &[IpAddr]) -> PeerTable {
        self.local_addrs = addrs.to_vec();
        self
    }

    /// Was this table replaced by a newer one?
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Path discovery decided where `key` is reached: a direct address or a DERP pseudo
    /// address ([`crate::derp_addr`]). From now on incoming packets no longer
    /// move the endpoint, and reconfigurations keep it. False if no such peer.
    pub fn set_endpoint(&self, key: &Key, endpoint: Option<SocketAddr>) -> bool {
        let Some(peer) = self.by_key.get(key) else {
            return false;
        };
        peer.pinned.store(true, Ordering::Relaxed);
        let mut ep = peer.endpoint.lock();
        if *ep != endpoint {
            log::debug!("peer {key:?} path now {endpoint:?}");
            *ep = endpoint;
        }
        true
    }

    /// Sends `wire` for `peer` to `to`: over UDP, or through DERP when `to` is a DERP
    /// pseudo address.
    fn send_to<'a>(
        &self,
        peer: Option<&Peer>,
        to: SocketAddr,
        wire: &'a [u8],
        emit: &mut (impl FnMut(Emit<'a>) + ?Sized),
    ) {
        match crate::derp_region_of(to) {
            None => emit(Emit::Network(to, wire)),
            Some(region) => match peer {
                Some(peer) => emit(Emit::Relay {
                    peer: peer.key,
                    region,
                    packet: wire,
                }),
                None => Drops::bump(&self.drops.no_endpoint),
            },
        }
    }

    /// The peer's WireGuard state, made at `now` if it is the first use; None when this
    /// table is retired and the state was never made (the packet is dropped: it was in
    /// flight across a reconfiguration).
    fn tunn_for<'p>(&self, peer: &'p Peer, now: Instant) -> Option<MappedMutexGuard<'p, Tunn>> {
        let tunn = peer.tunn.lock_or_make(now, &self.retired);
        if tunn.is_none() {
            Drops::bump(&self.drops.retired_table);
        }
        tunn
    }

    /// A packet read from the TUN at `now`: encrypt it for the peer that owns its
    /// destination. `out` must hold the packet plus [`WG_OVERHEAD`] and at least
    /// [`MIN_OUT_BUF`].
    pub fn encapsulate(
        &self,
        now: Instant,
        pkt: &[u8],
        out: &mut [u8],
        emit: &mut impl FnMut(Emit<'_>),
    ) {
        self.encapsulate_with(&mut LookupMemo::default(), now, pkt, out, emit)
    }

    /// [`PeerTable::encapsulate`] for one of a batch of packets that probably share their
    /// destination (the segments of a super-packet): `memo` carries the route from one
    /// call to the next.
    pub fn encapsulate_with<'t>(
        &'t self,
        memo: &mut LookupMemo<'t>,
        now: Instant,
        pkt: &[u8],
        out: &mut [u8],
        emit: &mut impl FnMut(Emit<'_>),
    ) {
        let Some(peer) = self.outbound_peer(memo, pkt, emit) else {
            return;
        };
        let endpoint = peer.endpoint();
        peer.note_send(memo.send_ms(&self.shared, now));
        let Some(mut tunn) = self.tunn_for(peer, now) else {
            return;
        };
        let result = tunn.encapsulate_at(pkt, out, now);
        self.send_encapsulated(peer, endpoint, result, emit);
    }

    /// As [`PeerTable::encapsulate_with`], but a packet for a peer with a session is not
    /// sealed: its 16-byte header is written at the start of `out` and the caller seals
    /// it, with the key added to `keys` and the returned counter, into
    /// `out[16..16 + pkt.len() + 16]` before sending it to the returned endpoint. Sealing
    /// many packets under one key at once is much faster ([`TransportKey::seal_batch`]).
    /// Everything else (handshakes, drops, packets relayed over DERP, which leave
    /// at once) is done here as `encapsulate_with` does, and returns None.
    #[allow(clippy::too_many_arguments)]
    pub fn encapsulate_deferred<'t>(
        &'t self,
        memo: &mut LookupMemo<'t>,
        now: Instant,
        pkt: &[u8],
        out: &mut [u8],
        keys: &mut BatchKeys,
        emit: &mut impl FnMut(Emit<'_>),
    ) -> Option<DeferredSeal> {
        let peer = self.outbound_peer(memo, pkt, emit)?;
        let endpoint = peer.endpoint();
        peer.note_send(memo.send_ms(&self.shared, now));
        let mut tunn = self.tunn_for(peer, now)?;
        let Some(to) = endpoint.filter(|ep| crate::derp_region_of(*ep).is_none()) else {
            // A relayed message is handed over as soon as it is emitted: seal it now.
            let result = tunn.encapsulate_at(pkt, out, now);
            self.send_encapsulated(peer, endpoint, result, emit);
            return None;
        };
        match tunn.encapsulate_header(pkt, out, now) {
            Encapsulation::Seal { key, counter } => Some(DeferredSeal {
                to,
                counter,
                key: keys.index_of(key),
            }),
            Encapsulation::Other(result) => {
                self.send_encapsulated(peer, endpoint, result, emit);
                None
            }
        }
    }

    /// The peer a packet from the TUN goes to, or None when it is dropped (counted) or
    /// for a local service (emitted as [`Emit::Local`]).
    fn outbound_peer<'t>(
        &'t self,
        memo: &mut LookupMemo<'t>,
        pkt: &[u8],
        emit: &mut impl FnMut(Emit<'_>),
    ) -> Option<&'t Arc<Peer>> {
        let Some(dst) = Tunn::dst_address(pkt) else {
            Drops::bump(&self.drops.no_route);
            return None;
        };
        // A destination that was routed to a peer a packet ago is not a local service's.
        let known = matches!(memo.last, Some((a, Some(_))) if a == dst);
        if !known && self.local_addrs.contains(&dst) {
            emit(Emit::Local(pkt));
            return None;
        }
        let Some(peer) = memo.lookup(&self.by_ip, dst) else {
            Drops::bump(&self.drops.no_route);
            return None;
        };
        if let Some(f) = &self.filter {
            if f.outbound(pkt) != Verdict::Accept {
                Drops::bump(&self.drops.filtered);
                return None;
            }
        }
        Some(peer)
    }

    /// Carries out what boringtun's `encapsulate` returned for `peer`.
    fn send_encapsulated<'a>(
        &self,
        peer: &Peer,
        endpoint: Option<SocketAddr>,
        result: TunnResult<'a>,
        emit: &mut impl FnMut(Emit<'a>),
    ) {
        match result {
            TunnResult::WriteToNetwork(wire) => match endpoint {
                Some(ep) => self.send_to(Some(peer), ep, wire, emit),
                None => Drops::bump(&self.drops.no_endpoint),
            },
            TunnResult::Err(e) => log::debug!("encapsulate for {:?}: {e:?}", peer.key),
            _ => {}
        }
    }

    /// A datagram from the network at `now`: authenticate, decrypt, and say what follows.
    pub fn decapsulate(
        &self,
        now: Instant,
        from: SocketAddr,
        dgram: &[u8],
        out: &mut [u8],
        emit: &mut impl FnMut(Emit<'_>),
    ) {
        self.decapsulate_with(&mut LookupMemo::default(), now, from, dgram, out, emit)
    }

    /// [`PeerTable::decapsulate`] for one of a batch of datagrams that probably come from
    /// one peer and flow (a GRO receive): `memo` carries the source check from one call
    /// to the next.
    pub fn decapsulate_with<'t>(
        &'t self,
        memo: &mut LookupMemo<'t>,
        now: Instant,
        from: SocketAddr,
        dgram: &[u8],
        out: &mut [u8],
        emit: &mut impl FnMut(Emit<'_>),
    ) {
        if is_off_path_datagram(dgram) {
            emit(Emit::OffPath(from, dgram));
            return;
        }
        // MAC check (and cookie reply when under load) before any expensive work.
        let packet = match self.rate_limiter.verify_packet(Some(from.ip()), dgram, out) {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                log::trace!("under load: cookie reply to {from}");
                self.send_to(None, from, cookie, emit);
                return;
            }
            Err(_) => {
                Drops::bump(&self.drops.invalid);
                return;
            }
        };
        let peer = match &packet {
            Packet::HandshakeInit(init) => parse_handshake_anon(&self.private, &self.public, init)
                .ok()
                .and_then(|h| self.by_key.get(&Key(h.peer_static_public))),
            Packet::HandshakeResponse(p) => self.by_index.get(&(p.receiver_idx >> 8)),
            Packet::PacketCookieReply(p) => self.by_index.get(&(p.receiver_idx >> 8)),
            Packet::PacketData(p) => self.by_index.get(&(p.receiver_idx >> 8)),
        };
        let Some(peer) = peer else {
            log::trace!("datagram from {from} names no known peer");
            Drops::bump(&self.drops.invalid);
            return;
        };
        if let Packet::HandshakeInit(_) | Packet::HandshakeResponse(_) = packet {
            log::debug!("wireguard: handshake message from {:?} at {from}", peer.key);
        }
        // Only an initiation can start a peer's WireGuard state. Anything else that names
        // a peer never used refers to a session we never made: junk, and making a Tunn
        // for it would let forged datagrams spend the memory `LazyTunn` saves.
        let tunn = match packet {
            Packet::HandshakeInit(_) => self.tunn_for(peer, now),
            _ => peer.tunn.lock_made(),
        };
        let Some(mut tunn) = tunn else {
            Drops::bump(&self.drops.invalid);
            return;
        };
        match tunn.decapsulate_at(Some(from.ip()), dgram, out, now) {
            TunnResult::WriteToNetwork(wire) => {
                // Answers go where the peer's packets go: the discovered path when there
                // is one, else back where this came from.
                let to = match peer.pinned.load(Ordering::Relaxed) {
                    true => peer.endpoint().unwrap_or(from),
                    false => from,
                };
                self.send_to(Some(peer), to, wire, emit);
                // A completed handshake releases packets queued while it ran.
                while let TunnResult::WriteToNetwork(wire) =
                    tunn.decapsulate_at(None, &[], out, now)
                {
                    self.send_to(Some(peer), to, wire, emit);
                }
            }
            result => {
                if !self.deliver(memo, peer, from, result, emit) {
                    return;
                }
            }
        }
        drop(tunn);
        self.roam(peer, from);
    }

    /// [`PeerTable::decapsulate_with`] for every datagram of one receive from `from`
    /// (`data`: one datagram, or with `segment` > 0 a GRO batch of `segment`-byte
    /// datagrams), decrypting into `out` back to back. Data packets of established
    /// sessions are opened together ([`TransportKey::open_batch`]: eight or sixteen
    /// side by side), then finished one by one in order, exactly as one call each
    /// would; any other datagram first finishes those before it, keeping the order.
    #[allow(clippy::too_many_arguments)]
    pub fn decapsulate_batch<'t>(
        &'t self,
        memo: &mut LookupMemo<'t>,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        segment: usize,
        out: &mut [u8],
        batch: &mut OpenBatch,
        // dyn: one copy of this (and of decapsulate_with, inlined in it) for both
        // backends' callbacks instead of one each: 6,000 B less on aarch64, for one
        // indirect call per packet.
        emit: &mut dyn FnMut(Emit<'_>),
    ) {
        let seg = if segment == 0 {
            data.len().max(1)
        } else {
            segment
        };
        let base = out.as_ptr() as usize;
        let mut used = 0;
        for (i, dgram) in data.chunks(seg).enumerate() {
            if out.len() - used < dgram.len() + MIN_OUT_BUF {
                log::debug!("receive batch larger than the decryption buffer");
                break;
            }
            let at = i * seg;
            match self.open_job(dgram, batch) {
                Some(Ok((counter, receiver_idx, key))) => {
                    batch.jobs.push(OpenJob {
                        counter,
                        sealed: at + DATA_HEADER..at + dgram.len(),
                        out_start: used,
                        opened: Err(BadTag),
                    });
                    batch.meta.push((receiver_idx, key));
                    used += dgram.len() - WG_OVERHEAD;
                }
                Some(Err(e)) => {
                    if !matches!(e, WireGuardError::DuplicateCounter) {
                        log::debug!("decapsulate from {from}: {e:?}");
                    }
                    Drops::bump(&self.drops.rejected);
                }
                None => {
                    self.finish_opens(memo, now, from, data, out, batch, emit);
                    let mut end = used;
                    self.decapsulate_with(memo, now, from, dgram, &mut out[used..], &mut |e| {
                        if let Emit::Tun(pkt) = &e {
                            end = end.max(pkt.as_ptr() as usize - base + pkt.len());
                        }
                        emit(e)
                    });
                    used = end;
                }
            }
        }
        self.finish_opens(memo, now, from, data, out, batch, emit);
    }

    /// For a data packet of an established session that passes the checks made before
    /// decrypting: its counter, receiver index and key (an index into `batch.keys`);
    /// Some(Err) when those checks refuse it; None for anything else (handshakes, disco,
    /// junk, a peer never used), which [`PeerTable::decapsulate_with`] handles.
    fn open_job(
        &self,
        dgram: &[u8],
        batch: &mut OpenBatch,
    ) -> Option<Result<(u64, u32, usize), WireGuardError>> {
        if is_off_path_datagram(dgram) {
            return None;
        }
        let Ok(Packet::PacketData(packet)) = Tunn::parse_incoming_packet(dgram) else {
            return None;
        };
        let peer = self.by_index.get(&(packet.receiver_idx >> 8))?;
        let tunn = peer.tunn.lock_made()?;
        Some(
            tunn.data_key(&packet)
                .map(|(key, counter)| (counter, packet.receiver_idx, batch.keys.index_of(key))),
        )
    }

    /// Opens the pending data packets of `batch` (their ciphertext in `data`, plaintext
    /// into `out`) and finishes each in order: replay window, timers, source check,
    /// filter, TUN, roaming.
    #[allow(clippy::too_many_arguments)]
    fn finish_opens<'t>(
        &'t self,
        memo: &mut LookupMemo<'t>,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        out: &mut [u8],
        batch: &mut OpenBatch,
        emit: &mut dyn FnMut(Emit<'_>),
    ) {
        let mut i = 0;
        while i < batch.jobs.len() {
            let key = batch.meta[i].1;
            let n = batch.meta[i..].iter().take_while(|m| m.1 == key).count();
            batch
                .keys
                .get(key)
                .open_batch(data, out, &mut batch.jobs[i..i + n]);
            i += n;
        }
        for (job, &(receiver_idx, _)) in batch.jobs.iter().zip(&batch.meta) {
            let Some(peer) = self.by_index.get(&(receiver_idx >> 8)) else {
                continue;
            };
            let Some(mut tunn) = peer.tunn.lock_made() else {
                Drops::bump(&self.drops.invalid);
                continue;
            };
            let plaintext = &mut out[job.out_start..job.out_start + job.sealed.len() - TAG_LEN];
            let result = tunn.finish_data(
                receiver_idx,
                job.counter,
                job.opened.is_ok(),
                plaintext,
                now,
            );
            if self.deliver(memo, peer, from, result, emit) {
                drop(tunn);
                self.roam(peer, from);
            }
        }
        batch.jobs.clear();
        batch.meta.clear();
        batch.keys.clear();
    }

    /// What follows boringtun's decryption of a data packet from `peer`: the source
    /// check, the filter and the TUN. False when the packet was refused in a way that
    /// must not move the peer's endpoint (bad source, failed decryption).
    fn deliver<'t>(
        &'t self,
        memo: &mut LookupMemo<'t>,
        peer: &Arc<Peer>,
        from: SocketAddr,
        result: TunnResult<'_>,
        emit: &mut (impl FnMut(Emit<'_>) + ?Sized),
    ) -> bool {
        let (pkt, src) = match result {
            TunnResult::WriteToTunnelV4(pkt, src) => (pkt, IpAddr::V4(src)),
            TunnResult::WriteToTunnelV6(pkt, src) => (pkt, IpAddr::V6(src)),
            TunnResult::Err(e) => {
                if !matches!(e, WireGuardError::DuplicateCounter) {
                    log::debug!("decapsulate from {from}: {e:?}");
                }
                Drops::bump(&self.drops.rejected);
                return false;
            }
            TunnResult::Done | TunnResult::WriteToNetwork(_) => return true,
        };
        if !self.source_allowed(memo, peer, src) {
            return false;
        }
        if self.admit(pkt) {
            emit(Emit::Tun(pkt));
        }
        true
    }

    /// Roaming: an authenticated packet from `peer` tells us where it is now, unless
    /// disco owns its path (an incoming packet proves only that the peer can reach us,
    /// not that we can reach it there: protocol.md §7.5).
    fn roam(&self, peer: &Peer, from: SocketAddr) {
        if peer.pinned.load(Ordering::Relaxed) {
            return;
        }
        let mut ep = peer.endpoint.lock();
        if *ep != Some(from) {
            log::debug!("peer {:?} endpoint now {from}", peer.key);
            *ep = Some(from);
        }
    }

    /// The packet filter's verdict on a decrypted packet; the peer stays
    /// authenticated (and may roam) even when its packet is refused.
    fn admit(&self, pkt: &[u8]) -> bool {
        let Some(f) = &self.filter else { return true };
        match f.inbound(pkt) {
            Verdict::Accept => true,
            Verdict::Drop(why) => {
                log::trace!("filter: dropped inbound packet ({why:?})");
                Drops::bump(&self.drops.filtered);
                false
            }
        }
    }

    fn source_allowed<'t>(
        &'t self,
        memo: &mut LookupMemo<'t>,
        peer: &Arc<Peer>,
        src: IpAddr,
    ) -> bool {
        let ok = memo
            .lookup(&self.by_ip, src)
            .is_some_and(|p| Arc::ptr_eq(p, peer));
        if !ok {
            Drops::bump(&self.drops.bad_source);
        }
        ok
    }

    /// When [`PeerTable::handle_timeout`] next has something to do (a handshake
    /// retransmit, rekey or give-up, a keepalive, a session to expire); None when no
    /// WireGuard timer runs. Packets handled meanwhile can bring it forward (a first
    /// packet starts a handshake, whose retransmit is due 5 s later), so a caller with
    /// packets moving on other threads polls again now and then.
    ///
    /// The timers of peers with a persistent keepalive start at the first
    /// `handle_timeout` (due at once, from the first instant the table was given; a
    /// table never given one cannot say when that is, so call `handle_timeout` once to
    /// start).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for peer in &self.peers {
            let Some(tunn) = peer.tunn.lock_made() else {
                if peer.keepalive.is_some() && !self.is_retired() {
                    if let Some(&epoch) = self.shared.epoch.get() {
                        at(epoch);
                    }
                }
                continue;
            };
            if let Some(t) = tunn.next_timer_at() {
                at(t);
            }
        }
        next
    }

    /// Runs WireGuard's timers at `now` (handshake retransmits and give-ups, rekeys,
    /// keepalives, session expiry), emitting what they send; also moves the handshake
    /// rate limiter's window on. Call it when [`PeerTable::poll_timeout`] says, or a
    /// few times a second.
    pub fn handle_timeout(&self, now: Instant, out: &mut [u8], emit: &mut impl FnMut(Emit<'_>)) {
        self.shared.ms_at(now);
        self.rate_limiter.reset_count_at(now);
        for peer in &self.peers {
            let endpoint = peer.endpoint();
            // A peer never used has no timers running (see `LazyTunn`), unless it has a
            // keepalive: its timers run from the start, as if made up front.
            let tunn = match peer.keepalive {
                Some(_) => peer.tunn.lock_or_make(now, &self.retired),
                None => peer.tunn.lock_made(),
            };
            let Some(mut tunn) = tunn else {
                continue;
            };
            match tunn.update_timers_at(out, now) {
                TunnResult::WriteToNetwork(wire) => {
                    if let Some(ep) = endpoint {
                        self.send_to(Some(peer), ep, wire, emit);
                    }
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(e) => log::debug!("timers for {:?}: {e:?}", peer.key),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
