//! MagicDNS end to end (issue 7): two ringscale daemons joined through the test control
//! server, Debian's `dig` as the client and `dnsmasq` as the upstream resolvers, all in
//! network namespaces made here.
//!
//! ```text
//!   ns a (alpha) ── 10.53.1.0/24 ── ns ctl ── 10.53.2.0/24 ── ns b (beta, exit node)
//!   resolv.conf → 10.53.1.1        control server 10.53.1.1:8080   resolv.conf → 127.0.0.1
//!                                  dnsmasq "lan"  10.53.1.1:53      dnsmasq "exit" 127.0.0.1:53
//!                                  dnsmasq "corp" 10.53.9.1:53      (only beta can reach it)
//! ```
//!
//! resolv.conf is per namespace only because `ip netns exec` bind-mounts
//! `/etc/netns/<ns>/resolv.conf` over `/etc/resolv.conf` when that file exists: every
//! process here is started that way, and the host's own file is checked to be untouched.
//!
//! Every wait is bounded; the bounds are generous limits, not timings.

#![forbid(unsafe_code)]

use ringscale_control::tailcfg::{DnsConfig, DnsRecord, Resolver};
use ringscale_tests::control_server::{ControlServer, Options};
use ringscale_tests::testbed::{self, link, Netns, NsResolvConf, Proc, TempDir};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

const LAN_DNS: &str = "10.53.1.1";
const CORP_DNS: &str = "10.53.9.1";
const CONTROL: &str = "10.53.1.1:8080";

/// The namespace's resolv.conf as the daemon left it.
fn read(r: &NsResolvConf) -> String {
    std::fs::read_to_string(r.path()).unwrap_or_default()
}

fn dnsmasq(ns: &Netns, dir: &TempDir, name: &str, listen: &str, records: &[&str]) -> Proc {
    let pid_file = dir.path.join(format!("{name}.pid"));
    let mut cmd = testbed::dnsmasq_command(ns, listen, &pid_file);
    cmd.args(records)
        .stderr(std::fs::File::create(dir.path.join(format!("{name}.log"))).unwrap());
    Proc::spawn(cmd)
}

/// A ringscale daemon in `ns`, logged in through its `--config` file.
struct Daemon {
    proc: Proc,
    dir: TempDir,
}

impl Daemon {
    fn start(ns: &Netns, label: &str, url: &str, key: &str, extra: &str) -> Daemon {
        let dir = TempDir::new(label);
        let conf = dir.path.join("conf.json");
        std::fs::write(
            &conf,
            format!(
                r#"{{"Version":"alpha0","ServerURL":"{url}","AuthKey":"{key}","Hostname":"{label}"{extra}}}"#
            ),
        )
        .unwrap();
        let mut cmd = ns.command(testbed::ringscale_bin());
        cmd.env("RUST_LOG", "debug")
            .arg("tailscaled")
            .args(["--verbose", "2", "--tun", &format!("{label}0")])
            .arg("--statedir")
            .arg(dir.path.join("state"))
            .arg("--socket")
            .arg(dir.path.join("sock"))
            .arg("--config")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path.join("log")).unwrap());
        Daemon {
            proc: Proc::spawn(cmd),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("log")).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn alive(&mut self) -> bool {
        self.proc.exited().is_none()
    }
}

/// `dig @100.100.100.100 ARGS` in `ns`; the whole output.
fn dig(ns: &Netns, args: &[&str]) -> String {
    let out = ns
        .command("dig")
        .args(["@100.100.100.100", "+time=3", "+tries=2"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The answer records of a `dig` output: (name, type, data) per line.
fn answers(out: &str) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    let mut in_answer = false;
    for line in out.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() || line.starts_with(";;") {
                break;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                v.push((f[0].to_string(), f[3].to_string(), f[4..].join(" ")));
            }
        }
    }
    v
}

fn status(out: &str) -> String {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("(no answer)")
        .to_string()
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    ctx: impl Fn() -> String,
) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("timed out waiting for {what}\n{}", ctx());
}

