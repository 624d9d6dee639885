//! Network namespaces, veth pairs and processes in them, all removed on drop.
//!
//! Every name carries a per-process prefix so tests (and parallel test binaries) never
//! collide, and so a crashed run's leftovers are recognisable.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short tag for names (interface names are limited to 15 bytes).
pub fn unique_tag() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n:x}", std::process::id() & 0xffff)
}

/// Runs a command, panicking with its output when it fails: test set-up must not
/// fail silently.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn sh(script: &str) -> Output {
    run(Command::new("sh").arg("-c").arg(script))
}

/// A network namespace, deleted (with everything in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(label: &str) -> Netns {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(remove_stale_etc_dirs);
        let name = format!("rs-{label}-{}", unique_tag());
        // The namespace first, and only then its /etc directory: `ip netns add` can
        // fail (a name left by a killed run), and a directory made before it would be
        // left behind with no namespace and no `Netns` to remove it on drop.
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        // `ip netns exec` bind-mounts /etc/netns/<name>/resolv.conf over
        // /etc/resolv.conf when it exists: a daemon in the namespace that rewrites
        // resolv.conf (MagicDNS, --accept-dns) then never touches the host's. Nothing
        // has run in the namespace yet, so every later `exec` sees the file.
        let etc = Path::new("/etc/netns").join(&ns.name);
        if std::fs::create_dir_all(&etc).is_ok() {
            let _ = std::fs::write(etc.join("resolv.conf"), "# ringscale test namespace\n");
        }
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A `Command` that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// `ip ARGS` inside the namespace; panics on failure.
    pub fn ip(&self, args: &[&str]) -> Output {
        run(self.command("ip").args(args))
    }

    /// A shell script inside the namespace; panics on failure.
    pub fn sh(&self, script: &str) -> Output {
        run(self.command("sh").arg("-c").arg(script))
    }

    /// A shell script inside the namespace, returning its output whatever the status.
    pub fn try_sh(&self, script: &str) -> Output {
        self.command("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("cannot run sh")
    }

    /// Starts a long-running process in the namespace; it is killed on drop.
    pub fn spawn(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Proc {
        let mut cmd = self.command(program);
        cmd.args(args);
        Proc::spawn(cmd)
    }

    /// Does `ping -c1` from this namespace reach `addr`?
    pub fn ping(&self, addr: &str) -> bool {
        self.command("ping")
            .args(["-c", "1", "-W", "1", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Pings `addr` until it answers or `timeout` passes.
    pub fn wait_ping(&self, addr: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.ping(addr) {
                return true;
            }
        }
        false
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever is still running in the namespace, by PID, then remove it.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // A PID that lives in our own namespace.
                    let _ = ringscale_sys::process::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        // The namespace's own resolv.conf made in `new`.
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

/// Removes `/etc/netns/rs-*` directories whose namespace no longer exists: what a
/// killed or aborted run leaves (its `Netns` values are never dropped; its namespaces
/// go at the latest with /run on reboot, the directories on disk stay). Only
/// directories untouched for a minute: a namespace being created right now by a
/// concurrent run built before `Netns::new` made the namespace first must keep its
/// resolv.conf.
fn remove_stale_etc_dirs() {
    let Ok(entries) = std::fs::read_dir("/etc/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("rs-")) else {
            continue;
        };
        let idle = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        if idle && !Path::new("/run/netns").join(name).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Joins two namespaces with a veth pair and gives each end an IPv4 (/24) and IPv6
/// (/64) address. Returns the interface names (a side, b side).
pub fn link(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) -> (String, String) {
    let tag = unique_tag();
    let (ia, ib) = (format!("va{tag}"), format!("vb{tag}"));
    run(Command::new("ip").args([
        "link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns", &b.name,
    ]));
    for (ns, ifname, addrs) in [(a, &ia, a_addrs), (b, &ib, b_addrs)] {
        for addr in addrs {
            // nodad: IPv6 addresses are usable at once instead of after DAD.
            if addr.contains(':') {
                ns.ip(&["addr", "add", addr, "dev", ifname, "nodad"]);
            } else {
                ns.ip(&["addr", "add", addr, "dev", ifname]);
            }
        }
        ns.ip(&["link", "set", ifname, "up"]);
    }
    (ia, ib)
}

/// A child process killed (by PID) and reaped on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends a signal (e.g. SIGTERM) without waiting.
    pub fn signal(&self, sig: i32) {
        let _ = ringscale_sys::process::kill(self.child.id() as i32, sig);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The `ringscale` binary built by cargo for this workspace.
pub fn ringscale_bin() -> PathBuf {
    let p = ringscale_bin_path();
    assert!(
        p.exists(),
        "{p:?} not found: run `cargo build -p ringscale` first"
    );
    p
}

/// Where [`ringscale_bin`] looks for the binary ($RINGSCALE_BIN, else the workspace's
/// target directory), without requiring it to exist.
pub fn ringscale_bin_path() -> PathBuf {
    if let Ok(p) = std::env::var("RINGSCALE_BIN") {
        return PathBuf::from(p);
    }
    // tests/ lives one level below the workspace root; the binary is in target/<profile>.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    // The profile the tests themselves were built with, so a stale build is never used.
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target.join(profile).join("ringscale")
}

/// A scratch directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("ringscale-{label}-{}", unique_tag()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Additions for the WireGuard end-to-end tests and the benchmark: code that runs
// inside a namespace in-process, bounded waits, and packet capture without tcpdump.

impl Netns {
    /// The bind-mounted namespace file `ip netns` made.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `f` on a new thread that has joined this network namespace, so sockets it
    /// creates live there. `setns(CLONE_NEWNET)` affects only the calling thread, which
    /// is what lets the test process talk from several namespaces at once without any
    /// helper tool.
    pub fn thread<F, T>(&self, f: F) -> std::thread::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = self.path();
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
    }

    /// Interface names in this namespace (`ip -o link`), without the `@peer` suffix.
    pub fn links(&self) -> Vec<String> {
        let out = self.ip(&["-o", "link", "show"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect()
    }

    /// Does the interface exist in this namespace?
    pub fn has_link(&self, ifname: &str) -> bool {
        self.command("ip")
            .args(["link", "show", "dev", ifname])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// `ping -c1` like [`Netns::ping`], with a chosen packet size (payload bytes).
    pub fn ping_size(&self, addr: &str, size: usize) -> bool {
        self.command("ping")
            .args(["-c", "1", "-W", "1", "-s", &size.to_string(), addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &Path) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    ringscale_sys::netns::enter_net(&f).unwrap_or_else(|e| panic!("setns {path:?}: {e}"));
}

impl Proc {
    /// Waits up to `timeout` for the process to end.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if the process has not ended after `grace`. Returns the
    /// exit status and whether the process ended by itself within the grace period.
    pub fn terminate(&mut self, grace: Duration) -> (std::process::ExitStatus, bool) {
        if let Some(st) = self.exited() {
            return (st, true);
        }
        self.signal(libc::SIGTERM);
        if let Some(st) = self.wait_timeout(grace) {
            return (st, true);
        }
        let _ = self.child.kill();
        (self.child.wait().expect("wait for killed child"), false)
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The SHA-256 of a file, by coreutils' `sha256sum` (present on every Debian).
pub fn sha256_file(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Writes `bytes` random bytes from /dev/urandom to `path`.
pub fn random_file(path: &Path, bytes: u64) {
    use std::io::Read;
    let mut src = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    let mut dst = std::fs::File::create(path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
    let copied = std::io::copy(&mut (&mut src).take(bytes), &mut dst).expect("write random file");
    assert_eq!(copied, bytes);
}

/// What a checked TCP transfer saw on each end.
#[derive(Debug)]
pub struct TransferReport {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub sha256_sent: String,
    pub sha256_received: String,
    pub elapsed: Duration,
}

/// Sends the file `src` over TCP from namespace `from` to `to_addr:port` in namespace
/// `to`, where it is written to `dst`; then hashes both files. Every socket operation
/// has a timeout and the whole transfer is bounded by `timeout`; a failure on either
/// end comes back as the error (the ends run in their own threads, in their own
/// namespaces, so nothing outside the test bed is needed).
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    to_addr: std::net::IpAddr,
    port: u16,
    src: &Path,
    dst: &Path,
    timeout: Duration,
) -> Result<TransferReport, String> {
    use std::io::Write;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::mpsc;

    let start = Instant::now();
    let deadline = start + timeout;
    let target = SocketAddr::new(to_addr, port);
    let io_timeout = Some(timeout.min(Duration::from_secs(30)));

    // Receiver: listen first, tell the sender it may connect, then copy to `dst`.
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (done_tx, done_rx) = mpsc::channel::<(&'static str, Result<u64, String>)>();
    let dst_owned = dst.to_path_buf();
    let done_rx_tx = done_tx.clone();
    to.thread(move || {
        let res = (|| -> Result<u64, String> {
            let listener = TcpListener::bind(target).map_err(|e| format!("bind {target}: {e}"));
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.clone()));
                    return Err(e);
                }
            };
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            let mut stream = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err("receiver: no connection before the deadline".into());
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            stream.set_nonblocking(false).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(io_timeout)
                .map_err(|e| e.to_string())?;
            let mut out = std::fs::File::create(&dst_owned).map_err(|e| e.to_string())?;
            let n = std::io::copy(&mut stream, &mut out)
                .map_err(|e| format!("receiver: {e} (after {:?})", start.elapsed()))?;
            out.flush().map_err(|e| e.to_string())?;
            Ok(n)
        })();
        let _ = done_rx_tx.send(("receiver", res));
    });
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("receiver did not start".into()),
    }

    let src_owned = src.to_path_buf();
    from.thread(move || {
        let res = (|| -> Result<u64, String> {
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))
                .map_err(|e| format!("sender: connect {target}: {e}"))?;
            stream
                .set_write_timeout(io_timeout)
                .map_err(|e| e.to_string())?;
            let mut file = std::fs::File::open(&src_owned).map_err(|e| e.to_string())?;
            let n = std::io::copy(&mut file, &mut stream)
                .map_err(|e| format!("sender: {e} (after {:?})", start.elapsed()))?;
            stream.flush().map_err(|e| e.to_string())?;
            stream
                .shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
            Ok(n)
        })();
        let _ = done_tx.send(("sender", res));
    });

    let (mut sent, mut received) = (None, None);
    while sent.is_none() || received.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(("sender", r)) => sent = Some(r?),
            Ok((_, r)) => received = Some(r?),
            Err(_) => {
                return Err(format!(
                    "transfer not finished within {timeout:?} (sender done: {}, receiver done: {}, received so far: {} bytes)",
                    sent.is_some(),
                    received.is_some(),
                    std::fs::metadata(dst).map(|m| m.len()).unwrap_or(0)
                ))
            }
        }
    }
    let elapsed = start.elapsed();
    Ok(TransferReport {
        bytes_sent: sent.unwrap_or(0),
        bytes_received: received.unwrap_or(0),
        sha256_sent: sha256_file(src),
        sha256_received: sha256_file(dst),
        elapsed,
    })
}

/// A capture of UDP/IPv4 datagrams arriving in a namespace, through an AF_PACKET
/// socket (what tcpdump uses underneath), so tests can replay real packets.
pub struct UdpCapture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<CapturedDatagram>>>,
}

#[derive(Clone, Debug)]
pub struct CapturedDatagram {
    pub src: std::net::SocketAddrV4,
    pub dst: std::net::SocketAddrV4,
    pub payload: Vec<u8>,
}

impl UdpCapture {
    /// Starts capturing, in `ns`, IPv4 UDP datagrams to `dst_port` (any interface,
    /// either direction; filter on `src`/`dst` afterwards). At most `limit` are kept.
    pub fn start(ns: &Netns, dst_port: u16, limit: usize) -> UdpCapture {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = ns.thread(move || {
            let capture = ringscale_sys::packet::Ipv4Capture::open(Duration::from_millis(100))
                .unwrap_or_else(|e| panic!("AF_PACKET socket: {e}"));
            let _ = ready_tx.send(());
            let mut out = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) && out.len() < limit {
                let Ok(n) = capture.recv(&mut buf) else {
                    continue;
                };
                if let Some(d) = parse_ipv4_udp(&buf[..n]) {
                    if d.dst.port() == dst_port {
                        out.push(d);
                    }
                }
            }
            out
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("capture thread did not start");
        UdpCapture {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the capture and returns what it saw, in arrival order.
    pub fn finish(mut self) -> Vec<CapturedDatagram> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("capture handle")
            .join()
            .expect("capture thread panicked")
    }
}

impl Drop for UdpCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// An IPv4 packet carrying a whole (unfragmented) UDP datagram, else None.
pub fn parse_ipv4_udp(pkt: &[u8]) -> Option<CapturedDatagram> {
    use std::net::{Ipv4Addr, SocketAddrV4};
    if pkt.len() < 20 || pkt[0] >> 4 != 4 || pkt[9] != 17 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
    // More-fragments flag or a fragment offset: not a whole datagram.
    if frag & 0x3fff != 0 || ihl < 20 || total > pkt.len() || total < ihl + 8 {
        return None;
    }
    let udp = &pkt[ihl..total];
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if ulen < 8 || ulen > udp.len() {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(pkt[o], pkt[o + 1], pkt[o + 2], pkt[o + 3]);
    Some(CapturedDatagram {
        src: SocketAddrV4::new(ip(12), u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddrV4::new(ip(16), u16::from_be_bytes([udp[2], udp[3]])),
        payload: udp[8..ulen].to_vec(),
    })
}

/// A small deterministic PRNG (xorshift64*) for test traffic: reproducible from the
/// seed a failing test prints, and no dependency.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed | 1)
    }

    /// Seeded from /dev/urandom.
    pub fn from_entropy() -> TestRng {
        use std::io::Read;
        let mut b = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .expect("read /dev/urandom");
        TestRng::new(u64::from_le_bytes(b))
    }

    pub fn seed(&self) -> u64 {
        self.0
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0), bias negligible for test purposes.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

// ---------------------------------------------------------------------------
// Addition for the backend tests: the "container refuses io_uring" case, for real.

/// Makes `cmd` run under a seccomp filter that fails io_uring_setup with EPERM (what
/// container runtimes' default profiles do), inherited across the exec of `ip netns
/// exec` and the program it runs.
pub fn deny_io_uring(cmd: &mut Command) {
    ringscale_sys::seccomp::deny_io_uring(cmd);
}

// ---------------------------------------------------------------------------
// Addition for the tailnet tests: several namespaces on one LAN.

/// A LAN segment: a hub namespace holding a bridge (with the first address of the
/// /24 on it, e.g. for a control server), and member namespaces each joined to the
/// bridge by a veth pair. Members are returned to the caller (and removed when
/// dropped); the bridge goes with the hub.
pub struct Lan {
    pub hub: Netns,
    bridge: String,
    /// The first three octets of the /24, e.g. `10.98.0`.
    prefix: String,
}

impl Lan {
    /// A hub namespace with bridge `br0` holding `<prefix>.1/24`.
    pub fn new(label: &str, prefix: &str) -> Lan {
        let hub = Netns::new(label);
        let bridge = "br0".to_string();
        hub.ip(&["link", "add", &bridge, "type", "bridge"]);
        hub.ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &bridge]);
        hub.ip(&["link", "set", &bridge, "up"]);
        Lan {
            hub,
            bridge,
            prefix: prefix.to_string(),
        }
    }

    /// The hub's address on the bridge (`<prefix>.1`).
    pub fn hub_addr(&self) -> std::net::Ipv4Addr {
        self.addr(1)
    }

    /// `<prefix>.host`.
    pub fn addr(&self, host: u8) -> std::net::Ipv4Addr {
        format!("{}.{host}", self.prefix)
            .parse()
            .expect("a valid IPv4 prefix")
    }

    /// A new namespace on the LAN with address `<prefix>.host/24` (host ≥ 2).
    pub fn join(&self, label: &str, host: u8) -> Netns {
        let ns = Netns::new(label);
        let tag = unique_tag();
        let (inner, port) = (format!("ln{tag}"), format!("lp{tag}"));
        run(Command::new("ip").args([
            "link",
            "add",
            &inner,
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.hub.name,
        ]));
        self.hub.ip(&["link", "set", &port, "master", &self.bridge]);
        self.hub.ip(&["link", "set", &port, "up"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", self.addr(host)),
            "dev",
            &inner,
        ]);
        ns.ip(&["link", "set", &inner, "up"]);
        ns
    }
}

/// The private resolv.conf of a namespace (`/etc/netns/<ns>/resolv.conf`, which
/// `ip netns exec` mounts over /etc/resolv.conf), set to given content so a test can
/// see what a daemon in the namespace writes there and restores. Removed with the
/// namespace.
pub struct NsResolvConf {
    path: PathBuf,
}

impl NsResolvConf {
    pub fn new(ns: &Netns, content: &str) -> NsResolvConf {
        let dir = Path::new("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
        let path = dir.join("resolv.conf");
        std::fs::write(&path, content).expect("write the namespace's resolv.conf");
        NsResolvConf { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// dnsmasq in the foreground in `ns`, as root, answering on `listen` only what the
/// caller's further arguments give it (no resolv.conf, hosts file or config file), its
/// pid file at `pid_file`. Output goes nowhere unless the caller redirects it.
pub fn dnsmasq_command(ns: &Netns, listen: &str, pid_file: &Path) -> Command {
    let mut cmd = ns.command("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--conf-file=/dev/null",
        "--user=root",
        "--group=root",
    ])
    .arg(format!("--listen-address={listen}"))
    .arg(format!("--pid-file={}", pid_file.display()))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}
