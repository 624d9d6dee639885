//! Forwarding a query to upstream resolvers, off the packet path: each forwarded
//! query runs on a short-lived thread of its own (bounded in number), with blocking
//! sockets and hard timeouts. Plain DNS goes over UDP and is retried over TCP when the
//! answer comes back truncated (TC); DoH upstreams get an HTTP/1.1 POST (RFC 8484 wire
//! format), which is what an exit node's PeerAPI serves over the tailnet.
//!
//! Upstreams are tried in order until one answers; a query nobody answers within
//! [`QUERY_TIMEOUT`] (Go's per-query bound) fails, and the caller answers SERVFAIL.

use super::resolver::Upstream;
use super::wire;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound on one query across all its upstreams (Go: `dnsQueryTimeout`).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one attempt at one upstream, so a dead first upstream leaves time for the
/// next ones and for the client's own retry.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most queries forwarded at once; beyond this new ones fail at once (SERVFAIL) rather
/// than pile up threads on a small router.
pub const MAX_IN_FLIGHT: usize = 64;
/// Largest answer accepted from an upstream over TCP or DoH.
const MAX_ANSWER: usize = 65_535;

#[derive(Debug)]
pub enum ForwardError {
    NoUpstreams,
    /// Too many queries in flight.
    Busy,
    /// Every upstream failed; the last error.
    Failed(String),
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardError::NoUpstreams => f.write_str("no upstream resolvers"),
            ForwardError::Busy => f.write_str("too many queries in flight"),
            ForwardError::Failed(e) => write!(f, "all upstreams failed: {e}"),
        }
    }
}

impl std::error::Error for ForwardError {}

/// Runs forwarded queries on threads, at most [`MAX_IN_FLIGHT`] at once.
#[derive(Debug, Default)]
pub struct Forwarder {
    in_flight: AtomicUsize,
}

/// Releases a slot when the forwarding thread ends, however it ends.
struct Slot(Arc<Forwarder>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Forwarder {
    pub fn new() -> Arc<Forwarder> {
        Arc::new(Forwarder::default())
    }

    /// Resolves `query` through `upstreams` on a new thread and calls `done` with the
    /// answer, or the error (also at once, on this thread, when too busy).
    pub fn forward(
        self: &Arc<Self>,
        query: Vec<u8>,
        upstreams: Vec<Upstream>,
        done: impl FnOnce(Result<Vec<u8>, ForwardError>) + Send + 'static,
    ) {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            done(Err(ForwardError::Busy));
            return;
        }
        let slot = Slot(self.clone());
        let spawned = std::thread::Builder::new()
            .name("dns-forward".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let _slot = slot;
                done(resolve(&query, &upstreams, QUERY_TIMEOUT));
            });
        if let Err(e) = spawned {
            // The closure (and with it `done` and the slot) is dropped: the caller's
            // completion never runs, and the client retries.
            log::warn!("dns: cannot start a forwarding thread: {e}");
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// Resolves `query` through `upstreams` in order, blocking, within `timeout`.
pub fn resolve(
    query: &[u8],
    upstreams: &[Upstream],
    timeout: Duration,
) -> Result<Vec<u8>, ForwardError> {
    if upstreams.is_empty() {
        return Err(ForwardError::NoUpstreams);
    }
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    for up in upstreams {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let attempt = left.min(ATTEMPT_TIMEOUT);
        let result = match up {
            Upstream::Dns(addr) => query_dns(*addr, query, attempt),
            Upstream::Doh(url) => query_doh(url, query, attempt),
        };
        match result {
            Ok(answer) => return Ok(answer),
            Err(e) => {
                log::debug!("dns: upstream {up}: {e}");
                last = format!("{up}: {e}");
            }
        }
    }
    Err(ForwardError::Failed(last))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Checks that `answer` answers `query` (same ID, QR set).
fn check_answer(query: &[u8], answer: &[u8]) -> io::Result<()> {
    if answer.len() < wire::HEADER_LEN || answer[..2] != query[..2] || answer[2] & 0x80 == 0 {
        return Err(invalid("not an answer to our query"));
    }
    Ok(())
}

/// Plain DNS: UDP first; over TCP when the UDP answer is truncated.
pub fn query_dns(addr: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    if query.len() < wire::HEADER_LEN {
        return Err(invalid("query shorter than a header"));
    }
    let answer = query_udp(addr, query, timeout)?;
    if wire::is_truncated(&answer) {
        log::debug!("dns: truncated answer from {addr}; retrying over TCP");
        return query_tcp(addr, query, timeout);
    }
    Ok(answer)
}

fn query_udp(addr: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let bind: SocketAddr = match addr.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        IpAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    let sock = UdpSocket::bind(bind)?;
    // Connected: the kernel drops datagrams from anyone but the upstream.
    sock.connect(addr)?;
    sock.send(query)?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_ANSWER];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
        }
        sock.set_read_timeout(Some(left))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
            }
            Err(e) => return Err(e),
        };
        // A stray datagram (wrong ID: a late answer to someone else) is skipped.
        if check_answer(query, &buf[..n]).is_ok() {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// DNS over TCP (RFC 7766): a two-byte length before each message.
pub fn query_tcp(addr: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let len = u16::try_from(query.len()).map_err(|_| invalid("query too long"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    s.write_all(&framed)?;
    let mut lb = [0u8; 2];
    s.read_exact(&mut lb)?;
    let n = usize::from(u16::from_be_bytes(lb));
    let mut answer = vec![0u8; n];
    s.read_exact(&mut answer)?;
    check_answer(query, &answer)?;
    Ok(answer)
}

/// `http://host:port/path` with an IP-literal host → (address, host header, path).
fn parse_http_url(url: &str) -> io::Result<(SocketAddr, String, String)> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "https DoH upstreams are not supported yet",
        ));
    } else {
        return Err(invalid(format!("not an http URL: {url}")));
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = match hostport.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let host = hostport.trim_start_matches('[').trim_end_matches(']');
            let ip: IpAddr = host
                .parse()
                .map_err(|_| invalid(format!("DoH host must be an IP address: {hostport}")))?;
            SocketAddr::new(ip, 80)
        }
    };
    Ok((addr, hostport.to_string(), path.to_string()))
}

