//! The WireGuard side of the packet path, with no I/O: the peer table built from a
//! [`Config`], and what to do with a packet from the TUN, a datagram from the network,
//! or a timer tick. The I/O layer feeds packets in and carries out the [`Emit`]s.

use crate::allowed_ips::AllowedIps;
use crate::config::Config;
use crate::Key;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ip_network::IpNetwork;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Handshakes per second above which we answer with cookies (WireGuard's "under load").
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// Room boringtun needs in an output buffer beyond the packet (header, tag, and at least
/// a whole handshake message).
pub const WG_OVERHEAD: usize = 32;
pub const MIN_OUT_BUF: usize = 148;

/// Something the I/O layer must do.
#[derive(Debug)]
pub enum Emit<'a> {
    /// Send a datagram to this endpoint.
    Network(SocketAddr, &'a [u8]),
    /// Write a decrypted IP packet to the TUN.
    Tun(&'a [u8]),
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
}

impl Drops {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// One peer: its WireGuard state and where it was last heard from.
pub struct Peer {
    pub key: Key,
    /// Upper 24 bits of our session indices; routes incoming packets to this peer.
    index: u32,
    keepalive: Option<u16>,
    tunn: Mutex<Tunn>,
    endpoint: Mutex<Option<SocketAddr>>,
    /// The endpoint the configuration gave; a new configuration with the same value
    /// keeps the roamed-to endpoint instead of resetting it.
    configured_endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNetwork>,
}

impl Peer {
    pub fn endpoint(&self) -> Option<SocketAddr> {
        *self.endpoint.lock()
    }

    /// Time since the last handshake, bytes sent, bytes received.
    pub fn stats(&self) -> (Option<std::time::Duration>, usize, usize) {
        let (hs, tx, rx, _, _) = self.tunn.lock().stats();
        (hs, tx, rx)
    }
}

static NEXT_INDEX: AtomicU32 = AtomicU32::new(1);

fn next_index() -> u32 {
    // 24 bits: boringtun shifts the index left by 8 for its session counter.
    NEXT_INDEX.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff
}

/// The peers of one configuration, looked up by destination address, session index
/// and public key. Immutable once built; a new configuration builds a new table that
/// keeps the sessions of peers whose keys did not change.
pub struct PeerTable {
    private: StaticSecret,
    public: PublicKey,
    private_key: Key,
    peers: Vec<Arc<Peer>>,
    by_ip: AllowedIps<Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    by_key: HashMap<Key, Arc<Peer>>,
    rate_limiter: Arc<RateLimiter>,
    pub drops: Arc<Drops>,
}

impl PeerTable {
    pub fn new(cfg: &Config, previous: Option<&PeerTable>) -> PeerTable {
        let private = StaticSecret::from(cfg.private_key.0);
        let public = PublicKey::from(&private);
        let same_identity = previous.is_some_and(|p| p.private_key == cfg.private_key);
        let rate_limiter = match previous {
            Some(p) if same_identity => p.rate_limiter.clone(),
            _ => Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
        };
        let drops = previous.map(|p| p.drops.clone()).unwrap_or_default();
        let mut table = PeerTable {
            private: private.clone(),
            public,
            private_key: cfg.private_key,
            peers: Vec::with_capacity(cfg.peers.len()),
            by_ip: AllowedIps::default(),
            by_index: HashMap::with_capacity(cfg.peers.len()),
            by_key: HashMap::with_capacity(cfg.peers.len()),
            rate_limiter: rate_limiter.clone(),
            drops,
        };
        for pc in &cfg.peers {
            let old = previous
                .filter(|_| same_identity)
                .and_then(|p| p.by_key.get(&pc.public_key))
                .filter(|old| old.keepalive == pc.persistent_keepalive);
            let peer = match old {
                Some(old)
                    if old.allowed_ips == pc.allowed_ips
                        && old.configured_endpoint == pc.endpoint =>
                {
                    old.clone()
                }
                Some(old) => {
                    // Same session, new routing facts: move the Tunn into a new Peer.
                    // The old table stays valid for packets already in flight; its Peer
                    // shares nothing mutable with the new one except through this move.
                    let endpoint = if old.configured_endpoint == pc.endpoint {
                        old.endpoint()
                    } else {
                        pc.endpoint
                    };
                    let tunn = std::mem::replace(
                        &mut *old.tunn.lock(),
                        Tunn::new(
                            private.clone(),
                            PublicKey::from(pc.public_key.0),
                            None,
                            None,
                            old.index,
                            Some(rate_limiter.clone()),
                        ),
                    );
                    Arc::new(Peer {
                        key: pc.public_key,
                        index: old.index,
                        keepalive: pc.persistent_keepalive,
                        tunn: Mutex::new(tunn),
                        endpoint: Mutex::new(endpoint),
                        configured_endpoint: pc.endpoint,
                        allowed_ips: pc.allowed_ips.clone(),
                    })
                }
                None => {
                    let index = next_index();
                    Arc::new(Peer {
                        key: pc.public_key,
                        index,
                        keepalive: pc.persistent_keepalive,
                        tunn: Mutex::new(Tunn::new(
                            private.clone(),
                            PublicKey::from(pc.public_key.0),
                            None,
                            pc.persistent_keepalive,
                            index,
                            Some(rate_limiter.clone()),
                        )),
                        endpoint: Mutex::new(pc.endpoint),
                        configured_endpoint: pc.endpoint,
                        allowed_ips: pc.allowed_ips.clone(),
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

    /// A packet read from the TUN: encrypt it for the peer that owns its destination.
    /// `out` must hold the packet plus [`WG_OVERHEAD`] and at least [`MIN_OUT_BUF`].
    pub fn encapsulate(&self, pkt: &[u8], out: &mut [u8], emit: &mut impl FnMut(Emit<'_>)) {
        let Some(peer) = Tunn::dst_address(pkt).and_then(|dst| self.by_ip.lookup(dst)) else {
            Drops::bump(&self.drops.no_route);
            return;
        };
        let endpoint = peer.endpoint();
        match peer.tunn.lock().encapsulate(pkt, out) {
            TunnResult::WriteToNetwork(wire) => match endpoint {
                Some(ep) => emit(Emit::Network(ep, wire)),
                None => Drops::bump(&self.drops.no_endpoint),
            },
            TunnResult::Err(e) => log::debug!("encapsulate for {:?}: {e:?}", peer.key),
            _ => {}
        }
    }

    /// A datagram from the network: authenticate, decrypt, and say what follows.
    pub fn decapsulate(
        &self,
        from: SocketAddr,
        dgram: &[u8],
        out: &mut [u8],
        emit: &mut impl FnMut(Emit<'_>),
    ) {
        // MAC check (and cookie reply when under load) before any expensive work.
        let packet = match self.rate_limiter.verify_packet(Some(from.ip()), dgram, out) {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                log::trace!("under load: cookie reply to {from}");
                emit(Emit::Network(from, cookie));
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
        let mut tunn = peer.tunn.lock();
        match tunn.decapsulate(Some(from.ip()), dgram, out) {
            TunnResult::WriteToNetwork(wire) => {
                emit(Emit::Network(from, wire));
                // A completed handshake releases packets queued while it ran.
                while let TunnResult::WriteToNetwork(wire) = tunn.decapsulate(None, &[], out) {
                    emit(Emit::Network(from, wire));
                }
            }
            TunnResult::WriteToTunnelV4(pkt, src) => {
                if !self.source_allowed(peer, IpAddr::V4(src)) {
                    return;
                }
                emit(Emit::Tun(pkt));
            }
            TunnResult::WriteToTunnelV6(pkt, src) => {
                if !self.source_allowed(peer, IpAddr::V6(src)) {
                    return;
                }
                emit(Emit::Tun(pkt));
            }
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                if !matches!(e, WireGuardError::DuplicateCounter) {
                    log::debug!("decapsulate from {from}: {e:?}");
                }
                Drops::bump(&self.drops.rejected);
                return;
            }
        }
        drop(tunn);
        // Roaming: an authenticated packet tells us where the peer is now.
        let mut ep = peer.endpoint.lock();
        if *ep != Some(from) {
            log::debug!("peer {:?} endpoint now {from}", peer.key);
            *ep = Some(from);
        }
    }

    fn source_allowed(&self, peer: &Arc<Peer>, src: IpAddr) -> bool {
        let ok = self.by_ip.lookup(src).is_some_and(|p| Arc::ptr_eq(p, peer));
        if !ok {
            Drops::bump(&self.drops.bad_source);
        }
        ok
    }

    /// Runs WireGuard's timers (handshake retries, rekeys, keepalives). Call a few
    /// times a second.
    pub fn tick(&self, out: &mut [u8], emit: &mut impl FnMut(Emit<'_>)) {
        for peer in &self.peers {
            let endpoint = peer.endpoint();
            match peer.tunn.lock().update_timers(out) {
                TunnResult::WriteToNetwork(wire) => {
                    if let Some(ep) = endpoint {
                        emit(Emit::Network(ep, wire));
                    }
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(e) => log::debug!("timers for {:?}: {e:?}", peer.key),
                _ => {}
            }
        }
    }

    /// Resets the handshake rate limiter's window; call once a second.
    pub fn reset_rate_limit(&self) {
        self.rate_limiter.reset_count();
    }
}
