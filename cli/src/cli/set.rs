//! `tailscale set`: change only the settings named on the command line (one PATCH of
//! `MaskedPrefs`), after the daemon has checked the result (Go's `cli/set.go`).

use super::prefsflags::{
    calc_advertise_routes, exit_node_ip_of_arg, mark_flag, mask_is_empty, netfilter_mode_from_flag,
    refuse_auto_exit_node, unsupported_flag, validate_hostname,
};
use super::{go_quote_list, msg, outln, CmdError, CmdResult, Command, Ctx};
use crate::goflag::{self, Flag};
use ringscale_control::prefs::{exit_routes, MaskedPrefs, Prefs};
use ringscale_control::tailcfg::IpPrefix;

pub const SET: Command = Command {
    name: "set",
    short_usage: "tailscale set [flags]",
    short_help: "Change specified preferences",
    flags: SET_FLAGS,
    run: run_set,
};

const SET_FLAGS: &[Flag] = &[
    Flag::bool_on("accept-dns", "accept DNS configuration from the admin panel"),
    Flag::value("accept-risk", "", "accept risk and skip confirmation for risk types: lose-ssh,mac-app-connector,all"),
    Flag::bool("accept-routes", "accept routes advertised by other Tailscale nodes"),
    Flag::bool("advertise-connector", "offer to be an app connector for domain specific internet traffic for the tailnet"),
    Flag::bool("advertise-exit-node", "offer to be an exit node for internet traffic for the tailnet"),
    Flag::value("advertise-routes", "", "routes to advertise to other nodes (comma-separated, e.g. \"10.0.0.0/8,192.168.0.0/24\") or empty string to not advertise routes"),
    Flag::bool("auto-update", "automatically update to the latest available version"),
    Flag::value("exit-node", "", "Tailscale exit node (IP or base name) for internet traffic, or empty string to not use an exit node"),
    Flag::bool("exit-node-allow-lan-access", "allow direct access to the local network when routing traffic via an exit node"),
    Flag::value("hostname", "", "hostname to use instead of the one provided by the OS"),
    Flag::value("netfilter-mode", "on", "netfilter mode (one of on, nodivert, off)"),
    Flag::value("nickname", "", "nickname for the current account"),
    Flag::value("operator", "", "Unix username to allow to operate on tailscaled without sudo"),
    Flag::value("relay-server-port", "", "UDP port number for the relay server to bind to, or empty string to disable relay server functionality"),
    Flag::value("relay-server-static-endpoints", "", "static IP:port endpoints to advertise as candidates for relay connections"),
    Flag::bool("remote-config", "delegate remote control of this node's prefs to the tailnet admin"),
    Flag::bool("report-posture", "allow management plane to gather device posture information"),
    Flag::bool("shields-up", "don't allow incoming connections"),
    Flag::bool_on("snat-subnet-routes", "source NAT traffic to local routes advertised with --advertise-routes"),
    Flag::bool("ssh", "run an SSH server, permitting access per tailnet admin's declared policy"),
    Flag::bool("stateful-filtering", "apply stateful filtering to forwarded packets (subnet routers, exit nodes, and so on)"),
    Flag::bool("sync", "actively sync configuration from the control plane (set to false only for network failure testing)"),
    Flag::bool_on("update-check", "notify about available Tailscale updates"),
    Flag::bool("webclient", "expose the web interface for managing this node over Tailscale at port 5252"),
];

/// Go's `calcAdvertiseRoutesForSet`: changing one of `--advertise-routes` and
/// `--advertise-exit-node` keeps what the other one had set.
pub fn advertise_routes_for_set(
    exit_flag_given: bool,
    routes_flag_given: bool,
    routes: &str,
    exit_node: bool,
    cur: &Prefs,
) -> Result<Vec<IpPrefix>, String> {
    if exit_flag_given && routes_flag_given {
        return calc_advertise_routes(routes, exit_node);
    }
    if routes_flag_given {
        return calc_advertise_routes(routes, cur.advertises_exit_node());
    }
    if exit_flag_given {
        if cur.advertises_exit_node() == exit_node {
            return Ok(cur.advertise_routes.clone());
        }
        let mut out: Vec<IpPrefix> = cur
            .advertise_routes
            .iter()
            .filter(|r| r.bits() != 0)
            .copied()
            .collect();
        if exit_node {
            out.extend(exit_routes());
        }
        return Ok(out);
    }
    Ok(Vec::new())
}

