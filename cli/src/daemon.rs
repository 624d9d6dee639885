//! The daemon role (`tailscaled`): flags, then the engine.

use crate::goflag::{self, Flag, FlagError};
use std::process::ExitCode;

pub const FLAGS: &[Flag] = &[
    Flag::value("tun", "tailscale0", "tunnel interface name"),
    Flag::value("port", "41641", "UDP port to listen on for WireGuard and peer-to-peer traffic; 0 means automatically select"),
    Flag::value("state", "", "absolute path of state file; use 'mem:' to not store state and register as an ephemeral node"),
    Flag::value("statedir", "", "path to directory for storage of config state"),
    Flag::value("socket", "/var/run/tailscale/tailscaled.sock", "path of the service unix socket"),
    Flag::value("verbose", "0", "log verbosity level; 0 is default, 1 or higher are increasingly verbose"),
    Flag::bool("no-logs-no-support", "disable log uploads; ringscale never uploads logs, so this is always in effect"),
    Flag::bool("cleanup", "clean up system state and exit"),
    Flag::bool("version", "print version information and exit"),
    Flag::value("wg-config", "", "take peers from this WireGuard config file instead of a control server"),
];

pub fn main(args: &[String]) -> ExitCode {
    let flags = match goflag::parse(FLAGS, args) {
        Ok(f) => f,
        Err(FlagError::Help) => {
            eprint!("Usage of tailscaled:\n{}", goflag::Parsed::usage(FLAGS));
            return ExitCode::SUCCESS;
        }
        Err(FlagError::Message(m)) => {
            eprint!(
                "{m}\nUsage of tailscaled:\n{}",
                goflag::Parsed::usage(FLAGS)
            );
            return ExitCode::from(2);
        }
    };
    if flags.bool("version") {
        println!("{}", crate::VERSION);
        return ExitCode::SUCCESS;
    }
    if !flags.args.is_empty() {
        eprintln!(
            "tailscaled does not take non-flag arguments: {:?}",
            flags.args
        );
        return ExitCode::from(2);
    }
    let verbose = match flags.num::<i32>("verbose") {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    crate::logging::init(verbose);
    log::error!("the daemon is not built yet");
    ExitCode::from(1)
}
