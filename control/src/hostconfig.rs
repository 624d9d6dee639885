//! What the netmap and prefs ask of the host and of the packet filter, as plain
//! values for the data plane (protocol.md §4.4, §4.6; tailscale-surface.md §5):
//!
//! * [`filter_config`]: the netmap's PacketFilter compiled into the data plane's
//!   rule form, and the destinations we accept from the tunnel — our addresses, the
//!   subnet routes control approved, and for an approved exit node the internet
//!   minus the LAN ("guest Wi-Fi": LAN access needs the LAN advertised explicitly);
//! * [`router_config`]: table 52's routes (peers, exit-node default routes, the LAN
//!   into the tunnel or around it), and the netfilter rules.
//!
//! Pure functions of their inputs; the host's interface addresses are passed in.

use crate::netmap::{selected_exit_node, tun_routes, NetMap};
use crate::prefs::{self, Prefs};
use crate::tailcfg::{is_tailscale_ip, FilterRule, IpPrefix, Node};
use ip_network::IpNetwork;
use ringscale_dataplane::filter::{self, DstRange, FilterConfig, IpRange, PortRange};
use ringscale_host::{NetfilterConfig, NetfilterMode, RouterConfig};
use ringscale_sys::ifaddrs::InterfaceAddr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Node capability: turn the CGNAT drop rule off (Go's nodecap).
pub const CAP_DISABLE_CGNAT_DROP: &str = "disable-linux-cgnat-drop-rule";

/// Ranges an exit node never forwards to, whatever the LAN looks like (Go's
/// `removeFromDefaultRoute`): private ranges, link-local, multicast, the tailnet.
const NOT_INTERNET: [(&str, u8); 9] = [
    ("192.168.0.0", 16),
    ("172.16.0.0", 12),
    ("10.0.0.0", 8),
    ("169.254.0.0", 16),
    ("224.0.0.0", 4),
    ("100.64.0.0", 10),
    ("fe80::", 10),
    ("ff00::", 8),
    ("fd7a:115c:a1e0::", 48),
];

/// The subnet and exit routes we advertise that control approved: they appear in our
/// own AllowedIPs (or PrimaryRoutes). We forward for nothing else.
pub fn approved_routes(netmap: &NetMap, prefs: &Prefs) -> Vec<IpPrefix> {
    let Some(me) = netmap.self_node.as_ref() else {
        return Vec::new();
    };
    let granted: Vec<IpPrefix> = me
        .allowed_ips_or_addresses()
        .iter()
        .chain(&me.primary_routes)
        .map(|p| p.masked())
        .collect();
    let mut out: Vec<IpPrefix> = prefs
        .advertise_routes
        .iter()
        .map(|p| p.masked())
        .filter(|p| granted.contains(p))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The host's LAN: prefixes of non-loopback interfaces that are neither single
/// addresses nor tailnet addresses, and the loopback prefixes, masked.
fn host_prefixes(host: &[InterfaceAddr]) -> (Vec<IpNetwork>, Vec<IpNetwork>) {
    let (mut internal, mut external) = (Vec::new(), Vec::new());
    for a in host {
        let max = if a.addr.is_ipv4() { 32 } else { 128 };
        if a.prefix_len >= max || is_tailscale_ip(a.addr) {
            continue;
        }
        if a.addr.is_ipv6() && (u128::from_be_bytes(v6_octets(a.addr)) >> 118) == 0x3fa {
            // fe80::/10 on every interface: never a route.
            continue;
        }
        let Ok(net) = IpNetwork::new_truncate(a.addr, a.prefix_len) else {
            continue;
        };
        let list = if a.loopback {
            &mut internal
        } else {
            &mut external
        };
        if !list.contains(&net) {
            list.push(net);
        }
    }
    (internal, external)
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

fn range_of(n: &IpNetwork) -> IpRange {
    IpRange::prefix(n.network_address(), n.netmask())
}

/// `all` minus every range in `holes`, as sorted ranges (one family).
fn subtract(all: IpRange, holes: &[IpRange]) -> Vec<IpRange> {
    let v6 = all.is_v6();
    let int = |a: IpAddr| match a {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    };
    let ip = |n: u128| {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(n))
        } else {
            IpAddr::V4(Ipv4Addr::from(n as u32))
        }
    };
    let mut hs: Vec<(u128, u128)> = holes
        .iter()
        .filter(|h| h.is_v6() == v6)
        .map(|h| (int(h.first), int(h.last)))
        .collect();
    hs.sort();
    let (mut lo, hi) = (int(all.first), int(all.last));
    let mut out = Vec::new();
    for (a, b) in hs {
        if b < lo || a > hi {
            continue;
        }
        if a > lo {
            out.push(IpRange {
                first: ip(lo),
                last: ip(a - 1),
            });
        }
        if b >= hi {
            return out;
        }
        lo = lo.max(b + 1);
    }
    out.push(IpRange {
        first: ip(lo),
        last: ip(hi),
    });
    out
}

/// What an exit node accepts traffic for in one family: everything but the LAN and
/// [`NOT_INTERNET`], plus the host's own LAN addresses (Go's `shrinkDefaultRoute`).
fn exit_local_nets(v6: bool, host: &[InterfaceAddr]) -> Vec<IpRange> {
    let (_, lan) = host_prefixes(host);
    let mut holes: Vec<IpRange> = lan.iter().map(range_of).collect();
    for (a, bits) in NOT_INTERNET {
        if let Ok(a) = a.parse::<IpAddr>() {
            holes.push(IpRange::prefix(a, bits));
        }
    }
    let all = if v6 { IpRange::ALL_V6 } else { IpRange::ALL_V4 };
    let mut out = subtract(all, &holes);
    for a in host {
        let forbidden = NOT_INTERNET.iter().any(|(n, b)| {
            n.parse::<IpAddr>()
                .is_ok_and(|n| IpRange::prefix(n, *b).contains(a.addr))
        });
        if a.addr.is_ipv6() == v6 && !a.loopback && !forbidden {
            out.push(IpRange::single(a.addr));
        }
    }
    out
}

/// The nodes' addresses that hold capability `cap` (for `cap:` sources).
fn addresses_with_cap<'a>(nodes: impl Iterator<Item = &'a Node>, cap: &str) -> Vec<IpRange> {
    nodes
        .filter(|n| n.has_cap(cap))
        .flat_map(|n| n.addresses.iter().map(|p| IpRange::single(p.addr())))
        .collect()
}

