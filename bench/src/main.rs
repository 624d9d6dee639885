//! The benchmark: iperf3 through ringscale, Debian's wireguard-go and boringtun-cli
//! in network namespaces, with no tunnel as the ceiling, in three topologies (exit node
//! — the headline —, point-to-point, tailnet; see `cases.rs`). Run as root:
//!
//!     cargo run --release -p ringscale-bench            # full: 3 runs x 10 s
//!     cargo run --release -p ringscale-bench -- --quick # smoke: 1 run x 3 s
//!
//! Order of work: for each run, for each topology and case of the plan, build the
//! case's bed fresh, run its tests, tear the bed down. Interleaving cases within a run
//! spreads other load on the machine over all cases instead of biasing whichever ran
//! during a busy minute.

#![forbid(unsafe_code)]

mod bed;
mod cases;
mod cleanup;
mod hub;
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
use crate::cases::{Test, Traffic, Tunnel};
use crate::options::{Options, Scenario};
use crate::report::{EndMemory, KneeStep, MemoryRecord, RunRecord};

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
struct PlanInfo {
    topology: String,
    case: String,
    tests: Vec<String>,
}

#[derive(Serialize)]
struct OptionsInfo {
    runs: u32,
    duration_s: u32,
    topologies: Vec<String>,
    pinned: bool,
    nice: Option<i32>,
    udp_rate: String,
    plan: Vec<PlanInfo>,
}

#[derive(Serialize)]
struct Report {
    started_utc: String,
    started_unix: u64,
    host: HostInfo,
    options: OptionsInfo,
    cases: Vec<CaseInfo>,
    tool_versions: BTreeMap<String, String>,
    /// Size in bytes of each tunnel program that ran (ringscale: the binary used).
    binary_bytes: BTreeMap<String, u64>,
    /// `topology/case` that produced no (further) numbers: tool missing, setup failed,
    /// tunnel died.
    case_failures: BTreeMap<String, String>,
    /// Single runs that failed (their numbers are missing from the medians).
    run_errors: Vec<String>,
    /// True when Ctrl-C (or an error) ended the run early; what was measured is kept.
    incomplete: bool,
    runs: Vec<RunRecord>,
    memory: Vec<MemoryRecord>,
    summary: Vec<report::Summary>,
    targets: Vec<report::Target>,
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
        Tunnel::Ringscale {
            daemon_args,
            daemon_env,
        } => {
            let env: String = daemon_env
                .iter()
                .map(|(k, v)| format!("{k}={v} "))
                .collect();
            format!(
                "{env}ringscale tailscaled --wg-config {}",
                daemon_args.join(" ")
            )
            .trim()
            .to_string()
        }
        Tunnel::RingscaleTailnet {
            daemon_args,
            path,
            synthetic_peers,
        } => {
            let mut s = format!(
                "ringscale tailscaled --config {} ({path:?} path)",
                daemon_args.join(" ")
            )
            .replace("  ", " ");
            if *synthetic_peers > 0 {
                s.push_str(&format!(", {synthetic_peers} synthetic peers"));
            }
            s
        }
    }
}

/// The failure key of a scenario.
fn key(s: &Scenario) -> String {
    format!("{}/{}", s.topology.name(), s.case.name)
}

/// Which binary a tunnel runs, for the size report.
fn binary_name(t: &Tunnel) -> Option<&'static str> {
    match t {
        Tunnel::None => None,
        Tunnel::WireguardGo => Some("wireguard-go"),
        Tunnel::Boringtun { .. } => Some("boringtun-cli"),
        Tunnel::Ringscale { .. } | Tunnel::RingscaleTailnet { .. } => Some("ringscale"),
    }
}

