//! The offload code against the real kernel (needs root; ignored by default, run by
//! tests/run.sh): `cargo test -p ringscale-dataplane offload::kernel_tests -- --ignored`.
//!
//! The test thread moves into a network namespace of its own (`unshare(CLONE_NEWNET)`
//! affects only the calling thread; the `ip`/`sysctl` it spawns inherit it), so nothing
//! touches the host's network, and everything vanishes when the test ends.
//!
//! Two TUNs: `rsoff1` with IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6|USO4|USO6), as the
//! data plane opens it, and `rsoff2` plain. Forwarding between them checks:
//! * write path: our coalesced TCP and UDP super-packets written to rsoff1 are accepted,
//!   and the kernel's own software segmentation toward rsoff2 yields exactly the
//!   original segments with valid checksums (so our virtio_net_hdr, lengths and partial
//!   checksum mean what we think);
//! * read path: a super-packet routed back out rsoff1 arrives as the kernel's GSO read,
//!   and [`Segmenter`] turns it back into the original segments.
//!
//! This file does I/O; the offload code it exercises does not.

use super::testpkt::*;
use super::{Coalescer, Segmenter, VirtioNetHdr, VNET_HDR_LEN};
use ringscale_sys::tun::{Tun, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

fn open_tun(name: &str, vnet: bool) -> Tun {
    let tun = Tun::open_with(name, false, vnet).expect("TUNSETIFF");
    if vnet {
        tun.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6)
            .expect("TUNSETOFFLOAD");
    }
    tun
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// Packets read within `wait` (bounded) that `keep` accepts.
fn read_for(f: &Tun, wait: Duration, keep: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 70_000];
    let end = Instant::now() + wait;
    while Instant::now() < end {
        if !f.readable_now().unwrap() {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        match f.read(&mut buf) {
            Ok(n) if keep(&buf[..n]) => got.push(buf[..n].to_vec()),
            Ok(_) => {}
            Err(e) => panic!("TUN read: {e}"),
        }
    }
    got
}

fn spec(v6: bool, src: &str, dst: &str) -> IpSpec {
    let octets = |s: &str| match s.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    IpSpec {
        src: octets(src),
        dst: octets(dst),
        ..if v6 { IpSpec::v6() } else { IpSpec::v4() }
    }
}

fn dst_is(p: &[u8], d: &[u8]) -> bool {
    match p.first().map(|b| b >> 4) {
        Some(4) => p.len() >= 20 && p[16..20] == *d,
        Some(6) => p.len() >= 40 && p[24..40] == *d,
        _ => false,
    }
}

/// One flow's segments of `payload`, PSH on the last.
fn flow(ip: &IpSpec, seq: u32, payload: &[u8], gso: usize) -> Vec<Vec<u8>> {
    let n = payload.len().div_ceil(gso);
    payload
        .chunks(gso)
        .enumerate()
        .map(|(i, chunk)| {
            let flags = ACK | if i + 1 == n { PSH } else { 0 };
            let t = TcpSpec {
                seq: seq + (i * gso) as u32,
                flags,
                ..TcpSpec::new(0)
            };
            tcp_packet(ip, &t, chunk)
        })
        .collect()
}

/// Coalesces `pkts`, expecting exactly one output, and returns it (header included).
fn coalesce_one(c: &mut Coalescer, pkts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![0u8; Coalescer::out_len_needed(pkts)];
    let mut spans = vec![0..0; pkts.len()];
    assert_eq!(c.coalesce(pkts, &mut out, &mut spans).unwrap(), 1);
    out[spans[0].clone()].to_vec()
}

#[test]
#[ignore = "needs root: creates TUN devices in a private network namespace; tests/run.sh runs it"]
fn kernel_agrees_with_segmentation_and_coalescing() {
    ringscale_sys::netns::unshare_net().expect("unshare(CLONE_NEWNET) needs root");
    let t1 = open_tun("rsoff1", true);
    let t2 = open_tun("rsoff2", false);
    sh("ip link set rsoff1 up && ip link set rsoff2 up \
        && ip addr add 10.201.0.1/24 dev rsoff1 && ip addr add 10.202.0.1/24 dev rsoff2 \
        && ip -6 addr add fd01::1/64 dev rsoff1 nodad && ip -6 addr add fd02::1/64 dev rsoff2 nodad \
        && sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
           net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.rsoff1.send_redirects=0");
    let mut rng = Rng::new(5);
    let mut c = Coalescer::new(64, true);
    let mut seg_buf = vec![0u8; 2000];

    for v6 in [false, true] {
        let (src, dst, back_dst) = if v6 {
            ("fd01::2", "fd02::2", "fd01::3")
        } else {
            ("10.201.0.2", "10.202.0.2", "10.201.0.3")
        };
        let gso = if v6 { 1208 } else { 1228 }; // 1280-byte segments
        let payload = rng.bytes(20_000);

        // Write path, TCP.
        let ip = spec(v6, src, dst);
        let segs = flow(&ip, 1000, &payload, gso);
        t1.write(&coalesce_one(&mut c, &segs)).unwrap();
        let got = read_for(&t2, Duration::from_millis(300), |p| dst_is(p, &ip.dst));
        assert_eq!(
            got.len(),
            segs.len(),
            "v6={v6}: kernel's segments of our TCP super-packet"
        );
        for (g, s) in got.iter().zip(&segs) {
            let (g, s) = (View::new(g), View::new(s));
            assert!(g.l4_checksum_ok() && g.ipv4_header_ok());
            assert_eq!(
                (g.seq(), g.tcp_flags(), g.payload()),
                (s.seq(), s.tcp_flags(), s.payload())
            );
        }

        // Write path, UDP.
        let dgrams: Vec<Vec<u8>> = (0..10)
            .map(|i| {
                udp_packet(
                    &ip,
                    7777,
                    8888,
                    &vec![i as u8; if i == 9 { 100 } else { 1200 }],
                )
            })
            .collect();
        t1.write(&coalesce_one(&mut c, &dgrams)).unwrap();
        let got = read_for(&t2, Duration::from_millis(300), |p| dst_is(p, &ip.dst));
        assert_eq!(
            got.len(),
            dgrams.len(),
            "v6={v6}: kernel's datagrams of our UDP super-packet"
        );
        for (g, s) in got.iter().zip(&dgrams) {
            assert!(View::new(g).l4_checksum_ok());
            assert_eq!(View::new(g).payload(), View::new(s).payload());
        }

        // Read path: routed back out rsoff1, the super-packet comes to us as a GSO read.
        let ip = spec(v6, src, back_dst);
        let segs = flow(&ip, 5000, &payload, gso);
        t1.write(&coalesce_one(&mut c, &segs)).unwrap();
        let got = read_for(&t1, Duration::from_millis(300), |p| {
            p.len() > VNET_HDR_LEN && dst_is(&p[VNET_HDR_LEN..], &ip.dst)
        });
        assert_eq!(got.len(), 1);
        let hdr = VirtioNetHdr::parse(&got[0]).unwrap();
        assert_eq!(usize::from(hdr.gso_size), gso, "{hdr:?}");
        let seg = Segmenter::from_tun_read(&got[0]).unwrap();
        assert_eq!(seg.segment_count(), segs.len());
        for (i, s) in segs.iter().enumerate() {
            let n = seg.write_segment(i, &mut seg_buf).unwrap();
            let mut have = seg_buf[..n].to_vec();
            assert!(View::new(&have).l4_checksum_ok() && View::new(&have).ipv4_header_ok());
            // Identical to what was sent but for the forwarding hop: TTL / hop limit one
            // lower (IPv4: so its header checksum), and IPv4 IDs counted up per segment.
            let mut want = s.clone();
            if v6 {
                assert_eq!(have[7] + 1, want[7]);
                have[7] = want[7];
            } else {
                assert_eq!(have[8] + 1, want[8]);
                assert_eq!(
                    View::new(&have).ipv4_id(),
                    View::new(s).ipv4_id().wrapping_add(i as u16)
                );
                for b in [4, 5, 8, 10, 11] {
                    have[b] = 0;
                    want[b] = 0;
                }
            }
            assert_eq!(have, want, "v6={v6} segment {i}");
        }
    }
}
