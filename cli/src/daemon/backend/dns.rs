//! The daemon's DNS: quad-100's configuration from the netmap, the host's
//! `/etc/resolv.conf` (direct mode, what routers have), and the PeerAPI with its
//! DoH endpoint `/dns-query` for exit-node clients (protocol.md §9).
//!
//! Host DNS: what resolv.conf should say is decided here ([`wants_host_dns`]); the file
//! itself is ringscale-host's (`resolv_conf`), written by the reconciler thread.

use crate::localapi::http::{Request, Response};
use ringscale_control::dnsmap::{self, SERVICE_DNS_PROXY, SERVICE_PEERAPI4, SERVICE_PEERAPI6};
use ringscale_control::netmap::NetMap;
use ringscale_control::prefs::Prefs;
use ringscale_control::tailcfg::Service;
use ringscale_dns::{forward, is_quad100, wire, ResolverConfig, Upstream};
use ringscale_host::resolv_conf::{HostDns, HostDnsWanted, RESOLV_CONF};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Exit-node DoH answers wait this long for the host's resolver (Go: 5 s).
const DOH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest DoH request body (Go: 256 KiB; a DNS message is at most 64 KiB).
const MAX_DOH_BODY: usize = 65_535;

/// Should the host be pointed at quad-100? Only with accept-DNS, a running node, and
/// something quad-100 adds (MagicDNS, resolvers, routes or records).
pub fn wants_host_dns(netmap: Option<&NetMap>, prefs: &Prefs, running: bool) -> bool {
    let Some(dns) = netmap.and_then(|n| n.dns_config.as_ref()) else {
        return false;
    };
    running
        && prefs.corp_dns
        && (dns.proxied
            || !dns.resolvers.is_empty()
            || !dns.routes.is_empty()
            || !dns.extra_records.is_empty())
}

// ---------------------------------------------------------------------------
// The daemon's DNS state

/// Everything DNS the backend owns, except the host's resolv.conf ([`HostDns`]), which
/// belongs to the reconciler thread (`super::reconciler`): [`Dns::update`] only says
/// what it should be.
pub struct Dns {
    /// MagicDNS itself (None when this build has no quad-100 or it could not start).
    #[cfg(feature = "dns")]
    quad100: Option<ringscale_dns::quad100::Quad100>,
    /// The nameservers the host had before ringscale (quad-100 forwards to them).
    original_nameservers: Vec<IpAddr>,
    /// What the PeerAPI handlers read: the netmap, prefs and quad-100's configuration.
    view: Arc<Mutex<View>>,
    peerapi: Mutex<PeerApiState>,
}

/// The state a PeerAPI request is judged and answered with.
#[derive(Default)]
struct View {
    netmap: Option<Arc<NetMap>>,
    prefs: Prefs,
    /// The last configuration given to quad-100.
    resolver: Option<ResolverConfig>,
}

/// What a [`Dns::update`] asks of its caller.
pub struct DnsUpdate {
    /// The advertised services changed: the control session must send the new
    /// Hostinfo.
    pub services_changed: bool,
    /// What the host's resolv.conf should be.
    pub host: HostDnsWanted,
}

impl Dns {
    /// Starts quad-100 on `engine`'s TUN. `host` is the resolv.conf as found at start
    /// (read only here, for the nameservers quad-100 forwards to).
    #[cfg_attr(not(feature = "dns"), allow(unused_variables))]
    pub fn new(engine: &ringscale_dataplane::Engine, host: &HostDns) -> Dns {
        Dns {
            #[cfg(feature = "dns")]
            quad100: start_quad100(engine, ringscale_dataplane::config::DEFAULT_MTU),
            original_nameservers: host.original_nameservers(),
            view: Arc::new(Mutex::new(View::default())),
            peerapi: Mutex::new(PeerApiState::default()),
        }
    }

