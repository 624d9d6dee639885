//! What `up`, `login` and `set` share: turning flag values into prefs (Go's
//! `prefsFromUpArgs`, `CalcAdvertiseRoutes`, `SetExitNodeIP`, `netfilterModeFromFlag`),
//! the flag → `<Field>Set` mapping, and the refusal of flags for features ringscale does
//! not have. Plain functions, tested without a daemon.

use super::dns_trim_suffix;
use ringscale_control::ipnstate::Status;
use ringscale_control::prefs::{exit_routes, MaskedPrefs, NetfilterMode};
use ringscale_control::tailcfg::IpPrefix;
use std::net::IpAddr;

/// Go's `netutil.CalcAdvertiseRoutes`: `--advertise-routes` plus `--advertise-exit-node`,
/// validated, de-duplicated, sorted by prefix length then address.
pub fn calc_advertise_routes(routes: &str, exit_node: bool) -> Result<Vec<IpPrefix>, String> {
    let [all4, all6] = exit_routes();
    let mut out: Vec<IpPrefix> = Vec::new();
    if !routes.is_empty() {
        let (mut default4, mut default6) = (false, false);
        for s in routes.split(',') {
            let p: IpPrefix = s
                .parse()
                .map_err(|_| format!("{s:?} is not a valid IP address or CIDR prefix"))?;
            if p != p.masked() {
                return Err(format!(
                    "{p} has non-address bits set; expected {}",
                    p.masked()
                ));
            }
            if is_via_prefix(&p) {
                validate_via_prefix(&p)?;
            }
            default4 |= p == all4;
            default6 |= p == all6;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        if default4 && !default6 {
            return Err(format!(
                "{all4} advertised without its IPv6 counterpart, please also advertise {all6}"
            ));
        }
        if default6 && !default4 {
            return Err(format!(
                "{all6} advertised without its IPv4 counterpart, please also advertise {all4}"
            ));
        }
    }
    if exit_node {
        for r in [all4, all6] {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out.sort_by(|a, b| {
        a.bits()
            .cmp(&b.bits())
            .then_with(|| match (a.addr(), b.addr()) {
                (IpAddr::V4(x), IpAddr::V4(y)) => x.cmp(&y),
                (IpAddr::V6(x), IpAddr::V6(y)) => x.cmp(&y),
                (IpAddr::V4(_), IpAddr::V6(_)) => std::cmp::Ordering::Less,
                (IpAddr::V6(_), IpAddr::V4(_)) => std::cmp::Ordering::Greater,
            })
    });
    Ok(out)
}

/// Inside fd7a:115c:a1e0:b1a::/64, Tailscale's 4via6 range.
fn is_via_prefix(p: &IpPrefix) -> bool {
    match p.addr() {
        IpAddr::V6(a) => a.segments()[..4] == [0xfd7a, 0x115c, 0xa1e0, 0x0b1a],
        IpAddr::V4(_) => false,
    }
}

fn validate_via_prefix(p: &IpPrefix) -> Result<(), String> {
    if p.bits() < 96 {
        return Err(format!("{p} 4-in-6 prefix must be at least a /96"));
    }
    if let IpAddr::V6(a) = p.addr() {
        let site = u32::from_be_bytes(a.octets()[8..12].try_into().unwrap_or_default());
        if site > 0xffff {
            return Err(format!(
                "route {p} contains invalid site ID {site:08x}; must be 0xffff or less"
            ));
        }
    }
    Ok(())
}

/// The routes without the exit routes (what `--advertise-routes` shows for given prefs).
pub fn routes_without_exit(routes: &[IpPrefix]) -> Vec<IpPrefix> {
    let exits = exit_routes();
    routes
        .iter()
        .filter(|r| !exits.contains(r))
        .copied()
        .collect()
}

/// Go's `netfilterModeFromFlag`: the mode and the warning to print, if any.
pub fn netfilter_mode_from_flag(v: &str) -> Result<(NetfilterMode, Option<&'static str>), String> {
    let mode: NetfilterMode = match v {
        "on" | "nodivert" | "off" => v.parse()?,
        _ => return Err(format!("invalid value --netfilter-mode={v:?}")),
    };
    let warning = match mode {
        NetfilterMode::NoDivert => {
            Some("netfilter=nodivert; add iptables calls to ts-* chains manually.")
        }
        NetfilterMode::Off => Some("netfilter=off; configure iptables yourself."),
        NetfilterMode::On => None,
    };
    Ok((mode, warning))
}

/// `tailcfg.CheckTag`.
fn check_tag(tag: &str) -> Result<(), &'static str> {
    let name = tag
        .strip_prefix("tag:")
        .ok_or("tags must start with 'tag:'")?;
    let first = name.bytes().next().ok_or("tag names must not be empty")?;
    if !first.is_ascii_alphabetic() {
        return Err("tag names must start with a letter, after 'tag:'");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("tag names can only contain numbers, letters, or dashes");
    }
    Ok(())
}

/// `--advertise-tags`: comma-separated, `tag:` added when a tag has no colon.
pub fn parse_tags(s: &str) -> Result<Vec<String>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|t| {
            let tag = if t.contains(':') {
                t.to_string()
            } else {
                format!("tag:{t}")
            };
            check_tag(&tag).map_err(|e| format!("tag: {tag:?}: {e}"))?;
            Ok(tag)
        })
        .collect()
}

