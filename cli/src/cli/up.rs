//! `tailscale up` and `tailscale login`: build prefs from the flags, refuse to silently
//! drop earlier settings (Go's "up checker"), then either edit the running node's prefs
//! or start the backend and wait on the IPN bus until it is Running, printing the login
//! URL if one arrives. Follows Go's `cmd/tailscale/cli/up.go` step by step
//! (tailscale-surface.md §1.1 "The sequence `tailscale up` runs").

use super::prefsflags::{
    calc_advertise_routes, exit_node_ip_of_arg, mark_flag, netfilter_mode_from_flag, parse_tags,
    refuse_auto_exit_node, routes_without_exit, unsupported_flag, validate_hostname,
};
use super::{duration_flag, go_quote_list, msg, outln, CmdError, CmdResult, Command, Ctx};
use crate::goflag::{self, Flag, Kind};
use crate::localapi::client::ClientError;
use ringscale_control::ipn::{Options, State};
use ringscale_control::ipnstate::{Status, WARN_ACCEPT_ROUTES_OFF};
use ringscale_control::prefs::{MaskedPrefs, Prefs, DEFAULT_CONTROL_URL};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const UP: Command = Command {
    name: "up",
    short_usage: "tailscale up [flags]",
    short_help: "Connect to Tailscale, logging in if needed",
    flags: UP_FLAGS,
    run: run_up,
};

pub const LOGIN: Command = Command {
    name: "login",
    short_usage: "tailscale login [flags]",
    short_help: "Log in to a Tailscale account",
    flags: LOGIN_FLAGS,
    run: run_login,
};

/// Go's up flags on Linux, in Go's (alphabetical) help order.
const UP_FLAGS: &[Flag] = &[
    Flag::value("accept-risk", "", "accept risk and skip confirmation for risk types: lose-ssh,mac-app-connector,all"),
    Flag::bool_on("accept-dns", "accept DNS configuration from the admin panel"),
    Flag::bool("accept-routes", "accept routes advertised by other Tailscale nodes"),
    Flag::value("audience", "", "Audience used when requesting an ID token from an identity provider for auth keys via workload identity federation"),
    Flag::value("auth-key", "", "node authorization key; if it begins with \"file:\", then it's a path to a file containing the authkey"),
    Flag::bool("advertise-connector", "advertise this node as an app connector"),
    Flag::bool("advertise-exit-node", "offer to be an exit node for internet traffic for the tailnet"),
    Flag::value("advertise-routes", "", "routes to advertise to other nodes (comma-separated, e.g. \"10.0.0.0/8,192.168.0.0/24\") or empty string to not advertise routes"),
    Flag::value("advertise-tags", "", "comma-separated ACL tags to request (e.g. \"tag:eng,tag:montreal,tag:ssh\"); the \"tag:\" prefix is optional"),
    Flag::value("client-id", "", "Client ID used to generate authkeys via workload identity federation"),
    Flag::value("client-secret", "", "Client Secret used to generate authkeys via OAuth"),
    Flag::value("exit-node", "", "Tailscale exit node (IP or base name) for internet traffic, or empty string to not use an exit node"),
    Flag::bool("exit-node-allow-lan-access", "allow direct access to the local network when routing traffic via an exit node"),
    Flag::bool("force-reauth", "force reauthentication (WARNING: this may bring down the Tailscale connection and thus should not be done remotely over SSH or RDP)"),
    Flag::bool_on("host-routes", "install host routes to other Tailscale nodes (must be true)"),
    Flag::value("hostname", "", "hostname to use instead of the one provided by the OS"),
    Flag::value("id-token", "", "ID token from the identity provider to exchange with the control server for workload identity federation"),
    Flag::bool("json", "output in JSON format (WARNING: format subject to change)"),
    Flag::value("login-server", DEFAULT_CONTROL_URL, "base URL of control server"),
    Flag::value("netfilter-mode", "on", "netfilter mode (one of on, nodivert, off)"),
    Flag::value("operator", "", "Unix username to allow to operate on tailscaled without sudo"),
    Flag::bool("qr", "show QR code for login URLs"),
    Flag::value("qr-format", "auto", "QR code formatting (auto, ascii, large, small)"),
    Flag::bool("report-posture", "allow management plane to gather device posture information"),
    Flag::bool("reset", "reset unspecified settings to their default values"),
    Flag::bool("shields-up", "don't allow incoming connections"),
    Flag::bool_on("snat-subnet-routes", "source NAT traffic to local routes advertised with --advertise-routes"),
    Flag::bool("ssh", "run an SSH server, permitting access per tailnet admin's declared policy"),
    Flag::bool("stateful-filtering", "apply stateful filtering to forwarded packets (subnet routers, exit nodes, and so on)"),
    Flag::value("timeout", "0s", "maximum amount of time to wait for tailscaled to enter a Running state; default (0s) blocks forever"),
];

