//! What quad-100 answers, with no I/O (protocol.md §9.3, Go's
//! `net/dns/resolver/tsdns.go`): a query goes in, and out comes either the reply, or
//! the upstreams to forward it to, or nothing (drop).
//!
//! Order, as Go's `respond`: unparseable question → FORMERR; PTR → the tailnet's
//! reverse map (NXDOMAIN inside an authoritative reverse zone, else forward);
//! `*.onion` → NXDOMAIN; the symbolic quad-100 name; host records (exact name, then a
//! single label with each search domain when MagicDNS is on); a name under an
//! authoritative domain → NXDOMAIN; everything else → the most specific route's
//! upstreams ("." is the default route); no route → SERVFAIL.

use super::wire::{self, ParseError, Query, RData, Rcode};
use super::{QUAD100_V4, QUAD100_V6};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TTL of every answer quad-100 makes (Go's `defaultTTL`, 600 s, in `tsdns.go`).
pub const ANSWER_TTL: u32 = 600;

/// The name quad-100 gives itself (PTR of 100.100.100.100, and back).
pub const SYMBOLIC_NAME: &str = "magicdns.localhost-tailscale-daemon.";

/// Where a forwarded query goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Upstream {
    /// Plain DNS: UDP, retried over TCP when the answer is truncated.
    Dns(SocketAddr),
    /// DNS over HTTP(S): a `https://…/dns-query` resolver or an exit node's PeerAPI
    /// (`http://100.x.y.z:port/dns-query`).
    Doh(String),
}

impl Upstream {
    /// Parses a `dnstype.Resolver.Addr`: `"8.8.8.8"`, `"ip:port"`, `"[v6]:port"`, or an
    /// `http(s)://` URL. None for forms we do not speak (e.g. `tls://`).
    pub fn parse(addr: &str) -> Option<Upstream> {
        let addr = addr.trim();
        if addr.starts_with("https://") || addr.starts_with("http://") {
            return Some(Upstream::Doh(addr.to_string()));
        }
        if let Ok(ip) = addr.parse::<IpAddr>() {
            return Some(Upstream::Dns(SocketAddr::new(ip, 53)));
        }
        addr.parse::<SocketAddr>().ok().map(Upstream::Dns)
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Dns(a) => write!(f, "{a}"),
            Upstream::Doh(u) => f.write_str(u),
        }
    }
}

/// The resolver's whole configuration, built from the netmap and the DNSConfig by the
/// control plane (protocol.md §9.2). All names are lower-case FQDNs with the trailing
/// dot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Host records: name → addresses in preference order (A answers the first IPv4,
    /// AAAA the first IPv6).
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
    /// Suffixes quad-100 is authoritative for: unknown names under them are NXDOMAIN.
    pub local_domains: Vec<String>,
    /// Split DNS: suffix → upstreams, the most specific suffix wins; `"."` is the
    /// default route. Every list is non-empty (empty routes are local domains).
    pub routes: Vec<(String, Vec<Upstream>)>,
    /// Search domains, without the trailing dot (also written to resolv.conf).
    pub search_domains: Vec<String>,
    /// MagicDNS is on: single-label names are tried with each search domain.
    pub short_names: bool,
}

impl ResolverConfig {
    /// The default route's upstreams (route `"."`), if any.
    pub fn default_upstreams(&self) -> &[Upstream] {
        self.routes
            .iter()
            .find(|(s, _)| s == ".")
            .map_or(&[], |(_, u)| u.as_slice())
    }
}

/// What to do with one message that arrived at quad-100.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this reply.
    Reply(Vec<u8>),
    /// Send the query to these upstreams (in order; the first good answer wins). When
    /// they all fail, answer [`servfail`].
    Forward(Vec<Upstream>),
    /// Answer nothing: not a query, or too broken to echo an ID.
    Drop,
}

/// Is `name` equal to `suffix` or below it (label-wise)? Both lower-case FQDNs.
pub fn name_within(name: &str, suffix: &str) -> bool {
    if suffix == "." {
        return true;
    }
    name == suffix
        || (name.len() > suffix.len()
            && name.ends_with(suffix)
            && name.as_bytes()[name.len() - suffix.len() - 1] == b'.')
}