/// Go's `dnsname.ValidHostname`.
pub fn validate_hostname(h: &str) -> Result<(), String> {
    let h = h.strip_prefix('.').unwrap_or(h);
    let bare = h.strip_suffix('.').unwrap_or(h);
    if bare.len() + 1 > 254 {
        return Err(format!("{bare:?} is too long to be a DNS name"));
    }
    for label in bare.split('.') {
        let b = label.as_bytes();
        if b.is_empty() {
            return Err("empty DNS label".into());
        }
        if b.len() > 63 {
            return Err(format!("{label:?} is too long, max length is 63 bytes"));
        }
        if !b[0].is_ascii_alphanumeric() {
            return Err(format!(
                "{label:?} is not a valid DNS label: must start with a letter or number"
            ));
        }
        if !b[b.len() - 1].is_ascii_alphanumeric() {
            return Err(format!(
                "{label:?} is not a valid DNS label: must end with a letter or number"
            ));
        }
        if b.len() <= 2 {
            continue; // both characters already checked
        }
        if let Some(&c) = b[1..b.len() - 1]
            .iter()
            .find(|c| !c.is_ascii_alphanumeric() && **c != b'-')
        {
            return Err(format!(
                "{label:?} is not a valid DNS label: contains invalid character '{}'",
                c as char
            ));
        }
    }
    Ok(())
}

/// Why an exit node argument was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitNodeError {
    /// The address is one of ours (Go's `ExitNodeLocalIPError`).
    LocalIp(String),
    Other(String),
}

impl std::fmt::Display for ExitNodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitNodeError::LocalIp(s) => write!(
                f,
                "cannot use {s} as an exit node as it is a local IP address to this machine"
            ),
            ExitNodeError::Other(m) => f.write_str(m),
        }
    }
}

impl ExitNodeError {
    /// The text `up` and `set` print, with Go's hint for our own address.
    pub fn for_user(&self) -> String {
        match self {
            ExitNodeError::LocalIp(_) => format!("{self}; did you mean --advertise-exit-node?"),
            ExitNodeError::Other(_) => self.to_string(),
        }
    }
}

