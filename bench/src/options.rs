//! Command-line options. Hand-written: a dozen flags do not justify an argument parser.

use std::path::PathBuf;

use crate::cases::{all_cases, all_tests, Case, Test, Topology};

pub struct Options {
    pub runs: u32,
    pub duration_s: u32,
    pub cases: Vec<Case>,
    pub tests: Vec<Test>,
    pub topology: Topology,
    /// iperf3 `-b` for the UDP test.
    pub udp_rate: String,
    pub pin: bool,
    pub nice: Option<i32>,
    pub json: Option<PathBuf>,
    pub ringscale_bin: Option<PathBuf>,
    pub boringtun_bin: Option<PathBuf>,
    pub no_build: bool,
    pub no_install: bool,
    /// Before each case, wait up to this long for the machine to be idle.
    pub wait_idle_s: u32,
}

pub const USAGE: &str = "\
usage: cargo run --release -p ringscale-bench -- [options]

Runs iperf3 through ringscale, Debian's wireguard-go and boringtun-cli (same keys, MTU
1280) between two network namespaces joined by a veth pair, and over the bare veth as
the ceiling. Needs root. Prints a table and writes JSON.

options:
  --runs N            runs per case and test; the table shows medians (default 3)
  --duration S        seconds per iperf3 run (default 10)
  --quick             smoke test: --runs 1 --duration 3
  --cases LIST        comma-separated, from: CASES (default: DEFAULT_CASES)
  --tests LIST        comma-separated, from: TESTS (default: DEFAULT_TESTS)
  --topology NAME     TOPOLOGIES (default point-to-point)
  --udp-rate RATE     iperf3 -b for the udp test (default 2G)
  --pin               pin each host (tunnel end + iperf3 end) to its own half of the CPUs
  --nice N            run tunnels and iperf3 at this niceness (and the bench's scheduler
                      autogroup, restored at exit), e.g. -10 to get ahead of other work
                      on a shared machine; the same for every case
  --json PATH         where to write results (default bench/results/<UTC time>.json)
  --ringscale-bin P   use this ringscale binary instead of building one
  --no-build          do not run cargo build; use target/release/ringscale as it is
  --boringtun-bin P   use this boringtun-cli (default: /opt/ringscale-tools/bin, then
                      target/tools/bin, then $PATH; else cargo install into /opt)
  --no-install        never install missing tools (apt-get, cargo install)
  --wait-idle S       before each case wait up to S seconds for the machine to go idle
  -h, --help          this text
";

fn names<T>(
    items: &[T],
    name: impl Fn(&T) -> &'static str,
    only_default: impl Fn(&T) -> bool,
) -> String {
    items
        .iter()
        .filter(|i| only_default(i))
        .map(name)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn usage() -> String {
    let cases = all_cases();
    let tests = all_tests();
    USAGE
        .replace("DEFAULT_CASES", &names(&cases, |c| c.name, |c| c.default))
        .replace("CASES", &names(&cases, |c| c.name, |_| true))
        .replace("DEFAULT_TESTS", &names(&tests, |t| t.name, |t| t.default))
        .replace("TESTS", &names(&tests, |t| t.name, |_| true))
        .replace(
            "TOPOLOGIES",
            &Topology::all()
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", "),
        )
}

/// `Ok(None)` means help was asked for.
pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        runs: 3,
        duration_s: 10,
        cases: all_cases().into_iter().filter(|c| c.default).collect(),
        tests: all_tests().into_iter().filter(|t| t.default).collect(),
        topology: Topology::PointToPoint,
        udp_rate: "2G".into(),
        pin: false,
        nice: None,
        json: None,
        ringscale_bin: None,
        boringtun_bin: None,
        no_build: false,
        no_install: false,
        wait_idle_s: 0,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |v: String| -> Result<u32, String> {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag}: {v:?} is not a positive whole number"))
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--runs" => o.runs = number(value()?)?,
            "--duration" => o.duration_s = number(value()?)?,
            "--quick" => {
                o.runs = 1;
                o.duration_s = 3;
            }
            "--cases" => {
                let all = all_cases();
                o.cases = pick(&value()?, &all, |c| c.name, "case")?;
            }
            "--tests" => {
                let all = all_tests();
                o.tests = pick(&value()?, &all, |t| t.name, "test")?;
            }
            "--topology" => {
                let v = value()?;
                o.topology = *Topology::all()
                    .iter()
                    .find(|t| t.name() == v)
                    .ok_or_else(|| format!("unknown topology {v:?}"))?;
            }
            "--udp-rate" => o.udp_rate = value()?,
            "--pin" => o.pin = true,
            "--nice" => {
                let v = value()?;
                let n = v
                    .parse::<i32>()
                    .ok()
                    .filter(|n| (-20..=19).contains(n))
                    .ok_or_else(|| format!("--nice: {v:?} is not a niceness from -20 to 19"))?;
                o.nice = Some(n);
            }
            "--json" => o.json = Some(PathBuf::from(value()?)),
            "--ringscale-bin" => o.ringscale_bin = Some(PathBuf::from(value()?)),
            "--boringtun-bin" => o.boringtun_bin = Some(PathBuf::from(value()?)),
            "--no-build" => o.no_build = true,
            "--no-install" => o.no_install = true,
            "--wait-idle" => o.wait_idle_s = number(value()?)?,
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(Some(o))
}

fn pick<T: Clone>(
    list: &str,
    all: &[T],
    name: impl Fn(&T) -> &'static str,
    what: &str,
) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    for want in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let item = all.iter().find(|i| name(i) == want).ok_or_else(|| {
            let known: Vec<_> = all.iter().map(&name).collect();
            format!("unknown {what} {want:?}; known: {}", known.join(", "))
        })?;
        out.push(item.clone());
    }
    if out.is_empty() {
        return Err(format!("no {what} selected"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn quick_and_lists() {
        let o = parse(&args("--quick --cases veth,ringscale --tests=udp"))
            .unwrap()
            .unwrap();
        assert_eq!((o.runs, o.duration_s), (1, 3));
        let cases: Vec<_> = o.cases.iter().map(|c| c.name).collect();
        assert_eq!(cases, ["veth", "ringscale"]);
        assert_eq!(o.tests.len(), 1);
        assert!(o.tests[0].udp);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(parse(&args("--runs 0")).is_err());
        assert!(parse(&args("--runs")).is_err());
        assert!(parse(&args("--cases nosuch")).is_err());
        assert!(parse(&args("--frobnicate")).is_err());
        assert!(parse(&args("--nice -30")).is_err());
        assert_eq!(parse(&args("--nice -10")).unwrap().unwrap().nice, Some(-10));
        assert!(parse(&args("--help")).unwrap().is_none());
    }
}
