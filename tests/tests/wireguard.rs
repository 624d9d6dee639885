//! End-to-end WireGuard tests, each against the real thing: network namespaces joined
//! by veth pairs, real TUN devices, the ringscale daemon as a user starts it
//! (`ringscale tailscaled --wg-config FILE`), Debian's wireguard-go configured with
//! `wg`, and real packets on the wire. Nothing is mocked.
//!
//! Needs root (namespaces, TUN). Every test builds its own namespaces with unique
//! names, so the tests run in parallel. The scenarios are functions of the WireGuard
//! implementation; the `harness_*` tests run them with wireguard-go in ringscale's place
//! to check the test bed itself (so that a failing ringscale test is not a test-bed bug):
//! `cargo test -p ringscale-tests --test wireguard -- harness_`.

#![forbid(unsafe_code)]

use ringscale_tests::testbed::{self, Netns, Proc, TempDir, TestRng};
use ringscale_tests::wgpeer::{addr::*, Impl, NodeConf, Pair, WgNode};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

const MB: u64 = 1024 * 1024;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Pings until an answer (the first packet may wait for a handshake), or panics with
/// both nodes' logs.
fn assert_ping(pair: &Pair, from_a: bool, to: &str, timeout: Duration, what: &str) {
    let (ns, from) = if from_a {
        (&pair.ns_a, &pair.a)
    } else {
        (&pair.ns_b, &pair.b)
    };
    if !ns.wait_ping(to, timeout) {
        panic!(
            "{what}: no ping answer from {to} within {timeout:?} (sent by {} in {})\n{}",
            from.imp,
            ns.name,
            pair.logs()
        );
    }
}

/// Sends `bytes` of random data over TCP through the tunnel and checks that the
/// receiver got exactly those bytes (size and sha256 on both ends).
fn assert_transfer(pair: &Pair, from_a: bool, to: &str, port: u16, bytes: u64, timeout: Duration) {
    let (from_ns, to_ns) = if from_a {
        (&pair.ns_a, &pair.ns_b)
    } else {
        (&pair.ns_b, &pair.ns_a)
    };
    let dir = TempDir::new("xfer");
    let (src, dst) = (dir.path.join("sent"), dir.path.join("received"));
    testbed::random_file(&src, bytes);
    let r = testbed::tcp_transfer(from_ns, to_ns, ip(to), port, &src, &dst, timeout)
        .unwrap_or_else(|e| {
            panic!(
                "TCP transfer of {bytes} bytes to {to}: {e}\n{}",
                pair.logs()
            )
        });
    assert_eq!(r.bytes_sent, bytes, "sender did not send everything");
    assert_eq!(
        r.bytes_received,
        bytes,
        "receiver got {} of {bytes} bytes\n{}",
        r.bytes_received,
        pair.logs()
    );
    assert_eq!(
        r.sha256_sent,
        r.sha256_received,
        "{bytes} bytes to {to} arrived corrupted\n{}",
        pair.logs()
    );
    eprintln!(
        "transfer {} MB to {to}: {:?} ({:.0} Mbit/s), sha256 {}",
        bytes / MB,
        r.elapsed,
        bytes as f64 * 8.0 / r.elapsed.as_secs_f64() / 1e6,
        r.sha256_received
    );
}

/// The node has not died, and (for ringscale) has not logged a panic: a panic on a
/// worker thread of a debug build need not take the process down.
fn assert_healthy(node: &mut WgNode, when: &str) {
    if let Some(st) = node.exited() {
        panic!("{} exited ({st}) {when}\n{}", node.imp, node.log_tail(80));
    }
    let log = node.log();
    assert!(
        !log.contains("panicked at"),
        "{} panicked {when}\n{}",
        node.imp,
        node.log_tail(80)
    );
}

/// SIGTERM makes the node exit 0 and remove its interface.
fn assert_clean_stop(ns: &Netns, node: &mut WgNode) {
    let ifname = node.conf.ifname.clone();
    let (st, in_time) = node.stop(Duration::from_secs(5)).expect("node was running");
    assert!(in_time, "{} ignored SIGTERM for 5 s", node.imp);
    assert!(st.success(), "{} exited with {st} on SIGTERM", node.imp);
    assert!(
        !ns.has_link(&ifname),
        "{} left {ifname} behind after SIGTERM",
        node.imp
    );
}

