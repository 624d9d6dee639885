//! The offload code alone, without crypto or I/O: 64 KB TCP super-packets (IPv4 and
//! IPv6, timestamps) as a TSO TUN read delivers them are segmented, and the segments
//! are coalesced back as a GRO batch. Prints thread CPU time per GB of TCP payload for
//! each half, to judge changes to the per-packet header code on a noisy machine (the
//! crypto dominates packet_core; this isolates what it hides).
//!
//! `cargo run --release -p ringscale-dataplane --example offload_core [megabytes [half]]`
//! (`half`: `segment` or `coalesce` runs only that one, for instruction counts under
//! `valgrind --tool=callgrind`, which do not depend on the machine's load).

use ringscale_dataplane::offload::{checksum, Coalescer, Segmenter, VirtioNetHdr};
use std::ops::Range;

const MSS: usize = 1228;
const PAYLOAD: usize = 62_000;

fn thread_cpu_s() -> f64 {
    ringscale_sys::process::thread_cpu_time().as_secs_f64()
}

/// A TSO read: virtio_net_hdr, IP + TCP with timestamps (32 bytes), payload.
fn tso_read(v6: bool, payload: &[u8]) -> Vec<u8> {
    let l4 = if v6 { 40 } else { 20 };
    let hdr = VirtioNetHdr {
        flags: 1,
        gso_type: if v6 { 4 } else { 1 },
        hdr_len: (l4 + 32) as u16,
        gso_size: MSS as u16,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    let mut p = vec![0u8; l4 + 32];
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((32 + payload.len()) as u16).to_be_bytes());
        p[6] = 6;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0x7a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0xfd, 0x7a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((52 + payload.len()) as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let c = checksum::ipv4_header(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    p[l4..l4 + 2].copy_from_slice(&5201u16.to_be_bytes());
    p[l4 + 2..l4 + 4].copy_from_slice(&40000u16.to_be_bytes());
    p[l4 + 8..l4 + 12].copy_from_slice(&1u32.to_be_bytes());
    p[l4 + 12] = 8 << 4;
    p[l4 + 13] = 0x10;
    p[l4 + 14..l4 + 16].copy_from_slice(&1000u16.to_be_bytes());
    p[l4 + 20..l4 + 22].copy_from_slice(&[1, 1]);
    p[l4 + 22] = 8;
    p[l4 + 23] = 10;
    let mut read = hdr.to_bytes().to_vec();
    read.extend(p);
    read.extend_from_slice(payload);
    read
}

fn main() {
    let megabytes: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i * 7) as u8).collect();
    let reads = [tso_read(false, &payload), tso_read(true, &payload)];
    let half = std::env::args().nth(2).unwrap_or_default();
    let rounds = megabytes * 1_000_000 / PAYLOAD;
    let (seg_rounds, gro_rounds) = match half.as_str() {
        "segment" => (rounds, 0),
        "coalesce" => (0, rounds),
        _ => (rounds, rounds),
    };
    let segments = PAYLOAD.div_ceil(MSS);
    let mut bufs = vec![vec![0u8; 2048]; segments];
    let mut lens = vec![0usize; segments];
    let mut gro = Coalescer::new(segments, false);
    let mut out = vec![0u8; 2 * 65536];
    let mut spans = vec![0..0; segments];
    // Each half timed as one loop: a clock read per packet would cost more than the
    // header code under test.
    let mut check = 0usize;
    let t0 = thread_cpu_s();
    for r in 0..seg_rounds {
        let seg = Segmenter::from_tun_read(&reads[r % 2]).unwrap();
        check += seg.write_all(&mut bufs, 0, &mut lens).unwrap();
    }
    let seg_s = thread_cpu_s() - t0;
    let batches: Vec<Vec<Vec<u8>>> = reads
        .iter()
        .map(|read| {
            let seg = Segmenter::from_tun_read(read).unwrap();
            let n = seg.write_all(&mut bufs, 0, &mut lens).unwrap();
            bufs.iter()
                .zip(&lens)
                .take(n)
                .map(|(b, &l)| b[..l].to_vec())
                .collect()
        })
        .collect();
    let t0 = thread_cpu_s();
    for r in 0..gro_rounds {
        let k = gro.coalesce(&batches[r % 2], &mut out, &mut spans).unwrap();
        check += spans[..k].iter().map(Range::len).sum::<usize>();
    }
    let gro_s = thread_cpu_s() - t0;
    let gb = |rounds: usize| (rounds * PAYLOAD) as f64 / 1e9;
    assert!(check >= (seg_rounds + gro_rounds) * PAYLOAD / MSS);
    if seg_rounds > 0 {
        println!("segment: {:.4} CPU-s per GB", seg_s / gb(seg_rounds));
    }
    if gro_rounds > 0 {
        println!("coalesce: {:.4} CPU-s per GB", gro_s / gb(gro_rounds));
    }
}
