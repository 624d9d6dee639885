//! The network map as plain state, the delta rules that update it from each
//! [`MapResponse`] of a map session, and its conversion into the data plane's
//! [`Config`] (protocol.md §4.3, §4.5, §4.6, §8).
//!
//! A `NetMap` lives for one map session (one long-poll stream): the Go client resets its
//! session state on every new poll, and the first message of a session carries the full
//! state. A daemon that wants to keep its last good netmap while reconnecting keeps the
//! old `NetMap` (and the `Config` made from it) until the new session's first full
//! message has been applied to a fresh one.

use crate::prefs::Prefs;
use crate::tailcfg::{
    is_tailscale_ip, DerpMap, DnsConfig, FilterRule, GoTime, IpPrefix, MapResponse, Node, NodeId,
    NodePublic, UserId, UserProfile,
};
use ringscale_dataplane::config::DEFAULT_MTU;
use ringscale_dataplane::{Config, IfAddr, PeerConfig};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Skew between our clock and control's below which it is ignored (Go: `minClockDelta`).
const MIN_CLOCK_DELTA_SECS: i64 = 60;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetMap {
    /// The self node; None until the first full message of the session.
    pub self_node: Option<Node>,
    /// Peers by node ID (sorted, like Go's netmap).
    pub peers: BTreeMap<NodeId, Node>,
    pub dns_config: Option<DnsConfig>,
    pub derp_map: Option<DerpMap>,
    /// Named packet-filter chunks; `PacketFilter` is the chunk `"base"`.
    pub named_packet_filters: BTreeMap<String, Vec<FilterRule>>,
    pub user_profiles: BTreeMap<UserId, UserProfile>,
    /// Tailnet name.
    pub domain: String,
    pub collect_services: bool,
    pub health: Vec<String>,
    pub display_messages: BTreeMap<String, serde_json::Value>,
    pub ssh_policy: Option<serde_json::Value>,
    pub tka_info: Option<serde_json::Value>,
    pub domain_audit_log_id: String,
    /// Last `ControlTime` seen.
    pub control_time: Option<GoTime>,
    /// Control's clock minus ours, in seconds (0 when under a minute).
    pub clock_delta_secs: i64,
}

/// What one [`NetMap::apply`] changed, so the daemon can tell whether it needs to
/// reconfigure anything. (The data plane can also compare the [`Config`] it gets, which
/// derives `PartialEq`, before swapping it in.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapUpdate {
    /// The message was a keep-alive; nothing but `ControlTime` was taken from it.
    pub keep_alive: bool,
    pub self_changed: bool,
    pub peers_added: usize,
    pub peers_removed: usize,
    /// Peers replaced or patched whose value actually changed.
    pub peers_modified: usize,
    pub dns_changed: bool,
    pub derp_map_changed: bool,
    pub packet_filter_changed: bool,
    pub user_profiles_changed: bool,
    pub domain_changed: bool,
}

impl MapUpdate {
    pub fn peers_changed(&self) -> bool {
        self.peers_added + self.peers_removed + self.peers_modified > 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetMapError {
    /// The first non-keep-alive message of a session must carry the self node.
    InitialResponseLackedNode,
}

impl fmt::Display for NetMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetMapError::InitialResponseLackedNode => {
                f.write_str("initial MapResponse lacked node")
            }
        }
    }
}

impl std::error::Error for NetMapError {}

impl NetMap {
    pub fn new() -> NetMap {
        NetMap::default()
    }

