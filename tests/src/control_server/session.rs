//! One map session (protocol.md §4.2, §4.3): the first message is the full map, later
//! ones are deltas computed by comparing what the node was last told with what it should
//! know now. Comparing snapshots, rather than tracking events, means a delta can never
//! be lost or applied twice: whatever changed in between (joins, removals, endpoint or
//! online changes, route approvals, new filters) comes out of one comparison.
//!
//! Also the framing of the stream: a little-endian u32 length, then the JSON message,
//! wrapped in a zstd frame when the client asked for `Compress: "zstd"`.

use std::collections::BTreeMap;

use ringscale_control::tailcfg::{
    DerpMap, DnsConfig, FilterRule, GoTime, MapResponse, Node, NodeId, PeerChange, UserProfile,
};

use super::zstd;

/// What one node is told about the tailnet at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionView {
    pub self_node: Node,
    pub peers: BTreeMap<NodeId, Node>,
    pub dns_config: DnsConfig,
    pub derp_map: DerpMap,
    pub packet_filter: Vec<FilterRule>,
    pub domain: String,
    pub user_profiles: Vec<UserProfile>,
}

/// The first message of a session: everything.
pub fn full_map(view: &SessionView, now: GoTime) -> MapResponse {
    MapResponse {
        node: Some(view.self_node.clone()),
        derp_map: Some(view.derp_map.clone()),
        // Sorted by ID (BTreeMap order), as clients expect.
        peers: Some(view.peers.values().cloned().collect()),
        dns_config: Some(view.dns_config.clone()),
        domain: view.domain.clone(),
        collect_services: Some(false),
        packet_filter: Some(view.packet_filter.clone()),
        user_profiles: view.user_profiles.clone(),
        control_time: Some(now),
        ..MapResponse::default()
    }
}

/// A keep-alive message.
pub fn keep_alive() -> MapResponse {
    MapResponse {
        keep_alive: true,
        ..MapResponse::default()
    }
}

/// The message that brings a node from `last` to `now`, None if nothing it can see
/// changed. Peers new or changed in fields a patch cannot carry go in `PeersChanged`
/// whole; changes only to endpoints, disco key, key, key expiry, home DERP, capability
/// version, online state or last-seen time go in `PeersChangedPatch`.
pub fn delta(last: &SessionView, now: &SessionView) -> Option<MapResponse> {
    let mut msg = MapResponse::default();
    let mut changed = false;
    if last.self_node != now.self_node {
        msg.node = Some(now.self_node.clone());
        changed = true;
    }
    for (id, peer) in &now.peers {
        match last.peers.get(id) {
            None => msg.peers_changed.push(peer.clone()),
            Some(old) if old == peer => {}
            Some(old) => match patch(old, peer) {
                Some(p) => msg.peers_changed_patch.push(p),
                None => msg.peers_changed.push(peer.clone()),
            },
        }
    }
    msg.peers_removed = last
        .peers
        .keys()
        .filter(|id| !now.peers.contains_key(id))
        .copied()
        .collect();
    changed |= !msg.peers_changed.is_empty()
        || !msg.peers_changed_patch.is_empty()
        || !msg.peers_removed.is_empty();
    if last.dns_config != now.dns_config {
        msg.dns_config = Some(now.dns_config.clone());
        changed = true;
    }
    if last.derp_map != now.derp_map {
        msg.derp_map = Some(now.derp_map.clone());
        changed = true;
    }
    if last.packet_filter != now.packet_filter {
        msg.packet_filter = Some(now.packet_filter.clone());
        changed = true;
    }
    if last.domain != now.domain {
        msg.domain = now.domain.clone();
        changed = true;
    }
    let new_profiles: Vec<UserProfile> = now
        .user_profiles
        .iter()
        .filter(|p| !last.user_profiles.contains(p))
        .cloned()
        .collect();
    if !new_profiles.is_empty() {
        msg.user_profiles = new_profiles;
        changed = true;
    }
    changed.then_some(msg)
}

