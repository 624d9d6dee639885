//! Credentials: our uids, the password database, permission checks against the real
//! uid, and per-thread credential changes (tests).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Our real uid.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Our effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether the real uid and gid may read and write `path` (access(2) with R_OK|W_OK).
pub fn can_read_write(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
}

/// The uid of user `name` from the password database (Go's `LookupByUsername`); None
/// if there is no such user. Numeric strings are names too, as in Go.
pub fn uid_of_user(name: &str) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain old data; all-zero is a valid value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is the size of
        // `buf`; getpwnam_r points the string fields of `pwd` into `buf`, and only the
        // plain pw_uid is read below.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        return Some(pwd.pw_uid);
    }
}

/// Drops the calling thread, and only it, to `uid`/`gid` with no supplementary groups.
/// Linux keeps credentials per thread; libc's setuid() and friends spread a change over
/// the whole process, so this makes the raw system calls instead. Irreversible for the
/// thread once it is no longer root: for a throwaway thread (tests that need an
/// unprivileged client next to a root daemon).
pub fn set_thread_credentials(uid: u32, gid: u32) -> io::Result<()> {
    let (u, g) = (libc::c_long::from(uid), libc::c_long::from(gid));
    // SAFETY: raw credential system calls with plain integer arguments (and a null,
    // zero-length group list); they change only this thread's credentials.
    let ok = unsafe {
        libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
            && libc::syscall(libc::SYS_setresgid, g, g, g) == 0
            && libc::syscall(libc::SYS_setresuid, u, u, u) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_is_uid_zero_and_strangers_have_none() {
        assert_eq!(super::uid_of_user("root"), Some(0));
        assert_eq!(super::uid_of_user("no-such-user-ringscale"), None);
        assert_eq!(super::uid_of_user(""), None);
    }
}