// ---------------------------------------------------------------------------
// 1. Two nodes of the same implementation: IPv4 and IPv6 both ways, bulk TCP.

fn pair_traffic(imp: Impl) {
    let mut pair = Pair::new(imp, imp);
    // The first ping waits for the handshake.
    assert_ping(&pair, true, TUN_B4, Duration::from_secs(10), "A→B IPv4");
    assert_ping(&pair, true, TUN_B6, Duration::from_secs(5), "A→B IPv6");
    assert_ping(&pair, false, TUN_A4, Duration::from_secs(5), "B→A IPv4");
    assert_ping(&pair, false, TUN_A6, Duration::from_secs(5), "B→A IPv6");
    // Full-size packets for the 1280 MTU: 1280 - 20 (IPv4) - 8 (ICMP) of payload.
    assert!(
        pair.ns_a.ping_size(TUN_B4, 1252),
        "a 1280-byte IPv4 packet did not cross\n{}",
        pair.logs()
    );
    if imp == Impl::Ringscale {
        let link = pair
            .ns_a
            .ip(&["-o", "link", "show", "dev", &pair.a.conf.ifname]);
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(link.contains("mtu 1280"), "TUN MTU is not 1280: {link}");
    }

    assert_transfer(&pair, true, TUN_B4, 5001, 100 * MB, Duration::from_secs(90));
    assert_transfer(&pair, false, TUN_A6, 5002, 20 * MB, Duration::from_secs(60));

    assert_healthy(&mut pair.a, "after the transfers");
    assert_healthy(&mut pair.b, "after the transfers");
    if imp == Impl::Ringscale {
        assert_clean_stop(&pair.ns_a, &mut pair.a);
        assert_clean_stop(&pair.ns_b, &mut pair.b);
    }
}

#[test]
fn ringscale_pair_carries_ipv4_ipv6_and_100mb_tcp() {
    pair_traffic(Impl::Ringscale);
}

#[test]
fn harness_wireguard_go_pair_traffic() {
    pair_traffic(Impl::WireguardGo);
}

// ---------------------------------------------------------------------------
// 2. Interop with wireguard-go: either side starts the handshake; sessions survive
//    a restart of either side.

fn interop_traffic(us: Impl, we_initiate: bool) {
    let mut pair = Pair::new(us, Impl::WireguardGo);
    if we_initiate {
        assert_ping(
            &pair,
            true,
            TUN_B4,
            Duration::from_secs(10),
            "first packet A→B",
        );
        assert_ping(&pair, false, TUN_A4, Duration::from_secs(5), "B→A IPv4");
    } else {
        assert_ping(
            &pair,
            false,
            TUN_A4,
            Duration::from_secs(10),
            "first packet B→A",
        );
        assert_ping(&pair, true, TUN_B4, Duration::from_secs(5), "A→B IPv4");
    }
    // wireguard-go's verbose log says which role it played in the handshake, so the
    // test knows it covered the direction it claims.
    let (want, not) = if we_initiate {
        (
            "Received handshake initiation",
            "Sending handshake initiation",
        )
    } else {
        (
            "Received handshake response",
            "Received handshake initiation",
        )
    };
    let log = pair.b.log();
    assert!(
        log.contains(want) && !log.contains(not),
        "wireguard-go's log should show {want:?} and not {not:?}\n{}",
        pair.logs()
    );
    assert_ping(&pair, true, TUN_B6, Duration::from_secs(5), "A→B IPv6");
    assert_ping(&pair, false, TUN_A6, Duration::from_secs(5), "B→A IPv6");
    assert_transfer(&pair, true, TUN_B4, 5001, 10 * MB, Duration::from_secs(45));
    assert_transfer(&pair, false, TUN_A6, 5002, 10 * MB, Duration::from_secs(45));
    assert_healthy(&mut pair.a, "after interop traffic");
    assert_healthy(&mut pair.b, "after interop traffic");
}

#[test]
fn interop_wireguard_go_ringscale_initiates() {
    interop_traffic(Impl::Ringscale, true);
}

#[test]
fn interop_wireguard_go_wireguard_go_initiates() {
    interop_traffic(Impl::Ringscale, false);
}

