//! Who may do what on the LocalAPI, as Tailscale decides it on Linux
//! (`ipnserver.actor.Permissions`, `ipnauth.ConnIdentity.IsReadonlyConn`): anyone who can
//! connect to the socket may read; writing needs root, the daemon's own (non-root) user,
//! or the operator named in the `OperatorUser` pref (`tailscale set --operator=USER`).
//! The caller's uid comes from SO_PEERCRED; a connection without credentials is
//! read-only.

use std::ffi::CString;

/// What one connection may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub read: bool,
    pub write: bool,
}

/// The decision, separated from the system lookups so it can be tested: `peer_uid` from
/// SO_PEERCRED (None if unavailable), `daemon_uid` our own uid, `operator_uid` the uid of
/// the `OperatorUser` pref if it names an existing user.
pub fn permissions(
    peer_uid: Option<u32>,
    daemon_uid: u32,
    operator_uid: Option<u32>,
) -> Permissions {
    let write = match peer_uid {
        None => false,
        Some(0) => true,
        Some(uid) if daemon_uid != 0 && uid == daemon_uid => true,
        Some(uid) => operator_uid == Some(uid),
    };
    Permissions { read: true, write }
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
        // SAFETY: passwd is plain old data; getpwnam_r fills it and points its string
        // fields into `buf`, which outlives every use of `pwd` below.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
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

/// Our own effective uid.
pub fn daemon_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_daemon_grants_write_to_root_and_operator_only() {
        let p = |peer, op| permissions(peer, 0, op);
        assert_eq!(
            p(Some(0), None),
            Permissions {
                read: true,
                write: true
            }
        );
        assert_eq!(
            p(Some(1000), None),
            Permissions {
                read: true,
                write: false
            }
        );
        assert_eq!(
            p(Some(1000), Some(1000)),
            Permissions {
                read: true,
                write: true
            }
        );
        assert_eq!(
            p(Some(1001), Some(1000)),
            Permissions {
                read: true,
                write: false
            }
        );
        // No credentials: read-only, never write, even if an operator is configured.
        assert_eq!(
            p(None, Some(0)),
            Permissions {
                read: true,
                write: false
            }
        );
    }

    #[test]
    fn non_root_daemon_trusts_its_own_user() {
        assert!(permissions(Some(1000), 1000, None).write);
        assert!(!permissions(Some(1001), 1000, None).write);
        assert!(permissions(Some(0), 1000, None).write);
    }

    #[test]
    fn user_lookup_uses_the_password_database() {
        assert_eq!(uid_of_user("root"), Some(0));
        assert_eq!(uid_of_user("no-such-user-ringscale"), None);
        assert_eq!(uid_of_user(""), None);
        assert_eq!(uid_of_user("a\0b"), None);
    }
}
