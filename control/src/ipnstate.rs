//! `ipnstate.Status` — what `GET /localapi/v0/status` returns and `tailscale status
//! --json` prints — with its `PeerStatus`, plus `PingResult` (tailscale-surface.md §1.4).
//!
//! JSON names, field order, and null-versus-omitted follow `ipn/ipnstate/ipnstate.go` of
//! tailscale 1.103: scripts parse this output, so a nil Go slice is `null` here too and
//! zero times are `"0001-01-01T00:00:00Z"`.
//!
//! [`build_status`] assembles a Status from the netmap and prefs the way Go's
//! `LocalBackend.UpdateStatus` does; the data-plane numbers come from the caller.

use crate::ipn::State;
use crate::netmap::NetMap;
use crate::prefs::Prefs;
use crate::tailcfg::{
    is_false, is_tailscale_ip, is_zero_i64, nullable, CapMap, ClientVersion, DnsRecord, GoTime,
    IpPrefix, Location, Node, NodeId, NodePublic, StableNodeId, UserId, UserProfile,
};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The health message Go adds when peers offer routes we do not accept
/// (`healthmsg.WarnAcceptRoutesOff`); `tailscale up` prints it.
pub const WARN_ACCEPT_ROUTES_OFF: &str =
    "Some peers are advertising routes but --accept-routes is false";

/// `ipnstate.Status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// The daemon's long version.
    #[serde(rename = "Version")]
    pub version: String,
    /// Whether a kernel TUN is in use (false in userspace-networking mode).
    #[serde(rename = "TUN")]
    pub tun: bool,
    /// [`State::as_str`]: "NoState", "NeedsLogin", "NeedsMachineAuth", "Stopped",
    /// "Starting", "Running".
    #[serde(rename = "BackendState")]
    pub backend_state: String,
    #[serde(rename = "HaveNodeKey", skip_serializing_if = "is_false")]
    pub have_node_key: bool,
    /// The pending interactive-login URL, if any.
    #[serde(rename = "AuthURL")]
    pub auth_url: String,
    #[serde(
        rename = "TailscaleIPs",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty"
    )]
    pub tailscale_ips: Vec<IpAddr>,
    #[serde(rename = "Self")]
    pub self_status: Option<PeerStatus>,
    #[serde(rename = "ExitNodeStatus", skip_serializing_if = "Option::is_none")]
    pub exit_node_status: Option<ExitNodeStatus>,
    #[serde(
        rename = "Health",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty"
    )]
    pub health: Vec<String>,
    /// Legacy copy of `CurrentTailnet.MagicDNSSuffix`.
    #[serde(rename = "MagicDNSSuffix")]
    pub magic_dns_suffix: String,
    /// None when not connected.
    #[serde(rename = "CurrentTailnet")]
    pub current_tailnet: Option<TailnetStatus>,
    #[serde(
        rename = "CertDomains",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty"
    )]
    pub cert_domains: Vec<String>,
    #[serde(
        rename = "ExtraRecords",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty"
    )]
    pub extra_records: Vec<DnsRecord>,
    /// Peers keyed by node key (`"nodekey:<hex>"`); `null` when there are none, as in Go.
    #[serde(
        rename = "Peer",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty_map"
    )]
    pub peer: BTreeMap<NodePublic, PeerStatus>,
    /// Profiles of the users the peers (and self) belong to, keyed by user ID.
    #[serde(
        rename = "User",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty_map"
    )]
    pub user: BTreeMap<UserId, UserProfile>,
    #[serde(rename = "ClientVersion")]
    pub client_version: Option<ClientVersion>,
}

impl Status {
    /// The backend state, parsed.
    pub fn state(&self) -> Option<State> {
        self.backend_state.parse().ok()
    }

