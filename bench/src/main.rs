//! The benchmark: iperf3 through ringscale, Debian's wireguard-go and boringtun-cli
//! between network namespaces, with plain veth as the ceiling. Run as root:
//!
//!     cargo run --release -p ringscale-bench            # full: 3 runs x 10 s
//!     cargo run --release -p ringscale-bench -- --quick # smoke: 1 run x 3 s
//!
//! Order of work: for each run, for each case, build the case's bed fresh, run every
//! test, tear the bed down. Interleaving cases within a run spreads other load on the
//! machine over all cases instead of biasing whichever ran during a busy minute.

mod bed;
mod cases;
mod cleanup;
mod iperf;
mod measure;
mod options;
mod report;
mod sys;
mod tools;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::bed::{Bed, Setup};
use crate::cases::{Case, Test, Tunnel};
use crate::options::Options;
use crate::report::RunRecord;

#[derive(Serialize)]
struct CaseInfo {
    name: String,
    note: String,
    mtu: u32,
    tunnel: String,
}

#[derive(Serialize)]
struct HostInfo {
    kernel: String,
    online_cpus: usize,
    cpu_model: String,
}

#[derive(Serialize)]
struct OptionsInfo {
    runs: u32,
    duration_s: u32,
    topology: String,
    pinned: bool,
    nice: Option<i32>,
    udp_rate: String,
    tests: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    started_utc: String,
    started_unix: u64,
    host: HostInfo,
    options: OptionsInfo,
    cases: Vec<CaseInfo>,
    tool_versions: BTreeMap<String, String>,
    /// Cases that produced no (further) numbers: tool missing, setup failed, tunnel died.
    case_failures: BTreeMap<String, String>,
    /// Single runs that failed (their numbers are missing from the medians).
    run_errors: Vec<String>,
    /// True when Ctrl-C (or an error) ended the run early; what was measured is kept.
    incomplete: bool,
    runs: Vec<RunRecord>,
    summary: Vec<report::Summary>,
}

fn main() -> ExitCode {
    cleanup::install();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match options::parse(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{}", options::usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench: {e}\n\n{}", options::usage());
            return ExitCode::from(2);
        }
    };
    let code = match bench(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::from(1)
        }
    };
    cleanup::remove_all();
    code
}

fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
}

/// Each host gets half of the CPUs: client side the lower half, server side the upper.
fn pin_sets() -> Option<(String, String)> {
    let n = online_cpus();
    if n < 2 {
        eprintln!("bench: --pin needs at least 2 CPUs; running unpinned");
        return None;
    }
    let half = n / 2;
    let list = |a: usize, b: usize| {
        if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        }
    };
    Some((list(0, half - 1), list(half, n - 1)))
}

fn host_info() -> HostInfo {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    HostInfo {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        online_cpus: online_cpus(),
        cpu_model,
    }
}

fn tunnel_label(t: &Tunnel) -> String {
    match t {
        Tunnel::None => "none".into(),
        Tunnel::WireguardGo => "wireguard-go".into(),
        Tunnel::Boringtun { threads } => format!("boringtun-cli --threads {threads}"),
        Tunnel::Ringscale { daemon_args } => {
            format!("ringscale tailscaled {}", daemon_args.join(" "))
                .trim()
                .to_string()
        }
    }
}

