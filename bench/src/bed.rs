//! Builds a topology for one case: namespaces, the underlay, a tunnel end in each
//! namespace that carries one, and checks that traffic flows before any measurement.
//!
//! Hosts are numbered: 0 runs the iperf3 client, 1 the iperf3 server, further hosts
//! (the exit node) only forward. Addresses live only inside the namespaces built here.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ringscale_tests::testbed::{link, unique_tag, Lan, Netns, Proc, TempDir};

use crate::cases::{Case, TailnetPath, Topology, Tunnel};
use crate::cleanup;
use crate::hub::{self, Hub};
use crate::sys::{self, run, wait_until};
use crate::tools::Tools;

/// A WireGuard key pair in base64, as `wg` prints it.
#[derive(Clone, Debug)]
pub struct KeyPair {
    pub private: String,
    pub public: String,
}

/// Everything a bed needs besides the case: the same keys for every tunnel.
pub struct Setup<'a> {
    pub tools: &'a Tools,
    pub client_key: KeyPair,
    pub server_key: KeyPair,
    /// CPU lists for `taskset -c`, client side and server side; `None` leaves placement
    /// to the scheduler.
    pub pin: Option<(String, String)>,
    /// Niceness for tunnels and iperf3 (negative: ahead of other work on the machine).
    pub nice: Option<i32>,
}

/// One namespace of the network and how its processes are scheduled.
pub struct Host {
    pub ns: Netns,
    pub cpus: Option<String>,
    pub nice: Option<i32>,
    /// What the host is in the topology: client, server, exit.
    pub role: &'static str,
}

impl Host {
    /// A command inside the namespace, pinned to the host's CPUs and reniced when asked.
    /// `ip netns exec`, `nice` and `taskset` all exec, so the PID is the program's own.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(n) = self.nice {
            argv.extend(["nice".into(), "-n".into(), n.to_string().into()]);
        }
        if let Some(cpus) = &self.cpus {
            argv.extend(["taskset".into(), "-c".into(), cpus.into()]);
        }
        argv.push(program.as_ref().to_os_string());
        let mut c = self.ns.command(&argv[0]);
        c.args(&argv[1..]);
        c
    }

    fn sh(&self, script: &str) -> Result<(), String> {
        run(self.ns.command("sh").arg("-c").arg(script)).map(|_| ())
    }
}

/// A running tunnel interface whose counters the benchmark reads.
pub struct TunIface {
    /// Index into `Bed::hosts`.
    pub host: usize,
    pub name: String,
}

/// A tunnel process, whose CPU time and memory are charged to the case.
pub struct TunnelProc {
    pub proc: Proc,
    /// Index into `Bed::hosts`.
    pub host: usize,
    pub log: PathBuf,
}

/// A built topology. Field order is drop order after `Drop::drop`: processes die
/// before their namespaces.
pub struct Bed {
    pub tunnel: Vec<TunnelProc>,
    /// Control and DERP servers of the tailnet cases (threads in the LAN hub namespace).
    pub hub: Option<Hub>,
    pub hosts: Vec<Host>,
    /// The LAN of the tailnet and exit-node topologies (its hub namespace holds the bridge).
    lan: Option<Lan>,
    /// The iperf3 server's address as the client dials it.
    pub target: String,
    pub tun_ifaces: Vec<TunIface>,
    uapi_sockets: Vec<PathBuf>,
    /// A relayed case: the DERP server must carry the traffic, or the numbers are not
    /// what the case claims.
    pub relayed: bool,
    pub logs: TempDir,
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Kill tunnels first so they cannot recreate their sockets, stop the in-process
        // servers (their threads live in the hub namespace), then the rest goes with the
        // field drops (namespaces kill what is left inside them, by PID).
        self.tunnel.clear();
        self.hub = None;
        for s in &self.uapi_sockets {
            let _ = std::fs::remove_file(s);
        }
        for h in &self.hosts {
            cleanup::forget_netns(&h.ns.name);
        }
        if let Some(lan) = &self.lan {
            cleanup::forget_netns(&lan.hub.name);
        }
    }
}

impl Bed {
    fn new() -> Bed {
        Bed {
            tunnel: Vec::new(),
            hub: None,
            hosts: Vec::new(),
            lan: None,
            target: String::new(),
            tun_ifaces: Vec::new(),
            uapi_sockets: Vec::new(),
            relayed: false,
            logs: TempDir::new("bench"),
        }
    }

