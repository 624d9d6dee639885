//! The kernel TUN device.

use super::{cvt, cvt_size};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// TUNSETOFFLOAD flags: what the kernel may hand us unsegmented / without checksum.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_USO4: u32 = 0x20;
pub const TUN_F_USO6: u32 = 0x40;

/// Size of the virtio_net_hdr in front of every packet when IFF_VNET_HDR is on.
pub const VNET_HDR_LEN: usize = 10;

/// An open TUN device. The interface disappears when the last queue is closed, which
/// is how the daemon's routes and addresses on it are removed on exit, even on a crash.
pub struct Tun {
    fd: OwnedFd,
    name: String,
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tun {
    /// Creates (or attaches to) the TUN interface `name`.
    pub fn open(name: &str) -> io::Result<Tun> {
        Self::open_with(name, false, false)
    }

    /// Creates (or attaches another queue to) `name`. With `multi_queue` each call
    /// adds a queue the kernel spreads flows over; with `vnet_hdr` every packet is
    /// preceded by a virtio_net_hdr, which offloads need.
    pub fn open_with(name: &str, multi_queue: bool, vnet_hdr: bool) -> io::Result<Tun> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}"),
            ));
        }
        let file = File::options()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("open /dev/net/tun: {e}")))?;
        let fd = OwnedFd::from(file);
        let mut flags = IFF_TUN | IFF_NO_PI;
        if multi_queue {
            flags |= IFF_MULTI_QUEUE;
        }
        if vnet_hdr {
            flags |= IFF_VNET_HDR;
        }
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is laid out as.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) })
            .map_err(|e| io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")))?;
        let len = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(libc::IFNAMSIZ);
        let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
        let tun = Tun { fd, name };
        if vnet_hdr {
            let size = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads an int.
            cvt(unsafe { libc::ioctl(tun.fd.as_raw_fd(), TUNSETVNETHDRSZ as _, &size) })?;
        }
        Ok(tun)
    }

    /// Tells the kernel which offloads we handle (TUN_F_*). It refuses flags it does
    /// not know, so callers probe with fewer flags on error.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes the flags as the argument value.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        })
        .map(drop)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A second handle on the same queue, for a thread of its own.
    pub fn try_clone(&self) -> io::Result<Tun> {
        Ok(Tun {
            fd: self.fd.try_clone()?,
            name: self.name.clone(),
        })
    }

    /// Reads one IP packet (blocking).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the pointer and length describe `buf`.
        cvt_size(unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    /// Reads one IP packet if one is queued, without waiting: `Ok(None)` when the queue
    /// is empty. preadv2(RWF_NOWAIT) makes this one read non-blocking and leaves the
    /// descriptor blocking (O_NONBLOCK would change every clone of it: they share one
    /// open file description). Kernels before 5.9 refuse RWF_NOWAIT on a TUN with
    /// EOPNOTSUPP, before 4.14 on anything (EOPNOTSUPP), before 4.6 have no preadv2
    /// (ENOSYS): those errors are returned for the caller to fall back.
    pub fn read_nowait(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // The raw syscall, not libc's wrapper (glibc 2.26+, recent musl only). Offset -1
        // in both halves: "the current position", the only meaning a stream has.
        // SAFETY: the iovec describes `buf`, valid for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_preadv2,
                self.fd.as_raw_fd(),
                &iov as *const libc::iovec,
                1,
                -1 as libc::c_long,
                -1 as libc::c_long,
                libc::RWF_NOWAIT,
            )
        };
        if r >= 0 {
            return Ok(Some(r as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        }
    }

    /// Is a packet queued now (poll(2) without waiting)? Errors and a gone device count
    /// as readable: the read that follows reports them.
    pub fn readable_now(&self) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        let n = cvt(unsafe { libc::poll(&mut pfd, 1, 0) })?;
        Ok(n > 0 && pfd.revents != 0)
    }

    /// Writes one IP packet.
    pub fn write(&self, pkt: &[u8]) -> io::Result<usize> {
        // SAFETY: the pointer and length describe `pkt`.
        cvt_size(unsafe { libc::write(self.fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) })
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl FromRawFd for Tun {
    unsafe fn from_raw_fd(fd: RawFd) -> Tun {
        Tun {
            fd: OwnedFd::from_raw_fd(fd),
            name: String::new(),
        }
    }
}
