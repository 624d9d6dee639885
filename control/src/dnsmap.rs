//! The resolver configuration for quad-100, from the netmap and the prefs, as Go's
//! `dnsConfigForNetmap` and its DNS manager build it (protocol.md §9.2): host records
//! for every node and ExtraRecord, the authoritative domains, the default and
//! split-DNS upstreams, the exit node's DoH endpoint when one is used, and the host's
//! original nameservers as the last resort for everything else.
//!
//! A pure function of its inputs; the daemon hands the result to the data plane.

use crate::netmap::{selected_exit_node, NetMap};
use crate::prefs::Prefs;
use crate::tailcfg::{Node, Resolver as TsResolver};
use ringscale_dns::resolver::name_within;
use ringscale_dns::{is_quad100, ResolverConfig, Upstream};
use std::net::{IpAddr, SocketAddr};

/// Node attribute that lets MagicDNS answer AAAA for nodes that also have IPv4.
pub const NODE_ATTR_MAGICDNS_AAAA: &str = "magicdns-aaaa";
/// First capability version whose nodes serve DoH on their PeerAPI.
const CAP_VER_DOH: i64 = 26;
/// Hostinfo service: "my PeerAPI serves /dns-query" (the port field is a version).
pub const SERVICE_DNS_PROXY: &str = "peerapi-dns-proxy";
pub const SERVICE_PEERAPI4: &str = "peerapi4";
pub const SERVICE_PEERAPI6: &str = "peerapi6";

/// The reverse zones of the tailnet ranges: 100.64.0.0/10 (one zone per second octet,
/// 64–127) and fd7a:115c:a1e0::/48.
pub fn tailnet_reverse_zones() -> Vec<String> {
    let mut z: Vec<String> = (64..=127)
        .map(|o| format!("{o}.100.in-addr.arpa."))
        .collect();
    z.push("0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.".into());
    z
}

/// A name as a lower-case FQDN with the trailing dot; None for the empty name.
pub fn fqdn(name: &str) -> Option<String> {
    let n = name.trim().trim_end_matches('.');
    if n.is_empty() {
        return None;
    }
    Some(format!("{}.", n.to_ascii_lowercase()))
}

/// The TCP port of a node's PeerAPI for one address family, from its Hostinfo.
pub fn peerapi_port(node: &Node, v4: bool) -> Option<u16> {
    let want = if v4 {
        SERVICE_PEERAPI4
    } else {
        SERVICE_PEERAPI6
    };
    node.hostinfo
        .as_ref()?
        .services
        .iter()
        .find(|s| s.proto == want && s.port != 0)
        .map(|s| s.port)
}

/// Can this peer proxy DNS for its exit-node clients (Go `peerCanProxyDNS`)?
pub fn peer_can_proxy_dns(peer: &Node) -> bool {
    if peer.cap >= CAP_VER_DOH {
        return true;
    }
    peer.hostinfo.as_ref().is_some_and(|h| {
        h.services
            .iter()
            .any(|s| s.proto == SERVICE_DNS_PROXY && s.port >= 1)
    })
}

/// The peer's DoH URL on its PeerAPI: IPv4 when we have IPv4 and it serves peerapi4,
/// else IPv6 (Go `peerAPIBase` + `/dns-query`).
pub fn peer_doh_url(peer: &Node, self_has_v4: bool) -> Option<String> {
    let addr = |v4: bool| {
        peer.addresses
            .iter()
            .map(|p| p.addr())
            .find(|a| a.is_ipv4() == v4)
    };
    if self_has_v4 {
        if let (Some(ip), Some(port)) = (addr(true), peerapi_port(peer, true)) {
            return Some(format!("http://{ip}:{port}/dns-query"));
        }
    }
    let (ip, port) = (addr(false)?, peerapi_port(peer, false)?);
    Some(format!("http://{}/dns-query", SocketAddr::new(ip, port)))
}

fn upstreams(resolvers: &[TsResolver]) -> Vec<Upstream> {
    resolvers
        .iter()
        .filter_map(|r| {
            let u = Upstream::parse(&r.addr);
            if u.is_none() {
                log::debug!("dns: ignoring resolver {:?} (unsupported form)", r.addr);
            }
            u
        })
        .collect()
}

