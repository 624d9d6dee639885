//! Command-line options. Hand-written: a dozen flags do not justify an argument parser.

use std::path::PathBuf;

use crate::cases::{all_cases, all_tests, default_plan, Case, Test, Topology, DEFAULT_TESTS};

/// One topology, one case, the tests it runs there.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub topology: Topology,
    pub case: Case,
    pub tests: Vec<Test>,
}

pub struct Options {
    pub runs: u32,
    pub duration_s: u32,
    /// What runs, in order: topologies in `Topology::all()` order, cases as listed.
    pub plan: Vec<Scenario>,
    pub topologies: Vec<Topology>,
    /// iperf3 `-b` for the udp test.
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

impl Options {
    /// Every distinct case of the plan, in plan order.
    pub fn cases(&self) -> Vec<&Case> {
        let mut out: Vec<&Case> = Vec::new();
        for s in &self.plan {
            if !out.iter().any(|c| c.name == s.case.name) {
                out.push(&s.case);
            }
        }
        out
    }

    /// Every distinct test of the plan, in `all_tests()` order.
    pub fn test_names(&self) -> Vec<&'static str> {
        all_tests()
            .iter()
            .map(|t| t.name)
            .filter(|n| {
                self.plan
                    .iter()
                    .any(|s| s.tests.iter().any(|t| t.name == *n))
            })
            .collect()
    }
}

pub const USAGE: &str = "\
usage: cargo run --release -p ringscale-bench -- [options]

Runs iperf3 through ringscale, Debian's wireguard-go and boringtun-cli (same keys, MTU
1280) in network namespaces, with no tunnel as the ceiling, in three topologies:
  exit-node       client -- LAN -- exit node -- internet host (the headline)
  point-to-point  two namespaces on one veth pair (the issue-3 targets)
  tailnet         two nodes on a LAN with the test control and DERP servers
Needs root. Prints tables and writes JSON.

options:
  --runs N            runs per case and test; the tables show medians (default 3)
  --duration S        seconds per iperf3 run (default 10)
  --quick             smoke test: --runs 1 --duration 3
  --topology LIST     comma-separated, from: TOPOLOGIES (default: all)
  --cases LIST        comma-separated, from the list below (default: each topology's
                      plan, below); a case runs in each selected topology it fits
  --tests LIST        comma-separated, from: TESTS
                      (default: the plan's tests; for cases outside it DEFAULT_TESTS)
  --udp-rate RATE     iperf3 -b for the udp test (default 2G); udp-knee finds its rates
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

environment: RINGSCALE_BENCH_HOLD=S keeps a bed that failed to come up for S seconds
(max 600) so its namespaces can be inspected with `ip netns exec`.

cases (topologies they fit):
CASES
default plan (case: tests):
PLAN";

fn names<T>(items: &[T], name: impl Fn(&T) -> &'static str) -> String {
    items.iter().map(name).collect::<Vec<_>>().join(",")
}

pub fn usage() -> String {
    let cases = all_cases();
    let tests = all_tests();
    let mut plan = String::new();
    for t in Topology::all() {
        plan.push_str(&format!("  {}:\n", t.name()));
        for (case, tests) in default_plan(*t) {
            plan.push_str(&format!("    {case}: {}\n", tests.join(",")));
        }
    }
    let mut case_list = String::new();
    for c in &cases {
        let fits: Vec<&str> = c.topologies.iter().map(|t| t.name()).collect();
        case_list.push_str(&format!(
            "  {:<27} ({})\n      {}\n",
            c.name,
            fits.join(", "),
            c.note
        ));
    }
    USAGE
        .replace("DEFAULT_TESTS", &DEFAULT_TESTS.join(","))
        .replace("CASES\n", &case_list)
        .replace("TESTS", &names(&tests, |t| t.name))
        .replace(
            "TOPOLOGIES",
            &Topology::all()
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(","),
        )
        .replace("PLAN", plan.trim_end())
}

/// `Ok(None)` means help was asked for.
pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        runs: 3,
        duration_s: 10,
        plan: Vec::new(),
        topologies: Topology::all().to_vec(),
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
    let mut cases: Option<Vec<Case>> = None;
    let mut tests: Option<Vec<Test>> = None;
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
                cases = Some(pick(&value()?, &all, |c| c.name, "case")?);
            }
            "--tests" => {
                let all = all_tests();
                tests = Some(pick(&value()?, &all, |t| t.name, "test")?);
            }
            "--topology" | "--topologies" => {
                let mut picked = pick(&value()?, Topology::all(), |t| t.name(), "topology")?;
                // Always in the report's order, the headline first.
                picked.sort();
                picked.dedup();
                o.topologies = picked;
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
    o.plan = build_plan(&o.topologies, cases.as_deref(), tests.as_deref())?;
    Ok(Some(o))
}

