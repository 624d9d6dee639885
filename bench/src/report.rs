//! Results: one record per iperf3 run (or UDP knee search), medians per topology, case
//! and test, the tables on stdout and the JSON file.

use std::fmt::Write as _;

use serde::Serialize;

/// One rate of a UDP knee search.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct KneeStep {
    pub offered_mbit: u64,
    pub gbit_s: f64,
    pub lost_percent: Option<f64>,
}

#[derive(Serialize, Clone, Debug)]
pub struct RunRecord {
    pub topology: String,
    pub case: String,
    pub test: String,
    /// 1-based run number.
    pub run: u32,
    /// Received rate; for udp-knee the rate at the knee.
    pub gbit_s: f64,
    /// Payload bytes the receiver got.
    pub bytes: u64,
    pub retransmits: Option<u64>,
    pub udp_lost_percent: Option<f64>,
    /// The iperf3 -b rate of a UDP run (for udp-knee: the knee's).
    pub udp_offered_mbit: Option<u64>,
    /// Every rate a udp-knee search tried.
    pub knee_steps: Option<Vec<KneeStep>>,
    /// CPU seconds (user + system) of all tunnel processes during the run.
    pub tunnel_cpu_s: Option<f64>,
    /// tunnel_cpu_s per 10^9 payload bytes received.
    pub cpu_s_per_gb: Option<f64>,
    /// tunnel_cpu_s divided by the run's wall time.
    pub tunnel_cores: Option<f64>,
    /// Cores the whole machine kept busy during the run (tunnel, iperf3, kernel, others).
    pub machine_busy_cores: Option<f64>,
    /// Cores busy in the half second before the run, with the bed idle: other people's load.
    pub background_busy_cores: Option<f64>,
    /// UdpRcvbufErrors summed over all namespaces of the bed.
    pub udp_rcvbuf_errors: Option<u64>,
    /// rx_dropped + tx_dropped of all tunnel interfaces.
    pub tun_drops: Option<u64>,
    /// CPU seconds of the test DERP server's thread (tailnet cases).
    pub relay_cpu_s: Option<f64>,
    /// Packets the test DERP server relayed during the run (tailnet cases).
    pub relayed_packets: Option<u64>,
    pub wall_s: f64,
}

/// Memory of one tunnel process.
#[derive(Serialize, Clone, Debug)]
pub struct EndMemory {
    /// The host it runs on: client, server, exit.
    pub role: String,
    /// VmRSS with the bed up and idle, before the first test (tailnet cases: after
    /// the netmap with all peers arrived).
    pub idle_rss_kib: Option<u64>,
    /// RssAnon at the same moment: the process's own memory, without the pages of the
    /// binary that VmRSS counts too.
    pub idle_rss_anon_kib: Option<u64>,
    /// The highest VmRSS sampled (every 100 ms) while the case's tests ran: resident
    /// memory under load.
    pub load_rss_kib: Option<u64>,
    /// VmHWM after the last test: the peak resident set over the whole run, start-up
    /// included.
    pub peak_hwm_kib: Option<u64>,
    /// Peers in the node's netmap (`tailscale status --json`), for tailnet cases.
    pub netmap_peers: Option<u64>,
}

/// Memory of a case's tunnel processes in one run.
#[derive(Serialize, Clone, Debug)]
pub struct MemoryRecord {
    pub topology: String,
    pub case: String,
    pub run: u32,
    pub ends: Vec<EndMemory>,
}

#[derive(Serialize, Clone, Debug)]
pub struct Summary {
    pub topology: String,
    pub case: String,
    pub test: String,
    pub runs: usize,
    pub median_gbit_s: f64,
    pub min_gbit_s: f64,
    pub max_gbit_s: f64,
    /// median_gbit_s / wireguard-go's median for the same topology and test.
    pub vs_wireguard_go: Option<f64>,
    /// median_gbit_s / the no-tunnel case's median for the same topology and test.
    pub vs_ceiling: Option<f64>,
    pub median_tunnel_cores: Option<f64>,
    pub median_cpu_s_per_gb: Option<f64>,
    pub median_retransmits: Option<f64>,
    pub median_udp_lost_percent: Option<f64>,
    pub median_udp_offered_mbit: Option<f64>,
    pub median_udp_rcvbuf_errors: Option<f64>,
    pub median_tun_drops: Option<f64>,
    pub median_background_busy_cores: Option<f64>,
    pub median_relay_cpu_s_per_gb: Option<f64>,
    pub median_relayed_packets: Option<f64>,
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A (topology, case) pair in plan order, and whether the case is the topology's
/// no-tunnel ceiling.
pub struct Row<'a> {
    pub topology: &'a str,
    pub case: &'a str,
    pub ceiling: bool,
}