/// Go's `exitNodeIPOfArg`: an IP (checked against the netmap when Running) or a peer's
/// name (base name, FQDN, or FQDN without the dot).
pub fn exit_node_ip_of_arg(s: &str, st: &Status) -> Result<IpAddr, ExitNodeError> {
    let is_local = |ip: &IpAddr| st.tailscale_ips.contains(ip);
    if let Ok(ip) = s.parse::<IpAddr>() {
        if is_local(&ip) {
            return Err(ExitNodeError::LocalIp(s.to_string()));
        }
        if st.backend_state == "Running" {
            let Some(ps) = st.peer.values().find(|p| p.tailscale_ips.contains(&ip)) else {
                return Err(ExitNodeError::Other(format!(
                    "no node found in netmap with IP {ip}"
                )));
            };
            if !ps.exit_node_option {
                return Err(ExitNodeError::Other(format!(
                    "node {ip} is not advertising an exit node"
                )));
            }
        }
        return Ok(ip);
    }
    if st.peer.is_empty() {
        return Err(ExitNodeError::Other(
            "cannot resolve exit node by hostname while Tailscale is starting up; please use its Tailscale IP address instead".into(),
        ));
    }
    let mut found = None;
    let mut matches = 0;
    for ps in st.peer.values() {
        let fqdn = ps.dns_name.as_str();
        let base = dns_trim_suffix(fqdn, &st.magic_dns_suffix);
        let sans_dot = fqdn.strip_suffix('.').unwrap_or(fqdn);
        if ![base.as_str(), fqdn, sans_dot]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(s))
        {
            continue;
        }
        matches += 1;
        let Some(ip) = ps.tailscale_ips.first() else {
            return Err(ExitNodeError::Other(format!(
                "node {s:?} has no Tailscale IP?"
            )));
        };
        if !ps.exit_node_option {
            return Err(ExitNodeError::Other(format!(
                "node {s:?} is not advertising an exit node"
            )));
        }
        found = Some(*ip);
    }
    match (matches, found) {
        (1, Some(ip)) if is_local(&ip) => Err(ExitNodeError::LocalIp(s.to_string())),
        (1, Some(ip)) => Ok(ip),
        (0, _) => Err(ExitNodeError::Other(format!(
            "invalid value {s:?} for --exit-node; must be IP or peer hostname"
        ))),
        _ => Err(ExitNodeError::Other(format!(
            "ambiguous exit node name {s:?}"
        ))),
    }
}

/// Refuses `--exit-node=auto:…`: automatic exit-node selection needs the suggestion
/// machinery ringscale does not have.
pub fn refuse_auto_exit_node(v: &str) -> Result<(), String> {
    if v.strip_prefix("auto:").is_some_and(|e| !e.is_empty()) {
        return Err(format!(
            "--exit-node={v}: automatic exit node selection is not supported by ringscale; name an exit node by IP or hostname"
        ));
    }
    Ok(())
}

/// Flags of Tailscale features ringscale does not have: (flag, feature). Giving them a
/// value that would turn the feature on is refused with a plain message; their "off"
/// value is accepted, since that is what ringscale does anyway.
pub const UNSUPPORTED_FLAGS: &[(&str, &str)] = &[
    ("ssh", "Tailscale SSH"),
    ("qr", "QR codes"),
    ("qr-format", "QR codes"),
    ("client-id", "OAuth and workload identity federation"),
    ("client-secret", "OAuth client secrets"),
    ("id-token", "workload identity federation"),
    ("audience", "workload identity federation"),
    ("advertise-connector", "app connectors"),
    ("report-posture", "device posture reporting"),
    ("webclient", "the web client"),
    ("auto-update", "automatic updates"),
    ("remote-config", "remote configuration"),
    ("relay-server-port", "the peer relay server"),
    ("relay-server-static-endpoints", "the peer relay server"),
];

/// The plain refusal for a flag whose feature is missing, if `name=value` asks for it.
pub fn unsupported_flag(name: &str, value: &str) -> Option<String> {
    let (_, feature) = UNSUPPORTED_FLAGS.iter().find(|(n, _)| *n == name)?;
    let off = match name {
        // The QR format is meaningless without --qr; its default is harmless.
        "qr-format" => value == "auto",
        _ => value.is_empty() || value == "false",
    };
    (!off).then(|| format!("--{name} is not supported by ringscale: {feature} is not implemented"))
}

