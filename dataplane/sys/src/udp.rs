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

/// bind(2) of socket `fd` to `addr`.
pub(crate) fn bind_std(fd: i32, addr: SocketAddr) -> io::Result<()> {
    let raw = RawAddr::from(addr);
    // SAFETY: `raw` holds a sockaddr of `raw.len` bytes for this family.
    cvt(unsafe { libc::bind(fd, raw.as_ptr(), raw.len) }).map(drop)
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

pub const SOL_UDP: libc::c_int = 17;
pub const UDP_SEGMENT: libc::c_int = 103;
pub const UDP_GRO: libc::c_int = 104;

/// Binds `port` with SO_REUSEPORT so each worker can own a socket on the same port;
/// the kernel spreads peers (4-tuples) over them, keeping each flow on one socket.
pub fn bind_reuseport(port: u16) -> io::Result<UdpSocket> {
    let family = if bind_family(libc::AF_INET6, 0).is_ok() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2); checked and then owned by the UdpSocket.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    let addr: SocketAddr = if family == libc::AF_INET6 {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        (Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    };
    bind_std(fd, addr)?;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
    Ok(sock)
}

/// Shuts `sock` (and every handle on it) for reading: a thread blocked receiving on it
/// wakes and every later receive returns at once. How a stopping worker is woken.
pub fn shutdown_receive(sock: &UdpSocket) {
    // SAFETY: plain shutdown(2) on a descriptor we hold. On an unconnected UDP socket
    // it reports ENOTCONN but still marks the socket shut and wakes its waiters.
    unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RD) };
}

/// Asks the kernel to coalesce received datagrams of one flow (UDP GRO). Returns
/// whether it agreed.
pub fn enable_gro(sock: &UdpSocket) -> bool {
    setsockopt_int(sock.as_raw_fd(), SOL_UDP, UDP_GRO, 1).is_ok()
}

/// Does this kernel segment UDP for us (UDP GSO)? Probed with a zero-length
/// getsockopt, which fails with ENOPROTOOPT on kernels without it.
pub fn gso_supported(sock: &UdpSocket) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for getsockopt to write.
    unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            SOL_UDP,
            UDP_SEGMENT,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        ) == 0
    }
}

/// A socket address in the form the kernel takes: the crate's one builder of
/// sockaddr_in/sockaddr_in6 (bind, connect, sendmsg, the io_uring backend).
pub struct RawAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl RawAddr {
    pub fn from(addr: SocketAddr) -> RawAddr {
        // SAFETY: sockaddr_storage is plain data; zero is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
                let sa = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_port = a.port().to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                // SAFETY: as above, for sockaddr_in6.
                let sa = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
                sa.sin6_family = libc::AF_INET6 as u16;
                sa.sin6_port = a.port().to_be();
                sa.sin6_addr.s6_addr = a.ip().octets();
                sa.sin6_scope_id = a.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// The address for calls that read a `*const sockaddr` of `len` bytes.
    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    pub fn to_socket_addr(&self) -> Option<SocketAddr> {
        match self.storage.ss_family as i32 {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
                let sa = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in) };
                let ip = std::net::Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sa.sin_port)))
            }
            libc::AF_INET6 => {
                // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
                let sa = unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
                Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(sa.sin6_port)))
            }
            _ => None,
        }
    }
}

/// Sends `buf` to `to`. With `segment > 0` the kernel splits it into datagrams of
/// `segment` bytes (the last may be shorter): one syscall for a whole batch.
pub fn send_segmented(
    sock: &UdpSocket,
    to: SocketAddr,
    buf: &[u8],
    segment: u16,
) -> io::Result<usize> {
    let mut addr = RawAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut _,
        iov_len: buf.len(),
    };
    // Room for one cmsg carrying a u16, aligned as CMSG_SPACE requires.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr.storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = addr.len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if segment > 0 && (buf.len() > segment as usize) {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_* compute sizes and walk the buffer we own.
        unsafe {
            msg.msg_controllen = libc::CMSG_SPACE(2) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment);
        }
    }
    // SAFETY: `msg` is fully initialised above.
    super::cvt_size(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) })
}

