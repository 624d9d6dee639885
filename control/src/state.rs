//! The `tailscaled.state` file (protocol.md §11): one JSON object mapping state keys to
//! base64 bytes, as Go's `ipn/store.FileStore` writes it, so a state file moves between
//! Go tailscaled and ringscale.
//!
//! Flash is precious and identities must survive crashes:
//! - [`StateStore`] writes only when a value's bytes change (the daemon calls it on key,
//!   login and prefs changes; a netmap never reaches it), and a batch of changes is one
//!   write;
//! - every write is atomic: temp file in the same directory, write, fsync, rename,
//!   fsync the directory; leftovers of an interrupted write are ignored and removed;
//! - a file that is corrupt, truncated or empty is an error that names the file; it is
//!   never replaced by a fresh identity.
//!
//! Also here: `--state`/`--statedir` resolution as `cmd/tailscaled` does it (incl.
//! `mem:`), the key layout (`_machinekey`, `_current-profile`, `_profiles`,
//! `profile-<id>`) and key generation.

use crate::prefs::{LoginProfile, Prefs};
use crate::tailcfg::PrivateKey;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where Tailscale keeps its state on Linux.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/tailscale/tailscaled.state";
/// The state file's name inside `--statedir`.
pub const STATE_FILE_NAME: &str = "tailscaled.state";

/// State key of the machine private key (text `privkey:<hex>`).
pub const MACHINE_KEY: &str = "_machinekey";
/// State key naming the current profile's state key (text `profile-<id>`).
pub const CURRENT_PROFILE: &str = "_current-profile";
/// State key of the JSON map `{ProfileID: LoginProfile}`.
pub const KNOWN_PROFILES: &str = "_profiles";
/// Prefix of the state key holding a profile's prefs.
pub const PROFILE_KEY_PREFIX: &str = "profile-";

#[derive(Debug)]
pub enum StateError {
    /// Reading or writing failed (permissions, disk full, …).
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// The file (or one value in it) cannot be understood. Never "fixed" by starting over.
    Corrupt { path: String, reason: String },
    /// The state path exists but is not a regular file.
    NotRegularFile(PathBuf),
    /// A store Tailscale has (`kube:`, `arn:`, `tpmseal:`) that ringscale does not.
    UnsupportedStore(String),
    /// Neither `--state` nor `--statedir`, and no usable default.
    NoStatePath,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Io { path, op, source } => {
                write!(f, "state file {}: {op}: {source}", path.display())
            }
            StateError::Corrupt { path, reason } => write!(
                f,
                "state file {path} is corrupt ({reason}); refusing to start with a new \
                 identity: restore it, or move it away to start over as a new node"
            ),
            StateError::NotRegularFile(p) => {
                write!(
                    f,
                    "state file {} exists and is not a regular file",
                    p.display()
                )
            }
            StateError::UnsupportedStore(s) => {
                write!(
                    f,
                    "state store {s:?} is not supported; use a file path or mem:"
                )
            }
            StateError::NoStatePath => f.write_str("--statedir (or at least --state) is required"),
        }
    }
}

impl std::error::Error for StateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { path, op, source }
}