    /// Follows a new netmap or prefs: quad-100's configuration and the PeerAPI
    /// listeners, in process; what the host's resolv.conf should be is returned, for
    /// the reconciler to apply.
    pub fn update(&self, netmap: Option<&Arc<NetMap>>, prefs: &Prefs, running: bool) -> DnsUpdate {
        if !cfg!(feature = "dns") {
            // No quad-100 in this build: never point the host at it.
            return DnsUpdate {
                services_changed: false,
                host: HostDnsWanted::Original,
            };
        }
        let shared = netmap.filter(|_| running).cloned();
        let netmap = shared.as_deref();
        let cfg = match netmap {
            Some(nm) => dnsmap::resolver_config(nm, prefs, &self.original_nameservers),
            None => ResolverConfig::default(),
        };
        #[cfg(feature = "tls")]
        super::doh_https::CONNECTOR.set_bootstrap_resolvers(super::doh_https::bootstrap_resolvers(
            &self.original_nameservers,
            netmap,
        ));
        {
            let mut view = lock(&self.view);
            if view.resolver.as_ref() != Some(&cfg) {
                log::debug!(
                    "dns: {} hosts, local {:?}, routes {:?}",
                    cfg.hosts.len(),
                    cfg.local_domains
                        .iter()
                        .filter(|d| !d.ends_with(".arpa."))
                        .collect::<Vec<_>>(),
                    cfg.routes
                );
                #[cfg(feature = "dns")]
                if let Some(q) = &self.quad100 {
                    q.set_config(cfg.clone());
                }
                view.resolver = Some(cfg.clone());
            }
            view.netmap = shared.clone();
            view.prefs = prefs.clone();
        }
        let host = if wants_host_dns(netmap, prefs, running) {
            HostDnsWanted::Quad100 {
                search: cfg.search_domains.clone(),
            }
        } else {
            HostDnsWanted::Original
        };
        let addrs: Vec<IpAddr> = match netmap {
            Some(nm) => nm.self_addresses().iter().map(|p| p.addr()).collect(),
            None => Vec::new(),
        };
        DnsUpdate {
            services_changed: lock(&self.peerapi).follow(&self.view, addrs),
            host,
        }
    }

    /// Stops the PeerAPI listeners (daemon exit; the reconciler restores resolv.conf).
    pub fn shutdown(&self) {
        lock(&self.peerapi).stop();
    }
}

/// Starts MagicDNS. A failure costs MagicDNS, not the tunnel: it is logged and the
/// daemon runs on.
#[cfg(feature = "dns")]
pub fn start_quad100(
    engine: &ringscale_dataplane::Engine,
    mtu: u16,
) -> Option<ringscale_dns::quad100::Quad100> {
    match ringscale_dns::quad100::Quad100::attach(engine, mtu, https_connector()) {
        Ok(q) => Some(q),
        Err(e) => {
            log::error!("quad-100 (MagicDNS) not started: {e}");
            None
        }
    }
}

/// The client for `https://` DoH upstreams that quad-100's forwarder and the PeerAPI's
/// DoH use: TLS through the control client's configuration (with the `tls` feature).
#[cfg(feature = "tls")]
pub fn https_connector() -> ringscale_dns::doh::Https {
    Some(&super::doh_https::CONNECTOR)
}

/// Without TLS in the build, `https://` DoH upstreams are refused with a reason.
#[cfg(not(feature = "tls"))]
pub fn https_connector() -> ringscale_dns::doh::Https {
    None
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// PeerAPI

/// The services this node advertises in Hostinfo (read by `hostinfo::hostinfo`).
static SERVICES: Mutex<Vec<Service>> = Mutex::new(Vec::new());

pub fn advertised_services() -> Vec<Service> {
    lock(&SERVICES).clone()
}

/// Go's semi-deterministic PeerAPI port: `0x8000 | crc32(last 3 bytes of the 16-byte
/// form of the address)` (protocol.md §4.7), with `attempt` added to the first of those
/// bytes on retries.
pub fn peerapi_port(ip: IpAddr, attempt: u8) -> u16 {
    let b16 = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    let mut b = [b16[13], b16[14], b16[15]];
    b[0] = b[0].wrapping_add(attempt);
    0x8000 | (ringscale_wire::stun::crc32(&b) as u16)
}

/// A listening TCP socket on `addr` with IP_FREEBIND, so it can bind a tailnet address
/// that is not (yet) usable, as IPv6 addresses are during duplicate address detection.
fn listen_freebind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    ringscale_sys::tcp::listen_freebind(addr)
}

/// The PeerAPI listeners for the current addresses.
#[derive(Default)]
struct PeerApiState {
    addrs: Vec<IpAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PeerApiState {
    fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.addrs.clear();
    }

