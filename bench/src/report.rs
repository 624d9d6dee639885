//! Results: one record per iperf3 run, medians per case and test, the table on stdout
//! and the JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

#[derive(Serialize, Clone, Debug)]
pub struct RunRecord {
    pub case: String,
    pub test: String,
    /// 1-based run number.
    pub run: u32,
    pub gbit_s: f64,
    /// Payload bytes the receiver got.
    pub bytes: u64,
    pub retransmits: Option<u64>,
    pub udp_lost_percent: Option<f64>,
    /// CPU seconds (user + system) of both tunnel processes during the run.
    pub tunnel_cpu_s: Option<f64>,
    /// tunnel_cpu_s per 10^9 payload bytes received.
    pub cpu_s_per_gb: Option<f64>,
    /// tunnel_cpu_s divided by the run's wall time.
    pub tunnel_cores: Option<f64>,
    /// Cores the whole machine kept busy during the run (tunnel, iperf3, kernel, others).
    pub machine_busy_cores: Option<f64>,
    /// Cores busy in the half second before the run, with the bed idle: other people's load.
    pub background_busy_cores: Option<f64>,
    /// UdpRcvbufErrors summed over both namespaces.
    pub udp_rcvbuf_errors: Option<u64>,
    /// rx_dropped + tx_dropped of both tunnel interfaces.
    pub tun_drops: Option<u64>,
    pub wall_s: f64,
}

#[derive(Serialize, Clone, Debug)]
pub struct Summary {
    pub case: String,
    pub test: String,
    pub runs: usize,
    pub median_gbit_s: f64,
    pub min_gbit_s: f64,
    pub max_gbit_s: f64,
    /// median_gbit_s / wireguard-go's median for the same test.
    pub vs_wireguard_go: Option<f64>,
    /// median_gbit_s / plain veth's median for the same test.
    pub vs_veth: Option<f64>,
    pub median_tunnel_cores: Option<f64>,
    pub median_cpu_s_per_gb: Option<f64>,
    pub median_retransmits: Option<f64>,
    pub median_udp_lost_percent: Option<f64>,
    pub median_udp_rcvbuf_errors: Option<f64>,
    pub median_tun_drops: Option<f64>,
    pub median_background_busy_cores: Option<f64>,
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

/// Medians per (test, case), in the order given, with ratios against the reference cases.
pub fn summarize(records: &[RunRecord], tests: &[&str], cases: &[&str]) -> Vec<Summary> {
    let mut out = Vec::new();
    for test in tests {
        for case in cases {
            let rs: Vec<&RunRecord> = records
                .iter()
                .filter(|r| r.case == *case && r.test == *test)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&RunRecord) -> Option<f64>| {
                median(rs.iter().filter_map(|r| f(r)).collect())
            };
            let gbits: Vec<f64> = rs.iter().map(|r| r.gbit_s).collect();
            out.push(Summary {
                case: case.to_string(),
                test: test.to_string(),
                runs: rs.len(),
                median_gbit_s: median(gbits.clone()).unwrap_or(0.0),
                min_gbit_s: gbits.iter().copied().fold(f64::INFINITY, f64::min),
                max_gbit_s: gbits.iter().copied().fold(0.0, f64::max),
                vs_wireguard_go: None,
                vs_veth: None,
                median_tunnel_cores: med(&|r| r.tunnel_cores),
                median_cpu_s_per_gb: med(&|r| r.cpu_s_per_gb),
                median_retransmits: med(&|r| r.retransmits.map(|x| x as f64)),
                median_udp_lost_percent: med(&|r| r.udp_lost_percent),
                median_udp_rcvbuf_errors: med(&|r| r.udp_rcvbuf_errors.map(|x| x as f64)),
                median_tun_drops: med(&|r| r.tun_drops.map(|x| x as f64)),
                median_background_busy_cores: med(&|r| r.background_busy_cores),
            });
        }
    }
    // Ratios against the references measured in the same run.
    let reference = |out: &[Summary], case: &str, test: &str| {
        out.iter()
            .find(|s| s.case == case && s.test == test)
            .map(|s| s.median_gbit_s)
            .filter(|g| *g > 0.0)
    };
    for i in 0..out.len() {
        let (test, g) = (out[i].test.clone(), out[i].median_gbit_s);
        out[i].vs_wireguard_go = reference(&out, "wireguard-go", &test).map(|r| g / r);
        out[i].vs_veth = reference(&out, "veth", &test).map(|r| g / r);
    }
    out
}

fn opt(v: Option<f64>, prec: usize) -> String {
    match v {
        Some(x) => format!("{x:.prec$}"),
        None => "-".into(),
    }
}

/// The table printed on stdout.
pub fn table(summary: &[Summary], failures: &BTreeMap<String, String>) -> String {
    let mut s = String::new();
    if summary.is_empty() {
        s.push_str("(no results)\n");
    }
    let header = [
        "test",
        "case",
        "Gbit/s",
        "min-max",
        "x wg-go",
        "% veth",
        "tun cores",
        "CPU-s/GB",
        "retrans",
        "rcvbuf err",
        "tun drops",
        "bg cores",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in summary {
        let retrans = match r.median_udp_lost_percent {
            Some(loss) => format!("{loss:.1}% lost"),
            None => opt(r.median_retransmits, 0),
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
            r.vs_veth
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
    for (n, row) in rows.iter().enumerate().filter(|_| !summary.is_empty()) {
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
    for (case, why) in failures {
        let _ = writeln!(s, "\n{case}: FAILED: {why}");
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

    fn rec(case: &str, test: &str, gbit: f64) -> RunRecord {
        RunRecord {
            case: case.into(),
            test: test.into(),
            run: 1,
            gbit_s: gbit,
            bytes: 0,
            retransmits: Some(10),
            udp_lost_percent: None,
            tunnel_cpu_s: None,
            cpu_s_per_gb: None,
            tunnel_cores: None,
            machine_busy_cores: None,
            background_busy_cores: None,
            udp_rcvbuf_errors: None,
            tun_drops: None,
            wall_s: 1.0,
        }
    }

    #[test]
    fn medians_and_ratios() {
        let records = vec![
            rec("veth", "tcp-1", 16.0),
            rec("wireguard-go", "tcp-1", 0.4),
            rec("wireguard-go", "tcp-1", 0.5),
            rec("wireguard-go", "tcp-1", 0.45),
            rec("ringscale", "tcp-1", 4.0),
            rec("ringscale", "tcp-1", 5.0),
        ];
        let s = summarize(&records, &["tcp-1"], &["veth", "wireguard-go", "ringscale"]);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].median_gbit_s, 0.45);
        assert_eq!(s[2].median_gbit_s, 4.5);
        assert!((s[2].vs_wireguard_go.unwrap() - 10.0).abs() < 1e-9);
        assert!((s[2].vs_veth.unwrap() - 4.5 / 16.0).abs() < 1e-9);
        assert_eq!((s[1].min_gbit_s, s[1].max_gbit_s), (0.4, 0.5));
        let t = table(&s, &BTreeMap::new());
        assert!(t.contains("10.00x"), "{t}");
    }

    #[test]
    fn no_reference_no_ratio() {
        let s = summarize(
            &[rec("ringscale", "tcp-4", 1.0)],
            &["tcp-4"],
            &["ringscale"],
        );
        assert_eq!(s[0].vs_wireguard_go, None);
        assert_eq!(s[0].vs_veth, None);
    }

    #[test]
    fn stamp() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(1_709_251_199), "20240229-235959");
    }
}
