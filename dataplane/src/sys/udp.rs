//! The WireGuard UDP socket: one dual-stack socket (IPv4 peers appear as v4-mapped
//! IPv6 addresses on it), with large buffers so bursts are not dropped by the kernel.

use super::cvt;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};

/// Buffer size asked for; Debian's default 208 KiB drops bursts at these rates
/// (baselines.md: ~13 % loss for tunnels that keep the default).
const SOCKET_BUFFER: libc::c_int = 7 << 20;

fn setsockopt_int(fd: i32, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to an int of the stated size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    })
    .map(drop)
}

/// Binds the WireGuard port on all addresses, IPv6 and IPv4 on one socket where the
/// host has IPv6, IPv4 only otherwise.
pub fn bind(port: u16) -> io::Result<UdpSocket> {
    let sock = match bind_family(libc::AF_INET6, port) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => bind_family(libc::AF_INET, port)?,
        Err(e) => return Err(e),
    };
    let fd = sock.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // The FORCE variants exceed net.core.*mem_max but need CAP_NET_ADMIN.
        if setsockopt_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
    Ok(sock)
}

fn bind_family(family: i32, port: u16) -> io::Result<UdpSocket> {
    // SAFETY: plain socket(2); checked before use and owned by the UdpSocket below.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    let addr: SocketAddr = if family == libc::AF_INET6 {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        (Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    };
    bind_std(fd, addr)?;
    Ok(sock)
}

fn bind_std(fd: i32, addr: SocketAddr) -> io::Result<()> {
    // SAFETY: sockaddr_in/sockaddr_in6 are built fully and passed with their sizes.
    unsafe {
        match addr {
            SocketAddr::V4(a) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_port = a.port().to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                cvt(libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of_val(&sa) as u32,
                ))?;
            }
            SocketAddr::V6(a) => {
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as u16;
                sa.sin6_port = a.port().to_be();
                sa.sin6_addr.s6_addr = a.ip().octets();
                cvt(libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of_val(&sa) as u32,
                ))?;
            }
        }
    }
    Ok(())
}

/// The address as peers know it: v4-mapped IPv6 addresses become plain IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// The address to send to on `sock`: IPv4 destinations become v4-mapped on a
/// dual-stack socket.
pub fn for_socket(sock_is_v6: bool, addr: SocketAddr) -> SocketAddr {
    match (sock_is_v6, addr) {
        (true, SocketAddr::V4(a)) => SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port()),
        _ => addr,
    }
}
