//! The daemon role (`tailscaled`): flags, then the engine.

pub mod backend;
pub mod conffile;
mod logging;

use crate::goflag::{self, Flag, FlagError};
use crate::localapi;
use backend::{control_loop, LocalBackend};
use ringscale_control::state::{default_state_file, resolve_state_paths, StateStore};
use ringscale_dataplane::{wgconfig, Config, Engine, EngineOptions, PrivateKey};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

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
    Flag::value("config", "", "path to a declarative config file (Tailscale's ipn.ConfigVAlpha, Version \"alpha0\")"),
    Flag::value("wg-config", "", "take peers from this WireGuard config file instead of a control server"),
    Flag::value("workers", "0", "packet worker threads (TUN queues); 0 means one per online core"),
    Flag::bool_on("offload", "use TUN segmentation offload and UDP GSO/GRO when the kernel has them"),
    Flag::value("io", "auto", "packet I/O backend: auto (io_uring where the kernel allows it, else epoll), io_uring, or epoll"),
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
    crate::daemon::logging::init(verbose);
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
        cleanup_dns(&flags);
        // Policy rules, table 52 and our netfilter chains (issue 8).
        if let Err(e) = ringscale_host::cleanup() {
            log::warn!("cleanup: routing/netfilter: {e}");
        }
        log::info!("cleanup: done");
        return ExitCode::SUCCESS;
    }
    let opts = match engine_options(&flags) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let wg_config = flags.str("wg-config");
    if !wg_config.is_empty() {
        return run_wg_config(wg_config, &flags, port, opts);
    }
    run_tailnet(&flags, port, opts)
}

/// Plain WireGuard: peers from a config file, no control plane.
fn run_wg_config(path: &str, flags: &goflag::Parsed, port: u16, opts: EngineOptions) -> ExitCode {
    let cfg = match load_wg_config(path) {
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
    let signals = block_termination_signals();
    let engine = match Engine::start(&cfg, flags.str("tun"), port, opts) {
        Ok(e) => e,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    // quad-100 answers here too (with no names: a WireGuard config has no DNS).
    #[cfg(feature = "dns")]
    let quad100 = crate::daemon::backend::dns::start_quad100(&engine, cfg.mtu);
    let sig = wait_for(&signals);
    log::info!("signal {sig}: shutting down");
    #[cfg(feature = "dns")]
    drop(quad100);
    // Stops and joins the workers and timers, and deletes the TUN device with its
    // addresses and routes.
    drop(engine);
    log::info!("stopped");
    ExitCode::SUCCESS
}

/// A tailnet node: state file, control client, engine.
fn run_tailnet(flags: &goflag::Parsed, port: u16, opts: EngineOptions) -> ExitCode {
    let paths = match resolve_state_paths(
        flags.str("state"),
        flags.str("statedir"),
        default_state_file(),
    ) {
        Ok(p) => p,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    // A corrupt state file stops the daemon: replacing it would silently throw away the
    // node's identity.
    let store = match StateStore::open(&paths.location) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let conf = match flags.str("config") {
        "" => None,
        path => match conffile::load(path) {
            Ok(c) => Some(c),
            Err(e) => {
                log::error!("{e}");
                return ExitCode::from(1);
            }
        },
    };
    let signals = block_termination_signals();
    let idle = Config {
        private_key: PrivateKey::generate(),
        listen_port: 0,
        addresses: Vec::new(),
        mtu: ringscale_dataplane::config::DEFAULT_MTU,
        peers: Vec::new(),
        filter: None,
    };
    let engine = match Engine::start(&idle, flags.str("tun"), port, opts) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    // `state_dir` keeps the resolv.conf backup (none for `--state=mem:`).
    let host_dns = ringscale_host::resolv_conf::HostDns::open(
        ringscale_host::resolv_conf::RESOLV_CONF.into(),
        paths
            .var_root
            .as_deref()
            .map(|d| d.join(ringscale_host::resolv_conf::BACKUP_NAME)),
    );
    let backend = match LocalBackend::new(store, engine.clone(), paths.ephemeral(), host_dns) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    if let Some(conf) = conf {
        if let Err(e) = backend.edit_prefs(&conf.prefs) {
            log::error!("applying --config: {e}");
            return ExitCode::from(1);
        }
        if conf.auth_key.is_some() || conf.prefs.prefs.want_running {
            backend.start_login(conf.auth_key, false);
        }
    }
    let socket = match localapi::server::listen(Path::new(flags.str("socket"))) {
        Ok(s) => s,
        Err(e) => {
            log::error!("LocalAPI socket {}: {e}", flags.str("socket"));
            return ExitCode::from(1);
        }
    };
    let b = backend.clone();
    // Ends the control thread's runtime (and with it every task on it).
    let stop_control = Arc::new(tokio::sync::Notify::new());
    let stop = stop_control.clone();
    let control = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!("starting the control runtime: {e}");
                    return;
                }
            };
            // The LocalAPI and the control client share this one thread.
            let local = tokio::task::LocalSet::new();
            local.spawn_local(control_loop::run(b.clone()));
            local.spawn_local(async move {
                if let Err(e) = localapi::server::serve(socket, std::rc::Rc::new(b)).await {
                    log::error!("LocalAPI: {e}");
                }
            });
            rt.block_on(local.run_until(stop.notified()));
            // The tasks (LocalAPI connections, the control session, PeerAPI) go
            // first, then the runtime; a blocking task still running (an ICMP ping,
            // a DoH lookup, each bounded by its own timeout) is not waited for.
            drop(local);
            rt.shutdown_timeout(std::time::Duration::from_millis(200));
        });
    let control = match control {
        Ok(t) => t,
        Err(e) => {
            log::error!("starting the control thread: {e}");
            return ExitCode::from(1);
        }
    };
    log::info!("{} started", crate::VERSION);
    let sig = wait_for(&signals);
    log::info!("signal {sig}: shutting down");
    // In order: nothing new arrives (control, LocalAPI), the host is put back
    // (rules, table 52, netfilter, resolv.conf), the data plane stops and its TUN
    // goes.
    stop_control.notify_one();
    if control.join().is_err() {
        log::error!("the control thread panicked");
    }
    backend.shutdown_host();
    engine.stop();
    log::info!("stopped");
    ExitCode::SUCCESS
}

