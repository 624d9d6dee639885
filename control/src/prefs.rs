//! `ipn.Prefs` as Tailscale stores them in the state file and serves them on the
//! LocalAPI, `ipn.MaskedPrefs` (the `PATCH /localapi/v0/prefs` body: every field plus a
//! `<Field>Set` flag), the persisted login (`persist.Persist`, JSON key `"Config"`) and
//! `ipn.LoginProfile` (protocol.md §11, tailscale-surface.md §1.3).
//!
//! JSON names and defaults follow `ipn/prefs.go` and `types/persist/persist.go` of
//! tailscale 1.103, so a state file written by Go tailscaled reads here and vice versa.

use crate::tailcfg::{
    addr_or_empty, is_false, nullable, GoTime, Hostinfo, IpPrefix, NlPrivate, PrivateKey,
    StableNodeId, UserProfile,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// The control server used when `ControlURL` is empty.
pub const DEFAULT_CONTROL_URL: &str = "https://controlplane.tailscale.com";

/// `0.0.0.0/0` and `::/0`: what advertising or using an exit node is about.
pub fn exit_routes() -> [IpPrefix; 2] {
    [
        IpPrefix::host(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            .with_bits(0)
            .expect("0 bits is valid"),
        IpPrefix::host(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
            .with_bits(0)
            .expect("0 bits is valid"),
    ]
}

/// How much of netfilter the daemon manages (`preftype.NetfilterMode`; stored as an int).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetfilterMode {
    /// Remove all of our netfilter state.
    #[default]
    Off,
    /// Manage our chains but don't call them from the main chains.
    NoDivert,
    /// Manage our chains and call them.
    On,
}

impl NetfilterMode {
    pub fn as_int(self) -> i64 {
        match self {
            NetfilterMode::Off => 0,
            NetfilterMode::NoDivert => 1,
            NetfilterMode::On => 2,
        }
    }
}

impl FromStr for NetfilterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(NetfilterMode::Off),
            "nodivert" => Ok(NetfilterMode::NoDivert),
            "on" => Ok(NetfilterMode::On),
            _ => Err(format!("unknown netfilter mode {s:?}")),
        }
    }
}

impl fmt::Display for NetfilterMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetfilterMode::Off => "off",
            NetfilterMode::NoDivert => "nodivert",
            NetfilterMode::On => "on",
        })
    }
}

impl Serialize for NetfilterMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.as_int())
    }
}

