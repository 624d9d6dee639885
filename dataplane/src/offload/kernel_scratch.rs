//! SCRATCH (not for commit): checks our GRO output and Segmenter against the real kernel.
use super::testpkt::*;
use super::{Coalescer, Segmenter, VNET_HDR_LEN};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

fn open_tun(name: &str, vnet: bool) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags: u16 = 0x0001 | 0x1000 | if vnet { 0x4000 } else { 0 };
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    assert_eq!(
        unsafe { libc::ioctl(f.as_raw_fd(), 0x400454ca, ifr.as_mut_ptr()) },
        0,
        "TUNSETIFF"
    );
    if vnet {
        let off: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x20 | 0x40;
        assert_eq!(
            unsafe { libc::ioctl(f.as_raw_fd(), 0x400454d0, off) },
            0,
            "TUNSETOFFLOAD"
        );
    }
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    f
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// Reads packets for up to `wait`, keeping those `keep` accepts.
fn read_some(f: &mut File, wait: Duration, keep: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 70000];
    let end = Instant::now() + wait;
    while Instant::now() < end {
        match f.read(&mut buf) {
            Ok(n) => {
                if keep(&buf[..n]) {
                    got.push(buf[..n].to_vec())
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    got
}

fn ip(v6: bool, src: &str, dst: &str) -> IpSpec {
    let mut s = if v6 { IpSpec::v6() } else { IpSpec::v4() };
    s.src = src
        .parse::<std::net::IpAddr>()
        .map(|a| match a {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => a.octets().to_vec(),
        })
        .unwrap();
    s.dst = dst
        .parse::<std::net::IpAddr>()
        .map(|a| match a {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => a.octets().to_vec(),
        })
        .unwrap();
    s
}

fn dst_is(p: &[u8], d: &[u8]) -> bool {
    match p.first().map(|b| b >> 4) {
        Some(4) => p.len() >= 20 && &p[16..20] == d,
        Some(6) => p.len() >= 40 && &p[24..40] == d,
        _ => false,
    }
}

#[test]
#[ignore]
fn kernel_scratch() {
    let mut t1 = open_tun("rsoff1", true);
    let mut t2 = open_tun("rsoff2", false);
    sh("ip link set rsoff1 up && ip link set rsoff2 up && ip addr add 10.201.0.1/24 dev rsoff1 && ip addr add 10.202.0.1/24 dev rsoff2 && ip -6 addr add fd01::1/64 dev rsoff1 nodad && ip -6 addr add fd02::1/64 dev rsoff2 nodad && sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.rsoff1.send_redirects=0 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.rsoff1.rp_filter=0");
    std::thread::sleep(Duration::from_millis(300));
    read_some(&mut t1, Duration::from_millis(100), |_| false);
    read_some(&mut t2, Duration::from_millis(100), |_| false);
    let mut rng = Rng::new(5);

    for v6 in [false, true] {
        let (src, dst, loop_dst) = if v6 {
            ("fd01::2", "fd02::2", "fd01::3")
        } else {
            ("10.201.0.2", "10.202.0.2", "10.201.0.3")
        };
        // TCP GRO: our super-packet in, kernel software-segments it toward the plain TUN.
        let ipx = ip(v6, src, dst);
        let payload = rng.bytes(20000);
        let gso = if v6 { 1208 } else { 1228 };
        let mut segs = Vec::new();
        let mut seq = 1000u32;
        for chunk in payload.chunks(gso) {
            let last = chunk.len() < gso;
            let t = TcpSpec {
                seq,
                flags: ACK | if last { PSH } else { 0 },
                ..TcpSpec::new(0)
            };
            segs.push(tcp_packet(&ipx, &t, chunk));
            seq += chunk.len() as u32;
        }
        let mut c = Coalescer::new(64, true);
        let mut out = vec![0u8; Coalescer::out_len_needed(&segs)];
        let mut spans = vec![0..0; 64];
        let n = c.coalesce(&segs, &mut out, &mut spans).unwrap();
        assert_eq!(n, 1);
        t1.write_all(&out[spans[0].clone()]).unwrap();
        let d = ipx.dst.clone();
        let got = read_some(&mut t2, Duration::from_millis(300), |p| dst_is(p, &d));
        println!(
            "v6={v6} TCP GRO: wrote 1 super-packet of {} bytes, kernel forwarded {} packets",
            spans[0].len() - 10,
            got.len()
        );
        assert_eq!(got.len(), segs.len());
        let mut joined = Vec::new();
        for (g, s) in got.iter().zip(&segs) {
            let v = View::new(g);
            assert!(
                v.l4_checksum_ok() && v.ipv4_header_ok(),
                "kernel-made segment checksum"
            );
            assert_eq!(v.seq(), View::new(s).seq());
            assert_eq!(v.tcp_flags(), View::new(s).tcp_flags());
            joined.extend_from_slice(v.payload());
        }
        assert_eq!(joined, payload);

        // UDP GRO.
        let dgrams: Vec<Vec<u8>> = (0..10)
            .map(|i| {
                udp_packet(
                    &ipx,
                    7777,
                    8888,
                    &vec![i as u8; if i == 9 { 100 } else { 1200 }],
                )
            })
            .collect();
        let n = c.coalesce(&dgrams, &mut out, &mut spans).unwrap();
        assert_eq!(n, 1);
        t1.write_all(&out[spans[0].clone()]).unwrap();
        let got = read_some(&mut t2, Duration::from_millis(300), |p| dst_is(p, &d));
        println!("v6={v6} UDP GRO: kernel forwarded {} datagrams", got.len());
        assert_eq!(got.len(), 10);
        for (g, s) in got.iter().zip(&dgrams) {
            let v = View::new(g);
            assert!(v.l4_checksum_ok());
            assert_eq!(v.payload(), View::new(s).payload());
        }

        // Read path: a super-packet routed back out the offload TUN comes to us as GSO.
        let ipl = ip(v6, src, loop_dst);
        let mut segs = Vec::new();
        let mut seq = 5000u32;
        for chunk in payload.chunks(gso) {
            let last = chunk.len() < gso;
            let t = TcpSpec {
                seq,
                flags: ACK | if last { PSH } else { 0 },
                ..TcpSpec::new(0)
            };
            segs.push(tcp_packet(&ipl, &t, chunk));
            seq += chunk.len() as u32;
        }
        let n = c.coalesce(&segs, &mut out, &mut spans).unwrap();
        assert_eq!(n, 1);
        t1.write_all(&out[spans[0].clone()]).unwrap();
        let dl = ipl.dst.clone();
        let got = read_some(&mut t1, Duration::from_millis(300), |p| {
            dst_is(&p[VNET_HDR_LEN..], &dl)
        });
        assert_eq!(got.len(), 1);
        let hdr = super::VirtioNetHdr::parse(&got[0]).unwrap();
        println!(
            "v6={v6} read path: kernel gave {:?}, {} bytes",
            hdr,
            got[0].len() - 10
        );
        let seg = Segmenter::from_tun_read(&got[0]).unwrap();
        assert_eq!(seg.segment_count(), segs.len());
        let mut buf = vec![0u8; 2000];
        for (i, s) in segs.iter().enumerate() {
            let n = seg.write_segment(i, &mut buf).unwrap();
            let v = View::new(&buf[..n]);
            assert!(v.l4_checksum_ok() && v.ipv4_header_ok());
            // Same as the original except TTL/hop limit (decremented) and header checksum.
            let mut want = s.clone();
            let mut have = buf[..n].to_vec();
            let (ttl_at, cks) = if v6 { (7, None) } else { (8, Some(10)) };
            assert_eq!(have[ttl_at] + 1, want[ttl_at]);
            have[ttl_at] = 0;
            want[ttl_at] = 0;
            if let Some(c) = cks {
                have[c..c + 2].fill(0);
                want[c..c + 2].fill(0);
                // Kernel increments ID per segment from the head's ID.
                have[4..6].fill(0);
                want[4..6].fill(0);
            }
            assert_eq!(have, want, "segment {i}");
        }
    }
}