/// `login` takes up's flags except --json, --reset, --force-reauth and --accept-risk,
/// plus --nickname.
const LOGIN_FLAGS: &[Flag] = &[
    Flag::bool_on("accept-dns", "accept DNS configuration from the admin panel"),
    Flag::bool("accept-routes", "accept routes advertised by other Tailscale nodes"),
    Flag::value("audience", "", "Audience used when requesting an ID token from an identity provider for auth keys via workload identity federation"),
    Flag::value("auth-key", "", "node authorization key; if it begins with \"file:\", then it's a path to a file containing the authkey"),
    Flag::bool("advertise-connector", "advertise this node as an app connector"),
    Flag::bool("advertise-exit-node", "offer to be an exit node for internet traffic for the tailnet"),
    Flag::value("advertise-routes", "", "routes to advertise to other nodes (comma-separated, e.g. \"10.0.0.0/8,192.168.0.0/24\") or empty string to not advertise routes"),
    Flag::value("advertise-tags", "", "comma-separated ACL tags to request (e.g. \"tag:eng,tag:montreal,tag:ssh\"); the \"tag:\" prefix is optional"),
    Flag::value("client-id", "", "Client ID used to generate authkeys via workload identity federation"),
    Flag::value("client-secret", "", "Client Secret used to generate authkeys via OAuth"),
    Flag::value("exit-node", "", "Tailscale exit node (IP or base name) for internet traffic, or empty string to not use an exit node"),
    Flag::bool("exit-node-allow-lan-access", "allow direct access to the local network when routing traffic via an exit node"),
    Flag::bool_on("host-routes", "install host routes to other Tailscale nodes (must be true)"),
    Flag::value("hostname", "", "hostname to use instead of the one provided by the OS"),
    Flag::value("id-token", "", "ID token from the identity provider to exchange with the control server for workload identity federation"),
    Flag::value("login-server", DEFAULT_CONTROL_URL, "base URL of control server"),
    Flag::value("netfilter-mode", "on", "netfilter mode (one of on, nodivert, off)"),
    Flag::value("nickname", "", "short name for the account"),
    Flag::value("operator", "", "Unix username to allow to operate on tailscaled without sudo"),
    Flag::bool("qr", "show QR code for login URLs"),
    Flag::value("qr-format", "auto", "QR code formatting (auto, ascii, large, small)"),
    Flag::bool("report-posture", "allow management plane to gather device posture information"),
    Flag::bool("shields-up", "don't allow incoming connections"),
    Flag::bool_on("snat-subnet-routes", "source NAT traffic to local routes advertised with --advertise-routes"),
    Flag::bool("ssh", "run an SSH server, permitting access per tailnet admin's declared policy"),
    Flag::bool("stateful-filtering", "apply stateful filtering to forwarded packets (subnet routers, exit nodes, and so on)"),
    Flag::value("timeout", "0s", "maximum amount of time to wait for tailscaled to enter a Running state; default (0s) blocks forever"),
];

const ACCIDENTAL_UP_PREFIX: &str =
    "Error: changing settings via 'tailscale up' requires mentioning all\n\
non-default flags. To proceed, either re-run your command with --reset or\n\
use the command below to explicitly mention the current value of\n\
all non-default settings:\n\n\ttailscale up";

/// A flag given on the command line, as Go's `flag.Visit` sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GivenFlag {
    pub name: &'static str,
    pub is_bool: bool,
    /// The value as Go's `flag.Value.String` would print it.
    pub value: String,
}

/// The parsed `up`/`login` command line.
#[derive(Clone, Debug, Default)]
pub struct UpArgs {
    pub is_login: bool,
    pub reset: bool,
    pub force_reauth: bool,
    pub json: bool,
    pub server: String,
    pub accept_routes: bool,
    pub accept_dns: bool,
    pub exit_node: String,
    pub exit_node_allow_lan_access: bool,
    pub shields_up: bool,
    pub run_ssh: bool,
    pub advertise_routes: String,
    pub advertise_exit_node: bool,
    pub advertise_tags: String,
    pub advertise_connector: bool,
    pub report_posture: bool,
    pub snat: bool,
    pub stateful_filtering: bool,
    pub netfilter_mode: String,
    pub auth_key_or_file: String,
    pub hostname: String,
    pub operator: String,
    pub profile_name: String,
    pub timeout: Duration,
    /// The flags the user gave, sorted by name (Go's `flag.Visit` order).
    pub given: Vec<GivenFlag>,
}