    /// Adds a host; `side` 0 gets the client CPU set, 1 the server set.
    fn add_host(&mut self, ns: Netns, role: &'static str, side: usize, setup: &Setup) -> usize {
        cleanup::register_netns(&ns.name);
        let cpus = setup
            .pin
            .as_ref()
            .map(|(c, s)| if side == 0 { c.clone() } else { s.clone() });
        self.hosts.push(Host {
            ns,
            cpus,
            nice: setup.nice,
            role,
        });
        self.hosts.len() - 1
    }

    fn new_lan(&mut self, label: &str, prefix: &str) -> &Lan {
        let lan = Lan::new(label, prefix);
        cleanup::register_netns(&lan.hub.name);
        self.lan.insert(lan)
    }

    pub fn client(&self) -> &Host {
        &self.hosts[0]
    }

    pub fn server(&self) -> &Host {
        &self.hosts[1]
    }

    /// Where the tailnet node on `host` keeps its config, state and LocalAPI socket
    /// (`tailscaled.sock`).
    pub fn tailnet_node_dir(&self, host: usize) -> PathBuf {
        self.logs.path.join(format!("node{host}"))
    }

    pub fn tunnel_pids(&self) -> Vec<u32> {
        self.tunnel.iter().map(|t| t.proc.pid()).collect()
    }

    /// An error if a tunnel process has exited, with the end of its log.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for t in self.tunnel.iter_mut() {
            if let Some(status) = t.proc.exited() {
                return Err(format!(
                    "tunnel process on the {} host exited ({status}):\n{}",
                    self.hosts[t.host].role,
                    sys::tail(&t.log, 10)
                ));
            }
        }
        Ok(())
    }

    fn log_tails(&self) -> String {
        let mut s = String::new();
        for t in &self.tunnel {
            let tail = sys::tail(&t.log, 8);
            if !tail.is_empty() {
                s.push_str(&format!(
                    "\n  {} tunnel log:\n{tail}",
                    self.hosts[t.host].role
                ));
            }
        }
        s
    }

    /// Pings the target from the client until it answers (the first ping also
    /// completes the WireGuard handshake).
    fn wait_target(&mut self, timeout: Duration) -> Result<(), String> {
        let target = self.target.clone();
        let up = wait_until(timeout, || ping(&self.hosts[0].ns, &target))?;
        self.check_alive()?;
        if !up {
            hold_for_inspection(self);
            return Err(format!(
                "no ping from the client namespace to {target} within {timeout:?}{}",
                self.log_tails()
            ));
        }
        Ok(())
    }
}

/// With `RINGSCALE_BENCH_HOLD=S` in the environment, a bed that failed to come up is
/// kept for S seconds (at most 600) before it is torn down, so its namespaces can be
/// inspected with `ip netns exec`.
fn hold_for_inspection(bed: &Bed) {
    let Some(secs) = std::env::var("RINGSCALE_BENCH_HOLD")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let names: Vec<&str> = bed.hosts.iter().map(|h| h.ns.name.as_str()).collect();
    eprintln!(
        "bench: holding the failed bed for {secs} s: namespaces {}, logs in {}",
        names.join(" "),
        bed.logs.path.display()
    );
    let _ = wait_until(Duration::from_secs(secs.min(600)), || false);
}

// Point-to-point and the static tunnels elsewhere.
const UNDERLAY: [&str; 2] = ["10.200.0.1", "10.200.0.2"];
const OVERLAY: [&str; 2] = ["10.201.0.1", "10.201.0.2"];
const WG_PORT: u16 = 51820;
// The tailnet topology's LAN (hub .1, nodes .2 and .3).
const TAILNET_LAN: &str = "10.202.0";
// The exit-node topology: LAN (hub .1, client .2, exit .3), the exit node's uplink, and
// "the internet" (a documentation address on the internet host's loopback).
const EXIT_LAN: &str = "10.203.0";
const UPLINK: [&str; 2] = ["198.18.0.1", "198.18.0.2"];
pub const INTERNET: &str = "203.0.113.10";
const INTERNET_NET: &str = "203.0.113.0/24";