    /// Peers in Go's display order (`ipnstate.SortPeers`): DNS name, host name, first
    /// Tailscale IP, then node key.
    pub fn sorted_peers(&self) -> Vec<&PeerStatus> {
        let mut v: Vec<&PeerStatus> = self.peer.values().collect();
        v.sort_by(|a, b| {
            let by_dns = (!a.dns_name.is_empty() || !b.dns_name.is_empty())
                .then(|| a.dns_name.cmp(&b.dns_name));
            let by_host = (!a.host_name.is_empty() || !b.host_name.is_empty())
                .then(|| a.host_name.cmp(&b.host_name));
            let by_ip = match (a.tailscale_ips.first(), b.tailscale_ips.first()) {
                (Some(x), Some(y)) => Some(cmp_ip(x, y)),
                _ => None,
            };
            [by_dns, by_host, by_ip]
                .into_iter()
                .flatten()
                .find(|o| o.is_ne())
                .unwrap_or_else(|| a.public_key.cmp(&b.public_key))
        });
        v
    }
}

/// Go's `netip.Addr.Compare`: IPv4 before IPv6, then by bytes.
fn cmp_ip(a: &IpAddr, b: &IpAddr) -> std::cmp::Ordering {
    match (a, b) {
        (IpAddr::V4(x), IpAddr::V4(y)) => x.cmp(y),
        (IpAddr::V6(x), IpAddr::V6(y)) => x.cmp(y),
        (IpAddr::V4(_), IpAddr::V6(_)) => std::cmp::Ordering::Less,
        (IpAddr::V6(_), IpAddr::V4(_)) => std::cmp::Ordering::Greater,
    }
}

/// `ipnstate.TailnetStatus`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TailnetStatus {
    #[serde(rename = "Name")]
    pub name: String,
    /// E.g. `tail1234.ts.net`, no surrounding dots.
    #[serde(rename = "MagicDNSSuffix")]
    pub magic_dns_suffix: String,
    #[serde(rename = "MagicDNSEnabled")]
    pub magic_dns_enabled: bool,
}

/// `ipnstate.ExitNodeStatus`: the exit node in use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExitNodeStatus {
    #[serde(rename = "ID")]
    pub id: StableNodeId,
    #[serde(rename = "Online")]
    pub online: bool,
    #[serde(
        rename = "TailscaleIPs",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty"
    )]
    pub tailscale_ips: Vec<IpPrefix>,
}