    /// Applies one message of the session with Go's delta rules. `now` is the local
    /// time, used for `PeerSeenChange` (true = seen now) and for flagging peers whose key
    /// has expired. Take `ping_request`/`pop_browser_url` out of `resp` first: they are
    /// actions for the client, not state.
    ///
    /// On error the netmap is unchanged.
    pub fn apply(&mut self, mut resp: MapResponse, now: GoTime) -> Result<MapUpdate, NetMapError> {
        let mut up = MapUpdate::default();
        if !resp.keep_alive && self.self_node.is_none() && resp.node.is_none() {
            return Err(NetMapError::InitialResponseLackedNode);
        }
        if let Some(t) = resp.control_time {
            self.set_control_time(t, now);
        }
        if resp.keep_alive {
            up.keep_alive = true;
            return Ok(up);
        }

        if let Some(mut node) = resp.node.take() {
            node.upgrade();
            up.self_changed = self.self_node.as_ref() != Some(&node);
            self.self_node = Some(node);
        }

        self.apply_peer_deltas(&mut resp, now, &mut up);

        if let Some(mut dm) = resp.derp_map.take() {
            if let Some(regions) = dm.regions.as_mut() {
                regions.retain(|_, r| r.is_some());
            }
            if let Some(old) = &self.derp_map {
                // Zero-valued fields mean "keep what you had".
                if dm.regions.is_none() {
                    dm.regions = old.regions.clone();
                    dm.omit_default_regions = old.omit_default_regions;
                }
                match (&mut dm.home_params, &old.home_params) {
                    (None, old_hp) => dm.home_params = old_hp.clone(),
                    (Some(hp), Some(old_hp)) if hp.region_score.is_none() => {
                        hp.region_score = old_hp.region_score.clone();
                    }
                    _ => {}
                }
            }
            up.derp_map_changed = self.derp_map.as_ref() != Some(&dm);
            self.derp_map = Some(dm);
        }

        let before = self.packet_filter();
        let mut filter_touched = false;
        if let Some(pf) = resp.packet_filter.take() {
            filter_touched = true;
            self.named_packet_filters.insert("base".to_string(), pf);
        }
        if let Some(m) = resp.packet_filters.take() {
            filter_touched = true;
            if matches!(m.get("*"), Some(None)) {
                self.named_packet_filters.clear();
            }
            for (name, rules) in m {
                if name == "*" {
                    continue;
                }
                match rules {
                    Some(r) => {
                        self.named_packet_filters.insert(name, r);
                    }
                    None => {
                        self.named_packet_filters.remove(&name);
                    }
                }
            }
        }
        up.packet_filter_changed = filter_touched && self.packet_filter() != before;

        if let Some(dns) = resp.dns_config.take() {
            up.dns_changed = self.dns_config.as_ref() != Some(&dns);
            self.dns_config = Some(dns);
        }
        for p in resp.user_profiles.drain(..) {
            if self.user_profiles.get(&p.id) != Some(&p) {
                up.user_profiles_changed = true;
                self.user_profiles.insert(p.id, p);
            }
        }
        if !resp.domain.is_empty() && resp.domain != self.domain {
            up.domain_changed = true;
            self.domain = std::mem::take(&mut resp.domain);
        }
        if let Some(v) = resp.collect_services {
            self.collect_services = v;
        }
        if let Some(h) = resp.health.take() {
            self.health = h;
        }
        if let Some(m) = resp.display_messages.take() {
            if matches!(m.get("*"), Some(None)) {
                self.display_messages.clear();
            }
            for (k, v) in m {
                if k == "*" {
                    continue;
                }
                match v {
                    Some(v) => {
                        self.display_messages.insert(k, v);
                    }
                    None => {
                        self.display_messages.remove(&k);
                    }
                }
            }
        }
        if let Some(p) = resp.ssh_policy.take() {
            self.ssh_policy = Some(p);
        }
        if let Some(t) = resp.tka_info.take() {
            self.tka_info = Some(t);
        }
        if !resp.domain_data_plane_audit_log_id.is_empty() {
            self.domain_audit_log_id = std::mem::take(&mut resp.domain_data_plane_audit_log_id);
        }

        if self.flag_expired_peers(now) {
            up.peers_modified += 1;
        }
        Ok(up)
    }

    fn apply_peer_deltas(&mut self, resp: &mut MapResponse, now: GoTime, up: &mut MapUpdate) {
        if let Some(peers) = resp.peers.take().filter(|p| !p.is_empty()) {
            // A complete list: it replaces everything and every other peer delta field of
            // the message is ignored.
            let fresh: BTreeMap<NodeId, Node> = peers
                .into_iter()
                .map(|mut n| {
                    n.upgrade();
                    match self.peers.get(&n.id) {
                        None => up.peers_added += 1,
                        Some(old) if *old != n => up.peers_modified += 1,
                        Some(_) => {}
                    }
                    (n.id, n)
                })
                // Collected, not inserted one by one: a map built in one go has full
                // leaves, one grown by inserts keeps them about half empty, which cost
                // ~1.2 KB per peer (a Node is ~1.5 KB). Of repeated IDs the last one
                // counts, as with inserts.
                .collect();
            up.peers_removed += self
                .peers
                .keys()
                .filter(|id| !fresh.contains_key(id))
                .count();
            self.peers = fresh;
            return;
        }

        for id in &resp.peers_removed {
            if self.peers.remove(id).is_some() {
                up.peers_removed += 1;
            }
        }
        for mut n in resp.peers_changed.drain(..) {
            n.upgrade();
            match self.peers.get(&n.id) {
                None => up.peers_added += 1,
                Some(old) if *old != n => up.peers_modified += 1,
                Some(_) => {}
            }
            self.peers.insert(n.id, n);
        }
        for (id, seen) in &resp.peer_seen_change {
            if let Some(p) = self.peers.get_mut(id) {
                let new = seen.then_some(now);
                if p.last_seen != new {
                    p.last_seen = new;
                    up.peers_modified += 1;
                }
            }
        }
        for (id, online) in &resp.online_change {
            if let Some(p) = self.peers.get_mut(id) {
                if p.online != Some(*online) {
                    p.online = Some(*online);
                    up.peers_modified += 1;
                }
            }
        }
        for pc in resp.peers_changed_patch.drain(..) {
            // Unknown node IDs are ignored, as Go does.
            let Some(p) = self.peers.get_mut(&pc.node_id) else {
                continue;
            };
            let before = p.clone();
            if pc.derp_region != 0 {
                p.home_derp = pc.derp_region;
            }
            if pc.cap != 0 {
                p.cap = pc.cap;
            }
            if let Some(e) = pc.endpoints {
                p.endpoints = e;
            }
            if let Some(k) = pc.key {
                p.key = k;
            }
            if let Some(k) = pc.disco_key {
                p.disco_key = k;
            }
            if let Some(o) = pc.online {
                p.online = Some(o);
            }
            if let Some(t) = pc.last_seen {
                p.last_seen = Some(t);
            }
            if let Some(t) = pc.key_expiry {
                p.key_expiry = t;
            }
            if let Some(s) = pc.key_signature {
                p.key_signature = s;
            }
            if let Some(c) = pc.cap_map {
                p.cap_map = c;
            }
            if *p != before {
                up.peers_modified += 1;
            }
        }
    }

