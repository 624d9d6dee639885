//! An eventfd(2) used as a wake-up signal: one side writes, pollers (an io_uring
//! POLL_ADD, epoll) see it readable.

use super::cvt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A close-on-exec eventfd. Clones (`try_clone`) share the one kernel counter, so a
/// `signal` on any of them wakes the pollers of all.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain eventfd(2); the descriptor is checked, then owned below.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
        Ok(EventFd {
            // SAFETY: a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Adds one to the counter: the eventfd becomes (stays) readable. Best effort: the
    /// only failure, a counter at its maximum, leaves it readable anyway.
    pub fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes the 8 bytes of a local array to our own eventfd.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    pub fn try_clone(&self) -> io::Result<EventFd> {
        Ok(EventFd {
            fd: self.fd.try_clone()?,
        })
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::EventFd;
    use std::os::fd::AsRawFd;

    fn readable(fd: &EventFd) -> bool {
        let mut pfd = [libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll(2) on one pollfd we own, without waiting.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), 1, 0) };
        n == 1 && pfd[0].revents & libc::POLLIN != 0
    }

    #[test]
    fn signal_wakes_every_clone() {
        let a = EventFd::new().unwrap();
        let b = a.try_clone().unwrap();
        assert!(!readable(&b));
        a.signal();
        assert!(readable(&b));
        assert!(readable(&a));
    }
}
