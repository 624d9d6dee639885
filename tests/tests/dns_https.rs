//! MagicDNS forwarding to `https://` DoH upstreams (RFC 8484 over TLS), end to end: a
//! ringscale daemon whose DNSConfig names DoH servers that only this test's https
//! server answers, Debian's `dig` asking quad-100, and `dnsmasq` as the host's original
//! resolver (it resolves the DoH server's name; quad-100 must never ask itself).
//!
//! ```text
//!   ns node (10.57.0.2) ── bridge ── ns hub (10.57.0.1)
//!   resolv.conf → 10.57.0.1           control server :8080
//!   SSL_CERT_FILE = the test CA       dnsmasq :53  (doh.lan.test → 10.57.0.1)
//!                                     DoH over https :443 (cert from the test CA)
//!                                     DoH over https :8444 (cert from another CA)
//! ```
//!
//! The DoH server is written here (rustls server, HTTP/1.1 POST): it answers A
//! 192.0.2.44 for every name under `doh.test.`, which no other resolver knows. Every
//! wait is bounded; the bounds are generous limits, not timings.

#![forbid(unsafe_code)]

use ringscale_control::tailcfg::{DnsConfig, Resolver};
use ringscale_tests::node::{self, Daemon};
use ringscale_tests::testbed::{self, Lan, NsResolvConf, Proc, TempDir};
use ringscale_wire::dns as wire;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const AUTH_KEY: &str = "tskey-auth-dohtls";
/// The address only the test DoH server has for names under `doh.test.`.
const ANSWER: &str = "192.0.2.44";
/// The DoH server's name, which only the hub's dnsmasq (the node's original resolver)
/// knows.
const DOH_NAME: &str = "doh.lan.test";

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Certs {
    /// The CA the node trusts (its SSL_CERT_FILE).
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A server certificate for the same names from another CA, which the node does
    /// not trust.
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A CA certificate and key named `name` in `dir`: (cert, key).
fn make_ca(dir: &Path, name: &str) -> (String, String) {
    let cert = dir
        .join(format!("{name}.pem"))
        .to_string_lossy()
        .into_owned();
    let key = dir
        .join(format!("{name}-key.pem"))
        .to_string_lossy()
        .into_owned();
    let subj = format!("/CN=ringscale test {name}");
    let mut args = vec!["req", "-x509"];
    args.extend(EC);
    args.extend(["-days", "2", "-subj", &subj, "-keyout", &key, "-out", &cert]);
    openssl(&args);
    (cert, key)
}

/// A server certificate for `doh.lan.test` and `ip` from `ca`: (cert, key).
fn make_leaf(dir: &Path, name: &str, ca: &(String, String), ip: &str) -> (String, String) {
    let p = |suffix: &str| {
        dir.join(format!("{name}{suffix}"))
            .to_string_lossy()
            .into_owned()
    };
    let (key, csr, cert, ext) = (p("-key.pem"), p(".csr"), p(".pem"), p(".ext"));
    let mut req = vec!["req"];
    req.extend(EC);
    req.extend(["-subj", "/CN=doh.lan.test", "-keyout", &key, "-out", &csr]);
    openssl(&req);
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{DOH_NAME},IP:{ip}\n"
        ),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca.0,
        "-CAkey",
        &ca.1,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (cert, key)
}

/// The trusted CA with a server certificate from it, and a rogue CA's certificate for
/// the same names.
fn make_certs(dir: &Path, ip: &str) -> Certs {
    let ca = make_ca(dir, "ca");
    let (cert, key) = make_leaf(dir, "doh", &ca, ip);
    let rogue_ca = make_ca(dir, "rogue-ca");
    let (rogue_cert, rogue_key) = make_leaf(dir, "rogue", &rogue_ca, ip);
    Certs {
        ca: ca.0.into(),
        cert: cert.into(),
        key: key.into(),
        rogue_cert: rogue_cert.into(),
        rogue_key: rogue_key.into(),
    }
}

fn server_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    Arc::new(config)
}

/// What the test DoH server saw.
#[derive(Default)]
struct Seen {
    /// DNS queries answered, by name.
    queries: Mutex<Vec<String>>,
    /// TLS server names (SNI) clients sent; IP-address URLs send none.
    sni: Mutex<Vec<String>>,
    /// Connections that failed in TLS or HTTP.
    failed: AtomicUsize,
}

