//! What a netmap peer costs the data plane before anyone talks to it (issue 9: a
//! router in a tailnet of 1,000 nodes pays for every one of them). A counting global
//! allocator, in this test binary only, measures the heap a real `PeerTable` holds;
//! nothing is mocked. WireGuard state made up front was about 11 KB per peer.

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use ringscale_dataplane::wireguard::{Emit, PeerTable, MIN_OUT_BUF};
use ringscale_dataplane::{Config, Key, PeerConfig};
use ringscale_sys::alloc::CountingAlloc;

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc::new();

const PEERS: usize = 1000;
/// Heap per peer a table may hold for peers never used: its entry, its AllowedIPs and
/// its place in the lookup tables, but no sessions.
const MAX_BYTES_PER_IDLE_PEER: isize = 1024;

fn peer_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, (i >> 8) as u8, i as u8)
}

fn peer_endpoint(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 10_000 + i as u16)
}

fn config() -> Config {
    Config {
        private_key: ringscale_dataplane::PrivateKey::from_bytes([0x11; 32]),
        listen_port: 0,
        addresses: vec![],
        mtu: 1280,
        peers: (0..PEERS)
            .map(|i| {
                let mut key = [0x42; 32];
                key[..2].copy_from_slice(&(i as u16).to_le_bytes());
                PeerConfig {
                    public_key: Key(key),
                    allowed_ips: vec![format!("{}/32", peer_addr(i)).parse().unwrap()],
                    endpoint: Some(peer_endpoint(i)),
                    persistent_keepalive: None,
                }
            })
            .collect(),
        filter: None,
    }
}

/// A minimal IPv4 header from 100.100.0.1 to `dst`.
fn packet_to(dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 100, 100, 0, 1];
    p.extend_from_slice(&dst.octets());
    p
}

fn live() -> isize {
    ALLOCATOR.live()
}

#[test]
fn idle_peers_hold_no_wireguard_state_yet_a_packet_still_starts_a_handshake() {
    let cfg = config();
    let mut out = vec![0u8; 2048.max(MIN_OUT_BUF)];

    let before = live();
    let table = PeerTable::new(&cfg, None);
    // Timers and status of peers never used must not make their state either.
    let now = Instant::now();
    table.handle_timeout(now, &mut out, &mut |_| {
        panic!("an idle peer sent something")
    });
    assert_eq!(
        table.poll_timeout(),
        None,
        "an idle peer has a timer running"
    );
    for p in table.peers() {
        assert_eq!(p.stats(), (None, 0, 0));
    }
    let per_peer = (live() - before) / PEERS as isize;
    assert!(
        per_peer <= MAX_BYTES_PER_IDLE_PEER,
        "{per_peer} bytes of heap per idle peer (at most {MAX_BYTES_PER_IDLE_PEER})"
    );

    // Forged transport data naming any session index of ours (as if for a peer never
    // used) is refused without making WireGuard state: otherwise junk datagrams could
    // spend the memory kept above. Indices are 24 bits shifted left by 8; this covers
    // every index the tables of this test binary can have handed out.
    let before_junk = live();
    let from = peer_endpoint(5);
    let mut junk = vec![0u8; 32];
    junk[0] = 4; // transport data
    for index in 0..4096u32 {
        junk[4..8].copy_from_slice(&(index << 8).to_le_bytes());
        table.decapsulate(now, from, &junk, &mut out, &mut |_| {
            panic!("forged transport data got an answer or reached the TUN")
        });
    }
    assert!(
        live() - before_junk < 4096,
        "forged datagrams made {} bytes of state",
        live() - before_junk
    );
    for p in table.peers() {
        assert_eq!(p.stats(), (None, 0, 0));
    }

    // Any peer is still reachable: a packet for it sends a handshake initiation
    // (148 bytes) to its endpoint.
    let mut sent = Vec::new();
    table.encapsulate(now, &packet_to(peer_addr(777)), &mut out, &mut |e| {
        if let Emit::Network(to, wire) = e {
            sent.push((to, wire.len()));
        }
    });
    assert_eq!(sent, vec![(peer_endpoint(777), 148)]);
}