/// The PATCH body for a `set` command line (without the routes, which need the current
/// prefs). Err for bad values.
pub fn masked_prefs_from_set_flags(
    p: &goflag::Parsed,
    st: &ringscale_control::ipnstate::Status,
) -> Result<(MaskedPrefs, Vec<String>), String> {
    let mut warnings = Vec::new();
    let mut mp = MaskedPrefs::default();
    {
        let q = &mut mp.prefs;
        q.profile_name = p.str("nickname").to_string();
        q.route_all = p.bool("accept-routes");
        q.corp_dns = p.bool("accept-dns");
        q.exit_node_allow_lan_access = p.bool("exit-node-allow-lan-access");
        q.shields_up = p.bool("shields-up");
        q.run_ssh = p.bool("ssh");
        q.run_web_client = p.bool("webclient");
        q.hostname = p.str("hostname").to_string();
        q.operator_user = p.str("operator").to_string();
        q.no_snat = !p.bool("snat-subnet-routes");
        q.sync = Some(p.bool("sync"));
        q.auto_update.check = p.bool("update-check");
        q.auto_update.apply = Some(p.bool("auto-update"));
        q.app_connector.advertise = p.bool("advertise-connector");
        q.posture_checking = p.bool("report-posture");
        q.remote_config = p.bool("remote-config");
        q.no_stateful_filtering = Some(!p.bool("stateful-filtering"));
        let (mode, warning) = netfilter_mode_from_flag(p.str("netfilter-mode"))?;
        q.netfilter_mode = mode;
        warnings.extend(warning.map(str::to_string));
    }
    if p.is_set("hostname") && !mp.prefs.hostname.is_empty() {
        validate_hostname(&mp.prefs.hostname)?;
    }
    let exit = p.str("exit-node");
    if !exit.is_empty() {
        refuse_auto_exit_node(exit)?;
        mp.prefs.exit_node_ip = Some(exit_node_ip_of_arg(exit, st).map_err(|e| e.for_user())?);
    }
    for f in SET_FLAGS.iter().filter(|f| p.is_set(f.name)) {
        mark_flag(&mut mp, f.name);
    }
    Ok((mp, warnings))
}

fn run_set(ctx: &Ctx, p: &goflag::Parsed) -> CmdResult {
    if !p.args.is_empty() {
        return Err(msg(format!(
            "too many non-flag arguments: {}",
            go_quote_list(&p.args)
        )));
    }
    for f in SET_FLAGS.iter().filter(|f| p.is_set(f.name)) {
        if let Some(m) = unsupported_flag(f.name, p.str(f.name)) {
            return Err(msg(m));
        }
    }
    let st = ctx.client.status()?;
    let (mut mp, warnings) = masked_prefs_from_set_flags(p, &st).map_err(msg)?;
    for w in &warnings {
        outln(&format!("Warning: {w}"));
    }
    if mask_is_empty(&mp) {
        return Err(CmdError::Help);
    }
    let cur = ctx.client.get_prefs()?;
    if mp.mask.advertise_routes_set {
        mp.prefs.advertise_routes = advertise_routes_for_set(
            p.is_set("advertise-exit-node"),
            p.is_set("advertise-routes"),
            p.str("advertise-routes"),
            p.bool("advertise-exit-node"),
            &cur,
        )
        .map_err(msg)?;
        if !mp.prefs.advertise_routes.is_empty() {
            if let Ok(Some(w)) = ctx.client.check_ip_forwarding() {
                outln(&format!("Warning: {w}"));
            }
        }
    }
    let mut check = cur.clone();
    check.apply_edits(&mp);
    if check.no_snat && check.advertises_exit_node() {
        outln("Warning: --snat-subnet-routes=false is set with --advertise-exit-node; internet traffic through this exit node may not work as expected");
    }
    ctx.client.check_prefs(&check)?;
    ctx.client.edit_prefs(&mp)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringscale_control::ipnstate::Status;

    fn pfx(v: &[&str]) -> Vec<IpPrefix> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn routes_and_exit_flag_keep_each_other() {
        let cur = Prefs {
            advertise_routes: pfx(&["0.0.0.0/0", "::/0", "10.0.0.0/8"]),
            ..Prefs::default()
        };
        // Only --advertise-routes: the exit routes stay.
        assert_eq!(
            advertise_routes_for_set(false, true, "192.168.0.0/24", false, &cur).unwrap(),
            pfx(&["0.0.0.0/0", "::/0", "192.168.0.0/24"])
        );
        // Only --advertise-exit-node=false: the subnet routes stay.
        assert_eq!(
            advertise_routes_for_set(true, false, "", false, &cur).unwrap(),
            pfx(&["10.0.0.0/8"])
        );
        // Both: exactly what was given.
        assert_eq!(
            advertise_routes_for_set(true, true, "", false, &cur).unwrap(),
            pfx(&[])
        );
    }

    #[test]
    fn only_given_flags_are_in_the_patch() {
        let argv: Vec<String> = ["--hostname=gw", "--accept-routes"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = super::super::parse_flags(SET_FLAGS, &argv).unwrap();
        let (mp, w) = masked_prefs_from_set_flags(&p, &Status::default()).unwrap();
        assert!(w.is_empty());
        let v = serde_json::to_value(&mp).unwrap();
        let mut sets: Vec<&String> = v
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.ends_with("Set"))
            .collect();
        sets.sort();
        assert_eq!(sets, vec!["HostnameSet", "RouteAllSet"]);
        assert_eq!(v["Hostname"], "gw");
        assert_eq!(v["RouteAll"], true);
        let p = super::super::parse_flags(SET_FLAGS, &[]).unwrap();
        assert!(mask_is_empty(
            &masked_prefs_from_set_flags(&p, &Status::default())
                .unwrap()
                .0
        ));
        let argv = vec!["--hostname=bad_name".to_string()];
        let p = super::super::parse_flags(SET_FLAGS, &argv).unwrap();
        assert!(masked_prefs_from_set_flags(&p, &Status::default()).is_err());
    }
}
