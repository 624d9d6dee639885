//! Counters read around each iperf3 run: CPU time of the tunnel processes, the machine's
//! CPU use, UDP receive-buffer drops per namespace, and the tunnel interfaces' drops;
//! and the tunnel processes' memory (VmRSS idle, sampled under load, VmHWM).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringscale_tests::testbed::Netns;

use crate::bed::Bed;

pub fn clock_ticks_per_s() -> f64 {
    ringscale_sys::process::clock_ticks_per_second().map_or(100.0, |t| t as f64)
}

/// utime + stime of a process (all its threads, living and dead), in clock ticks.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&text)
}

/// Fields after the command name, which is in parentheses and may itself hold spaces
/// or parentheses: the last ')' ends it. utime and stime are fields 14 and 15.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state).
    let utime: u64 = f.get(14 - 3)?.parse().ok()?;
    let stime: u64 = f.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy clock ticks of all CPUs together, from /proc/stat.
pub fn machine_busy_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(&text).map(|(busy, _total)| busy)
}

/// (busy, total) ticks from the aggregate `cpu` line.
fn parse_machine_ticks(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// How many cores the machine keeps busy over `window` (other people's builds included).
pub fn busy_cores_over(window: Duration) -> Option<f64> {
    let b0 = machine_busy_ticks()?;
    let start = Instant::now();
    std::thread::sleep(window);
    let b1 = machine_busy_ticks()?;
    Some((b1 - b0) as f64 / clock_ticks_per_s() / start.elapsed().as_secs_f64())
}

/// The `Udp:` counters of /proc/net/snmp as seen inside a namespace.
pub fn udp_rcvbuf_errors(ns: &Netns) -> Option<u64> {
    let out = ns.command("cat").arg("/proc/net/snmp").output().ok()?;
    parse_snmp(
        &String::from_utf8_lossy(&out.stdout),
        "Udp:",
        "RcvbufErrors",
    )
}

fn parse_snmp(text: &str, proto: &str, field: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(proto));
    let header = lines.next()?;
    let values = lines.next()?;
    let i = header.split_whitespace().position(|h| h == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// rx_dropped + tx_dropped of an interface inside a namespace.
pub fn iface_drops(ns: &Netns, ifname: &str) -> Option<u64> {
    let out = ns
        .command("ip")
        .args(["-s", "-j", "link", "show", "dev", ifname])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let s = &v.get(0)?["stats64"];
    Some(s["rx"]["dropped"].as_u64()? + s["tx"]["dropped"].as_u64()?)
}

/// VmRSS and VmHWM (peak resident set) of a process, in KiB, from /proc/PID/status.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_memory(&text)
}

/// Samples the VmRSS of some processes every 100 ms on its own thread, keeping each
/// one's highest value: resident memory under load, which VmHWM cannot tell apart from
/// a start-up peak (e.g. parsing the first netmap). Dropping it stops the thread.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Option<u64>>>>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max: Vec<Option<u64>> = vec![None; pids.len()];
            loop {
                for (m, pid) in max.iter_mut().zip(&pids) {
                    if let Some((rss, _)) = memory_kib(*pid) {
                        *m = Some(m.map_or(rss, |v| v.max(rss)));
                    }
                }
                if flag.load(Ordering::Relaxed) {
                    return max;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the highest VmRSS per process, in KiB, in the order given.
    pub fn stop(mut self) -> Vec<Option<u64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// RssAnon of a process in KiB: the part of VmRSS that is its own memory (heap,
/// stacks), as opposed to pages of the binary file, which the kernel can drop and
/// read back.
pub fn rss_anon_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kib(&text, "RssAnon:")
}

fn status_field_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
}

fn parse_memory(status: &str) -> Option<(u64, u64)> {
    Some((
        status_field_kib(status, "VmRSS:")?,
        status_field_kib(status, "VmHWM:")?,
    ))
}

/// Counters taken before and after a run.
pub struct Snapshot {
    at: Instant,
    tunnel_ticks: Option<u64>,
    machine_busy: Option<u64>,
    rcvbuf_errors: Option<u64>,
    tun_drops: Option<u64>,
    relay_ticks: Option<u64>,
    relayed_packets: Option<u64>,
}

fn sum_opt(it: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    it.sum()
}

impl Snapshot {
    pub fn take(bed: &Bed) -> Snapshot {
        let hosts = &bed.hosts;
        Snapshot {
            at: Instant::now(),
            tunnel_ticks: if bed.tunnel.is_empty() {
                None
            } else {
                sum_opt(bed.tunnel_pids().into_iter().map(process_ticks))
            },
            machine_busy: machine_busy_ticks(),
            rcvbuf_errors: sum_opt(hosts.iter().map(|h| udp_rcvbuf_errors(&h.ns))),
            tun_drops: if bed.tun_ifaces.is_empty() {
                None
            } else {
                sum_opt(
                    bed.tun_ifaces
                        .iter()
                        .map(|t| iface_drops(&hosts[t.host].ns, &t.name)),
                )
            },
            relay_ticks: bed.hub.as_ref().and_then(|_| crate::hub::relay_cpu_ticks()),
            relayed_packets: bed.hub.as_ref().map(|h| h.relayed()),
        }
    }
}

/// What changed between two snapshots.
pub struct Delta {
    pub wall_s: f64,
    /// CPU seconds of the tunnel processes; None for the kernel-only veth case.
    pub tunnel_cpu_s: Option<f64>,
    pub machine_busy_cores: Option<f64>,
    pub udp_rcvbuf_errors: Option<u64>,
    pub tun_drops: Option<u64>,
    /// CPU seconds of the DERP relay thread (tailnet cases only).
    pub relay_cpu_s: Option<f64>,
    /// Packets the DERP relay carried (tailnet cases only).
    pub relayed_packets: Option<u64>,
}

pub fn delta(a: &Snapshot, b: &Snapshot) -> Delta {
    let hz = clock_ticks_per_s();
    let wall_s = b.at.duration_since(a.at).as_secs_f64();
    let diff = |x: Option<u64>, y: Option<u64>| Some(y?.saturating_sub(x?));
    Delta {
        wall_s,
        tunnel_cpu_s: diff(a.tunnel_ticks, b.tunnel_ticks).map(|t| t as f64 / hz),
        machine_busy_cores: diff(a.machine_busy, b.machine_busy).map(|t| t as f64 / hz / wall_s),
        udp_rcvbuf_errors: diff(a.rcvbuf_errors, b.rcvbuf_errors),
        tun_drops: diff(a.tun_drops, b.tun_drops),
        relay_cpu_s: diff(a.relay_ticks, b.relay_ticks).map(|t| t as f64 / hz),
        relayed_packets: diff(a.relayed_packets, b.relayed_packets),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let stat = "1234 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 3 0";
        assert_eq!(parse_stat_ticks(stat), Some(280));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn snmp_udp_field() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 10 0 7 9 5 0\nUdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 99\n";
        assert_eq!(parse_snmp(text, "Udp:", "RcvbufErrors"), Some(5));
        assert_eq!(parse_snmp(text, "Udp:", "Nope"), None);
    }

    #[test]
    fn memory_from_status() {
        let status = "Name:\tringscale\nVmPeak:\t  20000 kB\nVmHWM:\t    9120 kB\n\
                      VmRSS:\t    7004 kB\nThreads:\t5\n";
        assert_eq!(parse_memory(status), Some((7004, 9120)));
        assert_eq!(
            status_field_kib("RssAnon:\t    3100 kB\n", "RssAnon:"),
            Some(3100)
        );
        assert_eq!(parse_memory("Name:\tx\nVmRSS:\t12 kB\n"), None);
    }

    #[test]
    fn sampler_keeps_the_highest_rss_of_live_processes_only() {
        let sampler = RssSampler::start(vec![std::process::id(), u32::MAX]);
        // Grow this process while it samples: the maximum must see the growth.
        let before = memory_kib(std::process::id()).unwrap().0;
        let ballast = vec![1u8; 16 << 20];
        std::thread::sleep(Duration::from_millis(300));
        let got = sampler.stop();
        assert!(ballast.iter().all(|b| *b == 1));
        assert!(
            got[0].is_some_and(|k| k >= before + 8 * 1024),
            "{got:?} from {before}"
        );
        assert_eq!(got[1], None);
    }

    #[test]
    fn machine_busy_excludes_idle_and_iowait() {
        let text = "cpu  100 0 50 1000 10 0 5 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_machine_ticks(text), Some((155, 1165)));
    }
}