impl<'de> Deserialize<'de> for NetfilterMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Option::<i64>::deserialize(d)? {
            None | Some(0) => Ok(NetfilterMode::Off),
            Some(1) => Ok(NetfilterMode::NoDivert),
            Some(2) => Ok(NetfilterMode::On),
            Some(n) => Err(serde::de::Error::custom(format!(
                "unknown NetfilterMode {n}"
            ))),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoUpdatePrefs {
    #[serde(rename = "Check")]
    pub check: bool,
    /// opt.Bool: None = unset.
    #[serde(rename = "Apply")]
    pub apply: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppConnectorPrefs {
    #[serde(rename = "Advertise")]
    pub advertise: bool,
}

/// The persisted login of a profile (`persist.Persist`, under `"Config"` in the prefs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Persist {
    /// The node key (= WireGuard private key); zero before the first registration.
    #[serde(rename = "PrivateNodeKey")]
    pub private_node_key: PrivateKey,
    /// The previous node key, needed to request a rotation.
    #[serde(rename = "OldPrivateNodeKey")]
    pub old_private_node_key: PrivateKey,
    #[serde(rename = "UserProfile")]
    pub user_profile: UserProfile,
    #[serde(rename = "NetworkLockKey")]
    pub network_lock_key: NlPrivate,
    #[serde(rename = "NodeID")]
    pub node_id: StableNodeId,
    /// TPM-backed key; kept opaque.
    #[serde(rename = "AttestationKey", skip_serializing_if = "Option::is_none")]
    pub attestation_key: Option<serde_json::Value>,
    #[serde(
        rename = "DisallowedTKAStateIDs",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub disallowed_tka_state_ids: Vec<String>,
}

/// `ipn.Prefs`. `Prefs::default()` is Go's `NewPrefs()` (CorpDNS on, netfilter on,
/// RouteAll off as on Linux, update checks on); decoding starts from it as Go's
/// `PrefsFromBytes` does, so fields absent from stored JSON keep those defaults.
/// [`Prefs::zero`] is Go's zero value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefs {
    /// Empty = not configured yet ([`Prefs::control_url_or_default`]).
    #[serde(rename = "ControlURL")]
    pub control_url: String,
    /// `--accept-routes`.
    #[serde(rename = "RouteAll")]
    pub route_all: bool,
    /// The selected exit node's StableID.
    #[serde(rename = "ExitNodeID")]
    pub exit_node_id: StableNodeId,
    /// An exit node given by IP, resolved to `exit_node_id` once the netmap has it.
    #[serde(rename = "ExitNodeIP", with = "addr_or_empty")]
    pub exit_node_ip: Option<IpAddr>,
    /// `auto:any` and friends.
    #[serde(rename = "AutoExitNode", skip_serializing_if = "String::is_empty")]
    pub auto_exit_node: String,
    #[serde(rename = "InternalExitNodePrior")]
    pub internal_exit_node_prior: StableNodeId,
    #[serde(rename = "ExitNodeAllowLANAccess")]
    pub exit_node_allow_lan_access: bool,
    /// `--accept-dns`.
    #[serde(rename = "CorpDNS")]
    pub corp_dns: bool,
    #[serde(rename = "RunSSH")]
    pub run_ssh: bool,
    #[serde(rename = "RunWebClient")]
    pub run_web_client: bool,
    #[serde(rename = "WantRunning")]
    pub want_running: bool,
    #[serde(rename = "LoggedOut")]
    pub logged_out: bool,
    #[serde(rename = "ShieldsUp")]
    pub shields_up: bool,
    #[serde(
        rename = "AdvertiseTags",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty"
    )]
    pub advertise_tags: Vec<String>,
    #[serde(rename = "Hostname")]
    pub hostname: String,
    #[serde(rename = "NotepadURLs")]
    pub notepad_urls: bool,
    #[serde(rename = "ForceDaemon", skip_serializing_if = "is_false")]
    pub force_daemon: bool,
    #[serde(rename = "Egg", skip_serializing_if = "is_false")]
    pub egg: bool,
    /// Subnet routes to offer; both exit routes = offer to be an exit node.
    #[serde(
        rename = "AdvertiseRoutes",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty"
    )]
    pub advertise_routes: Vec<IpPrefix>,
    #[serde(
        rename = "AdvertiseServices",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty"
    )]
    pub advertise_services: Vec<String>,
    #[serde(rename = "Sync")]
    pub sync: Option<bool>,
    /// `--snat-subnet-routes=false`.
    #[serde(rename = "NoSNAT")]
    pub no_snat: bool,
    #[serde(
        rename = "NoStatefulFiltering",
        skip_serializing_if = "Option::is_none"
    )]
    pub no_stateful_filtering: Option<bool>,
    #[serde(rename = "NetfilterMode")]
    pub netfilter_mode: NetfilterMode,
    #[serde(rename = "OperatorUser", skip_serializing_if = "String::is_empty")]
    pub operator_user: String,
    #[serde(rename = "ProfileName", skip_serializing_if = "String::is_empty")]
    pub profile_name: String,
    #[serde(rename = "AutoUpdate")]
    pub auto_update: AutoUpdatePrefs,
    #[serde(rename = "AppConnector")]
    pub app_connector: AppConnectorPrefs,
    #[serde(rename = "PostureChecking")]
    pub posture_checking: bool,
    #[serde(rename = "NetfilterKind")]
    pub netfilter_kind: String,
    #[serde(rename = "RemoteConfig")]
    pub remote_config: bool,
    /// Taildrive shares; kept opaque.
    #[serde(rename = "DriveShares")]
    pub drive_shares: Option<Vec<serde_json::Value>>,
    #[serde(rename = "RelayServerPort", skip_serializing_if = "Option::is_none")]
    pub relay_server_port: Option<u16>,
    #[serde(
        rename = "RelayServerStaticEndpoints",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub relay_server_static_endpoints: Vec<SocketAddr>,
    /// The persisted login; None before the first one.
    #[serde(rename = "Config")]
    pub persist: Option<Persist>,
}

impl Default for Prefs {
    /// Go's `ipn.NewPrefs()` on Linux.
    fn default() -> Prefs {
        Prefs {
            corp_dns: true,
            want_running: false,
            netfilter_mode: NetfilterMode::On,
            no_stateful_filtering: Some(true),
            auto_update: AutoUpdatePrefs {
                check: true,
                apply: None,
            },
            route_all: false,
            ..Prefs::zero()
        }
    }
}

