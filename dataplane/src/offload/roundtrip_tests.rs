//! Segmentation followed by coalescing gives back what the kernel handed us: the read
//! path's [`Segmenter`] and the write path's [`Coalescer`] agree with each other and with
//! the kernel's layout of a GSO super-packet (built independently in `testpkt`).

use super::testpkt::*;
use super::{Coalescer, Segmenter, VirtioNetHdr, VNET_HDR_LEN};

fn split(read: &[u8]) -> Vec<Vec<u8>> {
    let seg = Segmenter::from_tun_read(read).unwrap();
    let mut buf = vec![0u8; seg.max_segment_len()];
    (0..seg.segment_count())
        .map(|i| {
            let n = seg.write_segment(i, &mut buf).unwrap();
            buf[..n].to_vec()
        })
        .collect()
}

fn coalesce(pkts: &[Vec<u8>], udp: bool) -> Vec<Vec<u8>> {
    let mut c = Coalescer::new(pkts.len(), udp);
    let mut out = vec![0u8; Coalescer::out_len_needed(pkts)];
    let mut spans = vec![0..0; pkts.len()];
    let n = c.coalesce(pkts, &mut out, &mut spans).unwrap();
    spans[..n].iter().map(|r| out[r.clone()].to_vec()).collect()
}

#[test]
fn tcp_super_packet_survives_split_and_merge_byte_for_byte() {
    let mut rng = Rng::new(41);
    for (ip, ecn) in [
        (IpSpec::v4(), false),
        (IpSpec::v6(), false),
        (IpSpec::v4(), true),
        (IpSpec::v6(), true),
    ] {
        for (len, gso) in [
            (65535 - 40 - 72, 1208),
            (10_000, 1188),
            (2 * 1228, 1228),
            (1, 1000),
        ] {
            let mut t = TcpSpec::new(rng.u32());
            t.flags = ACK | PSH | if ecn { CWR } else { 0 };
            let read = tso_read(&ip, &t, &rng.bytes(len), gso, ecn);
            let segs = split(&read);
            let back = coalesce(&segs, false);
            assert_eq!(back.len(), 1);
            if segs.len() == 1 {
                // A lone segment goes back as a plain packet with a complete checksum.
                assert_eq!(back[0][..VNET_HDR_LEN], [0; VNET_HDR_LEN]);
                assert_eq!(back[0][VNET_HDR_LEN..], segs[0]);
                assert!(View::new(&segs[0]).l4_checksum_ok());
            } else {
                assert_eq!(back[0], read, "v6={} ecn={ecn} len={len} gso={gso}", ip.v6);
            }
        }
    }
}

#[test]
fn fin_segment_comes_back_separately_after_the_data() {
    let mut rng = Rng::new(42);
    for ip in [IpSpec::v4(), IpSpec::v6()] {
        let mut t = TcpSpec::new(77);
        t.flags = ACK | PSH | FIN;
        let payload = rng.bytes(9000);
        let read = tso_read(&ip, &t, &payload, 1200, false);
        let segs = split(&read);
        let back = coalesce(&segs, false);
        assert_eq!(back.len(), 2);
        let head = VirtioNetHdr::parse(&back[0]).unwrap();
        assert_eq!(head.gso_size, 1200);
        let first = View::new(&back[0][VNET_HDR_LEN..]);
        let last = View::new(&back[1][VNET_HDR_LEN..]);
        assert_eq!(first.seq(), 77);
        assert_eq!(first.tcp_flags(), ACK);
        assert_eq!(last.tcp_flags(), ACK | PSH | FIN);
        assert_eq!(last.seq(), 77 + 7 * 1200);
        assert!(last.l4_checksum_ok());
        assert_eq!([first.payload(), last.payload()].concat(), payload);
    }
}

#[test]
fn udp_super_packet_survives_split_and_merge_byte_for_byte() {
    let mut rng = Rng::new(43);
    for ip in [IpSpec::v4(), IpSpec::v6()] {
        let read = uso_read(&ip, 51820, 443, &rng.bytes(30_001), 1200);
        let segs = split(&read);
        assert_eq!(segs.len(), 26);
        assert_eq!(coalesce(&segs, true), vec![read]);
    }
}

#[test]
fn mixed_batch_of_two_super_packets_and_strays() {
    let mut rng = Rng::new(44);
    let ip4 = IpSpec::v4();
    let ip6 = IpSpec::v6();
    let a = tso_read(
        &ip4,
        &TcpSpec {
            flags: ACK | PSH,
            ..TcpSpec::new(1)
        },
        &rng.bytes(20_000),
        1228,
        false,
    );
    let b = tso_read(
        &ip6,
        &TcpSpec {
            flags: ACK | PSH,
            ..TcpSpec::new(2)
        },
        &rng.bytes(7_000),
        1208,
        false,
    );
    let ping = udp_packet(&ip4, 9, 9, b"stray");
    let (sa, sb) = (split(&a), split(&b));
    // Interleave the two flows and drop a stray in the middle.
    let mut batch = Vec::new();
    for i in 0..sa.len().max(sb.len()) {
        batch.extend(sa.get(i).cloned());
        batch.extend(sb.get(i).cloned());
        if i == 3 {
            batch.push(ping.clone());
        }
    }
    let back = coalesce(&batch, false);
    assert_eq!(back.len(), 3);
    assert_eq!(back[0], a);
    assert_eq!(back[1], b);
    assert_eq!(back[2][VNET_HDR_LEN..], ping);
}

/// Rough cost per packet of each path. Run with
/// `cargo test -p ringscale-dataplane --release offload::roundtrip_tests::bench -- --ignored --nocapture`.
#[test]
#[ignore = "a timing measurement, not a test: it prints costs and checks nothing; run by hand"]
fn bench_segment_and_coalesce() {
    use std::time::Instant;
    let mut rng = Rng::new(45);
    let t = TcpSpec {
        flags: ACK | PSH,
        ..TcpSpec::new(1)
    };
    let read = tso_read(&IpSpec::v4(), &t, &rng.bytes(65535 - 20 - 32), 1228, false);
    let segs = split(&read);
    let rounds = 2000;
    let mut buf = vec![0u8; 2000];
    let start = Instant::now();
    for _ in 0..rounds {
        let seg = Segmenter::from_tun_read(std::hint::black_box(&read)).unwrap();
        for i in 0..seg.segment_count() {
            std::hint::black_box(seg.write_segment(i, &mut buf).unwrap());
        }
    }
    let per = start.elapsed().as_nanos() as f64 / (rounds * segs.len()) as f64;
    println!(
        "segment: {per:.0} ns per {}-byte segment ({} per super-packet)",
        segs[0].len(),
        segs.len()
    );

    let mut c = Coalescer::new(segs.len(), false);
    let mut out = vec![0u8; Coalescer::out_len_needed(&segs)];
    let mut spans = vec![0..0; segs.len()];
    let start = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(
            c.coalesce(std::hint::black_box(&segs), &mut out, &mut spans)
                .unwrap(),
        );
    }
    let per = start.elapsed().as_nanos() as f64 / (rounds * segs.len()) as f64;
    println!("coalesce: {per:.0} ns per segment");
}