    /// Listens on `addrs` (our tailnet addresses) if they changed. Returns whether the
    /// advertised services changed.
    fn follow(&mut self, view: &Arc<Mutex<View>>, addrs: Vec<IpAddr>) -> bool {
        if addrs == self.addrs {
            return false;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // Not on the control runtime yet (start-up); the next netmap comes there.
            return false;
        };
        self.stop();
        let mut services = Vec::new();
        for &ip in &addrs {
            let mut bound = None;
            for attempt in 0..5u8 {
                let port = peerapi_port(ip, attempt);
                match listen_freebind(SocketAddr::new(ip, port)) {
                    Ok(l) => {
                        bound = Some((l, port));
                        break;
                    }
                    Err(e) => log::debug!("peerapi: {ip}:{port}: {e}"),
                }
            }
            let bound = bound.or_else(|| {
                let l = listen_freebind(SocketAddr::new(ip, 0)).ok()?;
                let port = l.local_addr().ok()?.port();
                Some((l, port))
            });
            let Some((l, port)) = bound else {
                log::warn!("peerapi: cannot listen on {ip}");
                continue;
            };
            let registered = {
                let _on_runtime = rt.enter();
                tokio::net::TcpListener::from_std(l)
            };
            let listener = match registered {
                Ok(l) => l,
                Err(e) => {
                    log::warn!("peerapi: {ip}:{port}: {e}");
                    continue;
                }
            };
            log::info!("peerapi: listening on {}", SocketAddr::new(ip, port));
            let proto = if ip.is_ipv4() {
                SERVICE_PEERAPI4
            } else {
                SERVICE_PEERAPI6
            };
            services.push(Service {
                proto: proto.into(),
                port,
                ..Default::default()
            });
            self.tasks
                .push(rt.spawn(serve(listener, view.clone(), SocketAddr::new(ip, port))));
        }
        if !services.is_empty() {
            // "My PeerAPI serves /dns-query": version 1, not a port.
            services.push(Service {
                proto: SERVICE_DNS_PROXY.into(),
                port: 1,
                ..Default::default()
            });
        }
        self.addrs = addrs;
        let mut current = lock(&SERVICES);
        let changed = *current != services;
        *current = services;
        changed
    }
}

async fn serve(listener: tokio::net::TcpListener, view: Arc<Mutex<View>>, local: SocketAddr) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::debug!("peerapi: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let view = view.clone();
        tokio::spawn(async move {
            let handled = tokio::time::timeout(
                Duration::from_secs(30),
                handle_conn(stream, from, view, local),
            );
            if let Ok(Err(e)) = handled.await {
                log::debug!("peerapi: {from}: {e}");
            }
        });
    }
}

async fn handle_conn(
    stream: tokio::net::TcpStream,
    from: SocketAddr,
    view: Arc<Mutex<View>>,
    local: SocketAddr,
) -> io::Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let resp = match crate::localapi::http::read_request(&mut rd, MAX_DOH_BODY).await {
        Ok(req) => respond(&view, from, local, req).await,
        Err(resp) => {
            return crate::localapi::http::refuse(&mut rd, &mut wr, &resp.to_bytes(&[])).await
        }
    };
    wr.write_all(&resp.to_bytes(&[])).await?;
    wr.shutdown().await
}

/// Who may use this node's DoH (Go `validatePeerAPIRequest` and the `/dns-query`
/// access check): a tailnet peer of the same user, or any tailnet peer when we offer
/// an exit node.
pub fn doh_allowed(netmap: &NetMap, prefs: &Prefs, from: IpAddr) -> bool {
    let Some(me) = netmap.self_node.as_ref() else {
        return false;
    };
    let from = match from {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(from),
        v4 => v4,
    };
    let Some(peer) = netmap.peer_by_tailscale_ip(from) else {
        return false;
    };
    peer.user == me.user || prefs.advertises_exit_node()
}

/// Base64url without padding (the `?dns=` form of RFC 8484).
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

