//! Both packet I/O backends (io_uring, epoll), each with offloads on and off, carry
//! real traffic correctly: two ringscale daemons in network namespaces with real TUN
//! devices, every combination forced by the daemon's own flags (`--io`,
//! `--offload`), and the daemon's log checked to prove the combination really ran.
//!
//! Each combination moves, with content checks:
//! * bulk TCP with sha256 on both ends, in both directions;
//! * UDP echoes of every size from 0 to the largest that fits the 1280 MTU
//!   (1252 bytes over IPv4, 1232 over IPv6), plus fragmented ones above it;
//! * a UDP burst sent with UDP_SEGMENT by the application (so the sending TUN sees
//!   UDP super-packets when USO is on, and the receiving side coalesces them);
//! * a mixed run: IPv4 and IPv6 TCP both ways and UDP at the same time.
//!
//! And the fallback: a daemon under a seccomp filter refusing io_uring (as in a
//! container) runs the epoll backend with `--io=auto` and refuses `--io=io_uring`.
//!
//! Needs root. Nothing is mocked.

#![forbid(unsafe_code)]

use ringscale_tests::testbed::{self, Netns, Proc, TempDir, TestRng};
use ringscale_tests::wgpeer::{addr::*, Impl, Launch, Pair, WgNode};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MB: u64 = 1024 * 1024;
/// Largest UDP payload in one 1280-byte packet: 1280 - 20 (IPv4) - 8 (UDP).
const MAX_UDP_V4: usize = 1280 - 28;
/// 1280 - 40 (IPv6) - 8 (UDP).
const MAX_UDP_V6: usize = 1280 - 48;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn launch(io: &str, offload: bool) -> Launch {
    Launch {
        args: vec![format!("--io={io}"), format!("--offload={offload}")],
        deny_io_uring: false,
    }
}

/// The daemon says which backend and offloads it runs; check they are the forced ones.
fn assert_runs(node: &WgNode, io: &str, offload: bool) {
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains(" up, mtu "))
        .unwrap_or_else(|| panic!("no start-up line in the log\n{}", node.log_tail(30)));
    assert!(
        line.contains(&format!("workers ({io})")),
        "expected the {io} backend: {line}"
    );
    // With offload on, this machine's kernel accepts every offload (baselines.md).
    let want = if offload {
        "tun_tso: true, tun_uso: true, udp_gso: true, udp_gro: true"
    } else {
        "tun_tso: false, tun_uso: false, udp_gso: false, udp_gro: false"
    };
    assert!(line.contains(want), "expected offloads {want:?}: {line}");
}

fn assert_healthy(node: &mut WgNode, when: &str) {
    if let Some(st) = node.exited() {
        panic!("{} exited ({st}) {when}\n{}", node.imp, node.log_tail(80));
    }
    assert!(
        !node.log().contains("panicked at"),
        "{} panicked {when}\n{}",
        node.imp,
        node.log_tail(80)
    );
}

fn assert_ping(ns: &Netns, to: &str, pair: &Pair) {
    assert!(
        ns.wait_ping(to, Duration::from_secs(10)),
        "no ping answer from {to} (sent from {})\n{}",
        ns.name,
        pair.logs()
    );
}

/// A checked TCP transfer of `bytes` random bytes; returns a description or an error.
fn transfer(
    from: &Netns,
    to: &Netns,
    to_addr: &str,
    port: u16,
    bytes: u64,
) -> Result<String, String> {
    let dir = TempDir::new("bk-xfer");
    let (src, dst) = (dir.path.join("sent"), dir.path.join("received"));
    testbed::random_file(&src, bytes);
    let r = testbed::tcp_transfer(
        from,
        to,
        ip(to_addr),
        port,
        &src,
        &dst,
        Duration::from_secs(120),
    )?;
    if r.bytes_sent != bytes || r.bytes_received != bytes {
        return Err(format!(
            "{to_addr}: sent {} received {} of {bytes} bytes",
            r.bytes_sent, r.bytes_received
        ));
    }
    if r.sha256_sent != r.sha256_received {
        return Err(format!("{bytes} bytes to {to_addr} arrived corrupted"));
    }
    Ok(format!(
        "{} MB to {to_addr} in {:?} ({:.0} Mbit/s)",
        bytes / MB,
        r.elapsed,
        bytes as f64 * 8.0 / r.elapsed.as_secs_f64() / 1e6
    ))
}

/// The bytes of datagram `n` of a test: its length and content depend on the seed, the
/// number and the size, so a datagram swapped, cut or merged with another shows.
fn pattern(seed: u64, n: u64, len: usize) -> Vec<u8> {
    let mut rng = TestRng::new(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ len as u64);
    let mut v = rng.bytes(len);
    if len >= 8 {
        v[..8].copy_from_slice(&n.to_be_bytes());
    }
    v
}

