//! Signals: a set blocked in every thread and waited for synchronously (the daemon's
//! orderly shutdown), and a flag raised by a signal (the benchmark's Ctrl-C).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// A set of signal numbers (sigset_t).
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    pub fn new(signals: &[libc::c_int]) -> SignalSet {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it and sigaddset adds
        // to the set we own (an invalid number is refused with EINVAL, nothing more).
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &sig in signals {
                libc::sigaddset(&mut set, sig);
            }
            SignalSet(set)
        }
    }

    /// Blocks these signals in the calling thread; threads it starts afterwards inherit
    /// the mask. Done before any other thread starts, it leaves [`wait`](Self::wait) the
    /// only way they are seen.
    pub fn block(&self) -> io::Result<()> {
        // SAFETY: `self.0` is an initialised sigset_t; the old mask is not asked for.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
        match rc {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Waits until one of these signals (blocked in this thread) is pending, takes it,
    /// and returns its number.
    pub fn wait(&self) -> libc::c_int {
        let mut sig = 0;
        // sigwait fails only for an invalid set, which SignalSet::new cannot make:
        // retry, bounded, anyway.
        for _ in 0..1000 {
            // SAFETY: `self.0` is initialised; `sig` receives the number.
            if unsafe { libc::sigwait(&self.0, &mut sig) } == 0 {
                return sig;
            }
        }
        sig
    }
}

/// The flag [`raise_flag_on`] sets: the handler may only touch async-signal-safe state,
/// and an atomic pointer to an atomic is that.
static FLAG: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn set_flag(_sig: libc::c_int) {
    let flag = FLAG.load(Ordering::SeqCst);
    // SAFETY: FLAG is null or was set from a `&'static AtomicBool`.
    if let Some(flag) = unsafe { flag.as_ref() } {
        flag.store(true, Ordering::SeqCst);
    }
}

/// On the first of `signals`, sets `flag` (and nothing else); a second one of the same
/// kills the process as usual (SA_RESETHAND), for a user who means it.
pub fn raise_flag_on(signals: &[libc::c_int], flag: &'static AtomicBool) -> io::Result<()> {
    FLAG.store(
        flag as *const AtomicBool as *mut AtomicBool,
        Ordering::SeqCst,
    );
    for &sig in signals {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to atomics,
        // which is async-signal-safe, and sa_mask is initialised before use.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = set_flag as *const () as usize;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        crate::cvt(rc)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blocked signal sent to this thread is what wait returns.
    #[test]
    fn a_blocked_signal_is_waited_for() {
        std::thread::spawn(|| {
            let set = SignalSet::new(&[libc::SIGUSR2]);
            set.block().unwrap();
            // SAFETY: raise(3) on ourselves; the signal is blocked in this thread, so it
            // stays pending for sigwait instead of running a handler.
            assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
            assert_eq!(set.wait(), libc::SIGUSR2);
        })
        .join()
        .unwrap();
    }
}
