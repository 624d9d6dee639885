//! Connections of the daemon itself (control, and anything else it dials) must not
//! be routed into the tunnel: once an exit node takes the default route, table 52
//! would send them to the exit node, which cannot work for the connection that
//! configures the tunnel. Like Go, we set the bypass mark (SO_MARK) before
//! connecting; the policy rules at priority 5210–5250 route marked packets by the
//! main table.

use ringscale_sys::fwmark::set_bypass_mark;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use tokio::net::{lookup_host, TcpSocket, TcpStream};

/// Sets the bypass mark; without CAP_NET_ADMIN (tests, unprivileged use) this fails
/// and does not matter, since such a process installs no policy routing either.
pub fn mark(sock: &impl AsRawFd) {
    if let Err(e) = set_bypass_mark(sock) {
        log::trace!("SO_MARK: {e}");
    }
}

/// `TcpStream::connect((host, port))` with the bypass mark set before the SYN.
pub async fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no addresses"));
    for addr in lookup_host((host, port)).await? {
        match connect_addr(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `TcpStream::connect(addr)` with the bypass mark set before the SYN.
pub async fn connect_addr(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    mark(&sock);
    sock.connect(addr).await
}
