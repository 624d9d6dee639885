//! `tailscaled --config FILE`: Tailscale's declarative config file (ipn.ConfigVAlpha,
//! `"Version": "alpha0"`), the way a router is set up without running `tailscale up`.
//! The fields a router uses are honoured; any other known field is refused by name so
//! nobody believes it applied; unknown fields are an error, as a typo should be.

use ringscale_control::prefs::{MaskedPrefs, NetfilterMode};
use ringscale_control::tailcfg::IpPrefix;
use serde::Deserialize;

/// Go's opt.Bool: JSON true/false or the strings "true"/"false"/"".
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct OptBool(Option<bool>);

impl<'de> Deserialize<'de> for OptBool {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            B(bool),
            S(String),
        }
        match Option::<Raw>::deserialize(d)? {
            None => Ok(OptBool(None)),
            Some(Raw::B(b)) => Ok(OptBool(Some(b))),
            Some(Raw::S(s)) if s.is_empty() => Ok(OptBool(None)),
            Some(Raw::S(s)) => match s.as_str() {
                "true" => Ok(OptBool(Some(true))),
                "false" => Ok(OptBool(Some(false))),
                _ => Err(serde::de::Error::custom(format!("invalid boolean {s:?}"))),
            },
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigVAlpha {
    #[serde(rename = "Version")]
    version: String,
    #[serde(rename = "Locked", default)]
    _locked: OptBool,
    #[serde(rename = "ServerURL")]
    server_url: Option<String>,
    #[serde(rename = "AuthKey")]
    auth_key: Option<String>,
    #[serde(rename = "Enabled", default)]
    enabled: OptBool,
    #[serde(rename = "OperatorUser")]
    operator_user: Option<String>,
    #[serde(rename = "Hostname")]
    hostname: Option<String>,
    #[serde(rename = "acceptDNS", default)]
    accept_dns: OptBool,
    #[serde(rename = "acceptRoutes", default)]
    accept_routes: OptBool,
    #[serde(rename = "exitNode")]
    exit_node: Option<String>,
    #[serde(rename = "allowLANWhileUsingExitNode", default)]
    allow_lan: OptBool,
    #[serde(rename = "AdvertiseRoutes")]
    advertise_routes: Option<Vec<IpPrefix>>,
    #[serde(rename = "DisableSNAT", default)]
    disable_snat: OptBool,
    #[serde(rename = "NetfilterMode")]
    netfilter_mode: Option<String>,
    #[serde(rename = "RunSSHServer", default)]
    run_ssh: OptBool,
}

/// What a config file asks for: prefs edits, and an auth key for the login.
#[derive(Debug)]
pub struct ConfFile {
    pub prefs: MaskedPrefs,
    pub auth_key: Option<String>,
}

pub fn load(path: &str) -> Result<ConfFile, String> {
    let text = std::fs::read(path).map_err(|e| format!("--config {path}: {e}"))?;
    parse(&text).map_err(|e| format!("--config {path}: {e}"))
}

pub fn parse(text: &[u8]) -> Result<ConfFile, String> {
    let c: ConfigVAlpha = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    if c.version != "alpha0" {
        return Err(format!(
            "unsupported config Version {:?} (want \"alpha0\")",
            c.version
        ));
    }
    if c.run_ssh.0 == Some(true) {
        return Err("RunSSHServer: Tailscale SSH is not supported by ringscale".into());
    }
    let mut mp = MaskedPrefs::default();
    let (p, m) = (&mut mp.prefs, &mut mp.mask);
    if let Some(u) = c.server_url {
        p.control_url = u;
        m.control_url_set = true;
    }
    // Enabled defaults to true: a config file describes a node that runs.
    p.want_running = c.enabled.0.unwrap_or(true);
    m.want_running_set = true;
    if let Some(u) = c.operator_user {
        p.operator_user = u;
        m.operator_user_set = true;
    }
    if let Some(h) = c.hostname {
        p.hostname = h;
        m.hostname_set = true;
    }
    if let Some(v) = c.accept_dns.0 {
        p.corp_dns = v;
        m.corp_dns_set = true;
    }
    if let Some(v) = c.accept_routes.0 {
        p.route_all = v;
        m.route_all_set = true;
    }
    if let Some(e) = c.exit_node {
        match e.parse() {
            Ok(ip) => {
                p.exit_node_ip = Some(ip);
                m.exit_node_ip_set = true;
            }
            Err(_) => {
                p.exit_node_id = e;
                m.exit_node_id_set = true;
            }
        }
    }
    if let Some(v) = c.allow_lan.0 {
        p.exit_node_allow_lan_access = v;
        m.exit_node_allow_lan_access_set = true;
    }
    if let Some(r) = c.advertise_routes {
        p.advertise_routes = r;
        m.advertise_routes_set = true;
    }
    if let Some(v) = c.disable_snat.0 {
        p.no_snat = v;
        m.no_snat_set = true;
    }
    if let Some(mode) = c.netfilter_mode {
        p.netfilter_mode = match mode.as_str() {
            "on" => NetfilterMode::On,
            "off" => NetfilterMode::Off,
            "nodivert" => NetfilterMode::NoDivert,
            other => return Err(format!("NetfilterMode {other:?}: want on, off or nodivert")),
        };
        m.netfilter_mode_set = true;
    }
    let auth_key = match c.auth_key {
        Some(k) => match k.strip_prefix("file:") {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("AuthKey file {path}: {e}"))?
                    .trim()
                    .to_string(),
            ),
            None => Some(k),
        },
        None => None,
    };
    Ok(ConfFile {
        prefs: mp,
        auth_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_config_parses() {
        let c = parse(
            br#"{"Version":"alpha0","ServerURL":"http://10.0.0.1:8080","AuthKey":"k1",
                 "Hostname":"gw","AdvertiseRoutes":["192.168.1.0/24","0.0.0.0/0","::/0"],
                 "acceptRoutes":"true","Enabled":true}"#,
        )
        .unwrap();
        assert_eq!(c.auth_key.as_deref(), Some("k1"));
        assert_eq!(c.prefs.prefs.control_url, "http://10.0.0.1:8080");
        assert!(c.prefs.mask.control_url_set && c.prefs.prefs.want_running);
        assert!(c.prefs.prefs.route_all);
        assert!(c.prefs.prefs.advertises_exit_node());
    }

    #[test]
    fn bad_files_are_refused_by_name() {
        let e = parse(br#"{"Version":"alpha0","Hostnmae":"x"}"#).unwrap_err();
        assert!(e.contains("Hostnmae"), "{e}");
        assert!(parse(br#"{"Version":"beta"}"#)
            .unwrap_err()
            .contains("Version"));
        assert!(parse(br#"{"Version":"alpha0","RunSSHServer":true}"#)
            .unwrap_err()
            .contains("SSH"));
        assert!(parse(br#"{"Version":"alpha0","NetfilterMode":"maybe"}"#).is_err());
        assert!(parse(b"{").is_err());
    }
}
