//! `https://` DoH upstreams for quad-100's forwarder and the PeerAPI (feature `tls`):
//! ringscale-dns speaks RFC 8484 over any stream ([`doh`]) but has no TLS; this lends it
//! (as a value, `super::dns::https_connector`) the control
//! connection's rustls (system CA bundle, or the file `SSL_CERT_FILE` names as Go
//! honours it, compiled-in roots as the fallback) and finds the servers.
//!
//! Finding a server must not ask the system resolver, which is quad-100 itself once the
//! host points at it. As Go's `net/dns/publicdns`, well-known public DoH providers map
//! to fixed addresses; any other name is looked up with plain DNS (bypass-marked) at
//! the bootstrap resolvers: the host's resolvers from before we took resolv.conf over,
//! then the DNSConfig's plain-IP fallback resolvers. (Go refuses https URLs of
//! providers it does not know; we resolve them instead.)
//!
//! This lives in the binary because it uses the control client's TLS configuration;
//! ringscale-dns does not depend on the control crates.

use ringscale_control::netmap::NetMap;
use ringscale_dns::doh::{self, DohUrl, HttpsConnector, Stream};
use ringscale_dns::forward::query_dns_marked;
use ringscale_dns::{is_quad100, wire, Upstream};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a bootstrap lookup of a DoH server's name is reused.
const BOOTSTRAP_CACHE_TTL: Duration = Duration::from_secs(60);
/// Names kept in that cache (a tailnet names a handful of resolvers).
const BOOTSTRAP_CACHE_MAX: usize = 16;

/// The one connector, handed to quad-100 and the PeerAPI by [`super::dns::https_connector`].
pub static CONNECTOR: HttpsDoh = HttpsDoh::new();

/// Names looked up: (name, when, addresses); a handful, so a list.
type BootstrapCache = Vec<(String, Instant, Vec<IpAddr>)>;

/// TLS and server addresses for `https://` DoH upstreams.
pub struct HttpsDoh {
    resolvers: Mutex<Vec<SocketAddr>>,
    cache: Mutex<BootstrapCache>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl HttpsDoh {
    pub const fn new() -> HttpsDoh {
        HttpsDoh {
            resolvers: Mutex::new(Vec::new()),
            cache: Mutex::new(Vec::new()),
        }
    }

    /// Sets the plain-DNS resolvers that resolve https DoH servers' names (quad-100's
    /// own addresses are left out: asking ourselves would loop).
    pub fn set_bootstrap_resolvers(&self, resolvers: Vec<SocketAddr>) {
        let resolvers: Vec<SocketAddr> = resolvers
            .into_iter()
            .filter(|a| !is_quad100(a.ip()))
            .collect();
        let mut current = lock(&self.resolvers);
        if *current != resolvers {
            *current = resolvers;
            lock(&self.cache).clear();
        }
    }

    /// Looks `name` up (A, then AAAA if there is no IPv4 address) at the bootstrap
    /// resolvers, with a short cache.
    fn lookup(&self, name: &str, deadline: Instant) -> io::Result<Vec<IpAddr>> {
        if let Some((_, at, ips)) = lock(&self.cache).iter().find(|(n, _, _)| n == name) {
            if at.elapsed() < BOOTSTRAP_CACHE_TTL {
                return Ok(ips.clone());
            }
        }
        let resolvers = lock(&self.resolvers).clone();
        if resolvers.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no resolver to look up the DoH server {name} (quad-100 must not ask itself)"
                ),
            ));
        }
        let fqdn = format!("{name}.");
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{name}: no address"));
        let mut found = Vec::new();
        'types: for qtype in [wire::TYPE_A, wire::TYPE_AAAA] {
            let id = query_id();
            let q = wire::build_query(id, &fqdn, qtype)
                .ok_or_else(|| invalid(format!("bad DoH host name {name:?}")))?;
            for (i, &r) in resolvers.iter().enumerate() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break 'types;
                }
                // A dead resolver leaves time for the next ones.
                let share = (left / (resolvers.len() - i) as u32).max(Duration::from_millis(300));
                match query_dns_marked(r, &q, share.min(left), !doh::is_tailnet_addr(r.ip())) {
                    Ok(a) => {
                        let ips: Vec<IpAddr> = wire::answers(&a)
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|d| match d {
                                wire::RData::Addr(ip) => Some(ip),
                                wire::RData::Ptr(_) => None,
                            })
                            .collect();
                        found.extend(ips);
                        break;
                    }
                    Err(e) => {
                        last = io::Error::new(e.kind(), format!("looking up {name} at {r}: {e}"))
                    }
                }
            }
            if !found.is_empty() {
                break;
            }
        }
        if found.is_empty() {
            return Err(last);
        }
        let mut cache = lock(&self.cache);
        cache.retain(|(n, at, _)| n != name && at.elapsed() < BOOTSTRAP_CACHE_TTL);
        if cache.len() >= BOOTSTRAP_CACHE_MAX {
            cache.remove(0);
        }
        cache.push((name.to_string(), Instant::now(), found.clone()));
        Ok(found)
    }
}