/// DoH over plain HTTP/1.1 (the exit-node PeerAPI form): POST the query, expect 200
/// with `application/dns-message`.
pub fn query_doh(url: &str, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let (addr, host, path) = parse_http_url(url)?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringscale/{}\r\n\
         Content-Type: application/dns-message\r\nAccept: application/dns-message\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION"),
        query.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(query);
    s.write_all(&req)?;
    let mut resp = Vec::new();
    s.take(MAX_ANSWER as u64 + 8192).read_to_end(&mut resp)?;
    let (status, headers, body) = parse_http_response(&resp)?;
    if status != 200 {
        return Err(invalid(format!("DoH server answered HTTP {status}")));
    }
    let ct = header(&headers, "content-type").unwrap_or("");
    if !ct.starts_with("application/dns-message") {
        return Err(invalid(format!("DoH answer has content type {ct:?}")));
    }
    let body = if header(&headers, "transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(body)?
    } else if let Some(len) = header(&headers, "content-length") {
        let len: usize = len
            .trim()
            .parse()
            .map_err(|_| invalid("bad Content-Length"))?;
        body.get(..len)
            .ok_or_else(|| invalid("DoH answer cut short"))?
            .to_vec()
    } else {
        body.to_vec()
    };
    check_answer(query, &body)?;
    Ok(body)
}

type Headers<'a> = Vec<(&'a str, &'a str)>;