// ---------------------------------------------------------------------------------------
// --state / --statedir
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateLocation {
    File(PathBuf),
    /// `mem:`: nothing persisted; the node registers as ephemeral.
    Mem,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatePaths {
    pub location: StateLocation,
    /// The daemon's private directory (certs, Taildrop, …), if known: `--statedir`, or
    /// the parent of an absolute `--state` when that parent is named `tailscale`.
    pub var_root: Option<PathBuf>,
}

impl StatePaths {
    /// `--state=mem:` means an ephemeral node (Go: `LoginEphemeral`).
    pub fn ephemeral(&self) -> bool {
        self.location == StateLocation::Mem
    }
}

/// Resolves `--state` and `--statedir` as `cmd/tailscaled` does. `default_state_file`
/// is used when both flags are empty (pass [`default_state_file`]'s answer).
pub fn resolve_state_paths(
    state: &str,
    statedir: &str,
    default_state_file: Option<PathBuf>,
) -> Result<StatePaths, StateError> {
    let mut state = state.to_string();
    if state.is_empty() && statedir.is_empty() {
        state = default_state_file
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
    }
    let path = if !state.is_empty() {
        state.clone()
    } else if !statedir.is_empty() {
        Path::new(statedir)
            .join(STATE_FILE_NAME)
            .to_string_lossy()
            .into_owned()
    } else {
        return Err(StateError::NoStatePath);
    };

    let var_root = if !statedir.is_empty() {
        Some(PathBuf::from(statedir))
    } else {
        let p = Path::new(&state);
        p.is_absolute()
            .then(|| p.parent())
            .flatten()
            .filter(|dir| {
                dir.file_name()
                    .is_some_and(|n| n.to_string_lossy().eq_ignore_ascii_case("tailscale"))
            })
            .map(Path::to_path_buf)
    };

    let location = if path.starts_with("mem:") {
        StateLocation::Mem
    } else if let Some(prefix) = ["kube:", "arn:", "tpmseal:"]
        .iter()
        .find(|p| path.starts_with(*p))
    {
        return Err(StateError::UnsupportedStore(prefix.to_string()));
    } else {
        StateLocation::File(PathBuf::from(path))
    };
    Ok(StatePaths { location, var_root })
}

/// Tailscale's default state file on Linux: `/var/lib/tailscale/tailscaled.state` if
/// that file, its directory or `/var/lib` is writable; otherwise none for root (the
/// user must say where) and `$XDG_DATA_HOME/tailscale/tailscaled.state` (or
/// `~/.local/share/…`) for other users.
pub fn default_state_file() -> Option<PathBuf> {
    let path = PathBuf::from(DEFAULT_STATE_FILE);
    let mut try_path = path.clone();
    for _ in 0..3 {
        if access_rw(&try_path) {
            return Some(path);
        }
        try_path = try_path.parent()?.to_path_buf();
    }
    if ringscale_sys::cred::uid() == 0 {
        return None;
    }
    let data_home = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".local/share"),
    };
    Some(data_home.join("tailscale").join(STATE_FILE_NAME))
}

fn access_rw(p: &Path) -> bool {
    ringscale_sys::cred::can_read_write(p)
}

// ---------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------

/// The state file's contents, cached in memory, written through on change only.
#[derive(Debug)]
pub struct StateStore {
    /// None for `mem:`.
    path: Option<PathBuf>,
    values: BTreeMap<String, Vec<u8>>,
    /// File writes done by this store (not counting creating a missing file).
    writes: u64,
}

impl StateStore {
    pub fn open(location: &StateLocation) -> Result<StateStore, StateError> {
        match location {
            StateLocation::File(p) => StateStore::open_file(p),
            StateLocation::Mem => Ok(StateStore::in_memory()),
        }
    }

    /// A store that keeps everything in memory (`--state=mem:`).
    pub fn in_memory() -> StateStore {
        StateStore {
            path: None,
            values: BTreeMap::new(),
            writes: 0,
        }
    }

