//! Builds a topology for one case: namespaces, the underlay, a tunnel end in each
//! namespace, and checks that traffic flows before any measurement.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ringscale_tests::testbed::{link, Netns, Proc, TempDir};

use crate::cases::{Case, Topology, Tunnel};
use crate::cleanup;
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

/// One end of the network: a namespace and how its processes are scheduled.
pub struct Host {
    pub ns: Netns,
    pub cpus: Option<String>,
    pub nice: Option<i32>,
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
}

/// A running tunnel interface whose counters the benchmark reads.
pub struct TunIface {
    /// 0 = client host, 1 = server host.
    pub host: usize,
    pub name: String,
}

/// A built topology. Field order is drop order: processes die before their namespaces.
pub struct Bed {
    /// The tunnel processes, whose CPU time is charged to the case.
    pub tunnel: Vec<Proc>,
    pub client: Host,
    pub server: Host,
    /// The server's address as the client dials it (through the tunnel if there is one).
    pub target: String,
    pub tun_ifaces: Vec<TunIface>,
    uapi_sockets: Vec<PathBuf>,
    pub logs: TempDir,
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Kill tunnels first so they cannot recreate their sockets, then the rest goes
        // with the field drops (namespaces kill what is left inside them, by PID).
        self.tunnel.clear();
        for s in &self.uapi_sockets {
            let _ = std::fs::remove_file(s);
        }
        cleanup::forget_netns(&self.client.ns.name);
        cleanup::forget_netns(&self.server.ns.name);
    }
}

impl Bed {
    pub fn hosts(&self) -> [&Host; 2] {
        [&self.client, &self.server]
    }

    pub fn tunnel_pids(&self) -> Vec<u32> {
        self.tunnel.iter().map(Proc::pid).collect()
    }

    /// An error if a tunnel process has exited, with the end of its log.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for (i, p) in self.tunnel.iter_mut().enumerate() {
            if let Some(status) = p.exited() {
                let log = self.logs.path.join(format!("tunnel{i}.log"));
                return Err(format!(
                    "tunnel process {i} exited ({status}):\n{}",
                    sys::tail(&log, 10)
                ));
            }
        }
        Ok(())
    }
}

// Addresses live only inside the namespaces built here.
const UNDERLAY: [&str; 2] = ["10.200.0.1", "10.200.0.2"];
const OVERLAY: [&str; 2] = ["10.201.0.1", "10.201.0.2"];
const WG_PORT: u16 = 51820;

pub fn build(topology: Topology, case: &Case, setup: &Setup) -> Result<Bed, String> {
    match topology {
        Topology::PointToPoint => point_to_point(case, setup),
    }
}

fn point_to_point(case: &Case, setup: &Setup) -> Result<Bed, String> {
    let client_ns = Netns::new("bcl");
    cleanup::register_netns(&client_ns.name);
    let server_ns = Netns::new("bsv");
    cleanup::register_netns(&server_ns.name);
    let (cpus_c, cpus_s) = match &setup.pin {
        Some((c, s)) => (Some(c.clone()), Some(s.clone())),
        None => (None, None),
    };
    let mut bed = Bed {
        tunnel: Vec::new(),
        client: Host {
            ns: client_ns,
            cpus: cpus_c,
            nice: setup.nice,
        },
        server: Host {
            ns: server_ns,
            cpus: cpus_s,
            nice: setup.nice,
        },
        target: String::new(),
        tun_ifaces: Vec::new(),
        uapi_sockets: Vec::new(),
        logs: TempDir::new("bench"),
    };
    let (veth_c, veth_s) = link(
        &bed.client.ns,
        &[&format!("{}/24", UNDERLAY[0])],
        &bed.server.ns,
        &[&format!("{}/24", UNDERLAY[1])],
    );
    if matches!(case.tunnel, Tunnel::None) {
        for (host, veth) in [(&bed.client, &veth_c), (&bed.server, &veth_s)] {
            run(host
                .ns
                .command("ip")
                .args(["link", "set", veth, "mtu", &case.mtu.to_string()]))?;
        }
        bed.target = UNDERLAY[1].to_string();
    } else {
        let keys = [&setup.client_key, &setup.server_key];
        for side in 0..2 {
            let other = 1 - side;
            let end = End {
                ifname: format!("rsb{}", ringscale_tests::testbed::unique_tag()),
                private_key: &keys[side].private,
                peer_public_key: &keys[other].public,
                address: format!("{}/24", OVERLAY[side]),
                peer_allowed_ips: format!("{}/32", OVERLAY[other]),
                peer_endpoint: format!("{}:{WG_PORT}", UNDERLAY[other]),
                mtu: case.mtu,
            };
            start_tunnel(&mut bed, side, &case.tunnel, &end, setup.tools)?;
        }
        bed.target = OVERLAY[1].to_string();
    }
    // The first ping also completes the WireGuard handshake.
    let target = bed.target.clone();
    let up = wait_until(Duration::from_secs(15), || ping(&bed.client.ns, &target))?;
    bed.check_alive()?;
    if !up {
        return Err(format!(
            "no ping from the client namespace to {target} within 15 s{}",
            log_tails(&bed)
        ));
    }
    Ok(bed)
}

