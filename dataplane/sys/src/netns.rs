//! Network namespaces for the calling thread (tests and the benchmark's helpers).
//! unshare(2) and setns(2) change only the calling thread's namespace; the processes it
//! spawns afterwards inherit it.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Moves the calling thread into a new, empty network namespace (needs CAP_SYS_ADMIN).
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare(2) takes a flag word; it changes only this thread's namespaces.
    crate::cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) }).map(drop)
}

/// Moves the calling thread into the network namespace open as `ns` (e.g. a file under
/// /var/run/netns or /proc/PID/ns/net).
pub fn enter_net(ns: &impl AsFd) -> io::Result<()> {
    // SAFETY: setns(2) with a descriptor we borrow for the call; it changes only this
    // thread's namespace.
    crate::cvt(unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}