    /// Opens the state file, creating its directory and an empty `{}` file (as Go does,
    /// to learn early that the path is writable) if it does not exist. Leftover temp files
    /// of an interrupted write are removed. A file that doesn't parse is an error.
    pub fn open_file(path: &Path) -> Result<StateStore, StateError> {
        let dir = parent_dir(path);
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err(&dir, "creating state directory"))?;
        }
        // Go tightens a directory named "tailscale" to 0700: it holds private keys.
        if dir.file_name().is_some_and(|n| n == "tailscale") {
            if let Ok(meta) = fs::metadata(&dir) {
                if meta.is_dir() && meta.permissions().mode() & 0o777 != 0o700 {
                    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
                }
            }
        }
        remove_stale_temp_files(path);

        let mut store = StateStore {
            path: Some(path.to_path_buf()),
            values: BTreeMap::new(),
            writes: 0,
        };
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                // Follow it for reading; writing goes through the target (see write).
                if !fs::metadata(path).map(|m| m.is_file()).unwrap_or(false) {
                    return Err(StateError::NotRegularFile(path.to_path_buf()));
                }
            }
            Ok(m) if !m.is_file() => return Err(StateError::NotRegularFile(path.to_path_buf())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                write_file_atomic(path, b"{}")?;
                return Ok(store);
            }
            Err(e) => return Err(io_err(path, "stat")(e)),
        }
        let bytes = fs::read(path).map_err(io_err(path, "reading"))?;
        store.values = parse_state_file(&bytes).map_err(|reason| StateError::Corrupt {
            path: path.display().to_string(),
            reason,
        })?;
        Ok(store)
    }

    /// The file this store writes, None for `mem:`.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.values.get(key).map(Vec::as_slice)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// How many times this store rewrote the file.
    pub fn write_count(&self) -> u64 {
        self.writes
    }

    /// Sets one key. Returns whether anything was written (false when the bytes were
    /// already the same).
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<bool, StateError> {
        self.update(&[(key, Some(value))])
    }

    /// Deletes one key; false if it wasn't there.
    pub fn remove(&mut self, key: &str) -> Result<bool, StateError> {
        self.update(&[(key, None)])
    }

    /// Applies several changes (`None` deletes) with at most one file write, and only if
    /// some value's bytes differ. On a write error the store keeps its previous values,
    /// so the caller may retry.
    pub fn update(&mut self, changes: &[(&str, Option<&[u8]>)]) -> Result<bool, StateError> {
        let differs = changes
            .iter()
            .any(|(k, v)| self.values.get(*k).map(Vec::as_slice) != *v);
        if !differs {
            return Ok(false);
        }
        let mut next = self.values.clone();
        for (k, v) in changes {
            match v {
                Some(v) => next.insert(k.to_string(), v.to_vec()),
                None => next.remove(*k),
            };
        }
        if let Some(path) = &self.path {
            write_file_atomic(path, &serialize_state_file(&next))?;
            self.writes += 1;
        }
        self.values = next;
        Ok(true)
    }

    // -- machine key ---------------------------------------------------------------------

    /// The stored machine key, None if there is none yet. A malformed or zero key is
    /// [`StateError::Corrupt`].
    pub fn machine_key(&self) -> Result<Option<PrivateKey>, StateError> {
        let Some(b) = self.get(MACHINE_KEY) else {
            return Ok(None);
        };
        let text = std::str::from_utf8(b).map_err(|_| self.corrupt("_machinekey is not text"))?;
        let key: PrivateKey = text
            .trim()
            .parse()
            .map_err(|e| self.corrupt(&format!("_machinekey: {e}")))?;
        if key.is_zero() {
            return Err(self.corrupt("_machinekey is the zero key"));
        }
        Ok(Some(key))
    }

    /// The machine key, generated and stored on first start.
    pub fn load_or_create_machine_key(&mut self) -> Result<PrivateKey, StateError> {
        if let Some(k) = self.machine_key()? {
            return Ok(k);
        }
        let k = generate_machine_key();
        self.set(MACHINE_KEY, k.expose_secret_text().as_bytes())?;
        Ok(k)
    }

    // -- profiles ------------------------------------------------------------------------

    /// The `_profiles` map (empty if absent).
    pub fn known_profiles(&self) -> Result<BTreeMap<String, LoginProfile>, StateError> {
        match self.get(KNOWN_PROFILES) {
            None => Ok(BTreeMap::new()),
            Some(b) => serde_json::from_slice::<Option<BTreeMap<String, LoginProfile>>>(b)
                .map(Option::unwrap_or_default)
                .map_err(|e| self.corrupt(&format!("_profiles: {e}"))),
        }
    }

    /// The current profile and its prefs, None when there is no current profile (first
    /// start, or after logout). Prefs that don't parse are an error: they hold the node
    /// key. A listed profile whose prefs key is missing gets default prefs, as Go does.
    pub fn current_profile(&self) -> Result<Option<(LoginProfile, Prefs)>, StateError> {
        let Some(cur) = self.get(CURRENT_PROFILE) else {
            return Ok(None);
        };
        let cur = std::str::from_utf8(cur)
            .map_err(|_| self.corrupt("_current-profile is not text"))?
            .to_string();
        let profiles = self.known_profiles()?;
        let Some(profile) = profiles.into_values().find(|p| p.key == cur) else {
            log::warn!("state: current profile {cur:?} is not among the known profiles");
            return Ok(None);
        };
        let prefs = match self.get(&profile.key) {
            Some(b) => {
                Prefs::from_json(b).map_err(|e| self.corrupt(&format!("{}: {e}", profile.key)))?
            }
            None => {
                log::warn!("state: profile {} has no stored prefs", profile.key);
                Prefs::default()
            }
        };
        Ok(Some((profile, prefs)))
    }

    /// Stores `prefs` for `profile`, lists the profile in `_profiles` and makes it the
    /// current one — one file write, and none if nothing changed.
    pub fn save_profile(
        &mut self,
        profile: &LoginProfile,
        prefs: &Prefs,
    ) -> Result<bool, StateError> {
        let mut profile = profile.clone();
        if profile.key.is_empty() {
            profile.key = format!("{PROFILE_KEY_PREFIX}{}", profile.id);
        }
        let mut known = self.known_profiles()?;
        known.insert(profile.id.clone(), profile.clone());
        let known_bytes = serde_json::to_vec(&known).map_err(|e| self.corrupt(&e.to_string()))?;
        let prefs_bytes = prefs.to_json();
        self.update(&[
            (&profile.key, Some(&prefs_bytes)),
            (KNOWN_PROFILES, Some(&known_bytes)),
            (CURRENT_PROFILE, Some(profile.key.as_bytes())),
        ])
    }

    /// Deletes a profile (its prefs, its `_profiles` entry, and `_current-profile` if it
    /// was current), as logout does. One write at most.
    pub fn delete_profile(&mut self, id: &str) -> Result<bool, StateError> {
        let mut known = self.known_profiles()?;
        let Some(profile) = known.remove(id) else {
            return Ok(false);
        };
        let key = if profile.key.is_empty() {
            format!("{PROFILE_KEY_PREFIX}{id}")
        } else {
            profile.key
        };
        let known_bytes = serde_json::to_vec(&known).map_err(|e| self.corrupt(&e.to_string()))?;
        let was_current = self.get(CURRENT_PROFILE) == Some(key.as_bytes());
        let mut changes: Vec<(&str, Option<&[u8]>)> =
            vec![(&key, None), (KNOWN_PROFILES, Some(&known_bytes))];
        if was_current {
            changes.push((CURRENT_PROFILE, None));
        }
        self.update(&changes)
    }

    fn corrupt(&self, reason: &str) -> StateError {
        StateError::Corrupt {
            path: self
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "mem:".to_string()),
            reason: reason.to_string(),
        }
    }
}