/// One DNS exchange over UDP from inside `ns`: the reply, or None after `wait`.
fn udp_exchange(ns: &Netns, msg: Vec<u8>, wait: Duration) -> Option<Vec<u8>> {
    ns.thread(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        s.send_to(&msg, "100.100.100.100:53").unwrap();
        let mut buf = [0u8; 4096];
        s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    })
    .join()
    .unwrap()
}

/// Sends `bytes` over TCP to quad-100 from `ns` and reads until the server closes or
/// `wait` passes: (what came back, whether the server closed).
fn tcp_exchange(ns: &Netns, bytes: Vec<u8>, wait: Duration) -> (Vec<u8>, bool) {
    ns.thread(move || {
        let mut s =
            TcpStream::connect_timeout(&"100.100.100.100:53".parse().unwrap(), wait).unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        s.write_all(&bytes).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (got, true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                // A reset closes too.
                Err(e) => return (got, e.kind() == std::io::ErrorKind::ConnectionReset),
            }
        }
    })
    .join()
    .unwrap()
}

fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![(id >> 8) as u8, id as u8, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, (qtype >> 8) as u8, qtype as u8, 0, 1]);
    q
}

/// A raw HTTP/1.1 request from `ns`; the whole response.
fn http(ns: &Netns, to: SocketAddr, request: Vec<u8>) -> Vec<u8> {
    ns.thread(move || {
        let mut s = match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => return format!("connect: {e}").into_bytes(),
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&request).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    })
    .join()
    .unwrap()
}

fn doh_post(host: &str, q: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /dns-query HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/dns-message\r\nAccept: application/dns-message\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        q.len()
    )
    .into_bytes();
    r.extend_from_slice(q);
    r
}

fn both(a: &Daemon, b: &Daemon) -> String {
    format!("--- alpha\n{}\n--- beta\n{}", a.tail(), b.tail())
}

fn sha_of(path: &str) -> String {
    std::fs::read(path)
        .map(|b| format!("{:x}", b.len()) + &String::from_utf8_lossy(&b))
        .unwrap_or_default()
}