impl Default for HttpsDoh {
    fn default() -> Self {
        HttpsDoh::new()
    }
}

impl HttpsConnector for HttpsDoh {
    fn connect(&self, url: &DohUrl, deadline: Instant) -> io::Result<Box<dyn Stream>> {
        let addrs = match bootstrap(url) {
            Bootstrap::Fixed(a) => a,
            Bootstrap::Lookup(name) => self.lookup(&name, deadline)?,
        };
        let tcp = doh::connect_any(&addrs, url.port, deadline)?;
        doh::set_timeouts(&tcp, deadline)?;
        let tls = ringscale_control::ts2021::tls_connect_blocking(&url.host, tcp)?;
        Ok(Box::new(tls))
    }
}

/// A query ID nobody can guess (the lookup's answer decides where queries go).
fn query_id() -> u16 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // getrandom(2) does not fail on Linux for 2 bytes; the clock as a last resort.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.subsec_nanos() as u16;
    }
    u16::from_ne_bytes(b)
}

/// Who resolves the names of `https://` DoH servers that are not well-known providers
/// (quad-100 cannot: it would ask itself): the host's resolvers from before we pointed
/// it at quad-100, then the DNSConfig's plain-IP fallback resolvers.
pub fn bootstrap_resolvers(os_nameservers: &[IpAddr], netmap: Option<&NetMap>) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = os_nameservers
        .iter()
        .filter(|ip| !is_quad100(**ip))
        .map(|ip| SocketAddr::new(*ip, 53))
        .collect();
    let fallback = netmap
        .and_then(|n| n.dns_config.as_ref())
        .map(|d| d.fallback_resolvers.as_slice())
        .unwrap_or_default();
    for r in fallback {
        if let Some(Upstream::Dns(a)) = Upstream::parse(&r.addr) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// Where the addresses of a DoH server come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// The URL names an address, or a known provider with fixed addresses.
    Fixed(Vec<IpAddr>),
    /// Look this name up at the bootstrap resolvers.
    Lookup(String),
}

/// How to find `url`'s server: its IP literal, a known provider's addresses, or a
/// lookup of its name.
pub fn bootstrap(url: &DohUrl) -> Bootstrap {
    if let Some(ip) = url.host_ip() {
        return Bootstrap::Fixed(vec![ip]);
    }
    let base = format!("https://{}{}", url.authority, url.target);
    match known_provider_addrs(&base) {
        Some(ips) => Bootstrap::Fixed(ips),
        None => Bootstrap::Lookup(url.host.clone()),
    }
}