impl UpArgs {
    fn from_flags(p: &goflag::Parsed, flags: &[Flag], is_login: bool) -> Result<UpArgs, CmdError> {
        let opt_str = |n: &str| {
            if flags.iter().any(|f| f.name == n) {
                p.str(n).to_string()
            } else {
                String::new()
            }
        };
        let opt_bool = |n: &str| flags.iter().any(|f| f.name == n) && p.bool(n);
        let timeout = duration_flag(p, "timeout")?;
        let mut given: Vec<GivenFlag> = flags
            .iter()
            .filter(|f| p.is_set(f.name))
            .map(|f| GivenFlag {
                name: f.name,
                is_bool: f.kind == Kind::Bool,
                value: if f.name == "timeout" {
                    go_duration_string(timeout)
                } else {
                    p.str(f.name).to_string()
                },
            })
            .collect();
        given.sort_by_key(|g| g.name);
        if p.is_set("host-routes") && !p.bool("host-routes") {
            return Err(CmdError::Flag(
                "invalid boolean value \"false\" for -host-routes: unsupported value; only 'true' is allowed".into(),
            ));
        }
        Ok(UpArgs {
            is_login,
            reset: opt_bool("reset"),
            force_reauth: opt_bool("force-reauth"),
            json: opt_bool("json"),
            server: p.str("login-server").to_string(),
            accept_routes: p.bool("accept-routes"),
            accept_dns: p.bool("accept-dns"),
            exit_node: p.str("exit-node").to_string(),
            exit_node_allow_lan_access: p.bool("exit-node-allow-lan-access"),
            shields_up: p.bool("shields-up"),
            run_ssh: p.bool("ssh"),
            advertise_routes: p.str("advertise-routes").to_string(),
            advertise_exit_node: p.bool("advertise-exit-node"),
            advertise_tags: p.str("advertise-tags").to_string(),
            advertise_connector: p.bool("advertise-connector"),
            report_posture: p.bool("report-posture"),
            snat: p.bool("snat-subnet-routes"),
            stateful_filtering: p.bool("stateful-filtering"),
            netfilter_mode: p.str("netfilter-mode").to_string(),
            auth_key_or_file: p.str("auth-key").to_string(),
            hostname: p.str("hostname").to_string(),
            operator: p.str("operator").to_string(),
            profile_name: opt_str("nickname"),
            timeout,
            given,
        })
    }

    fn flag_given(&self, name: &str) -> bool {
        self.given.iter().any(|g| g.name == name)
    }
}

/// Go's `time.Duration.String` for the durations a user types.
pub fn go_duration_string(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let ns = d.as_nanos();
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", trim_float(ns as f64 / 1e3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", trim_float(ns as f64 / 1e6));
    }
    let secs = d.as_secs();
    let (h, m) = (secs / 3600, (secs / 60) % 60);
    let s = trim_float((secs % 60) as f64 + f64::from(d.subsec_nanos()) / 1e9);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.9}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Go's `prefsFromUpArgs`: the complete prefs the flags describe. Warnings to print go
/// to `warnings`.
pub fn prefs_from_up_args(
    a: &UpArgs,
    st: &Status,
    warnings: &mut Vec<String>,
) -> Result<Prefs, String> {
    let routes = calc_advertise_routes(&a.advertise_routes, a.advertise_exit_node)?;
    if a.exit_node.is_empty() && a.exit_node_allow_lan_access {
        return Err("--exit-node-allow-lan-access can only be used with --exit-node".into());
    }
    let tags = parse_tags(&a.advertise_tags)?;
    if !a.hostname.is_empty() {
        validate_hostname(&a.hostname)?;
    }
    let mut p = Prefs {
        control_url: a.server.clone(),
        want_running: true,
        route_all: a.accept_routes,
        ..Prefs::default()
    };
    if !a.exit_node.is_empty() {
        refuse_auto_exit_node(&a.exit_node)?;
        p.exit_node_ip = Some(exit_node_ip_of_arg(&a.exit_node, st).map_err(|e| e.for_user())?);
    }
    p.exit_node_allow_lan_access = a.exit_node_allow_lan_access;
    p.corp_dns = a.accept_dns;
    p.shields_up = a.shields_up;
    p.run_ssh = a.run_ssh;
    p.advertise_routes = routes;
    p.advertise_tags = tags;
    p.hostname = a.hostname.clone();
    p.operator_user = a.operator.clone();
    p.profile_name = a.profile_name.clone();
    p.app_connector.advertise = a.advertise_connector;
    p.posture_checking = a.report_posture;
    p.no_snat = !a.snat;
    if p.no_snat && p.advertises_exit_node() {
        warnings.push("--snat-subnet-routes=false is set with --advertise-exit-node; internet traffic through this exit node may not work as expected".into());
    }
    p.no_stateful_filtering = Some(!a.stateful_filtering);
    let (mode, warning) = netfilter_mode_from_flag(&a.netfilter_mode)?;
    p.netfilter_mode = mode;
    warnings.extend(warning.map(str::to_string));
    Ok(p)
}

/// A flag's value as the up checker compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FlagValue {
    Bool(bool),
    Str(String),
}