/// Returns Ok(true) when every selected case produced numbers.
fn bench(opts: &Options) -> Result<bool, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (network namespaces, TUN devices)".into());
    }
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let json_path = opts.json.clone().unwrap_or_else(|| {
        tools::workspace_root()
            .join("bench/results")
            .join(format!("{}.json", report::utc_stamp(started)))
    });

    let tools = tools::prepare(opts, &opts.cases)?;
    if let Some(n) = opts.nice {
        cleanup::set_autogroup_nice(n)?;
    }
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    for case in &opts.cases {
        let missing = match &case.tunnel {
            Tunnel::None => None,
            Tunnel::WireguardGo => tools.wireguard_go.as_ref().err(),
            Tunnel::Boringtun { .. } => tools.boringtun.as_ref().err(),
            Tunnel::Ringscale { .. } => tools.ringscale.as_ref().err(),
        };
        if let Some(why) = missing {
            eprintln!("bench: {}: skipped: {why}", case.name);
            failures.insert(case.name.to_string(), why.clone());
        }
    }
    // The same keys for every tunnel implementation.
    let setup = Setup {
        tools: &tools,
        client_key: bed::gen_keypair(&tools.wg)?,
        server_key: bed::gen_keypair(&tools.wg)?,
        pin: if opts.pin { pin_sets() } else { None },
        nice: opts.nice,
    };

    let active = opts
        .cases
        .iter()
        .filter(|c| !failures.contains_key(c.name))
        .count();
    let estimate = u64::from(opts.runs)
        * active as u64
        * (opts.tests.len() as u64 * (u64::from(opts.duration_s) + 2) + 3);
    eprintln!(
        "bench: {} runs x {} cases x {} tests x {} s, topology {}{}; about {} min",
        opts.runs,
        active,
        opts.tests.len(),
        opts.duration_s,
        opts.topology.name(),
        if setup.pin.is_some() { ", pinned" } else { "" },
        estimate.div_ceil(60)
    );

    let mut records = Vec::new();
    let mut errors = Vec::new();
    let outcome = run_all(opts, &setup, &mut records, &mut failures, &mut errors);
    let incomplete = outcome.is_err();
    if let Err(e) = &outcome {
        eprintln!("bench: stopped early: {e}");
    }

    let test_names: Vec<&str> = opts.tests.iter().map(|t| t.name).collect();
    let case_names: Vec<&str> = opts.cases.iter().map(|c| c.name).collect();
    let summary = report::summarize(&records, &test_names, &case_names);
    println!(
        "\nringscale bench: {} run(s) x {} s per test, median Gbit/s, topology {}, {}{}, {}",
        opts.runs,
        opts.duration_s,
        opts.topology.name(),
        if setup.pin.is_some() {
            "pinned"
        } else {
            "unpinned"
        },
        opts.nice.map(|n| format!(", nice {n}")).unwrap_or_default(),
        if incomplete { "INCOMPLETE" } else { "complete" }
    );
    print!("{}", report::table(&summary, &failures));
    for e in &errors {
        println!("run failed: {e}");
    }
    println!("\ncases:");
    for c in &opts.cases {
        println!("  {:<13} {}", c.name, c.note);
    }
    println!(
        "columns: x wg-go and % veth compare medians of the same test in this run; tun cores and \
         CPU-s/GB are the tunnel processes' user+system CPU (both ends; '-' for the kernel-only veth);\n\
         retrans = TCP retransmits; rcvbuf err = UdpRcvbufErrors in both namespaces (the tunnels' sockets; in the udp test iperf3's too); tun drops = \
         rx+tx drops of both tunnel interfaces; bg cores = machine load just before each run (other work)."
    );

    let rep = Report {
        started_utc: report::utc_stamp(started),
        started_unix: started,
        host: host_info(),
        options: OptionsInfo {
            runs: opts.runs,
            duration_s: opts.duration_s,
            topology: opts.topology.name().into(),
            pinned: setup.pin.is_some(),
            nice: opts.nice,
            udp_rate: opts.udp_rate.clone(),
            tests: test_names.iter().map(|s| s.to_string()).collect(),
        },
        cases: opts
            .cases
            .iter()
            .map(|c| CaseInfo {
                name: c.name.into(),
                note: c.note.into(),
                mtu: c.mtu,
                tunnel: tunnel_label(&c.tunnel),
            })
            .collect(),
        tool_versions: tools.versions.clone(),
        case_failures: failures.clone(),
        run_errors: errors.clone(),
        incomplete,
        runs: records,
        summary,
    };
    write_json(&json_path, &rep)?;
    println!("results: {}", json_path.display());
    Ok(!incomplete && failures.is_empty() && errors.is_empty())
}

fn write_json(path: &PathBuf, rep: &Report) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(rep).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