/// An https DoH server on `listen` in the hub namespace, until `stop`.
struct DohServer {
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DohServer {
    fn start(hub: &testbed::Netns, listen: SocketAddr, config: Arc<rustls::ServerConfig>) -> Self {
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = hub.thread(move || {
            let l = TcpListener::bind(listen).expect("bind the DoH server");
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            // Bounded by the test: it sets `stop` when done (and on drop).
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        if serve(c, &config, &s).is_err() {
                            s.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("DoH server listening");
        DohServer {
            seen,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for DohServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection: one POST /dns-query, answered, then close_notify.
fn serve(
    tcp: std::net::TcpStream,
    config: &Arc<rustls::ServerConfig>,
    seen: &Seen,
) -> io::Result<()> {
    tcp.set_nonblocking(false)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    let conn = rustls::ServerConnection::new(config.clone()).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, body) = loop {
        let n = tls.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::other("closed before a request"));
        }
        req.extend_from_slice(&buf[..n]);
        let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&req[..end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| io::Error::other("no Content-Length"))?;
        if req.len() >= end + 4 + len {
            break (head, req[end + 4..end + 4 + len].to_vec());
        }
    };
    if let Some(name) = tls.conn.server_name() {
        seen.sni.lock().unwrap().push(name.to_string());
    }
    let ok = head.starts_with("POST /dns-query ")
        && head
            .to_ascii_lowercase()
            .contains("content-type: application/dns-message");
    let q = wire::parse_query(&body).map_err(|e| io::Error::other(format!("{e:?}")))?;
    if !ok {
        tls.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")?;
        return Err(io::Error::other(format!("bad request {head:?}")));
    }
    let name = q.question.name.clone();
    seen.queries.lock().unwrap().push(name.clone());
    let answer = if name.ends_with(".doh.test.") && q.question.qtype == wire::TYPE_A {
        let ip = ANSWER.parse().unwrap();
        wire::build_response(&q, wire::Rcode::NoError, &[wire::RData::Addr(ip)], 60)
    } else if name.ends_with(".doh.test.") {
        wire::build_response(&q, wire::Rcode::NoError, &[], 60)
    } else {
        wire::build_response(&q, wire::Rcode::NxDomain, &[], 60)
    };
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.len()
    )
    .into_bytes();
    resp.extend_from_slice(&answer);
    tls.write_all(&resp)?;
    tls.conn.send_close_notify();
    tls.flush()
}

/// `dig @100.100.100.100 NAME A` in the node's namespace: (status, answer addresses,
/// how long it took).
fn dig(ns: &testbed::Netns, name: &str) -> (String, Vec<String>, Duration) {
    let started = Instant::now();
    let out = ns
        .command("dig")
        .args(["@100.100.100.100", "+time=12", "+tries=1", name, "A"])
        .output()
        .expect("run dig");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("(no answer)")
        .to_string();
    let addrs = text
        .lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5 && f[3] == "A").then(|| f[4].to_string())
        })
        .collect();
    (status, addrs, took)
}

fn resolver(addr: &str) -> Resolver {
    Resolver {
        addr: addr.into(),
        ..Default::default()
    }
}