/// A `PeerChange` taking `old` to `new`, if every difference is one a patch can carry.
fn patch(old: &Node, new: &Node) -> Option<PeerChange> {
    // Compare with the patchable fields blanked: anything left differing needs the
    // whole node.
    let blank = |n: &Node| Node {
        endpoints: Vec::new(),
        disco_key: Default::default(),
        key: Default::default(),
        key_expiry: GoTime::ZERO,
        home_derp: 0,
        legacy_derp_string: String::new(),
        cap: 0,
        online: None,
        last_seen: None,
        ..n.clone()
    };
    if blank(old) != blank(new) {
        return None;
    }
    // A patch cannot clear LastSeen or HomeDERP (zero/absent means "unchanged").
    if (old.last_seen.is_some() && new.last_seen.is_none())
        || (old.home_derp != 0 && new.home_derp == 0)
        || (old.cap != 0 && new.cap == 0)
        || (old.online.is_some() && new.online.is_none())
    {
        return None;
    }
    let differs = |a, b| a != b;
    Some(PeerChange {
        node_id: new.id,
        derp_region: if differs(old.home_derp, new.home_derp) {
            new.home_derp
        } else {
            0
        },
        cap: if differs(old.cap, new.cap) {
            new.cap
        } else {
            0
        },
        endpoints: (old.endpoints != new.endpoints).then(|| new.endpoints.clone()),
        key: (old.key != new.key).then_some(new.key),
        disco_key: (old.disco_key != new.disco_key).then_some(new.disco_key),
        online: (old.online != new.online).then_some(new.online).flatten(),
        last_seen: (old.last_seen != new.last_seen)
            .then_some(new.last_seen)
            .flatten(),
        key_expiry: (old.key_expiry != new.key_expiry).then_some(new.key_expiry),
        ..PeerChange::default()
    })
}

/// One message of the stream: u32 little-endian length, then the JSON (in a zstd frame
/// if `zstd`).
pub fn encode_message(msg: &MapResponse, zstd: bool) -> Vec<u8> {
    // Serializing plain data structures cannot fail (no maps with non-string keys other
    // than integer IDs, which serde_json writes as strings).
    let json = serde_json::to_vec(msg).expect("MapResponse serializes");
    let body = if zstd { zstd::raw_frame(&json) } else { json };
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringscale_control::tailcfg::IpPrefix;
    use std::net::SocketAddr;

    fn node(id: NodeId) -> Node {
        Node {
            id,
            name: format!("n{id}.tailnet.test."),
            addresses: vec![format!("100.64.0.{id}/32").parse::<IpPrefix>().unwrap()],
            online: Some(true),
            ..Node::default()
        }
    }

    fn view(peers: &[Node]) -> SessionView {
        SessionView {
            self_node: node(1),
            peers: peers.iter().map(|p| (p.id, p.clone())).collect(),
            dns_config: DnsConfig::default(),
            derp_map: DerpMap::default(),
            packet_filter: Vec::new(),
            domain: "tailnet.test".into(),
            user_profiles: Vec::new(),
        }
    }

    #[test]
    fn unchanged_view_gives_no_message() {
        let v = view(&[node(2)]);
        assert_eq!(delta(&v, &v.clone()), None);
    }

    #[test]
    fn join_and_leave_are_peers_changed_and_removed() {
        let before = view(&[node(2), node(3)]);
        let after = view(&[node(2), node(4)]);
        let d = delta(&before, &after).unwrap();
        assert_eq!(d.peers_changed, vec![node(4)]);
        assert_eq!(d.peers_removed, vec![3]);
        assert!(d.node.is_none() && d.peers.is_none() && d.packet_filter.is_none());
    }

    #[test]
    fn endpoint_and_online_changes_are_patches() {
        let before = view(&[node(2)]);
        let mut moved = node(2);
        moved.endpoints = vec!["10.0.0.2:41641".parse::<SocketAddr>().unwrap()];
        moved.online = Some(false);
        moved.last_seen = Some(GoTime::from_unix(1_700_000_000, 0));
        let d = delta(&before, &view(&[moved.clone()])).unwrap();
        assert!(d.peers_changed.is_empty());
        assert_eq!(
            d.peers_changed_patch,
            vec![PeerChange {
                node_id: 2,
                endpoints: Some(moved.endpoints.clone()),
                online: Some(false),
                last_seen: moved.last_seen,
                ..PeerChange::default()
            }]
        );
        // Coming back online clears LastSeen, which a patch cannot say: whole node.
        let d = delta(&view(&[moved]), &view(&[node(2)])).unwrap();
        assert_eq!(d.peers_changed, vec![node(2)]);
    }

    #[test]
    fn other_changes_send_the_whole_node_or_the_setting() {
        let before = view(&[node(2)]);
        let mut routed = node(2);
        routed.allowed_ips = Some(vec!["10.1.0.0/24".parse().unwrap()]);
        let mut after = view(&[routed.clone()]);
        after.packet_filter = vec![FilterRule::default()];
        let d = delta(&before, &after).unwrap();
        assert_eq!(d.peers_changed, vec![routed]);
        assert_eq!(d.packet_filter, Some(vec![FilterRule::default()]));
    }

    #[test]
    fn framing_is_little_endian_length_then_body() {
        let msg = keep_alive();
        let plain = encode_message(&msg, false);
        let json = br#"{"KeepAlive":true}"#;
        assert_eq!(&plain[..4], &(json.len() as u32).to_le_bytes());
        assert_eq!(&plain[4..], json);
        let z = encode_message(&msg, true);
        let frame = zstd::raw_frame(json);
        assert_eq!(&z[..4], &(frame.len() as u32).to_le_bytes());
        assert_eq!(&z[4..], frame.as_slice());
    }
}
