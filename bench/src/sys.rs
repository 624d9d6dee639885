//! Fallible process helpers. The test bed's helpers panic on failure, which is right for
//! tests; the benchmark must instead mark one case failed and go on with the others.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::cleanup;

/// Runs a command to completion; a non-zero exit becomes an error carrying its output.
pub fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", describe(cmd)))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

/// Like `run`, returning stdout as a trimmed string.
pub fn run_text(cmd: &mut Command) -> Result<String, String> {
    run(cmd).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// A command line as a user would type it, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let _ = write!(s, " {}", a.to_string_lossy());
    }
    s
}

/// Finds `name` in $PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Polls `ready` every 50 ms until it holds, `timeout` passes or the user interrupts.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<bool, String> {
    let end = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(true);
        }
        cleanup::check_interrupted()?;
        if Instant::now() >= end {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of a log file, for error messages about a process that died.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