/// The reference case all tunnels are compared with.
pub const WIREGUARD_GO: &str = "wireguard-go";

/// Medians per (topology, test, case), in the order given, with ratios against the
/// references measured in the same run and topology.
pub fn summarize(records: &[RunRecord], tests: &[&str], rows: &[Row]) -> Vec<Summary> {
    let mut out = Vec::new();
    let mut topologies: Vec<&str> = Vec::new();
    for r in rows {
        if !topologies.contains(&r.topology) {
            topologies.push(r.topology);
        }
    }
    for topo in &topologies {
        for test in tests {
            for row in rows.iter().filter(|r| r.topology == *topo) {
                let rs: Vec<&RunRecord> = records
                    .iter()
                    .filter(|r| r.topology == *topo && r.case == row.case && r.test == *test)
                    .collect();
                if rs.is_empty() {
                    continue;
                }
                let med = |f: &dyn Fn(&RunRecord) -> Option<f64>| {
                    median(rs.iter().filter_map(|r| f(r)).collect())
                };
                let gbits: Vec<f64> = rs.iter().map(|r| r.gbit_s).collect();
                out.push(Summary {
                    topology: topo.to_string(),
                    case: row.case.to_string(),
                    test: test.to_string(),
                    runs: rs.len(),
                    median_gbit_s: median(gbits.clone()).unwrap_or(0.0),
                    min_gbit_s: gbits.iter().copied().fold(f64::INFINITY, f64::min),
                    max_gbit_s: gbits.iter().copied().fold(0.0, f64::max),
                    vs_wireguard_go: None,
                    vs_ceiling: None,
                    median_tunnel_cores: med(&|r| r.tunnel_cores),
                    median_cpu_s_per_gb: med(&|r| r.cpu_s_per_gb),
                    median_retransmits: med(&|r| r.retransmits.map(|x| x as f64)),
                    median_udp_lost_percent: med(&|r| r.udp_lost_percent),
                    median_udp_offered_mbit: med(&|r| r.udp_offered_mbit.map(|x| x as f64)),
                    median_udp_rcvbuf_errors: med(&|r| r.udp_rcvbuf_errors.map(|x| x as f64)),
                    median_tun_drops: med(&|r| r.tun_drops.map(|x| x as f64)),
                    median_background_busy_cores: med(&|r| r.background_busy_cores),
                    median_relay_cpu_s_per_gb: med(&|r| {
                        let gb = r.bytes as f64 / 1e9;
                        r.relay_cpu_s.filter(|_| gb > 0.0).map(|c| c / gb)
                    }),
                    median_relayed_packets: med(&|r| r.relayed_packets.map(|x| x as f64)),
                });
            }
        }
    }
    let reference = |out: &[Summary], topo: &str, case: &str, test: &str| {
        out.iter()
            .find(|s| s.topology == topo && s.case == case && s.test == test)
            .map(|s| s.median_gbit_s)
            .filter(|g| *g > 0.0)
    };
    for i in 0..out.len() {
        let (topo, test, g) = (
            out[i].topology.clone(),
            out[i].test.clone(),
            out[i].median_gbit_s,
        );
        out[i].vs_wireguard_go = reference(&out, &topo, WIREGUARD_GO, &test).map(|r| g / r);
        let ceiling = rows
            .iter()
            .find(|r| r.topology == topo && r.ceiling)
            .map(|r| r.case);
        out[i].vs_ceiling = ceiling
            .and_then(|c| reference(&out, &topo, c, &test))
            .map(|r| g / r);
    }
    out
}

fn opt(v: Option<f64>, prec: usize) -> String {
    match v {
        Some(x) => format!("{x:.prec$}"),
        None => "-".into(),
    }
}