/// Sets the `<Field>Set` flags a command-line flag stands for (Go's
/// `updateMaskedPrefsFromUpOrSetFlag`). Flags that are not prefs set nothing.
pub fn mark_flag(mp: &mut MaskedPrefs, flag: &str) {
    let m = &mut mp.mask;
    match flag {
        "advertise-exit-node" | "advertise-routes" => m.advertise_routes_set = true,
        "exit-node" => {
            m.exit_node_ip_set = true;
            m.exit_node_id_set = true;
        }
        "accept-dns" => m.corp_dns_set = true,
        "accept-routes" => m.route_all_set = true,
        "advertise-tags" => m.advertise_tags_set = true,
        "hostname" => m.hostname_set = true,
        "login-server" => m.control_url_set = true,
        "netfilter-mode" => m.netfilter_mode_set = true,
        "shields-up" => m.shields_up_set = true,
        "snat-subnet-routes" => m.no_snat_set = true,
        "stateful-filtering" => m.no_stateful_filtering_set = true,
        "exit-node-allow-lan-access" => m.exit_node_allow_lan_access_set = true,
        "operator" => m.operator_user_set = true,
        "ssh" => m.run_ssh_set = true,
        "webclient" => m.run_web_client_set = true,
        "nickname" => m.profile_name_set = true,
        "update-check" => m.auto_update_set.check_set = true,
        "auto-update" => m.auto_update_set.apply_set = true,
        "advertise-connector" => m.app_connector_set = true,
        "report-posture" => m.posture_checking_set = true,
        "remote-config" => m.remote_config_set = true,
        "relay-server-port" => m.relay_server_port_set = true,
        "relay-server-static-endpoints" => m.relay_server_static_endpoints_set = true,
        "sync" => m.sync_set = true,
        _ => {}
    }
}

