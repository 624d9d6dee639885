//! Packet marks: the bits of the firewall mark Tailscale uses (Go's tsconst), shared by
//! the policy rules and nftables chains (ringscale-host) and the daemon's own sockets,
//! which carry the bypass mark so they never loop into the tunnel.

use std::io;
use std::os::fd::AsRawFd;

/// Bits of the packet mark Tailscale uses, and its two values.
pub const FWMARK_MASK: u32 = 0xff0000;
/// Set on packets that came in from the tunnel and are being forwarded.
pub const SUBNET_ROUTE_MARK: u32 = 0x40000;
/// Set (SO_MARK) on the daemon's own sockets so they bypass table 52.
pub const BYPASS_MARK: u32 = 0x80000;

/// Sets the bypass mark (SO_MARK) on one of the daemon's own sockets, so that the
/// rules at 5210–5250 route it by the main table and never into the tunnel. Needs
/// CAP_NET_ADMIN; without it the failure is logged (the rules then cannot protect
/// this socket, as in Go, which falls back to SO_BINDTODEVICE).
pub fn mark_socket(sock: &impl AsRawFd) {
    if let Err(e) = set_bypass_mark(sock) {
        log::warn!("SO_MARK on socket: {e} (traffic may loop through an exit node)");
    }
}

/// Sets the bypass mark (SO_MARK) on `sock`; fails without CAP_NET_ADMIN. Callers
/// decide how much that failure matters ([`mark_socket`] warns).
pub fn set_bypass_mark(sock: &impl AsRawFd) -> io::Result<()> {
    let mark = BYPASS_MARK as libc::c_int;
    // SAFETY: setsockopt reads an int from a valid pointer for the given length.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
