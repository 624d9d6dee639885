//! The packet filter (Tailscale's ACLs) for traffic arriving from the tunnel, with
//! the semantics of Go's `wgengine/filter` (protocol.md §4.4):
//!
//! * multicast and link-local destinations are dropped both ways; so are packets
//!   that cannot be parsed (including fragment tricks); later fragments pass;
//! * inbound, the destination must be one of ours (`local_nets`);
//! * TCP without SYN passes (it belongs to a connection that a SYN opened, which was
//!   checked); a SYN needs a rule for its protocol, source, destination and port;
//! * UDP and SCTP need a rule, unless they answer a flow we opened (remembered in
//!   [`flows::FlowTable`] from outbound packets);
//! * ICMP echo replies and errors pass; other ICMP passes if any rule allows the
//!   source to reach the destination at all;
//! * TSMP (99) passes; other protocols need a rule for them that opens all ports.
//!
//! Rules are compiled once per configuration into integer ranges per address family,
//! so a verdict is a few comparisons with no allocation and no lock.

pub mod flows;
pub mod packet;
pub mod rules;

pub use rules::{DstRange, FilterConfig, FilterParseError, FilterRule, IpRange, PortRange};

use flows::{FlowTable, Tuple};
use packet::{Parsed, Proto};
use ringscale_wire::ip::protocol::{ICMPV4, ICMPV6, SCTP, TCP, UDP};
use ringscale_wire::tcp;
use std::net::IpAddr;
use std::sync::Arc;

/// What to do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop(DropReason),
}

/// Why a packet was dropped, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Malformed,
    Multicast,
    LinkLocal,
    /// Addressed to something this node neither is nor forwards for.
    NotLocal,
    /// No rule allows it.
    NoRule,
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

#[derive(Clone, Copy, Debug)]
struct Range {
    lo: u128,
    hi: u128,
}

impl Range {
    fn of(r: &IpRange) -> Range {
        Range {
            lo: to_int(r.first),
            hi: to_int(r.last),
        }
    }

    #[inline]
    fn contains(&self, a: u128) -> bool {
        self.lo <= a && a <= self.hi
    }
}

/// A set of protocol numbers as a 256-bit map.
#[derive(Clone, Copy, Debug, Default)]
struct ProtoSet([u64; 4]);

impl ProtoSet {
    fn insert(&mut self, p: u8) {
        self.0[(p >> 6) as usize] |= 1 << (p & 63);
    }

    #[inline]
    fn contains(&self, p: u8) -> bool {
        self.0[(p >> 6) as usize] & (1 << (p & 63)) != 0
    }
}

#[derive(Debug)]
struct Dst {
    net: Range,
    first_port: u16,
    last_port: u16,
}

#[derive(Debug)]
struct Rule {
    protos: ProtoSet,
    srcs: Vec<Range>,
    dsts: Vec<Dst>,
}

impl Rule {
    #[inline]
    fn src_matches(&self, a: u128) -> bool {
        self.srcs.iter().any(|r| r.contains(a))
    }
}

/// The rules of one address family; a rule is kept only if it has sources and
/// destinations in that family (as Go's `matchesFamily`).
#[derive(Debug, Default)]
struct Family {
    rules: Vec<Rule>,
    /// Sorted, merged.
    local: Vec<Range>,
    open_tcp: Vec<(u128, u16)>,
}

impl Family {
    fn build(cfg: &FilterConfig, v6: bool) -> Family {
        let rules = cfg
            .rules
            .iter()
            .filter_map(|r| {
                let srcs: Vec<Range> = r
                    .srcs
                    .iter()
                    .filter(|s| s.is_v6() == v6)
                    .map(Range::of)
                    .collect();
                let dsts: Vec<Dst> = r
                    .dsts
                    .iter()
                    .filter(|d| d.net.is_v6() == v6)
                    .map(|d| Dst {
                        net: Range::of(&d.net),
                        first_port: d.ports.first,
                        last_port: d.ports.last,
                    })
                    .collect();
                if srcs.is_empty() || dsts.is_empty() {
                    return None;
                }
                let mut protos = ProtoSet::default();
                for p in &r.protos {
                    protos.insert(*p);
                }
                Some(Rule { protos, srcs, dsts })
            })
            .collect();
        let mut local: Vec<Range> = cfg
            .local_nets
            .iter()
            .filter(|r| r.is_v6() == v6)
            .map(Range::of)
            .collect();
        local.sort_by_key(|r| r.lo);
        let mut merged: Vec<Range> = Vec::with_capacity(local.len());
        for r in local {
            match merged.last_mut() {
                Some(m) if r.lo <= m.hi.saturating_add(1) => m.hi = m.hi.max(r.hi),
                _ => merged.push(r),
            }
        }
        Family {
            rules,
            local: merged,
            open_tcp: cfg
                .open_tcp
                .iter()
                .filter(|(ip, _)| ip.is_ipv6() == v6)
                .map(|(ip, port)| (to_int(*ip), *port))
                .collect(),
        }
    }

