//! `testcontrol`: the project's test control server as a process (see the module docs of
//! `ringscale_tests::control_server` for the protocol coverage and the admin API).
//!
//! ```text
//! testcontrol --listen ADDR:PORT [--auth-key KEY]... [--ephemeral-auth-key KEY]...
//!             [--auto-approve] [--auto-approve-routes] [--auto-approve-exit-nodes]
//!             [--keepalive SECS] [--followup-timeout SECS] [--ephemeral-idle SECS]
//!             [--dns-config FILE] [--derp-map FILE] [--packet-filter FILE]
//!             [--domain NAME] [--server-url URL] [--key-file FILE] [-v]
//! ```
//! Prints `testcontrol ready url=http://ADDR:PORT key=mkey:<hex>` on stdout once it
//! accepts connections; logs go to stderr.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use ringscale_control::tailcfg::{self, PrivateKey};
use ringscale_tests::control_server::{init_stderr_logger, Options, Prepared};

const USAGE: &str =
    "usage: testcontrol --listen ADDR:PORT [--auth-key KEY]... [--ephemeral-auth-key KEY]...
       [--auto-approve] [--auto-approve-routes] [--auto-approve-exit-nodes]
       [--keepalive SECS] [--followup-timeout SECS] [--ephemeral-idle SECS]
       [--dns-config FILE] [--derp-map FILE] [--packet-filter FILE]
       [--domain NAME] [--server-url URL] [--key-file FILE] [-v]

  --listen ADDR:PORT        where to listen (HTTP: /key, /ts2021, /register/<id>, /test/...)
  --auth-key KEY            a reusable pre-auth key (repeatable)
  --ephemeral-auth-key KEY  a reusable pre-auth key making nodes ephemeral (repeatable)
  --auto-approve            approve advertised subnet routes and exit routes
  --auto-approve-routes     approve advertised subnet routes only
  --auto-approve-exit-nodes approve advertised exit routes only
  --keepalive SECS          keep-alive interval on map streams (default 50)
  --followup-timeout SECS   how long a login follow-up waits (default 60)
  --ephemeral-idle SECS     offline time before an ephemeral node is removed (default 120)
  --dns-config FILE         DNSConfig JSON sent to nodes (default: MagicDNS, domain as search)
  --derp-map FILE           DERPMap JSON (default: no regions)
  --packet-filter FILE      JSON array of FilterRule (default: allow all)
  --domain NAME             tailnet name / MagicDNS suffix (default tailnet.test)
  --server-url URL          base of AuthURLs (default http://<listen address>)
  --key-file FILE           the server's Noise key (privkey:<hex>); created if missing
  -v                        debug logging
";

fn read_json<T: serde::de::DeserializeOwned>(path: &str) -> Result<T, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{path}: invalid JSON: {e}"))
}

fn secs(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{flag}: expected a positive number of seconds, got {value:?}"))
}

/// Loads the server key from `path`, or creates it there (mode 0600).
fn load_or_create_key(path: &str) -> Result<ringscale_keys::PrivateKey, String> {
    if Path::new(path).exists() {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let key: PrivateKey = text
            .trim()
            .parse()
            .map_err(|e: tailcfg::KeyParseError| format!("{path}: {e}"))?;
        return Ok(key.0);
    }
    let key = PrivateKey::generate();
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("{path}: {e}"))?
    };
    writeln!(file, "{}", key.expose_secret_text()).map_err(|e| format!("{path}: {e}"))?;
    Ok(key.0)
}

fn parse_args(args: &[String]) -> Result<(Options, bool), String> {
    let mut options = Options::default();
    let mut listen = None;
    let mut verbose = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = || -> Result<String, String> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--listen" => {
                let v = value()?;
                listen = Some(
                    v.parse()
                        .map_err(|_| format!("--listen: expected ADDR:PORT, got {v:?}"))?,
                );
            }
            "--auth-key" => options.auth_keys.push((value()?, true, false)),
            "--ephemeral-auth-key" => options.auth_keys.push((value()?, true, true)),
            "--auto-approve" => {
                options.auto_approve_routes = true;
                options.auto_approve_exit_nodes = true;
            }
            "--auto-approve-routes" => options.auto_approve_routes = true,
            "--auto-approve-exit-nodes" => options.auto_approve_exit_nodes = true,
            "--keepalive" => options.keepalive = secs(flag, &value()?)?,
            "--followup-timeout" => options.followup_timeout = secs(flag, &value()?)?,
            "--ephemeral-idle" => options.ephemeral_idle = secs(flag, &value()?)?,
            "--dns-config" => options.dns_config = Some(read_json(&value()?)?),
            "--derp-map" => options.derp_map = Some(read_json(&value()?)?),
            "--packet-filter" => options.packet_filter = Some(read_json(&value()?)?),
            "--domain" => {
                let v = value()?;
                if v.is_empty() || v.starts_with('.') || v.ends_with('.') {
                    return Err(format!("--domain: {v:?} is not a domain name"));
                }
                options.domain = v;
            }
            "--server-url" => options.server_url = Some(value()?.trim_end_matches('/').into()),
            "--key-file" => options.private_key = Some(load_or_create_key(&value()?)?),
            "-v" | "--verbose" => verbose = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
        i += 1;
    }
    options.listen = listen.ok_or("--listen ADDR:PORT is required")?;
    Ok((options, verbose))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (options, verbose) = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("testcontrol: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    init_stderr_logger(if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("testcontrol: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
        let prepared = Prepared::new(&options, listener).map_err(|e| e.to_string())?;
        println!(
            "testcontrol ready url={} key={}",
            prepared.url,
            prepared.server_key()
        );
        let _ = std::io::stdout().flush();
        prepared.serve().await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testcontrol: {e}");
            ExitCode::FAILURE
        }
    }
}