/// The resolver for one configuration; immutable, rebuilt on every change.
#[derive(Debug, Default)]
pub struct Resolver {
    cfg: ResolverConfig,
    /// Address → name, for PTR.
    reverse: HashMap<IpAddr, String>,
}

impl Resolver {
    pub fn new(cfg: ResolverConfig) -> Resolver {
        let mut reverse = HashMap::new();
        for (name, addrs) in &cfg.hosts {
            for a in addrs {
                // BTreeMap order makes the choice deterministic when names share an
                // address; the first name wins.
                reverse.entry(*a).or_insert_with(|| name.clone());
            }
        }
        Resolver { cfg, reverse }
    }

    pub fn config(&self) -> &ResolverConfig {
        &self.cfg
    }

    /// Decides what to do with `msg`, a DNS message that arrived over UDP or TCP.
    pub fn handle(&self, msg: &[u8]) -> Action {
        let q = match wire::parse_query(msg) {
            Ok(q) => q,
            Err(ParseError::BadQuestion(why)) => {
                log::debug!("dns: malformed query: {why}");
                return wire::error_without_question(msg, Rcode::FormErr)
                    .map_or(Action::Drop, Action::Reply);
            }
            Err(_) => return Action::Drop,
        };
        if q.opcode() != 0 {
            return Action::Reply(wire::build_response(&q, Rcode::NotImp, &[], ANSWER_TTL));
        }
        let name = q.question.name.as_str();
        if q.question.qtype == wire::TYPE_PTR {
            if let Some(action) = self.reverse_lookup(&q) {
                return action;
            }
            return self.forward(name, &q);
        }
        match self.resolve_local(name, q.question.qtype) {
            Some((rcode, answers)) => {
                Action::Reply(wire::build_response(&q, rcode, &answers, ANSWER_TTL))
            }
            None => self.forward(name, &q),
        }
    }

    /// Local answer for a forward name, or None to forward (Go's `resolveLocal`).
    fn resolve_local(&self, name: &str, qtype: u16) -> Option<(Rcode, Vec<RData>)> {
        if name_within(name, "onion.") {
            return Some((Rcode::NxDomain, vec![]));
        }
        if name == SYMBOLIC_NAME {
            let addr = match qtype {
                wire::TYPE_A => Some(IpAddr::V4(QUAD100_V4)),
                wire::TYPE_AAAA => Some(IpAddr::V6(QUAD100_V6)),
                _ => None,
            };
            return Some((Rcode::NoError, addr.map(RData::Addr).into_iter().collect()));
        }
        let Some(addrs) = self.host(name) else {
            if self.cfg.local_domains.iter().any(|d| name_within(name, d)) {
                return Some((Rcode::NxDomain, vec![]));
            }
            return None;
        };
        let pick = |want_v4: bool| addrs.iter().find(|a| a.is_ipv4() == want_v4).copied();
        let answer = match qtype {
            wire::TYPE_A => pick(true),
            wire::TYPE_AAAA => pick(false),
            wire::TYPE_ANY => addrs.first().copied(),
            // Types tied to zone semantics Go leaves unimplemented.
            wire::TYPE_NS | wire::TYPE_SOA | wire::TYPE_AXFR | wire::TYPE_HINFO => {
                return Some((Rcode::NotImp, vec![]));
            }
            // The name exists but has no record of this type: NOERROR with no answer
            // (never NXDOMAIN, which would tell the client the name is gone).
            _ => None,
        };
        Some((
            Rcode::NoError,
            answer.map(RData::Addr).into_iter().collect(),
        ))
    }

    /// The host record for `name`: the name itself, or with MagicDNS a single label
    /// completed with each search domain in order.
    fn host(&self, name: &str) -> Option<&Vec<IpAddr>> {
        if let Some(a) = self.cfg.hosts.get(name) {
            return Some(a);
        }
        let single_label = name.len() > 1 && name.find('.') == Some(name.len() - 1);
        if !self.cfg.short_names || !single_label {
            return None;
        }
        self.cfg.search_domains.iter().find_map(|d| {
            self.cfg
                .hosts
                .get(&format!("{name}{}.", d.trim_end_matches('.')))
        })
    }