/// The table of one topology, printed on stdout.
pub fn table(summary: &[Summary], topology: &str) -> String {
    let rows_in: Vec<&Summary> = summary.iter().filter(|s| s.topology == topology).collect();
    let mut s = String::new();
    if rows_in.is_empty() {
        s.push_str("(no results)\n");
        return s;
    }
    let header = [
        "test",
        "case",
        "Gbit/s",
        "min-max",
        "x wg-go",
        "% ceil",
        "tun cores",
        "CPU-s/GB",
        "retrans/loss",
        "rcvbuf err",
        "tun drops",
        "bg cores",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in &rows_in {
        let retrans = match (r.median_udp_lost_percent, r.median_udp_offered_mbit) {
            (Some(loss), Some(rate)) => format!("{loss:.1}% @{rate:.0}M"),
            (Some(loss), None) => format!("{loss:.1}% lost"),
            _ => opt(r.median_retransmits, 0),
        };
        rows.push(vec![
            r.test.clone(),
            r.case.clone(),
            format!("{:.2}", r.median_gbit_s),
            if r.runs > 1 {
                format!("{:.2}-{:.2}", r.min_gbit_s, r.max_gbit_s)
            } else {
                "-".into()
            },
            r.vs_wireguard_go
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
            r.vs_ceiling
                .map(|x| format!("{:.1}%", x * 100.0))
                .unwrap_or_else(|| "-".into()),
            opt(r.median_tunnel_cores, 2),
            opt(r.median_cpu_s_per_gb, 1),
            retrans,
            opt(r.median_udp_rcvbuf_errors, 0),
            opt(r.median_tun_drops, 0),
            opt(r.median_background_busy_cores, 2),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut last_test = String::new();
    for (n, row) in rows.iter().enumerate() {
        if n > 1 && row[0] != last_test {
            s.push('\n');
        }
        last_test = row[0].clone();
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            // Names left-aligned, numbers right-aligned.
            if i < 2 {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            } else {
                let _ = write!(line, "{cell:>w$}  ", w = widths[i]);
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

fn find<'a>(summary: &'a [Summary], topo: &str, case: &str, test: &str) -> Option<&'a Summary> {
    summary
        .iter()
        .find(|s| s.topology == topo && s.case == case && s.test == test)
}

/// A goal checked against the medians of this run.
#[derive(Serialize, Clone, Debug)]
pub struct Target {
    pub what: String,
    pub value: Option<f64>,
    pub goal: f64,
    /// None when not measured in this run.
    pub pass: Option<bool>,
}

/// Issue 3's two targets: point-to-point, single-stream TCP, ringscale (default flags)
/// at ≥ 12× Debian's wireguard-go and ≥ 30 % of plain veth, both in the same run.
pub fn targets(summary: &[Summary]) -> Vec<Target> {
    let s = find(summary, "point-to-point", "ringscale", "tcp-1");
    let check = |what: &str, value: Option<f64>, goal: f64| Target {
        what: what.into(),
        value,
        goal,
        pass: value.map(|v| v >= goal),
    };
    vec![
        check(
            "point-to-point tcp-1 ringscale / wireguard-go",
            s.and_then(|s| s.vs_wireguard_go),
            12.0,
        ),
        check(
            "point-to-point tcp-1 ringscale / veth",
            s.and_then(|s| s.vs_ceiling),
            0.30,
        ),
    ]
}

pub fn targets_text(targets: &[Target], summary: &[Summary]) -> String {
    let mut s = String::new();
    let runs = find(summary, "point-to-point", "ringscale", "tcp-1").map_or(0, |s| s.runs);
    let _ = writeln!(
        s,
        "issue-3 targets (point-to-point, tcp-1, ringscale default flags, median of {runs} run(s)):"
    );
    for (t, pct) in targets.iter().zip([false, true]) {
        let fmt = |v: f64| {
            if pct {
                format!("{:.1} %", v * 100.0)
            } else {
                format!("{v:.2}x")
            }
        };
        let verdict = match t.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "NOT MEASURED",
        };
        let _ = writeln!(
            s,
            "  {:<48} {:>8}  (target >= {:>6})  {verdict}",
            t.what,
            t.value.map(fmt).unwrap_or_else(|| "-".into()),
            fmt(t.goal)
        );
    }
    s
}

/// Ratios that say what a lever or a path costs: each ringscale variant of a topology
/// against ringscale with default flags (or the direct tailnet path), same test.
pub fn comparisons(summary: &[Summary]) -> String {
    let mut s = String::new();
    let pairs: &[(&str, &str, &str)] = &[
        ("point-to-point", "ringscale-uring", "ringscale"),
        ("point-to-point", "ringscale-epoll", "ringscale"),
        ("point-to-point", "ringscale-no-offload", "ringscale"),
        ("point-to-point", "ringscale-epoll-no-offload", "ringscale"),
        ("point-to-point", "ringscale-1w", "ringscale"),
        ("point-to-point", "ringscale-ring-aead", "ringscale"),
        ("tailnet", "ringscale-tailnet", "ringscale"),
        ("tailnet", "ringscale-derp", "ringscale-tailnet"),
        ("exit-node", "ringscale-tailnet", "ringscale"),
    ];
    for (topo, case, base) in pairs {
        for a in summary
            .iter()
            .filter(|x| x.topology == *topo && x.case == *case)
        {
            let Some(b) = find(summary, topo, base, &a.test) else {
                continue;
            };
            if b.median_gbit_s <= 0.0 {
                continue;
            }
            let _ = writeln!(
                s,
                "  {topo} {}: {case} {:.2} vs {base} {:.2} Gbit/s = {:.0} %",
                a.test,
                a.median_gbit_s,
                b.median_gbit_s,
                100.0 * a.median_gbit_s / b.median_gbit_s
            );
        }
    }
    // Relay lines only where the relay carried something: the relayed case, or a
    // direct case that was not as direct as it claims.
    for a in summary
        .iter()
        .filter(|x| x.median_relayed_packets.is_some_and(|p| p > 0.0))
    {
        let _ = writeln!(
            s,
            "  {} {} {}: DERP relay thread {} CPU-s/GB, {} packets relayed",
            a.topology,
            a.test,
            a.case,
            opt(a.median_relay_cpu_s_per_gb, 1),
            opt(a.median_relayed_packets, 0),
        );
    }
    s
}

/// The memory table: per topology and case, the medians over runs of each tunnel end's
/// netmap size, idle VmRSS, VmRSS under load and peak VmHWM, and the size of the binary
/// that ran.
pub fn memory_table(
    records: &[MemoryRecord],
    rows: &[Row],
    binary_bytes: &dyn Fn(&str) -> Option<u64>,
) -> String {
    const COLUMNS: usize = 7;
    let mut lines: Vec<[String; COLUMNS]> = vec![[
        "topology".into(),
        "case".into(),
        "binary bytes".into(),
        "netmap peers".into(),
        "idle VmRSS MiB".into(),
        "load VmRSS MiB".into(),
        "peak VmHWM MiB".into(),
    ]];
    for row in rows {
        let rs: Vec<&MemoryRecord> = records
            .iter()
            .filter(|r| r.topology == row.topology && r.case == row.case)
            .collect();
        let Some(first) = rs.first() else { continue };
        if first.ends.is_empty() {
            continue;
        }
        // Each end's median over runs, scaled (KiB to MiB: 1024) and rounded; a single
        // "-" when no end has the value at all.
        let per_end = |f: &dyn Fn(&EndMemory) -> Option<u64>, scale: f64, prec: usize| {
            let medians: Vec<Option<f64>> = (0..first.ends.len())
                .map(|i| {
                    median(
                        rs.iter()
                            .filter_map(|r| r.ends.get(i).and_then(f))
                            .map(|k| k as f64 / scale)
                            .collect(),
                    )
                })
                .collect();
            if medians.iter().all(Option::is_none) {
                return "-".to_string();
            }
            first
                .ends
                .iter()
                .zip(medians)
                .map(|(e, v)| format!("{} {}", e.role, opt(v, prec)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        lines.push([
            row.topology.into(),
            row.case.into(),
            binary_bytes(row.case)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into()),
            per_end(&|e| e.netmap_peers, 1.0, 0),
            per_end(&|e| e.idle_rss_kib, 1024.0, 1),
            per_end(&|e| e.load_rss_kib, 1024.0, 1),
            per_end(&|e| e.peak_hwm_kib, 1024.0, 1),
        ]);
    }
    let mut s = String::new();
    if lines.len() == 1 {
        return s;
    }
    let w: Vec<usize> = (0..COLUMNS)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    for l in &lines {
        let mut line = String::new();
        for (i, cell) in l.iter().enumerate() {
            if i == COLUMNS - 1 {
                line.push_str(cell);
            } else if i == 2 {
                // Bytes: right-aligned.
                let _ = write!(line, "{cell:>0$}  ", w[i]);
            } else {
                let _ = write!(line, "{cell:<0$}  ", w[i]);
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
    s
}

/// `YYYYmmdd-HHMMSS` in UTC, for file names.
pub fn utc_stamp(unix_s: u64) -> String {
    let days = (unix_s / 86400) as i64;
    let secs = unix_s % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(topo: &str, case: &str, test: &str, gbit: f64) -> RunRecord {
        RunRecord {
            topology: topo.into(),
            case: case.into(),
            test: test.into(),
            run: 1,
            gbit_s: gbit,
            bytes: 0,
            retransmits: Some(10),
            udp_lost_percent: None,
            udp_offered_mbit: None,
            knee_steps: None,
            tunnel_cpu_s: None,
            cpu_s_per_gb: None,
            tunnel_cores: None,
            machine_busy_cores: None,
            background_busy_cores: None,
            udp_rcvbuf_errors: None,
            tun_drops: None,
            relay_cpu_s: None,
            relayed_packets: None,
            wall_s: 1.0,
        }
    }

    fn rows<'a>(topo: &'a str, cases: &[&'a str]) -> Vec<Row<'a>> {
        cases
            .iter()
            .map(|c| Row {
                topology: topo,
                case: c,
                ceiling: *c == "veth",
            })
            .collect()
    }

    const P2P: &str = "point-to-point";

    #[test]
    fn medians_ratios_and_targets() {
        let records = vec![
            rec(P2P, "veth", "tcp-1", 16.0),
            rec(P2P, "wireguard-go", "tcp-1", 0.4),
            rec(P2P, "wireguard-go", "tcp-1", 0.5),
            rec(P2P, "wireguard-go", "tcp-1", 0.45),
            rec(P2P, "ringscale", "tcp-1", 4.0),
            rec(P2P, "ringscale", "tcp-1", 6.0),
            // Another topology's wireguard-go must not be the reference.
            rec("exit-node", "wireguard-go", "tcp-1", 0.1),
        ];
        let r = rows(P2P, &["veth", "wireguard-go", "ringscale"]);
        let s = summarize(&records, &["tcp-1"], &r);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].median_gbit_s, 0.45);
        assert_eq!(s[2].median_gbit_s, 5.0);
        assert!((s[2].vs_wireguard_go.unwrap() - 5.0 / 0.45).abs() < 1e-9);
        assert!((s[2].vs_ceiling.unwrap() - 5.0 / 16.0).abs() < 1e-9);
        assert_eq!((s[1].min_gbit_s, s[1].max_gbit_s), (0.4, 0.5));
        let t = table(&s, P2P);
        assert!(t.contains("11.11x"), "{t}");
        assert!(t.contains("31.2%"), "{t}");

        let goals = targets(&s);
        assert_eq!(goals[0].pass, Some(false), "11.1x is short of 12x");
        assert_eq!(goals[1].pass, Some(true), "31 % reaches 30 %");
        let text = targets_text(&goals, &s);
        assert!(text.contains("MISS") && text.contains("PASS"), "{text}");
    }

    #[test]
    fn no_reference_no_ratio_and_unmeasured_targets() {
        let r = rows(P2P, &["ringscale"]);
        let s = summarize(&[rec(P2P, "ringscale", "tcp-4", 1.0)], &["tcp-4"], &r);
        assert_eq!(s[0].vs_wireguard_go, None);
        assert_eq!(s[0].vs_ceiling, None);
        let goals = targets(&s);
        assert!(goals.iter().all(|g| g.pass.is_none()));
        assert!(targets_text(&goals, &s).contains("NOT MEASURED"));
    }

    #[test]
    fn memory_medians_per_end() {
        let mem = |run, idle: u64, peak: u64| MemoryRecord {
            topology: P2P.into(),
            case: "ringscale".into(),
            run,
            ends: vec![
                EndMemory {
                    role: "client".into(),
                    idle_rss_kib: Some(idle),
                    idle_rss_anon_kib: None,
                    load_rss_kib: Some(idle * 2),
                    peak_hwm_kib: Some(peak),
                    netmap_peers: None,
                },
                EndMemory {
                    role: "server".into(),
                    idle_rss_kib: Some(idle + 1024),
                    idle_rss_anon_kib: None,
                    load_rss_kib: None,
                    peak_hwm_kib: None,
                    netmap_peers: None,
                },
            ],
        };
        let records = [
            mem(1, 2048, 10240),
            mem(2, 4096, 20480),
            mem(3, 3072, 30720),
        ];
        let r = rows(P2P, &["ringscale"]);
        let t = memory_table(&records, &r, &|c| (c == "ringscale").then_some(4_000_000));
        assert!(t.contains("4000000"), "{t}");
        assert!(t.contains("client 3.0, server 4.0"), "{t}");
        assert!(t.contains("client 6.0, server -"), "{t}");
        assert!(t.contains("client 20.0, server -"), "{t}");
        // No netmap (a static case): one dash, not one per end.
        let cells: Vec<&str> = t
            .lines()
            .nth(1)
            .unwrap()
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells[3], "-", "{t}");
    }

    #[test]
    fn stamp() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(1_709_251_199), "20240229-235959");
    }
}