/// A (`us`) keeps running while wireguard-go (B) restarts with the same key.
fn peer_restart(us: Impl) {
    let mut pair = Pair::new(us, Impl::WireguardGo);
    assert_ping(
        &pair,
        true,
        TUN_B4,
        Duration::from_secs(10),
        "before restart",
    );

    // 1. wireguard-go comes back knowing our endpoint and starts a new handshake as
    //    soon as it has a packet: we must accept it although we hold a session.
    pair.b.restart();
    assert_ping(
        &pair,
        false,
        TUN_A4,
        Duration::from_secs(10),
        "B→A after B restarted",
    );
    assert_ping(
        &pair,
        true,
        TUN_B4,
        Duration::from_secs(5),
        "A→B after B restarted",
    );
    assert_ping(
        &pair,
        true,
        TUN_B6,
        Duration::from_secs(5),
        "A→B IPv6 after B restarted",
    );

    // 2. wireguard-go comes back without our endpoint, so it cannot start anything:
    //    our packets on the stale session go unanswered and we must notice and
    //    handshake again by ourselves (WireGuard's timers: about 15 s).
    let mut conf: NodeConf = pair.b.conf.clone();
    conf.peers[0].endpoint = None;
    pair.b.restart_with(conf);
    let t = Instant::now();
    assert_ping(
        &pair,
        true,
        TUN_B4,
        Duration::from_secs(35),
        "A→B after B restarted without our endpoint (A must re-handshake on its own)",
    );
    eprintln!(
        "session recovered by A's own re-handshake after {:?}",
        t.elapsed()
    );
    assert_ping(
        &pair,
        false,
        TUN_A4,
        Duration::from_secs(5),
        "B→A after recovery",
    );
    assert_transfer(&pair, true, TUN_B4, 5003, 2 * MB, Duration::from_secs(30));
    assert_healthy(&mut pair.a, "across the peer's restarts");
}

#[test]
fn interop_wireguard_go_restarts_and_ringscale_rehandshakes() {
    peer_restart(Impl::Ringscale);
}

#[test]
fn harness_wireguard_go_peer_restart() {
    peer_restart(Impl::WireguardGo);
}

/// A (`us`) restarts with the same key while wireguard-go (B) keeps its session.
fn self_restart(us: Impl) {
    let mut pair = Pair::new(us, Impl::WireguardGo);
    assert_ping(
        &pair,
        true,
        TUN_B4,
        Duration::from_secs(10),
        "before restart",
    );
    assert_ping(
        &pair,
        false,
        TUN_A4,
        Duration::from_secs(5),
        "B→A before restart",
    );

    // 1. We restart and send first: our fresh handshake replaces B's session.
    pair.a.restart();
    assert_ping(
        &pair,
        true,
        TUN_B4,
        Duration::from_secs(10),
        "A→B after A restarted",
    );
    assert_ping(
        &pair,
        false,
        TUN_A6,
        Duration::from_secs(5),
        "B→A IPv6 after A restarted",
    );

    // 2. We restart and B sends first on its stale session: we must drop those
    //    packets quietly and answer B's re-handshake (about 15 s, B's timers).
    pair.a.restart();
    assert_ping(
        &pair,
        false,
        TUN_A4,
        Duration::from_secs(35),
        "B→A on B's stale session after A restarted",
    );
    assert_ping(
        &pair,
        true,
        TUN_B4,
        Duration::from_secs(5),
        "A→B after recovery",
    );
    assert_transfer(&pair, false, TUN_A4, 5004, 2 * MB, Duration::from_secs(30));
    assert_healthy(&mut pair.a, "after its restarts");
}

#[test]
fn interop_ringscale_restarts_and_wireguard_go_follows() {
    self_restart(Impl::Ringscale);
}

// ---------------------------------------------------------------------------
// 3. Hostile input on the WireGuard port from a third namespace.

const MSG_INITIATION: u8 = 1;
const MSG_RESPONSE: u8 = 2;
const MSG_COOKIE: u8 = 3;
const MSG_TRANSPORT: u8 = 4;
const INITIATION_LEN: usize = 148;
const RESPONSE_LEN: usize = 92;
const COOKIE_LEN: usize = 64;

