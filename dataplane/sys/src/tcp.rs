//! Outgoing TCP connections that must carry a socket mark from their first packet, and
//! listeners on addresses that may not be usable yet.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::udp::RawAddr;

/// A blocking TCP connection to `addr` within `timeout`, with the bypass mark when
/// `bypass` (the mark must be on before the SYN, hence not
/// `TcpStream::connect_timeout`).
pub fn connect_timeout(addr: SocketAddr, timeout: Duration, bypass: bool) -> io::Result<TcpStream> {
    let stream = TcpStream::from(crate::tcp_socket_for(&addr)?);
    let fd = stream.as_raw_fd();
    if bypass {
        if let Err(e) = crate::fwmark::set_bypass_mark(&stream) {
            // Without CAP_NET_ADMIN (tests, unprivileged use) there is no policy
            // routing to bypass either.
            log::trace!("SO_MARK: {e}");
        }
    }
    let raw = RawAddr::from(addr);
    // SAFETY: `raw` holds a sockaddr of `raw.len` bytes for this family.
    let r = unsafe { libc::connect(fd, raw.as_ptr(), raw.len) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        let n = loop {
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n >= 0 {
                break n;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A listening TCP socket on `addr` with IP_FREEBIND, so it can bind an address that is
/// not (yet) usable, as IPv6 addresses are during duplicate address detection.
pub fn listen_freebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let freebind = match addr {
        SocketAddr::V4(_) => (libc::SOL_IP, libc::IP_FREEBIND),
        SocketAddr::V6(_) => (libc::SOL_IPV6, libc::IPV6_FREEBIND),
    };
    let listener = TcpListener::from(crate::tcp_socket_for(&addr)?);
    for (level, name) in [freebind, (libc::SOL_SOCKET, libc::SO_REUSEADDR)] {
        crate::set_int_option(&listener, level, name, 1)?;
    }
    let fd = listener.as_raw_fd();
    crate::udp::bind_std(fd, addr)?;
    // SAFETY: listen(2) on our own socket.
    crate::cvt(unsafe { libc::listen(fd, 64) })?;
    Ok(listener)
}