/// Public DoH services and the anycast addresses they serve DoH on (the same facts
/// Go's `net/dns/publicdns` lists), keyed by their exact DoH URL.
const KNOWN_PROVIDERS: &[(&str, &[&str])] = &[
    (
        "https://cloudflare-dns.com/dns-query",
        &[
            "1.1.1.1",
            "1.0.0.1",
            "2606:4700:4700::1111",
            "2606:4700:4700::1001",
        ],
    ),
    (
        "https://security.cloudflare-dns.com/dns-query",
        &[
            "1.1.1.2",
            "1.0.0.2",
            "2606:4700:4700::1112",
            "2606:4700:4700::1002",
        ],
    ),
    (
        "https://family.cloudflare-dns.com/dns-query",
        &[
            "1.1.1.3",
            "1.0.0.3",
            "2606:4700:4700::1113",
            "2606:4700:4700::1003",
        ],
    ),
    (
        "https://dns.google/dns-query",
        &[
            "8.8.8.8",
            "8.8.4.4",
            "2001:4860:4860::8888",
            "2001:4860:4860::8844",
        ],
    ),
    (
        "https://dns.quad9.net/dns-query",
        &["9.9.9.9", "149.112.112.112", "2620:fe::fe", "2620:fe::9"],
    ),
    (
        "https://dns11.quad9.net/dns-query",
        &[
            "9.9.9.11",
            "149.112.112.11",
            "2620:fe::11",
            "2620:fe::fe:11",
        ],
    ),
    (
        "https://dns10.quad9.net/dns-query",
        &[
            "9.9.9.10",
            "149.112.112.10",
            "2620:fe::10",
            "2620:fe::fe:10",
        ],
    ),
    (
        "https://dns.mullvad.net/dns-query",
        &["194.242.2.2", "2a07:e340::2"],
    ),
    (
        "https://adblock.dns.mullvad.net/dns-query",
        &["194.242.2.3", "2a07:e340::3"],
    ),
    (
        "https://base.dns.mullvad.net/dns-query",
        &["194.242.2.4", "2a07:e340::4"],
    ),
    (
        "https://extended.dns.mullvad.net/dns-query",
        &["194.242.2.5", "2a07:e340::5"],
    ),
    (
        "https://family.dns.mullvad.net/dns-query",
        &["194.242.2.6", "2a07:e340::6"],
    ),
    (
        "https://all.dns.mullvad.net/dns-query",
        &["194.242.2.9", "2a07:e340::9"],
    ),
    (
        "https://wikimedia-dns.org/dns-query",
        &["185.71.138.138", "2001:67c:930::1"],
    ),
    (
        "https://freedns.controld.com/p0",
        &["76.76.2.0", "76.76.10.0", "2606:1a40::", "2606:1a40:1::"],
    ),
    (
        "https://freedns.controld.com/p1",
        &["76.76.2.1", "76.76.10.1", "2606:1a40::1", "2606:1a40:1::1"],
    ),
    (
        "https://freedns.controld.com/p2",
        &["76.76.2.2", "76.76.10.2", "2606:1a40::2", "2606:1a40:1::2"],
    ),
    (
        "https://freedns.controld.com/p3",
        &["76.76.2.3", "76.76.10.3", "2606:1a40::3", "2606:1a40:1::3"],
    ),
    (
        "https://freedns.controld.com/family",
        &["76.76.2.4", "76.76.10.4", "2606:1a40::4", "2606:1a40:1::4"],
    ),
    (
        "https://private.canadianshield.cira.ca/dns-query",
        &[
            "149.112.121.10",
            "149.112.122.10",
            "2620:10a:80bb::10",
            "2620:10a:80bc::10",
        ],
    ),
    (
        "https://protected.canadianshield.cira.ca/dns-query",
        &[
            "149.112.121.20",
            "149.112.122.20",
            "2620:10a:80bb::20",
            "2620:10a:80bc::20",
        ],
    ),
    (
        "https://family.canadianshield.cira.ca/dns-query",
        &[
            "149.112.121.30",
            "149.112.122.30",
            "2620:10a:80bb::30",
            "2620:10a:80bc::30",
        ],
    ),
];

/// NextDNS: `https://dns.nextdns.io/<profile hex>[/…|?…]`, served on the first address
/// of its two IPv4 ranges and on its IPv6 ranges with the profile in the low bytes.
const NEXTDNS: &str = "https://dns.nextdns.io/";
const NEXTDNS_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(45, 90, 28, 0), Ipv4Addr::new(45, 90, 30, 0)];
const NEXTDNS_V6: [[u8; 4]; 2] = [[0x2a, 0x07, 0xa8, 0xc0], [0x2a, 0x07, 0xa8, 0xc1]];
/// Control D's per-customer DoH (`https://dns.controld.com/<id>`).
const CONTROLD: &str = "https://dns.controld.com/";
const CONTROLD_ADDRS: [&str; 4] = [
    "76.76.2.22",
    "76.76.10.22",
    "2606:1a40::22",
    "2606:1a40:1::22",
];

