//! Just enough rtnetlink to configure our interface: link up and MTU, addresses,
//! routes. Hand-written because the rtnetlink crates bring an async runtime and a
//! family of packet crates for what are four fixed message shapes; requests are
//! built in plain byte vectors and every request is acknowledged.

use super::{cvt, cvt_size};
use ip_network::IpNetwork;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An address on our interface with its on-link prefix length (10.0.0.1/24). Tailscale
/// nodes use /32 and /128; WireGuard config files often use a subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTN_UNICAST: u8 = 1;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTPROT_STATIC: u8 = 4;
const IFF_UP: u32 = 0x1;

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;

/// A netlink request under construction: header, fixed part, attributes. Shared by
/// the interface setup here and the policy routing in `router::rtnl`.
pub struct Msg {
    pub buf: Vec<u8>,
}

impl Msg {
    pub fn new(kind: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(96);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&1u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        Msg { buf }
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    pub fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        self.buf
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }

    pub fn finish(&mut self) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        &self.buf
    }
}

fn family(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

pub fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

pub fn open() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); checked before use.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    })?;
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn send(sock: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: pointer and length describe `msg`; a zeroed sockaddr_nl is the kernel.
    unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        cvt_size(libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        ))?;
    }
    Ok(())
}

/// Reads replies until an acknowledgement (Ok/errno) or the end of a dump, handing
/// every other message (kind, payload) to `each`.
pub fn receive(sock: &OwnedFd, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: pointer and length describe `buf`.
        let n = cvt_size(unsafe {
            libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
        })?;
        let mut rest = &buf[..n];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < 16 || len > rest.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed netlink reply",
                ));
            }
            match kind {
                NLMSG_ERROR if len >= 20 => {
                    let errno = i32::from_ne_bytes([rest[16], rest[17], rest[18], rest[19]]);
                    return if errno == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-errno))
                    };
                }
                NLMSG_DONE => return Ok(()),
                _ => each(kind, &rest[16..len]),
            }
            rest = &rest[((len + 3) & !3).min(rest.len())..];
        }
    }
}

/// Sends one request and waits for its acknowledgement; a negative errno in the
/// acknowledgement becomes the error.
pub fn transact(msg: &mut Msg) -> io::Result<()> {
    let sock = open()?;
    let flags = u16::from_ne_bytes([msg.buf[6], msg.buf[7]]) | NLM_F_ACK;
    msg.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    send(&sock, msg.finish())?;
    receive(&sock, |_, _| {})
}

pub fn link_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

/// Sets the MTU and brings the link up.
pub fn set_link_up(index: u32, mtu: u32) -> io::Result<()> {
    let mut req = Msg::new(RTM_NEWLINK, 0);
    // struct ifinfomsg: family, pad, type, index, flags, change
    req.bytes(&[libc::AF_UNSPEC as u8, 0])
        .bytes(&0u16.to_ne_bytes())
        .bytes(&(index as i32).to_ne_bytes())
        .bytes(&IFF_UP.to_ne_bytes())
        .bytes(&IFF_UP.to_ne_bytes())
        .attr(IFLA_MTU, &mtu.to_ne_bytes());
    transact(&mut req)
}

/// Deletes the interface. For a TUN device this also wakes every thread blocked
/// reading one of its queues (the read fails), whoever still holds queue descriptors.
pub fn del_link(index: u32) -> io::Result<()> {
    let mut req = Msg::new(RTM_DELLINK, 0);
    // struct ifinfomsg: family, pad, type, index, flags, change
    req.bytes(&[libc::AF_UNSPEC as u8, 0])
        .bytes(&0u16.to_ne_bytes())
        .bytes(&(index as i32).to_ne_bytes())
        .bytes(&0u32.to_ne_bytes())
        .bytes(&0u32.to_ne_bytes());
    transact(&mut req)
}

/// Adds an address to the interface; an address already present is not an error.
pub fn add_address(index: u32, a: IfAddr) -> io::Result<()> {
    address(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, index, a)
}

/// Removes an address from the interface; a missing address is not an error.
pub fn del_address(index: u32, a: IfAddr) -> io::Result<()> {
    match address(RTM_DELADDR, 0, index, a) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
        r => r,
    }
}

fn address(kind: u16, flags: u16, index: u32, a: IfAddr) -> io::Result<()> {
    let mut req = Msg::new(kind, flags);
    let bytes = addr_bytes(a.addr);
    // struct ifaddrmsg: family, prefixlen, flags, scope, index
    req.bytes(&[family(a.addr), a.prefix_len, 0, RT_SCOPE_UNIVERSE])
        .bytes(&index.to_ne_bytes())
        .attr(IFA_LOCAL, &bytes)
        .attr(IFA_ADDRESS, &bytes)
        .attr(IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
    transact(&mut req)
}

fn route(kind: u16, flags: u16, index: u32, net: IpNetwork, table: u32) -> io::Result<()> {
    let (addr, len) = (net.network_address(), net.netmask());
    let mut req = Msg::new(kind, flags);
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    let scope = if kind == RTM_DELROUTE {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    req.bytes(&[
        family(addr),
        len,
        0,
        0,
        0,
        RTPROT_STATIC,
        scope,
        RTN_UNICAST,
    ])
    .bytes(&0u32.to_ne_bytes())
    .attr(RTA_TABLE, &table.to_ne_bytes())
    .attr(RTA_OIF, &index.to_ne_bytes());
    if len > 0 {
        req.attr(RTA_DST, &addr_bytes(addr));
    }
    transact(&mut req)
}

/// Adds a route for `net` through the interface; an existing identical route is kept.
pub fn add_route(index: u32, net: IpNetwork, table: u32) -> io::Result<()> {
    match route(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, index, net, table) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Removes a route for `net` through the interface; a missing route is not an error.
pub fn del_route(index: u32, net: IpNetwork, table: u32) -> io::Result<()> {
    match route(RTM_DELROUTE, 0, index, net, table) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        r => r,
    }
}
