//! Thin wrappers over the Linux interfaces the data plane uses. Everything unsafe in
//! the data plane lives below this module.

pub mod netlink;
pub mod tun;
pub mod udp;

use std::io;

/// Turns a libc return value into an io::Result, reading errno on -1.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}