/// `ipnstate.PeerStatus`, for Self and each peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerStatus {
    #[serde(rename = "ID")]
    pub id: StableNodeId,
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    #[serde(rename = "PublicKey")]
    pub public_key: NodePublic,
    /// Hostinfo's hostname (not necessarily unique, not a DNS name).
    #[serde(rename = "HostName")]
    pub host_name: String,
    /// FQDN with trailing dot.
    #[serde(rename = "DNSName")]
    pub dns_name: String,
    #[serde(rename = "OS")]
    pub os: String,
    #[serde(rename = "UserID")]
    pub user_id: UserId,
    #[serde(rename = "AltSharerUserID", skip_serializing_if = "is_zero_i64")]
    pub alt_sharer_user_id: UserId,
    #[serde(
        rename = "TailscaleIPs",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty"
    )]
    pub tailscale_ips: Vec<IpAddr>,
    #[serde(
        rename = "AllowedIPs",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allowed_ips: Vec<IpPrefix>,
    #[serde(
        rename = "Tags",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<String>,
    #[serde(
        rename = "PrimaryRoutes",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub primary_routes: Vec<IpPrefix>,
    /// Candidate endpoints.
    #[serde(
        rename = "Addrs",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty"
    )]
    pub addrs: Vec<String>,
    /// The direct endpoint in use, or "".
    #[serde(rename = "CurAddr")]
    pub cur_addr: String,
    /// Home DERP region code.
    #[serde(rename = "Relay")]
    pub relay: String,
    #[serde(rename = "PeerRelay")]
    pub peer_relay: String,
    #[serde(rename = "RxBytes")]
    pub rx_bytes: i64,
    #[serde(rename = "TxBytes")]
    pub tx_bytes: i64,
    #[serde(rename = "Created")]
    pub created: GoTime,
    #[serde(rename = "LastWrite")]
    pub last_write: GoTime,
    #[serde(rename = "LastSeen")]
    pub last_seen: GoTime,
    #[serde(rename = "LastHandshake")]
    pub last_handshake: GoTime,
    /// Connected to control.
    #[serde(rename = "Online")]
    pub online: bool,
    /// The currently selected exit node.
    #[serde(rename = "ExitNode")]
    pub exit_node: bool,
    /// Offers to be an exit node and control approved it.
    #[serde(rename = "ExitNodeOption")]
    pub exit_node_option: bool,
    /// Traffic in roughly the last two minutes.
    #[serde(rename = "Active")]
    pub active: bool,
    #[serde(
        rename = "PeerAPIURL",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty"
    )]
    pub peer_api_url: Vec<String>,
    #[serde(rename = "TaildropTarget")]
    pub taildrop_target: i64,
    #[serde(rename = "NoFileSharingReason")]
    pub no_file_sharing_reason: String,
    #[serde(
        rename = "Capabilities",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub capabilities: Vec<String>,
    #[serde(
        rename = "CapMap",
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub cap_map: CapMap,
    #[serde(
        rename = "sshHostKeys",
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ssh_host_keys: Vec<String>,
    /// Only in the netmap because a shared-to user owns it; hidden by `status`.
    #[serde(rename = "ShareeNode", skip_serializing_if = "is_false")]
    pub sharee_node: bool,
    #[serde(rename = "InNetworkMap")]
    pub in_network_map: bool,
    #[serde(rename = "InMagicSock")]
    pub in_magic_sock: bool,
    #[serde(rename = "InEngine")]
    pub in_engine: bool,
    #[serde(rename = "Expired", skip_serializing_if = "is_false")]
    pub expired: bool,
    #[serde(rename = "KeyExpiry", skip_serializing_if = "Option::is_none")]
    pub key_expiry: Option<GoTime>,
    #[serde(rename = "Location", skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

/// `ipnstate.PingResult`, the answer of `POST /localapi/v0/ping`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PingResult {
    /// The ping destination.
    #[serde(rename = "IP")]
    pub ip: String,
    /// Tailscale IP of the node that answered (differs for subnet routers).
    #[serde(rename = "NodeIP")]
    pub node_ip: String,
    #[serde(rename = "NodeName")]
    pub node_name: String,
    #[serde(rename = "Err")]
    pub err: String,
    #[serde(rename = "LatencySeconds")]
    pub latency_seconds: f64,
    /// `ip:port` when direct UDP was used.
    #[serde(rename = "Endpoint")]
    pub endpoint: String,
    #[serde(rename = "PeerRelay")]
    pub peer_relay: String,
    #[serde(rename = "DERPRegionID")]
    pub derp_region_id: i64,
    #[serde(rename = "DERPRegionCode")]
    pub derp_region_code: String,
    #[serde(rename = "PeerAPIPort", skip_serializing_if = "is_zero_u16")]
    pub peer_api_port: u16,
    #[serde(rename = "PeerAPIURL", skip_serializing_if = "String::is_empty")]
    pub peer_api_url: String,
    /// The error is because the destination is one of our own addresses.
    #[serde(rename = "IsLocalIP", skip_serializing_if = "is_false")]
    pub is_local_ip: bool,
}

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

/// A nil Go slice without `omitempty` is written as `null`.
fn null_if_empty<S: Serializer, T: Serialize>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_none()
    } else {
        v.serialize(s)
    }
}

fn null_if_empty_map<S: Serializer, K: Serialize, V: Serialize>(
    m: &BTreeMap<K, V>,
    s: S,
) -> Result<S::Ok, S::Error> {
    if m.is_empty() {
        s.serialize_none()
    } else {
        m.serialize(s)
    }
}

/// What the data plane knows about one peer, for [`build_status`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerEngineStatus {
    pub rx_bytes: i64,
    pub tx_bytes: i64,
    pub last_handshake: GoTime,
    pub last_write: GoTime,
    /// The direct endpoint in use (`ip:port`), or "".
    pub cur_addr: String,
    /// Candidate endpoints.
    pub addrs: Vec<String>,
    /// Traffic in roughly the last two minutes.
    pub active: bool,
}