async fn respond(
    view: &Arc<Mutex<View>>,
    from: SocketAddr,
    local: SocketAddr,
    req: Request,
) -> Response {
    if req.referer.is_some() || req.origin.is_some() {
        return Response::error(403, "403 Forbidden");
    }
    let host_ok = match req.host.as_deref() {
        None => false,
        Some(h) => h == "peer" || h.parse::<SocketAddr>().is_ok_and(|a| a == local),
    };
    if !host_ok {
        return Response::error(403, "invalid Host header");
    }
    let (allowed, filtered) = {
        let v = lock(view);
        let allowed = v
            .netmap
            .as_ref()
            .is_some_and(|nm| doh_allowed(nm, &v.prefs, from.ip()));
        let filtered = v
            .netmap
            .as_ref()
            .and_then(|nm| nm.dns_config.as_ref())
            .map(|d| d.exit_node_filtered_set.clone())
            .unwrap_or_default();
        (allowed, filtered)
    };
    match req.path.as_str() {
        "/dns-query" => {}
        _ => return Response::error(404, "404 page not found"),
    }
    if !allowed {
        return Response::error(403, "DNS access denied");
    }
    let query = match req.method.as_str() {
        "GET" => match base64url_decode(req.form_value("dns")) {
            Some(q) if !q.is_empty() => q,
            _ => return Response::error(400, "missing or bad 'dns' parameter"),
        },
        "POST" => req.body,
        _ => return Response::error(405, "method not allowed"),
    };
    let Some(answer) = doh_answer(view, query, &filtered).await else {
        return Response::error(400, "bad DNS query");
    };
    Response {
        status: 200,
        headers: vec![("Content-Type", "application/dns-message".into())],
        body: answer,
    }
}

/// Resolves a peer's query as the exit node: names in `ExitNodeFilteredSet` are
/// REFUSED; the rest goes to the host's resolver (the first nameserver of
/// resolv.conf; if that is quad-100 itself, the node's own upstreams). None for a
/// message that is not a query.
async fn doh_answer(
    view: &Arc<Mutex<View>>,
    query: Vec<u8>,
    filtered: &[String],
) -> Option<Vec<u8>> {
    let q = match wire::parse_query(&query) {
        Ok(q) => q,
        Err(wire::ParseError::BadQuestion(_)) => {
            return wire::error_without_question(&query, wire::Rcode::FormErr);
        }
        Err(_) => return None,
    };
    let name = q.question.name.clone();
    let refused = filtered.iter().any(|f| {
        let f = f.to_ascii_lowercase();
        let bare = name.trim_end_matches('.');
        match f.strip_prefix('.') {
            Some(suffix) => bare.ends_with(&format!(".{}", suffix.trim_end_matches('.'))),
            None => bare == f.trim_end_matches('.'),
        }
    });
    if refused {
        return Some(wire::build_response(&q, wire::Rcode::Refused, &[], 0));
    }
    let host_ns = std::fs::read_to_string(RESOLV_CONF).ok().and_then(|t| {
        ringscale_host::resolv_conf::parse_nameservers(&t)
            .into_iter()
            .next()
    });
    let upstreams = match host_ns {
        Some(ns) if !is_quad100(ns) => vec![Upstream::Dns(SocketAddr::new(ns, 53))],
        _ => lock(view)
            .resolver
            .clone()
            .map(|c| ringscale_dns::Resolver::new(c).upstreams_for(&name))
            .unwrap_or_default(),
    };
    let q2 = query.clone();
    let res = tokio::task::spawn_blocking(move || {
        forward::resolve(&q2, &upstreams, DOH_TIMEOUT, https_connector())
    })
    .await;
    match res {
        Ok(Ok(a)) => Some(a),
        Ok(Err(e)) => {
            log::debug!("peerapi: dns-query for {name}: {e}");
            ringscale_dns::resolver::servfail(&query)
        }
        Err(_) => ringscale_dns::resolver::servfail(&query),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peerapi_ports_are_in_the_upper_half_and_move_on_retry() {
        let ip: IpAddr = "100.64.0.1".parse().unwrap();
        let p0 = peerapi_port(ip, 0);
        assert!(p0 >= 0x8000);
        assert_ne!(p0, peerapi_port(ip, 1));
        assert_eq!(p0, peerapi_port(ip, 0));
        // The IPv4 address and its IPv4-mapped form give the same port.
        assert_eq!(p0, peerapi_port("::ffff:100.64.0.1".parse().unwrap(), 0));
    }
}
