//! WireGuard nodes in namespaces, with the implementation pluggable: ringscale's
//! daemon (`ringscale tailscaled --wg-config`), Debian's wireguard-go, or boringtun-cli.
//! The last two are configured the way their users do it: `wg setconf` over the UAPI
//! socket, then `ip` for addresses, MTU, routes and link state. The tests use this to
//! run one scenario against several implementations and the benchmark to put them side
//! by side with the same keys, addresses and MTU.

use crate::testbed::{self, run, Netns, Proc, TempDir};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Which WireGuard implementation runs a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Ringscale,
    WireguardGo,
    BoringtunCli,
}

impl Impl {
    pub fn name(self) -> &'static str {
        match self {
            Impl::Ringscale => "ringscale",
            Impl::WireguardGo => "wireguard-go",
            Impl::BoringtunCli => "boringtun-cli",
        }
    }

    /// The program to run, if it is installed (ringscale: the workspace build).
    pub fn binary(self) -> Option<PathBuf> {
        match self {
            Impl::Ringscale => {
                let p = testbed::ringscale_bin_path();
                p.exists().then_some(p)
            }
            Impl::WireguardGo => find_program("wireguard-go", &[]),
            // Where the benchmark installs it (`cargo install --root /opt/ringscale-tools`).
            Impl::BoringtunCli => {
                find_program("boringtun-cli", &["/opt/ringscale-tools/bin/boringtun-cli"])
            }
        }
    }

    pub fn available(self) -> bool {
        self.binary().is_some()
    }
}

impl fmt::Display for Impl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `name` on $PATH, else the first of `extra` that exists.
pub fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain(extra.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// A WireGuard key pair in the base64 form `wg` and config files use.
#[derive(Clone, Debug)]
pub struct Keypair {
    pub private: String,
    pub public: String,
}

impl Keypair {
    /// `wg genkey`, `wg pubkey`.
    pub fn generate() -> Keypair {
        let out = run(Command::new("wg").arg("genkey"));
        let private = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let public = wg_pubkey(&private);
        Keypair { private, public }
    }
}

/// The public key for a base64 private key, by `wg pubkey`.
pub fn wg_pubkey(private: &str) -> String {
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run wg pubkey");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{private}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("wg pubkey");
    assert!(out.status.success(), "wg pubkey failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[derive(Clone, Debug)]
pub struct PeerConf {
    pub public_key: String,
    pub allowed_ips: Vec<String>,
    /// `ip:port` (IPv6 as `[addr]:port`).
    pub endpoint: Option<String>,
    pub persistent_keepalive: Option<u16>,
}

/// One node's WireGuard configuration, the same for every implementation.
#[derive(Clone, Debug)]
pub struct NodeConf {
    pub ifname: String,
    pub private_key: String,
    pub listen_port: u16,
    /// With prefix length, e.g. `10.77.0.1/24`, `fd77::1/64`.
    pub addresses: Vec<String>,
    pub mtu: u32,
    pub peers: Vec<PeerConf>,
    /// Verbose logging (ringscale `--verbose 2`, wireguard-go `LOG_LEVEL=verbose`);
    /// the tests want it for diagnostics, the benchmark does not.
    pub verbose: bool,
}

impl NodeConf {
    /// The `wg-quick` style file ringscale reads with `--wg-config`.
    pub fn wg_quick(&self) -> String {
        let mut s = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = {}\n",
            self.private_key, self.listen_port
        );
        if !self.addresses.is_empty() {
            s += &format!("Address = {}\n", self.addresses.join(", "));
        }
        s += &format!("MTU = {}\n", self.mtu);
        for p in &self.peers {
            s += &format!("\n[Peer]\n{}", peer_lines(p));
        }
        s
    }

    /// The file `wg setconf` takes: no Address/MTU, those are `ip`'s business.
    pub fn wg_setconf(&self) -> String {
        let mut s = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = {}\n",
            self.private_key, self.listen_port
        );
        for p in &self.peers {
            s += &format!("\n[Peer]\n{}", peer_lines(p));
        }
        s
    }

    pub fn public_key(&self) -> String {
        wg_pubkey(&self.private_key)
    }
}

fn peer_lines(p: &PeerConf) -> String {
    let mut s = format!("PublicKey = {}\n", p.public_key);
    if !p.allowed_ips.is_empty() {
        s += &format!("AllowedIPs = {}\n", p.allowed_ips.join(", "));
    }
    if let Some(e) = &p.endpoint {
        s += &format!("Endpoint = {e}\n");
    }
    if let Some(k) = p.persistent_keepalive {
        s += &format!("PersistentKeepalive = {k}\n");
    }
    s
}

/// How to start a ringscale daemon beyond its configuration (other implementations
/// ignore this).
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Extra daemon flags, e.g. `--io=epoll`, `--offload=false`.
    pub args: Vec<String>,
    /// Run the daemon under a seccomp filter that refuses io_uring_setup with EPERM,
    /// as container runtimes do.
    pub deny_io_uring: bool,
}