/// Everything [`build_status`] needs besides the netmap and prefs.
pub struct StatusSource<'a> {
    pub version: &'a str,
    /// False in userspace-networking mode.
    pub tun: bool,
    pub state: State,
    pub auth_url: &'a str,
    pub health: Vec<String>,
    pub have_node_key: bool,
    /// Whether the map long-poll is up (Self.Online).
    pub in_poll_netmap: bool,
    /// Self.OS (`"linux"`).
    pub os: &'a str,
    /// The OS hostname, shown as Self.HostName before there is a netmap.
    pub os_hostname: &'a str,
    /// False for `status?peers=false`.
    pub want_peers: bool,
}

/// Assembles the Status Go's `LocalBackend.UpdateStatus` would report for this netmap
/// and prefs. `engine` gives the data plane's view of a peer (None = not in the engine).
pub fn build_status(
    src: &StatusSource,
    prefs: &Prefs,
    netmap: Option<&NetMap>,
    engine: &dyn Fn(&NodePublic) -> Option<PeerEngineStatus>,
) -> Status {
    let mut st = Status {
        version: src.version.to_string(),
        tun: src.tun,
        backend_state: src.state.as_str().to_string(),
        have_node_key: src.have_node_key,
        auth_url: src.auth_url.to_string(),
        health: src.health.clone(),
        ..Status::default()
    };
    let mut me = PeerStatus {
        os: src.os.to_string(),
        online: src.in_poll_netmap,
        ..PeerStatus::default()
    };
    let Some(nm) = netmap else {
        me.host_name = src.os_hostname.to_string();
        st.self_status = Some(me);
        return st;
    };
    let dns = nm.dns_config.clone().unwrap_or_default();
    st.cert_domains = dns.cert_domains.clone();
    st.extra_records = dns.extra_records.clone();
    st.magic_dns_suffix = nm.magic_dns_suffix();
    st.current_tailnet = Some(TailnetStatus {
        name: nm.domain.clone(),
        magic_dns_suffix: st.magic_dns_suffix.clone(),
        magic_dns_enabled: dns.proxied,
    });
    if !prefs.route_all && nm.peers.values().any(|p| !p.primary_routes.is_empty()) {
        st.health.push(WARN_ACCEPT_ROUTES_OFF.to_string());
    }
    if !prefs.exit_node_id.is_empty() {
        if let Some(exit) = nm.peer_by_stable_id(&prefs.exit_node_id) {
            st.exit_node_status = Some(ExitNodeStatus {
                id: prefs.exit_node_id.clone(),
                online: exit.online.unwrap_or(false),
                tailscale_ips: exit.addresses.clone(),
            });
        }
    }
    st.tailscale_ips = nm
        .self_addresses()
        .iter()
        .filter(|a| a.is_single_ip())
        .map(|a| a.addr())
        .collect();

    me.in_network_map = true;
    if let Some(node) = &nm.self_node {
        if let Some(hi) = &node.hostinfo {
            me.host_name = hi.hostname.clone();
        }
        me.dns_name = node.name.clone();
        me.user_id = node.user;
        fill_from_node(&mut me, node);
        if !node.cap_map.is_empty() {
            // Go lists a deprecation marker first, then the CapMap keys, sorted.
            me.capabilities = std::iter::once(DEPRECATED_CAPS_MARKER.to_string())
                .chain(node.cap_map.keys().cloned())
                .collect();
            me.cap_map = node.cap_map.clone();
        }
        if let Some(up) = nm.user_profiles.get(&node.user) {
            st.user.insert(node.user, up.clone());
        }
    }
    me.tailscale_ips = st.tailscale_ips.clone();
    st.self_status = Some(me);

    if src.want_peers {
        for (id, up) in &nm.user_profiles {
            st.user.insert(*id, up.clone());
        }
        for p in nm.peers.values() {
            let mut ps = peer_status(p, prefs, nm);
            if let Some(e) = engine(&p.key) {
                ps.rx_bytes = e.rx_bytes;
                ps.tx_bytes = e.tx_bytes;
                ps.last_handshake = e.last_handshake;
                ps.last_write = e.last_write;
                ps.cur_addr = e.cur_addr;
                ps.addrs = e.addrs;
                ps.active = e.active;
                ps.in_engine = true;
                ps.in_magic_sock = true;
            }
            st.peer.insert(p.key, ps);
        }
    }
    st
}