    /// PTR (Go's `resolveLocalReverse`): Some(reply) when answered here, None to
    /// forward.
    fn reverse_lookup(&self, q: &Query) -> Option<Action> {
        let name = q.question.name.as_str();
        // DNS-SD browsing domains are never ours (Go forwards them as well).
        if ["b.", "db.", "r.", "dr.", "lb."].iter().any(|p| {
            name.strip_prefix(p)
                .is_some_and(|r| r.starts_with("_dns-sd._udp."))
        }) {
            return None;
        }
        let ip = parse_reverse_name(name)?;
        let reply = |rcode, answers: Vec<RData>| {
            Some(Action::Reply(wire::build_response(
                q, rcode, &answers, ANSWER_TTL,
            )))
        };
        if ip == IpAddr::V4(QUAD100_V4) || ip == IpAddr::V6(QUAD100_V6) {
            return reply(Rcode::NoError, vec![RData::Ptr(SYMBOLIC_NAME.into())]);
        }
        // Tailscale's 4to6 range maps back to an IPv4 node address.
        if let Some(v4) = tailscale_6to4(ip) {
            if let Some(host) = self.reverse.get(&IpAddr::V4(v4)) {
                return reply(Rcode::NoError, vec![RData::Ptr(host.clone())]);
            }
        }
        if let Some(host) = self.reverse.get(&ip) {
            return reply(Rcode::NoError, vec![RData::Ptr(host.clone())]);
        }
        if self.cfg.local_domains.iter().any(|d| name_within(name, d)) {
            return reply(Rcode::NxDomain, vec![]);
        }
        None
    }

    /// The forwarding decision for a name no local rule answered: the most specific
    /// route, or SERVFAIL when there is none.
    fn forward(&self, name: &str, q: &Query) -> Action {
        let best = self
            .cfg
            .routes
            .iter()
            .filter(|(suffix, ups)| !ups.is_empty() && name_within(name, suffix))
            .max_by_key(|(suffix, _)| if suffix == "." { 0 } else { suffix.len() });
        match best {
            Some((_, ups)) => Action::Forward(ups.clone()),
            None => Action::Reply(wire::build_response(q, Rcode::ServFail, &[], ANSWER_TTL)),
        }
    }

    /// The upstreams a name would be forwarded to (for the PeerAPI DoH server, which
    /// resolves with the node's own defaults).
    pub fn upstreams_for(&self, name: &str) -> Vec<Upstream> {
        self.cfg
            .routes
            .iter()
            .filter(|(suffix, ups)| !ups.is_empty() && name_within(name, suffix))
            .max_by_key(|(suffix, _)| if suffix == "." { 0 } else { suffix.len() })
            .map(|(_, u)| u.clone())
            .unwrap_or_default()
    }
}

/// SERVFAIL for a query whose forwarding failed (no answer from any upstream). None if
/// the message is not a query.
pub fn servfail(msg: &[u8]) -> Option<Vec<u8>> {
    match wire::parse_query(msg) {
        Ok(q) => Some(wire::build_response(&q, Rcode::ServFail, &[], ANSWER_TTL)),
        Err(_) => wire::error_without_question(msg, Rcode::ServFail),
    }
}

/// `d.c.b.a.in-addr.arpa.` → a.b.c.d; 32 nibbles + `ip6.arpa.` → the IPv6 address.
pub fn parse_reverse_name(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa.") {
        let mut o = [0u8; 4];
        let parts: Vec<&str> = rest.split('.').collect();
        if parts.len() != 4 {
            return None;
        }
        for (i, p) in parts.iter().rev().enumerate() {
            if p.is_empty() || p.len() > 3 || (p.len() > 1 && p.starts_with('0')) {
                return None;
            }
            o[i] = p.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(o)));
    }
    let rest = name.strip_suffix(".ip6.arpa.")?;
    let nibbles: Vec<&str> = rest.split('.').collect();
    if nibbles.len() != 32 {
        return None;
    }
    let mut v: u128 = 0;
    for n in nibbles.iter().rev() {
        if n.len() != 1 {
            return None;
        }
        v = (v << 4) | u128::from(u8::from_str_radix(n, 16).ok()?);
    }
    Some(IpAddr::V6(Ipv6Addr::from(v)))
}