    #[inline]
    fn is_local(&self, a: u128) -> bool {
        let i = self.local.partition_point(|r| r.lo <= a);
        i > 0 && self.local[i - 1].hi >= a
    }

    /// A rule for this protocol, source, destination address and port.
    fn matches(&self, p: &Parsed, proto: u8) -> bool {
        self.rules.iter().any(|r| {
            r.protos.contains(proto)
                && r.src_matches(p.src)
                && r.dsts.iter().any(|d| {
                    d.net.contains(p.dst) && d.first_port <= p.dst_port && p.dst_port <= d.last_port
                })
        })
    }

    /// Any rule letting the source reach the destination address, whatever the
    /// protocol and ports (Go's `matchIPsOnly`, used for ICMP).
    fn matches_ips(&self, p: &Parsed) -> bool {
        self.rules
            .iter()
            .any(|r| r.src_matches(p.src) && r.dsts.iter().any(|d| d.net.contains(p.dst)))
    }

    /// A rule for this protocol that opens every port on the destination (portless
    /// protocols such as GRE).
    fn matches_all_ports(&self, p: &Parsed, proto: u8) -> bool {
        self.rules.iter().any(|r| {
            r.protos.contains(proto)
                && r.src_matches(p.src)
                && r.dsts
                    .iter()
                    .any(|d| d.first_port == 0 && d.last_port == u16::MAX && d.net.contains(p.dst))
        })
    }
}

/// A compiled filter. Cheap to evaluate from many threads at once.
pub struct Filter {
    v4: Family,
    v6: Family,
    flows: Arc<FlowTable>,
}

impl Filter {
    /// Compiles `cfg`. `flows` carries the remembered outbound flows over from the
    /// previous filter, so that a new netmap does not cut replies of open flows.
    pub fn new(cfg: &FilterConfig, flows: Option<Arc<FlowTable>>) -> Filter {
        Filter {
            v4: Family::build(cfg, false),
            v6: Family::build(cfg, true),
            flows: flows.unwrap_or_default(),
        }
    }

    pub fn flows(&self) -> Arc<FlowTable> {
        self.flows.clone()
    }

    /// The verdict for a packet that arrived from a peer, after decryption.
    pub fn inbound(&self, pkt: &[u8]) -> Verdict {
        let Some(p) = Parsed::new(pkt) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if let Some(v) = pre_check(&p) {
            return v;
        }
        let fam = if p.v6 { &self.v6 } else { &self.v4 };
        if !fam.is_local(p.dst) {
            return Verdict::Drop(DropReason::NotLocal);
        }
        let Proto::Ip(proto) = p.proto else {
            // pre_check handled Unknown and Fragment.
            return Verdict::Drop(DropReason::Malformed);
        };
        let ok = match proto {
            ICMPV4 | ICMPV6 if (proto == ICMPV6) == p.v6 => {
                p.is_icmp_echo_reply() || p.is_icmp_error() || fam.matches_ips(&p)
            }
            TCP => !p.is_tcp_syn() || fam.matches(&p, proto),
            UDP | SCTP => self.flows.is_reply(&tuple(&p, proto)) || fam.matches(&p, proto),
            packet::TSMP => true,
            _ => fam.matches_all_ports(&p, proto),
        };
        // PeerAPI takes connections whatever the rules say; it checks at L7.
        let open = || {
            proto == TCP
                && p.tcp_flags & tcp::SYN != 0
                && fam.open_tcp.contains(&(p.dst, p.dst_port))
        };
        if ok || open() {
            Verdict::Accept
        } else {
            Verdict::Drop(DropReason::NoRule)
        }
    }