/// Go puts this first in Self.Capabilities when CapMap is non-empty (issue 11508).
const DEPRECATED_CAPS_MARKER: &str =
    "HTTPS://TAILSCALE.COM/s/DEPRECATED-NODE-CAPS#see-https://github.com/tailscale/tailscale/issues/11508";

fn peer_status(p: &Node, prefs: &Prefs, nm: &NetMap) -> PeerStatus {
    let hi = p.hostinfo.clone().unwrap_or_default();
    let mut ps = PeerStatus {
        in_network_map: true,
        user_id: p.user,
        alt_sharer_user_id: p.sharer,
        tailscale_ips: p
            .addresses
            .iter()
            .filter(|a| a.is_single_ip() && is_tailscale_ip(a.addr()))
            .map(|a| a.addr())
            .collect(),
        host_name: hi.hostname.clone(),
        dns_name: p.name.clone(),
        os: hi.os.clone(),
        last_seen: p.last_seen.unwrap_or_default(),
        online: p.online.unwrap_or(false),
        sharee_node: hi.sharee_node,
        exit_node: !p.stable_id.is_empty() && p.stable_id == prefs.exit_node_id,
        ssh_host_keys: hi.ssh_host_keys.clone(),
        location: hi.location.clone(),
        capabilities: p.capabilities.clone(),
        cap_map: p.cap_map.clone(),
        relay: derp_region_code(nm, p.home_derp),
        ..PeerStatus::default()
    };
    fill_from_node(&mut ps, p);
    for (proto, ip) in [("peerapi4", ipv4_of(p)), ("peerapi6", ipv6_of(p))] {
        let port = hi
            .services
            .iter()
            .find(|s| s.proto == proto)
            .map(|s| s.port);
        if let (Some(port), Some(ip)) = (port, ip) {
            if port != 0 {
                ps.peer_api_url.push(match ip {
                    IpAddr::V4(a) => format!("http://{a}:{port}"),
                    IpAddr::V6(a) => format!("http://[{a}]:{port}"),
                });
            }
        }
    }
    ps
}

/// Go's `peerStatusFromNode`: the fields Self and peers share.
fn fill_from_node(ps: &mut PeerStatus, n: &Node) {
    ps.public_key = n.key;
    ps.id = n.stable_id.clone();
    ps.node_id = n.id;
    ps.created = n.created;
    let allowed = n.allowed_ips_or_addresses();
    ps.exit_node_option = contains_exit_routes(allowed);
    ps.tags = n.tags.clone();
    ps.primary_routes = n.primary_routes.clone();
    ps.allowed_ips = allowed.to_vec();
    ps.expired = n.expired;
    if !n.key_expiry.is_zero() {
        // Go rounds to the second.
        let (s, ns) = (n.key_expiry.unix_secs(), n.key_expiry.subsec_nanos());
        ps.key_expiry = Some(GoTime::from_unix(s + i64::from(ns >= 500_000_000), 0));
    }
}

/// Both 0.0.0.0/0 and ::/0 (Go's `tsaddr.ContainsExitRoutes`).
pub fn contains_exit_routes(routes: &[IpPrefix]) -> bool {
    let [v4, v6] = crate::prefs::exit_routes();
    routes.contains(&v4) && routes.contains(&v6)
}

fn derp_region_code(nm: &NetMap, region: i64) -> String {
    if region == 0 {
        return String::new();
    }
    nm.derp_map
        .as_ref()
        .and_then(|m| m.regions.as_ref())
        .and_then(|r| r.get(&region))
        .and_then(|r| r.as_ref())
        .map(|r| r.region_code.clone())
        .unwrap_or_default()
}