/// The in-addr.arpa / ip6.arpa name of an address.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let mut s = String::with_capacity(72);
            for b in a.octets().iter().rev() {
                s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
                s.push('.');
                s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
                s.push('.');
            }
            s + "ip6.arpa."
        }
    }
}

/// Tailscale's 4to6 range fd7a:115c:a1e0:ab12:4843:cd96:6200::/104 ends in an IPv4
/// tailnet address (Go's `tsaddr.Tailscale6to4`).
fn tailscale_6to4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let o = v6.octets();
    let prefix = [
        0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0xab, 0x12, 0x48, 0x43, 0xcd, 0x96, 0x62,
    ];
    if o[..13] != prefix {
        return None;
    }
    Some(Ipv4Addr::new(100, o[13], o[14], o[15]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{answers, build_query, rcode};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn resolver() -> Resolver {
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "peer.tailnet.test.".to_string(),
            vec![ip("100.64.0.2"), ip("fd7a:115c:a1e0::2")],
        );
        hosts.insert("v4only.tailnet.test.".to_string(), vec![ip("100.64.0.3")]);
        hosts.insert("extra.example.".to_string(), vec![ip("100.64.0.9")]);
        Resolver::new(ResolverConfig {
            hosts,
            local_domains: vec![
                "tailnet.test.".into(),
                "64.100.in-addr.arpa.".into(),
                "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.".into(),
            ],
            routes: vec![
                (
                    ".".into(),
                    vec![Upstream::Dns("192.0.2.53:53".parse().unwrap())],
                ),
                (
                    "corp.example.".into(),
                    vec![Upstream::Dns("192.0.2.54:53".parse().unwrap())],
                ),
            ],
            search_domains: vec!["tailnet.test".into()],
            short_names: true,
        })
    }

    fn ask(r: &Resolver, name: &str, qtype: u16) -> Action {
        r.handle(&build_query(7, name, qtype).unwrap())
    }

    fn reply(a: Action) -> (u8, Vec<RData>) {
        match a {
            Action::Reply(m) => (rcode(&m).unwrap(), answers(&m).unwrap()),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn tailnet_names_answer_a_and_aaaa_case_insensitively() {
        let r = resolver();
        assert_eq!(
            reply(ask(&r, "PEER.tailnet.test.", wire::TYPE_A)),
            (0, vec![RData::Addr(ip("100.64.0.2"))])
        );
        assert_eq!(
            reply(ask(&r, "peer.tailnet.test.", wire::TYPE_AAAA)),
            (0, vec![RData::Addr(ip("fd7a:115c:a1e0::2"))])
        );
        assert_eq!(
            reply(ask(&r, "extra.example.", wire::TYPE_A)),
            (0, vec![RData::Addr(ip("100.64.0.9"))])
        );
    }

    #[test]
    fn short_names_use_the_search_domains() {
        let r = resolver();
        assert_eq!(
            reply(ask(&r, "peer.", wire::TYPE_A)),
            (0, vec![RData::Addr(ip("100.64.0.2"))])
        );
        let mut cfg = r.config().clone();
        cfg.short_names = false;
        let r = Resolver::new(cfg);
        assert!(matches!(ask(&r, "peer.", wire::TYPE_A), Action::Forward(_)));
    }

    #[test]
    fn an_owned_name_without_the_type_is_noerror_without_answers() {
        let r = resolver();
        assert_eq!(
            reply(ask(&r, "v4only.tailnet.test.", wire::TYPE_AAAA)),
            (0, vec![])
        );
        assert_eq!(
            reply(ask(&r, "peer.tailnet.test.", wire::TYPE_TXT)),
            (0, vec![])
        );
        assert_eq!(reply(ask(&r, "peer.tailnet.test.", wire::TYPE_SOA)).0, 4);
    }

    #[test]
    fn unknown_names_in_owned_domains_do_not_exist() {
        let r = resolver();
        assert_eq!(
            reply(ask(&r, "nobody.tailnet.test.", wire::TYPE_A)),
            (3, vec![])
        );
        assert_eq!(reply(ask(&r, "x.onion.", wire::TYPE_A)), (3, vec![]));
    }

    #[test]
    fn ptr_answers_tailnet_addresses_and_quad100() {
        let r = resolver();
        let q = |a: &str| reply(ask(&r, &reverse_name(ip(a)), wire::TYPE_PTR));
        assert_eq!(
            q("100.64.0.2"),
            (0, vec![RData::Ptr("peer.tailnet.test.".into())])
        );
        assert_eq!(
            q("fd7a:115c:a1e0::2"),
            (0, vec![RData::Ptr("peer.tailnet.test.".into())])
        );
        assert_eq!(
            q("100.100.100.100"),
            (0, vec![RData::Ptr(SYMBOLIC_NAME.into())])
        );
        assert_eq!(
            q("fd7a:115c:a1e0::53"),
            (0, vec![RData::Ptr(SYMBOLIC_NAME.into())])
        );
        // The 4to6 form of 100.64.0.3.
        assert_eq!(
            q("fd7a:115c:a1e0:ab12:4843:cd96:6240:3"),
            (0, vec![RData::Ptr("v4only.tailnet.test.".into())])
        );
        assert_eq!(q("100.64.7.7").0, 3, "unknown inside the tailnet range");
        assert!(matches!(
            ask(&r, &reverse_name(ip("192.0.2.1")), wire::TYPE_PTR),
            Action::Forward(_)
        ));
    }

    #[test]
    fn other_names_follow_the_most_specific_route() {
        let r = resolver();
        let fwd = |n: &str| match ask(&r, n, wire::TYPE_A) {
            Action::Forward(u) => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            fwd("www.example.com."),
            vec![Upstream::Dns("192.0.2.53:53".parse().unwrap())]
        );
        assert_eq!(
            fwd("db.corp.example."),
            vec![Upstream::Dns("192.0.2.54:53".parse().unwrap())]
        );
        assert_eq!(
            fwd("corp.example."),
            vec![Upstream::Dns("192.0.2.54:53".parse().unwrap())]
        );
        assert_eq!(
            fwd("xcorp.example."),
            vec![Upstream::Dns("192.0.2.53:53".parse().unwrap())]
        );
    }

    #[test]
    fn without_any_route_the_answer_is_servfail() {
        let r = Resolver::new(ResolverConfig::default());
        assert_eq!(reply(ask(&r, "www.example.com.", wire::TYPE_A)).0, 2);
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing() {
        let r = resolver();
        let mut m = build_query(9, "a.b.", wire::TYPE_A).unwrap();
        m.truncate(15);
        let Action::Reply(resp) = r.handle(&m) else {
            panic!("no FORMERR")
        };
        assert_eq!(rcode(&resp), Some(1));
        assert_eq!(r.handle(&[1, 2, 3]), Action::Drop);
        let mut resp = build_query(9, "a.b.", wire::TYPE_A).unwrap();
        resp[2] |= 0x80;
        assert_eq!(r.handle(&resp), Action::Drop);
    }

    #[test]
    fn upstream_addresses_parse_as_go_writes_them() {
        assert_eq!(
            Upstream::parse("8.8.8.8"),
            Some(Upstream::Dns("8.8.8.8:53".parse().unwrap()))
        );
        assert_eq!(
            Upstream::parse("10.0.0.1:5353"),
            Some(Upstream::Dns("10.0.0.1:5353".parse().unwrap()))
        );
        assert_eq!(
            Upstream::parse("[2001:db8::1]:53"),
            Some(Upstream::Dns("[2001:db8::1]:53".parse().unwrap()))
        );
        assert_eq!(
            Upstream::parse("2001:db8::1"),
            Some(Upstream::Dns("[2001:db8::1]:53".parse().unwrap()))
        );
        assert_eq!(
            Upstream::parse("http://100.64.0.5:41000/dns-query"),
            Some(Upstream::Doh("http://100.64.0.5:41000/dns-query".into()))
        );
        assert_eq!(Upstream::parse("tls://dns.example"), None);
    }

    #[test]
    fn reverse_names_round_trip() {
        for a in ["100.64.0.2", "fd7a:115c:a1e0::2", "2001:db8::567:89ab"] {
            assert_eq!(parse_reverse_name(&reverse_name(ip(a))), Some(ip(a)));
        }
        assert_eq!(parse_reverse_name("1.2.3.in-addr.arpa."), None);
        assert_eq!(parse_reverse_name("01.2.3.4.in-addr.arpa."), None);
    }
}
