//! The user-space cost of the packet core, without any I/O: 64 KB TCP super-packets as a
//! TSO TUN read delivers them are segmented, encrypted and grouped into GSO runs
//! ([`Encryptor`]); the runs are then decrypted and coalesced back into TUN writes
//! ([`Decryptor`]), as a GRO receive would hand them over. Prints thread CPU time per GB
//! of TCP payload for each direction, so a change to the per-packet path can be judged
//! on a shared, noisy machine where iperf3 throughput cannot (the benchmark measures the
//! whole path; this isolates our own code and the crypto it calls).
//!
//! `cargo run --release -p ringscale-dataplane --example packet_core [megabytes]`

#![forbid(unsafe_code)]

use ringscale_dataplane::config::{Config, PeerConfig};
use ringscale_dataplane::offload::{checksum, VirtioNetHdr, VNET_HDR_LEN};
use ringscale_dataplane::wireguard::{Emit, PeerTable};
use ringscale_dataplane::worker::{Decryptor, Encryptor, GsoRun, Transmit, RX_OUT_BUFFER};
use ringscale_dataplane::Key;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

const MSS: u16 = 1228; // MTU 1280 less IPv4 and TCP headers with timestamps
const PAYLOAD: usize = 62_000;

fn thread_cpu_s() -> f64 {
    ringscale_sys::process::thread_cpu_time().as_secs_f64()
}

fn config(private: u8, peer: u8, peer_ip: &str, endpoint: SocketAddr) -> Config {
    let peer_public =
        boringtun::x25519::PublicKey::from(&boringtun::x25519::StaticSecret::from([peer; 32]));
    Config {
        private_key: ringscale_dataplane::PrivateKey::from_bytes([private; 32]),
        listen_port: 0,
        addresses: vec![],
        mtu: 1280,
        peers: vec![PeerConfig {
            public_key: Key(peer_public.to_bytes()),
            allowed_ips: vec![peer_ip.parse().unwrap()],
            endpoint: Some(endpoint),
            persistent_keepalive: None,
        }],
        filter: None,
    }
}