/// Splits an HTTP/1.x response into status, headers and the bytes after them.
fn parse_http_response(resp: &[u8]) -> io::Result<(u16, Headers<'_>, &[u8])> {
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("HTTP response without a header end"))?;
    let head = std::str::from_utf8(&resp[..end]).map_err(|_| invalid("HTTP header not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad HTTP status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    Ok((status, headers, &resp[end + 4..]))
}

fn header<'a>(headers: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// Decodes a chunked body.
fn dechunk(mut body: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("bad chunk"))?;
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| invalid("bad chunk"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid("bad chunk size"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if out.len() + size > MAX_ANSWER {
            return Err(invalid("DoH answer too large"));
        }
        out.extend_from_slice(body.get(..size).ok_or_else(|| invalid("chunk cut short"))?);
        body = body
            .get(size + 2..)
            .ok_or_else(|| invalid("chunk cut short"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot loopback UDP "resolver" answering with `answer(query)`.
    fn udp_server(answer: impl Fn(&[u8]) -> Vec<u8> + Send + 'static) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&answer(&buf[..n]), from);
            }
        });
        addr
    }

    fn answer_to(q: &[u8], tc: bool) -> Vec<u8> {
        let mut a = q.to_vec();
        a[2] |= 0x80;
        if tc {
            a[2] |= 0x02;
        }
        a
    }

    #[test]
    fn a_udp_answer_is_returned() {
        let q = wire::build_query(0x4242, "example.com.", wire::TYPE_A).unwrap();
        let addr = udp_server(|q| answer_to(q, false));
        let a = query_dns(addr, &q, Duration::from_secs(5)).unwrap();
        assert_eq!(&a[..2], &[0x42, 0x42]);
    }

    #[test]
    fn a_truncated_udp_answer_is_retried_over_tcp() {
        let q = wire::build_query(0x4343, "big.example.", wire::TYPE_TXT).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let tcp = TcpListener::bind(("127.0.0.1", port)).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&answer_to(&buf[..n], true), from);
            }
        });
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = tcp.accept() {
                let mut lb = [0u8; 2];
                c.read_exact(&mut lb).unwrap();
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(lb))];
                c.read_exact(&mut q).unwrap();
                let mut a = answer_to(&q, false);
                a.extend_from_slice(&[0xab; 1000]);
                c.write_all(&(a.len() as u16).to_be_bytes()).unwrap();
                c.write_all(&a).unwrap();
            }
        });
        let a = query_dns(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &q,
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(!wire::is_truncated(&a));
        assert_eq!(a.len(), q.len() + 1000);
    }

    #[test]
    fn a_dead_upstream_times_out_and_the_next_one_answers() {
        // A bound socket that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = Upstream::Dns(silent.local_addr().unwrap());
        let live = Upstream::Dns(udp_server(|q| answer_to(q, false)));
        let q = wire::build_query(1, "example.com.", wire::TYPE_A).unwrap();
        let a = resolve(&q, &[dead.clone(), live], Duration::from_secs(8)).unwrap();
        assert_eq!(&a[..2], &q[..2]);
        let e = resolve(&q, &[dead], Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, ForwardError::Failed(_)), "{e}");
        assert!(matches!(
            resolve(&q, &[], QUERY_TIMEOUT),
            Err(ForwardError::NoUpstreams)
        ));
    }

    #[test]
    fn a_wrong_id_is_not_taken_as_the_answer() {
        let q = wire::build_query(7, "example.com.", wire::TYPE_A).unwrap();
        let addr = udp_server(|q| {
            let mut a = answer_to(q, false);
            a[1] ^= 1;
            a
        });
        assert!(query_dns(addr, &q, Duration::from_millis(500)).is_err());
    }

    #[test]
    fn doh_posts_the_query_and_reads_the_answer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the header and the body (whose length the header states).
            loop {
                let n = c.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
                if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&req[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if req.len() >= end + 4 + len {
                        let q = req[end + 4..end + 4 + len].to_vec();
                        let a = answer_to(&q, false);
                        let chunked = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                            a.len()
                        );
                        c.write_all(chunked.as_bytes()).unwrap();
                        c.write_all(&a).unwrap();
                        c.write_all(b"\r\n0\r\n\r\n").unwrap();
                        return head;
                    }
                }
            }
        });
        let q = wire::build_query(0x7777, "exit.example.", wire::TYPE_A).unwrap();
        let a = query_doh(
            &format!("http://127.0.0.1:{port}/dns-query"),
            &q,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(&a[..2], &[0x77, 0x77]);
        let head = server.join().unwrap();
        assert!(head.starts_with("POST /dns-query HTTP/1.1"));
        assert!(head.contains("Content-Type: application/dns-message"));
    }

    #[test]
    fn https_upstreams_are_refused_with_a_reason() {
        let q = wire::build_query(1, "a.", wire::TYPE_A).unwrap();
        let e = query_doh("https://dns.example/dns-query", &q, Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
    }
}