/// Returns Ok(true) when every planned case produced numbers.
fn bench(opts: &Options) -> Result<bool, String> {
    if ringscale_sys::cred::euid() != 0 {
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

    let cases = opts.cases();
    let tools = tools::prepare(opts, &cases)?;
    if let Some(n) = opts.nice {
        cleanup::set_autogroup_nice(n)?;
    }
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    for sc in &opts.plan {
        let missing = match &sc.case.tunnel {
            Tunnel::None => None,
            Tunnel::WireguardGo => tools.wireguard_go.as_ref().err(),
            Tunnel::Boringtun { .. } => tools.boringtun.as_ref().err(),
            Tunnel::Ringscale { .. } | Tunnel::RingscaleTailnet { .. } => {
                tools.ringscale.as_ref().err()
            }
        };
        if let Some(why) = missing {
            eprintln!("bench: {}: skipped: {why}", key(sc));
            failures.insert(key(sc), why.clone());
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

    // Seconds: iperf3 start-up and the counters cost about 1.5 s per test; tailnet
    // beds take a few seconds to join.
    let estimate: f64 = opts
        .plan
        .iter()
        .filter(|sc| !failures.contains_key(&key(sc)))
        .map(|sc| {
            let setup_s = if matches!(sc.case.tunnel, Tunnel::RingscaleTailnet { .. }) {
                3.0
            } else {
                0.5
            };
            setup_s
                + sc.tests
                    .iter()
                    .map(|t| match t.traffic {
                        Traffic::UdpKnee => 6.0 * (f64::from(knee_step_s(opts)) + 1.5),
                        _ => f64::from(opts.duration_s) + 1.5,
                    })
                    .sum::<f64>()
        })
        .sum::<f64>()
        * f64::from(opts.runs);
    let topo_names: Vec<&str> = opts.topologies.iter().map(|t| t.name()).collect();
    eprintln!(
        "bench: {} runs x {} scenarios x {} s per test, topologies {}{}; about {} min",
        opts.runs,
        opts.plan.len() - failures.len(),
        opts.duration_s,
        topo_names.join(", "),
        if setup.pin.is_some() { ", pinned" } else { "" },
        (estimate / 60.0).ceil()
    );

    let mut records = Vec::new();
    let mut memory = Vec::new();
    let mut errors = Vec::new();
    let outcome = run_all(
        opts,
        &setup,
        &mut records,
        &mut memory,
        &mut failures,
        &mut errors,
    );
    let incomplete = outcome.is_err();
    if let Err(e) = &outcome {
        eprintln!("bench: stopped early: {e}");
    }

    let test_names = opts.test_names();
    let rows: Vec<report::Row> = opts
        .plan
        .iter()
        .map(|sc| report::Row {
            topology: sc.topology.name(),
            case: sc.case.name,
            ceiling: sc.case.tunnel == Tunnel::None,
        })
        .collect();
    let summary = report::summarize(&records, &test_names, &rows);
    let targets = report::targets(&summary);
    let mut binary_bytes = BTreeMap::new();
    for (name, path) in [
        ("ringscale", tools.ringscale.as_ref().ok()),
        ("wireguard-go", tools.wireguard_go.as_ref().ok()),
        ("boringtun-cli", tools.boringtun.as_ref().ok()),
    ] {
        let used = cases.iter().any(|c| binary_name(&c.tunnel) == Some(name));
        if let Some(len) = path
            .filter(|_| used)
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
        {
            binary_bytes.insert(name.to_string(), len);
        }
    }

    println!(
        "\nringscale bench: {} run(s) x {} s per test, median Gbit/s, {}{}, {}",
        opts.runs,
        opts.duration_s,
        if setup.pin.is_some() {
            "pinned"
        } else {
            "unpinned"
        },
        opts.nice.map(|n| format!(", nice {n}")).unwrap_or_default(),
        if incomplete { "INCOMPLETE" } else { "complete" }
    );
    for (i, topo) in opts.topologies.iter().enumerate() {
        let headline = if i == 0 && *topo == cases::Topology::ExitNode {
            " (headline)"
        } else {
            ""
        };
        println!("\n== {}{headline}: {} ==", topo.name(), topo.describe());
        print!("{}", report::table(&summary, topo.name()));
    }
    if opts.topologies.contains(&cases::Topology::PointToPoint) {
        println!();
        print!("{}", report::targets_text(&targets, &summary));
    }
    let comparisons = report::comparisons(&summary);
    if !comparisons.is_empty() {
        println!("\nlevers and paths (same run, same test):");
        print!("{comparisons}");
    }
    let mem = report::memory_table(&memory, &rows, &|case| {
        let c = cases.iter().find(|c| c.name == case)?;
        binary_bytes.get(binary_name(&c.tunnel)?).copied()
    });
    if !mem.is_empty() {
        println!("\nmemory of the tunnel processes (median over runs) and binary size:");
        print!("{mem}");
    }
    for (k, why) in &failures {
        println!("\n{k}: FAILED: {why}");
    }
    for e in &errors {
        println!("run failed: {e}");
    }
    println!("\ncases:");
    for c in &cases {
        println!("  {:<27} {}", c.name, c.note);
    }
    println!(
        "columns: x wg-go and % ceil compare medians of the same test in the same topology and run \
         (ceil = veth/direct, no tunnel); tun cores and CPU-s/GB are the tunnel processes' user+system \
         CPU (both ends; '-' without a tunnel);\n\
         retrans/loss = TCP retransmits, or UDP loss at the offered rate (udp-knee: the highest \
         rate with < 1 % loss, Gbit/s received there); rcvbuf err = UdpRcvbufErrors in all \
         namespaces (the tunnels' sockets; in udp tests iperf3's too); tun drops = rx+tx drops of \
         the tunnel interfaces; bg cores = machine load just before each run (other work)."
    );
    if let Ok(p) = tools.ringscale.as_ref() {
        println!(
            "ringscale binary: {} ({} bytes)",
            p.display(),
            binary_bytes.get("ringscale").copied().unwrap_or(0)
        );
    }

    let rep = Report {
        started_utc: report::utc_stamp(started),
        started_unix: started,
        host: host_info(),
        options: OptionsInfo {
            runs: opts.runs,
            duration_s: opts.duration_s,
            topologies: topo_names.iter().map(|s| s.to_string()).collect(),
            pinned: setup.pin.is_some(),
            nice: opts.nice,
            udp_rate: opts.udp_rate.clone(),
            plan: opts
                .plan
                .iter()
                .map(|sc| PlanInfo {
                    topology: sc.topology.name().into(),
                    case: sc.case.name.into(),
                    tests: sc.tests.iter().map(|t| t.name.to_string()).collect(),
                })
                .collect(),
        },
        cases: cases
            .iter()
            .map(|c| CaseInfo {
                name: c.name.into(),
                note: c.note.into(),
                mtu: c.mtu,
                tunnel: tunnel_label(&c.tunnel),
            })
            .collect(),
        tool_versions: tools.versions.clone(),
        binary_bytes,
        case_failures: failures.clone(),
        run_errors: errors.clone(),
        incomplete,
        runs: records,
        memory,
        summary,
        targets,
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
    memory: &mut Vec<MemoryRecord>,
    failures: &mut BTreeMap<String, String>,
    errors: &mut Vec<String>,
) -> Result<(), String> {
    for run in 1..=opts.runs {
        for sc in &opts.plan {
            if failures.contains_key(&key(sc)) {
                continue;
            }
            cleanup::check_interrupted()?;
            wait_idle(opts.wait_idle_s)?;
            let t0 = Instant::now();
            let mut bed = match bed::build(sc.topology, &sc.case, setup) {
                Ok(b) => b,
                Err(e) => {
                    cleanup::check_interrupted()?;
                    eprintln!("bench: {}: setup failed: {e}", key(sc));
                    failures.insert(key(sc), format!("setup: {e}"));
                    continue;
                }
            };
            eprintln!(
                "bench: run {run}/{} {}: bed up in {:.1} s",
                opts.runs,
                key(sc),
                t0.elapsed().as_secs_f64()
            );
            // Tailnet nodes: the netmap must have arrived whole before "idle" means
            // idle with it.
            let peers = match netmap_peers(&bed, setup, &sc.case.tunnel) {
                Ok(p) => p,
                Err(e) => {
                    cleanup::check_interrupted()?;
                    eprintln!("bench: {}: setup failed: {e}", key(sc));
                    failures.insert(key(sc), format!("setup: {e}"));
                    continue;
                }
            };
            // (VmRSS, RssAnon) per tunnel process.
            let idle: Vec<(Option<u64>, Option<u64>)> = bed
                .tunnel_pids()
                .into_iter()
                .map(|pid| {
                    let rss = measure::memory_kib(pid).map(|(rss, _)| rss);
                    (rss, measure::rss_anon_kib(pid))
                })
                .collect();
            let sampler = measure::RssSampler::start(bed.tunnel_pids());
            for test in &sc.tests {
                let result = if test.traffic == Traffic::UdpKnee {
                    measure_knee(opts, setup, sc, test, &mut bed, run)
                } else {
                    measure_one(opts, setup, sc, test, &mut bed, run, opts.duration_s, None)
                };
                match result {
                    Ok(r) => {
                        eprintln!(
                            "bench:   {:<10} {:>7.3} Gbit/s  tunnel {} cores  {} CPU-s/GB  bg {} cores{}",
                            test.name,
                            r.gbit_s,
                            fmt_opt(r.tunnel_cores, 2),
                            fmt_opt(r.cpu_s_per_gb, 1),
                            fmt_opt(r.background_busy_cores, 2),
                            match (r.udp_lost_percent, r.udp_offered_mbit) {
                                (Some(l), Some(m)) => format!("  {l:.2}% lost at {m} Mbit/s"),
                                (Some(l), None) => format!("  {l:.2}% lost"),
                                _ => String::new(),
                            }
                        );
                        records.push(r);
                    }
                    Err(e) => {
                        cleanup::check_interrupted()?;
                        eprintln!("bench:   {:<10} failed: {e}", test.name);
                        errors.push(format!("{} {} run {run}: {e}", key(sc), test.name));
                        // A dead tunnel ends the case for good; a failed iperf3 run
                        // only costs that run.
                        if let Err(dead) = bed.check_alive() {
                            failures.insert(key(sc), dead);
                            break;
                        }
                    }
                }
            }
            let load = sampler.stop();
            let mut ends: Vec<(usize, EndMemory)> = bed
                .tunnel
                .iter()
                .zip(idle)
                .zip(load)
                .zip(peers)
                .map(|(((t, (idle, idle_anon)), load), peers)| {
                    let m = EndMemory {
                        role: bed.hosts[t.host].role.to_string(),
                        idle_rss_kib: idle,
                        idle_rss_anon_kib: idle_anon,
                        load_rss_kib: load,
                        peak_hwm_kib: measure::memory_kib(t.proc.pid()).map(|(_, hwm)| hwm),
                        netmap_peers: peers,
                    };
                    (t.host, m)
                })
                .collect();
            // Client first, whatever order the tunnels started in.
            ends.sort_by_key(|(host, _)| *host);
            let ends = ends.into_iter().map(|(_, m)| m).collect();
            memory.push(MemoryRecord {
                topology: sc.topology.name().into(),
                case: sc.case.name.into(),
                run,
                ends,
            });
        }
    }
    Ok(())
}

/// Peers in each tunnel process's netmap, in `bed.tunnel` order, for tailnet cases
/// (None for the others): `tailscale status --json` on the node's LocalAPI socket,
/// polled until every node lists all the tailnet's other nodes (the two measured ones
/// plus the synthetic peers), for at most `hub::JOIN_TIMEOUT`.
fn netmap_peers(bed: &Bed, setup: &Setup, tunnel: &Tunnel) -> Result<Vec<Option<u64>>, String> {
    let Tunnel::RingscaleTailnet {
        synthetic_peers, ..
    } = tunnel
    else {
        return Ok(vec![None; bed.tunnel.len()]);
    };
    let want = u64::from(*synthetic_peers) + 1;
    let bin = setup.tools.ringscale.as_ref().map_err(Clone::clone)?;
    let count = |host: usize| -> Result<u64, String> {
        let socket = bed.tailnet_node_dir(host).join("tailscaled.sock");
        let out = sys::run(
            std::process::Command::new(bin)
                .env("TS_BE_CLI", "1")
                .arg("--socket")
                .arg(&socket)
                .args(["status", "--json"]),
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("tailscale status --json: {e}"))?;
        Ok(v.get("Peer")
            .and_then(|p| p.as_object())
            .map_or(0, |p| p.len() as u64))
    };
    let hosts: Vec<usize> = bed.tunnel.iter().map(|t| t.host).collect();
    let mut counts = vec![0; hosts.len()];
    let deadline = Instant::now() + hub::JOIN_TIMEOUT;
    loop {
        for (c, host) in counts.iter_mut().zip(&hosts) {
            *c = count(*host)?;
        }
        if counts.iter().all(|c| *c >= want) {
            return Ok(counts.into_iter().map(Some).collect());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "netmaps hold {counts:?} peers after {:?}, want {want} each",
                hub::JOIN_TIMEOUT
            ));
        }
        cleanup::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(200));
    }
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

/// One iperf3 run of `duration_s` (UDP at `udp_mbit` when given, else at
/// `--udp-rate`) with the counters around it.
#[allow(clippy::too_many_arguments)]
fn measure_one(
    opts: &Options,
    setup: &Setup,
    sc: &Scenario,
    test: &Test,
    bed: &mut Bed,
    run: u32,
    duration_s: u32,
    udp_mbit: Option<u64>,
) -> Result<RunRecord, String> {
    bed.check_alive()?;
    let background = measure::busy_cores_over(Duration::from_millis(500));
    let rate = udp_mbit
        .map(|m| format!("{m}M"))
        .unwrap_or_else(|| opts.udp_rate.clone());
    let params = iperf::Params {
        iperf3: &setup.tools.iperf3,
        test,
        duration_s,
        mtu: sc.case.mtu,
        udp_rate: &rate,
    };
    let before = measure::Snapshot::take(bed);
    let outcome = iperf::run(bed, &params)?;
    let after = measure::Snapshot::take(bed);
    bed.check_alive()?;
    let d = measure::delta(&before, &after);
    if bed.relayed && d.relayed_packets.unwrap_or(0) * 1000 < outcome.bytes / 1000 {
        // Far fewer packets through the relay than the payload needs (a 1 MB payload
        // is ~800 packets): the nodes found a path around the block.
        return Err(format!(
            "a relayed case whose traffic did not go through the DERP relay ({} packets relayed)",
            d.relayed_packets.unwrap_or(0)
        ));
    }
    let gb = outcome.bytes as f64 / 1e9;
    let udp = test.udp();
    Ok(RunRecord {
        topology: sc.topology.name().into(),
        case: sc.case.name.into(),
        test: test.name.into(),
        run,
        gbit_s: outcome.bits_per_second / 1e9,
        bytes: outcome.bytes,
        retransmits: if udp { None } else { outcome.retransmits },
        udp_lost_percent: if udp { outcome.udp_lost_percent } else { None },
        udp_offered_mbit: udp_mbit,
        knee_steps: None,
        tunnel_cpu_s: d.tunnel_cpu_s,
        cpu_s_per_gb: d.tunnel_cpu_s.filter(|_| gb > 0.0).map(|c| c / gb),
        tunnel_cores: d.tunnel_cpu_s.map(|c| c / d.wall_s),
        machine_busy_cores: d.machine_busy_cores,
        background_busy_cores: background,
        udp_rcvbuf_errors: d.udp_rcvbuf_errors,
        tun_drops: d.tun_drops,
        relay_cpu_s: d.relay_cpu_s,
        relayed_packets: d.relayed_packets,
        wall_s: d.wall_s,
    })
}

/// Seconds per rate of the knee search: a third of `--duration`, 3 to 5 s. Shorter
/// steps let a single scheduling hiccup at the start of a flow on the loaded 2-core
/// machine decide the loss.
fn knee_step_s(opts: &Options) -> u32 {
    (opts.duration_s / 3).clamp(3, 5)
}

/// The UDP loss knee: iperf3 -u at rising rates (see `cases::KNEE_*`); the record is
/// the step with the highest received rate below the loss limit, with every step
/// attached. Bounded: at most `KNEE_MAX_STEPS` runs of `knee_step_s` seconds.
fn measure_knee(
    opts: &Options,
    setup: &Setup,
    sc: &Scenario,
    test: &Test,
    bed: &mut Bed,
    run: u32,
) -> Result<RunRecord, String> {
    let step_s = knee_step_s(opts);
    let mut search = KneeSearch::new();
    let mut best: Option<RunRecord> = None;
    let mut steps = Vec::new();
    while let Some(rate) = search.next_rate() {
        cleanup::check_interrupted()?;
        let r = measure_one(opts, setup, sc, test, bed, run, step_s, Some(rate))?;
        let lost = r.udp_lost_percent;
        steps.push(KneeStep {
            offered_mbit: rate,
            gbit_s: r.gbit_s,
            lost_percent: lost,
        });
        let good = search.record(rate, r.gbit_s, lost);
        if good && best.as_ref().is_none_or(|b| r.gbit_s > b.gbit_s) {
            best = Some(r);
        }
    }
    let mut rec = best.ok_or_else(|| {
        format!(
            "no rate with < {} % loss (tried {})",
            cases::KNEE_LOSS_LIMIT_PERCENT,
            steps
                .iter()
                .map(|s| format!(
                    "{} Mbit/s: {} % lost",
                    s.offered_mbit,
                    fmt_opt(s.lost_percent, 1)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    rec.knee_steps = Some(steps);
    Ok(rec)
}

/// The rate sequence of the knee search, as plain state (no I/O): double from
/// `KNEE_START_MBIT` while loss stays under the limit and the receiver keeps up with
/// what was offered; once a rate fails (or the last one passes), `KNEE_REFINE_STEPS`
/// steps halfway (on a log scale) between the last good and the first bad rate; when
/// even the first rate fails, halve.
struct KneeSearch {
    next: Option<u64>,
    good: Option<u64>,
    bad: Option<u64>,
    steps: usize,
    refinements: usize,
}

impl KneeSearch {
    fn new() -> KneeSearch {
        KneeSearch {
            next: Some(cases::KNEE_START_MBIT),
            good: None,
            bad: None,
            steps: 0,
            refinements: 0,
        }
    }

    fn next_rate(&mut self) -> Option<u64> {
        if self.steps >= cases::KNEE_MAX_STEPS {
            return None;
        }
        self.next.take()
    }

    /// Records the outcome of `rate`; returns whether it counts as under the knee.
    fn record(&mut self, rate: u64, gbit_s: f64, lost_percent: Option<f64>) -> bool {
        self.steps += 1;
        let ok = lost_percent.is_some_and(|l| l < cases::KNEE_LOSS_LIMIT_PERCENT);
        // The sender (iperf3 itself) cannot offer more: higher rates say nothing new.
        let sender_limited = ok && gbit_s * 1000.0 < 0.8 * rate as f64;
        if ok {
            self.good = Some(self.good.map_or(rate, |g| g.max(rate)));
        } else {
            self.bad = Some(self.bad.map_or(rate, |b| b.min(rate)));
        }
        self.next = match (self.good, self.bad) {
            (_, _) if self.refinements >= cases::KNEE_REFINE_STEPS || sender_limited => None,
            (Some(g), None) if g * 2 <= cases::KNEE_LAST_MBIT => Some(g * 2),
            (Some(_), None) => None,
            (None, Some(b)) if b / 2 >= 10 => Some(b / 2),
            (None, Some(_)) => None,
            (Some(g), Some(b)) => {
                // Halfway on a log scale, rounded to 10 Mbit/s.
                let mid = (((g * b) as f64).sqrt() / 10.0).round() as u64 * 10;
                self.refinements += 1;
                (mid > g && mid < b).then_some(mid)
            }
            (None, None) => None,
        };
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search against a link that loses nothing up to `capacity` Mbit/s and
    /// drops the excess above it.
    fn search(capacity: f64) -> Vec<u64> {
        let mut s = KneeSearch::new();
        let mut tried = Vec::new();
        while let Some(rate) = s.next_rate() {
            tried.push(rate);
            let got = (rate as f64).min(capacity);
            let lost = 100.0 * (rate as f64 - got) / rate as f64;
            s.record(rate, got / 1000.0, Some(lost));
        }
        tried
    }

    #[test]
    fn knee_doubles_then_refines_twice() {
        assert_eq!(search(1500.0), [250, 500, 1000, 2000, 1410, 1680]);
        assert_eq!(search(1300.0), [250, 500, 1000, 2000, 1410, 1190]);
        // Everything passes: stops at the last rate.
        assert_eq!(search(1e9), [250, 500, 1000, 2000, 4000, 8000]);
        // Even the first rate fails: halves down to what passes, then refines.
        assert_eq!(search(100.0), [250, 125, 62, 90, 110]);
    }

    #[test]
    fn knee_stops_when_the_sender_cannot_keep_up() {
        let mut s = KneeSearch::new();
        assert_eq!(s.next_rate(), Some(250));
        assert!(s.record(250, 0.25, Some(0.0)));
        assert_eq!(s.next_rate(), Some(500));
        // No loss, but only 300 of 500 Mbit/s arrived: iperf3 itself is the limit.
        assert!(s.record(500, 0.3, Some(0.0)));
        assert_eq!(s.next_rate(), None);
        // Unknown loss never counts as good.
        let mut s = KneeSearch::new();
        s.next_rate();
        assert!(!s.record(250, 0.25, None));
    }
}