/// A WireGuard message header: type, three zero bytes.
fn msg(kind: u8, len: usize, rng: &mut TestRng) -> Vec<u8> {
    let mut m = rng.bytes(len.max(4));
    m.truncate(len);
    if len >= 4 {
        m[..4].copy_from_slice(&[kind, 0, 0, 0]);
    } else if len > 0 {
        m[0] = kind;
    }
    m
}

/// Puts a valid mac1 on a handshake initiation for the responder with public key
/// `responder` (what anyone who knows the public key can do): mac1 =
/// BLAKE2s-128 keyed with BLAKE2s-256("mac1----" || key), over the message before it.
/// Such an initiation passes the cheap check and costs the responder a DH, so a flood
/// of them is what drives WireGuard into its under-load (cookie) mode.
fn set_mac1(init: &mut [u8], responder: &[u8; 32]) {
    use blake2::digest::{KeyInit, Mac};
    use blake2::{Blake2s256, Blake2sMac, Digest};
    let key = Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(responder)
        .finalize();
    let mut mac =
        <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(&init[..116]);
    init[116..132].copy_from_slice(&mac.finalize().into_bytes());
    init[132..148].fill(0);
}

fn public_key_bytes(b64: &str) -> [u8; 32] {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|v| v.try_into().ok())
        .expect("a 32-byte base64 public key")
}

/// What came back to the attacker, by message type.
#[derive(Default, Debug)]
struct Replies {
    by_type: [u64; 6], // 0: not WireGuard, 1..=4: types, 5: other
}

impl Replies {
    fn drain(&mut self, sock: &UdpSocket) {
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            let t = if n >= 4 && buf[1..4] == [0, 0, 0] && (1..=4).contains(&buf[0]) {
                buf[0] as usize
            } else if n == 0 {
                0
            } else {
                5
            };
            self.by_type[t] += 1;
        }
    }
}

/// The attacker's datagrams, phase by phase; returns what the target sent back.
struct Attack {
    responder: [u8; 32],
    initiation: Vec<u8>,
    transports: Vec<Vec<u8>>,
    seed: u64,
}