/// The netmap's PacketFilter in the data plane's form. Entries that do not parse
/// are skipped with a warning (Go keeps the rest too); legacy `SrcBits`/`Bits` make
/// the whole filter empty, as Go refuses such a filter.
pub fn compile_rules(rules: &[FilterRule], netmap: &NetMap) -> Vec<filter::FilterRule> {
    if rules
        .iter()
        .any(|r| !r.src_bits.is_empty() || r.dst_ports.iter().any(|d| d.bits.is_some()))
    {
        log::warn!("packet filter uses legacy SrcBits/Bits; refusing all inbound traffic");
        return Vec::new();
    }
    let nodes = || netmap.peers.values().chain(netmap.self_node.as_ref());
    let mut out = Vec::with_capacity(rules.len());
    for r in rules {
        let protos: Vec<u8> = if r.ip_proto.is_empty() {
            filter::FilterRule::DEFAULT_PROTOS.to_vec()
        } else {
            r.ip_proto
                .iter()
                .filter_map(|p| u8::try_from(*p).ok())
                .collect()
        };
        let mut srcs = Vec::new();
        for s in &r.src_ips {
            if let Some(cap) = s.strip_prefix("cap:") {
                srcs.extend(addresses_with_cap(nodes(), cap));
                continue;
            }
            match IpRange::parse_set(s) {
                Ok(v) => srcs.extend(v),
                Err(e) => log::warn!("{e}"),
            }
        }
        let mut dsts = Vec::new();
        for d in &r.dst_ports {
            match IpRange::parse_set(&d.ip) {
                Ok(v) => dsts.extend(v.into_iter().map(|net| DstRange {
                    net,
                    ports: PortRange {
                        first: d.ports.first,
                        last: d.ports.last,
                    },
                })),
                Err(e) => log::warn!("{e}"),
            }
        }
        out.push(filter::FilterRule { protos, srcs, dsts });
    }
    out
}