/// A new profile ID: 4 lowercase hex digits not yet in `known`.
pub fn new_profile_id(known: &BTreeMap<String, LoginProfile>) -> String {
    loop {
        let mut b = [0u8; 2];
        ringscale_sys::random::fill(&mut b);
        let id = format!("{:02x}{:02x}", b[0], b[1]);
        if !known.contains_key(&id) {
            return id;
        }
    }
}

/// A fresh machine private key.
pub fn generate_machine_key() -> PrivateKey {
    PrivateKey::generate()
}

/// A fresh node private key (registration, rotation).
pub fn generate_node_key() -> PrivateKey {
    PrivateKey::generate()
}

/// Parses the file: a JSON object of key → base64 string (`null` = absent).
fn parse_state_file(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    if bytes.is_empty() {
        // Go treats an empty file as missing (tailscale#895: unsynced writes on ext4).
        // We fsync before renaming, so we never leave one; an empty file here was
        // truncated by something else, and starting over would lose the identity.
        return Err("file is empty".to_string());
    }
    let raw: BTreeMap<String, Option<String>> =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object of strings: {e}"))?;
    let mut out = BTreeMap::new();
    for (k, v) in raw {
        let Some(v) = v else { continue };
        let b = STANDARD
            .decode(v.as_bytes())
            .map_err(|_| format!("value of {k:?} is not base64"))?;
        out.insert(k, b);
    }
    Ok(out)
}

/// The file as Go's `json.MarshalIndent(map, "", "  ")` writes it: sorted keys, base64.
fn serialize_state_file(values: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let encoded: BTreeMap<&str, String> = values
        .iter()
        .map(|(k, v)| (k.as_str(), STANDARD.encode(v)))
        .collect();
    // A map of strings always serializes.
    serde_json::to_vec_pretty(&encoded).unwrap_or_else(|_| b"{}".to_vec())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Temp files are `<name>.tmp<digits>` beside the target, like Go's atomicfile.
fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{name}.tmp")
}