impl Attack {
    fn run(self, target: SocketAddr) -> Result<(Replies, Vec<(String, u64)>), String> {
        let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut rng = TestRng::new(self.seed);
        let mut replies = Replies::default();
        let mut phases = Vec::new();
        let mut sent = 0u64;
        let mut send = |sock: &UdpSocket, d: &[u8], replies: &mut Replies| {
            // A full socket buffer is the only expected error; keep going.
            let _ = sock.send_to(d, target);
            sent += 1;
            if sent & 255 == 0 {
                replies.drain(sock);
            }
        };
        let phase = |name: &str, count: &mut u64, phases: &mut Vec<(String, u64)>| {
            phases.push((name.to_string(), *count));
            *count = 0;
        };
        let mut n = 0u64;

        // Random datagrams, any length, any first byte; then ones that look like
        // each message type but have random lengths.
        for _ in 0..5000 {
            let len = rng.below(1500);
            let d = rng.bytes(len);
            send(&sock, &d, &mut replies);
            n += 1;
        }
        for _ in 0..4000 {
            let kind = 1 + rng.below(4) as u8;
            let len = rng.below(300);
            let d = msg(kind, len, &mut rng);
            send(&sock, &d, &mut replies);
            n += 1;
        }
        phase("random datagrams", &mut n, &mut phases);

        // Truncated handshake initiations: the real one cut at every length, and
        // random ones of every short length.
        for len in 0..INITIATION_LEN {
            send(&sock, &self.initiation[..len], &mut replies);
            let d = msg(MSG_INITIATION, len, &mut rng);
            send(&sock, &d, &mut replies);
            n += 2;
        }
        phase("truncated initiations", &mut n, &mut phases);

        // Oversized initiations: the real one with bytes appended (up to a datagram
        // that needs IP fragmentation), and random ones of many sizes.
        for extra in [1usize, 2, 3, 4, 16, 100, 1000, 1400, 8000, 60000] {
            let mut d = self.initiation.clone();
            d.extend(rng.bytes(extra));
            send(&sock, &d, &mut replies);
            n += 1;
        }
        for len in (INITIATION_LEN + 1..=2000).step_by(7) {
            let d = msg(MSG_INITIATION, len, &mut rng);
            send(&sock, &d, &mut replies);
            n += 1;
        }
        phase("oversized initiations", &mut n, &mut phases);

        // The real initiation replayed: its timestamp is old, it must get no response.
        for _ in 0..20 {
            send(&sock, &self.initiation, &mut replies);
            n += 1;
        }
        phase("replayed initiation", &mut n, &mut phases);

        // Real transport packets replayed from another address: they authenticate,
        // but their counters are used up; they must neither be delivered nor move
        // the peer's endpoint to us.
        for _ in 0..5 {
            for t in &self.transports {
                send(&sock, t, &mut replies);
                n += 1;
            }
        }
        phase("replayed transport packets", &mut n, &mut phases);

        // Live receiver index, forged contents (authentication fails); unknown
        // receiver indices for transport, response and cookie messages.
        let live_index = self.transports[0][4..8].to_vec();
        for _ in 0..1000 {
            let len = 32 + rng.below(1300);
            let mut d = msg(MSG_TRANSPORT, len, &mut rng);
            d[4..8].copy_from_slice(&live_index);
            send(&sock, &d, &mut replies);
            n += 1;
        }
        phase("forged transport for the live session", &mut n, &mut phases);
        for _ in 0..2000 {
            let len = 32 + rng.below(1300);
            let d = msg(MSG_TRANSPORT, len, &mut rng);
            send(&sock, &d, &mut replies);
            let d = msg(MSG_RESPONSE, RESPONSE_LEN, &mut rng);
            send(&sock, &d, &mut replies);
            let d = msg(MSG_COOKIE, COOKIE_LEN, &mut rng);
            send(&sock, &d, &mut replies);
            n += 3;
        }
        phase("unknown receiver indices", &mut n, &mut phases);

        // A flood, bounded in count and time: initiations with a valid mac1 (each
        // costs the target a DH and should push it under load, into cookie
        // replies), transports for unknown sessions, junk initiations.
        let end = Instant::now() + Duration::from_secs(20);
        let mut junk_init = msg(MSG_INITIATION, INITIATION_LEN, &mut rng);
        let mut data = msg(MSG_TRANSPORT, 200, &mut rng);
        let mut valid_init = msg(MSG_INITIATION, INITIATION_LEN, &mut rng);
        for i in 0..200_000u32 {
            if i & 1023 == 0 && Instant::now() > end {
                break;
            }
            let kind = i % 3;
            let d: &mut Vec<u8> = match kind {
                0 => &mut valid_init,
                1 => &mut data,
                _ => &mut junk_init,
            };
            // Vary the sender index / receiver index and counter cheaply.
            d[4..8].copy_from_slice(&i.to_le_bytes());
            d[8..12].copy_from_slice(&(rng.next_u64() as u32).to_le_bytes());
            if kind == 0 {
                set_mac1(d, &self.responder);
            }
            send(&sock, d, &mut replies);
            n += 1;
        }
        phase("flood", &mut n, &mut phases);

        // Whatever the target still sends back within a second.
        std::thread::sleep(Duration::from_secs(1));
        replies.drain(&sock);
        Ok((replies, phases))
    }
}