impl Prefs {
    /// Go's zero `ipn.Prefs{}` (everything off/empty).
    pub fn zero() -> Prefs {
        Prefs {
            control_url: String::new(),
            route_all: false,
            exit_node_id: String::new(),
            exit_node_ip: None,
            auto_exit_node: String::new(),
            internal_exit_node_prior: String::new(),
            exit_node_allow_lan_access: false,
            corp_dns: false,
            run_ssh: false,
            run_web_client: false,
            want_running: false,
            logged_out: false,
            shields_up: false,
            advertise_tags: Vec::new(),
            hostname: String::new(),
            notepad_urls: false,
            force_daemon: false,
            egg: false,
            advertise_routes: Vec::new(),
            advertise_services: Vec::new(),
            sync: None,
            no_snat: false,
            no_stateful_filtering: None,
            netfilter_mode: NetfilterMode::Off,
            operator_user: String::new(),
            profile_name: String::new(),
            auto_update: AutoUpdatePrefs::default(),
            app_connector: AppConnectorPrefs::default(),
            posture_checking: false,
            netfilter_kind: String::new(),
            remote_config: false,
            drive_shares: None,
            relay_server_port: None,
            relay_server_static_endpoints: Vec::new(),
            persist: None,
        }
    }

    /// Parses the stored form (a `profile-<id>` value). Empty input gives the defaults,
    /// as Go's `PrefsFromBytes` does; fields absent from the JSON keep their defaults.
    pub fn from_json(b: &[u8]) -> Result<Prefs, serde_json::Error> {
        if b.is_empty() {
            return Ok(Prefs::default());
        }
        serde_json::from_slice(b)
    }

    /// The stored form, as Go's `Prefs.ToBytes` writes it (tab-indented). Deterministic,
    /// so the state store can tell "unchanged" by comparing bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        // Prefs hold only strings, numbers and validated values: serializing can't fail.
        if self.serialize(&mut ser).is_err() {
            out.clear();
        }
        out
    }

    pub fn control_url_or_default(&self) -> &str {
        if self.control_url.is_empty() {
            DEFAULT_CONTROL_URL
        } else {
            &self.control_url
        }
    }

    /// Whether both exit routes are advertised.
    pub fn advertises_exit_node(&self) -> bool {
        let [v4, v6] = exit_routes();
        self.advertise_routes.contains(&v4) && self.advertise_routes.contains(&v6)
    }

    /// Adds or removes both exit routes, keeping the subnet routes.
    pub fn set_advertise_exit_node(&mut self, on: bool) {
        let exits = exit_routes();
        self.advertise_routes.retain(|r| !exits.contains(r));
        if on {
            self.advertise_routes.extend(exits);
        }
    }

    /// Whether an exit node is chosen (by ID or by IP).
    pub fn exit_node_selected(&self) -> bool {
        !self.exit_node_id.is_empty() || self.exit_node_ip.is_some()
    }

    /// The node private key, if logged in.
    pub fn node_private_key(&self) -> Option<PrivateKey> {
        self.persist
            .as_ref()
            .map(|p| &p.private_node_key)
            .filter(|k| !k.is_zero())
            .cloned()
    }

    /// Copies what control must learn from the prefs into Hostinfo, as Go's
    /// `applyPrefsToHostinfoLocked` does: hostname override, advertised routes and tags
    /// (sorted, de-duplicated), ShieldsUp and the selected exit node.
    pub fn apply_to_hostinfo(&self, hi: &mut Hostinfo) {
        if !self.hostname.is_empty() {
            hi.hostname = self.hostname.clone();
        }
        let mut routes = self.advertise_routes.clone();
        routes.sort();
        routes.dedup();
        hi.routable_ips = routes;
        let mut tags = self.advertise_tags.clone();
        tags.sort();
        tags.dedup();
        hi.request_tags = tags;
        hi.shields_up = self.shields_up;
        hi.exit_node_id = self.exit_node_id.clone();
        // Neither feature exists here: never claim them.
        hi.remote_config = false;
        hi.allows_update = false;
    }

    /// Applies the fields of `m` whose `<Field>Set` flag is true (Go's `ApplyEdits`).
    pub fn apply_edits(&mut self, m: &MaskedPrefs) {
        let (src, k) = (&m.prefs, &m.mask);
        macro_rules! apply {
            ($($set:ident => $field:ident),* $(,)?) => {
                $(if k.$set { self.$field = src.$field.clone(); })*
            };
        }
        apply!(
            control_url_set => control_url,
            route_all_set => route_all,
            exit_node_id_set => exit_node_id,
            exit_node_ip_set => exit_node_ip,
            auto_exit_node_set => auto_exit_node,
            internal_exit_node_prior_set => internal_exit_node_prior,
            exit_node_allow_lan_access_set => exit_node_allow_lan_access,
            corp_dns_set => corp_dns,
            run_ssh_set => run_ssh,
            run_web_client_set => run_web_client,
            want_running_set => want_running,
            logged_out_set => logged_out,
            shields_up_set => shields_up,
            advertise_tags_set => advertise_tags,
            hostname_set => hostname,
            notepad_urls_set => notepad_urls,
            force_daemon_set => force_daemon,
            egg_set => egg,
            advertise_routes_set => advertise_routes,
            advertise_services_set => advertise_services,
            sync_set => sync,
            no_snat_set => no_snat,
            no_stateful_filtering_set => no_stateful_filtering,
            netfilter_mode_set => netfilter_mode,
            operator_user_set => operator_user,
            profile_name_set => profile_name,
            app_connector_set => app_connector,
            posture_checking_set => posture_checking,
            netfilter_kind_set => netfilter_kind,
            remote_config_set => remote_config,
            drive_shares_set => drive_shares,
            relay_server_port_set => relay_server_port,
            relay_server_static_endpoints_set => relay_server_static_endpoints,
        );
        if k.auto_update_set.check_set {
            self.auto_update.check = src.auto_update.check;
        }
        if k.auto_update_set.apply_set {
            self.auto_update.apply = src.auto_update.apply;
        }
    }
}

