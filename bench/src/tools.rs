//! Finds, and when missing installs, the programs the benchmark drives: iperf3 and
//! wireguard-tools (always), wireguard-go (Debian package), boringtun-cli (crates.io,
//! installed into /opt/ringscale-tools) and the ringscale binary itself
//! (built in release mode unless a path is given).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cases::{Case, Tunnel};
use crate::options::Options;
use crate::sys::{self, run, run_text, which};

pub struct Tools {
    pub iperf3: PathBuf,
    pub wg: PathBuf,
    /// Err holds why the tool is unavailable; only cases that need it fail.
    pub wireguard_go: Result<PathBuf, String>,
    pub boringtun: Result<PathBuf, String>,
    pub ringscale: Result<PathBuf, String>,
    pub versions: BTreeMap<String, String>,
}

/// The workspace root, where the README command runs.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo() -> PathBuf {
    // `cargo run` tells its child which cargo it is.
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| which("cargo"))
        .unwrap_or_else(|| PathBuf::from("cargo"))
}

pub fn prepare(opts: &Options, cases: &[&Case]) -> Result<Tools, String> {
    let needs = |f: fn(&Tunnel) -> bool| cases.iter().any(|c| f(&c.tunnel));
    let need_wggo = needs(|t| matches!(t, Tunnel::WireguardGo));
    let need_bt = needs(|t| matches!(t, Tunnel::Boringtun { .. }));
    let need_rs = needs(Tunnel::is_ringscale);

    // Debian packages: program name -> package.
    let mut wanted = vec![("iperf3", "iperf3"), ("wg", "wireguard-tools")];
    if need_wggo {
        wanted.push(("wireguard-go", "wireguard-go"));
    }
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(prog, _)| which(prog).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        if opts.no_install {
            eprintln!("bench: missing {missing:?} and --no-install given");
        } else {
            apt_install(&missing)?;
        }
    }
    let iperf3 = which("iperf3").ok_or("iperf3 is not installed")?;
    let wg = which("wg").ok_or("wg (wireguard-tools) is not installed")?;
    let wireguard_go = which("wireguard-go").ok_or_else(|| "wireguard-go is not installed".into());

    let boringtun = if need_bt {
        find_or_install_boringtun(opts)
    } else {
        Err("not needed".into())
    };
    let ringscale = if need_rs {
        find_or_build_ringscale(opts)
    } else {
        Err("not needed".into())
    };

    let mut versions = BTreeMap::new();
    let first_line = |p: &Path, arg: &str| {
        run_text(Command::new(p).arg(arg))
            .map(|s| s.lines().next().unwrap_or_default().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    };
    versions.insert("iperf3".into(), first_line(&iperf3, "--version"));
    versions.insert("wg".into(), first_line(&wg, "--version"));
    if let Ok(p) = &wireguard_go {
        versions.insert("wireguard-go".into(), first_line(p, "--version"));
    }
    if let Ok(p) = &boringtun {
        versions.insert("boringtun-cli".into(), first_line(p, "--version"));
    }
    if let Ok(p) = &ringscale {
        versions.insert("ringscale".into(), first_line(p, "--version"));
        versions.insert("ringscale-binary".into(), p.display().to_string());
    }
    if let Some(commit) = workspace_commit() {
        versions.insert("workspace-commit".into(), commit);
    }
    Ok(Tools {
        iperf3,
        wg,
        wireguard_go,
        boringtun,
        ringscale,
        versions,
    })
}