fn remove_stale_temp_files(path: &Path) {
    let prefix = temp_prefix(path);
    let Ok(entries) = fs::read_dir(parent_dir(path)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(rest) = name.strip_prefix(&prefix) {
            if !rest.is_empty() && rest.bytes().all(|c| c.is_ascii_digit()) {
                log::info!("state: removing {name}, left by an interrupted write");
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Replaces `path` with `data` so that a crash at any moment leaves either the old or
/// the new contents: temp file (mode 0600) in the same directory, write, fsync, rename
/// over the target, fsync the directory so the rename itself is durable. A symlinked
/// state file is written through to its target.
pub fn write_file_atomic(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let target = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(io_err(path, "resolving symlink"))?
        }
        Ok(m) if !m.is_file() => return Err(StateError::NotRegularFile(path.to_path_buf())),
        _ => path.to_path_buf(),
    };
    let dir = parent_dir(&target);
    let prefix = temp_prefix(&target);
    let (tmp_path, mut tmp) = loop {
        let mut r = [0u8; 4];
        ringscale_sys::random::fill(&mut r);
        let p = dir.join(format!("{prefix}{}", u32::from_le_bytes(r)));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
        {
            Ok(f) => break (p, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&dir, "creating temp file")(e)),
        }
    };
    let result = (|| {
        tmp.write_all(data).map_err(io_err(&tmp_path, "writing"))?;
        tmp.sync_all().map_err(io_err(&tmp_path, "fsync"))?;
        drop(tmp);
        fs::rename(&tmp_path, &target).map_err(io_err(&target, "renaming into place"))?;
        let d = File::open(&dir).map_err(io_err(&dir, "opening directory"))?;
        match d.sync_all() {
            // Some filesystems can't fsync a directory; the rename is still atomic.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
            r => r.map_err(io_err(&dir, "fsync directory")),
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefs::Persist;
    use crate::tailcfg::UserProfile;
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    /// A scratch directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let mut r = [0u8; 8];
            ringscale_sys::random::fill(&mut r);
            let p = std::env::temp_dir().join(format!(
                "ringscale-state-{tag}-{}-{}",
                std::process::id(),
                u64::from_le_bytes(r)
            ));
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn file(&self) -> PathBuf {
            self.0.join(STATE_FILE_NAME)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn temp_files(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect()
    }

    /// A state file as Go tailscaled writes it after logging in.
    fn go_state_file() -> String {
        let b64 = |s: &str| STANDARD.encode(s.as_bytes());
        let profiles = r#"{"1ab3":{"ID":"1ab3","Name":"alice@example.com","NetworkProfile":{"MagicDNSName":"tail1234.ts.net","DomainName":"example.com","DisplayName":""},"Key":"profile-1ab3","UserProfile":{"ID":123,"LoginName":"alice@example.com","DisplayName":"Alice"},"NodeID":"nXXXXCNTRL","LocalUserID":"","ControlURL":"https://hs.example.com"}}"#;
        let prefs = format!(
            r#"{{"ControlURL":"https://hs.example.com","WantRunning":true,"CorpDNS":true,"NetfilterMode":2,
               "AdvertiseRoutes":["0.0.0.0/0","::/0"],
               "Config":{{"PrivateNodeKey":"privkey:{}","OldPrivateNodeKey":"privkey:{}",
                          "UserProfile":{{"ID":123,"LoginName":"alice@example.com","DisplayName":"Alice"}},
                          "NetworkLockKey":"nlpriv:{}","NodeID":"nXXXXCNTRL"}}}}"#,
            "11".repeat(32),
            "0".repeat(64),
            "22".repeat(64)
        );
        format!(
            "{{\n  \"_current-profile\": \"{}\",\n  \"_machinekey\": \"{}\",\n  \"_profiles\": \"{}\",\n  \"profile-1ab3\": \"{}\"\n}}",
            b64("profile-1ab3"),
            b64(&format!("privkey:{}", "33".repeat(32))),
            b64(profiles),
            b64(&prefs)
        )
    }

    #[test]
    fn reads_a_go_state_file() {
        let d = TempDir::new("go");
        fs::write(d.file(), go_state_file()).unwrap();
        let st = StateStore::open_file(&d.file()).unwrap();
        assert_eq!(
            st.machine_key().unwrap().unwrap().0.expose_secret_bytes(),
            &[0x33; 32]
        );
        let (profile, prefs) = st.current_profile().unwrap().unwrap();
        assert_eq!(profile.id, "1ab3");
        assert_eq!(profile.network_profile.magic_dns_name, "tail1234.ts.net");
        assert_eq!(prefs.control_url, "https://hs.example.com");
        assert!(prefs.advertises_exit_node());
        assert_eq!(
            prefs.node_private_key().unwrap().0.expose_secret_bytes(),
            &[0x11; 32]
        );
        assert_eq!(prefs.persist.unwrap().node_id, "nXXXXCNTRL");
        // Reading never writes.
        assert_eq!(fs::read_to_string(d.file()).unwrap(), go_state_file());
        assert_eq!(st.write_count(), 0);
    }

    #[test]
    fn writes_the_go_layout_and_reads_it_back() {
        let d = TempDir::new("layout");
        let mut st = StateStore::open_file(&d.file()).unwrap();
        assert_eq!(
            fs::read_to_string(d.file()).unwrap(),
            "{}",
            "missing file created as {{}}"
        );
        assert!(st.set("b-key", b"second").unwrap());
        assert!(st.set("_a", b"\x00\xffbin").unwrap());
        let text = fs::read_to_string(d.file()).unwrap();
        assert_eq!(
            text,
            "{\n  \"_a\": \"AP9iaW4=\",\n  \"b-key\": \"c2Vjb25k\"\n}"
        );
        let mode = fs::metadata(d.file()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "the file holds private keys");
        let again = StateStore::open_file(&d.file()).unwrap();
        assert_eq!(again.get("_a"), Some(&b"\x00\xffbin"[..]));
        assert_eq!(again.get("b-key"), Some(&b"second"[..]));
        assert!(temp_files(&d.0).is_empty());
    }

    #[test]
    fn unchanged_values_are_not_written() {
        let d = TempDir::new("nowrite");
        let mut st = StateStore::open_file(&d.file()).unwrap();
        let mk = st.load_or_create_machine_key().unwrap();
        let profile = LoginProfile {
            id: "00aa".into(),
            ..LoginProfile::default()
        };
        let prefs = Prefs {
            want_running: true,
            persist: Some(Persist {
                private_node_key: generate_node_key(),
                ..Persist::default()
            }),
            ..Prefs::default()
        };
        assert!(st.save_profile(&profile, &prefs).unwrap());
        assert_eq!(st.write_count(), 2);
        let before_bytes = fs::read(d.file()).unwrap();
        let before = fs::metadata(d.file()).unwrap();
        // Give a rewrite a chance to show up in mtime.
        std::thread::sleep(Duration::from_millis(20));

        // The same values again, a hundred times, in every form the API takes.
        for _ in 0..100 {
            assert!(!st.save_profile(&profile, &prefs.clone()).unwrap());
            assert_eq!(st.load_or_create_machine_key().unwrap(), mk);
            assert!(!st
                .set(MACHINE_KEY, mk.expose_secret_text().as_bytes())
                .unwrap());
            assert!(!st.remove("never-existed").unwrap());
            assert!(!st.update(&[]).unwrap());
        }
        let after = fs::metadata(d.file()).unwrap();
        assert_eq!(after.ino(), before.ino(), "file was replaced");
        assert_eq!(
            (after.mtime(), after.mtime_nsec()),
            (before.mtime(), before.mtime_nsec())
        );
        assert_eq!(fs::read(d.file()).unwrap(), before_bytes);
        assert_eq!(st.write_count(), 2);
        assert!(temp_files(&d.0).is_empty());

        // A real change is written, as one write, and gets a new inode (rename).
        let mut changed = prefs.clone();
        changed.route_all = true;
        assert!(st.save_profile(&profile, &changed).unwrap());
        assert_eq!(st.write_count(), 3);
        assert_ne!(fs::metadata(d.file()).unwrap().ino(), before.ino());
    }

    #[test]
    fn profiles_save_load_and_delete() {
        let d = TempDir::new("profiles");
        let mut st = StateStore::open_file(&d.file()).unwrap();
        assert!(st.current_profile().unwrap().is_none());
        let id = new_profile_id(&st.known_profiles().unwrap());
        assert_eq!(id.len(), 4);
        assert!(id
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let profile = LoginProfile {
            id: id.clone(),
            name: "alice@example.com".into(),
            user_profile: UserProfile {
                id: 5,
                login_name: "alice@example.com".into(),
                ..UserProfile::default()
            },
            control_url: "http://127.0.0.1:8080".into(),
            ..LoginProfile::default()
        };
        let prefs = Prefs {
            control_url: "http://127.0.0.1:8080".into(),
            persist: Some(Persist {
                private_node_key: generate_node_key(),
                ..Persist::default()
            }),
            ..Prefs::default()
        };
        st.save_profile(&profile, &prefs).unwrap();
        drop(st);

        let mut st = StateStore::open_file(&d.file()).unwrap();
        let (p, loaded) = st.current_profile().unwrap().unwrap();
        assert_eq!(p.key, format!("profile-{id}"));
        assert_eq!(p.user_profile.login_name, "alice@example.com");
        assert_eq!(loaded, prefs);
        assert_eq!(st.get(CURRENT_PROFILE), Some(p.key.as_bytes()));

        assert!(st.delete_profile(&id).unwrap());
        assert!(st.current_profile().unwrap().is_none());
        assert!(st.get(&p.key).is_none());
        assert!(st.known_profiles().unwrap().is_empty());
        assert!(!st.delete_profile(&id).unwrap());
    }

    #[test]
    fn machine_key_is_created_once() {
        let d = TempDir::new("mkey");
        let k1 = StateStore::open_file(&d.file())
            .unwrap()
            .load_or_create_machine_key()
            .unwrap();
        let k2 = StateStore::open_file(&d.file())
            .unwrap()
            .load_or_create_machine_key()
            .unwrap();
        assert_eq!(k1, k2);
        assert!(!k1.is_zero());
        assert_ne!(generate_machine_key(), generate_node_key());
        let text = String::from_utf8(
            StateStore::open_file(&d.file())
                .unwrap()
                .get(MACHINE_KEY)
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        assert!(text.starts_with("privkey:") && text.len() == 8 + 64);
    }

    fn assert_corrupt(path: &Path) -> String {
        match StateStore::open_file(path) {
            Err(e @ StateError::Corrupt { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&path.display().to_string()), "{msg}");
                msg
            }
            other => panic!("expected a corrupt-file error, got {other:?}"),
        }
    }

    #[test]
    fn corrupt_or_truncated_files_are_errors_and_left_alone() {
        let d = TempDir::new("corrupt");
        let good = go_state_file();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", good.as_bytes()[..good.len() / 2].to_vec()),
            (
                "truncated-by-one",
                good.as_bytes()[..good.len() - 1].to_vec(),
            ),
            ("empty", Vec::new()),
            ("garbage", b"\x00\x01\x02 not json".to_vec()),
            ("array", b"[1,2]".to_vec()),
            ("number-value", br#"{"_machinekey": 5}"#.to_vec()),
            ("bad-base64", br#"{"_machinekey": "***"}"#.to_vec()),
        ];
        for (name, bytes) in cases {
            fs::write(d.file(), &bytes).unwrap();
            let msg = assert_corrupt(&d.file());
            assert!(
                msg.contains("refusing to start with a new identity"),
                "{name}: {msg}"
            );
            assert_eq!(
                fs::read(d.file()).unwrap(),
                bytes,
                "{name}: file must not be replaced"
            );
        }

        // A well-formed file with a broken value: the values that hold identities fail
        // loudly when read.
        let bad_key = format!(
            "{{\"_machinekey\": \"{}\"}}",
            STANDARD.encode(format!("privkey:{}", "zz".repeat(32)))
        );
        fs::write(d.file(), &bad_key).unwrap();
        let mut st = StateStore::open_file(&d.file()).unwrap();
        assert!(matches!(st.machine_key(), Err(StateError::Corrupt { .. })));
        assert!(
            st.load_or_create_machine_key().is_err(),
            "must not make a new key"
        );
        assert_eq!(fs::read_to_string(d.file()).unwrap(), bad_key);

        let bad_prefs = format!(
            "{{\"_current-profile\": \"{}\", \"_profiles\": \"{}\", \"profile-1ab3\": \"{}\"}}",
            STANDARD.encode("profile-1ab3"),
            STANDARD.encode(r#"{"1ab3":{"ID":"1ab3","Key":"profile-1ab3"}}"#),
            STANDARD.encode(r#"{"Config":{"PrivateNodeKey":"privkey:12"#)
        );
        fs::write(d.file(), &bad_prefs).unwrap();
        let st = StateStore::open_file(&d.file()).unwrap();
        assert!(matches!(
            st.current_profile(),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn leftover_temp_file_does_not_break_reading() {
        let d = TempDir::new("leftover");
        let mut st = StateStore::open_file(&d.file()).unwrap();
        st.set("k", b"committed").unwrap();
        drop(st);
        // What a kill -9 between create and rename leaves behind: a partial temp file.
        let leftover = d.0.join(format!("{STATE_FILE_NAME}.tmp12345"));
        fs::write(&leftover, b"{\n  \"k\": \"bmV3").unwrap();
        let unrelated = d.0.join("tailscaled.state.tmp-notours");
        fs::write(&unrelated, b"x").unwrap();

        let st = StateStore::open_file(&d.file()).unwrap();
        assert_eq!(st.get("k"), Some(&b"committed"[..]));
        assert!(!leftover.exists(), "stale temp file is cleaned up");
        assert!(unrelated.exists(), "only our own temp names are removed");
    }

    #[test]
    fn failed_write_keeps_the_old_values() {
        let d = TempDir::new("rofs");
        let mut st = StateStore::open_file(&d.file()).unwrap();
        st.set("k", b"v1").unwrap();
        // Make the directory unwritable; root ignores modes, so use a directory in place
        // of the file's parent instead: point the store at a path whose parent is a file.
        let blocker = d.0.join("not-a-dir");
        fs::write(&blocker, b"").unwrap();
        let mut bad = StateStore {
            path: Some(blocker.join(STATE_FILE_NAME)),
            values: st.values.clone(),
            writes: 0,
        };
        assert!(matches!(bad.set("k", b"v2"), Err(StateError::Io { .. })));
        assert_eq!(
            bad.get("k"),
            Some(&b"v1"[..]),
            "cache not updated by a failed write"
        );
        assert_eq!(bad.write_count(), 0);
    }

    #[test]
    fn state_path_that_is_a_directory_is_refused() {
        let d = TempDir::new("isdir");
        fs::create_dir(d.file()).unwrap();
        assert!(matches!(
            StateStore::open_file(&d.file()),
            Err(StateError::NotRegularFile(_))
        ));
    }

    #[test]
    fn creates_missing_state_directory_private() {
        let d = TempDir::new("mkdir");
        let path = d.0.join("var/lib/tailscale").join(STATE_FILE_NAME);
        let mut st = StateStore::open_file(&path).unwrap();
        st.set("k", b"v").unwrap();
        let mode = fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn mem_store_never_touches_disk() {
        let paths = resolve_state_paths("mem:", "", None).unwrap();
        assert!(paths.ephemeral());
        let mut st = StateStore::open(&paths.location).unwrap();
        assert!(st.path().is_none());
        assert!(st.set("k", b"v").unwrap());
        assert!(!st.set("k", b"v").unwrap());
        assert_eq!(st.get("k"), Some(&b"v"[..]));
        st.load_or_create_machine_key().unwrap();
        assert_eq!(st.write_count(), 0);
    }

    #[test]
    fn state_flags_resolve_like_tailscaled() {
        let default = Some(PathBuf::from(DEFAULT_STATE_FILE));
        let r = |s: &str, d: &str| resolve_state_paths(s, d, default.clone()).unwrap();
        assert_eq!(
            r("", ""),
            StatePaths {
                location: StateLocation::File(DEFAULT_STATE_FILE.into()),
                var_root: Some("/var/lib/tailscale".into()),
            }
        );
        assert_eq!(
            r("", "/srv/ts"),
            StatePaths {
                location: StateLocation::File("/srv/ts/tailscaled.state".into()),
                var_root: Some("/srv/ts".into()),
            }
        );
        assert_eq!(
            r("/etc/ts.state", ""),
            StatePaths {
                location: StateLocation::File("/etc/ts.state".into()),
                var_root: None,
            }
        );
        assert_eq!(
            r("/data/Tailscale/x.state", "").var_root,
            Some("/data/Tailscale".into())
        );
        assert_eq!(
            r("rel/tailscale/x.state", "").var_root,
            None,
            "only absolute paths"
        );
        assert_eq!(
            r("/a/b.state", "/c"),
            StatePaths {
                location: StateLocation::File("/a/b.state".into()),
                var_root: Some("/c".into()),
            }
        );
        let mem = r("mem:", "/var/lib/tailscale");
        assert!(mem.ephemeral());
        assert_eq!(mem.var_root, Some("/var/lib/tailscale".into()));
        assert!(r("mem:anything", "").ephemeral());
        assert!(matches!(
            resolve_state_paths("", "", None),
            Err(StateError::NoStatePath)
        ));
        for s in [
            "kube:secret",
            "arn:aws:ssm:eu-west-1:1:parameter/x",
            "tpmseal:/x",
        ] {
            assert!(matches!(
                resolve_state_paths(s, "", None),
                Err(StateError::UnsupportedStore(_))
            ));
        }
    }

    /// Not a test by itself: the writer that `kill_during_writes_leaves_a_whole_file`
    /// runs in a child process and kills with SIGKILL.
    #[test]
    #[ignore = "helper: the writer kill_during_writes_leaves_a_whole_file runs in a child and kills"]
    fn kill_child_writer() {
        let Some(path) = std::env::var_os("RINGSCALE_STATE_KILL_PATH") else {
            return;
        };
        let mut st = StateStore::open_file(Path::new(&path)).unwrap();
        // A big value keeps each write in flight long enough to be hit.
        let filler = vec![b'x'; 256 * 1024];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut i = 0u64;
        while std::time::Instant::now() < deadline {
            i += 1;
            let n = i.to_string();
            st.update(&[
                ("a", Some(n.as_bytes())),
                ("filler", Some(&filler)),
                ("b", Some(n.as_bytes())),
            ])
            .unwrap();
        }
    }

    #[test]
    fn kill_during_writes_leaves_a_whole_file() {
        let d = TempDir::new("kill");
        let exe = std::env::current_exe().unwrap();
        for delay_ms in [150, 230, 310] {
            let mut child = std::process::Command::new(&exe)
                .args([
                    "state::tests::kill_child_writer",
                    "--exact",
                    "--ignored",
                    "--quiet",
                ])
                .env("RINGSCALE_STATE_KILL_PATH", d.file())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let st = StateStore::open_file(&d.file()).unwrap();
            let (a, b) = (st.get("a"), st.get("b"));
            assert!(a.is_some(), "writer made no progress in {delay_ms} ms");
            assert_eq!(a, b, "a file mixing two writes");
            assert_eq!(st.get("filler").map(<[u8]>::len), Some(256 * 1024));
            assert!(temp_files(&d.0).is_empty(), "leftovers are removed on open");
        }
    }
}