fn run_all(
    opts: &Options,
    setup: &Setup,
    records: &mut Vec<RunRecord>,
    failures: &mut BTreeMap<String, String>,
    errors: &mut Vec<String>,
) -> Result<(), String> {
    for run in 1..=opts.runs {
        for case in &opts.cases {
            if failures.contains_key(case.name) {
                continue;
            }
            cleanup::check_interrupted()?;
            wait_idle(opts.wait_idle_s)?;
            let t0 = Instant::now();
            let mut bed = match bed::build(opts.topology, case, setup) {
                Ok(b) => b,
                Err(e) => {
                    cleanup::check_interrupted()?;
                    eprintln!("bench: {}: setup failed: {e}", case.name);
                    failures.insert(case.name.to_string(), format!("setup: {e}"));
                    continue;
                }
            };
            eprintln!(
                "bench: run {run}/{} {}: bed up in {:.1} s",
                opts.runs,
                case.name,
                t0.elapsed().as_secs_f64()
            );
            for test in &opts.tests {
                match measure_one(opts, setup, case, test, &mut bed, run) {
                    Ok(r) => {
                        eprintln!(
                            "bench:   {:<10} {:>7.3} Gbit/s  tunnel {} cores  {} CPU-s/GB  bg {} cores",
                            test.name,
                            r.gbit_s,
                            fmt_opt(r.tunnel_cores, 2),
                            fmt_opt(r.cpu_s_per_gb, 1),
                            fmt_opt(r.background_busy_cores, 2),
                        );
                        records.push(r);
                    }
                    Err(e) => {
                        cleanup::check_interrupted()?;
                        eprintln!("bench:   {:<10} failed: {e}", test.name);
                        errors.push(format!("{} {} run {run}: {e}", case.name, test.name));
                        // A dead tunnel ends the case for good; a failed iperf3 run
                        // only costs that run.
                        if let Err(dead) = bed.check_alive() {
                            failures.insert(case.name.to_string(), dead);
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

/// Waits, up to `max_s`, for the machine to be nearly idle (below 0.3 busy cores).
fn wait_idle(max_s: u32) -> Result<(), String> {
    if max_s == 0 {
        return Ok(());
    }
    let end = Instant::now() + Duration::from_secs(u64::from(max_s));
    loop {
        let busy = measure::busy_cores_over(Duration::from_secs(1)).unwrap_or(0.0);
        if busy < 0.3 {
            return Ok(());
        }
        cleanup::check_interrupted()?;
        if Instant::now() >= end {
            eprintln!("bench: machine still busy ({busy:.2} cores); going on");
            return Ok(());
        }
    }
}

fn measure_one(
    opts: &Options,
    setup: &Setup,
    case: &Case,
    test: &Test,
    bed: &mut Bed,
    run: u32,
) -> Result<RunRecord, String> {
    bed.check_alive()?;
    let background = measure::busy_cores_over(Duration::from_millis(500));
    let params = iperf::Params {
        iperf3: &setup.tools.iperf3,
        test,
        duration_s: opts.duration_s,
        mtu: case.mtu,
        udp_rate: &opts.udp_rate,
    };
    let before = measure::Snapshot::take(bed);
    let outcome = iperf::run(bed, &params)?;
    let after = measure::Snapshot::take(bed);
    bed.check_alive()?;
    let d = measure::delta(&before, &after);
    let gb = outcome.bytes as f64 / 1e9;
    Ok(RunRecord {
        case: case.name.into(),
        test: test.name.into(),
        run,
        gbit_s: outcome.bits_per_second / 1e9,
        bytes: outcome.bytes,
        retransmits: if test.udp { None } else { outcome.retransmits },
        udp_lost_percent: if test.udp {
            outcome.udp_lost_percent
        } else {
            None
        },
        tunnel_cpu_s: d.tunnel_cpu_s,
        cpu_s_per_gb: d.tunnel_cpu_s.filter(|_| gb > 0.0).map(|c| c / gb),
        tunnel_cores: d.tunnel_cpu_s.map(|c| c / d.wall_s),
        machine_busy_cores: d.machine_busy_cores,
        background_busy_cores: background,
        udp_rcvbuf_errors: d.udp_rcvbuf_errors,
        tun_drops: d.tun_drops,
        wall_s: d.wall_s,
    })
}
