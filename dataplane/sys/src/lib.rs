//! Thin wrappers over the Linux interfaces ringscale uses: the TUN device, UDP sockets
//! with GSO/GRO, rtnetlink, getifaddrs, getrandom and socket marks; process, credential,
//! signal and namespace calls; the AVX-512 dispatch of the checksum kernel; and a few
//! only the tests and the benchmark use (a counting allocator, packet capture, a
//! seccomp filter), kept here so that they too need no `unsafe`. Besides the cipher
//! (`ringscale-aead`), this is the only crate allowed `unsafe`: every other crate says
//! `#![forbid(unsafe_code)]` and CI checks it (packaging/unsafe-gate.sh). Each unsafe
//! block carries a SAFETY comment; what leaves this crate is a safe interface.

pub mod alloc;
pub mod checksum;
pub mod cred;
pub mod eventfd;
pub mod fwmark;
pub mod ifaddrs;
pub mod netlink;
pub mod netns;
pub mod packet;
pub mod process;
pub mod random;
pub mod seccomp;
pub mod signal;
pub mod tcp;
pub mod tun;
pub mod udp;

pub use netlink::IfAddr;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// A fresh non-blocking, close-on-exec TCP socket of `addr`'s family, for callers that
/// must set options (a mark, FREEBIND) before connect(2) or bind(2).
pub fn tcp_socket_for(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)
}

/// A fresh close-on-exec socket(2) of any kind (e.g. an ICMP ping socket).
pub fn socket(
    family: libc::c_int,
    kind: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = cvt(unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: `fd` is a fresh socket nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// setsockopt(2) with an int value (SO_RCVBUFFORCE, IP_FREEBIND, ...).
pub fn set_int_option(
    sock: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to an int of the stated size, valid for the call.
    cvt(unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
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