/// Builds quad-100's configuration. `os_nameservers` are the host's nameservers from
/// before we pointed it at quad-100: with accept-DNS on they answer what no DNSConfig
/// resolver covers (Go's DNS manager does the same where the OS cannot split DNS).
pub fn resolver_config(
    netmap: &NetMap,
    prefs: &Prefs,
    os_nameservers: &[IpAddr],
) -> ResolverConfig {
    let mut cfg = ResolverConfig::default();
    let Some(self_node) = netmap.self_node.as_ref() else {
        return cfg;
    };
    if self_node.expired {
        return cfg;
    }
    let self_addrs: Vec<IpAddr> = self_node.addresses.iter().map(|p| p.addr()).collect();
    let self_v6_only =
        self_addrs.iter().any(|a| a.is_ipv6()) && !self_addrs.iter().any(|a| a.is_ipv4());
    let want_aaaa = self_node.has_cap(NODE_ATTR_MAGICDNS_AAAA);

    // Host records, unconditionally: quad-100 answers MagicDNS names even when the OS
    // is not pointed at it.
    for node in std::iter::once(self_node).chain(netmap.peers.values()) {
        let Some(name) = fqdn(&node.name) else {
            continue;
        };
        let addrs: Vec<IpAddr> = node.addresses.iter().map(|p| p.addr()).collect();
        let has_v4 = addrs.iter().any(|a| a.is_ipv4());
        let ips: Vec<IpAddr> = addrs
            .into_iter()
            .filter(|a| {
                if self_v6_only {
                    a.is_ipv6()
                } else {
                    // Go leaves out the IPv6 address of a node that has IPv4, unless
                    // control grants `magicdns-aaaa`.
                    !(a.is_ipv6() && has_v4 && !want_aaaa)
                }
            })
            .collect();
        if !ips.is_empty() {
            cfg.hosts.insert(name, ips);
        }
    }
    let Some(dns) = netmap.dns_config.as_ref() else {
        return cfg;
    };
    for rec in &dns.extra_records {
        if !matches!(rec.record_type.as_str(), "" | "A" | "AAAA") {
            continue;
        }
        let (Ok(ip), Some(name)) = (rec.value.trim().parse::<IpAddr>(), fqdn(&rec.name)) else {
            continue;
        };
        cfg.hosts.entry(name).or_default().push(ip);
    }
    if !prefs.corp_dns {
        return cfg;
    }
    cfg.search_domains = dns
        .domains
        .iter()
        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect();
    cfg.short_names = dns.proxied;
    if dns.proxied {
        let suffix = netmap.magic_dns_suffix();
        if let Some(s) = fqdn(&suffix) {
            cfg.local_domains.push(s);
        }
        cfg.local_domains.extend(tailnet_reverse_zones());
    }

    let mut defaults: Vec<Upstream> = Vec::new();
    let mut routes: Vec<(String, Vec<TsResolver>)> = dns
        .routes
        .iter()
        .filter_map(|(suffix, rs)| Some((fqdn(suffix)?, rs.clone().unwrap_or_default())))
        .collect();
    let exit = selected_exit_node(netmap, prefs);
    let exit_doh = exit
        .filter(|n| peer_can_proxy_dns(n))
        .and_then(|n| peer_doh_url(n, self_addrs.iter().any(|a| a.is_ipv4())));
    if let Some(url) = exit_doh {
        // An exit node that proxies DNS gets everything, except resolvers marked for
        // use with exit nodes; split routes keep only such resolvers.
        let marked: Vec<TsResolver> = dns
            .resolvers
            .iter()
            .filter(|r| r.use_with_exit_node)
            .cloned()
            .collect();
        defaults = if marked.is_empty() {
            vec![Upstream::Doh(url)]
        } else {
            upstreams(&marked)
        };
        routes = routes
            .into_iter()
            .filter_map(|(s, rs)| {
                if rs.is_empty() {
                    return Some((s, rs));
                }
                let kept: Vec<TsResolver> =
                    rs.into_iter().filter(|r| r.use_with_exit_node).collect();
                (!kept.is_empty()).then_some((s, kept))
            })
            .collect();
    } else if !dns.resolvers.is_empty() {
        defaults = upstreams(&dns.resolvers);
    } else if let Some(n) = exit.filter(|n| n.is_wireguard_only) {
        defaults = upstreams(&n.exit_node_dns_resolvers);
    }
    for (suffix, rs) in routes {
        if rs.is_empty() {
            // "Answer from quad-100 only".
            cfg.local_domains.push(suffix);
        } else {
            let ups = upstreams(&rs);
            if !ups.is_empty() {
                cfg.routes.push((suffix, ups));
            }
        }
    }
    if defaults.is_empty() && prefs.exit_node_selected() {
        // An exit node too old for DoH: the LAN resolvers are likely out of reach.
        defaults = upstreams(&dns.fallback_resolvers);
    }
    // ExtraRecords are answered here even when no domain covers them.
    let names: Vec<String> = dns
        .extra_records
        .iter()
        .filter_map(|r| fqdn(&r.name))
        .collect();
    for name in names {
        let covered = cfg.routes.iter().any(|(s, _)| name_within(&name, s))
            || cfg.local_domains.iter().any(|s| name_within(&name, s));
        if !covered {
            cfg.local_domains.push(name);
        }
    }
    if defaults.is_empty() {
        defaults = os_nameservers
            .iter()
            .filter(|ip| !is_quad100(**ip))
            .map(|ip| Upstream::Dns(SocketAddr::new(*ip, 53)))
            .collect();
    }
    if !defaults.is_empty() {
        cfg.routes.push((".".into(), defaults));
    }
    cfg.local_domains.sort();
    cfg.local_domains.dedup();
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tailcfg::{DnsConfig, DnsRecord, Hostinfo, IpPrefix, Service};
    use std::collections::BTreeMap;

    fn pfx(s: &str) -> IpPrefix {
        s.parse().unwrap()
    }

    fn node(id: i64, name: &str, addrs: &[&str]) -> Node {
        Node {
            id,
            stable_id: format!("n{id}"),
            name: name.into(),
            addresses: addrs.iter().map(|a| pfx(a)).collect(),
            ..Node::default()
        }
    }

    fn resolver(addr: &str, with_exit: bool) -> TsResolver {
        TsResolver {
            addr: addr.into(),
            use_with_exit_node: with_exit,
            ..Default::default()
        }
    }

    fn netmap(dns: DnsConfig) -> NetMap {
        let mut peers = BTreeMap::new();
        peers.insert(
            2,
            node(
                2,
                "Peer.tailnet.test.",
                &["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
            ),
        );
        let mut exit = node(
            3,
            "exit.tailnet.test.",
            &["100.64.0.3/32", "fd7a:115c:a1e0::3/128"],
        );
        exit.hostinfo = Some(Hostinfo {
            services: vec![
                Service {
                    proto: SERVICE_PEERAPI4.into(),
                    port: 40123,
                    ..Default::default()
                },
                Service {
                    proto: SERVICE_PEERAPI6.into(),
                    port: 40124,
                    ..Default::default()
                },
                Service {
                    proto: SERVICE_DNS_PROXY.into(),
                    port: 1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        peers.insert(3, exit);
        NetMap {
            self_node: Some(node(
                1,
                "self.tailnet.test.",
                &["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
            )),
            peers,
            dns_config: Some(dns),
            ..NetMap::default()
        }
    }

    fn magic() -> DnsConfig {
        DnsConfig {
            domains: vec!["tailnet.test".into()],
            proxied: true,
            ..DnsConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn prefs() -> Prefs {
        Prefs {
            corp_dns: true,
            ..Prefs::default()
        }
    }

    #[test]
    fn nodes_become_lower_cased_host_records_without_aaaa_by_default() {
        let c = resolver_config(&netmap(magic()), &prefs(), &[]);
        assert_eq!(c.hosts["peer.tailnet.test."], vec![ip("100.64.0.2")]);
        assert_eq!(c.hosts["self.tailnet.test."], vec![ip("100.64.0.1")]);
        assert!(c.short_names);
        assert_eq!(c.search_domains, vec!["tailnet.test".to_string()]);
        assert!(c.local_domains.contains(&"tailnet.test.".to_string()));
        assert!(c
            .local_domains
            .contains(&"64.100.in-addr.arpa.".to_string()));
        assert!(c
            .local_domains
            .contains(&"127.100.in-addr.arpa.".to_string()));
        assert!(c.routes.is_empty(), "no resolvers anywhere: {:?}", c.routes);
    }

    #[test]
    fn the_magicdns_aaaa_attribute_adds_ipv6() {
        let mut nm = netmap(magic());
        nm.self_node
            .as_mut()
            .unwrap()
            .cap_map
            .insert(NODE_ATTR_MAGICDNS_AAAA.into(), None);
        let c = resolver_config(&nm, &prefs(), &[]);
        assert_eq!(
            c.hosts["peer.tailnet.test."],
            vec![ip("100.64.0.2"), ip("fd7a:115c:a1e0::2")]
        );
    }

    #[test]
    fn extra_records_split_routes_and_defaults() {
        let mut dns = magic();
        dns.resolvers = vec![resolver("192.0.2.53", false)];
        dns.routes.insert(
            "corp.example".into(),
            Some(vec![resolver("192.0.2.54:5353", false)]),
        );
        dns.routes.insert("local.example.".into(), None);
        dns.extra_records = vec![
            DnsRecord {
                name: "Extra.Example.".into(),
                record_type: "".into(),
                value: "100.64.0.9".into(),
            },
            DnsRecord {
                name: "txt.example.".into(),
                record_type: "TXT".into(),
                value: "x".into(),
            },
        ];
        let c = resolver_config(&netmap(dns), &prefs(), &[ip("10.0.0.1")]);
        assert_eq!(c.hosts["extra.example."], vec![ip("100.64.0.9")]);
        assert!(!c.hosts.contains_key("txt.example."));
        assert!(c.local_domains.contains(&"extra.example.".to_string()));
        assert!(c.local_domains.contains(&"local.example.".to_string()));
        assert!(c.routes.contains(&(
            "corp.example.".into(),
            vec![Upstream::Dns("192.0.2.54:5353".parse().unwrap())]
        )));
        // DNSConfig resolvers win over the host's own.
        assert_eq!(
            c.default_upstreams(),
            &[Upstream::Dns("192.0.2.53:53".parse().unwrap())]
        );
    }

    #[test]
    fn the_host_resolvers_are_the_fallback_but_never_quad100() {
        let c = resolver_config(
            &netmap(magic()),
            &prefs(),
            &[ip("100.100.100.100"), ip("10.0.0.1")],
        );
        assert_eq!(
            c.default_upstreams(),
            &[Upstream::Dns("10.0.0.1:53".parse().unwrap())]
        );
    }

    #[test]
    fn without_accept_dns_only_host_records_remain() {
        let mut dns = magic();
        dns.resolvers = vec![resolver("192.0.2.53", false)];
        let p = Prefs {
            corp_dns: false,
            ..Prefs::default()
        };
        let c = resolver_config(&netmap(dns), &p, &[ip("10.0.0.1")]);
        assert!(c.hosts.contains_key("peer.tailnet.test."));
        assert!(c.routes.is_empty() && c.local_domains.is_empty() && c.search_domains.is_empty());
    }

    #[test]
    fn an_exit_node_that_proxies_dns_gets_the_default_route() {
        let mut dns = magic();
        dns.resolvers = vec![resolver("192.0.2.53", false)];
        dns.routes.insert(
            "corp.example.".into(),
            Some(vec![resolver("192.0.2.54", false)]),
        );
        dns.routes.insert(
            "keep.example.".into(),
            Some(vec![resolver("192.0.2.55", true)]),
        );
        let p = Prefs {
            exit_node_id: "n3".into(),
            ..prefs()
        };
        let c = resolver_config(&netmap(dns.clone()), &p, &[ip("10.0.0.1")]);
        assert_eq!(
            c.default_upstreams(),
            &[Upstream::Doh("http://100.64.0.3:40123/dns-query".into())]
        );
        assert!(!c.routes.iter().any(|(s, _)| s == "corp.example."));
        assert!(c.routes.iter().any(|(s, _)| s == "keep.example."));
        // Resolvers marked for exit-node use take over from the DoH endpoint.
        dns.resolvers.push(resolver("192.0.2.56", true));
        let c = resolver_config(&netmap(dns), &p, &[]);
        assert_eq!(
            c.default_upstreams(),
            &[Upstream::Dns("192.0.2.56:53".parse().unwrap())]
        );
    }

    #[test]
    fn an_expired_self_node_gets_nothing() {
        let mut nm = netmap(magic());
        nm.self_node.as_mut().unwrap().expired = true;
        assert_eq!(
            resolver_config(&nm, &prefs(), &[]),
            ResolverConfig::default()
        );
    }

    #[test]
    fn doh_urls_follow_the_advertised_ports() {
        let nm = netmap(magic());
        let exit = &nm.peers[&3];
        assert!(peer_can_proxy_dns(exit));
        assert!(!peer_can_proxy_dns(&nm.peers[&2]));
        assert_eq!(
            peer_doh_url(exit, false).unwrap(),
            "http://[fd7a:115c:a1e0::3]:40124/dns-query"
        );
    }
}