pub fn build(topology: Topology, case: &Case, setup: &Setup) -> Result<Bed, String> {
    match topology {
        Topology::PointToPoint => point_to_point(case, setup),
        Topology::Tailnet => tailnet(case, setup),
        Topology::ExitNode => exit_node(case, setup),
    }
}

fn point_to_point(case: &Case, setup: &Setup) -> Result<Bed, String> {
    let mut bed = Bed::new();
    let c = bed.add_host(Netns::new("bcl"), "client", 0, setup);
    let s = bed.add_host(Netns::new("bsv"), "server", 1, setup);
    let (veth_c, veth_s) = link(
        &bed.hosts[c].ns,
        &[&format!("{}/24", UNDERLAY[0])],
        &bed.hosts[s].ns,
        &[&format!("{}/24", UNDERLAY[1])],
    );
    match &case.tunnel {
        Tunnel::None => {
            for (host, veth) in [(c, &veth_c), (s, &veth_s)] {
                bed.hosts[host].sh(&format!("ip link set {veth} mtu {}", case.mtu))?;
            }
            bed.target = UNDERLAY[1].to_string();
        }
        Tunnel::RingscaleTailnet { .. } => {
            return Err("tailnet cases need the tailnet or exit-node topology".into())
        }
        _ => {
            static_pair(
                &mut bed,
                case,
                setup,
                [c, s],
                [UNDERLAY[0], UNDERLAY[1]],
                ["", ""],
            )?;
            bed.target = OVERLAY[1].to_string();
        }
    }
    bed.wait_target(Duration::from_secs(15))?;
    Ok(bed)
}

fn tailnet(case: &Case, setup: &Setup) -> Result<Bed, String> {
    let mut bed = Bed::new();
    let lan = bed.new_lan("bth", TAILNET_LAN);
    let (a_ns, b_ns) = (lan.join("bta", 2), lan.join("btb", 3));
    let hub_addr: IpAddr = lan.hub_addr().into();
    let lan_addr = |h: u8| format!("{TAILNET_LAN}.{h}");
    let a = bed.add_host(a_ns, "client", 0, setup);
    let b = bed.add_host(b_ns, "server", 1, setup);
    match &case.tunnel {
        Tunnel::None => bed.target = lan_addr(3),
        Tunnel::RingscaleTailnet {
            path,
            synthetic_peers,
            ..
        } => {
            start_hub(&mut bed, hub_addr)?;
            if *synthetic_peers > 0 {
                let hub = bed.hub.as_ref().ok_or("no hub")?;
                hub.add_synthetic_peers(*synthetic_peers, TAILNET_LAN)?;
            }
            if *path == TailnetPath::Derp {
                let ip = |h: &str| h.parse::<IpAddr>().map_err(|e| format!("{h}: {e}"));
                hub::block_udp_with(&bed.hosts[a].ns, ip(&lan_addr(3))?)?;
                hub::block_udp_with(&bed.hosts[b].ns, ip(&lan_addr(2))?)?;
                bed.relayed = true;
            }
            start_tailnet_node(&mut bed, a, case, setup, serde_json::json!({}))?;
            start_tailnet_node(&mut bed, b, case, setup, serde_json::json!({}))?;
            let (b_ip, _) = wait_joined(&mut bed, b)?;
            wait_joined(&mut bed, a)?;
            bed.target = b_ip.to_string();
        }
        _ => {
            static_pair(
                &mut bed,
                case,
                setup,
                [a, b],
                [&lan_addr(2), &lan_addr(3)],
                ["", ""],
            )?;
            bed.target = OVERLAY[1].to_string();
        }
    }
    bed.wait_target(hub::JOIN_TIMEOUT)?;
    if matches!(case.tunnel, Tunnel::RingscaleTailnet { .. }) {
        settle_path(&mut bed)?;
    }
    Ok(bed)
}

