//! Forwarding a query to upstream resolvers, off the packet path: each forwarded
//! query runs on a short-lived thread of its own (bounded in number), with blocking
//! sockets and hard timeouts. Plain DNS goes over UDP and is retried over TCP when the
//! answer comes back truncated (TC); DoH upstreams (an exit node's PeerAPI over the
//! tailnet, `https://` resolvers with the binary's TLS) go through [`super::doh`].
//!
//! Upstreams are tried in order until one answers; a query nobody answers within
//! [`QUERY_TIMEOUT`] (Go's per-query bound) fails, and the caller answers SERVFAIL.

use super::doh;
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
pub struct Forwarder {
    https: doh::Https,
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
    /// `https` connects to `https://` DoH upstreams (None: this build has no TLS).
    pub fn new(https: doh::Https) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            https,
            in_flight: AtomicUsize::new(0),
        })
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
        let https = self.https;
        let spawned = std::thread::Builder::new()
            .name("dns-forward".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let _slot = slot;
                done(resolve(&query, &upstreams, QUERY_TIMEOUT, https));
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
    https: doh::Https,
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
            Upstream::Doh(url) => doh::query(url, query, attempt, https),
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
pub(super) fn check_answer(query: &[u8], answer: &[u8]) -> io::Result<()> {
    if answer.len() < wire::HEADER_LEN || answer[..2] != query[..2] || answer[2] & 0x80 == 0 {
        return Err(invalid("not an answer to our query"));
    }
    Ok(())
}

/// Plain DNS: UDP first; over TCP when the UDP answer is truncated.
pub fn query_dns(addr: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    query_dns_marked(addr, query, timeout, false)
}

/// [`query_dns`], with the sockets marked to bypass the tunnel when `bypass` (the DoH
/// bootstrap lookups).
pub fn query_dns_marked(
    addr: SocketAddr,
    query: &[u8],
    timeout: Duration,
    bypass: bool,
) -> io::Result<Vec<u8>> {
    if query.len() < wire::HEADER_LEN {
        return Err(invalid("query shorter than a header"));
    }
    let answer = query_udp(addr, query, timeout, bypass)?;
    if wire::is_truncated(&answer) {
        log::debug!("dns: truncated answer from {addr}; retrying over TCP");
        return query_tcp_marked(addr, query, timeout, bypass);
    }
    Ok(answer)
}

fn query_udp(
    addr: SocketAddr,
    query: &[u8],
    timeout: Duration,
    bypass: bool,
) -> io::Result<Vec<u8>> {
    let bind: SocketAddr = match addr.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        IpAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    let sock = UdpSocket::bind(bind)?;
    if bypass {
        doh::mark(&sock);
    }
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
    query_tcp_marked(addr, query, timeout, false)
}

fn query_tcp_marked(
    addr: SocketAddr,
    query: &[u8],
    timeout: Duration,
    bypass: bool,
) -> io::Result<Vec<u8>> {
    let len = u16::try_from(query.len()).map_err(|_| invalid("query too long"))?;
    let mut s = if bypass {
        doh::connect(addr, timeout)?
    } else {
        TcpStream::connect_timeout(&addr, timeout)?
    };
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
        let a = resolve(&q, &[dead.clone(), live], Duration::from_secs(8), None).unwrap();
        assert_eq!(&a[..2], &q[..2]);
        let e = resolve(&q, &[dead], Duration::from_millis(300), None).unwrap_err();
        assert!(matches!(e, ForwardError::Failed(_)), "{e}");
        assert!(matches!(
            resolve(&q, &[], QUERY_TIMEOUT, None),
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
}
