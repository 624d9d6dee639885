//! Everything the benchmark creates on the host (namespaces, UAPI sockets) is registered
//! here so it is removed on every way out: normal drop, an error, Ctrl-C/SIGTERM, and a
//! panic (the release profile aborts on panic, so destructors would not run; the panic
//! hook does the removal instead).
//!
//! Ctrl-C does not kill the benchmark: the handler only raises a flag that every wait
//! loop checks, so the run unwinds through its destructors. The handler is one-shot
//! (SA_RESETHAND): a second Ctrl-C terminates at once.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

enum Resource {
    Netns(String),
    File(std::path::PathBuf),
}

static REGISTRY: Mutex<Vec<Resource>> = Mutex::new(Vec::new());

/// The autogroup niceness found at start, restored by `remove_all`.
static AUTOGROUP_NICE: Mutex<Option<i32>> = Mutex::new(None);

/// Installs the signal handlers and the panic hook. Call once, first thing.
pub fn install() {
    let signals = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    if let Err(e) = ringscale_sys::signal::raise_flag_on(&signals, &INTERRUPTED) {
        eprintln!("bench: installing signal handlers: {e}");
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("bench: panic, removing namespaces and processes");
        remove_all();
    }));
}

/// An error once the user has asked to stop.
pub fn check_interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn register_netns(name: &str) {
    lock().push(Resource::Netns(name.to_string()));
}

pub fn register_file(path: std::path::PathBuf) {
    lock().push(Resource::File(path));
}

/// Forgets a namespace that its owner has removed itself.
pub fn forget_netns(name: &str) {
    lock().retain(|r| !matches!(r, Resource::Netns(n) if n == name));
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Resource>> {
    // A poisoned lock still holds a usable list; cleanup must not give up on it.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes whatever is still registered: processes in our namespaces (by PID), the
/// namespaces, stray files; and restores the autogroup niceness.
pub fn remove_all() {
    restore_autogroup_nice();
    let items = std::mem::take(&mut *lock());
    for r in items {
        match r {
            Resource::Netns(name) => remove_netns(&name),
            Resource::File(p) => {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// With autogroup scheduling (Debian's default), CPU is shared between sessions first
/// and per-process nice only counts inside one session; so a niceness that should
/// weigh against other people's builds must be set on our session's autogroup. The old
/// value is restored on exit.
pub fn set_autogroup_nice(nice: i32) -> Result<(), String> {
    const PATH: &str = "/proc/self/autogroup";
    let Ok(text) = std::fs::read_to_string(PATH) else {
        return Ok(()); // no autogroups in this kernel: process nice is all there is.
    };
    // "/autogroup-11 nice 0"
    let old: i32 = text
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("{PATH}: unexpected {text:?}"))?;
    std::fs::write(PATH, nice.to_string()).map_err(|e| format!("{PATH}: {e}"))?;
    let mut saved = AUTOGROUP_NICE.lock().unwrap_or_else(|e| e.into_inner());
    saved.get_or_insert(old);
    Ok(())
}

fn restore_autogroup_nice() {
    let saved = AUTOGROUP_NICE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(old) = saved {
        let _ = std::fs::write("/proc/self/autogroup", old.to_string());
    }
}

/// Kills the processes inside a namespace by PID and deletes it.
pub fn remove_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // A PID that lives in a namespace this run created.
                let _ = ringscale_sys::process::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(std::process::Stdio::null())
        .status();
    // The namespace's own resolv.conf, which the test bed's `Netns::new` made so that a
    // tailnet daemon's DNS setup never touches the host's /etc/resolv.conf.
    let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(name));
}
