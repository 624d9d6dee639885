//! `testderp`: the project's test DERP relay and STUN server as a process (see the
//! module docs of `ringscale_tests::derp_server`), for the benchmark and manual runs.
//!
//! ```text
//! testderp --listen ADDR:PORT [--stun ADDR:PORT] [--tls-cert FILE --tls-key FILE] [-v]
//! ```
//! Prints `testderp ready derp=ADDR:PORT stun=ADDR:PORT key=<hex>` on stdout once it
//! serves, then runs until killed; logs go to stderr.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use ringscale_tests::control_server::init_stderr_logger;
use ringscale_tests::derp_server::{DerpServer, Options, TlsFiles};

const USAGE: &str =
    "usage: testderp --listen ADDR:PORT [--stun ADDR:PORT] [--tls-cert FILE --tls-key FILE] [-v]

  --listen ADDR:PORT   DERP (plain HTTP unless --tls-cert/--tls-key are given)
  --stun ADDR:PORT     also answer STUN binding requests there
  --tls-cert FILE      PEM certificate chain for DERP over TLS
  --tls-key FILE       PEM private key for it
  -v                   debug logging
";

fn parse(args: &[String]) -> Result<(Options, bool), String> {
    let (mut listen, mut stun, mut cert, mut key, mut verbose) = (None, None, None, None, false);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => {
                let v = value()?;
                listen = Some(
                    v.parse()
                        .map_err(|_| format!("--listen: bad address {v:?}"))?,
                );
            }
            "--stun" => {
                let v = value()?;
                stun = Some(
                    v.parse()
                        .map_err(|_| format!("--stun: bad address {v:?}"))?,
                );
            }
            "--tls-cert" => cert = Some(value()?.into()),
            "--tls-key" => key = Some(value()?.into()),
            "-v" | "--verbose" => verbose = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    Ok((
        Options {
            listen: listen.ok_or("--listen is required")?,
            stun_listen: stun,
            netns: None,
            hostile: None,
            tls,
        },
        verbose,
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (options, verbose) = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("testderp: {e}");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    init_stderr_logger(if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
    let server = match DerpServer::start(options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("testderp: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "testderp ready derp={} stun={} key={}",
        server.addr,
        server
            .stun_addr
            .map_or_else(|| "-".to_string(), |a| a.to_string()),
        server.public_key.to_hex()
    );
    loop {
        std::thread::park();
    }
}