fn is_login_server_synonym(v: &FlagValue) -> bool {
    matches!(v, FlagValue::Str(s) if s == "https://login.tailscale.com" || s == "https://controlplane.tailscale.com")
}

/// Go's `prefsToFlags`: the up flags that would reproduce `p`. `cur_exit_node_ip`
/// resolves an exit node chosen by ID.
fn prefs_to_flags(
    p: &Prefs,
    cur_exit_node_ip: Option<IpAddr>,
) -> BTreeMap<&'static str, FlagValue> {
    let exit_node = match (p.exit_node_ip, p.exit_node_id.is_empty(), cur_exit_node_ip) {
        (Some(ip), _, _) => ip.to_string(),
        (None, false, Some(ip)) => ip.to_string(),
        _ => String::new(),
    };
    let routes: Vec<String> = routes_without_exit(&p.advertise_routes)
        .iter()
        .map(|r| r.to_string())
        .collect();
    let s = FlagValue::Str;
    let b = FlagValue::Bool;
    BTreeMap::from([
        ("ssh", b(p.run_ssh)),
        ("login-server", s(p.control_url.clone())),
        ("accept-routes", b(p.route_all)),
        ("accept-dns", b(p.corp_dns)),
        ("shields-up", b(p.shields_up)),
        ("exit-node", s(exit_node)),
        (
            "exit-node-allow-lan-access",
            b(p.exit_node_allow_lan_access),
        ),
        ("advertise-tags", s(p.advertise_tags.join(","))),
        ("hostname", s(p.hostname.clone())),
        ("operator", s(p.operator_user.clone())),
        ("advertise-routes", s(routes.join(","))),
        ("advertise-exit-node", b(p.advertises_exit_node())),
        ("advertise-connector", b(p.app_connector.advertise)),
        ("snat-subnet-routes", b(!p.no_snat)),
        // Only an explicit NoStatefulFiltering=true means "off"; unset counts as on.
        (
            "stateful-filtering",
            b(p.no_stateful_filtering != Some(true)),
        ),
        ("netfilter-mode", s(p.netfilter_mode.to_string())),
        ("report-posture", b(p.posture_checking)),
    ])
}

/// Go's `fmtFlagValueArg`.
fn fmt_flag_value_arg(name: &str, v: &FlagValue) -> String {
    match v {
        FlagValue::Bool(true) => format!("--{name}"),
        FlagValue::Bool(false) => format!("--{name}=false"),
        FlagValue::Str(s) if s.is_empty() => format!("--{name}="),
        FlagValue::Str(s) => format!("--{name}={}", shell_quote(s)),
    }
}

/// A word as a POSIX shell reads it back: backslash escapes, or single quotes when it
/// holds whitespace (the style of go-shellquote, which Go's CLI uses here).
pub fn shell_quote(s: &str) -> String {
    const SPECIAL: &str = "\\'\"`${[|&;<>()*?!";
    if s.is_empty() {
        return "''".into();
    }
    if s.contains([' ', '\t', '\n']) {
        return format!("'{}'", s.replace('\'', "'\\''"));
    }
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if SPECIAL.contains(c) || (i == 0 && c == '~') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Everything the up checker needs besides the two prefs.
pub struct UpCheckEnv<'a> {
    pub user: String,
    pub args: &'a UpArgs,
    pub backend_state: String,
    pub cur_exit_node_ip: Option<IpAddr>,
}

/// Go's `checkForAccidentalSettingReverts`: Ok(true) for a bare `tailscale up` on a
/// logged-in node (just bring it up), Ok(false) to go on, Err with the full
/// "requires mentioning all non-default flags" text otherwise.
pub fn check_for_accidental_setting_reverts(
    new: &Prefs,
    cur: &Prefs,
    env: &UpCheckEnv,
) -> Result<bool, String> {
    if cur.control_url.is_empty() {
        // Nothing to protect before the first `up`.
        return Ok(false);
    }
    let logged_in = cur
        .persist
        .as_ref()
        .is_some_and(|p| !p.user_profile.login_name.is_empty());
    if env.args.given.is_empty() && logged_in && env.backend_state != State::NeedsLogin.as_str() {
        return Ok(true);
    }
    let flags_cur = prefs_to_flags(cur, env.cur_exit_node_ip);
    let flags_new = prefs_to_flags(new, env.cur_exit_node_ip);
    let mut missing: Vec<String> = Vec::new();
    for (name, val_cur) in &flags_cur {
        let val_new = &flags_new[name];
        if env.args.flag_given(name) || val_cur == val_new {
            continue;
        }
        if *name == "login-server"
            && is_login_server_synonym(val_cur)
            && is_login_server_synonym(val_new)
        {
            continue;
        }
        // Stateful filtering was briefly on by default (Go issue 12307): not an error.
        if *name == "stateful-filtering"
            && *val_cur == FlagValue::Bool(true)
            && *val_new == FlagValue::Bool(false)
        {
            continue;
        }
        missing.push(fmt_flag_value_arg(name, val_cur));
    }
    if missing.is_empty() {
        return Ok(false);
    }
    missing.sort();
    let explicit = env.args.given.iter().map(|g| {
        if g.is_bool {
            if g.value == "false" {
                format!("--{}=false", g.name)
            } else {
                format!("--{}", g.name)
            }
        } else {
            fmt_flag_value_arg(g.name, &FlagValue::Str(g.value.clone()))
        }
    });
    let mut out = ACCIDENTAL_UP_PREFIX.to_string();
    for a in explicit.chain(missing) {
        out.push(' ');
        out.push_str(&a);
    }
    out.push_str("\n\n");
    Err(out)
}