/// The scenarios to run: the default plans, narrowed or replaced by `--cases` and
/// `--tests`.
pub fn build_plan(
    topologies: &[Topology],
    cases: Option<&[Case]>,
    tests: Option<&[Test]>,
) -> Result<Vec<Scenario>, String> {
    let all_c = all_cases();
    let all_t = all_tests();
    let case = |name: &str| all_c.iter().find(|c| c.name == name).cloned();
    let test = |name: &str| all_t.iter().find(|t| t.name == name).cloned();
    let mut plan = Vec::new();
    for &topo in topologies {
        let defaults = default_plan(topo);
        let chosen: Vec<Case> = match cases {
            Some(cs) => cs
                .iter()
                .filter(|c| c.topologies.contains(&topo))
                .cloned()
                .collect(),
            None => defaults.iter().filter_map(|(n, _)| case(n)).collect(),
        };
        for c in chosen {
            let ts: Vec<Test> = match tests {
                Some(ts) => ts.to_vec(),
                None => defaults
                    .iter()
                    .find(|(n, _)| *n == c.name)
                    .map(|(_, ts)| *ts)
                    .unwrap_or(DEFAULT_TESTS)
                    .iter()
                    .filter_map(|n| test(n))
                    .collect(),
            };
            plan.push(Scenario {
                topology: topo,
                case: c,
                tests: ts,
            });
        }
    }
    if let Some(cs) = cases {
        for c in cs {
            if !plan.iter().any(|s| s.case.name == c.name) {
                let fits: Vec<&str> = c.topologies.iter().map(|t| t.name()).collect();
                return Err(format!(
                    "case {:?} runs in no selected topology (it fits: {})",
                    c.name,
                    fits.join(", ")
                ));
            }
        }
    }
    if plan.is_empty() {
        return Err("nothing selected to run".into());
    }
    Ok(plan)
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

    fn plan_names(o: &Options) -> Vec<String> {
        o.plan
            .iter()
            .map(|s| {
                let t: Vec<_> = s.tests.iter().map(|t| t.name).collect();
                format!("{}/{}/{}", s.topology.name(), s.case.name, t.join("+"))
            })
            .collect()
    }

    #[test]
    fn quick_and_lists() {
        let o = parse(&args(
            "--quick --topology point-to-point --cases veth,ringscale --tests=udp",
        ))
        .unwrap()
        .unwrap();
        assert_eq!((o.runs, o.duration_s), (1, 3));
        assert_eq!(
            plan_names(&o),
            ["point-to-point/veth/udp", "point-to-point/ringscale/udp"]
        );
        assert!(o.plan[0].tests[0].udp());
    }

    #[test]
    fn cases_run_where_they_fit_with_their_plan_tests() {
        let o = parse(&args("--cases ringscale-derp,ringscale"))
            .unwrap()
            .unwrap();
        assert_eq!(
            plan_names(&o),
            [
                "exit-node/ringscale/tcp-1",
                "point-to-point/ringscale/tcp-1+tcp-4+tcp-1-rev+udp-knee",
                "tailnet/ringscale-derp/tcp-1",
                "tailnet/ringscale/tcp-1",
            ]
        );
        // A case that fits no selected topology is an error, not silently nothing.
        assert!(parse(&args("--topology point-to-point --cases ringscale-derp")).is_err());
        assert!(parse(&args("--topology point-to-point --cases direct")).is_err());
    }

    #[test]
    fn default_plan_is_the_headline_first_and_names_real_cases() {
        let o = parse(&[]).unwrap().unwrap();
        assert_eq!(o.plan[0].topology, Topology::ExitNode);
        let in_plan: usize = Topology::all().iter().map(|t| default_plan(*t).len()).sum();
        // Every name in the plan resolved to a case that fits its topology.
        assert_eq!(o.plan.len(), in_plan);
        assert!(o
            .plan
            .iter()
            .all(|s| s.case.topologies.contains(&s.topology)));
        assert!(o.plan.iter().all(|s| !s.tests.is_empty()));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(parse(&args("--runs 0")).is_err());
        assert!(parse(&args("--runs")).is_err());
        assert!(parse(&args("--cases nosuch")).is_err());
        assert!(parse(&args("--topology nosuch")).is_err());
        assert!(parse(&args("--frobnicate")).is_err());
        assert!(parse(&args("--nice -30")).is_err());
        assert_eq!(parse(&args("--nice -10")).unwrap().unwrap().nice, Some(-10));
        assert!(parse(&args("--help")).unwrap().is_none());
    }
}
