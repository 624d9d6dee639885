//! Thin wrappers over the Linux interfaces ringscale uses: the TUN device, UDP sockets
//! with GSO/GRO, rtnetlink, getifaddrs, getrandom and socket marks. Besides the cipher
//! (`ringscale-aead`), this is the only crate allowed `unsafe`: every other crate says
//! `#![forbid(unsafe_code)]` and CI checks it (packaging/unsafe-gate.sh). Each unsafe
//! block carries a SAFETY comment; what leaves this crate is a safe interface.

pub mod fwmark;
pub mod ifaddrs;
pub mod netlink;
pub mod random;
pub mod tcp;
pub mod tun;
pub mod udp;

pub use netlink::IfAddr;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};

/// A fresh non-blocking, close-on-exec TCP socket of `addr`'s family, for callers that
/// must set options (a mark, FREEBIND) before connect(2) or bind(2).
pub fn tcp_socket_for(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2).
    let fd = cvt(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: `fd` is a fresh socket nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Turns a libc return value into an io::Result, reading errno on -1.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}