/// The workspace's git commit, with `-dirty` when the tree has changes: which code the
/// numbers belong to.
fn workspace_commit() -> Option<String> {
    let root = workspace_root();
    let git = |args: &[&str]| run_text(Command::new("git").arg("-C").arg(&root).args(args)).ok();
    let head = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

fn apt_install(pkgs: &[&str]) -> Result<(), String> {
    eprintln!("bench: installing {} with apt-get", pkgs.join(" "));
    let apt = || {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(apt().args(["update", "-q"]))?;
    run(apt()
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(pkgs))?;
    Ok(())
}

/// Where `cargo install` puts boringtun-cli; the test bed's wgpeer module looks there too.
pub const TOOLS_ROOT: &str = "/opt/ringscale-tools";

/// boringtun-cli 0.7.x: `--boringtun-bin`, then /opt/ringscale-tools, then
/// target/tools (older benchmark installs), then $PATH, else `cargo install` into
/// /opt/ringscale-tools.
fn find_or_install_boringtun(opts: &Options) -> Result<PathBuf, String> {
    if let Some(p) = &opts.boringtun_bin {
        return check_boringtun(p);
    }
    let root = PathBuf::from(TOOLS_ROOT);
    let installed = root.join("bin/boringtun-cli");
    let candidates = [
        Some(installed.clone()),
        Some(target_dir().join("tools/bin/boringtun-cli")),
        which("boringtun-cli"),
    ];
    for cand in candidates.into_iter().flatten() {
        if let Ok(p) = check_boringtun(&cand) {
            return Ok(p);
        }
    }
    if opts.no_install {
        return Err("boringtun-cli 0.7 not found and --no-install given".into());
    }
    eprintln!(
        "bench: installing boringtun-cli 0.7 with cargo install into {}",
        root.display()
    );
    let status = Command::new(cargo())
        .args(["install", "boringtun-cli", "--locked", "--version", "~0.7"])
        .arg("--root")
        .arg(&root)
        .status()
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if !status.success() {
        return Err(format!("cargo install boringtun-cli failed ({status})"));
    }
    check_boringtun(&installed)
}

fn check_boringtun(p: &Path) -> Result<PathBuf, String> {
    if !sys::is_executable(p) {
        return Err(format!("{} is not an executable", p.display()));
    }
    let v = run_text(Command::new(p).arg("--version"))?;
    if !v.starts_with("boringtun 0.7") {
        return Err(format!("{}: version {v:?}, want 0.7.x", p.display()));
    }
    Ok(p.to_path_buf())
}

/// The ringscale binary: `--ringscale-bin`, else the release binary as it ships — static
/// (musl), stripped, linked by `packaging/build.sh` for this machine's architecture — so
/// that the size and memory the benchmark reports are those of what users install.
/// Where that build cannot run (no apt for its cross tools, say), the plain
/// `cargo build --release -p ringscale` binary is used and the report says which.
/// `--no-build` takes whichever of the two exists, the shipped one first.
fn find_or_build_ringscale(opts: &Options) -> Result<PathBuf, String> {
    if let Some(p) = &opts.ringscale_bin {
        return if sys::is_executable(p) {
            Ok(p.clone())
        } else {
            Err(format!("{} is not an executable", p.display()))
        };
    }
    let arch = std::env::consts::ARCH;
    let shipped = target_dir().join(format!("{arch}-unknown-linux-musl/release/ringscale"));
    if !opts.no_build {
        eprintln!("bench: packaging/build.sh {arch} (the static binary that ships)");
        let packaged = Command::new(workspace_root().join("packaging/build.sh"))
            .arg(arch)
            .current_dir(workspace_root())
            .status();
        match packaged {
            Ok(s) if s.success() && sys::is_executable(&shipped) => return Ok(shipped),
            Ok(s) => {
                eprintln!("bench: packaging/build.sh failed ({s}); using the plain release build")
            }
            Err(e) => eprintln!(
                "bench: cannot run packaging/build.sh ({e}); using the plain release build"
            ),
        }
        eprintln!("bench: cargo build --release -p ringscale");
        let status = Command::new(cargo())
            .args(["build", "--release", "-p", "ringscale"])
            .current_dir(workspace_root())
            .status()
            .map_err(|e| format!("cannot run cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build -p ringscale failed ({status})"));
        }
    } else if sys::is_executable(&shipped) {
        return Ok(shipped);
    }
    let p = target_dir().join("release/ringscale");
    if sys::is_executable(&p) {
        Ok(p)
    } else {
        Err(format!("{} not found", p.display()))
    }
}