#[test]
fn magicdns_split_dns_exit_node_dns_and_hostile_input() {
    let host_resolv_before = sha_of("/etc/resolv.conf");
    let ctl = Netns::new("dnsctl");
    let a = Netns::new("dnsa");
    let b = Netns::new("dnsb");
    let outsider = Netns::new("dnsout");
    link(&ctl, &["10.53.1.1/24"], &a, &["10.53.1.2/24"]);
    link(&ctl, &["10.53.2.1/24"], &b, &["10.53.2.2/24"]);
    link(&ctl, &["10.53.3.1/24"], &outsider, &["10.53.3.2/24"]);
    ctl.sh("sysctl -qw net.ipv4.ip_forward=1 && ip addr add 10.53.9.1/32 dev lo");
    a.ip(&["route", "add", "default", "via", "10.53.1.1"]);
    b.ip(&["route", "add", "default", "via", "10.53.2.1"]);
    outsider.ip(&["route", "add", "default", "via", "10.53.3.1"]);

    let a_original = "# alpha's LAN resolver\nnameserver 10.53.1.1\n";
    let a_resolv = NsResolvConf::new(&a, a_original);
    let b_original = "nameserver 127.0.0.1\n";
    let b_resolv = NsResolvConf::new(&b, b_original);

    // Upstreams: "lan" (alpha's own resolver), "corp" (split DNS), and "exit", which
    // only beta's namespace can reach.
    let dns_dir = TempDir::new("dnsmasq");
    let big: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "--txt-record=big.upstream.test,\"{i:02}-{}\"",
                "x".repeat(90)
            )
        })
        .collect();
    let mut lan_args = vec!["--address=/www.upstream.test/192.0.2.10"];
    lan_args.extend(big.iter().map(String::as_str));
    let _lan = dnsmasq(&ctl, &dns_dir, "lan", LAN_DNS, &lan_args);
    let _corp = dnsmasq(
        &ctl,
        &dns_dir,
        "corp",
        CORP_DNS,
        &["--address=/db.corp.test/192.0.2.20"],
    );
    let _exit = dnsmasq(
        &b,
        &dns_dir,
        "exit",
        "127.0.0.1",
        &["--address=/only.exit.test/192.0.2.30"],
    );

    let mut routes = BTreeMap::new();
    routes.insert(
        "corp.test.".to_string(),
        Some(vec![Resolver {
            addr: CORP_DNS.into(),
            ..Default::default()
        }]),
    );
    let server = ControlServer::start(Options {
        listen: CONTROL.parse().unwrap(),
        netns: Some(ctl.path()),
        auto_approve_exit_nodes: true,
        keepalive: Duration::from_secs(5),
        dns_config: Some(DnsConfig {
            domains: vec!["tailnet.test".into()],
            proxied: true,
            routes,
            extra_records: vec![
                DnsRecord {
                    name: "extra.example.".into(),
                    record_type: "A".into(),
                    value: "100.64.7.7".into(),
                },
                DnsRecord {
                    name: "extra.example.".into(),
                    record_type: "AAAA".into(),
                    value: "fd7a:115c:a1e0::77".into(),
                },
            ],
            ..DnsConfig::default()
        }),
        ..Options::default()
    })
    .expect("control server");
    let key = server.create_auth_key(true, false);

    let mut beta = Daemon::start(
        &b,
        "beta",
        server.url(),
        &key,
        r#","AdvertiseRoutes":["0.0.0.0/0","::/0"]"#,
    );
    wait_until(
        "beta to register",
        Duration::from_secs(60),
        || server.node("beta").is_some(),
        || beta.tail(),
    );
    let mut alpha = Daemon::start(&a, "alpha", server.url(), &key, "");
    let beta_node = server.node("beta").unwrap();
    let beta4 = beta_node
        .addresses
        .iter()
        .map(|p| p.addr())
        .find(IpAddr::is_ipv4)
        .unwrap();
    let beta6 = beta_node
        .addresses
        .iter()
        .map(|p| p.addr())
        .find(IpAddr::is_ipv6)
        .unwrap();

    // 1. quad-100 answers a peer's FQDN once alpha has its netmap.
    wait_until(
        "alpha's quad-100 to answer beta.tailnet.test",
        Duration::from_secs(60),
        || {
            answers(&dig(&a, &["beta.tailnet.test", "A"]))
                .iter()
                .any(|r| r.2 == beta4.to_string())
        },
        || both(&alpha, &beta),
    );

    // 2. The host (alpha's namespace) points at quad-100 with the search domain.
    let conf = read(&a_resolv);
    assert!(
        conf.contains("nameserver 100.100.100.100") && conf.contains("search tailnet.test"),
        "alpha's resolv.conf was not set: {conf:?}"
    );
    assert!(
        !conf.contains("10.53.1.1"),
        "the old nameserver is still there: {conf:?}"
    );

    // 3. Names: case-insensitive FQDN, short name (asked directly, and through the
    //    search list by the system resolver).
    let out = dig(&a, &["BeTa.TailNet.TEST", "A"]);
    assert_eq!(answers(&out).len(), 1, "{out}");
    assert_eq!(answers(&out)[0].2, beta4.to_string(), "{out}");
    assert!(
        answers(&out)[0].0.starts_with("BeTa.TailNet.TEST"),
        "the question's case is echoed: {out}"
    );
    let out = dig(&a, &["beta", "A"]);
    assert_eq!(
        answers(&out)
            .iter()
            .map(|r| r.2.clone())
            .collect::<Vec<_>>(),
        [beta4.to_string()],
        "{out}"
    );
    let getent = a
        .command("getent")
        .args(["ahostsv4", "beta"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&getent.stdout).contains(&beta4.to_string()),
        "the system resolver did not find the short name through resolv.conf: {:?}",
        getent
    );
    // TTL as Go sets it.
    let out = dig(&a, &["beta.tailnet.test", "A", "+noall", "+answer"]);
    assert!(
        out.contains("\t600\t") || out.contains(" 600 "),
        "TTL is not 600: {out}"
    );

    // 4. AAAA: a peer that has IPv4 gets no AAAA without the magicdns-aaaa attribute
    //    (NOERROR, empty, as Go); ExtraRecords answer both types.
    let out = dig(&a, &["beta.tailnet.test", "AAAA"]);
    assert_eq!(
        (status(&out).as_str(), answers(&out).len()),
        ("NOERROR", 0),
        "{out}"
    );
    let out = dig(&a, &["extra.example", "AAAA"]);
    assert_eq!(
        answers(&out)
            .iter()
            .map(|r| r.2.clone())
            .collect::<Vec<_>>(),
        ["fd7a:115c:a1e0::77"],
        "{out}"
    );
    let out = dig(&a, &["extra.example", "A"]);
    assert_eq!(
        answers(&out)
            .iter()
            .map(|r| r.2.clone())
            .collect::<Vec<_>>(),
        ["100.64.7.7"],
        "{out}"
    );
    let out = dig(&a, &["beta.tailnet.test", "TXT"]);
    assert_eq!(
        (status(&out).as_str(), answers(&out).len()),
        ("NOERROR", 0),
        "{out}"
    );

    // 5. PTR for both of beta's addresses and for quad-100 itself; unknown tailnet
    //    names and addresses do not exist.
    let out = dig(&a, &["-x", &beta4.to_string()]);
    assert_eq!(
        answers(&out)
            .iter()
            .map(|r| r.2.clone())
            .collect::<Vec<_>>(),
        ["beta.tailnet.test."],
        "{out}"
    );
    // Go builds the reverse map from the host records, so without magicdns-aaaa the
    // IPv6 address has none: NXDOMAIN inside the tailnet's reverse zone.
    assert_eq!(status(&dig(&a, &["-x", &beta6.to_string()])), "NXDOMAIN");
    let out = dig(&a, &["-x", "100.100.100.100"]);
    assert!(
        out.contains("magicdns.localhost-tailscale-daemon."),
        "{out}"
    );
    assert_eq!(status(&dig(&a, &["nobody.tailnet.test"])), "NXDOMAIN");
    assert_eq!(status(&dig(&a, &["-x", "100.64.99.99"])), "NXDOMAIN");

    // 6. Forwarding: other names go to alpha's original resolver, corp.test to its own.
    let out = dig(&a, &["www.upstream.test", "A"]);
    assert_eq!(
        answers(&out)
            .iter()
            .map(|r| r.2.clone())
            .collect::<Vec<_>>(),
        ["192.0.2.10"],
        "{out}\n{}",
        both(&alpha, &beta)
    );
    let out = dig(&a, &["db.corp.test", "A"]);
    assert_eq!(
        answers(&out)
            .iter()
            .map(|r| r.2.clone())
            .collect::<Vec<_>>(),
        ["192.0.2.20"],
        "{out}"
    );
    // The LAN resolver does not know db.corp.test: the answer above came from "corp".
    let direct = a
        .command("dig")
        .args(["@10.53.1.1", "+time=2", "db.corp.test"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&direct.stdout).contains("192.0.2.20"));

    // 7. The same over TCP.
    for (name, want) in [
        ("beta.tailnet.test", beta4.to_string()),
        ("www.upstream.test", "192.0.2.10".into()),
        ("db.corp.test", "192.0.2.20".into()),
    ] {
        let out = dig(&a, &["+tcp", name, "A"]);
        assert_eq!(
            answers(&out)
                .iter()
                .map(|r| r.2.clone())
                .collect::<Vec<_>>(),
            [want],
            "TCP {name}: {out}"
        );
    }
    // An answer too big for UDP: the upstream truncates, quad-100 retries over TCP and
    // hands dig a truncated UDP answer, and dig's retry over TCP gets all 20 records.
    let out = dig(&a, &["big.upstream.test", "TXT"]);
    assert_eq!(answers(&out).len(), 20, "{out}");
    assert!(
        out.contains("Truncated, retrying in TCP mode") || out.contains("TCP"),
        "{out}"
    );

    // 8. ICMP echo to quad-100.
    assert!(
        a.ping("100.100.100.100"),
        "ping 100.100.100.100 failed\n{}",
        both(&alpha, &beta)
    );

    // 9. Hostile input over UDP and TCP: FORMERR or nothing, and the daemon lives on.
    assert_eq!(
        udp_exchange(&a, vec![1, 2, 3, 4, 5], Duration::from_secs(1)),
        None
    );
    let mut truncated = query(0x5151, "beta.tailnet.test", 1);
    truncated.truncate(20);
    let r = udp_exchange(&a, truncated, Duration::from_secs(3))
        .expect("FORMERR for a truncated question");
    assert_eq!((&r[..2], r[3] & 0x0f), (&[0x51u8, 0x51][..], 1), "{r:?}");
    let mut looped = query(0x5252, "x", 1)[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let r = udp_exchange(&a, looped, Duration::from_secs(3)).expect("FORMERR for a pointer loop");
    assert_eq!(r[3] & 0x0f, 1, "{r:?}");
    let mut counts = query(0x5353, "beta.tailnet.test", 1);
    counts[4..12].copy_from_slice(&[0xff; 8]);
    let r =
        udp_exchange(&a, counts, Duration::from_secs(3)).expect("an answer despite absurd counts");
    assert_eq!(r[3] & 0x0f, 0);
    let mut long_name = query(0x5454, "x", 1)[..12].to_vec();
    for _ in 0..5 {
        long_name.push(63);
        long_name.extend_from_slice(&[b'a'; 63]);
    }
    long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
    let r =
        udp_exchange(&a, long_name, Duration::from_secs(3)).expect("FORMERR for a 300-byte name");
    assert_eq!(r[3] & 0x0f, 1);
    let mut response = query(0x5555, "beta.tailnet.test", 1);
    response[2] |= 0x80;
    assert_eq!(
        udp_exchange(&a, response, Duration::from_secs(1)),
        None,
        "a response was answered"
    );
    let (got, closed) = tcp_exchange(&a, vec![0, 0], Duration::from_secs(5));
    assert!(
        got.is_empty() && closed,
        "zero-length TCP frame: got {got:?}, closed {closed}"
    );
    let mut framed = vec![0, 30];
    framed.extend_from_slice(&[0xff; 12]);
    let (got, closed) = tcp_exchange(&a, framed, Duration::from_secs(3));
    assert!(
        got.is_empty() && !closed,
        "a partial frame must just wait: {got:?}"
    );
    let mut framed = vec![0, 14];
    framed.extend_from_slice(&query(0x5656, "x", 1)[..14]);
    let (got, _) = tcp_exchange(&a, framed, Duration::from_secs(3));
    assert!(
        got.len() >= 14 && got[5] & 0x0f == 1,
        "FORMERR over TCP: {got:?}"
    );
    assert!(
        alpha.alive(),
        "alpha died on hostile input\n{}",
        alpha.tail()
    );
    assert!(!alpha.log().contains("panicked"), "{}", alpha.tail());
    let out = dig(&a, &["beta.tailnet.test", "A"]);
    assert_eq!(
        answers(&out).len(),
        1,
        "quad-100 stopped answering after hostile input: {out}"
    );

    // 10. beta's PeerAPI: its DoH endpoint answers a tailnet peer (GET and POST) and
    //     refuses anyone else.
    let port: u16 = {
        let log = beta.log();
        let needle = format!("peerapi: listening on {beta4}:");
        let at = log
            .find(&needle)
            .unwrap_or_else(|| panic!("beta's PeerAPI did not start\n{}", beta.tail()));
        log[at + needle.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let peerapi = SocketAddr::new(beta4, port);
    let host = peerapi.to_string();
    let raw = http(
        &a,
        peerapi,
        doh_post(&host, &query(0x6161, "only.exit.test", 1)),
    );
    let resp = String::from_utf8_lossy(&raw);
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.contains("application/dns-message"),
        "{resp}\n{}",
        both(&alpha, &beta)
    );
    assert!(
        raw.windows(4).any(|w| w == [192, 0, 2, 30]),
        "the answer lacks 192.0.2.30: {resp:?}"
    );
    use base64::Engine as _;
    let get = format!(
        "GET /dns-query?dns={} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(query(0x6262, "only.exit.test", 1))
    );
    let raw = http(&a, peerapi, get.into_bytes());
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(
        raw.windows(4).any(|w| w == [192, 0, 2, 30]),
        "GET answer lacks 192.0.2.30"
    );
    // The target in absolute form, as Go's net/http takes it: path and query from the
    // URL, Host from its authority (no Host header needed).
    let get = format!(
        "GET http://{host}/dns-query?dns={} HTTP/1.1\r\nConnection: close\r\n\r\n",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(query(0x6565, "only.exit.test", 1))
    );
    let raw = http(&a, peerapi, get.into_bytes());
    assert!(
        raw.starts_with(b"HTTP/1.1 200") && raw.windows(4).any(|w| w == [192, 0, 2, 30]),
        "absolute-form GET: {}",
        String::from_utf8_lossy(&raw)
    );
    // Framing a proxy in front could read differently is refused before any DNS work.
    let mut smuggle = doh_post(&host, &query(0x6666, "only.exit.test", 1));
    let head_end = smuggle.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    smuggle.splice(
        head_end + 2..head_end + 2,
        *b"Transfer-Encoding: chunked\r\n",
    );
    let raw = http(&a, peerapi, smuggle);
    assert!(
        raw.starts_with(b"HTTP/1.1 400"),
        "Content-Length with Transfer-Encoding: {}",
        String::from_utf8_lossy(&raw)
    );
    // Not a tailnet peer: the outsider routes to beta's tailnet address over the LAN.
    ctl.ip(&["route", "add", &format!("{beta4}/32"), "via", "10.53.2.2"]);
    let resp = http(
        &outsider,
        peerapi,
        doh_post(&host, &query(0x6363, "only.exit.test", 1)),
    );
    assert!(
        resp.starts_with(b"HTTP/1.1 403"),
        "a non-peer was not refused: {}",
        String::from_utf8_lossy(&resp)
    );
    let resp = http(
        &a,
        peerapi,
        doh_post("evil.example", &query(0x6464, "only.exit.test", 1)),
    );
    assert!(
        resp.starts_with(b"HTTP/1.1 403"),
        "a foreign Host was not refused: {}",
        String::from_utf8_lossy(&resp)
    );

    // 11. Exit restores resolv.conf.
    alpha.proc.signal(libc::SIGTERM);
    let exited = alpha.proc.wait_timeout(Duration::from_secs(15));
    assert!(
        exited.is_some(),
        "alpha did not exit on SIGTERM\n{}",
        alpha.tail()
    );
    assert_eq!(
        read(&a_resolv),
        a_original,
        "alpha's resolv.conf was not restored on exit"
    );

    // 12. Exit-node DNS: a node using beta as exit node resolves names only beta's
    //     resolver knows, through beta's /dns-query (the daemon has no LocalAPI yet, so
    //     the exit node is chosen in its config file).
    let mut gamma = Daemon::start(
        &a,
        "gamma",
        server.url(),
        &key,
        &format!(r#","exitNode":"{beta4}""#),
    );
    wait_until(
        "only.exit.test through the exit node",
        Duration::from_secs(60),
        || {
            answers(&dig(&a, &["only.exit.test", "A"]))
                .iter()
                .any(|r| r.2 == "192.0.2.30")
        },
        || both(&gamma, &beta),
    );
    // alpha's LAN resolver is no longer asked: the exit node answers for everything.
    let out = dig(&a, &["www.upstream.test", "A"]);
    assert!(
        answers(&out).is_empty(),
        "www.upstream.test should now go to beta's resolver: {out}"
    );
    gamma.proc.signal(libc::SIGTERM);
    assert!(
        gamma.proc.wait_timeout(Duration::from_secs(15)).is_some(),
        "{}",
        gamma.tail()
    );
    assert_eq!(
        read(&a_resolv),
        a_original,
        "gamma's exit did not restore resolv.conf"
    );

    // 13. After a crash, --cleanup restores resolv.conf.
    assert!(
        read(&b_resolv).contains("nameserver 100.100.100.100"),
        "beta's resolv.conf: {:?}",
        read(&b_resolv)
    );
    beta.proc.signal(libc::SIGKILL);
    wait_until(
        "beta to die",
        Duration::from_secs(10),
        || !beta.alive(),
        String::new,
    );
    let out = b
        .command(testbed::ringscale_bin())
        .args(["tailscaled", "--cleanup", "--statedir"])
        .arg(beta.dir.path.join("state"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        read(&b_resolv),
        b_original,
        "--cleanup did not restore beta's resolv.conf"
    );
    assert_eq!(
        sha_of("/etc/resolv.conf"),
        host_resolv_before,
        "the host's resolv.conf changed"
    );
    drop(server);
}
