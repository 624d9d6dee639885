//! Two peer tables talking to each other in memory, on a virtual clock: no threads, no
//! sockets, no sleeping. Time moves only when a test says so, and then by stepping
//! both tables to each deadline they report ([`PeerTable::poll_timeout`]), exactly as
//! the engine's timer thread does with the real clock.

use super::*;
use crate::config::{Config, PeerConfig};
use boringtun::noise::REKEY_AFTER_MESSAGES;
use std::collections::VecDeque;

const A: usize = 0;
const B: usize = 1;
const A_EP: &str = "192.0.2.1:51820";
const B_EP: &str = "192.0.2.2:51820";
/// Where A's datagrams come from after its NAT mapping changed.
const A_EP2: &str = "198.51.100.7:40000";

const HANDSHAKE_INIT: u8 = 1;
const HANDSHAKE_RESPONSE: u8 = 2;
const DATA: u8 = 4;

fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn public(secret: u8) -> Key {
    Key(PublicKey::from(&StaticSecret::from([secret; 32])).to_bytes())
}

/// Our key `me`, one peer (key `peer`) owning `peer_net` at `endpoint`.
fn config(me: u8, peer: u8, peer_net: &str, endpoint: &str) -> Config {
    Config {
        private_key: ringscale_keys::PrivateKey::from_bytes([me; 32]),
        listen_port: 0,
        addresses: vec![],
        mtu: 1280,
        peers: vec![PeerConfig {
            public_key: public(peer),
            allowed_ips: vec![peer_net.parse().unwrap()],
            endpoint: Some(ep(endpoint)),
            persistent_keepalive: None,
        }],
        filter: None,
    }
}

fn config_a() -> Config {
    config(1, 2, "10.0.0.2/32", B_EP)
}

fn config_b() -> Config {
    config(2, 1, "10.0.0.1/32", A_EP)
}