/// A running WireGuard node in a namespace. Dropping it stops the process (SIGTERM,
/// then SIGKILL). Its output goes to a log file; `log_tail` is for failure messages.
pub struct WgNode {
    pub imp: Impl,
    pub conf: NodeConf,
    pub launch: Launch,
    ns_name: String,
    proc: Option<Proc>,
    dir: TempDir,
    /// How many times the node was started (log files are numbered by it).
    generation: u32,
}

/// Where wireguard-go and boringtun-cli put their UAPI socket (a host-wide path,
/// hence unique interface names).
pub fn uapi_socket(ifname: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"))
}

impl WgNode {
    /// Starts `imp` in `ns` with `conf` and waits until the interface is up with its
    /// addresses and the UDP port is bound. Panics (with the node's log) otherwise.
    pub fn start(ns: &Netns, imp: Impl, conf: NodeConf) -> WgNode {
        WgNode::start_with(ns, imp, conf, Launch::default())
    }

    /// Like `start`, with extra daemon flags or a seccomp filter (see [`Launch`]).
    pub fn start_with(ns: &Netns, imp: Impl, conf: NodeConf, launch: Launch) -> WgNode {
        let mut node = WgNode {
            imp,
            conf,
            launch,
            ns_name: ns.name.clone(),
            proc: None,
            dir: TempDir::new(&format!("node-{}", imp.name())),
            generation: 0,
        };
        node.launch();
        node
    }