fn log_tails(bed: &Bed) -> String {
    let mut s = String::new();
    for i in 0..bed.tunnel.len() {
        let log = bed.logs.path.join(format!("tunnel{i}.log"));
        let t = sys::tail(&log, 5);
        if !t.is_empty() {
            s.push_str(&format!("\n  tunnel {i} log:\n{t}"));
        }
    }
    s
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

fn start_tunnel(
    bed: &mut Bed,
    side: usize,
    tunnel: &Tunnel,
    end: &End,
    tools: &Tools,
) -> Result<(), String> {
    let idx = bed.tunnel.len();
    let log_path = bed.logs.path.join(format!("tunnel{idx}.log"));
    let host = if side == 0 { &bed.client } else { &bed.server };
    let mut cmd = match tunnel {
        Tunnel::None => return Ok(()),
        Tunnel::WireguardGo => {
            let bin = tools.wireguard_go.as_ref().map_err(Clone::clone)?;
            let mut c = host.command(bin);
            // -f: stay in the foreground so the PID we hold is the one doing the work.
            c.args(["-f", &end.ifname])
                .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
            c
        }
        Tunnel::Boringtun { threads } => {
            let bin = tools.boringtun.as_ref().map_err(Clone::clone)?;
            let mut c = host.command(bin);
            c.args(["-f", "--disable-drop-privileges", "-t"])
                .arg(threads.to_string())
                .arg(&end.ifname);
            c
        }
        Tunnel::Ringscale { daemon_args } => {
            let bin = tools.ringscale.as_ref().map_err(Clone::clone)?;
            let conf = bed.logs.path.join(format!("ringscale{side}.conf"));
            write_private(&conf, &end.wg_quick_conf())?;
            // The binary picks its role from argv[0]: as `ringscale` it takes the role
            // as first argument (busybox style); under any other file name it is run
            // through a `tailscaled` symlink, as an installed copy would be.
            let mut c = if bin.file_name().is_some_and(|n| n == "ringscale") {
                let mut c = host.command(bin);
                c.arg("tailscaled");
                c
            } else {
                let link = bed.logs.path.join("tailscaled");
                if !link.exists() {
                    let target = std::fs::canonicalize(bin).map_err(|e| format!("{bin:?}: {e}"))?;
                    std::os::unix::fs::symlink(&target, &link)
                        .map_err(|e| format!("symlink {link:?}: {e}"))?;
                }
                host.command(&link)
            };
            // Private state and LocalAPI socket: two daemons run at once.
            c.arg("--wg-config")
                .arg(&conf)
                .args(["--tun", &end.ifname])
                .arg("--statedir")
                .arg(bed.logs.path.join(format!("state{side}")))
                .arg("--socket")
                .arg(bed.logs.path.join(format!("tailscaled{side}.sock")))
                .args(daemon_args);
            c
        }
    };
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{log_path:?}: {e}"))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    cmd.stdout(log).stderr(log2);
    bed.tunnel.push(Proc::spawn(cmd));
    bed.tun_ifaces.push(TunIface {
        host: side,
        name: end.ifname.clone(),
    });

    let host = if side == 0 { &bed.client } else { &bed.server };
    match tunnel {
        Tunnel::WireguardGo | Tunnel::Boringtun { .. } => {
            // Both serve the cross-platform UAPI on this socket; `wg` finds it by name.
            let sock = PathBuf::from(format!("/var/run/wireguard/{}.sock", end.ifname));
            cleanup::register_file(sock.clone());
            bed.uapi_sockets.push(sock.clone());
            let proc_ = bed.tunnel.last_mut().expect("just pushed");
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
            let conf = bed.logs.path.join(format!("wg{side}.conf"));
            write_private(&conf, &end.wg_conf())?;
            let wg = tools.wg.as_path();
            run(host
                .ns
                .command(wg)
                .arg("setconf")
                .arg(&end.ifname)
                .arg(&conf))?;
            run(host
                .ns
                .command("ip")
                .args(["addr", "add", &end.address, "dev", &end.ifname]))?;
            run(host.ns.command("ip").args([
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
            let ns = &host.ns;
            let proc_ = bed.tunnel.last_mut().expect("just pushed");
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
        Tunnel::None => {}
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