/// A nil Go slice without omitempty is written as `null`.
fn null_if_empty<S: Serializer, T: Serialize>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_none()
    } else {
        v.serialize(s)
    }
}

/// Which fields of a [`MaskedPrefs`] are meant (the `<Field>Set` flags).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrefsMask {
    #[serde(rename = "ControlURLSet", skip_serializing_if = "is_false")]
    pub control_url_set: bool,
    #[serde(rename = "RouteAllSet", skip_serializing_if = "is_false")]
    pub route_all_set: bool,
    #[serde(rename = "ExitNodeIDSet", skip_serializing_if = "is_false")]
    pub exit_node_id_set: bool,
    #[serde(rename = "ExitNodeIPSet", skip_serializing_if = "is_false")]
    pub exit_node_ip_set: bool,
    #[serde(rename = "AutoExitNodeSet", skip_serializing_if = "is_false")]
    pub auto_exit_node_set: bool,
    /// Internal; LocalAPI clients may not set it.
    #[serde(rename = "InternalExitNodePriorSet", skip_serializing_if = "is_false")]
    pub internal_exit_node_prior_set: bool,
    #[serde(rename = "ExitNodeAllowLANAccessSet", skip_serializing_if = "is_false")]
    pub exit_node_allow_lan_access_set: bool,
    #[serde(rename = "CorpDNSSet", skip_serializing_if = "is_false")]
    pub corp_dns_set: bool,
    #[serde(rename = "RunSSHSet", skip_serializing_if = "is_false")]
    pub run_ssh_set: bool,
    #[serde(rename = "RunWebClientSet", skip_serializing_if = "is_false")]
    pub run_web_client_set: bool,
    #[serde(rename = "WantRunningSet", skip_serializing_if = "is_false")]
    pub want_running_set: bool,
    #[serde(rename = "LoggedOutSet", skip_serializing_if = "is_false")]
    pub logged_out_set: bool,
    #[serde(rename = "ShieldsUpSet", skip_serializing_if = "is_false")]
    pub shields_up_set: bool,
    #[serde(rename = "AdvertiseTagsSet", skip_serializing_if = "is_false")]
    pub advertise_tags_set: bool,
    #[serde(rename = "HostnameSet", skip_serializing_if = "is_false")]
    pub hostname_set: bool,
    #[serde(rename = "NotepadURLsSet", skip_serializing_if = "is_false")]
    pub notepad_urls_set: bool,
    #[serde(rename = "ForceDaemonSet", skip_serializing_if = "is_false")]
    pub force_daemon_set: bool,
    #[serde(rename = "EggSet", skip_serializing_if = "is_false")]
    pub egg_set: bool,
    #[serde(rename = "AdvertiseRoutesSet", skip_serializing_if = "is_false")]
    pub advertise_routes_set: bool,
    #[serde(rename = "AdvertiseServicesSet", skip_serializing_if = "is_false")]
    pub advertise_services_set: bool,
    #[serde(rename = "SyncSet", skip_serializing_if = "is_false")]
    pub sync_set: bool,
    #[serde(rename = "NoSNATSet", skip_serializing_if = "is_false")]
    pub no_snat_set: bool,
    #[serde(rename = "NoStatefulFilteringSet", skip_serializing_if = "is_false")]
    pub no_stateful_filtering_set: bool,
    #[serde(rename = "NetfilterModeSet", skip_serializing_if = "is_false")]
    pub netfilter_mode_set: bool,
    #[serde(rename = "OperatorUserSet", skip_serializing_if = "is_false")]
    pub operator_user_set: bool,
    #[serde(rename = "ProfileNameSet", skip_serializing_if = "is_false")]
    pub profile_name_set: bool,
    #[serde(
        rename = "AutoUpdateSet",
        skip_serializing_if = "AutoUpdatePrefsMask::is_zero"
    )]
    pub auto_update_set: AutoUpdatePrefsMask,
    #[serde(rename = "AppConnectorSet", skip_serializing_if = "is_false")]
    pub app_connector_set: bool,
    #[serde(rename = "PostureCheckingSet", skip_serializing_if = "is_false")]
    pub posture_checking_set: bool,
    #[serde(rename = "NetfilterKindSet", skip_serializing_if = "is_false")]
    pub netfilter_kind_set: bool,
    #[serde(rename = "RemoteConfigSet", skip_serializing_if = "is_false")]
    pub remote_config_set: bool,
    #[serde(rename = "DriveSharesSet", skip_serializing_if = "is_false")]
    pub drive_shares_set: bool,
    #[serde(rename = "RelayServerPortSet", skip_serializing_if = "is_false")]
    pub relay_server_port_set: bool,
    #[serde(
        rename = "RelayServerStaticEndpointsSet",
        skip_serializing_if = "is_false"
    )]
    pub relay_server_static_endpoints_set: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoUpdatePrefsMask {
    #[serde(rename = "CheckSet", skip_serializing_if = "is_false")]
    pub check_set: bool,
    #[serde(rename = "ApplySet", skip_serializing_if = "is_false")]
    pub apply_set: bool,
}