/// The fixed addresses of a well-known public DoH URL, IPv4 first.
pub fn known_provider_addrs(url: &str) -> Option<Vec<IpAddr>> {
    let parse = |ips: &[&str]| ips.iter().filter_map(|s| s.parse().ok()).collect();
    if let Some((_, ips)) = KNOWN_PROVIDERS.iter().find(|(base, _)| *base == url) {
        return Some(parse(ips));
    }
    if let Some(rest) = url.strip_prefix(NEXTDNS) {
        let profile = rest.split(['/', '?']).next().unwrap_or("");
        let id = decode_hex(profile).filter(|b| !b.is_empty() && b.len() <= 12)?;
        let mut addrs: Vec<IpAddr> = NEXTDNS_V4.iter().map(|&a| IpAddr::V4(a)).collect();
        for prefix in NEXTDNS_V6 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&prefix);
            a[16 - id.len()..].copy_from_slice(&id);
            addrs.push(IpAddr::V6(Ipv6Addr::from(a)));
        }
        return Some(addrs);
    }
    if url.starts_with(CONTROLD) {
        return Some(parse(&CONTROLD_ADDRS));
    }
    None
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn servers_are_found_without_asking_quad100() {
        let boot = |u: &str| bootstrap(&DohUrl::parse(u).unwrap());
        // An address in the URL is used as it is.
        assert_eq!(
            boot("https://192.0.2.53/dns-query"),
            Bootstrap::Fixed(vec!["192.0.2.53".parse().unwrap()])
        );
        // Well-known providers have fixed addresses, IPv4 first.
        let Bootstrap::Fixed(google) = boot("https://dns.google/dns-query") else {
            panic!("dns.google is a known provider");
        };
        assert_eq!(google[0], "8.8.8.8".parse::<IpAddr>().unwrap());
        assert_eq!(google.len(), 4);
        // NextDNS: the profile ID goes into the low bytes of the IPv6 addresses.
        let Bootstrap::Fixed(next) = boot("https://dns.nextdns.io/c3a884/router") else {
            panic!("NextDNS profiles are known");
        };
        assert_eq!(next[0], "45.90.28.0".parse::<IpAddr>().unwrap());
        assert!(
            next.contains(&"2a07:a8c0::c3:a884".parse().unwrap()),
            "{next:?}"
        );
        assert!(
            next.contains(&"2a07:a8c1::c3:a884".parse().unwrap()),
            "{next:?}"
        );
        // A profile that is not hex, and any other name, are looked up.
        assert_eq!(
            boot("https://dns.nextdns.io/not-hex"),
            Bootstrap::Lookup("dns.nextdns.io".into())
        );
        assert_eq!(
            boot("https://DoH.Example.net/dns-query"),
            Bootstrap::Lookup("doh.example.net".into())
        );
        // Known only by its exact URL, as Go matches them.
        assert_eq!(
            boot("https://dns.google/resolve"),
            Bootstrap::Lookup("dns.google".into())
        );
        // Every address in the table is well-formed.
        for (base, ips) in KNOWN_PROVIDERS {
            assert_eq!(
                known_provider_addrs(base).unwrap().len(),
                ips.len(),
                "{base}"
            );
        }
    }

    #[test]
    fn a_server_name_is_looked_up_at_the_bootstrap_resolvers_only() {
        let c = HttpsDoh::new();
        let deadline = || Instant::now() + Duration::from_secs(5);
        // Only quad-100 configured: a clear error, no recursion into ourselves.
        c.set_bootstrap_resolvers(vec!["100.100.100.100:53".parse().unwrap()]);
        let e = c.lookup("doh-boot.test", deadline()).unwrap_err();
        assert!(e.to_string().contains("no resolver"), "{e}");

        // A resolver that knows the name (once: the second lookup is cached).
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let resolver = udp.local_addr().unwrap();
        let lookups = std::thread::spawn(move || {
            udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 512];
            let (n, from) = udp.recv_from(&mut buf).unwrap();
            let query = wire::parse_query(&buf[..n]).unwrap();
            let a = wire::build_response(
                &query,
                wire::Rcode::NoError,
                &[wire::RData::Addr("192.0.2.7".parse().unwrap())],
                60,
            );
            udp.send_to(&a, from).unwrap();
            (query.question.name, query.question.qtype)
        });
        c.set_bootstrap_resolvers(vec![resolver]);
        let want: Vec<IpAddr> = vec!["192.0.2.7".parse().unwrap()];
        assert_eq!(c.lookup("doh-boot.test", deadline()).unwrap(), want);
        assert_eq!(
            lookups.join().unwrap(),
            ("doh-boot.test.".to_string(), wire::TYPE_A)
        );
        assert_eq!(c.lookup("doh-boot.test", deadline()).unwrap(), want);
    }

    #[test]
    fn bootstrap_resolvers_are_the_host_ones_then_the_fallbacks_never_quad100() {
        use ringscale_control::tailcfg::{DnsConfig, Resolver};
        let resolver = |a: &str| Resolver {
            addr: a.into(),
            ..Default::default()
        };
        let nm = NetMap {
            dns_config: Some(DnsConfig {
                fallback_resolvers: vec![
                    resolver("9.9.9.9"),
                    resolver("10.0.0.53"),
                    resolver("https://dns.example/dns-query"),
                    resolver("[2001:db8::53]:5353"),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let os: Vec<IpAddr> = vec![
            "100.100.100.100".parse().unwrap(),
            "10.0.0.53".parse().unwrap(),
        ];
        let got: Vec<String> = bootstrap_resolvers(&os, Some(&nm))
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["10.0.0.53:53", "9.9.9.9:53", "[2001:db8::53]:5353"]);
        assert!(bootstrap_resolvers(&[], None).is_empty());
    }
}