    fn ns_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns_name]).arg(program);
        c
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path.join(format!("log.{}", self.generation))
    }

    /// Everything the current process logged (stderr and stdout).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `n` lines of the log of every run so far, labelled.
    pub fn log_tail(&self, n: usize) -> String {
        let mut s = String::new();
        for g in 1..=self.generation {
            let text =
                std::fs::read_to_string(self.dir.path.join(format!("log.{g}"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            s += &format!(
                "--- {} on {} in {} (run {g}, last {} of {} log lines) ---\n",
                self.imp,
                self.conf.ifname,
                self.ns_name,
                lines.len() - from,
                lines.len()
            );
            for l in &lines[from..] {
                s += l;
                s.push('\n');
            }
        }
        s
    }

    /// The PID of the tunnel process (for CPU accounting), if running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// None while running; the exit status once the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.as_mut().and_then(|p| p.exited())
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_some() && self.exited().is_none()
    }

    fn launch(&mut self) {
        self.generation += 1;
        let log = std::fs::File::create(self.log_path()).expect("create node log");
        let log2 = log.try_clone().expect("dup log fd");
        let bin = self
            .imp
            .binary()
            .unwrap_or_else(|| panic!("{} is not installed", self.imp));
        let mut cmd = self.ns_cmd(&bin);
        match self.imp {
            Impl::Ringscale => {
                let cfg = self.dir.path.join("wg.conf");
                std::fs::write(&cfg, self.conf.wg_quick()).expect("write wg-quick config");
                // Private state and socket paths so parallel daemons never share one.
                cmd.arg("tailscaled")
                    .arg("--wg-config")
                    .arg(&cfg)
                    .args(["--tun", &self.conf.ifname])
                    .args(["--verbose", if self.conf.verbose { "2" } else { "0" }])
                    .arg("--statedir")
                    .arg(self.dir.path.join("state"))
                    .arg("--socket")
                    .arg(self.dir.path.join("tailscaled.sock"))
                    .args(&self.launch.args);
                if self.launch.deny_io_uring {
                    testbed::deny_io_uring(&mut cmd);
                }
            }
            Impl::WireguardGo => {
                let _ = std::fs::remove_file(uapi_socket(&self.conf.ifname));
                cmd.arg(&self.conf.ifname)
                    .env("WG_PROCESS_FOREGROUND", "1")
                    .env(
                        "LOG_LEVEL",
                        if self.conf.verbose {
                            "verbose"
                        } else {
                            "error"
                        },
                    );
            }
            Impl::BoringtunCli => {
                let _ = std::fs::remove_file(uapi_socket(&self.conf.ifname));
                cmd.args([
                    "--foreground",
                    "--disable-drop-privileges",
                    "--verbosity",
                    if self.conf.verbose { "debug" } else { "error" },
                    &self.conf.ifname,
                ]);
            }
        }
        cmd.stdout(log).stderr(log2);
        self.proc = Some(Proc::spawn(cmd));
        match self.imp {
            Impl::Ringscale => self.wait_ready(Duration::from_secs(10)),
            Impl::WireguardGo | Impl::BoringtunCli => {
                let sock = uapi_socket(&self.conf.ifname);
                let up = testbed::wait_until(Duration::from_secs(10), || {
                    sock.exists() || !self.is_running()
                });
                if !up || !self.is_running() {
                    panic!("{} did not open {sock:?}\n{}", self.imp, self.log_tail(40));
                }
                self.configure_uapi();
                self.wait_ready(Duration::from_secs(10));
            }
        }
    }

    /// `wg setconf` plus `ip` for what wg-quick would do.
    fn configure_uapi(&self) {
        let cfg = self.dir.path.join("wg-setconf.conf");
        std::fs::write(&cfg, self.conf.wg_setconf()).expect("write wg setconf file");
        let ifname = &self.conf.ifname;
        run(self.ns_cmd("wg").arg("setconf").arg(ifname).arg(&cfg));
        for a in &self.conf.addresses {
            let mut c = self.ns_cmd("ip");
            c.args(["addr", "add", a, "dev", ifname]);
            if a.contains(':') {
                c.arg("nodad");
            }
            run(&mut c);
        }
        run(self.ns_cmd("ip").args([
            "link",
            "set",
            "dev",
            ifname,
            "mtu",
            &self.conf.mtu.to_string(),
        ]));
        run(self.ns_cmd("ip").args(["link", "set", "dev", ifname, "up"]));
        for p in &self.conf.peers {
            for net in &p.allowed_ips {
                run(self
                    .ns_cmd("ip")
                    .args(["route", "replace", net, "dev", ifname]));
            }
        }
    }

    /// Up, addressed, and listening — or a panic that carries the node's log.
    fn wait_ready(&mut self, timeout: Duration) {
        let ifname = self.conf.ifname.clone();
        let first_addr = self
            .conf
            .addresses
            .first()
            .map(|a| a.split('/').next().unwrap_or("").to_string());
        let port = format!(":{}", self.conf.listen_port);
        let mut last = String::new();
        let ok = testbed::wait_until(timeout, || {
            if !self.is_running() {
                return true;
            }
            let link = self
                .ns_cmd("ip")
                .args(["-o", "addr", "show", "dev", &ifname])
                .output();
            let link = match link {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
                _ => {
                    last = format!("no interface {ifname}");
                    return false;
                }
            };
            if let Some(a) = &first_addr {
                if !link.contains(&format!(" {a}/")) {
                    last = format!("{ifname} lacks address {a}: {link}");
                    return false;
                }
            }
            let flags = self
                .ns_cmd("ip")
                .args(["-o", "link", "show", "dev", &ifname])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            if !flags.contains(",UP") && !flags.contains("<UP") {
                last = format!("{ifname} not up: {flags}");
                return false;
            }
            let ss = self
                .ns_cmd("ss")
                .args(["-Hunl"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            if !ss.lines().any(|l| {
                l.split_whitespace()
                    .nth(3)
                    .is_some_and(|local| local.ends_with(&port))
            }) {
                last = format!("nothing listens on UDP {port}: {ss}");
                return false;
            }
            true
        });
        if let Some(st) = self.exited() {
            panic!(
                "{} exited during start-up ({st})\n{}",
                self.imp,
                self.log_tail(60)
            );
        }
        if !ok {
            panic!(
                "{} not ready after {timeout:?}: {last}\n{}",
                self.imp,
                self.log_tail(60)
            );
        }
    }

    /// Stops the process: SIGTERM, and SIGKILL after `grace`. Returns the exit status
    /// and whether it exited by itself in time.
    pub fn stop(&mut self, grace: Duration) -> Option<(std::process::ExitStatus, bool)> {
        let r = self.proc.as_mut().map(|p| p.terminate(grace));
        self.proc = None;
        if self.imp != Impl::Ringscale {
            // wireguard-go leaves its socket behind when killed; never let the next
            // start mistake it for a live one.
            let _ = std::fs::remove_file(uapi_socket(&self.conf.ifname));
        }
        r
    }

    /// Stops and starts again with the same configuration (same keys): the new process
    /// has no sessions, so peers must handshake anew.
    pub fn restart(&mut self) {
        self.restart_with(self.conf.clone());
    }

    /// Stops and starts again with a new configuration.
    pub fn restart_with(&mut self, conf: NodeConf) {
        if let Some((st, clean)) = self.stop(Duration::from_secs(5)) {
            assert!(
                clean,
                "{} did not exit within 5 s of SIGTERM\n{}",
                self.imp,
                self.log_tail(40)
            );
            // Only our daemon promises a clean exit code; the others may report the
            // signal.
            if self.imp == Impl::Ringscale {
                assert!(
                    st.success(),
                    "ringscale exited with {st} on SIGTERM\n{}",
                    self.log_tail(40)
                );
            }
        }
        // The interface must be gone before the next process creates it again.
        let ifname = self.conf.ifname.clone();
        let gone = testbed::wait_until(Duration::from_secs(5), || {
            !self
                .ns_cmd("ip")
                .args(["link", "show", "dev", &ifname])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        assert!(
            gone,
            "{} left {ifname} behind after exiting\n{}",
            self.imp,
            self.log_tail(40)
        );
        self.conf = conf;
        self.launch();
    }
}

impl Drop for WgNode {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Addresses of the standard two-node topology. Each node lives in its own namespace,
/// so the same addresses can be used by every test at once.
pub mod addr {
    /// The veth underlay.
    pub const UNDER_A4: &str = "10.99.0.1";
    pub const UNDER_B4: &str = "10.99.0.2";
    pub const UNDER_A6: &str = "fd99::1";
    pub const UNDER_B6: &str = "fd99::2";
    /// Inside the tunnel.
    pub const TUN_A4: &str = "10.77.0.1";
    pub const TUN_B4: &str = "10.77.0.2";
    pub const TUN_A6: &str = "fd77::1";
    pub const TUN_B6: &str = "fd77::2";
    pub const PORT_A: u16 = 51820;
    pub const PORT_B: u16 = 51821;
}

/// Two namespaces joined by a veth pair, a WireGuard node in each, peered with each
/// other (A knows B's endpoint and vice versa; no keepalive unless asked for).
/// Field order matters: the nodes are dropped before their namespaces.
pub struct Pair {
    pub a: WgNode,
    pub b: WgNode,
    pub ns_a: Netns,
    pub ns_b: Netns,
    pub key_a: Keypair,
    pub key_b: Keypair,
}

impl Pair {
    pub fn new(imp_a: Impl, imp_b: Impl) -> Pair {
        Pair::with(imp_a, imp_b, |_, _| {})
    }

    /// Like `new`, with a chance to adjust both configurations before start.
    pub fn with(
        imp_a: Impl,
        imp_b: Impl,
        adjust: impl FnOnce(&mut NodeConf, &mut NodeConf),
    ) -> Pair {
        Pair::with_launch(imp_a, imp_b, Launch::default(), Launch::default(), adjust)
    }

    /// Like `with`, starting each node as its [`Launch`] says.
    pub fn with_launch(
        imp_a: Impl,
        imp_b: Impl,
        launch_a: Launch,
        launch_b: Launch,
        adjust: impl FnOnce(&mut NodeConf, &mut NodeConf),
    ) -> Pair {
        use addr::*;
        let ns_a = Netns::new("wga");
        let ns_b = Netns::new("wgb");
        testbed::link(
            &ns_a,
            &[&format!("{UNDER_A4}/24"), &format!("{UNDER_A6}/64")],
            &ns_b,
            &[&format!("{UNDER_B4}/24"), &format!("{UNDER_B6}/64")],
        );
        let (key_a, key_b) = (Keypair::generate(), Keypair::generate());
        let tag = testbed::unique_tag();
        let mut conf_a = NodeConf {
            ifname: format!("wa{tag}"),
            private_key: key_a.private.clone(),
            listen_port: PORT_A,
            addresses: vec![format!("{TUN_A4}/24"), format!("{TUN_A6}/64")],
            mtu: 1280,
            peers: vec![PeerConf {
                public_key: key_b.public.clone(),
                allowed_ips: vec![format!("{TUN_B4}/32"), format!("{TUN_B6}/128")],
                endpoint: Some(format!("{UNDER_B4}:{PORT_B}")),
                persistent_keepalive: None,
            }],
            verbose: true,
        };
        let mut conf_b = NodeConf {
            ifname: format!("wb{tag}"),
            private_key: key_b.private.clone(),
            listen_port: PORT_B,
            addresses: vec![format!("{TUN_B4}/24"), format!("{TUN_B6}/64")],
            mtu: 1280,
            peers: vec![PeerConf {
                public_key: key_a.public.clone(),
                allowed_ips: vec![format!("{TUN_A4}/32"), format!("{TUN_A6}/128")],
                endpoint: Some(format!("{UNDER_A4}:{PORT_A}")),
                persistent_keepalive: None,
            }],
            verbose: true,
        };
        adjust(&mut conf_a, &mut conf_b);
        let a = WgNode::start_with(&ns_a, imp_a, conf_a, launch_a);
        let b = WgNode::start_with(&ns_b, imp_b, conf_b, launch_b);
        Pair {
            a,
            b,
            ns_a,
            ns_b,
            key_a,
            key_b,
        }
    }

    /// Both nodes' recent logs, for assertion messages.
    pub fn logs(&self) -> String {
        format!("{}{}", self.a.log_tail(40), self.b.log_tail(40))
    }
}

/// Writes `text` to a file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {p:?}: {e}"));
    p
}