impl AutoUpdatePrefsMask {
    pub fn is_zero(&self) -> bool {
        !self.check_set && !self.apply_set
    }
}

/// The body of `PATCH /localapi/v0/prefs`: a whole Prefs object with the `<Field>Set`
/// flags beside its fields in one JSON object (Go embeds Prefs in MaskedPrefs). Decoded
/// prefs start from Go's zero value, as Go decodes into a fresh `MaskedPrefs{}`.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskedPrefs {
    pub prefs: Prefs,
    pub mask: PrefsMask,
}

impl Default for MaskedPrefs {
    fn default() -> Self {
        MaskedPrefs {
            prefs: Prefs::zero(),
            mask: PrefsMask::default(),
        }
    }
}

impl Serialize for MaskedPrefs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut obj = match serde_json::to_value(&self.prefs).map_err(S::Error::custom)? {
            serde_json::Value::Object(o) => o,
            _ => return Err(S::Error::custom("prefs did not serialize to an object")),
        };
        if let serde_json::Value::Object(m) =
            serde_json::to_value(&self.mask).map_err(S::Error::custom)?
        {
            obj.extend(m);
        }
        obj.serialize(s)
    }
}

impl<'de> Deserialize<'de> for MaskedPrefs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let given = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let mask: PrefsMask = serde_json::from_value(serde_json::Value::Object(given.clone()))
            .map_err(D::Error::custom)?;
        // Start from the zero value's JSON so fields the body leaves out are zero, not
        // NewPrefs defaults (matters for a `<Field>Set` whose field is absent).
        let mut base = match serde_json::to_value(Prefs::zero()).map_err(D::Error::custom)? {
            serde_json::Value::Object(o) => o,
            _ => return Err(D::Error::custom("prefs did not serialize to an object")),
        };
        // The one omitempty field whose NewPrefs default isn't zero: pin it to zero too.
        base.insert("NoStatefulFiltering".into(), serde_json::Value::Null);
        base.extend(given);
        let prefs: Prefs =
            serde_json::from_value(serde_json::Value::Object(base)).map_err(D::Error::custom)?;
        Ok(MaskedPrefs { prefs, mask })
    }
}

/// `ipn.NetworkProfile`: tailnet naming, back-filled from the netmap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkProfile {
    #[serde(rename = "MagicDNSName")]
    pub magic_dns_name: String,
    #[serde(rename = "DomainName")]
    pub domain_name: String,
    #[serde(rename = "DisplayName")]
    pub display_name: String,
}

