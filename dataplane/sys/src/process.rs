//! The process and its host: signals to other processes, uname(2), clock ticks and
//! per-thread CPU time.

use std::io;
use std::time::Duration;

/// Sends `signal` to process `pid` (kill(2)).
pub fn kill(pid: i32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers.
    crate::cvt(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// The fields of uname(2) ringscale reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uname {
    /// The host name (`nodename`).
    pub nodename: String,
    /// The kernel release, e.g. "6.1.0-18-amd64".
    pub release: String,
}

pub fn uname() -> io::Result<Uname> {
    // SAFETY: utsname is plain data; all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname(2) fills the struct it is given.
    crate::cvt(unsafe { libc::uname(&mut u) })?;
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ok(Uname {
        nodename: field(&u.nodename),
        release: field(&u.release),
    })
}

/// Clock ticks per second (sysconf(_SC_CLK_TCK)), the unit of /proc's CPU times.
pub fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0)
}

/// CPU time the calling thread has used (CLOCK_THREAD_CPUTIME_ID).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn uname_names_a_kernel_release() {
        let u = super::uname().unwrap();
        assert!(
            u.release.chars().next().is_some_and(|c| c.is_ascii_digit()),
            "{u:?}"
        );
    }

    #[test]
    fn thread_cpu_time_grows_with_work() {
        let before = super::thread_cpu_time();
        let mut x = 0u64;
        let end = std::time::Instant::now() + std::time::Duration::from_millis(20);
        while std::time::Instant::now() < end {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        assert!(super::thread_cpu_time() > before);
    }
}