fn bad_input(imp: Impl) {
    let mut pair = Pair::new(imp, imp);
    // The attacker's namespace reaches B over its own veth.
    let ns_c = Netns::new("wgc");
    testbed::link(&ns_c, &["10.98.0.1/24"], &pair.ns_b, &["10.98.0.2/24"]);
    let target: SocketAddr = format!("10.98.0.2:{PORT_B}").parse().unwrap();

    // Capture A's handshake initiation and transport packets as they arrive at B.
    let cap = testbed::UdpCapture::start(&pair.ns_b, PORT_B, 10_000);
    assert_ping(
        &pair,
        true,
        TUN_B4,
        Duration::from_secs(10),
        "A→B before the attack",
    );
    for _ in 0..5 {
        assert_ping(
            &pair,
            true,
            TUN_B6,
            Duration::from_secs(5),
            "A→B before the attack",
        );
        assert_ping(
            &pair,
            false,
            TUN_A4,
            Duration::from_secs(5),
            "B→A before the attack",
        );
    }
    let from_a: Vec<Vec<u8>> = cap
        .finish()
        .into_iter()
        .filter(|d| d.src.to_string() == format!("{UNDER_A4}:{PORT_A}"))
        .map(|d| d.payload)
        .collect();
    let initiation = from_a
        .iter()
        .find(|p| p.len() == INITIATION_LEN && p[0] == MSG_INITIATION)
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "captured no handshake initiation from A ({} datagrams)",
                from_a.len()
            )
        });
    let transports: Vec<Vec<u8>> = from_a
        .iter()
        .filter(|p| p.len() >= 32 && p[0] == MSG_TRANSPORT)
        .cloned()
        .collect();
    assert!(
        transports.len() >= 5,
        "captured only {} transport packets from A",
        transports.len()
    );

    let rng = TestRng::from_entropy();
    let seed = rng.seed();
    eprintln!("attack seed {seed:#x}");
    let attack = Attack {
        responder: public_key_bytes(&pair.key_b.public),
        initiation,
        transports,
        seed,
    };
    let t = Instant::now();
    let (replies, phases) = ns_c
        .thread(move || attack.run(target))
        .join()
        .expect("attacker thread panicked")
        .expect("attacker failed");
    eprintln!(
        "attack took {:?}: {phases:?}; replies by type {:?}",
        t.elapsed(),
        replies.by_type
    );

    assert_healthy(&mut pair.b, "after the attack");
    assert_healthy(&mut pair.a, "after the attack");
    assert_eq!(
        replies.by_type[MSG_RESPONSE as usize],
        0,
        "the target answered a replayed or forged handshake initiation (seed {seed:#x})\n{}",
        pair.logs()
    );
    assert_eq!(
        replies.by_type[MSG_TRANSPORT as usize], 0,
        "the target sent tunnel data to the attacker: replayed packets moved the peer's endpoint (seed {seed:#x})\n{}",
        pair.logs()
    );

    // B answers first: had a replayed packet moved B's idea of A's endpoint to the
    // attacker, B's packets would go there and this would fail.
    assert_ping(
        &pair,
        false,
        TUN_A4,
        Duration::from_secs(10),
        "B→A after the attack",
    );
    assert_ping(
        &pair,
        false,
        TUN_A6,
        Duration::from_secs(5),
        "B→A IPv6 after the attack",
    );
    assert_ping(
        &pair,
        true,
        TUN_B4,
        Duration::from_secs(5),
        "A→B after the attack",
    );
    assert_transfer(&pair, true, TUN_B4, 5005, 2 * MB, Duration::from_secs(30));
    assert_transfer(&pair, false, TUN_A4, 5006, 2 * MB, Duration::from_secs(30));
    assert!(
        replies.by_type[MSG_COOKIE as usize] > 0,
        "a flood of initiations with valid mac1 got no cookie replies: the target never went under load (seed {seed:#x})\n{}",
        pair.logs()
    );

    // A new handshake while the flood goes on: A restarts (no session), the target
    // is under load, so A's initiation gets a cookie reply and A's retry must carry
    // a valid mac2 to be accepted. Paced at about 20k datagrams/s (far above any
    // handshake rate limit, yet not so fast that the target can only drop them) and
    // bounded: at most 25 s and 500k datagrams.
    pair.a.restart();
    let responder = public_key_bytes(&pair.key_b.public);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let flood = ns_c.thread(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let mut rng = TestRng::new(seed ^ 0x5eed);
        let mut init = msg(MSG_INITIATION, INITIATION_LEN, &mut rng);
        let mut replies = Replies::default();
        let end = Instant::now() + Duration::from_secs(25);
        let mut sent = 0u32;
        while sent < 500_000 && !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            // About 1 ms of sleep per 20 datagrams.
            if sent % 20 == 19 {
                std::thread::sleep(Duration::from_millis(1));
            }
            if sent & 1023 == 0 {
                replies.drain(&sock);
                if Instant::now() > end {
                    break;
                }
            }
            init[4..8].copy_from_slice(&sent.to_le_bytes());
            init[8..40].copy_from_slice(&rng.bytes(32));
            set_mac1(&mut init, &responder);
            let _ = sock.send_to(&init, target);
            sent += 1;
        }
        replies.drain(&sock);
        (sent, replies)
    });
    // Let the flood build up before A's first initiation.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let ok = pair.ns_a.wait_ping(TUN_B4, Duration::from_secs(20));
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, flood_replies) = flood.join().expect("flood thread panicked");
    eprintln!(
        "handshake under load: ok={ok} after {took:?}; flood sent {sent}, replies by type {:?}",
        flood_replies.by_type
    );
    assert!(
        ok,
        "A could not complete a handshake with B during a flood of {sent} initiations (cookie replies to the flooder: {})\n{}",
        flood_replies.by_type[MSG_COOKIE as usize],
        pair.logs()
    );
    // wireguard-go decides "under load" by its queue length and keeps up with this
    // rate; ringscale (boringtun's rate limiter) counts handshakes per second, so it
    // must have been under load, and A's success means the cookie round trip worked.
    if imp == Impl::Ringscale {
        assert!(
            flood_replies.by_type[MSG_COOKIE as usize] > 0,
            "B sent no cookie replies to {sent} initiations in {took:?}: the handshake above did not exercise the under-load path\n{}",
            pair.logs()
        );
    }
    assert_ping(
        &pair,
        false,
        TUN_A6,
        Duration::from_secs(5),
        "B→A after the flood",
    );
    assert_healthy(&mut pair.b, "at the end");
    assert_healthy(&mut pair.a, "at the end");
    drop(pair);
    drop(ns_c);
}

