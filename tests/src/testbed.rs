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
        let name = format!("rs-{label}-{}", unique_tag());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
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
                    // SAFETY: plain kill(2) on a PID that lives in our own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
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
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.child.id() as i32, sig) };
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
    let p = target.join(profile).join("ringscale");
    assert!(
        p.exists(),
        "{p:?} not found: run `cargo build -p ringscale` first"
    );
    p
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