fn exit_node(case: &Case, setup: &Setup) -> Result<Bed, String> {
    let mut bed = Bed::new();
    let lan = bed.new_lan("bxh", EXIT_LAN);
    let (client_ns, exit_ns) = (lan.join("bxc", 2), lan.join("bxe", 3));
    let hub_addr: IpAddr = lan.hub_addr().into();
    let lan_addr = |h: u8| format!("{EXIT_LAN}.{h}");
    let c = bed.add_host(client_ns, "client", 0, setup);
    let i = bed.add_host(Netns::new("bxi"), "internet", 1, setup);
    let x = bed.add_host(exit_ns, "exit", 1, setup);
    let (uplink, _) = link(
        &bed.hosts[x].ns,
        &[&format!("{}/24", UPLINK[0])],
        &bed.hosts[i].ns,
        &[&format!("{}/24", UPLINK[1])],
    );
    bed.hosts[i].sh(&format!("ip addr add {INTERNET}/32 dev lo"))?;
    bed.hosts[x].sh(&format!(
        "ip route add {INTERNET_NET} via {} && sysctl -qw net.ipv4.ip_forward=1",
        UPLINK[1]
    ))?;
    bed.target = INTERNET.to_string();
    // The NAT of the static cases, as the exit node's own rules do it for the tailnet
    // case: masquerade what leaves through the uplink.
    let masquerade = format!(
        "nft add table ip rsbench && \
         nft add chain ip rsbench post '{{ type nat hook postrouting priority srcnat; }}' && \
         nft add rule ip rsbench post oifname {uplink} masquerade"
    );
    match &case.tunnel {
        Tunnel::None => {
            bed.hosts[x].sh(&masquerade)?;
            bed.hosts[c].sh(&format!("ip route add {INTERNET_NET} via {}", lan_addr(3)))?;
        }
        Tunnel::RingscaleTailnet { path, .. } => {
            if *path == TailnetPath::Derp {
                return Err("the exit-node topology has no relayed case".into());
            }
            start_hub(&mut bed, hub_addr)?;
            start_tailnet_node(
                &mut bed,
                x,
                case,
                setup,
                serde_json::json!({"AdvertiseRoutes": ["0.0.0.0/0", "::/0"]}),
            )?;
            let (_, exit_id) = wait_joined(&mut bed, x)?;
            start_tailnet_node(
                &mut bed,
                c,
                case,
                setup,
                serde_json::json!({ "exitNode": exit_id }),
            )?;
            wait_joined(&mut bed, c)?;
        }
        _ => {
            bed.hosts[x].sh(&masquerade)?;
            // The client sends everything to the exit node (AllowedIPs 0.0.0.0/0); the
            // kernel route sends only the internet's prefix into the tunnel, so the
            // underlay (on the LAN, more specific) needs no policy routing.
            let ifs = static_pair(
                &mut bed,
                case,
                setup,
                [c, x],
                [&lan_addr(2), &lan_addr(3)],
                ["0.0.0.0/0", ""],
            )?;
            bed.hosts[c].sh(&format!("ip route add {INTERNET_NET} dev {}", ifs[0]))?;
        }
    }
    bed.wait_target(hub::JOIN_TIMEOUT)?;
    if matches!(case.tunnel, Tunnel::RingscaleTailnet { .. }) {
        settle_path(&mut bed)?;
    }
    Ok(bed)
}

/// Starts the control and DERP servers in the bed's LAN hub.
fn start_hub(bed: &mut Bed, addr: IpAddr) -> Result<(), String> {
    let lan = bed.lan.as_ref().ok_or("the topology has no LAN")?;
    bed.hub = Some(Hub::start(&lan.hub, addr)?);
    Ok(())
}

/// Starts a WireGuard tunnel between hosts `ends[0]` and `ends[1]` whose underlay
/// addresses are `underlay`; `peer_allowed[i]` overrides what end `i` accepts from the
/// other ("" = the other's overlay /32). Returns the interface names.
fn static_pair(
    bed: &mut Bed,
    case: &Case,
    setup: &Setup,
    ends: [usize; 2],
    underlay: [&str; 2],
    peer_allowed: [&str; 2],
) -> Result<[String; 2], String> {
    let keys = [&setup.client_key, &setup.server_key];
    let mut names = [String::new(), String::new()];
    for side in 0..2 {
        let other = 1 - side;
        let allowed = if peer_allowed[side].is_empty() {
            format!("{}/32", OVERLAY[other])
        } else {
            peer_allowed[side].to_string()
        };
        let end = End {
            ifname: format!("rsb{}", unique_tag()),
            private_key: &keys[side].private,
            peer_public_key: &keys[other].public,
            address: format!("{}/24", OVERLAY[side]),
            peer_allowed_ips: allowed,
            peer_endpoint: format!("{}:{WG_PORT}", underlay[other]),
            mtu: case.mtu,
        };
        start_static(bed, ends[side], &case.tunnel, &end, setup.tools)?;
        names[side] = end.ifname;
    }
    Ok(names)
}