#[test]
fn quad100_forwards_to_https_doh_upstreams() {
    let lan = Lan::new("dohh", "10.57.0");
    let hub_ip = lan.hub_addr().to_string();
    let node_ns = lan.join("dohn", 2);
    let _resolv = NsResolvConf::new(&node_ns, &format!("nameserver {hub_ip}\n"));
    let dir = TempDir::new("doh-https");
    let certs = make_certs(&dir.path, &hub_ip);

    // The node's original resolver: knows the DoH server's name, and nothing under
    // doh.test (so an answer for those can only have come over DoH).
    let mut dnsmasq = testbed::dnsmasq_command(&lan.hub, &hub_ip, &dir.path.join("dnsmasq.pid"));
    dnsmasq.arg(format!("--address=/{DOH_NAME}/{hub_ip}"));
    let _dnsmasq = Proc::spawn(dnsmasq);

    let doh = DohServer::start(
        &lan.hub,
        SocketAddr::new(lan.hub_addr().into(), 443),
        server_config(&certs.cert, &certs.key),
    );
    let rogue = DohServer::start(
        &lan.hub,
        SocketAddr::new(lan.hub_addr().into(), 8444),
        server_config(&certs.rogue_cert, &certs.rogue_key),
    );

    // Default resolvers: the DoH server by name (looked up at the original resolver).
    // Split routes: the same server by address; a port nobody listens on; an address
    // nobody has (no ARP answer); the rogue server whose certificate the node does not
    // trust.
    let mut routes = BTreeMap::new();
    let route = |url: String| Some(vec![resolver(&url)]);
    routes.insert(
        "byip.doh.test.".to_string(),
        route(format!("https://{hub_ip}/dns-query")),
    );
    routes.insert(
        "down.doh.test.".to_string(),
        route(format!("https://{hub_ip}:8443/dns-query")),
    );
    routes.insert(
        "unreachable.doh.test.".to_string(),
        route("https://10.57.0.99/dns-query".to_string()),
    );
    routes.insert(
        "rogue.doh.test.".to_string(),
        route(format!("https://{hub_ip}:8444/dns-query")),
    );
    let server = node::start_control(ringscale_tests::control_server::Options {
        dns_config: Some(DnsConfig {
            domains: vec!["tailnet.test".into()],
            proxied: true,
            resolvers: vec![resolver(&format!("https://{DOH_NAME}/dns-query"))],
            routes,
            ..DnsConfig::default()
        }),
        ..node::control_options(&lan, AUTH_KEY)
    });

    let mut d = Daemon::new(node_ns, "dohh", "dohnode");
    d.verbose = 2;
    d.env.push(("RUST_LOG".into(), "debug".into()));
    // The DoH server's certificate comes from the test CA: the node trusts it through
    // SSL_CERT_FILE, as Go does.
    d.env.push((
        "SSL_CERT_FILE".into(),
        certs.ca.to_string_lossy().into_owned(),
    ));
    d.write_config(&node::control_url(&lan), AUTH_KEY, &serde_json::json!({}));
    d.start();
    d.wait_joined(&server, Duration::from_secs(60));

    // 1. Default route: https by name, the name resolved at the original resolver.
    let mut last = None;
    let ok = testbed::wait_until(Duration::from_secs(30), || {
        let r = dig(&d.ns, "www.doh.test");
        let ok = r.1 == [ANSWER];
        last = Some(r);
        ok
    });
    assert!(
        ok,
        "www.doh.test over https by name: {last:?}\nDoH server saw {:?}, {} failures\n{}",
        doh.seen.queries.lock().unwrap(),
        doh.seen.failed.load(Ordering::Relaxed),
        node::last_lines(&d.log(), 60)
    );
    assert!(
        doh.seen.sni.lock().unwrap().iter().any(|s| s == DOH_NAME),
        "the client named the server (SNI): {:?}",
        doh.seen.sni.lock().unwrap()
    );

    // 2. A split route naming the server by its address.
    let (status, addrs, _) = dig(&d.ns, "host.byip.doh.test");
    assert_eq!(
        (status.as_str(), addrs),
        ("NOERROR", vec![ANSWER.to_string()])
    );
    assert!(doh
        .seen
        .queries
        .lock()
        .unwrap()
        .iter()
        .any(|q| q == "host.byip.doh.test."));

    // 3. Nothing listening: SERVFAIL, well within the query timeout.
    let (status, addrs, took) = dig(&d.ns, "x.down.doh.test");
    assert_eq!(status, "SERVFAIL", "answers {addrs:?}");
    assert!(took < Duration::from_secs(11), "SERVFAIL took {took:?}");

    // 4. No such host: the connection attempt times out; SERVFAIL within the bound.
    let (status, addrs, took) = dig(&d.ns, "x.unreachable.doh.test");
    assert_eq!(status, "SERVFAIL", "answers {addrs:?}");
    assert!(took < Duration::from_secs(11), "SERVFAIL took {took:?}");

    // 5. A server whose certificate does not verify is never asked the question.
    let (status, addrs, _) = dig(&d.ns, "x.rogue.doh.test");
    assert_eq!(status, "SERVFAIL", "answers {addrs:?}");
    assert!(rogue.seen.queries.lock().unwrap().is_empty());
    assert!(
        d.log().contains("UnknownIssuer"),
        "the rogue certificate fails for its issuer:\n{}",
        node::last_lines(&d.log(), 30)
    );

    // 6. The server goes away: the default route fails with SERVFAIL in time.
    drop(doh);
    let (status, _, took) = dig(&d.ns, "gone.doh.test");
    assert_eq!(status, "SERVFAIL");
    assert!(took < Duration::from_secs(11), "SERVFAIL took {took:?}");
    assert!(d.exited().is_none(), "the daemon died");
}