    fn set_control_time(&mut self, t: GoTime, local_now: GoTime) {
        self.control_time = Some(t);
        let delta = t.unix_secs() - local_now.unix_secs();
        self.clock_delta_secs = if delta.abs() > MIN_CLOCK_DELTA_SECS {
            delta
        } else {
            0
        };
    }

    /// Marks peers whose `KeyExpiry` has passed (on control's clock, adjusted by the last
    /// `ControlTime`) as `Expired` and clears their endpoints and home DERP, as the Go
    /// client does. Call it on a timer too: keys expire without any message. Returns
    /// whether any peer changed.
    pub fn flag_expired_peers(&mut self, local_now: GoTime) -> bool {
        let control_now = if self.clock_delta_secs >= 0 {
            local_now.add(Duration::from_secs(self.clock_delta_secs as u64))
        } else {
            GoTime::from_unix(
                local_now.unix_secs() + self.clock_delta_secs,
                local_now.subsec_nanos(),
            )
        };
        let mut changed = false;
        for p in self.peers.values_mut() {
            if p.expired || p.key_expiry.is_zero() || p.key_expiry > control_now {
                continue;
            }
            p.expired = true;
            p.endpoints.clear();
            p.home_derp = 0;
            changed = true;
        }
        changed
    }

    /// The effective packet filter: the named chunks concatenated in name order. Empty
    /// (including "never received") means deny all inbound.
    pub fn packet_filter(&self) -> Vec<FilterRule> {
        self.named_packet_filters
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    pub fn peer_by_key(&self, key: &NodePublic) -> Option<&Node> {
        self.peers.values().find(|p| p.key == *key)
    }

    pub fn peer_by_stable_id(&self, id: &str) -> Option<&Node> {
        self.peers.values().find(|p| p.stable_id == id)
    }

    /// The peer that owns `ip` as one of its Tailscale addresses.
    pub fn peer_by_tailscale_ip(&self, ip: IpAddr) -> Option<&Node> {
        self.peers
            .values()
            .find(|p| p.addresses.iter().any(|a| a.addr() == ip))
    }

    /// Our own Tailscale addresses (empty before the first full message).
    pub fn self_addresses(&self) -> &[IpPrefix] {
        self.self_node
            .as_ref()
            .map(|n| n.addresses.as_slice())
            .unwrap_or(&[])
    }

    /// The MagicDNS suffix: the self node's name after its first label, without the
    /// trailing dot (`host.tail1234.ts.net.` → `tail1234.ts.net`).
    pub fn magic_dns_suffix(&self) -> String {
        let name = self
            .self_node
            .as_ref()
            .map(|n| n.name.as_str())
            .unwrap_or("");
        let name = name.trim_end_matches('.');
        match name.split_once('.') {
            Some((_, rest)) => rest.to_string(),
            None => String::new(),
        }
    }
}

/// Why a netmap cannot become a data-plane configuration yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    NoSelfNode,
    /// The prefs carry no node private key (not logged in).
    NoNodeKey,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoSelfNode => f.write_str("netmap has no self node yet"),
            ConfigError::NoNodeKey => f.write_str("prefs hold no node private key"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The exit node the prefs select, if it is in the netmap: by `ExitNodeID` (StableID),
/// or, when only `ExitNodeIP` is set, the peer owning that Tailscale address.
pub fn selected_exit_node<'a>(netmap: &'a NetMap, prefs: &Prefs) -> Option<&'a Node> {
    if !prefs.exit_node_id.is_empty() {
        return netmap.peer_by_stable_id(&prefs.exit_node_id);
    }
    prefs
        .exit_node_ip
        .and_then(|ip| netmap.peer_by_tailscale_ip(ip))
}

/// Whether a peer may carry traffic at all (Go route manager's `peerViewOf`): never an
/// expired one; otherwise it needs a path. Go requires a disco key or a home DERP (or
/// WireGuard-only); until disco and DERP exist here, a peer with announced endpoints
/// also counts, since the data plane sends to `Endpoints` directly.
pub fn peer_is_reachable(peer: &Node) -> bool {
    if peer.expired {
        return false;
    }
    !peer.disco_key.is_zero()
        || peer.home_derp != 0
        || peer.is_wireguard_only
        || !peer.endpoints.is_empty()
}