/// What `up` does next (Go's `updatePrefs`).
#[derive(Debug, PartialEq)]
pub enum UpPlan {
    /// Bare `up` on a logged-in node: set WantRunning and wait.
    SimpleUp,
    /// Running and nothing needs a restart: one PATCH, no waiting.
    JustEdit(Box<MaskedPrefs>),
    /// check-prefs, start, maybe login-interactive, then wait.
    Start,
}

/// Go's `updatePrefs` (+ `applyImplicitPrefs`): decides the plan; may keep the current
/// operator in `new`.
pub fn update_prefs(new: &mut Prefs, cur: &Prefs, env: &UpCheckEnv) -> Result<UpPlan, String> {
    let a = env.args;
    let mut simple_up = false;
    if !a.reset && !a.is_login {
        // The operator set earlier by this same user stays unless --operator is given.
        if new.operator_user.is_empty()
            && cur.operator_user == env.user
            && !a.flag_given("operator")
        {
            new.operator_user = cur.operator_user.clone();
        }
        simple_up = check_for_accidental_setting_reverts(new, cur, env)?;
    }
    let synonym =
        |u: &str| u == "https://login.tailscale.com" || u == "https://controlplane.tailscale.com";
    let control_url_changed = cur.control_url != new.control_url
        && !(synonym(&cur.control_url) && synonym(&new.control_url));
    let running = env.backend_state == State::Running.as_str();
    if control_url_changed && running && !a.force_reauth {
        return Err("can't change --login-server without --force-reauth".into());
    }
    let tags_changed = cur.advertise_tags != new.advertise_tags;
    let just_edit = running
        && !a.is_login
        && !a.force_reauth
        && a.auth_key_or_file.is_empty()
        && !control_url_changed
        && !tags_changed;
    if just_edit {
        let mut mp = MaskedPrefs {
            prefs: new.clone(),
            ..MaskedPrefs::default()
        };
        mp.mask.want_running_set = true;
        if a.reset {
            for f in UP_FLAGS {
                mark_flag(&mut mp, f.name);
            }
        } else {
            for g in &a.given {
                mark_flag(&mut mp, g.name);
            }
        }
        return Ok(UpPlan::JustEdit(Box::new(mp)));
    }
    Ok(if simple_up {
        UpPlan::SimpleUp
    } else {
        UpPlan::Start
    })
}

/// The exit node's IP when the prefs name it by ID (Go's `exitNodeIP`).
fn exit_node_ip(p: &Prefs, st: &Status) -> Option<IpAddr> {
    if p.exit_node_ip.is_some() {
        return p.exit_node_ip;
    }
    if p.exit_node_id.is_empty() {
        return None;
    }
    st.peer
        .values()
        .find(|ps| ps.id == p.exit_node_id)
        .and_then(|ps| ps.tailscale_ips.first().copied())
}

/// `--auth-key` value, reading `file:PATH` as Go does.
fn resolve_auth_key(v: &str) -> Result<String, String> {
    match v.strip_prefix("file:") {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("open {path}: {}", io_error_text(&e))),
        None => Ok(v.to_string()),
    }
}

fn io_error_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Go's `upWorthyWarning`.
fn up_worthy_warning(s: &str) -> bool {
    s.contains(WARN_ACCEPT_ROUTES_OFF)
        || s.contains("Tailscale SSH enabled, but ")
        || s.contains("this node is locked out")
        || s.contains("Tailnet Lock state is only being stored in-memory")
        || s.to_lowercase().contains("update available: ")
}

/// Go's `checkUpWarnings`, after a successful up.
fn check_up_warnings(ctx: &Ctx) {
    let Ok(st) = ctx.client.status_without_peers() else {
        return;
    };
    let warn: Vec<&String> = st.health.iter().filter(|w| up_worthy_warning(w)).collect();
    match warn.as_slice() {
        [] => {}
        [one] => outln(one),
        many => {
            outln("# Health check warnings:");
            for m in many {
                outln(&format!("#     - {m}"));
            }
        }
    }
}