fn ipv4_of(n: &Node) -> Option<IpAddr> {
    n.addresses
        .iter()
        .find(|a| a.is_single_ip() && a.is_ipv4())
        .map(|a| a.addr())
}

fn ipv6_of(n: &Node) -> Option<IpAddr> {
    n.addresses
        .iter()
        .find(|a| a.is_single_ip() && !a.is_ipv4())
        .map(|a| a.addr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tailcfg::{DnsConfig, Hostinfo, Service};
    use ringscale_keys::Key;

    fn key(b: u8) -> NodePublic {
        NodePublic(Key([b; 32]))
    }

    fn node(id: i64, b: u8, name: &str, addrs: &[&str]) -> Node {
        Node {
            id,
            stable_id: format!("n{id}"),
            name: format!("{name}.tail1.ts.net."),
            user: 7,
            key: key(b),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            hostinfo: Some(Hostinfo {
                hostname: name.into(),
                os: "linux".into(),
                ..Hostinfo::default()
            }),
            online: Some(true),
            ..Node::default()
        }
    }

    fn netmap() -> NetMap {
        let mut nm = NetMap::new();
        nm.self_node = Some(node(
            1,
            1,
            "router",
            &["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
        ));
        let mut exit = node(2, 2, "exit", &["100.64.0.2/32"]);
        exit.allowed_ips = Some(
            ["100.64.0.2/32", "0.0.0.0/0", "::/0"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
        );
        exit.hostinfo.as_mut().unwrap().services = vec![Service {
            proto: "peerapi4".into(),
            port: 41000,
            description: String::new(),
        }];
        let mut lan = node(3, 3, "lan", &["100.64.0.3/32"]);
        lan.primary_routes = vec!["192.168.1.0/24".parse().unwrap()];
        lan.online = None;
        nm.peers.insert(2, exit);
        nm.peers.insert(3, lan);
        nm.domain = "example.com".into();
        nm.dns_config = Some(DnsConfig {
            proxied: true,
            ..DnsConfig::default()
        });
        nm.user_profiles.insert(
            7,
            UserProfile {
                id: 7,
                login_name: "alice@example.com".into(),
                ..UserProfile::default()
            },
        );
        nm
    }

    fn source(want_peers: bool) -> StatusSource<'static> {
        StatusSource {
            version: "0.1.0",
            tun: true,
            state: State::Running,
            auth_url: "",
            health: Vec::new(),
            have_node_key: true,
            in_poll_netmap: true,
            os: "linux",
            os_hostname: "box",
            want_peers,
        }
    }

    #[test]
    fn status_from_netmap_has_the_fields_scripts_read() {
        let nm = netmap();
        let prefs = Prefs {
            exit_node_id: "n2".into(),
            ..Prefs::default()
        };
        let engine = |k: &NodePublic| {
            (*k == key(2)).then(|| PeerEngineStatus {
                rx_bytes: 10,
                active: true,
                cur_addr: "192.0.2.1:41641".into(),
                ..PeerEngineStatus::default()
            })
        };
        let st = build_status(&source(true), &prefs, Some(&nm), &engine);
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["BackendState"], "Running");
        assert_eq!(v["TailscaleIPs"][0], "100.64.0.1");
        assert_eq!(v["TailscaleIPs"][1], "fd7a:115c:a1e0::1");
        assert_eq!(v["Self"]["HostName"], "router");
        assert_eq!(v["Self"]["DNSName"], "router.tail1.ts.net.");
        assert_eq!(v["Self"]["Online"], true);
        assert_eq!(v["MagicDNSSuffix"], "tail1.ts.net");
        assert_eq!(v["CurrentTailnet"]["Name"], "example.com");
        assert_eq!(v["CurrentTailnet"]["MagicDNSEnabled"], true);
        assert_eq!(v["ExitNodeStatus"]["ID"], "n2");
        assert_eq!(v["ExitNodeStatus"]["TailscaleIPs"][0], "100.64.0.2/32");
        let exit = &v["Peer"][key(2).to_string()];
        assert_eq!(exit["ExitNode"], true);
        assert_eq!(exit["ExitNodeOption"], true);
        assert_eq!(exit["Active"], true);
        assert_eq!(exit["RxBytes"], 10);
        assert_eq!(exit["CurAddr"], "192.0.2.1:41641");
        assert_eq!(exit["PeerAPIURL"][0], "http://100.64.0.2:41000");
        assert_eq!(exit["LastSeen"], "0001-01-01T00:00:00Z");
        let lan = &v["Peer"][key(3).to_string()];
        assert_eq!(lan["Online"], false);
        assert_eq!(lan["ExitNodeOption"], false);
        assert_eq!(lan["PrimaryRoutes"][0], "192.168.1.0/24");
        assert!(lan["Addrs"].is_null() && lan.get("KeyExpiry").is_none());
        assert_eq!(v["User"]["7"]["LoginName"], "alice@example.com");
        assert_eq!(v["Health"][0], WARN_ACCEPT_ROUTES_OFF);
        // Round trip through our own decoder.
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, st);
    }

    #[test]
    fn without_peers_or_netmap() {
        let nm = netmap();
        let st = build_status(&source(false), &Prefs::default(), Some(&nm), &|_| None);
        let v = serde_json::to_value(&st).unwrap();
        assert!(v["Peer"].is_null());
        // The self user's profile is always there.
        assert_eq!(v["User"]["7"]["ID"], 7);
        let mut src = source(true);
        src.state = State::NeedsLogin;
        let st = build_status(&src, &Prefs::default(), None, &|_| None);
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["BackendState"], "NeedsLogin");
        assert_eq!(v["Self"]["HostName"], "box");
        assert!(v["CurrentTailnet"].is_null() && v["TailscaleIPs"].is_null());
        assert!(v.get("ExitNodeStatus").is_none());
    }

    #[test]
    fn reads_go_status_json() {
        // Trimmed output of Go's `tailscale status --json`.
        let go = r#"{
          "Version": "1.103.0-t", "TUN": true, "BackendState": "Running",
          "HaveNodeKey": true, "AuthURL": "", "TailscaleIPs": ["100.101.1.2"],
          "Self": {"ID": "nX", "PublicKey": "nodekey:0101010101010101010101010101010101010101010101010101010101010101",
                   "HostName": "a", "DNSName": "a.t.ts.net.", "OS": "linux", "UserID": 1,
                   "TailscaleIPs": ["100.101.1.2"], "Addrs": null, "Created": "2026-01-02T03:04:05.123456789Z",
                   "KeyExpiry": "2026-07-01T00:00:00Z", "Online": true, "TaildropTarget": 0},
          "Health": null, "MagicDNSSuffix": "t.ts.net", "CurrentTailnet": null,
          "CertDomains": null, "Peer": null, "User": null, "ClientVersion": null,
          "SomethingNew": 1
        }"#;
        let st: Status = serde_json::from_str(go).unwrap();
        assert_eq!(st.state(), Some(State::Running));
        let me = st.self_status.unwrap();
        assert_eq!(me.public_key, key(1));
        assert!(me.key_expiry.is_some());
    }

    #[test]
    fn peers_sort_as_go_does() {
        let mut st = Status::default();
        for (b, dns, host) in [
            (1, "b.x.", "z"),
            (2, "a.x.", "y"),
            (3, "", "c"),
            (4, "", ""),
        ] {
            st.peer.insert(
                key(b),
                PeerStatus {
                    public_key: key(b),
                    dns_name: dns.into(),
                    host_name: host.into(),
                    ..PeerStatus::default()
                },
            );
        }
        let order: Vec<u8> = st
            .sorted_peers()
            .iter()
            .map(|p| p.public_key.0 .0[0])
            .collect();
        assert_eq!(order, vec![4, 3, 2, 1]);
    }
}