/// Whether any `<Field>Set` flag is on (Go's `MaskedPrefs.IsEmpty`, inverted).
pub fn mask_is_empty(mp: &MaskedPrefs) -> bool {
    mp.mask == Default::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringscale_control::ipnstate::PeerStatus;
    use ringscale_control::tailcfg::NodePublic;

    fn pfx(v: &[&str]) -> Vec<IpPrefix> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn advertise_routes_like_go() {
        assert_eq!(
            calc_advertise_routes("192.168.1.0/24,10.0.0.0/8,192.168.1.0/24", true).unwrap(),
            pfx(&["0.0.0.0/0", "::/0", "10.0.0.0/8", "192.168.1.0/24"])
        );
        assert_eq!(
            calc_advertise_routes("", false).unwrap(),
            Vec::<IpPrefix>::new()
        );
        assert_eq!(
            calc_advertise_routes("192.168.1.1/24", false).unwrap_err(),
            "192.168.1.1/24 has non-address bits set; expected 192.168.1.0/24"
        );
        assert_eq!(
            calc_advertise_routes("10.0.0.1", false).unwrap_err(),
            "\"10.0.0.1\" is not a valid IP address or CIDR prefix"
        );
        assert_eq!(
            calc_advertise_routes("0.0.0.0/0", false).unwrap_err(),
            "0.0.0.0/0 advertised without its IPv6 counterpart, please also advertise ::/0"
        );
        assert!(calc_advertise_routes("fd7a:115c:a1e0:b1a::/64", false)
            .unwrap_err()
            .contains("at least a /96"));
        assert!(calc_advertise_routes("fd7a:115c:a1e0:b1a:0:1:a00:0/120", false).is_ok());
    }

    #[test]
    fn netfilter_modes() {
        assert_eq!(
            netfilter_mode_from_flag("on").unwrap(),
            (NetfilterMode::On, None)
        );
        assert_eq!(
            netfilter_mode_from_flag("off").unwrap().1,
            Some("netfilter=off; configure iptables yourself.")
        );
        assert_eq!(
            netfilter_mode_from_flag("ON").unwrap_err(),
            "invalid value --netfilter-mode=\"ON\""
        );
    }

    #[test]
    fn tags_and_hostnames() {
        assert_eq!(
            parse_tags("eng,tag:ops").unwrap(),
            vec!["tag:eng", "tag:ops"]
        );
        assert_eq!(
            parse_tags("1x").unwrap_err(),
            "tag: \"tag:1x\": tag names must start with a letter, after 'tag:'"
        );
        assert_eq!(
            parse_tags("a:b").unwrap_err(),
            "tag: \"a:b\": tags must start with 'tag:'"
        );
        assert!(validate_hostname("router-1").is_ok());
        assert!(validate_hostname("x").is_ok() && validate_hostname("x1").is_ok());
        assert!(validate_hostname("router.lan.").is_ok());
        assert_eq!(
            validate_hostname("bad_name").unwrap_err(),
            "\"bad_name\" is not a valid DNS label: contains invalid character '_'"
        );
        assert_eq!(
            validate_hostname("-x").unwrap_err(),
            "\"-x\" is not a valid DNS label: must start with a letter or number"
        );
    }

    fn status_with_peers() -> Status {
        let mut st = Status {
            backend_state: "Running".into(),
            tailscale_ips: vec!["100.64.0.1".parse().unwrap()],
            magic_dns_suffix: "tail1.ts.net".into(),
            ..Status::default()
        };
        for (b, name, ip, exit) in [
            (2u8, "exit", "100.64.0.2", true),
            (3, "lan", "100.64.0.3", false),
        ] {
            let key = NodePublic(ringscale_dataplane::Key([b; 32]));
            st.peer.insert(
                key,
                PeerStatus {
                    public_key: key,
                    dns_name: format!("{name}.tail1.ts.net."),
                    tailscale_ips: vec![ip.parse().unwrap()],
                    exit_node_option: exit,
                    ..PeerStatus::default()
                },
            );
        }
        st
    }

    #[test]
    fn exit_node_arguments() {
        let st = status_with_peers();
        let ip: IpAddr = "100.64.0.2".parse().unwrap();
        assert_eq!(exit_node_ip_of_arg("100.64.0.2", &st), Ok(ip));
        assert_eq!(exit_node_ip_of_arg("EXIT", &st), Ok(ip));
        assert_eq!(exit_node_ip_of_arg("exit.tail1.ts.net", &st), Ok(ip));
        assert_eq!(exit_node_ip_of_arg("exit.tail1.ts.net.", &st), Ok(ip));
        assert_eq!(
            exit_node_ip_of_arg("100.64.0.1", &st).unwrap_err().for_user(),
            "cannot use 100.64.0.1 as an exit node as it is a local IP address to this machine; did you mean --advertise-exit-node?"
        );
        assert_eq!(
            exit_node_ip_of_arg("lan", &st).unwrap_err().to_string(),
            "node \"lan\" is not advertising an exit node"
        );
        assert_eq!(
            exit_node_ip_of_arg("100.64.0.9", &st)
                .unwrap_err()
                .to_string(),
            "no node found in netmap with IP 100.64.0.9"
        );
        assert_eq!(
            exit_node_ip_of_arg("nope", &st).unwrap_err().to_string(),
            "invalid value \"nope\" for --exit-node; must be IP or peer hostname"
        );
        assert!(refuse_auto_exit_node("auto:any").is_err());
        assert!(refuse_auto_exit_node("100.64.0.2").is_ok());
    }

    #[test]
    fn flags_map_to_masks() {
        let mut mp = MaskedPrefs::default();
        for f in [
            "exit-node",
            "snat-subnet-routes",
            "advertise-exit-node",
            "auth-key",
            "timeout",
        ] {
            mark_flag(&mut mp, f);
        }
        assert!(mp.mask.exit_node_ip_set && mp.mask.exit_node_id_set);
        assert!(mp.mask.no_snat_set && mp.mask.advertise_routes_set);
        assert!(!mp.mask.control_url_set);
        // The PATCH body carries exactly these flags.
        let v = serde_json::to_value(&mp).unwrap();
        for k in [
            "ExitNodeIPSet",
            "ExitNodeIDSet",
            "NoSNATSet",
            "AdvertiseRoutesSet",
        ] {
            assert_eq!(v[k], true, "{k}");
        }
        assert!(v.get("WantRunningSet").is_none() && v.get("ControlURLSet").is_none());
        assert!(!mask_is_empty(&mp));
        assert!(mask_is_empty(&MaskedPrefs::default()));
    }

    #[test]
    fn unsupported_features_are_named() {
        assert_eq!(
            unsupported_flag("ssh", "true").unwrap(),
            "--ssh is not supported by ringscale: Tailscale SSH is not implemented"
        );
        assert_eq!(unsupported_flag("ssh", "false"), None);
        assert_eq!(unsupported_flag("qr-format", "auto"), None);
        assert!(unsupported_flag("relay-server-port", "40000").is_some());
        assert_eq!(unsupported_flag("hostname", "x"), None);
    }
}