/// A UDP echo server in `ns` on `addr:port`, until the returned flag is set.
fn echo_server(ns: &Netns, bind: SocketAddr) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = ns.thread(move || {
        let sock = UdpSocket::bind(bind).expect("bind echo server");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 65536];
        while !stop2.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("echo server did not start");
    (stop, h)
}

/// Sends one datagram of every size in `sizes` from `from` to the echo server at
/// `target` and checks each echo is exactly what was sent (up to 3 tries each, since
/// UDP may drop). Returns the failures.
fn udp_echo_sizes(from: &Netns, target: SocketAddr, sizes: Vec<usize>, seed: u64) -> Vec<String> {
    from.thread(move || {
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let sock = UdpSocket::bind(bind).expect("bind echo client");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut failures = Vec::new();
        let mut buf = vec![0u8; 65536];
        for (n, &size) in sizes.iter().enumerate() {
            let sent = pattern(seed, n as u64, size);
            let mut ok = false;
            let mut last = String::from("no answer");
            'tries: for _ in 0..3 {
                if let Err(e) = sock.send_to(&sent, target) {
                    last = format!("send: {e}");
                    continue;
                }
                // Skip late echoes of earlier tries or sizes.
                let end = Instant::now() + Duration::from_secs(1);
                while Instant::now() < end {
                    match sock.recv_from(&mut buf) {
                        Ok((len, _)) if buf[..len] == sent[..] => {
                            ok = true;
                            break 'tries;
                        }
                        Ok((len, _)) if len == size && size >= 8 => {
                            if buf[..8] == sent[..8] {
                                last = format!("{len}-byte echo with different content");
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
            if !ok {
                failures.push(format!("{size} bytes: {last}"));
            }
        }
        failures
    })
    .join()
    .expect("echo client panicked")
}

/// Sends `count` datagrams of `size` bytes from `from` to a sink in `to`, 16 at a time
/// in one sendmsg with UDP_SEGMENT (so the TUN gets UDP super-packets where USO is on),
/// resending what did not arrive, and checks every datagram arrived whole and intact.
fn udp_burst(
    from: &Netns,
    to: &Netns,
    target: SocketAddr,
    count: usize,
    size: usize,
    seed: u64,
) -> Result<(), String> {
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sink = to.thread(move || {
        let sock = UdpSocket::bind(target).expect("bind sink");
        set_rcvbuf(&sock, 8 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut got = vec![false; count];
        let mut bad = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut idle = 0;
        // Until everything arrived, or 3 s without any datagram.
        while got.contains(&false) && idle < 30 {
            match sock.recv_from(&mut buf) {
                Ok((len, _)) => {
                    idle = 0;
                    let n = if len >= 8 {
                        u64::from_be_bytes(buf[..8].try_into().unwrap()) as usize
                    } else {
                        usize::MAX
                    };
                    if n < count && buf[..len] == pattern(seed, n as u64, size)[..] {
                        got[n] = true;
                    } else {
                        bad.push(len);
                    }
                }
                Err(_) => idle += 1,
            }
        }
        done2.store(true, Ordering::Relaxed);
        (got.iter().filter(|&&g| g).count(), bad)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("sink did not start");
    from.thread(move || {
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let sock = UdpSocket::bind(bind).expect("bind burst sender");
        // Everything, again until the sink has it all (it ignores duplicates).
        for _round in 0..4 {
            let mut batch = Vec::with_capacity(16 * size);
            for n in 0..count {
                batch.extend_from_slice(&pattern(seed, n as u64, size));
                if (n + 1) % 16 == 0 || n + 1 == count {
                    send_segmented(&sock, target, &batch, size);
                    batch.clear();
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            let end = Instant::now() + Duration::from_millis(500);
            while Instant::now() < end && !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if done.load(Ordering::Relaxed) {
                break;
            }
        }
    })
    .join()
    .expect("burst sender panicked");
    let h = sink;
    let (arrived, bad) = h.join().expect("sink panicked");
    if !bad.is_empty() {
        return Err(format!(
            "{} datagrams arrived altered (lengths {:?}; sent {size})",
            bad.len(),
            &bad[..bad.len().min(10)]
        ));
    }
    if arrived != count {
        return Err(format!(
            "{arrived} of {count} datagrams of {size} bytes arrived after 4 rounds"
        ));
    }
    Ok(())
}

fn set_rcvbuf(sock: &UdpSocket, bytes: i32) {
    let _ = ringscale_sys::set_int_option(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes);
}

/// One sendmsg of `data` split by the kernel into `segment`-byte datagrams. A failed
/// send is a lost burst, which the resend rounds cover.
fn send_segmented(sock: &UdpSocket, to: SocketAddr, data: &[u8], segment: usize) {
    let _ = ringscale_sys::udp::send_segmented(sock, to, data, segment as u16);
}

/// Every size up to the MTU's largest, and some that need IP fragmentation.
fn sizes(max: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=max).collect();
    v.extend([max + 1, 1500, 2000, 4000, 8972, 20_000, 40_000]);
    v
}

fn combination(io: &str, offload: bool) {
    let mut pair = Pair::with_launch(
        Impl::Ringscale,
        Impl::Ringscale,
        launch(io, offload),
        launch(io, offload),
        |_, _| {},
    );
    assert_runs(&pair.a, io, offload);
    assert_runs(&pair.b, io, offload);
    assert_ping(&pair.ns_a, TUN_B4, &pair);
    assert_ping(&pair.ns_a, TUN_B6, &pair);
    assert_ping(&pair.ns_b, TUN_A4, &pair);
    assert_ping(&pair.ns_b, TUN_A6, &pair);

    // Bulk TCP each way, checked end to end.
    for (from, to, addr, port, bytes) in [
        (&pair.ns_a, &pair.ns_b, TUN_B4, 5001, 64 * MB),
        (&pair.ns_b, &pair.ns_a, TUN_A6, 5002, 64 * MB),
    ] {
        match transfer(from, to, addr, port, bytes) {
            Ok(d) => eprintln!("{io}/offload={offload}: {d}"),
            Err(e) => panic!("{io}/offload={offload}: {e}\n{}", pair.logs()),
        }
    }

    // UDP of every size, both families, each direction starting once.
    let seed = TestRng::from_entropy().seed();
    eprintln!("udp seed {seed:#x}");
    let (stop_b, server_b) = echo_server(&pair.ns_b, "[::]:7000".parse().unwrap());
    let (stop_a, server_a) = echo_server(&pair.ns_a, "[::]:7000".parse().unwrap());
    let target_b4: SocketAddr = format!("{TUN_B4}:7000").parse().unwrap();
    let target_a6: SocketAddr = format!("[{TUN_A6}]:7000").parse().unwrap();
    let mut failures = udp_echo_sizes(&pair.ns_a, target_b4, sizes(MAX_UDP_V4), seed);
    failures.extend(udp_echo_sizes(
        &pair.ns_b,
        target_a6,
        sizes(MAX_UDP_V6),
        seed ^ 1,
    ));
    assert!(
        failures.is_empty(),
        "{io}/offload={offload}: {} UDP sizes failed (seed {seed:#x}): {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(20)],
        pair.logs()
    );

    // UDP bursts of full-size datagrams, as UDP_SEGMENT super-sends.
    let b4: SocketAddr = format!("{TUN_B4}:7001").parse().unwrap();
    let a6: SocketAddr = format!("[{TUN_A6}]:7001").parse().unwrap();
    for (from, to, target, size) in [
        (&pair.ns_a, &pair.ns_b, b4, MAX_UDP_V4),
        (&pair.ns_b, &pair.ns_a, a6, MAX_UDP_V6),
        (&pair.ns_a, &pair.ns_b, b4, 100),
    ] {
        if let Err(e) = udp_burst(from, to, target, 512, size, seed) {
            panic!(
                "{io}/offload={offload}: UDP burst to {target}: {e} (seed {seed:#x})\n{}",
                pair.logs()
            );
        }
    }

    // Mixed: IPv4 and IPv6, TCP both ways and UDP echoes, all at once.
    let t = Instant::now();
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let (a, b) = (&pair.ns_a, &pair.ns_b);
        let jobs = vec![
            s.spawn(move || transfer(a, b, TUN_B4, 5003, 24 * MB)),
            s.spawn(move || transfer(b, a, TUN_A6, 5004, 24 * MB)),
            s.spawn(move || transfer(a, b, TUN_B6, 5005, 16 * MB)),
            s.spawn(move || transfer(b, a, TUN_A4, 5006, 16 * MB)),
            s.spawn(move || {
                let target: SocketAddr = format!("[{TUN_B6}]:7000").parse().unwrap();
                let sizes: Vec<usize> = (0..=MAX_UDP_V6).step_by(7).collect();
                let f = udp_echo_sizes(a, target, sizes, seed ^ 2);
                if f.is_empty() {
                    Ok("UDP echoes over IPv6 during the transfers".into())
                } else {
                    Err(format!("UDP over IPv6 during the transfers: {f:?}"))
                }
            }),
        ];
        jobs.into_iter()
            .map(|j| j.join().expect("job panicked"))
            .collect()
    });
    for r in &results {
        match r {
            Ok(d) => eprintln!("{io}/offload={offload} mixed: {d}"),
            Err(e) => panic!(
                "{io}/offload={offload}: mixed IPv4/IPv6 run: {e}\n{}",
                pair.logs()
            ),
        }
    }
    eprintln!("mixed run took {:?}", t.elapsed());
    stop_a.store(true, Ordering::Relaxed);
    stop_b.store(true, Ordering::Relaxed);
    server_a.join().unwrap();
    server_b.join().unwrap();

    assert_healthy(&mut pair.a, "after the traffic");
    assert_healthy(&mut pair.b, "after the traffic");
    for (ns, node) in [(&pair.ns_a, &mut pair.a), (&pair.ns_b, &mut pair.b)] {
        let ifname = node.conf.ifname.clone();
        let (st, in_time) = node.stop(Duration::from_secs(5)).expect("running");
        assert!(in_time && st.success(), "{io}: SIGTERM gave {st}");
        assert!(!ns.has_link(&ifname), "{io}: {ifname} left behind");
    }
}

#[test]
fn io_uring_with_offloads() {
    combination("io_uring", true);
}

#[test]
fn io_uring_without_offloads() {
    combination("io_uring", false);
}

#[test]
fn epoll_with_offloads() {
    combination("epoll", true);
}

#[test]
fn epoll_without_offloads() {
    combination("epoll", false);
}

/// The two backends talk to each other (one end io_uring, the other epoll).
#[test]
fn io_uring_and_epoll_interoperate() {
    let pair = Pair::with_launch(
        Impl::Ringscale,
        Impl::Ringscale,
        launch("io_uring", true),
        launch("epoll", false),
        |_, _| {},
    );
    assert_runs(&pair.a, "io_uring", true);
    assert_runs(&pair.b, "epoll", false);
    assert_ping(&pair.ns_a, TUN_B4, &pair);
    for (from, to, addr, port) in [
        (&pair.ns_a, &pair.ns_b, TUN_B6, 5011),
        (&pair.ns_b, &pair.ns_a, TUN_A4, 5012),
    ] {
        if let Err(e) = transfer(from, to, addr, port, 32 * MB) {
            panic!("{e}\n{}", pair.logs());
        }
    }
}

/// A container's seccomp profile refuses io_uring: `auto` must fall back to epoll and
/// say why, and carry traffic.
#[test]
fn auto_falls_back_to_epoll_when_seccomp_refuses_io_uring() {
    let denied = Launch {
        args: vec!["--io=auto".into()],
        deny_io_uring: true,
    };
    let mut pair = Pair::with_launch(
        Impl::Ringscale,
        Impl::Ringscale,
        denied,
        launch("auto", true),
        |_, _| {},
    );
    assert_runs(&pair.a, "epoll", true);
    assert_runs(&pair.b, "io_uring", true);
    let log = pair.a.log();
    assert!(
        log.contains("io_uring unavailable") && log.contains("Operation not permitted"),
        "the fallback was not explained\n{}",
        pair.a.log_tail(20)
    );
    assert_ping(&pair.ns_a, TUN_B4, &pair);
    if let Err(e) = transfer(&pair.ns_b, &pair.ns_a, TUN_A4, 5021, 16 * MB) {
        panic!("{e}\n{}", pair.logs());
    }
    assert_healthy(&mut pair.a, "after the fallback");
}

/// Forcing io_uring where it is refused is an error with the reason, not a silent
/// fallback.
#[test]
fn forced_io_uring_refuses_to_start_without_it() {
    let ns = Netns::new("bkdeny");
    let dir = TempDir::new("bkdeny");
    let conf = dir.path.join("wg.conf");
    std::fs::write(
        &conf,
        "[Interface]\nPrivateKey = QMarK2ItPbLSW9eAefcSytmWbdkNkVN3NcQiEiZzKFA=\nListenPort = 51820\nAddress = 10.77.0.1/24\n",
    )
    .unwrap();
    let err = dir.path.join("stderr");
    let mut cmd = ns.command(testbed::ringscale_bin());
    cmd.arg("tailscaled")
        .arg("--wg-config")
        .arg(&conf)
        .args(["--io=io_uring", "--tun", "bkdeny0"])
        .arg("--statedir")
        .arg(dir.path.join("state"))
        .arg("--socket")
        .arg(dir.path.join("sock"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap());
    testbed::deny_io_uring(&mut cmd);
    let mut p = Proc::spawn(cmd);
    let st = p
        .wait_timeout(Duration::from_secs(10))
        .expect("daemon kept running with io_uring refused");
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(!st.success(), "exited 0: {stderr}");
    assert!(
        stderr.contains("io_uring") && stderr.contains("Operation not permitted"),
        "the error does not say io_uring was refused: {stderr:?}"
    );
    assert!(!ns.has_link("bkdeny0"), "interface left behind");
}