/// A TSO read: virtio_net_hdr, IPv4 + TCP (20 + 32 bytes with timestamps), payload.
fn tso_read(seq: u32, payload: &[u8]) -> Vec<u8> {
    let hdr = VirtioNetHdr {
        flags: 1,
        gso_type: 1,
        hdr_len: 52,
        gso_size: MSS,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut p = vec![0u8; 52];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((52 + payload.len()) as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let c = checksum::ipv4_header(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&5201u16.to_be_bytes());
    p[22..24].copy_from_slice(&40000u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&1u32.to_be_bytes());
    p[32] = 8 << 4;
    p[33] = 0x10;
    p[34..36].copy_from_slice(&1000u16.to_be_bytes());
    p[40..42].copy_from_slice(&[1, 1]);
    p[42] = 8;
    p[43] = 10;
    let mut read = hdr.to_bytes().to_vec();
    read.extend(p);
    read.extend_from_slice(payload);
    read
}

/// Keeps every run (copied out) so the decrypting side can replay them.
struct Collect {
    buf: Vec<u8>,
    runs: Vec<(GsoRun, Vec<u8>)>,
    keep: bool,
}

impl Transmit for Collect {
    fn buffer(&mut self) -> &mut [u8] {
        &mut self.buf
    }
    fn send(&mut self, run: GsoRun) {
        if self.keep {
            let data = self.buf[run.range.clone()].to_vec();
            self.runs.push((run, data));
        }
    }
    fn rewind(&mut self) -> bool {
        true
    }
    fn next_buffer(&mut self) -> bool {
        true
    }
    fn gso(&self) -> bool {
        true
    }
}

fn main() {
    let megabytes: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512);
    let ep_a: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let ep_b: SocketAddr = "192.0.2.2:51820".parse().unwrap();
    let a = PeerTable::new(&config(1, 2, "10.0.0.2/32", ep_b), None);
    let b = PeerTable::new(&config(2, 1, "10.0.0.1/32", ep_a), None);

    // Handshake: A's first packet starts it; shuttle datagrams until both have a session.
    let mut out = vec![0u8; 4096];
    let mut wire: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let push = |e: Emit<'_>, wire: &mut Vec<(SocketAddr, Vec<u8>)>| {
        if let Emit::Network(to, w) = e {
            wire.push((to, w.to_vec()));
        }
    };
    let now = Instant::now();
    a.encapsulate(
        now,
        &tso_read(0, &[0; 10])[VNET_HDR_LEN..],
        &mut out,
        &mut |e| push(e, &mut wire),
    );
    for _ in 0..10 {
        for (to, w) in std::mem::take(&mut wire) {
            let (table, from) = if to == ep_b { (&b, ep_a) } else { (&a, ep_b) };
            table.decapsulate(now, from, &w, &mut out, &mut |e| push(e, &mut wire));
        }
    }

    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i * 7 + i / 251) as u8).collect();
    let reads = megabytes * 1_000_000 / PAYLOAD;
    let mut enc = Encryptor::new();
    let mut tx = Collect {
        buf: vec![0; ringscale_dataplane::worker::TX_BUFFER],
        runs: Vec::new(),
        keep: false,
    };
    // Keep a window of runs for the receive side; encrypting more of the same costs the
    // same, and holding 512 MB of ciphertext would measure the allocator instead.
    let keep_reads = 64;
    let mut seq = 1u32;
    let t0 = thread_cpu_s();
    // One read buffer, its sequence number advanced in place: building a fresh 62 KB
    // vector per read would be measured too.
    let mut read = tso_read(seq, &payload);
    let seq_at = VNET_HDR_LEN + 24;
    for i in 0..reads {
        tx.keep = i < keep_reads;
        read[seq_at..seq_at + 4].copy_from_slice(&seq.to_be_bytes());
        seq = seq.wrapping_add(PAYLOAD as u32);
        // A worker reads the clock once per batch; here a batch is one read.
        enc.process(&a, Instant::now(), &read, true, &mut tx, &mut |_| {});
    }
    let enc_s = thread_cpu_s() - t0;

    let mut dec = Decryptor::new(true);
    let mut tun = vec![0u8; RX_OUT_BUFFER];
    let mut writes: Vec<Range<usize>> = Vec::new();
    let rounds = reads.div_ceil(keep_reads);
    let mut written = 0usize;
    let mut decrypted = 0f64;
    let mut dec_s = 0f64;
    for _ in 0..rounds {
        // Each round replays the same ciphertext, which WireGuard's replay window would
        // refuse: a fresh receiving table per round, its handshake outside the timing.
        let b = PeerTable::new(&config(2, 1, "10.0.0.1/32", ep_a), None);
        let a2 = PeerTable::new(&config(1, 2, "10.0.0.2/32", ep_b), None);
        let mut wire: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let now = Instant::now();
        a2.encapsulate(
            now,
            &tso_read(0, &[0; 10])[VNET_HDR_LEN..],
            &mut out,
            &mut |e| push(e, &mut wire),
        );
        for _ in 0..10 {
            for (to, w) in std::mem::take(&mut wire) {
                let (table, from) = if to == ep_b { (&b, ep_a) } else { (&a2, ep_b) };
                table.decapsulate(now, from, &w, &mut out, &mut |e| push(e, &mut wire));
            }
        }
        let mut enc2 = Encryptor::new();
        let mut tx2 = Collect {
            buf: vec![0; ringscale_dataplane::worker::TX_BUFFER],
            runs: Vec::new(),
            keep: true,
        };
        let mut s = 1u32;
        for _ in 0..keep_reads {
            enc2.process(
                &a2,
                Instant::now(),
                &tso_read(s, &payload),
                true,
                &mut tx2,
                &mut |_| {},
            );
            s = s.wrapping_add(PAYLOAD as u32);
        }
        let t0 = thread_cpu_s();
        for (run, data) in &tx2.runs {
            dec.process(
                &b,
                Instant::now(),
                ep_a,
                data,
                usize::from(run.segment),
                true,
                &mut tun,
                &mut writes,
                &mut |_| {},
            );
            written += writes.len();
        }
        dec_s += thread_cpu_s() - t0;
        decrypted += (keep_reads * PAYLOAD) as f64;
    }
    let gb = (reads * PAYLOAD) as f64 / 1e9;
    println!(
        "encrypt side (TSO read -> segments -> seal -> GSO runs): {:.3} CPU-s per GB ({:.2} GB/s)",
        enc_s / gb,
        gb / enc_s
    );
    println!(
        "decrypt side (GRO batch -> open -> coalesce -> TUN writes): {:.3} CPU-s per GB ({:.2} GB/s, {} writes)",
        dec_s / (decrypted / 1e9),
        decrypted / 1e9 / dec_s,
        written
    );
}
