//! Packet capture through an AF_PACKET socket (what tcpdump uses underneath), for tests
//! that replay real packets.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// An AF_PACKET/SOCK_DGRAM socket receiving the IPv4 packets (link header removed) of
/// every interface in the calling thread's network namespace, both directions.
pub struct Ipv4Capture {
    fd: OwnedFd,
}

impl Ipv4Capture {
    /// Opens the socket (needs CAP_NET_RAW); `timeout` bounds each [`recv`](Self::recv).
    pub fn open(timeout: Duration) -> io::Result<Ipv4Capture> {
        let protocol = (libc::ETH_P_IP as u16).to_be() as libc::c_int;
        let fd = crate::socket(libc::AF_PACKET, libc::SOCK_DGRAM, protocol)?;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as _,
            tv_usec: timeout.subsec_micros() as _,
        };
        // SAFETY: setsockopt reads a timeval of the stated size, valid for the call.
        crate::cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        Ok(Ipv4Capture { fd })
    }

    /// One IPv4 packet into `buf`; an error of kind WouldBlock when the timeout passed.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the pointer and length describe `buf`, valid for the call.
        crate::cvt_size(unsafe {
            libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
        })
    }
}