    /// The verdict for a packet about to be sent to a peer. Outbound traffic is not
    /// subject to the rules, but its UDP/SCTP flows are remembered so replies pass.
    pub fn outbound(&self, pkt: &[u8]) -> Verdict {
        let Some(p) = Parsed::new(pkt) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if let Some(v) = pre_check(&p) {
            return v;
        }
        if let Proto::Ip(proto @ (UDP | SCTP)) = p.proto {
            self.flows.note_outbound(&tuple(&p, proto));
        }
        Verdict::Accept
    }
}

fn tuple(p: &Parsed, proto: u8) -> Tuple {
    Tuple {
        proto,
        src: p.src,
        dst: p.dst,
        src_port: p.src_port,
        dst_port: p.dst_port,
    }
}

/// The direction-independent part: None means "no verdict yet".
fn pre_check(p: &Parsed) -> Option<Verdict> {
    if p.proto == Proto::Unknown {
        return Some(Verdict::Drop(DropReason::Malformed));
    }
    if p.dst_is_multicast() {
        return Some(Verdict::Drop(DropReason::Multicast));
    }
    if p.dst_is_link_local() {
        return Some(Verdict::Drop(DropReason::LinkLocal));
    }
    if p.proto == Proto::Fragment {
        return Some(Verdict::Accept);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::packet::build::*;
    use super::*;

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    fn set(s: &str) -> Vec<IpRange> {
        IpRange::parse_set(s).unwrap()
    }

    fn rule(protos: &[u8], srcs: &str, dst: &str, ports: (u16, u16)) -> FilterRule {
        FilterRule {
            protos: protos.to_vec(),
            srcs: set(srcs),
            dsts: set(dst)
                .into_iter()
                .map(|net| DstRange {
                    net,
                    ports: PortRange {
                        first: ports.0,
                        last: ports.1,
                    },
                })
                .collect(),
        }
    }

    /// Us: 100.64.0.1 and fd7a:115c:a1e0::1, forwarding for 192.168.7.0/24. Peers in
    /// 100.64.0.0/10 may reach TCP 22 and 80-90 and UDP 53 on us; 100.64.0.9 may reach
    /// anything on the subnet, GRE included.
    fn filter() -> Filter {
        let cfg = FilterConfig {
            rules: vec![
                rule(
                    &FilterRule::DEFAULT_PROTOS,
                    "100.64.0.0/10",
                    "100.64.0.1",
                    (22, 22),
                ),
                rule(&[6], "100.64.0.0/10", "100.64.0.1", (80, 90)),
                rule(&[17], "100.64.0.0/10", "100.64.0.1", (53, 53)),
                rule(&[6], "fd7a:115c:a1e0::/48", "fd7a:115c:a1e0::1", (22, 22)),
                rule(&[6, 17, 1, 47], "100.64.0.9", "192.168.7.0/24", (0, 65535)),
            ],
            local_nets: [
                set("100.64.0.1"),
                set("fd7a:115c:a1e0::1"),
                set("192.168.7.0/24"),
            ]
            .concat(),
            open_tcp: vec![("100.64.0.1".parse().unwrap(), 40123)],
        };
        Filter::new(&cfg, None)
    }

    const NO_RULE: Verdict = Verdict::Drop(DropReason::NoRule);

    #[test]
    fn tcp_syn_needs_a_rule_and_port() {
        let f = filter();
        let syn = |dport| f.inbound(&tcp("100.64.0.5", "100.64.0.1", 40000, dport, SYN));
        assert_eq!(syn(22), Verdict::Accept);
        assert_eq!(syn(85), Verdict::Accept);
        assert_eq!(syn(443), NO_RULE);
        assert_eq!(syn(91), NO_RULE);
        // A source outside the rule's range.
        assert_eq!(
            f.inbound(&tcp("10.9.9.9", "100.64.0.1", 40000, 22, SYN)),
            NO_RULE
        );
        assert_eq!(
            f.inbound(&tcp("fd7a:115c:a1e0::5", "fd7a:115c:a1e0::1", 1, 22, SYN)),
            Verdict::Accept
        );
        assert_eq!(
            f.inbound(&tcp("fd7a:115c:a1e0::5", "fd7a:115c:a1e0::1", 1, 80, SYN)),
            NO_RULE
        );
    }

    #[test]
    fn peerapi_takes_connections_whatever_the_rules() {
        let f = filter();
        assert_eq!(
            f.inbound(&tcp("10.9.9.9", "100.64.0.1", 1, 40123, SYN)),
            Verdict::Accept
        );
        assert_eq!(
            f.inbound(&tcp("10.9.9.9", "100.64.0.1", 1, 40124, SYN)),
            NO_RULE
        );
        // Only on the address it listens on.
        assert_eq!(
            f.inbound(&tcp("100.64.0.5", "192.168.7.1", 1, 40123, SYN)),
            NO_RULE
        );
    }

    #[test]
    fn tcp_without_syn_passes_as_return_traffic() {
        let f = filter();
        for flags in [ACK, SYN | ACK, 0x18, 0x04] {
            assert_eq!(
                f.inbound(&tcp("8.8.8.8", "100.64.0.1", 443, 40000, flags)),
                Verdict::Accept,
                "flags {flags:#x}"
            );
        }
    }

    #[test]
    fn udp_replies_pass_only_for_flows_we_opened() {
        let f = filter();
        let reply = udp("8.8.8.8", "100.64.0.1", 443, 50000);
        assert_eq!(f.inbound(&reply), NO_RULE);
        assert_eq!(
            f.outbound(&udp("100.64.0.1", "8.8.8.8", 50000, 443)),
            Verdict::Accept
        );
        assert_eq!(f.inbound(&reply), Verdict::Accept);
        // Another remote port is another flow.
        assert_eq!(
            f.inbound(&udp("8.8.8.8", "100.64.0.1", 444, 50000)),
            NO_RULE
        );
        // A rule still admits new flows.
        assert_eq!(
            f.inbound(&udp("100.64.0.5", "100.64.0.1", 5000, 53)),
            Verdict::Accept
        );
    }

    #[test]
    fn flow_memory_survives_a_new_filter() {
        let f = filter();
        f.outbound(&udp("100.64.0.1", "8.8.8.8", 50000, 443));
        let next = Filter::new(&FilterConfig::default(), Some(f.flows()));
        // Even with no rules and nothing local, the reply's destination must still be
        // ours; with the old local set it passes.
        let again = Filter::new(
            &FilterConfig {
                rules: vec![],
                local_nets: set("100.64.0.1"),
                open_tcp: vec![],
            },
            Some(next.flows()),
        );
        assert_eq!(
            again.inbound(&udp("8.8.8.8", "100.64.0.1", 443, 50000)),
            Verdict::Accept
        );
    }

    #[test]
    fn destination_must_be_local() {
        let f = filter();
        assert_eq!(
            f.inbound(&tcp("100.64.0.9", "10.1.1.1", 1, 22, ACK)),
            Verdict::Drop(DropReason::NotLocal)
        );
        assert_eq!(
            f.inbound(&tcp("100.64.0.9", "192.168.7.20", 1, 22, SYN)),
            Verdict::Accept
        );
        assert_eq!(
            f.inbound(&tcp("100.64.0.5", "192.168.7.20", 1, 22, SYN)),
            NO_RULE
        );
    }

    #[test]
    fn icmp_rules() {
        let f = filter();
        // Echo replies and errors always; requests when the IPs are allowed at all.
        assert_eq!(
            f.inbound(&icmp("8.8.8.8", "100.64.0.1", 0)),
            Verdict::Accept
        );
        assert_eq!(
            f.inbound(&icmp("8.8.8.8", "100.64.0.1", 11)),
            Verdict::Accept
        );
        assert_eq!(f.inbound(&icmp("8.8.8.8", "100.64.0.1", 8)), NO_RULE);
        assert_eq!(
            f.inbound(&icmp("100.64.0.5", "100.64.0.1", 8)),
            Verdict::Accept
        );
        assert_eq!(
            f.inbound(&icmp("2001:db8::1", "fd7a:115c:a1e0::1", 1)),
            Verdict::Accept
        );
        assert_eq!(
            f.inbound(&icmp("2001:db8::1", "fd7a:115c:a1e0::1", 128)),
            NO_RULE
        );
    }

    #[test]
    fn other_protocols_need_an_all_ports_rule() {
        let f = filter();
        let gre = |src| f.inbound(&ip(src, "192.168.7.20", 47, &[0; 8]));
        assert_eq!(gre("100.64.0.9"), Verdict::Accept);
        assert_eq!(gre("100.64.0.5"), NO_RULE);
        // TSMP always.
        assert_eq!(
            f.inbound(&ip("100.64.0.5", "100.64.0.1", 99, &[0; 8])),
            Verdict::Accept
        );
    }

    #[test]
    fn no_rules_means_nothing_new_gets_in() {
        let f = Filter::new(
            &FilterConfig {
                rules: vec![],
                local_nets: set("100.64.0.1"),
                open_tcp: vec![],
            },
            None,
        );
        assert_eq!(
            f.inbound(&tcp("100.64.0.5", "100.64.0.1", 1, 22, SYN)),
            NO_RULE
        );
        assert_eq!(f.inbound(&udp("100.64.0.5", "100.64.0.1", 1, 53)), NO_RULE);
        assert_eq!(
            f.inbound(&tcp("100.64.0.5", "100.64.0.1", 1, 22, ACK)),
            Verdict::Accept
        );
    }

    #[test]
    fn malformed_multicast_link_local() {
        let f = filter();
        assert_eq!(f.inbound(&[0x45; 12]), Verdict::Drop(DropReason::Malformed));
        let mut cut = tcp("100.64.0.5", "100.64.0.1", 1, 22, SYN);
        cut.truncate(30);
        cut[2..4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(f.inbound(&cut), Verdict::Drop(DropReason::Malformed));
        assert_eq!(
            f.inbound(&udp("100.64.0.5", "224.0.0.251", 5353, 5353)),
            Verdict::Drop(DropReason::Multicast)
        );
        assert_eq!(
            f.outbound(&udp("fd7a:115c:a1e0::1", "ff02::1", 1, 2)),
            Verdict::Drop(DropReason::Multicast)
        );
        assert_eq!(
            f.outbound(&udp("fd7a:115c:a1e0::1", "fe80::1", 1, 2)),
            Verdict::Drop(DropReason::LinkLocal)
        );
        // A later fragment passes (its first fragment was filtered).
        let mut frag = udp("100.64.0.5", "100.64.0.1", 1, 9999);
        frag[6..8].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(f.inbound(&frag), Verdict::Accept);
    }

    #[test]
    fn rules_of_one_family_do_not_leak_into_the_other() {
        // A rule with IPv4 sources and only IPv6 destinations matches nothing.
        let cfg = FilterConfig {
            rules: vec![FilterRule {
                protos: vec![6],
                srcs: set("*"),
                dsts: vec![DstRange {
                    net: set("fd7a:115c:a1e0::1")[0],
                    ports: PortRange::ALL,
                }],
            }],
            local_nets: [set("100.64.0.1"), set("fd7a:115c:a1e0::1")].concat(),
            open_tcp: vec![],
        };
        let f = Filter::new(&cfg, None);
        assert_eq!(
            f.inbound(&tcp("100.64.0.5", "100.64.0.1", 1, 22, SYN)),
            NO_RULE
        );
        assert_eq!(
            f.inbound(&tcp("fd7a:115c:a1e0::5", "fd7a:115c:a1e0::1", 1, 22, SYN)),
            Verdict::Accept
        );
    }
}

#[cfg(test)]
mod peer_table_tests {
    //! The filter where it runs: in [`crate::wireguard::PeerTable`], between
    //! decryption and the TUN, swapped with each new configuration.

    use super::packet::build::*;
    use super::*;
    use crate::config::{Config, PeerConfig};
    use crate::wireguard::{Emit, PeerTable};
    use crate::Key;
    use boringtun::x25519::{PublicKey, StaticSecret};
    use std::net::SocketAddr;
    use std::sync::atomic::Ordering;

    const EP_A: &str = "192.0.2.1:41641";
    const EP_B: &str = "192.0.2.2:41641";

    fn cfg(me: u8, peer: u8, peer_ip: &str, ep: &str, filter: Option<FilterConfig>) -> Config {
        Config {
            private_key: ringscale_keys::PrivateKey::from_bytes([me; 32]),
            listen_port: 0,
            addresses: vec![],
            mtu: 1280,
            peers: vec![PeerConfig {
                public_key: Key(PublicKey::from(&StaticSecret::from([peer; 32])).to_bytes()),
                allowed_ips: vec![peer_ip.parse().unwrap()],
                endpoint: Some(ep.parse().unwrap()),
                persistent_keepalive: None,
            }],
            filter,
        }
    }

    /// A (100.64.0.1) lets peers reach TCP `ports` only.
    fn a_filter(ports: (u16, u16)) -> FilterConfig {
        FilterConfig {
            rules: vec![FilterRule {
                protos: FilterRule::DEFAULT_PROTOS.to_vec(),
                srcs: IpRange::parse_set("100.64.0.0/10").unwrap(),
                dsts: vec![DstRange {
                    net: IpRange::parse_set("100.64.0.1").unwrap()[0],
                    ports: PortRange {
                        first: ports.0,
                        last: ports.1,
                    },
                }],
            }],
            local_nets: IpRange::parse_set("100.64.0.1").unwrap(),
            open_tcp: vec![],
        }
    }

    /// Sends `pkt` from `from` to `to` and runs the exchange (handshake included) to
    /// the end; returns what `to` wrote to its TUN.
    fn send(from: &PeerTable, to: &PeerTable, from_ep: &str, pkt: &[u8]) -> Vec<Vec<u8>> {
        let (ep_from, ep_to): (SocketAddr, SocketAddr) = (
            from_ep.parse().unwrap(),
            if from_ep == EP_A { EP_B } else { EP_A }.parse().unwrap(),
        );
        let mut out = vec![0u8; 4096];
        let mut wire: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let mut tun = Vec::new();
        let now = std::time::Instant::now();
        from.encapsulate(now, pkt, &mut out, &mut |e| {
            if let Emit::Network(at, w) = e {
                wire.push((at, w.to_vec()));
            }
        });
        for _ in 0..10 {
            for (at, w) in std::mem::take(&mut wire) {
                let (table, src) = if at == ep_to {
                    (to, ep_from)
                } else {
                    (from, ep_to)
                };
                table.decapsulate(now, src, &w, &mut out, &mut |e| match e {
                    Emit::Network(at, w) => wire.push((at, w.to_vec())),
                    Emit::Tun(p) if std::ptr::eq(table, to) => tun.push(p.to_vec()),
                    _ => {}
                });
            }
        }
        tun
    }

    #[test]
    fn denied_port_is_dropped_and_counted_and_a_new_config_lifts_it() {
        let a = PeerTable::new(
            &cfg(1, 2, "100.64.0.2/32", EP_B, Some(a_filter((22, 22)))),
            None,
        );
        let b = PeerTable::new(&cfg(2, 1, "100.64.0.1/32", EP_A, None), None);
        // The first exchange also runs the handshake; it carries an allowed packet.
        let ok = tcp("100.64.0.2", "100.64.0.1", 40000, 22, 0x02);
        assert_eq!(send(&b, &a, EP_B, &ok), vec![ok.clone()]);
        let denied = tcp("100.64.0.2", "100.64.0.1", 40001, 80, 0x02);
        assert!(send(&b, &a, EP_B, &denied).is_empty());
        assert_eq!(a.drops.filtered.load(Ordering::Relaxed), 1);

        // The netmap changes: port 80 opens. The session survives the swap.
        let a2 = PeerTable::new(
            &cfg(1, 2, "100.64.0.2/32", EP_B, Some(a_filter((1, 1024)))),
            Some(&a),
        );
        assert_eq!(send(&b, &a2, EP_B, &denied), vec![denied.clone()]);
        assert_eq!(a2.drops.filtered.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn udp_replies_to_our_flows_pass_without_a_rule() {
        let a = PeerTable::new(
            &cfg(1, 2, "100.64.0.2/32", EP_B, Some(a_filter((22, 22)))),
            None,
        );
        let b = PeerTable::new(&cfg(2, 1, "100.64.0.1/32", EP_A, None), None);
        let reply = udp("100.64.0.2", "100.64.0.1", 53, 50000);
        // Unsolicited: dropped (this also completes the handshake).
        assert!(send(&b, &a, EP_B, &reply).is_empty());
        // A asks first; now the answer gets in, also across a reconfiguration.
        let query = udp("100.64.0.1", "100.64.0.2", 50000, 53);
        assert_eq!(send(&a, &b, EP_A, &query), vec![query.clone()]);
        let a2 = PeerTable::new(
            &cfg(1, 2, "100.64.0.2/32", EP_B, Some(a_filter((22, 22)))),
            Some(&a),
        );
        assert_eq!(send(&b, &a2, EP_B, &reply), vec![reply.clone()]);
    }

    #[test]
    fn without_a_filter_everything_passes() {
        let a = PeerTable::new(&cfg(1, 2, "100.64.0.2/32", EP_B, None), None);
        let b = PeerTable::new(&cfg(2, 1, "100.64.0.1/32", EP_A, None), None);
        let p = udp("100.64.0.2", "100.64.0.1", 1, 9);
        assert_eq!(send(&b, &a, EP_B, &p), vec![p.clone()]);
        assert_eq!(a.drops.filtered.load(Ordering::Relaxed), 0);
    }
}