/// Go's `warnOnAdvertiseRoutes`.
fn warn_on_advertise_routes(ctx: &Ctx, p: &Prefs) {
    if p.advertise_routes.is_empty() {
        return;
    }
    match ctx.client.check_ip_forwarding() {
        Ok(Some(w)) => outln(&format!("Warning: {w}")),
        Ok(None) => {}
        Err(e) => outln(&format!("Warning: {e}")),
    }
}

fn refuse_unsupported(given: &[GivenFlag]) -> CmdResult {
    for g in given {
        if let Some(m) = unsupported_flag(g.name, &g.value) {
            return Err(msg(m));
        }
    }
    Ok(())
}

fn run_up(ctx: &Ctx, p: &goflag::Parsed) -> CmdResult {
    let args = UpArgs::from_flags(p, UP_FLAGS, false)?;
    if !p.args.is_empty() {
        return Err(msg(format!(
            "too many non-flag arguments: {}",
            go_quote_list(&p.args)
        )));
    }
    run(ctx, &args)
}

fn run_login(ctx: &Ctx, p: &goflag::Parsed) -> CmdResult {
    let args = UpArgs::from_flags(p, LOGIN_FLAGS, true)?;
    if !p.args.is_empty() {
        return Err(msg(format!(
            "too many non-flag arguments: {}",
            go_quote_list(&p.args)
        )));
    }
    run(ctx, &args)
}

