//! Who may do what on the LocalAPI, as Tailscale decides it on Linux
//! (`ipnserver.actor.Permissions`, `ipnauth.ConnIdentity.IsReadonlyConn`): anyone who can
//! connect to the socket may read; writing needs root, the daemon's own (non-root) user,
//! or the operator named in the `OperatorUser` pref (`tailscale set --operator=USER`).
//! The caller's uid comes from SO_PEERCRED; a connection without credentials is
//! read-only.

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
    ringscale_sys::cred::uid_of_user(name)
}

/// Our own effective uid.
pub fn daemon_uid() -> u32 {
    ringscale_sys::cred::euid()
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