/// The routes (= WireGuard AllowedIPs) we accept for one peer, per protocol.md §4.6:
/// the peer's own addresses (and any single Tailscale IP) always; exit routes
/// (`0.0.0.0/0`, `::/0`) only if this peer is the selected exit node; other subnet
/// routes only with `RouteAll` (`--accept-routes`). Sorted and de-duplicated.
pub fn peer_allowed_ips(peer: &Node, prefs: &Prefs, is_selected_exit_node: bool) -> Vec<IpPrefix> {
    if !peer_is_reachable(peer) {
        return Vec::new();
    }
    let mut out: Vec<IpPrefix> = peer
        .allowed_ips_or_addresses()
        .iter()
        .filter(|p| {
            let is_self =
                (p.is_single_ip() && is_tailscale_ip(p.addr())) || peer.addresses.contains(p);
            if is_self {
                true
            } else if p.is_exit_route() {
                is_selected_exit_node
            } else {
                prefs.route_all
            }
        })
        .copied()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The data-plane configuration for a netmap under the given prefs: our node private
/// key, our addresses as /32 and /128 on the TUN, MTU 1280, and one peer per reachable,
/// unexpired peer with its node key, AllowedIPs from [`peer_allowed_ips`] and its first
/// announced endpoint. `listen_port` is 0: the daemon sets its `--port`.
///
/// A pure function of its inputs; peers come out in node-ID order.
pub fn dataplane_config(netmap: &NetMap, prefs: &Prefs) -> Result<Config, ConfigError> {
    let self_node = netmap.self_node.as_ref().ok_or(ConfigError::NoSelfNode)?;
    let private_key = prefs
        .persist
        .as_ref()
        .map(|p| &p.private_node_key)
        .filter(|k| !k.is_zero())
        .ok_or(ConfigError::NoNodeKey)?;

    let addresses = self_node
        .addresses
        .iter()
        .map(|p| IfAddr {
            addr: p.addr(),
            prefix_len: if p.is_ipv4() { 32 } else { 128 },
        })
        .collect();

    let exit_id = selected_exit_node(netmap, prefs).map(|n| n.id);
    let own_key = private_key.node_public();
    let peers = netmap
        .peers
        .values()
        .filter(|p| peer_is_reachable(p) && !p.key.is_zero() && p.key != own_key)
        .map(|p| PeerConfig {
            public_key: p.key.0,
            allowed_ips: to_networks(&peer_allowed_ips(p, prefs, Some(p.id) == exit_id)),
            endpoint: p.endpoints.first().copied(),
            // Tailscale sets none; disco heartbeats keep NAT bindings (later issue).
            persistent_keepalive: None,
        })
        .collect();

    Ok(Config {
        private_key: private_key.0.clone(),
        listen_port: 0,
        addresses,
        mtu: DEFAULT_MTU,
        peers,
        // Without the host's interface list (the daemon passes it): an exit node's
        // LAN is then refused only where it is in a private range.
        filter: Some(crate::hostconfig::filter_config(netmap, prefs, &[])),
    })
}

/// Prefixes as the data plane's networks; prefixes that differ only in host bits
/// collapse into one.
fn to_networks(prefixes: &[IpPrefix]) -> Vec<ip_network::IpNetwork> {
    let mut out: Vec<ip_network::IpNetwork> = Vec::with_capacity(prefixes.len());
    for n in prefixes.iter().map(IpPrefix::to_network) {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// The routes to point at the TUN: every peer's accepted AllowedIPs, plus `0.0.0.0/0`
/// and `::/0` whenever the prefs select an exit node, even one that is missing or
/// unreachable, so that traffic meant for the exit node is blackholed rather than
/// leaked to the local network (protocol.md §4.6). Sorted, de-duplicated.
pub fn tun_routes(netmap: &NetMap, prefs: &Prefs) -> Vec<IpPrefix> {
    let exit_id = selected_exit_node(netmap, prefs).map(|n| n.id);
    let mut out: Vec<IpPrefix> = netmap
        .peers
        .values()
        .flat_map(|p| peer_allowed_ips(p, prefs, Some(p.id) == exit_id))
        .collect();
    if prefs.exit_node_selected() {
        out.extend(crate::prefs::exit_routes());
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefs::Persist;
    use crate::tailcfg::{
        DerpHomeParams, DerpRegion, DiscoPublic, PeerChange, PrivateKey, Resolver,
    };
    use ringscale_keys::Key;

    fn pfx(s: &str) -> IpPrefix {
        s.parse().unwrap()
    }

    fn peer(id: NodeId, addrs: &[&str], allowed: Option<&[&str]>) -> Node {
        Node {
            id,
            stable_id: format!("stable-{id}"),
            name: format!("peer{id}.example.ts.net."),
            key: NodePublic(Key([id as u8; 32])),
            disco_key: DiscoPublic(Key([0xd0 + id as u8; 32])),
            addresses: addrs.iter().map(|a| pfx(a)).collect(),
            allowed_ips: allowed.map(|v| v.iter().map(|a| pfx(a)).collect()),
            endpoints: vec![format!("192.0.2.{id}:41641").parse().unwrap()],
            home_derp: 900,
            ..Node::default()
        }
    }

    fn self_node() -> Node {
        Node {
            id: 1,
            stable_id: "stable-1".into(),
            name: "self.example.ts.net.".into(),
            key: NodePublic(node_private().public()),
            addresses: vec![pfx("100.64.0.1/32"), pfx("fd7a:115c:a1e0::1/128")],
            ..Node::default()
        }
    }

    fn node_private() -> ringscale_keys::PrivateKey {
        ringscale_keys::PrivateKey::from_bytes([0x77; 32])
    }

    fn prefs() -> Prefs {
        Prefs {
            persist: Some(Persist {
                private_node_key: PrivateKey(node_private()),
                ..Persist::default()
            }),
            ..Prefs::default()
        }
    }

    fn t(s: &str) -> GoTime {
        GoTime::parse_rfc3339(s).unwrap()
    }

    const NOW: &str = "2026-08-01T12:00:00Z";

    /// The first message of a session: self, a plain peer and a subnet router that also
    /// offers to be an exit node.
    fn initial() -> MapResponse {
        MapResponse {
            node: Some(self_node()),
            peers: Some(vec![
                peer(2, &["100.64.0.2/32", "fd7a:115c:a1e0::2/128"], None),
                peer(
                    3,
                    &["100.64.0.3/32"],
                    Some(&["100.64.0.3/32", "192.168.1.0/24", "0.0.0.0/0", "::/0"]),
                ),
            ]),
            dns_config: Some(DnsConfig {
                resolvers: vec![Resolver {
                    addr: "1.1.1.1".into(),
                    ..Resolver::default()
                }],
                proxied: true,
                ..DnsConfig::default()
            }),
            derp_map: Some(DerpMap {
                regions: Some(
                    [(
                        900,
                        Some(DerpRegion {
                            region_id: 900,
                            region_code: "hs".into(),
                            ..DerpRegion::default()
                        }),
                    )]
                    .into(),
                ),
                home_params: Some(DerpHomeParams {
                    region_score: Some([(900, 0.9)].into()),
                }),
                omit_default_regions: true,
            }),
            packet_filters: Some(
                [(
                    "base".to_string(),
                    Some(vec![FilterRule {
                        src_ips: vec!["*".into()],
                        ..FilterRule::default()
                    }]),
                )]
                .into(),
            ),
            domain: "example.ts.net".into(),
            user_profiles: vec![UserProfile {
                id: 1,
                login_name: "alice@example.com".into(),
                ..UserProfile::default()
            }],
            control_time: Some(t(NOW)),
            ..MapResponse::default()
        }
    }

    fn started() -> NetMap {
        let mut nm = NetMap::new();
        nm.apply(initial(), t(NOW)).unwrap();
        nm
    }

    #[test]
    fn first_message_must_carry_the_self_node() {
        let mut nm = NetMap::new();
        let mut r = initial();
        r.node = None;
        assert_eq!(
            nm.apply(r, t(NOW)),
            Err(NetMapError::InitialResponseLackedNode)
        );
        assert_eq!(nm, NetMap::new(), "a refused message changes nothing");
        // A keep-alive before the first full message is fine.
        let ka = MapResponse {
            keep_alive: true,
            ..MapResponse::default()
        };
        assert!(nm.apply(ka, t(NOW)).unwrap().keep_alive);
    }

    #[test]
    fn initial_message_fills_the_netmap() {
        let mut nm = NetMap::new();
        let up = nm.apply(initial(), t(NOW)).unwrap();
        assert!(up.self_changed && up.dns_changed && up.derp_map_changed);
        assert!(up.packet_filter_changed && up.user_profiles_changed && up.domain_changed);
        assert_eq!(up.peers_added, 2);
        assert_eq!(nm.peers.keys().copied().collect::<Vec<_>>(), [2, 3]);
        // upgradeNode ran: null AllowedIPs became the addresses.
        assert_eq!(nm.peers[&2].allowed_ips.as_ref().unwrap().len(), 2);
        assert_eq!(nm.magic_dns_suffix(), "example.ts.net");
        assert_eq!(nm.packet_filter().len(), 1);
        assert_eq!(nm.user_profiles[&1].login_name, "alice@example.com");
        assert_eq!(nm.self_addresses().len(), 2);
    }

    #[test]
    fn keep_alive_changes_nothing_but_control_time() {
        let mut nm = started();
        let before = nm.clone();
        let mut ka = initial();
        ka.keep_alive = true;
        ka.peers = Some(vec![]);
        ka.peers_removed = vec![2, 3];
        ka.control_time = Some(t("2026-08-01T12:00:30Z"));
        let up = nm.apply(ka, t(NOW)).unwrap();
        assert_eq!(
            up,
            MapUpdate {
                keep_alive: true,
                ..MapUpdate::default()
            }
        );
        assert_eq!(nm.peers, before.peers);
        assert_eq!(nm.control_time, Some(t("2026-08-01T12:00:30Z")));
    }

    #[test]
    fn absent_fields_mean_unchanged() {
        let mut nm = started();
        let before = nm.clone();
        let up = nm.apply(MapResponse::default(), t(NOW)).unwrap();
        assert_eq!(up, MapUpdate::default());
        assert_eq!(nm, before);
        // An empty Peers list is not "no peers": it is ignored as well.
        let r = MapResponse {
            peers: Some(vec![]),
            ..MapResponse::default()
        };
        nm.apply(r, t(NOW)).unwrap();
        assert_eq!(nm.peers.len(), 2);
    }

    #[test]
    fn delta_adds_changes_and_removes_peers() {
        let mut nm = started();
        let mut moved = peer(2, &["100.64.0.2/32"], None);
        moved.endpoints = vec!["198.51.100.2:41641".parse().unwrap()];
        let r = MapResponse {
            peers_changed: vec![peer(4, &["100.64.0.4/32"], None), moved],
            peers_removed: vec![3, 99],
            ..MapResponse::default()
        };
        let up = nm.apply(r, t(NOW)).unwrap();
        assert_eq!(
            (up.peers_added, up.peers_modified, up.peers_removed),
            (1, 1, 1)
        );
        assert_eq!(nm.peers.keys().copied().collect::<Vec<_>>(), [2, 4]);
        assert_eq!(nm.peers[&2].endpoints[0].to_string(), "198.51.100.2:41641");
        // Re-sending an identical node is not a change.
        let r = MapResponse {
            peers_changed: vec![nm.peers[&4].clone()],
            ..MapResponse::default()
        };
        assert!(!nm.apply(r, t(NOW)).unwrap().peers_changed());
    }

    #[test]
    fn full_peer_list_replaces_and_overrides_other_deltas() {
        let mut nm = started();
        let r = MapResponse {
            peers: Some(vec![
                peer(3, &["100.64.0.3/32"], None),
                peer(5, &["100.64.0.5/32"], None),
            ]),
            peers_removed: vec![3],
            online_change: [(3, false)].into(),
            peers_changed_patch: vec![PeerChange {
                node_id: 5,
                derp_region: 7,
                ..PeerChange::default()
            }],
            ..MapResponse::default()
        };
        let up = nm.apply(r, t(NOW)).unwrap();
        assert_eq!(nm.peers.keys().copied().collect::<Vec<_>>(), [3, 5]);
        assert_eq!(
            nm.peers[&3].online, None,
            "OnlineChange ignored beside Peers"
        );
        assert_eq!(nm.peers[&5].home_derp, 900, "patch ignored beside Peers");
        assert_eq!(
            (up.peers_added, up.peers_removed, up.peers_modified),
            (1, 1, 1)
        );
    }

    #[test]
    fn patches_update_only_what_they_name() {
        let mut nm = started();
        let r = MapResponse {
            peers_changed_patch: vec![
                PeerChange {
                    node_id: 2,
                    derp_region: 901,
                    endpoints: Some(vec!["203.0.113.9:1234".parse().unwrap()]),
                    key: Some(NodePublic(Key([0x22; 32]))),
                    disco_key: Some(DiscoPublic(Key([0x33; 32]))),
                    online: Some(true),
                    last_seen: Some(t("2026-08-01T11:00:00Z")),
                    key_expiry: Some(t("2027-01-01T00:00:00Z")),
                    cap: 130,
                    cap_map: Some([("x".to_string(), None)].into()),
                    key_signature: Some(vec![1]),
                },
                PeerChange {
                    node_id: 3,
                    endpoints: Some(vec![]),
                    ..PeerChange::default()
                },
                PeerChange {
                    node_id: 42, // unknown: ignored
                    online: Some(true),
                    ..PeerChange::default()
                },
            ],
            ..MapResponse::default()
        };
        let up = nm.apply(r, t(NOW)).unwrap();
        assert_eq!(up.peers_modified, 2);
        let p = &nm.peers[&2];
        assert_eq!(p.home_derp, 901);
        assert_eq!(p.endpoints[0].to_string(), "203.0.113.9:1234");
        assert_eq!(p.key.0 .0, [0x22; 32]);
        assert_eq!(p.disco_key.0 .0, [0x33; 32]);
        assert_eq!(p.online, Some(true));
        assert_eq!(p.last_seen, Some(t("2026-08-01T11:00:00Z")));
        assert_eq!(p.key_expiry, t("2027-01-01T00:00:00Z"));
        assert_eq!(p.cap, 130);
        assert!(p.cap_map.contains_key("x"));
        assert_eq!(p.addresses.len(), 2, "unnamed fields untouched");
        assert!(
            nm.peers[&3].endpoints.is_empty(),
            "Some([]) clears endpoints"
        );
        assert!(!nm.peers.contains_key(&42));
    }

    #[test]
    fn online_and_seen_changes() {
        let mut nm = started();
        let r = MapResponse {
            online_change: [(2, false), (77, true)].into(),
            peer_seen_change: [(3, true)].into(),
            ..MapResponse::default()
        };
        nm.apply(r, t("2026-08-01T12:05:00Z")).unwrap();
        assert_eq!(nm.peers[&2].online, Some(false));
        assert_eq!(nm.peers[&3].last_seen, Some(t("2026-08-01T12:05:00Z")));
        let r = MapResponse {
            peer_seen_change: [(3, false)].into(),
            ..MapResponse::default()
        };
        nm.apply(r, t(NOW)).unwrap();
        assert_eq!(nm.peers[&3].last_seen, None);
    }

    #[test]
    fn derp_map_merge_rules() {
        let mut nm = started();
        // Regions nil keeps the old regions; HomeParams present with nil RegionScore keeps
        // the old scores.
        let r = MapResponse {
            derp_map: Some(DerpMap {
                regions: None,
                home_params: Some(DerpHomeParams { region_score: None }),
                omit_default_regions: false,
            }),
            ..MapResponse::default()
        };
        let up = nm.apply(r, t(NOW)).unwrap();
        assert!(!up.derp_map_changed);
        let dm = nm.derp_map.as_ref().unwrap();
        assert!(dm.regions.as_ref().unwrap().contains_key(&900));
        assert!(dm.omit_default_regions);
        assert_eq!(dm.region_score(900), Some(0.9));
        // New regions replace; null regions are dropped.
        let r = MapResponse {
            derp_map: Some(DerpMap {
                regions: Some([(901, Some(DerpRegion::default())), (902, None)].into()),
                ..DerpMap::default()
            }),
            ..MapResponse::default()
        };
        assert!(nm.apply(r, t(NOW)).unwrap().derp_map_changed);
        let dm = nm.derp_map.as_ref().unwrap();
        assert_eq!(
            dm.regions
                .as_ref()
                .unwrap()
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [901]
        );
        assert!(dm.home_params.is_some(), "HomeParams nil = unchanged");
    }

    #[test]
    fn packet_filter_rules() {
        let mut nm = started();
        // PacketFilter (the "base" chunk) present but empty: deny all.
        let r = MapResponse {
            packet_filter: Some(vec![]),
            ..MapResponse::default()
        };
        assert!(nm.apply(r, t(NOW)).unwrap().packet_filter_changed);
        assert!(nm.packet_filter().is_empty());
        // Named chunks are concatenated in name order; null deletes one; "*": null clears.
        let rule = |s: &str| FilterRule {
            src_ips: vec![s.into()],
            ..FilterRule::default()
        };
        let r = MapResponse {
            packet_filters: Some(
                [
                    ("zz".to_string(), Some(vec![rule("z")])),
                    ("aa".to_string(), Some(vec![rule("a")])),
                ]
                .into(),
            ),
            ..MapResponse::default()
        };
        nm.apply(r, t(NOW)).unwrap();
        let srcs: Vec<String> = nm
            .packet_filter()
            .iter()
            .map(|r| r.src_ips[0].clone())
            .collect();
        assert_eq!(srcs, ["a", "z"]);
        let r = MapResponse {
            packet_filters: Some([("aa".to_string(), None)].into()),
            ..MapResponse::default()
        };
        nm.apply(r, t(NOW)).unwrap();
        assert_eq!(nm.packet_filter().len(), 1);
        let r = MapResponse {
            packet_filters: Some(
                [
                    ("*".to_string(), None),
                    ("new".to_string(), Some(vec![rule("n")])),
                ]
                .into(),
            ),
            ..MapResponse::default()
        };
        nm.apply(r, t(NOW)).unwrap();
        assert_eq!(nm.named_packet_filters.keys().collect::<Vec<_>>(), ["new"]);
    }

    #[test]
    fn dns_and_domain_replace_only_when_present() {
        let mut nm = started();
        let r = MapResponse {
            dns_config: Some(DnsConfig::default()),
            domain: "other.ts.net".into(),
            ..MapResponse::default()
        };
        let up = nm.apply(r, t(NOW)).unwrap();
        assert!(up.dns_changed && up.domain_changed);
        assert_eq!(nm.dns_config, Some(DnsConfig::default()));
        assert_eq!(nm.domain, "other.ts.net");
    }

    #[test]
    fn expired_peers_are_flagged_using_control_clock() {
        let mut nm = started();
        let mut p = peer(6, &["100.64.0.6/32"], None);
        p.key_expiry = t("2026-08-01T12:10:00Z");
        let r = MapResponse {
            peers_changed: vec![p],
            ..MapResponse::default()
        };
        nm.apply(r, t(NOW)).unwrap();
        assert!(!nm.peers[&6].expired);
        // Our clock says 12:00, control says 12:20: control's clock decides.
        let r = MapResponse {
            keep_alive: true,
            control_time: Some(t("2026-08-01T12:20:00Z")),
            ..MapResponse::default()
        };
        nm.apply(r, t(NOW)).unwrap();
        assert_eq!(nm.clock_delta_secs, 1200);
        assert!(nm.flag_expired_peers(t(NOW)));
        let p = &nm.peers[&6];
        assert!(p.expired && p.endpoints.is_empty() && p.home_derp == 0);
        assert!(!nm.peers[&2].expired, "zero KeyExpiry never expires");
        let cfg = dataplane_config(&nm, &prefs()).unwrap();
        assert!(cfg.peers.iter().all(|c| c.public_key != Key([6; 32])));
    }

    fn allowed(cfg: &Config, id: u8) -> Vec<String> {
        cfg.peers
            .iter()
            .find(|p| p.public_key == Key([id; 32]))
            .map(|p| p.allowed_ips.iter().map(ToString::to_string).collect())
            .unwrap_or_else(|| panic!("peer {id} not in config"))
    }

    #[test]
    fn config_from_netmap() {
        let nm = started();
        let cfg = dataplane_config(&nm, &prefs()).unwrap();
        assert_eq!(cfg.private_key, node_private());
        assert_eq!(cfg.mtu, 1280);
        assert_eq!(
            cfg.addresses,
            [
                IfAddr {
                    addr: "100.64.0.1".parse().unwrap(),
                    prefix_len: 32
                },
                IfAddr {
                    addr: "fd7a:115c:a1e0::1".parse().unwrap(),
                    prefix_len: 128
                },
            ]
        );
        assert_eq!(cfg.peers.len(), 2);
        assert_eq!(cfg.peers[0].public_key, Key([2; 32]));
        assert_eq!(
            cfg.peers[0].endpoint,
            Some("192.0.2.2:41641".parse().unwrap())
        );
        assert_eq!(cfg.peers[0].persistent_keepalive, None);
        assert_eq!(allowed(&cfg, 2), ["100.64.0.2/32", "fd7a:115c:a1e0::2/128"]);
        // Without --accept-routes and no exit node: the router gives only its address.
        assert_eq!(allowed(&cfg, 3), ["100.64.0.3/32"]);
    }

    #[test]
    fn accept_routes_adds_subnet_routes_but_not_exit_routes() {
        let nm = started();
        let p = Prefs {
            route_all: true,
            ..prefs()
        };
        let cfg = dataplane_config(&nm, &p).unwrap();
        // Go's prefix order: shorter prefixes first within a family.
        assert_eq!(allowed(&cfg, 3), ["192.168.1.0/24", "100.64.0.3/32"]);
    }

    #[test]
    fn exit_routes_only_for_the_selected_exit_node() {
        let mut nm = started();
        // Peer 2 also offers exit routes, but isn't selected.
        let mut p2 = nm.peers[&2].clone();
        p2.allowed_ips = Some(vec![pfx("100.64.0.2/32"), pfx("0.0.0.0/0"), pfx("::/0")]);
        nm.apply(
            MapResponse {
                peers_changed: vec![p2],
                ..MapResponse::default()
            },
            t(NOW),
        )
        .unwrap();
        let by_id = Prefs {
            exit_node_id: "stable-3".into(),
            ..prefs()
        };
        let cfg = dataplane_config(&nm, &by_id).unwrap();
        assert_eq!(allowed(&cfg, 3), ["0.0.0.0/0", "100.64.0.3/32", "::/0"]);
        assert_eq!(allowed(&cfg, 2), ["100.64.0.2/32"]);
        // Selected by IP instead: same result.
        let by_ip = Prefs {
            exit_node_ip: Some("100.64.0.3".parse().unwrap()),
            ..prefs()
        };
        assert_eq!(dataplane_config(&nm, &by_ip).unwrap(), cfg);
        assert_eq!(selected_exit_node(&nm, &by_ip).unwrap().id, 3);
    }

    #[test]
    fn selected_but_missing_exit_node_still_routes_default_into_the_tun() {
        let nm = started();
        let p = Prefs {
            exit_node_id: "gone".into(),
            ..prefs()
        };
        let routes: Vec<String> = tun_routes(&nm, &p)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(routes.contains(&"0.0.0.0/0".to_string()) && routes.contains(&"::/0".to_string()));
        let cfg = dataplane_config(&nm, &p).unwrap();
        assert!(cfg
            .peers
            .iter()
            .all(|c| c.allowed_ips.iter().all(|n| n.netmask() != 0)));
        // Without an exit node, no default route.
        let routes = tun_routes(&nm, &prefs());
        assert!(routes.iter().all(|r| !r.is_exit_route()));
    }

    #[test]
    fn unreachable_expired_and_self_peers_are_left_out() {
        let mut nm = started();
        let mut no_path = peer(7, &["100.64.0.7/32"], None);
        no_path.disco_key = DiscoPublic::ZERO;
        no_path.home_derp = 0;
        no_path.endpoints.clear();
        let mut expired = peer(8, &["100.64.0.8/32"], None);
        expired.expired = true;
        let mut me_again = peer(9, &["100.64.0.9/32"], None);
        me_again.key = NodePublic(node_private().public());
        let mut wg_only = peer(10, &["100.64.0.10/32"], None);
        wg_only.disco_key = DiscoPublic::ZERO;
        wg_only.home_derp = 0;
        wg_only.is_wireguard_only = true;
        nm.apply(
            MapResponse {
                peers_changed: vec![no_path, expired, me_again, wg_only],
                ..MapResponse::default()
            },
            t(NOW),
        )
        .unwrap();
        let cfg = dataplane_config(&nm, &prefs()).unwrap();
        let keys: Vec<u8> = cfg.peers.iter().map(|p| p.public_key.0[0]).collect();
        assert_eq!(keys, [2, 3, 10]);
    }

    #[test]
    fn vip_single_tailscale_ips_count_as_self_addresses() {
        // A single Tailscale IP in AllowedIPs that isn't in Addresses (a VIP service) is
        // routed without --accept-routes; a single non-Tailscale IP is a subnet route.
        let n = peer(
            2,
            &["100.64.0.2/32"],
            Some(&["100.64.0.2/32", "100.100.50.1/32", "10.1.1.1/32"]),
        );
        let got: Vec<String> = peer_allowed_ips(&n, &prefs(), false)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["100.64.0.2/32", "100.100.50.1/32"]);
    }

    #[test]
    fn config_needs_self_node_and_node_key() {
        assert_eq!(
            dataplane_config(&NetMap::new(), &prefs()),
            Err(ConfigError::NoSelfNode)
        );
        assert_eq!(
            dataplane_config(&started(), &Prefs::default()),
            Err(ConfigError::NoNodeKey)
        );
    }

    #[test]
    fn conversion_is_deterministic() {
        let nm = started();
        assert_eq!(
            dataplane_config(&nm, &prefs()).unwrap(),
            dataplane_config(&nm.clone(), &prefs()).unwrap()
        );
    }
}