/// `up` and `login`. ringscale keeps one login profile, so `login` re-authenticates the
/// current one with the given settings (where Go first switches to a new, empty
/// profile): no up checker, always an interactive login unless an auth key is given.
fn run(ctx: &Ctx, a: &UpArgs) -> CmdResult {
    refuse_unsupported(&a.given)?;
    let st = ctx.client.status()?;
    let orig_auth_url = st.auth_url.clone();
    let orig_node_key = st
        .self_status
        .as_ref()
        .map(|s| s.public_key)
        .unwrap_or_default();

    let mut warnings = Vec::new();
    let prefs_result = prefs_from_up_args(a, &st, &mut warnings);
    for w in &warnings {
        outln(&format!("Warning: {w}"));
    }
    let mut prefs = prefs_result.map_err(msg)?;
    warn_on_advertise_routes(ctx, &prefs);

    let cur = ctx.client.get_prefs()?;
    if !a.is_login {
        // `up` never renames the profile.
        prefs.profile_name = cur.profile_name.clone();
    }
    let env = UpCheckEnv {
        user: std::env::var("USER").unwrap_or_default(),
        args: a,
        backend_state: st.backend_state.clone(),
        cur_exit_node_ip: exit_node_ip(&cur, &st),
    };
    let plan = update_prefs(&mut prefs, &cur, &env).map_err(msg)?;
    if let UpPlan::JustEdit(mp) = &plan {
        ctx.client.edit_prefs(mp)?;
        check_up_warnings(ctx);
        return Ok(());
    }

    // Watch the bus before starting, or the login URL could be missed.
    let mut watcher = ctx.client.watch_ipn_bus(0)?;
    let auth_key = resolve_auth_key(&a.auth_key_or_file).map_err(msg)?;
    if plan == UpPlan::SimpleUp {
        let mut mp = MaskedPrefs::default();
        mp.prefs.want_running = true;
        mp.mask.want_running_set = true;
        ctx.client.edit_prefs(&mp)?;
    } else {
        ctx.client.check_prefs(&prefs)?;
        ctx.client.start(&Options {
            auth_key: auth_key.clone(),
            update_prefs: Some(prefs.clone()),
            ..Options::default()
        })?;
        if a.force_reauth || a.is_login || !st.have_node_key {
            ctx.client.start_login_interactive()?;
        }
    }

    let deadline = (!a.timeout.is_zero()).then(|| Instant::now() + a.timeout);
    let admin_url = admin_page_url(if plan == UpPlan::SimpleUp {
        &cur
    } else {
        &prefs
    });
    let mut printed = false;
    let mut last_url_printed = String::new();
    let mut running = false;
    // A re-authentication is only done once the node key has changed.
    let mut waiting_for_key_change = a.force_reauth || (a.is_login && auth_key.is_empty());
    let print_approval = |printed: &mut bool, last: &mut String| {
        *printed = true;
        if a.json {
            outln(&up_json_done("NeedsMachineAuth"));
        } else if *last != admin_url {
            last.clone_from(&admin_url);
            eprint!("\nTo approve your machine, visit (as admin):\n\n\t{admin_url}\n\n");
        }
    };
    if plan == UpPlan::SimpleUp && st.backend_state == State::NeedsMachineAuth.as_str() {
        print_approval(&mut printed, &mut last_url_printed);
    }
    loop {
        let n = match watcher.next(deadline) {
            Ok(Some(n)) => n,
            Ok(None) => return Err(msg("tailscaled closed the IPN bus before the node reached the Running state")),
            Err(ClientError::Timeout) => {
                return Err(msg(
                    "timeout waiting for Tailscale service to enter a Running state; check health with \"tailscale status\"",
                ))
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(e) = &n.err_message {
            return Err(msg(format!("backend error: {e}\n")));
        }
        if n.state == Some(State::NeedsMachineAuth) {
            print_approval(&mut printed, &mut last_url_printed);
        }
        if let Some(s) = n.state {
            running = s == State::Running;
        }
        if let Some(node) = &n.self_change {
            if node.key != orig_node_key {
                waiting_for_key_change = false;
            }
        }
        if running && !waiting_for_key_change {
            if a.json {
                outln(&up_json_done("Running"));
            } else if printed {
                eprintln!("Success.");
            }
            break;
        }
        if let Some(url) = &n.browse_to_url {
            let wanted = !url.is_empty()
                && a.auth_key_or_file.is_empty()
                && !(a.force_reauth && *url == orig_auth_url);
            if !wanted || *url == last_url_printed {
                continue;
            }
            printed = true;
            last_url_printed.clone_from(url);
            if a.json {
                let js = serde_json::json!({ "AuthURL": url, "BackendState": st.backend_state });
                outln(&indent_json(&js, b"\t"));
            } else {
                eprint!("\nTo authenticate, visit:\n\n\t{url}\n\n");
            }
        }
    }
    check_up_warnings(ctx);
    Ok(())
}

/// Go's `Prefs.AdminPageURL`.
fn admin_page_url(p: &Prefs) -> String {
    let url = p.control_url_or_default();
    let url = if url == "https://login.tailscale.com" || url == "https://controlplane.tailscale.com"
    {
        "https://login.tailscale.com"
    } else {
        url
    };
    format!("{url}/admin")
}

fn indent_json(v: &serde_json::Value, indent: &[u8]) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(indent);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    let _ = serde::Serialize::serialize(v, &mut ser);
    String::from_utf8(out).unwrap_or_default()
}

fn up_json_done(state: &str) -> String {
    indent_json(&serde_json::json!({ "BackendState": state }), b"  ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringscale_control::prefs::Persist;
    use ringscale_control::tailcfg::UserProfile;

    fn parse_up(argv: &[&str]) -> UpArgs {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let p = super::super::parse_flags(UP_FLAGS, &argv).unwrap();
        UpArgs::from_flags(&p, UP_FLAGS, false).unwrap()
    }

    fn running_status() -> Status {
        Status {
            backend_state: "Running".into(),
            tailscale_ips: vec!["100.64.0.1".parse().unwrap()],
            ..Status::default()
        }
    }

    /// The prefs a node has after `tailscale up <argv>` and a login.
    fn logged_in_prefs(argv: &[&str]) -> Prefs {
        let mut p =
            prefs_from_up_args(&parse_up(argv), &running_status(), &mut Vec::new()).unwrap();
        p.persist = Some(Persist {
            user_profile: UserProfile {
                login_name: "alice@example.com".into(),
                ..UserProfile::default()
            },
            ..Persist::default()
        });
        p
    }

    fn check(cur: &Prefs, argv: &[&str], state: &str) -> Result<UpPlan, String> {
        let args = parse_up(argv);
        let mut new = prefs_from_up_args(&args, &running_status(), &mut Vec::new())?;
        let env = UpCheckEnv {
            user: "root".into(),
            args: &args,
            backend_state: state.into(),
            cur_exit_node_ip: None,
        };
        update_prefs(&mut new, cur, &env)
    }

    #[test]
    fn dropping_an_earlier_setting_is_refused_with_gos_text() {
        let cur = logged_in_prefs(&[
            "--login-server=http://ctl:8080",
            "--advertise-exit-node",
            "--advertise-routes=192.168.1.0/24",
            "--hostname=router",
        ]);
        let err = check(
            &cur,
            &["--login-server=http://ctl:8080", "--accept-routes"],
            "Running",
        )
        .unwrap_err();
        assert_eq!(
            err,
            "Error: changing settings via 'tailscale up' requires mentioning all\n\
             non-default flags. To proceed, either re-run your command with --reset or\n\
             use the command below to explicitly mention the current value of\n\
             all non-default settings:\n\n\
             \ttailscale up --accept-routes --login-server=http://ctl:8080 --advertise-exit-node \
             --advertise-routes=192.168.1.0/24 --hostname=router\n\n"
        );
    }

    #[test]
    fn reset_or_naming_everything_passes() {
        let cur = logged_in_prefs(&[
            "--login-server=http://ctl:8080",
            "--hostname=router",
            "--accept-dns=false",
        ]);
        // --reset: a PATCH of every up flag, unmentioned ones at their defaults.
        match check(
            &cur,
            &["--login-server=http://ctl:8080", "--reset"],
            "Running",
        )
        .unwrap()
        {
            UpPlan::JustEdit(mp) => {
                assert!(mp.mask.hostname_set && mp.mask.corp_dns_set && mp.mask.want_running_set);
                assert!(mp.prefs.hostname.is_empty() && mp.prefs.corp_dns);
            }
            other => panic!("{other:?}"),
        }
        // All non-default settings named again, one changed: a PATCH of only those.
        let plan = check(
            &cur,
            &[
                "--login-server=http://ctl:8080",
                "--hostname=gw",
                "--accept-dns=false",
            ],
            "Running",
        )
        .unwrap();
        match plan {
            UpPlan::JustEdit(mp) => {
                assert!(mp.mask.hostname_set && mp.mask.control_url_set && mp.mask.corp_dns_set);
                assert!(!mp.mask.route_all_set && !mp.mask.advertise_routes_set);
                assert_eq!(mp.prefs.hostname, "gw");
                let body = serde_json::to_value(&mp).unwrap();
                assert_eq!(body["HostnameSet"], true);
                assert_eq!(body["Hostname"], "gw");
                assert!(body.get("RouteAllSet").is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bare_up_just_brings_the_node_up() {
        let cur = logged_in_prefs(&["--login-server=http://ctl:8080", "--hostname=router"]);
        assert_eq!(check(&cur, &[], "Stopped").unwrap(), UpPlan::SimpleUp);
        // Not logged in: the full start sequence (and the checker stays quiet about
        // flags, since none were given and there is nothing to compare yet).
        assert_eq!(
            check(&Prefs::default(), &[], "NeedsLogin").unwrap(),
            UpPlan::Start
        );
    }

    #[test]
    fn auth_key_and_login_server_changes_restart() {
        let cur = logged_in_prefs(&["--login-server=http://ctl:8080"]);
        assert_eq!(
            check(
                &cur,
                &["--login-server=http://ctl:8080", "--auth-key=tskey-1"],
                "Running"
            )
            .unwrap(),
            UpPlan::Start
        );
        assert_eq!(
            check(&cur, &["--login-server=http://other:8080"], "Running").unwrap_err(),
            "can't change --login-server without --force-reauth"
        );
        assert_eq!(
            check(
                &cur,
                &["--login-server=http://other:8080", "--force-reauth"],
                "Running"
            )
            .unwrap(),
            UpPlan::Start
        );
    }

    #[test]
    fn flag_values_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("simple"), "simple");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's x"), "'it'\\''s x'");
        assert_eq!(shell_quote("$x"), "\\$x");
        assert_eq!(
            fmt_flag_value_arg("hostname", &FlagValue::Str(String::new())),
            "--hostname="
        );
        assert_eq!(go_duration_string(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration_string(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration_string(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn prefs_from_flags() {
        let a = parse_up(&[
            "--login-server=http://ctl:8080",
            "--advertise-exit-node",
            "--snat-subnet-routes=false",
            "--netfilter-mode=nodivert",
            "--accept-dns=false",
            "--advertise-tags=router",
        ]);
        let mut w = Vec::new();
        let p = prefs_from_up_args(&a, &running_status(), &mut w).unwrap();
        assert!(p.want_running && p.no_snat && !p.corp_dns && p.advertises_exit_node());
        assert_eq!(p.advertise_tags, vec!["tag:router"]);
        assert_eq!(
            p.netfilter_mode,
            ringscale_control::prefs::NetfilterMode::NoDivert
        );
        assert_eq!(w.len(), 2, "{w:?}");
        let a = parse_up(&["--exit-node-allow-lan-access"]);
        assert_eq!(
            prefs_from_up_args(&a, &running_status(), &mut w).unwrap_err(),
            "--exit-node-allow-lan-access can only be used with --exit-node"
        );
        let a = parse_up(&["--exit-node=100.64.0.1"]);
        assert!(prefs_from_up_args(&a, &running_status(), &mut w)
            .unwrap_err()
            .ends_with("did you mean --advertise-exit-node?"));
        let a = parse_up(&["--netfilter-mode=maybe"]);
        assert_eq!(
            prefs_from_up_args(&a, &running_status(), &mut w).unwrap_err(),
            "invalid value --netfilter-mode=\"maybe\""
        );
    }

    #[test]
    fn auth_key_files() {
        let path = std::env::temp_dir().join(format!("ringscale-authkey-{}", std::process::id()));
        std::fs::write(&path, "tskey-abc\n").unwrap();
        assert_eq!(
            resolve_auth_key(&format!("file:{}", path.display())).unwrap(),
            "tskey-abc"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(resolve_auth_key(&format!("file:{}", path.display()))
            .unwrap_err()
            .ends_with("no such file or directory"));
        assert_eq!(resolve_auth_key("tskey-direct").unwrap(), "tskey-direct");
    }
}
