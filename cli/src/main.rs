//! One binary, two roles, chosen by the name it runs under (as busybox does):
//! `tailscaled`/`ringscaled` is the daemon, `tailscale`/`ringscale` the CLI.
//!
//! - [`daemon`]: the `tailscaled` role: flags, the engine, the backend (control client,
//!   netmap, the reconciler that owns the host side), the LocalAPI server;
//! - [`cli`]: the `tailscale` role: the verbs, over the LocalAPI client;
//! - [`localapi`]: the interface between the two (Go's `ipn/localapi` and
//!   `client/local`): the shared types, the server half and the client half;
//! - [`goflag`]: Go `flag` syntax, which both roles parse.

#![forbid(unsafe_code)]

mod cli;
mod daemon;
mod goflag;
mod localapi;

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;

/// The version both roles print.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, PartialEq, Eq)]
enum Role {
    Daemon,
    Cli,
}

/// Decides the role from argv[0]. Besides the installed names, `ringscale tailscaled ...`
/// (busybox style) runs the daemon so the binary is usable before symlinks exist;
/// `TS_BE_CLI=1` forces the CLI as Tailscale's combined binary allows.
fn role(argv0: &OsStr, first_arg: Option<&str>) -> (Role, bool) {
    let base = Path::new(argv0)
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or("");
    if std::env::var("TS_BE_CLI").is_ok_and(|v| v == "1" || v == "true") {
        return (Role::Cli, false);
    }
    match base {
        "tailscaled" | "ringscaled" => (Role::Daemon, false),
        "tailscale" | "ringscale" => match first_arg {
            Some("tailscaled" | "ringscaled") => (Role::Daemon, true),
            _ => (Role::Cli, false),
        },
        // Like Tailscale's combined binary, any other name runs the daemon.
        _ => (Role::Daemon, false),
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let rest: Vec<String> = match args.map(|a| a.into_string()).collect() {
        Ok(v) => v,
        Err(bad) => {
            eprintln!("argument is not valid UTF-8: {bad:?}");
            return ExitCode::from(2);
        }
    };
    let (role, skip_first) = role(&argv0, rest.first().map(String::as_str));
    let rest = if skip_first { &rest[1..] } else { &rest[..] };
    match role {
        Role::Daemon => daemon::main(rest),
        Role::Cli => cli::main(rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_follows_argv0() {
        let r = |a: &str, f: Option<&str>| role(OsStr::new(a), f);
        assert_eq!(r("/usr/sbin/tailscaled", None), (Role::Daemon, false));
        assert_eq!(r("ringscaled", Some("--port=1")), (Role::Daemon, false));
        assert_eq!(r("/usr/bin/tailscale", Some("status")), (Role::Cli, false));
        assert_eq!(r("ringscale", Some("tailscaled")), (Role::Daemon, true));
        assert_eq!(r("tailscale.combined", None), (Role::Daemon, false));
    }
}