/// `--cleanup`: puts back the resolv.conf a crashed run left pointing at quad-100.
fn cleanup_dns(flags: &goflag::Parsed) {
    use ringscale_host::resolv_conf::{cleanup, BACKUP_NAME, RESOLV_CONF};
    let Ok(paths) = resolve_state_paths(
        flags.str("state"),
        flags.str("statedir"),
        default_state_file(),
    ) else {
        return;
    };
    let Some(dir) = paths.var_root else { return };
    match cleanup(std::path::Path::new(RESOLV_CONF), &dir.join(BACKUP_NAME)) {
        Ok(true) => log::info!("cleanup: restored {RESOLV_CONF}"),
        Ok(false) => {}
        Err(e) => log::warn!("cleanup: restoring {RESOLV_CONF}: {e}"),
    }
}

/// Blocks the termination signals before any thread starts, so that every thread
/// inherits the mask and only [`wait_for`] sees them.
fn block_termination_signals() -> ringscale_sys::signal::SignalSet {
    let signals = termination_signals();
    // Fails only for an invalid `how` argument, which block() does not pass.
    let _ = signals.block();
    signals
}

fn engine_options(flags: &goflag::Parsed) -> Result<EngineOptions, FlagError> {
    Ok(EngineOptions {
        workers: flags.num("workers")?,
        offload: flags.bool("offload"),
        io: flags
            .str("io")
            .parse()
            .map_err(|e| FlagError::Message(format!("invalid value for flag -io: {e}")))?,
    })
}

fn load_wg_config(path: &str) -> Result<ringscale_dataplane::Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    wgconfig::parse(&text).map_err(|e| format!("{path}: {e}"))
}

fn termination_signals() -> ringscale_sys::signal::SignalSet {
    ringscale_sys::signal::SignalSet::new(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
}

fn wait_for(set: &ringscale_sys::signal::SignalSet) -> i32 {
    set.wait()
}