fn ping(ns: &Netns, addr: &str) -> bool {
    ns.command("ping")
        .args(["-c", "1", "-W", "1", addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// One tunnel end's settings, shared by every implementation.
struct End<'a> {
    ifname: String,
    private_key: &'a str,
    peer_public_key: &'a str,
    address: String,
    peer_allowed_ips: String,
    peer_endpoint: String,
    mtu: u32,
}

impl End<'_> {
    /// The `wg setconf` form: keys and peers only.
    fn wg_conf(&self) -> String {
        format!(
            "[Interface]\nPrivateKey = {}\nListenPort = {WG_PORT}\n\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = {}\nEndpoint = {}\n",
            self.private_key, self.peer_public_key, self.peer_allowed_ips, self.peer_endpoint
        )
    }

    /// The wg-quick form ringscale reads: the same plus Address and MTU.
    fn wg_quick_conf(&self) -> String {
        format!(
            "[Interface]\nPrivateKey = {}\nListenPort = {WG_PORT}\nAddress = {}\nMTU = {}\n\n\
             [Peer]\nPublicKey = {}\nAllowedIPs = {}\nEndpoint = {}\n",
            self.private_key,
            self.address,
            self.mtu,
            self.peer_public_key,
            self.peer_allowed_ips,
            self.peer_endpoint
        )
    }
}

/// `ringscale tailscaled` on a host. The binary picks its role from argv[0]: as
/// `ringscale` it takes the role as first argument (busybox style); under any other
/// file name it is run through a `tailscaled` symlink, as an installed copy would be.
fn ringscale_daemon(bed: &Bed, host: usize, bin: &Path) -> Result<Command, String> {
    let host = &bed.hosts[host];
    if bin.file_name().is_some_and(|n| n == "ringscale") {
        let mut c = host.command(bin);
        c.arg("tailscaled");
        return Ok(c);
    }
    let link = bed.logs.path.join("tailscaled");
    if !link.exists() {
        let target = std::fs::canonicalize(bin).map_err(|e| format!("{bin:?}: {e}"))?;
        std::os::unix::fs::symlink(&target, &link).map_err(|e| format!("symlink {link:?}: {e}"))?;
    }
    Ok(host.command(&link))
}

/// Starts `cmd` with its output in a log file and records it as a tunnel process.
fn spawn_tunnel(bed: &mut Bed, host: usize, mut cmd: Command) -> Result<usize, String> {
    let idx = bed.tunnel.len();
    let log = bed
        .logs
        .path
        .join(format!("tunnel{idx}-{}.log", bed.hosts[host].role));
    let file = std::fs::File::create(&log).map_err(|e| format!("{log:?}: {e}"))?;
    let file2 = file.try_clone().map_err(|e| e.to_string())?;
    cmd.stdout(file).stderr(file2);
    bed.tunnel.push(TunnelProc {
        proc: Proc::spawn(cmd),
        host,
        log,
    });
    Ok(idx)
}

fn start_static(
    bed: &mut Bed,
    host: usize,
    tunnel: &Tunnel,
    end: &End,
    tools: &Tools,
) -> Result<(), String> {
    let cmd = match tunnel {
        Tunnel::None | Tunnel::RingscaleTailnet { .. } => {
            return Err("not a static tunnel".into());
        }
        Tunnel::WireguardGo => {
            let bin = tools.wireguard_go.as_ref().map_err(Clone::clone)?;
            let mut c = bed.hosts[host].command(bin);
            // -f: stay in the foreground so the PID we hold is the one doing the work.
            c.args(["-f", &end.ifname])
                .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
            c
        }
        Tunnel::Boringtun { threads } => {
            let bin = tools.boringtun.as_ref().map_err(Clone::clone)?;
            let mut c = bed.hosts[host].command(bin);
            c.args(["-f", "--disable-drop-privileges", "-t"])
                .arg(threads.to_string())
                .arg(&end.ifname);
            c
        }
        Tunnel::Ringscale {
            daemon_args,
            daemon_env,
        } => {
            let bin = tools.ringscale.as_ref().map_err(Clone::clone)?;
            let conf = bed.logs.path.join(format!("ringscale-{host}.conf"));
            write_private(&conf, &end.wg_quick_conf())?;
            let mut c = ringscale_daemon(bed, host, bin)?;
            // Private state and LocalAPI socket: two daemons run at once.
            c.arg("--wg-config")
                .arg(&conf)
                .args(["--tun", &end.ifname])
                .arg("--statedir")
                .arg(bed.logs.path.join(format!("state{host}")))
                .arg("--socket")
                .arg(bed.logs.path.join(format!("tailscaled{host}.sock")))
                .args(daemon_args)
                .envs(daemon_env.iter().map(|(k, v)| (k, v)));
            c
        }
    };
    let idx = spawn_tunnel(bed, host, cmd)?;
    bed.tun_ifaces.push(TunIface {
        host,
        name: end.ifname.clone(),
    });
    let log_path = bed.tunnel[idx].log.clone();

    match tunnel {
        Tunnel::WireguardGo | Tunnel::Boringtun { .. } => {
            // Both serve the cross-platform UAPI on this socket; `wg` finds it by name.
            let sock = PathBuf::from(format!("/var/run/wireguard/{}.sock", end.ifname));
            cleanup::register_file(sock.clone());
            bed.uapi_sockets.push(sock.clone());
            let proc_ = &mut bed.tunnel[idx].proc;
            let ready = wait_until(Duration::from_secs(10), || {
                sock.exists() || proc_.exited().is_some()
            })?;
            if !ready || !sock.exists() {
                return Err(format!(
                    "{} did not create {sock:?}:\n{}",
                    end.ifname,
                    sys::tail(&log_path, 10)
                ));
            }
            let conf = bed.logs.path.join(format!("wg{host}.conf"));
            write_private(&conf, &end.wg_conf())?;
            let ns = &bed.hosts[host].ns;
            run(ns
                .command(tools.wg.as_path())
                .arg("setconf")
                .arg(&end.ifname)
                .arg(&conf))?;
            run(ns
                .command("ip")
                .args(["addr", "add", &end.address, "dev", &end.ifname]))?;
            run(ns.command("ip").args([
                "link",
                "set",
                &end.ifname,
                "mtu",
                &end.mtu.to_string(),
                "up",
            ]))?;
        }
        Tunnel::Ringscale { .. } => {
            // The daemon configures the interface itself (Address, MTU, up) from the
            // config file; wait until it has.
            let want = end
                .address
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let ns = &bed.hosts[host].ns;
            let proc_ = &mut bed.tunnel[idx].proc;
            let ifname = end.ifname.clone();
            let ready = wait_until(Duration::from_secs(10), || {
                proc_.exited().is_some() || iface_has_addr(ns, &ifname, &want)
            })?;
            if let Some(status) = proc_.exited() {
                return Err(format!(
                    "ringscale daemon exited ({status}):\n{}",
                    sys::tail(&log_path, 10)
                ));
            }
            if !ready {
                return Err(format!(
                    "ringscale daemon did not bring up {ifname} with address {want} within 10 s:\n{}",
                    sys::tail(&log_path, 10)
                ));
            }
        }
        Tunnel::None | Tunnel::RingscaleTailnet { .. } => {}
    }
    Ok(())
}

/// Starts a ringscale node joining the tailnet through the bed's hub, with `extra`
/// config-file fields (AdvertiseRoutes, exitNode).
fn start_tailnet_node(
    bed: &mut Bed,
    host: usize,
    case: &Case,
    setup: &Setup,
    extra: serde_json::Value,
) -> Result<(), String> {
    let bin = setup.tools.ringscale.as_ref().map_err(Clone::clone)?;
    let url = bed
        .hub
        .as_ref()
        .ok_or("no hub for a tailnet node")?
        .url
        .clone();
    let hostname = format!("bench-{}", bed.hosts[host].role);
    let dir = bed.tailnet_node_dir(host);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{dir:?}: {e}"))?;
    let conf = dir.join("config.json");
    write_private(&conf, &hub::node_config(&url, &hostname, extra))?;
    let ifname = format!("rsb{}", unique_tag());
    let mut c = ringscale_daemon(bed, host, bin)?;
    // The test DERP server speaks plain HTTP (Go's own knob, which ringscale honours).
    c.env("TS_DEBUG_USE_DERP_HTTP", "1")
        .arg("--config")
        .arg(&conf)
        .arg("--state")
        .arg(dir.join("tailscaled.state"))
        .arg("--socket")
        .arg(dir.join("tailscaled.sock"))
        .args(["--tun", &ifname])
        .args(case.tunnel.daemon_args());
    spawn_tunnel(bed, host, c)?;
    bed.tun_ifaces.push(TunIface { host, name: ifname });
    Ok(())
}

/// Waits until control lists the node on `host` online and its TUN holds its tailnet
/// address; returns that address and the node's stable ID.
fn wait_joined(bed: &mut Bed, host: usize) -> Result<(IpAddr, String), String> {
    let hostname = format!("bench-{}", bed.hosts[host].role);
    let ifname = bed
        .tun_ifaces
        .iter()
        .rev()
        .find(|t| t.host == host)
        .map(|t| t.name.clone())
        .ok_or("no tunnel on that host")?;
    let mut found = None;
    let joined = {
        let hub = bed.hub.as_ref().ok_or("no hub")?;
        let ns = &bed.hosts[host].ns;
        wait_until(hub::JOIN_TIMEOUT, || {
            found = hub.online_node(&hostname);
            found
                .as_ref()
                .is_some_and(|(ip, _)| iface_has_addr(ns, &ifname, &ip.to_string()))
        })?
    };
    bed.check_alive()?;
    match found {
        Some(f) if joined => Ok(f),
        _ => Err(format!(
            "{hostname} did not join the tailnet within {:?}{}",
            hub::JOIN_TIMEOUT,
            bed.log_tails()
        )),
    }
}

/// Tailnet cases: lets the nodes settle on their path before measuring. Direct: both
/// tunnel ends have found the direct path (disco) and pings no longer go through the
/// relay. Relayed: pings do go through the relay.
fn settle_path(bed: &mut Bed) -> Result<(), String> {
    let hub = bed.hub.as_ref().ok_or("no hub")?;
    let target = bed.target.clone();
    let client = &bed.hosts[0].ns;
    if bed.relayed {
        let before = hub.relayed();
        for _ in 0..3 {
            ping(client, &target);
        }
        if hub.relayed() <= before {
            return Err("pings did not go through the DERP relay".into());
        }
        return Ok(());
    }
    let logs: Vec<PathBuf> = bed.tunnel.iter().map(|t| t.log.clone()).collect();
    let direct = wait_until(hub::JOIN_TIMEOUT, || {
        ping(client, &target);
        logs.iter().all(|l| {
            std::fs::read_to_string(l)
                .unwrap_or_default()
                .contains("now reachable directly")
        })
    })?;
    if !direct {
        hold_for_inspection(bed);
        return Err(format!(
            "the nodes found no direct path within {:?}{}",
            hub::JOIN_TIMEOUT,
            bed.log_tails()
        ));
    }
    // Disco may still send the first packets of a flow via DERP right after the
    // switch; wait until pings stop touching the relay.
    let quiet = wait_until(Duration::from_secs(10), || {
        let before = hub.relayed();
        ping(client, &target) && hub.relayed() == before
    })?;
    if !quiet {
        return Err("pings still go through the DERP relay on a direct path".into());
    }
    Ok(())
}

fn iface_has_addr(ns: &Netns, ifname: &str, addr: &str) -> bool {
    ns.command("ip")
        .args(["-o", "addr", "show", "dev", ifname])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|w| w.split('/').next() == Some(addr))
        })
        .unwrap_or(false)
}

/// Writes a file holding a private key, readable by root only.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{path:?}: {e}"))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{path:?}: {e}"))
}

/// Makes a key pair with `wg genkey` / `wg pubkey`.
pub fn gen_keypair(wg: &Path) -> Result<KeyPair, String> {
    use std::io::Write;
    let private = sys::run_text(Command::new(wg).arg("genkey"))?;
    let mut child = Command::new(wg)
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("wg pubkey: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(private.as_bytes())
        .map_err(|e| format!("wg pubkey: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wg pubkey: {e}"))?;
    if !out.status.success() {
        return Err("wg pubkey failed".into());
    }
    Ok(KeyPair {
        private,
        public: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    })
}
