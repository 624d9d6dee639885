//! The kernel's random source.

use std::io;

/// Fills `buf` from the kernel's random source (getrandom(2), blocking until the pool is
/// initialised, which it is long before a daemon starts). Interrupted or short reads are
/// retried; any other failure (ENOSYS under an old kernel or a seccomp filter) is
/// returned, never spun on.
pub fn try_fill(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return Err(if n == 0 {
            io::Error::new(io::ErrorKind::UnexpectedEof, "getrandom returned no bytes")
        } else {
            err
        });
    }
    Ok(())
}

/// Fills `buf` from the kernel's random source. Without randomness the daemon can make
/// no keys, nonces or transaction IDs that are safe to use, so a kernel that refuses
/// getrandom(2) ends the process with a clear message instead of spinning (a panic is an
/// abort in release builds).
pub fn fill(buf: &mut [u8]) {
    if let Err(e) = try_fill(buf) {
        panic!("getrandom(2) failed: {e}; no secure random source, cannot continue");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fills_every_byte() {
        // 4 KiB of zeros left anywhere after a fill would mean a short read was lost.
        let mut buf = vec![0u8; 4096];
        super::fill(&mut buf);
        assert!(buf.chunks(64).all(|c| c.iter().any(|&b| b != 0)));
    }
}