#[test]
fn hostile_datagrams_on_the_wireguard_port_are_harmless() {
    bad_input(Impl::Ringscale);
}

#[test]
fn harness_wireguard_go_bad_input() {
    bad_input(Impl::WireguardGo);
}

// ---------------------------------------------------------------------------
// 4. Bad configuration: a clear error naming the line, non-zero exit, no interface.

struct DaemonRun {
    status: std::process::ExitStatus,
    stderr: String,
}

/// Runs `ringscale tailscaled --wg-config <path>` (default TUN name) in `ns` and waits
/// up to 10 s for it to exit.
fn run_daemon(ns: &Netns, dir: &TempDir, config: &std::path::Path) -> DaemonRun {
    let errpath = dir.path.join("stderr");
    let err = std::fs::File::create(&errpath).unwrap();
    let mut cmd = ns.command(testbed::ringscale_bin());
    cmd.arg("tailscaled")
        .arg("--wg-config")
        .arg(config)
        .arg("--statedir")
        .arg(dir.path.join("state"))
        .arg("--socket")
        .arg(dir.path.join("sock"))
        .stdout(std::process::Stdio::null())
        .stderr(err);
    let mut p = Proc::spawn(cmd);
    let status = p.wait_timeout(Duration::from_secs(10));
    let stderr = std::fs::read_to_string(&errpath).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("daemon still running 10 s after starting with {config:?}; stderr:\n{stderr}")
    });
    DaemonRun { status, stderr }
}