/// Receives into `buf`. Returns the length, the sender, and the segment size when
/// the kernel coalesced several datagrams (UDP GRO); 0 means one datagram.
pub fn recv_segmented(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
    let mut addr = RawAddr {
        // SAFETY: sockaddr_storage is plain data; zero is a valid value.
        storage: unsafe { std::mem::zeroed() },
        len: 0,
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer set below outlives the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr.storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` is fully initialised above.
    let n = super::cvt_size(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) })?;
    addr.len = msg.msg_namelen;
    let from = addr
        .to_socket_addr()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))?;
    let mut segment = 0usize;
    // SAFETY: walking the control buffer the kernel filled, bounded by msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                segment =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int) as usize;
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, from, segment))
}

/// Sends `data` to `to` without waiting: a full socket buffer is an error
/// (`WouldBlock`), not a wait. For the rare datagrams sent outside a batch.
pub fn send_to_nonblocking(sock: &UdpSocket, to: SocketAddr, data: &[u8]) -> io::Result<usize> {
    let addr = RawAddr::from(to);
    // SAFETY: the pointers describe `data` and `addr`, both valid for the call.
    super::cvt_size(unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT,
            addr.as_ptr(),
            addr.len,
        )
    })
}

/// The message header of one SENDMSG handed to the kernel asynchronously (io_uring):
/// the header, its iovec, the destination and the UDP_SEGMENT control message, kept
/// together so that they live as long as the operation.
///
/// The header points into this value and at the data given to [`SendMsg::fill`]: the
/// value must not move, nor the data change or go away, between `fill` and the
/// operation's completion. Submitting [`SendMsg::as_ptr`] is the caller's unsafe act,
/// and the place where those rules are kept; nothing here reads through the pointers.
pub struct SendMsg {
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: RawAddr,
    control: [u64; 4],
    segment: u16,
}

impl SendMsg {
    pub fn new() -> SendMsg {
        // SAFETY: msghdr, iovec and sockaddr_storage are plain data; zero is valid.
        unsafe {
            SendMsg {
                msg: std::mem::zeroed(),
                iov: std::mem::zeroed(),
                addr: RawAddr {
                    storage: std::mem::zeroed(),
                    len: 0,
                },
                control: [0; 4],
                segment: 0,
            }
        }
    }

    /// Points the header at `data` for `to`, with a UDP_SEGMENT control message when the
    /// kernel is to split it into datagrams of `segment` bytes.
    pub fn fill(&mut self, to: SocketAddr, data: &[u8], segment: u16) {
        self.addr = RawAddr::from(to);
        self.iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: plain data; zero is valid.
        self.msg = unsafe { std::mem::zeroed() };
        self.msg.msg_name = (&mut self.addr.storage as *mut libc::sockaddr_storage).cast();
        self.msg.msg_namelen = self.addr.len;
        self.msg.msg_iov = &mut self.iov;
        self.msg.msg_iovlen = 1;
        self.segment = 0;
        if segment > 0 && data.len() > usize::from(segment) {
            self.segment = segment;
            self.control = [0; 4];
            self.msg.msg_control = self.control.as_mut_ptr().cast();
            // SAFETY: CMSG_* compute sizes and walk the control buffer just set, which
            // is ours and larger than CMSG_SPACE(2), so the first header and its two
            // data bytes lie inside it.
            unsafe {
                self.msg.msg_controllen = libc::CMSG_SPACE(2) as _;
                let cmsg = libc::CMSG_FIRSTHDR(&self.msg);
                (*cmsg).cmsg_level = SOL_UDP;
                (*cmsg).cmsg_type = UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment);
            }
        }
    }

    /// The segment size the last `fill` asked the kernel for (0: one datagram).
    pub fn segment(&self) -> u16 {
        self.segment
    }

    /// The header, for IORING_OP_SENDMSG (see the type's rules).
    pub fn as_ptr(&self) -> *const libc::msghdr {
        &self.msg
    }
}

impl Default for SendMsg {
    fn default() -> SendMsg {
        SendMsg::new()
    }
}

/// The message header of one RECVMSG handed to the kernel asynchronously (io_uring):
/// the header, its iovec, room for the sender's address and for the UDP_GRO control
/// message.
///
/// The header points into this value and at the buffer given to
/// [`RecvMsg::prepare`]: the value must not move, nor the buffer be touched or go
/// away, between `prepare` and the operation's completion. Submitting
/// [`RecvMsg::as_mut_ptr`] is the caller's unsafe act; reading the result here does
/// not go through the header's pointers, so it is sound whenever it is called.
pub struct RecvMsg {
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
    control: [u64; 8],
}

impl RecvMsg {
    pub fn new() -> RecvMsg {
        // SAFETY: plain data; zero is valid.
        unsafe {
            RecvMsg {
                msg: std::mem::zeroed(),
                iov: std::mem::zeroed(),
                addr: std::mem::zeroed(),
                control: [0; 8],
            }
        }
    }

    /// Points the header at `buf`, with room for the sender and a control message.
    pub fn prepare(&mut self, buf: &mut [u8]) {
        self.iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: plain data; zero is valid.
        self.msg = unsafe { std::mem::zeroed() };
        self.msg.msg_name = (&mut self.addr as *mut libc::sockaddr_storage).cast();
        self.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        self.msg.msg_iov = &mut self.iov;
        self.msg.msg_iovlen = 1;
        self.msg.msg_control = self.control.as_mut_ptr().cast();
        self.msg.msg_controllen = std::mem::size_of_val(&self.control) as _;
    }

    /// The header, for IORING_OP_RECVMSG (see the type's rules).
    pub fn as_mut_ptr(&mut self) -> *mut libc::msghdr {
        &mut self.msg
    }

    /// Did the completed receive not fit the buffer (MSG_TRUNC)?
    pub fn truncated(&self) -> bool {
        self.msg.msg_flags & libc::MSG_TRUNC != 0
    }

    /// The sender (v4-mapped addresses made plain IPv4) and the GRO segment size (0:
    /// one datagram) of a completed receive; None for an unknown address family.
    pub fn result(&self) -> Option<(SocketAddr, usize)> {
        let addr = RawAddr {
            storage: self.addr,
            len: self.msg.msg_namelen,
        };
        let from = canonical(addr.to_socket_addr()?);
        Some((from, self.gro_segment()))
    }

    /// The UDP_GRO control message's value, walking this value's own control buffer
    /// (not the header's pointer to it, which the value's moving would leave stale),
    /// bounded by the length the kernel wrote back.
    // The casts are no-ops on glibc, where the lengths are size_t, but not on musl,
    // where they are socklen_t.
    #[allow(clippy::unnecessary_cast)]
    fn gro_segment(&self) -> usize {
        let capacity = std::mem::size_of_val(&self.control);
        let len = (self.msg.msg_controllen as usize).min(capacity);
        // SAFETY: plain data; zero is valid.
        let mut walk: libc::msghdr = unsafe { std::mem::zeroed() };
        walk.msg_control = self.control.as_ptr() as *mut libc::c_void;
        walk.msg_controllen = len as _;
        let end = self.control.as_ptr() as usize + len;
        let mut segment = 0usize;
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return only headers that lie inside the
        // `len` bytes of our control buffer (or null); the value is read only when the
        // header's length covers it and it lies inside the buffer too.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&walk);
            while !cmsg.is_null() {
                let data = libc::CMSG_DATA(cmsg);
                let value_end = data as usize + std::mem::size_of::<libc::c_int>();
                if (*cmsg).cmsg_level == SOL_UDP
                    && (*cmsg).cmsg_type == UDP_GRO
                    && (*cmsg).cmsg_len as usize
                        >= libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize
                    && value_end <= end
                {
                    segment = std::ptr::read_unaligned(data as *const libc::c_int).max(0) as usize;
                }
                cmsg = libc::CMSG_NXTHDR(&walk, cmsg);
            }
        }
        segment
    }
}

impl Default for RecvMsg {
    fn default() -> RecvMsg {
        RecvMsg::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// A SendMsg with a segment size goes out as separate datagrams of that size (or
    /// one GRO batch that says so), and a RecvMsg reports the sender and the size.
    #[test]
    fn message_headers_carry_segments_and_sender() {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let gro = enable_gro(&rx);
        let data: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let mut send = SendMsg::new();
        send.fill(rx.local_addr().unwrap(), &data, 100);
        assert_eq!(send.segment(), 100);
        // SAFETY: `send` and `data` stay in place for the whole call.
        let sent =
            super::super::cvt_size(unsafe { libc::sendmsg(tx.as_raw_fd(), send.as_ptr(), 0) });
        assert_eq!(sent.unwrap(), 250);

        let mut got = Vec::new();
        let mut buf = vec![0u8; 2000];
        let mut recv = RecvMsg::new();
        for _ in 0..3 {
            recv.prepare(&mut buf);
            // SAFETY: `recv` and `buf` stay in place for the whole call.
            let n = super::super::cvt_size(unsafe {
                libc::recvmsg(rx.as_raw_fd(), recv.as_mut_ptr(), 0)
            })
            .unwrap();
            assert!(!recv.truncated());
            let (from, segment) = recv.result().unwrap();
            assert_eq!(from, tx.local_addr().unwrap());
            if n > 100 {
                assert!(gro && segment == 100, "{n} bytes, segment {segment}");
            }
            got.extend_from_slice(&buf[..n]);
            if got.len() >= data.len() {
                break;
            }
        }
        assert_eq!(got, data);
    }

    #[test]
    fn send_to_nonblocking_delivers() {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            send_to_nonblocking(&tx, rx.local_addr().unwrap(), b"hello").unwrap(),
            5
        );
        let mut buf = [0u8; 16];
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"hello"[..], tx.local_addr().unwrap()));
    }
}
