//! The daemon role (`tailscaled`): flags, then the engine.

use crate::goflag::{self, Flag, FlagError};
use ringscale_dataplane::{wgconfig, Engine, EngineOptions};
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
    Flag::value("workers", "0", "packet worker threads (TUN queues); 0 means one per online core"),
    Flag::bool_on("offload", "use TUN segmentation offload and UDP GSO/GRO when the kernel has them"),
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
    let port = match flags.num::<u16>("port") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if flags.bool("cleanup") {
        // Everything the daemon puts on the host so far lives on its TUN device, which
        // the kernel removes with the process; later host state (routes in table 52,
        // rules, netfilter, DNS) is cleaned here.
        log::info!("cleanup: nothing to remove");
        return ExitCode::SUCCESS;
    }
    let wg_config = flags.str("wg-config");
    if wg_config.is_empty() {
        log::error!("no control plane yet: give peers with --wg-config FILE");
        return ExitCode::from(1);
    }
    let cfg = match load_wg_config(wg_config) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    // --port wins when given; otherwise the file's ListenPort, then the default.
    let port = if flags.is_set("port") || cfg.listen_port == 0 {
        port
    } else {
        cfg.listen_port
    };

    // Block the termination signals before any thread starts so that every thread
    // inherits the mask and only sigwait below sees them.
    let signals = termination_signals();
    // SAFETY: `signals` is an initialised sigset_t.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    let opts = match engine_options(&flags) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let engine = match Engine::start(&cfg, flags.str("tun"), port, opts) {
        Ok(e) => e,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let sig = wait_for(&signals);
    log::info!("signal {sig}: shutting down");
    // The TUN device, its addresses and routes go with the process.
    drop(engine);
    ExitCode::SUCCESS
}

fn engine_options(flags: &goflag::Parsed) -> Result<EngineOptions, FlagError> {
    Ok(EngineOptions {
        workers: flags.num("workers")?,
        offload: flags.bool("offload"),
    })
}

fn load_wg_config(path: &str) -> Result<ringscale_dataplane::Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    wgconfig::parse(&text).map_err(|e| format!("{path}: {e}"))
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

fn wait_for(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is initialised and blocked in this thread; `sig` receives the number.
    while unsafe { libc::sigwait(set, &mut sig) } != 0 {}
    sig
}