/// The inbound packet filter: rules from the netmap (none with shields up) and the
/// destinations this node accepts: its addresses and approved routes.
pub fn filter_config(netmap: &NetMap, prefs: &Prefs, host: &[InterfaceAddr]) -> FilterConfig {
    let rules = if prefs.shields_up {
        Vec::new()
    } else {
        compile_rules(&netmap.packet_filter(), netmap)
    };
    let mut local_nets: Vec<IpRange> = netmap
        .self_addresses()
        .iter()
        .map(|p| IpRange::prefix(p.addr(), p.bits()))
        .collect();
    for r in approved_routes(netmap, prefs) {
        if r.is_exit_route() {
            local_nets.extend(exit_local_nets(r.addr().is_ipv6(), host));
        } else {
            local_nets.push(IpRange::prefix(r.addr(), r.bits()));
        }
    }
    FilterConfig {
        rules,
        local_nets,
        open_tcp: Vec::new(),
    }
}

fn to_net(p: &IpPrefix) -> IpNetwork {
    p.to_network()
}

/// Everything the host router needs: table 52's routes and the netfilter rules.
/// `tun` and `port` are the engine's interface name and WireGuard port.
pub fn router_config(
    netmap: &NetMap,
    prefs: &Prefs,
    host: &[InterfaceAddr],
    tun: &str,
    port: u16,
) -> RouterConfig {
    let mut routes: Vec<IpNetwork> = tun_routes(netmap, prefs).iter().map(to_net).collect();
    let self_addrs = netmap.self_addresses();
    // Quad-100 (MagicDNS) is answered by the data plane behind the TUN.
    if self_addrs.iter().any(|a| a.is_ipv4()) {
        routes.push(IpNetwork::new(Ipv4Addr::new(100, 100, 100, 100), 32).expect("valid"));
    }
    if self_addrs.iter().any(|a| !a.is_ipv4()) {
        let q = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);
        routes.push(IpNetwork::new(q, 128).expect("valid"));
    }
    let mut local_routes = Vec::new();
    if prefs.exit_node_selected() {
        let (internal, external) = host_prefixes(host);
        // Loopback stays local; the LAN goes into the tunnel too unless allowed,
        // so that nothing leaks around the exit node.
        local_routes.extend(internal);
        if prefs.exit_node_allow_lan_access {
            local_routes.extend(external);
        } else {
            routes.extend(external);
        }
        if selected_exit_node(netmap, prefs).is_none() {
            log::warn!("the selected exit node is not in the netmap; blocking internet traffic");
        }
    }
    routes.sort();
    routes.dedup();
    local_routes.sort();
    local_routes.dedup();
    routes.retain(|r| !local_routes.contains(r));
    let cgnat_drop = !netmap
        .self_node
        .as_ref()
        .is_some_and(|n| n.has_cap(CAP_DISABLE_CGNAT_DROP));
    RouterConfig {
        routes,
        local_routes,
        netfilter: NetfilterConfig {
            mode: match prefs.netfilter_mode {
                prefs::NetfilterMode::On => NetfilterMode::On,
                prefs::NetfilterMode::NoDivert => NetfilterMode::NoDivert,
                prefs::NetfilterMode::Off => NetfilterMode::Off,
            },
            tun: tun.to_string(),
            local_addrs: self_addrs.iter().map(|p| p.addr()).collect(),
            port,
            snat: !prefs.no_snat,
            cgnat_drop,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tailcfg::{NetPortRange, NodePublic, PortRange as TsPorts};
    use ringscale_keys::Key;

    fn pfx(s: &str) -> IpPrefix {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(id: i64, addrs: &[&str], allowed: &[&str]) -> Node {
        Node {
            id,
            stable_id: format!("stable-{id}"),
            key: NodePublic(Key([id as u8; 32])),
            addresses: addrs.iter().map(|a| pfx(a)).collect(),
            allowed_ips: Some(addrs.iter().chain(allowed).map(|a| pfx(a)).collect()),
            endpoints: vec![format!("192.0.2.{id}:41641").parse().unwrap()],
            ..Node::default()
        }
    }

    /// Us (100.64.0.1), advertising 10.9.0.0/24, 10.8.0.0/24 and exit routes, of which
    /// control approved 10.9.0.0/24 and the exit routes; peer 2 offers exit routes and
    /// 172.20.0.0/16.
    fn netmap(filter: Vec<FilterRule>) -> (NetMap, Prefs) {
        let mut nm = NetMap::new();
        nm.self_node = Some(node(
            1,
            &["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
            &["10.9.0.0/24", "0.0.0.0/0", "::/0"],
        ));
        nm.peers.insert(
            2,
            node(
                2,
                &["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
                &["172.20.0.0/16", "0.0.0.0/0", "::/0"],
            ),
        );
        nm.named_packet_filters.insert("base".into(), filter);
        let mut prefs = Prefs {
            advertise_routes: vec![pfx("10.9.0.0/24"), pfx("10.8.0.0/24")],
            ..Prefs::default()
        };
        prefs.set_advertise_exit_node(true);
        (nm, prefs)
    }

    fn host() -> Vec<InterfaceAddr> {
        let a = |iface: &str, addr: &str, len: u8, lo: bool| InterfaceAddr {
            interface: iface.into(),
            addr: ip(addr),
            prefix_len: len,
            loopback: lo,
        };
        vec![
            a("lo", "127.0.0.1", 8, true),
            a("lo", "::1", 128, true),
            a("eth0", "198.51.100.7", 24, false),
            a("eth0", "fe80::1", 64, false),
            a("eth1", "192.168.50.1", 24, false),
            a("tailscale0", "100.64.0.1", 32, false),
        ]
    }

    fn local(cfg: &FilterConfig, addr: &str) -> bool {
        cfg.local_nets.iter().any(|r| r.contains(ip(addr)))
    }

    #[test]
    fn only_approved_advertised_routes_count() {
        let (nm, prefs) = netmap(vec![]);
        assert_eq!(
            approved_routes(&nm, &prefs),
            vec![pfx("0.0.0.0/0"), pfx("10.9.0.0/24"), pfx("::/0")]
        );
        let mut unapproved = nm.clone();
        unapproved.self_node.as_mut().unwrap().allowed_ips = None;
        assert!(approved_routes(&unapproved, &prefs).is_empty());
    }

    #[test]
    fn exit_node_accepts_the_internet_but_not_the_lan() {
        let (nm, prefs) = netmap(vec![]);
        let f = filter_config(&nm, &prefs, &host());
        assert!(local(&f, "100.64.0.1"));
        assert!(local(&f, "10.9.0.77"), "approved subnet route");
        assert!(!local(&f, "10.8.0.77"), "advertised but not approved");
        assert!(local(&f, "8.8.8.8"));
        assert!(local(&f, "2001:db8::8"));
        assert!(!local(&f, "198.51.100.99"), "the exit node's LAN");
        assert!(local(&f, "198.51.100.7"), "the exit node's own LAN address");
        assert!(!local(&f, "192.168.50.9"));
        assert!(!local(&f, "100.64.0.2"), "another tailnet node");
        assert!(!local(&f, "fd7a:115c:a1e0::2"));
        // Not advertising the exit routes: only our addresses and the subnet.
        let mut plain = prefs.clone();
        plain.set_advertise_exit_node(false);
        let f = filter_config(&nm, &plain, &host());
        assert!(!local(&f, "8.8.8.8"));
        assert!(local(&f, "10.9.0.1"));
    }

    #[test]
    fn rules_are_compiled_with_caps_and_protocols() {
        let rule = |src: &str, protos: Vec<i64>| FilterRule {
            src_ips: vec![src.into()],
            dst_ports: vec![NetPortRange {
                ip: "*".into(),
                ports: TsPorts {
                    first: 22,
                    last: 22,
                },
                ..Default::default()
            }],
            ip_proto: protos,
            ..Default::default()
        };
        let (mut nm, prefs) = netmap(vec![
            rule("100.64.0.0/10", vec![]),
            rule("cap:funnel", vec![6, 300, -1]),
            rule("bogus", vec![17]),
        ]);
        nm.peers
            .get_mut(&2)
            .unwrap()
            .cap_map
            .insert("funnel".into(), None);
        let f = filter_config(&nm, &prefs, &[]);
        assert_eq!(f.rules.len(), 3);
        assert_eq!(f.rules[0].protos, vec![6, 17, 1, 58]);
        assert_eq!(f.rules[0].dsts.len(), 2, "* is both families");
        assert_eq!(f.rules[1].protos, vec![6]);
        assert_eq!(
            f.rules[1].srcs,
            vec![
                IpRange::single(ip("100.64.0.2")),
                IpRange::single(ip("fd7a:115c:a1e0::2"))
            ]
        );
        assert!(f.rules[2].srcs.is_empty(), "unparsable source skipped");
        // Shields up: no rules at all.
        let mut shields = prefs.clone();
        shields.shields_up = true;
        assert!(filter_config(&nm, &shields, &[]).rules.is_empty());
        // Legacy bits: the whole filter is refused.
        let mut legacy = rule("*", vec![]);
        legacy.src_bits = vec![32];
        let (nm, prefs) = netmap(vec![rule("*", vec![]), legacy]);
        assert!(filter_config(&nm, &prefs, &[]).rules.is_empty());
    }

    #[test]
    fn using_an_exit_node_routes_everything_and_the_lan_unless_allowed() {
        let (nm, mut prefs) = netmap(vec![]);
        prefs.exit_node_id = "stable-2".into();
        let r = router_config(&nm, &prefs, &host(), "tailscale0", 41641);
        let has =
            |v: &[IpNetwork], s: &str| v.contains(&s.parse::<IpPrefix>().unwrap().to_network());
        assert!(has(&r.routes, "0.0.0.0/0") && has(&r.routes, "::/0"));
        assert!(has(&r.routes, "100.64.0.2/32"));
        assert!(has(&r.routes, "198.51.100.0/24"), "LAN into the tunnel");
        assert!(has(&r.routes, "192.168.50.0/24"));
        assert!(has(&r.routes, "100.100.100.100/32"));
        assert!(!has(&r.routes, "172.20.0.0/16"), "no --accept-routes");
        assert!(has(&r.local_routes, "127.0.0.0/8"));
        assert!(!r
            .routes
            .iter()
            .chain(&r.local_routes)
            .any(|n| n.network_address().is_ipv6() && n.netmask() == 64));

        prefs.exit_node_allow_lan_access = true;
        prefs.route_all = true;
        let r = router_config(&nm, &prefs, &host(), "tailscale0", 41641);
        assert!(
            has(&r.local_routes, "198.51.100.0/24"),
            "LAN around the tunnel"
        );
        assert!(!has(&r.routes, "198.51.100.0/24"));
        assert!(has(&r.routes, "172.20.0.0/16"), "--accept-routes");
        assert_eq!(r.netfilter.mode, NetfilterMode::On);
        assert!(r.netfilter.snat && r.netfilter.cgnat_drop);

        // No exit node: no default routes, no LAN routes.
        prefs.exit_node_id.clear();
        prefs.no_snat = true;
        prefs.netfilter_mode = prefs::NetfilterMode::NoDivert;
        let r = router_config(&nm, &prefs, &host(), "tailscale0", 41641);
        assert!(!has(&r.routes, "0.0.0.0/0") && r.local_routes.is_empty());
        assert!(!has(&r.routes, "198.51.100.0/24"));
        assert_eq!(r.netfilter.mode, NetfilterMode::NoDivert);
        assert!(!r.netfilter.snat);
    }
}