/// `ipn.LoginProfile`, one entry of the `_profiles` map.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoginProfile {
    /// 4 lowercase hex digits.
    #[serde(rename = "ID")]
    pub id: String,
    /// Usually the login name.
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "NetworkProfile")]
    pub network_profile: NetworkProfile,
    /// State key holding this profile's prefs: `profile-<id>`.
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "UserProfile")]
    pub user_profile: UserProfile,
    #[serde(rename = "NodeID")]
    pub node_id: StableNodeId,
    /// Windows only.
    #[serde(rename = "LocalUserID")]
    pub local_user_id: String,
    #[serde(rename = "ControlURL")]
    pub control_url: String,
    #[serde(rename = "Created", skip_serializing_if = "GoTime::is_zero")]
    pub created: GoTime,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Stored prefs as Go tailscaled 1.10x writes them (protocol.md §11.1), with a field
    /// this code doesn't know.
    fn go_stored_prefs() -> String {
        format!(
            r#"{{
	"ControlURL": "https://hs.example.com",
	"RouteAll": false,
	"ExitNodeID": "",
	"ExitNodeIP": "",
	"InternalExitNodePrior": "",
	"ExitNodeAllowLANAccess": false,
	"CorpDNS": true,
	"RunSSH": false,
	"RunWebClient": false,
	"WantRunning": true,
	"LoggedOut": false,
	"ShieldsUp": false,
	"AdvertiseTags": null,
	"Hostname": "",
	"NotepadURLs": false,
	"AdvertiseRoutes": ["192.168.1.0/24", "0.0.0.0/0", "::/0"],
	"AdvertiseServices": null,
	"Sync": null,
	"NoSNAT": false,
	"NoStatefulFiltering": true,
	"NetfilterMode": 2,
	"AutoUpdate": {{"Check": true, "Apply": null}},
	"AppConnector": {{"Advertise": false}},
	"PostureChecking": false,
	"NetfilterKind": "",
	"DriveShares": null,
	"SomethingNew": {{"x": 1}},
	"Config": {{
		"PrivateNodeKey": "privkey:{node}",
		"OldPrivateNodeKey": "privkey:{zero}",
		"UserProfile": {{"ID": 123, "LoginName": "alice@example.com", "DisplayName": "Alice"}},
		"NetworkLockKey": "nlpriv:{nl}",
		"NodeID": "nXXXXCNTRL"
	}}
}}"#,
            node = "11".repeat(32),
            zero = "0".repeat(64),
            nl = "ab".repeat(64)
        )
    }

    #[test]
    fn reads_go_stored_prefs() {
        let p = Prefs::from_json(go_stored_prefs().as_bytes()).unwrap();
        assert_eq!(p.control_url, "https://hs.example.com");
        assert!(p.want_running && p.corp_dns && !p.route_all);
        assert_eq!(p.exit_node_ip, None);
        assert_eq!(p.netfilter_mode, NetfilterMode::On);
        assert!(p.advertises_exit_node());
        assert_eq!(p.advertise_routes[0].to_string(), "192.168.1.0/24");
        let persist = p.persist.as_ref().unwrap();
        assert_eq!(
            persist.private_node_key.0.expose_secret_bytes(),
            &[0x11; 32]
        );
        assert!(persist.old_private_node_key.is_zero());
        assert_eq!(persist.user_profile.login_name, "alice@example.com");
        assert_eq!(persist.network_lock_key.expose_secret_bytes(), &[0xab; 64]);
        assert_eq!(persist.node_id, "nXXXXCNTRL");
        assert_eq!(
            p.node_private_key().as_ref(),
            Some(&persist.private_node_key)
        );
        // Written back and read again: the same prefs.
        assert_eq!(Prefs::from_json(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn absent_fields_keep_new_prefs_defaults() {
        let p = Prefs::from_json(br#"{"ControlURL":"http://127.0.0.1:8080"}"#).unwrap();
        assert!(p.corp_dns, "CorpDNS defaults to true");
        assert_eq!(p.netfilter_mode, NetfilterMode::On);
        assert_eq!(p.no_stateful_filtering, Some(true));
        assert!(p.auto_update.check);
        assert!(!p.route_all && !p.want_running);
        assert_eq!(p.persist, None);
        assert_eq!(Prefs::from_json(b"").unwrap(), Prefs::default());
        // Stored values still override the defaults.
        let p = Prefs::from_json(br#"{"CorpDNS":false,"NetfilterMode":0}"#).unwrap();
        assert!(!p.corp_dns);
        assert_eq!(p.netfilter_mode, NetfilterMode::Off);
    }

    #[test]
    fn zero_prefs_are_written_like_go() {
        let v = serde_json::to_value(Prefs::zero()).unwrap();
        assert_eq!(
            v,
            json!({
                "ControlURL": "", "RouteAll": false, "ExitNodeID": "", "ExitNodeIP": "",
                "InternalExitNodePrior": "", "ExitNodeAllowLANAccess": false,
                "CorpDNS": false, "RunSSH": false, "RunWebClient": false, "WantRunning": false,
                "LoggedOut": false, "ShieldsUp": false, "AdvertiseTags": null, "Hostname": "",
                "NotepadURLs": false, "AdvertiseRoutes": null, "AdvertiseServices": null,
                "Sync": null, "NoSNAT": false, "NetfilterMode": 0,
                "AutoUpdate": {"Check": false, "Apply": null},
                "AppConnector": {"Advertise": false}, "PostureChecking": false,
                "NetfilterKind": "", "RemoteConfig": false, "DriveShares": null, "Config": null
            })
        );
        // The stored form is tab-indented like Go's ToBytes, and stable.
        let p = Prefs::default();
        let b = p.to_json();
        assert!(b.starts_with(b"{\n\t\"ControlURL\": \"\",\n\t\"RouteAll\""));
        assert_eq!(b, p.clone().to_json());
    }

    #[test]
    fn exit_node_ip_and_netfilter_mode_forms() {
        let p = Prefs::from_json(br#"{"ExitNodeIP":"100.64.0.3"}"#).unwrap();
        assert_eq!(p.exit_node_ip, Some("100.64.0.3".parse().unwrap()));
        assert!(p.exit_node_selected());
        assert_eq!(
            serde_json::to_value(&p).unwrap()["ExitNodeIP"],
            json!("100.64.0.3")
        );
        assert!(Prefs::from_json(br#"{"ExitNodeIP":"not-an-ip"}"#).is_err());
        assert!(Prefs::from_json(br#"{"NetfilterMode":7}"#).is_err());
        assert!(Prefs::from_json(br#"{"AdvertiseRoutes":["10.0.0.0/33"]}"#).is_err());
        assert!(Prefs::from_json(br#"{"RouteAll":"yes"}"#).is_err());
        assert!(Prefs::from_json(b"{\"RouteAll\":tr").is_err());
        assert_eq!(
            "nodivert".parse::<NetfilterMode>(),
            Ok(NetfilterMode::NoDivert)
        );
        assert!("maybe".parse::<NetfilterMode>().is_err());
        assert_eq!(NetfilterMode::NoDivert.to_string(), "nodivert");
    }

    #[test]
    fn masked_prefs_apply_only_the_set_fields() {
        // What `tailscale set --accept-routes` sends: the whole Prefs plus one flag.
        let mut body = serde_json::to_value(Prefs::default()).unwrap();
        body["RouteAll"] = json!(true);
        body["Hostname"] = json!("ignored-because-not-set");
        body["RouteAllSet"] = json!(true);
        let m: MaskedPrefs = serde_json::from_value(body).unwrap();
        assert!(m.mask.route_all_set && !m.mask.hostname_set);

        let mut p = Prefs::from_json(go_stored_prefs().as_bytes()).unwrap();
        let before = p.clone();
        p.apply_edits(&m);
        assert!(p.route_all);
        assert_eq!(p.hostname, before.hostname);
        assert_eq!(
            p.persist, before.persist,
            "the login is never touched by edits"
        );
        assert_eq!(
            Prefs {
                route_all: false,
                ..p.clone()
            },
            before
        );
    }

    #[test]
    fn masked_prefs_decode_from_zero_values() {
        // A Set flag whose field is absent sets Go's zero value, not the NewPrefs default.
        let m: MaskedPrefs = serde_json::from_str(r#"{"CorpDNSSet":true}"#).unwrap();
        let mut p = Prefs::default();
        assert!(p.corp_dns);
        p.apply_edits(&m);
        assert!(!p.corp_dns);
        // Nested mask for AutoUpdate.
        let m: MaskedPrefs = serde_json::from_str(
            r#"{"AutoUpdate":{"Check":false,"Apply":true},"AutoUpdateSet":{"ApplySet":true}}"#,
        )
        .unwrap();
        let mut p = Prefs::default();
        p.apply_edits(&m);
        assert_eq!(
            p.auto_update,
            AutoUpdatePrefs {
                check: true,
                apply: Some(true)
            }
        );
        // Several fields at once, as `tailscale up --advertise-exit-node --exit-node=…`.
        let m: MaskedPrefs = serde_json::from_str(
            r#"{"AdvertiseRoutes":["0.0.0.0/0","::/0"],"AdvertiseRoutesSet":true,
                "ExitNodeIP":"100.64.0.9","ExitNodeIPSet":true,"WantRunning":true,"WantRunningSet":true,
                "NetfilterMode":1,"NetfilterModeSet":true,"OperatorUser":"bob","OperatorUserSet":true}"#,
        )
        .unwrap();
        let mut p = Prefs::default();
        p.apply_edits(&m);
        assert!(p.advertises_exit_node() && p.want_running);
        assert_eq!(p.exit_node_ip, Some("100.64.0.9".parse().unwrap()));
        assert_eq!(p.netfilter_mode, NetfilterMode::NoDivert);
        assert_eq!(p.operator_user, "bob");
    }

    #[test]
    fn masked_prefs_serialize_flat_and_round_trip() {
        let m = MaskedPrefs {
            prefs: Prefs {
                shields_up: true,
                ..Prefs::zero()
            },
            mask: PrefsMask {
                shields_up_set: true,
                ..PrefsMask::default()
            },
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["ShieldsUp"], json!(true));
        assert_eq!(v["ShieldsUpSet"], json!(true));
        assert!(v.get("RouteAllSet").is_none(), "false flags are omitted");
        assert!(v.get("AutoUpdateSet").is_none());
        assert_eq!(serde_json::from_value::<MaskedPrefs>(v).unwrap(), m);
        assert!(serde_json::from_str::<MaskedPrefs>("[]").is_err());
        assert!(serde_json::from_str::<MaskedPrefs>(r#"{"ShieldsUpSet":"yes"}"#).is_err());
        assert!(serde_json::from_str::<MaskedPrefs>(r#"{"ShieldsUp":1}"#).is_err());
    }

    #[test]
    fn exit_node_advertising_keeps_subnet_routes() {
        let mut p = Prefs {
            advertise_routes: vec!["10.0.0.0/8".parse().unwrap()],
            ..Prefs::default()
        };
        p.set_advertise_exit_node(true);
        assert!(p.advertises_exit_node());
        assert_eq!(p.advertise_routes.len(), 3);
        p.set_advertise_exit_node(false);
        assert!(!p.advertises_exit_node());
        assert_eq!(p.advertise_routes, vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            Prefs::default().control_url_or_default(),
            DEFAULT_CONTROL_URL
        );
    }

    #[test]
    fn prefs_go_into_hostinfo() {
        let p = Prefs {
            hostname: "router".into(),
            advertise_routes: ["::/0", "192.168.1.0/24", "0.0.0.0/0", "192.168.1.0/24"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            advertise_tags: vec!["tag:b".into(), "tag:a".into(), "tag:b".into()],
            shields_up: true,
            exit_node_id: "nEXIT".into(),
            ..Prefs::default()
        };
        let mut hi = Hostinfo {
            hostname: "os-hostname".into(),
            allows_update: true,
            ..Hostinfo::default()
        };
        p.apply_to_hostinfo(&mut hi);
        assert_eq!(hi.hostname, "router");
        let routes: Vec<String> = hi.routable_ips.iter().map(ToString::to_string).collect();
        assert_eq!(routes, ["0.0.0.0/0", "192.168.1.0/24", "::/0"]);
        assert_eq!(hi.request_tags, ["tag:a", "tag:b"]);
        assert!(hi.shields_up && !hi.allows_update);
        assert_eq!(hi.exit_node_id, "nEXIT");
        // No hostname pref: the OS hostname stays.
        let mut hi = Hostinfo {
            hostname: "os-hostname".into(),
            ..Hostinfo::default()
        };
        Prefs::default().apply_to_hostinfo(&mut hi);
        assert_eq!(hi.hostname, "os-hostname");
    }

    #[test]
    fn login_profile_reads_go_form() {
        let m: std::collections::BTreeMap<String, LoginProfile> = serde_json::from_str(
            r#"{"1ab3":{"ID":"1ab3","Name":"alice@example.com",
                "NetworkProfile":{"MagicDNSName":"tail1234.ts.net","DomainName":"example.com","DisplayName":""},
                "Key":"profile-1ab3",
                "UserProfile":{"ID":123,"LoginName":"alice@example.com","DisplayName":"Alice"},
                "NodeID":"nXXXXCNTRL","LocalUserID":"","ControlURL":"https://controlplane.tailscale.com",
                "Created":"2026-08-01T12:00:00Z"}}"#,
        )
        .unwrap();
        let p = &m["1ab3"];
        assert_eq!(p.key, "profile-1ab3");
        assert_eq!(p.network_profile.magic_dns_name, "tail1234.ts.net");
        assert_eq!(p.user_profile.id, 123);
        assert_eq!(p.created.to_rfc3339().unwrap(), "2026-08-01T12:00:00Z");
        let back: LoginProfile = serde_json::from_value(serde_json::to_value(p).unwrap()).unwrap();
        assert_eq!(&back, p);
    }
}