/// An IPv4 UDP packet (checksums are not looked at on this path).
fn ip_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let len = 28 + payload.len() as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    // UDP from port 12345 to 53.
    p.extend_from_slice(&[0x30, 0x39, 0, 53]);
    p.extend_from_slice(&(len - 20).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn payload_of(pkt: &[u8]) -> &[u8] {
    &pkt[28..]
}

fn receiver_index(datagram: &[u8]) -> u32 {
    u32::from_le_bytes(datagram[4..8].try_into().unwrap())
}

fn counter(datagram: &[u8]) -> u64 {
    u64::from_le_bytes(datagram[8..16].try_into().unwrap())
}

/// What a table emitted, copied out of its buffer.
#[derive(Debug)]
enum Out {
    Net(SocketAddr, Vec<u8>),
    Tun(Vec<u8>),
}

fn collect(outs: &mut Vec<Out>) -> impl FnMut(Emit<'_>) + '_ {
    move |e| match e {
        Emit::Network(to, b) => outs.push(Out::Net(to, b.to_vec())),
        Emit::Tun(p) => outs.push(Out::Tun(p.to_vec())),
        other => panic!("unexpected output {other:?}"),
    }
}

struct Node {
    table: Arc<PeerTable>,
    /// Addresses datagrams reach it at.
    addrs: Vec<SocketAddr>,
    /// The address its datagrams come from (it changes when the node roams).
    src: SocketAddr,
    ip: [u8; 4],
    /// Packets written to its TUN.
    tun: Vec<Vec<u8>>,
}

/// A datagram some table emitted.
#[derive(Clone, Debug)]
struct Sent {
    at: Duration,
    from: usize,
    to: SocketAddr,
    bytes: Vec<u8>,
}

impl Sent {
    fn kind(&self) -> u8 {
        self.bytes[0]
    }

    /// Transport data carrying a packet (not a keepalive).
    fn is_data(&self) -> bool {
        self.kind() == DATA && self.bytes.len() > 32
    }
}

/// A and B, the wire between them, and the virtual clock.
struct World {
    start: Instant,
    now: Instant,
    nodes: [Node; 2],
    /// Datagrams in flight: (from, to, bytes).
    wire: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Every datagram either table emitted, in order.
    sent: Vec<Sent>,
    /// When false the wire loses everything.
    link_up: bool,
    buf: Vec<u8>,
}

impl World {
    fn new() -> World {
        let start = Instant::now();
        let node = |cfg: Config, addr: &str, ip| Node {
            table: Arc::new(PeerTable::new(&cfg, None)),
            addrs: vec![ep(addr)],
            src: ep(addr),
            ip,
            tun: vec![],
        };
        World {
            start,
            now: start,
            nodes: [
                node(config_a(), A_EP, [10, 0, 0, 1]),
                node(config_b(), B_EP, [10, 0, 0, 2]),
            ],
            wire: VecDeque::new(),
            sent: vec![],
            link_up: true,
            buf: vec![0u8; 4096],
        }
    }

    /// A world where A's first packet made the handshake (at time 0) and B answered.
    fn connected() -> World {
        let mut w = World::new();
        w.send(A, b"hello");
        w.deliver();
        w.send(B, b"hello back");
        w.deliver();
        assert_eq!(w.tun_payloads(B), vec![b"hello".to_vec()]);
        assert_eq!(w.tun_payloads(A), vec![b"hello back".to_vec()]);
        w
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn table(&self, side: usize) -> Arc<PeerTable> {
        self.nodes[side].table.clone()
    }

    fn absorb(&mut self, side: usize, outs: Vec<Out>) {
        for out in outs {
            match out {
                Out::Net(to, bytes) => {
                    self.sent.push(Sent {
                        at: self.elapsed(),
                        from: side,
                        to,
                        bytes: bytes.clone(),
                    });
                    self.wire.push_back((self.nodes[side].src, to, bytes));
                }
                Out::Tun(pkt) => self.nodes[side].tun.push(pkt),
            }
        }
    }

    /// `side` sends a packet with `payload` to the other side through `table` (its
    /// current one, or one a worker still holds).
    fn send_with(&mut self, side: usize, table: &PeerTable, payload: &[u8]) {
        let pkt = ip_packet(self.nodes[side].ip, self.nodes[1 - side].ip, payload);
        let mut outs = vec![];
        table.encapsulate(self.now, &pkt, &mut self.buf, &mut collect(&mut outs));
        self.absorb(side, outs);
    }

    fn send(&mut self, side: usize, payload: &[u8]) {
        let table = self.table(side);
        self.send_with(side, &table, payload);
    }

    /// `side` receives `bytes` from `from` through `table`.
    fn receive_with(&mut self, side: usize, table: &PeerTable, from: SocketAddr, bytes: &[u8]) {
        let mut outs = vec![];
        table.decapsulate(
            self.now,
            from,
            bytes,
            &mut self.buf,
            &mut collect(&mut outs),
        );
        self.absorb(side, outs);
    }

    /// Delivers what is on the wire (and what that makes) until it is empty.
    fn deliver(&mut self) {
        for _ in 0..1000 {
            let Some((from, to, bytes)) = self.wire.pop_front() else {
                return;
            };
            if !self.link_up {
                continue;
            }
            let Some(side) = self.nodes.iter().position(|n| n.addrs.contains(&to)) else {
                continue;
            };
            let table = self.table(side);
            self.receive_with(side, &table, from, &bytes);
        }
        panic!("the tables keep answering each other");
    }

    /// Moves the clock to `t` after the start, running both tables' timers at each
    /// deadline they report on the way and delivering what they send.
    fn advance_to(&mut self, t: Duration) {
        let end = self.start + t;
        for _ in 0..10_000 {
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.table.poll_timeout())
                .min();
            match next {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    for side in [A, B] {
                        let table = self.table(side);
                        let mut outs = vec![];
                        table.handle_timeout(self.now, &mut self.buf, &mut collect(&mut outs));
                        self.absorb(side, outs);
                    }
                    self.deliver();
                }
                _ => {
                    self.now = self.now.max(end);
                    return;
                }
            }
        }
        panic!("a deadline handle_timeout does not move on");
    }

    /// Replaces `side`'s table with one for `cfg`; returns the old one.
    fn reconfigure(&mut self, side: usize, cfg: &Config) -> Arc<PeerTable> {
        let old = self.table(side);
        self.nodes[side].table = Arc::new(PeerTable::new(cfg, Some(&old)));
        old
    }

    fn tun_payloads(&self, side: usize) -> Vec<Vec<u8>> {
        self.nodes[side]
            .tun
            .iter()
            .map(|p| payload_of(p).to_vec())
            .collect()
    }

    /// When `side` sent messages of `kind`.
    fn times(&self, side: usize, kind: u8) -> Vec<Duration> {
        self.sent
            .iter()
            .filter(|s| s.from == side && s.kind() == kind)
            .map(|s| s.at)
            .collect()
    }

    fn data_from(&self, side: usize) -> Vec<&Sent> {
        self.sent
            .iter()
            .filter(|s| s.from == side && s.is_data())
            .collect()
    }
}

#[test]
fn a_first_packet_makes_the_handshake_then_data_flows_both_ways() {
    let mut w = World::new();
    w.send(A, b"one");
    assert_eq!(w.times(A, HANDSHAKE_INIT), vec![Duration::ZERO]);
    assert!(w.data_from(A).is_empty(), "data before a session");
    w.deliver();
    assert_eq!(w.times(B, HANDSHAKE_RESPONSE), vec![Duration::ZERO]);
    // The packet waited for the handshake and then went out.
    assert_eq!(w.tun_payloads(B), vec![b"one".to_vec()]);
    for i in 0..3u8 {
        w.send(B, &[b'b', i]);
        w.send(A, &[b'a', i]);
        w.deliver();
    }
    assert_eq!(w.tun_payloads(A), vec![b"b\0", b"b\x01", b"b\x02"]);
    assert_eq!(w.tun_payloads(B)[1..], [b"a\0", b"a\x01", b"a\x02"]);
    // One handshake in all; B's data is addressed to A's session.
    assert_eq!(w.times(A, HANDSHAKE_INIT).len(), 1);
    assert_eq!(w.times(B, HANDSHAKE_INIT).len(), 0);
    assert!(w.data_from(B).iter().all(|s| s.to == ep(A_EP)));
}

/// The initiator starts a new handshake once the session is REKEY_AFTER_TIME (120 s)
/// old and data is being sent; the transfer goes on under the new session.
#[test]
fn the_initiator_rekeys_after_120_seconds_of_traffic() {
    let mut w = World::connected();
    let first_index = receiver_index(&w.data_from(A)[0].bytes);
    for i in 1..=15u64 {
        w.advance_to(secs(10 * i));
        w.send(A, format!("a{i}").as_bytes());
        w.send(B, format!("b{i}").as_bytes());
        w.deliver();
    }
    assert_eq!(w.times(A, HANDSHAKE_INIT), vec![secs(0), secs(120)]);
    assert!(
        w.times(B, HANDSHAKE_INIT).is_empty(),
        "the responder rekeyed"
    );
    // Nothing was lost across the rekey, and A's data now names another session.
    assert_eq!(w.tun_payloads(B).len(), 16);
    assert_eq!(w.tun_payloads(A).len(), 16);
    let last = w.data_from(A).last().unwrap().bytes.clone();
    assert_ne!(receiver_index(&last), first_index);
}

/// After REKEY_AFTER_MESSAGES messages under one key a new handshake starts, whatever
/// the session's age (the counter is moved near the limit by boringtun's test hook).
#[test]
fn a_new_handshake_starts_after_rekey_after_messages() {
    let mut w = World::connected();
    w.advance_to(secs(1));
    let peer = w.table(A).peers()[0].clone();
    assert!(peer
        .tunn
        .lock_made()
        .unwrap()
        .set_sending_counter_for_test(REKEY_AFTER_MESSAGES - 2));
    w.send(A, b"below the limit");
    w.deliver();
    let due = w.table(A).poll_timeout().unwrap();
    assert!(due > w.now, "a rekey is due before the limit");
    w.send(A, b"the last under this key");
    w.deliver();
    assert_eq!(
        counter(&w.data_from(A).last().unwrap().bytes),
        REKEY_AFTER_MESSAGES - 1
    );
    assert!(w.table(A).poll_timeout().unwrap() <= w.now, "no rekey due");
    w.advance_to(secs(1));
    assert_eq!(w.times(A, HANDSHAKE_INIT), vec![secs(0), secs(1)]);
    w.send(A, b"under the new key");
    w.deliver();
    let last = w.data_from(A).last().unwrap().bytes.clone();
    assert!(
        counter(&last) < 10,
        "still on the old key: {}",
        counter(&last)
    );
    assert_eq!(
        w.tun_payloads(B)[1..],
        [
            b"below the limit".to_vec(),
            b"the last under this key".to_vec(),
            b"under the new key".to_vec()
        ]
    );
}

/// REJECT_AFTER_TIME (180 s): past it a session is no longer used for sending nor
/// accepted for receiving; what is sent waits for a new handshake.
#[test]
fn a_session_expires_after_180_seconds() {
    let mut w = World::connected();
    w.link_up = false;
    // Two packets made at 100 s under the session, held back by the network.
    w.advance_to(secs(100));
    w.send(A, b"early");
    w.send(A, b"late");
    let made: Vec<Sent> = w.data_from(A).into_iter().cloned().collect();
    let (early, late) = (&made[made.len() - 2], &made[made.len() - 1]);
    let from = ep(A_EP);
    w.advance_to(secs(179));
    let table = w.table(B);
    w.receive_with(B, &table, from, &early.bytes);
    assert_eq!(w.tun_payloads(B).last().unwrap(), b"early");
    let rejected = w.table(B).drops.rejected.load(Ordering::Relaxed);
    w.advance_to(secs(181));
    w.receive_with(B, &table, from, &late.bytes);
    assert_eq!(
        w.tun_payloads(B).last().unwrap(),
        b"early",
        "accepted after expiry"
    );
    assert_eq!(
        w.table(B).drops.rejected.load(Ordering::Relaxed),
        rejected + 1
    );
    // A sends nothing under the expired session: the packet waits for a handshake.
    let data_before = w.data_from(A).len();
    w.send(A, b"after expiry");
    assert_eq!(
        w.data_from(A).len(),
        data_before,
        "sent under an expired session"
    );
    // The network is back; A's handshake retransmit (every 5 s) gets through.
    w.link_up = true;
    w.advance_to(secs(190));
    assert_eq!(w.tun_payloads(B).last().unwrap(), b"after expiry");
    let last = w.data_from(A).last().unwrap().bytes.clone();
    assert_ne!(receiver_index(&last), receiver_index(&early.bytes));
}

/// With no answer, the initiation is sent again every REKEY_TIMEOUT (5 s) and given
/// up after REKEY_ATTEMPT_TIME (90 s); then the timers stop until there is traffic.
#[test]
fn handshakes_are_retried_every_5_seconds_and_abandoned_after_90() {
    let mut w = World::new();
    w.link_up = false;
    w.send(A, b"into the void");
    w.advance_to(secs(200));
    let want: Vec<Duration> = (0..18).map(|i| secs(5 * i)).collect();
    assert_eq!(w.times(A, HANDSHAKE_INIT), want);
    assert_eq!(w.table(A).poll_timeout(), None, "timers still running");
    // New traffic starts a new attempt.
    w.send(A, b"again");
    assert_eq!(w.times(A, HANDSHAKE_INIT).last(), Some(&secs(200)));
    w.link_up = true;
    w.advance_to(secs(205));
    assert_eq!(w.tun_payloads(B), vec![b"again".to_vec()]);
}

/// An authenticated packet from a new address moves where replies go; a replayed one
/// from yet another address does not.
#[test]
fn data_from_a_new_endpoint_moves_the_replies() {
    let mut w = World::connected();
    let old = w.data_from(A)[0].bytes.clone();
    w.nodes[A].src = ep(A_EP2);
    w.nodes[A].addrs.push(ep(A_EP2));
    w.advance_to(secs(3));
    w.send(A, b"from my new address");
    w.deliver();
    let peer_a = w.table(B).peers()[0].clone();
    assert_eq!(peer_a.endpoint(), Some(ep(A_EP2)));
    w.send(B, b"reply");
    assert_eq!(w.sent.last().unwrap().to, ep(A_EP2));
    w.deliver();
    assert_eq!(w.tun_payloads(A).last().unwrap(), b"reply");
    let table = w.table(B);
    w.receive_with(B, &table, ep("203.0.113.9:1"), &old);
    assert_eq!(
        peer_a.endpoint(),
        Some(ep(A_EP2)),
        "a replay moved the endpoint"
    );
}

/// A new configuration that changes a peer's routing keeps its session: no handshake,
/// and packets keep flowing, including those a worker still on the old table handles.
#[test]
fn a_reconfiguration_mid_transfer_keeps_the_session() {
    let mut w = World::connected();
    let index = receiver_index(&w.data_from(A)[0].bytes);
    w.send(A, b"in flight");
    let mut b_cfg = config_b();
    b_cfg.peers[0]
        .allowed_ips
        .push("10.9.0.0/16".parse().unwrap());
    let old_b = w.reconfigure(B, &b_cfg);
    // The datagram sent before the change reaches a worker still on the old table.
    let (from, _, bytes) = w.wire.pop_front().unwrap();
    w.receive_with(B, &old_b, from, &bytes);
    let old_a = w.reconfigure(A, &config_a());
    assert!(old_a.is_retired() && old_b.is_retired());
    for i in 1..=9u64 {
        w.advance_to(secs(10 * i));
        w.send(A, format!("a{i}").as_bytes());
        w.send(B, format!("b{i}").as_bytes());
        w.deliver();
    }
    assert_eq!(w.tun_payloads(B).len(), 11);
    assert_eq!(w.tun_payloads(A).len(), 10);
    assert_eq!(w.times(A, HANDSHAKE_INIT), vec![secs(0)]);
    assert!(w.times(B, HANDSHAKE_INIT).is_empty());
    assert!(w
        .data_from(A)
        .iter()
        .all(|s| receiver_index(&s.bytes) == index));
}

/// The race of issue 15: a worker still holding the table a reconfiguration replaced
/// must not start WireGuard state of its own (a second Tunn with the same session
/// index, whose handshake would race the real one).
#[test]
fn a_replaced_table_sends_no_stray_handshake() {
    let mut changed = config_a();
    changed.peers[0]
        .allowed_ips
        .push("10.9.0.0/16".parse().unwrap());

    // With a session: the old table sends under it, as the new one does.
    let mut w = World::connected();
    let index = receiver_index(&w.data_from(A)[0].bytes);
    let old = w.reconfigure(A, &changed);
    w.send_with(A, &old, b"old table");
    w.send(A, b"new table");
    w.deliver();
    assert_eq!(w.times(A, HANDSHAKE_INIT), vec![secs(0)], "stray handshake");
    assert!(w
        .data_from(A)
        .iter()
        .all(|s| receiver_index(&s.bytes) == index));
    assert_eq!(w.tun_payloads(B)[1..], [b"old table", b"new table"]);

    // Before any session, with the peer kept or removed: the old table makes nothing,
    // the new one makes the only handshake.
    let mut removed = config_a();
    removed.peers.clear();
    for cfg in [changed, removed] {
        let mut w = World::new();
        let old = w.reconfigure(A, &cfg);
        w.send_with(A, &old, b"old table");
        assert!(w.sent.is_empty(), "the old table sent {:?}", w.sent);
        assert_eq!(old.drops.retired_table.load(Ordering::Relaxed), 1);
        old.handle_timeout(w.now, &mut w.buf, &mut |e| panic!("old table timer: {e:?}"));
        w.send(A, b"new table");
        w.deliver();
        let inits = w.times(A, HANDSHAKE_INIT).len();
        if cfg.peers.is_empty() {
            assert_eq!(inits, 0);
        } else {
            assert_eq!(inits, 1);
            assert_eq!(w.tun_payloads(B), vec![b"new table".to_vec()]);
        }
    }
}

/// Every output is an Emit: quad-100's packets, disco/STUN datagrams and messages for
/// a peer reached through DERP come back to the caller like datagrams do.
#[test]
fn relayed_local_and_off_path_traffic_are_outputs_too() {
    let quad100 = IpAddr::from([100, 100, 100, 100]);
    let a = PeerTable::new(&config_a(), None).with_local_addresses(&[quad100]);
    let now = Instant::now();
    let mut buf = vec![0u8; 2048];
    let mut got = vec![];
    let dns = ip_packet([10, 0, 0, 1], [100, 100, 100, 100], b"query");
    a.encapsulate(now, &dns, &mut buf, &mut |e| {
        got.push(matches!(e, Emit::Local(p) if p == &dns[..]))
    });
    assert_eq!(got, vec![true]);

    let stun = [
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    got.clear();
    a.decapsulate(now, ep(B_EP), &stun, &mut buf, &mut |e| {
        got.push(matches!(e, Emit::OffPath(from, d) if from == ep(B_EP) && d == &stun[..]))
    });
    assert_eq!(got, vec![true]);

    // A peer whose path is DERP region 7: the handshake its first packet starts is
    // relayed, and so are the timers' retransmits.
    assert!(a.set_endpoint(&public(2), Some(crate::derp_addr(7))));
    let mut relayed = vec![];
    let mut record = |e: Emit<'_>| match e {
        Emit::Relay {
            peer,
            region,
            packet,
        } => relayed.push((peer, region, packet[0])),
        other => panic!("unexpected output {other:?}"),
    };
    a.encapsulate(
        now,
        &ip_packet([10, 0, 0, 1], [10, 0, 0, 2], b"x"),
        &mut buf,
        &mut record,
    );
    let due = a.poll_timeout().unwrap();
    assert_eq!(due, now + secs(5));
    a.handle_timeout(due, &mut buf, &mut record);
    assert_eq!(
        relayed,
        vec![
            (public(2), 7, HANDSHAKE_INIT),
            (public(2), 7, HANDSHAKE_INIT)
        ]
    );
}