/// Does `text` say "line N" (not "line N0")?
fn names_line(text: &str, n: usize) -> bool {
    let lower = text.to_ascii_lowercase();
    let pat = format!("line {n}");
    lower.match_indices(&pat).any(|(i, _)| {
        !lower[i + pat.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn malformed_wg_config_is_rejected_naming_the_line() {
    let me = wg_keypair();
    let peer = wg_keypair();
    let good = [
        "[Interface]".to_string(),
        format!("PrivateKey = {}", me.private),
        "ListenPort = 51820".into(),
        "Address = 10.77.0.1/24, fd77::1/64".into(),
        "MTU = 1280".into(),
        "".into(),
        "[Peer]".into(),
        format!("PublicKey = {}", peer.public),
        "AllowedIPs = 10.77.0.2/32, fd77::2/128".into(),
        "Endpoint = 10.99.0.2:51821".into(),
        "PersistentKeepalive = 25".into(),
    ];
    // (what, 1-based line to replace, replacement); the error must name that line.
    let short_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="; // 31 bytes
    let cases: Vec<(&str, usize, String)> = vec![
        (
            "private key not base64",
            2,
            "PrivateKey = not-a-key!".into(),
        ),
        (
            "private key too short",
            2,
            format!("PrivateKey = {short_key}"),
        ),
        ("listen port out of range", 3, "ListenPort = 70000".into()),
        (
            "address prefix too long",
            4,
            "Address = 10.77.0.1/40".into(),
        ),
        ("unknown [Interface] key", 5, "Frobnicate = yes".into()),
        ("line without =", 5, "MTU 1280".into()),
        ("unknown section", 7, "[Peers]".into()),
        ("public key garbage", 8, "PublicKey = 12345".into()),
        (
            "AllowedIPs bad address",
            9,
            "AllowedIPs = 10.77.0.300/32".into(),
        ),
        (
            "AllowedIPs bad prefix",
            9,
            "AllowedIPs = fd77::2/129".into(),
        ),
        (
            "AllowedIPs not an address",
            9,
            "AllowedIPs = tailnet".into(),
        ),
        ("endpoint without port", 10, "Endpoint = 10.99.0.2".into()),
        (
            "keepalive not a number",
            11,
            "PersistentKeepalive = often".into(),
        ),
    ];

    let ns = Netns::new("badcfg");
    let dir = TempDir::new("badcfg");
    let before = ns.links();
    let mut failures = Vec::new();
    let mut check = |what: &str, text: &str, line: Option<usize>, mention: &str| {
        let path = dir.path.join("wg.conf");
        std::fs::write(&path, text).unwrap();
        let r = run_daemon(&ns, &dir, &path);
        let after = ns.links();
        let mut problems = Vec::new();
        if r.status.success() {
            problems.push("exited 0".to_string());
        }
        if let Some(n) = line {
            if !names_line(&r.stderr, n) {
                problems.push(format!("error does not name line {n}"));
            }
        }
        if !r
            .stderr
            .to_ascii_lowercase()
            .contains(&mention.to_ascii_lowercase())
        {
            problems.push(format!("error does not mention {mention:?}"));
        }
        if r.stderr.contains("panicked") {
            problems.push("panicked".into());
        }
        if after != before {
            problems.push(format!("interfaces changed: {before:?} -> {after:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{what}: {} (status {}, stderr: {:?})",
                problems.join("; "),
                r.status,
                r.stderr.trim()
            ));
        }
    };

    // The valid file must start (proves the harness is sound); stop it at once.
    {
        let path = dir.path.join("good.conf");
        std::fs::write(&path, good.join("\n")).unwrap();
        let mut cmd = ns.command(testbed::ringscale_bin());
        cmd.arg("tailscaled")
            .arg("--wg-config")
            .arg(&path)
            .arg("--statedir")
            .arg(dir.path.join("state"))
            .arg("--socket")
            .arg(dir.path.join("sock"));
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut p = Proc::spawn(cmd);
        let up = testbed::wait_until(Duration::from_secs(10), || {
            ns.has_link("tailscale0") || p.exited().is_some()
        });
        assert!(
            up && p.exited().is_none(),
            "the valid config did not bring up tailscale0 (exit: {:?})",
            p.exited()
        );
        let (st, in_time) = p.terminate(Duration::from_secs(5));
        assert!(in_time && st.success(), "SIGTERM: {st}, in time: {in_time}");
        assert!(
            testbed::wait_until(Duration::from_secs(2), || !ns.has_link("tailscale0")),
            "tailscale0 left behind after SIGTERM"
        );
    }

    for (what, line, replacement) in &cases {
        let mut lines = good.to_vec();
        lines[line - 1] = replacement.clone();
        check(what, &lines.join("\n"), Some(*line), "");
    }
    // No PrivateKey at all: there is no line to blame, but the key must be named.
    let mut no_key = good.to_vec();
    no_key.remove(1);
    check("missing PrivateKey", &no_key.join("\n"), None, "PrivateKey");
    check("empty file", "", None, "");
    // A file that does not exist: the path must be named.
    let missing = dir.path.join("does-not-exist.conf");
    let r = run_daemon(&ns, &dir, &missing);
    if r.status.success() || !r.stderr.contains("does-not-exist.conf") {
        failures.push(format!(
            "missing file: status {}, stderr {:?}",
            r.status,
            r.stderr.trim()
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad configs were mishandled:\n{}",
        failures.len(),
        cases.len() + 3,
        failures.join("\n")
    );
}

fn wg_keypair() -> ringscale_tests::wgpeer::Keypair {
    ringscale_tests::wgpeer::Keypair::generate()
}

#[test]
fn daemon_prints_its_version() {
    let out =
        testbed::run(Command::new(testbed::ringscale_bin()).args(["tailscaled", "--version"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")),
        "`tailscaled --version` printed {text:?}"
    );
}
