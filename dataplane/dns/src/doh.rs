//! DNS over HTTP(S) upstreams (RFC 8484, POST `application/dns-message`), blocking, for
//! the forwarder's threads: an exit node's PeerAPI (`http://100.x.y.z:port/dns-query`,
//! over the tailnet) and public or private resolvers (`https://host/path`).
//!
//! This crate has no TLS of its own: the binary passes an [`HttpsConnector`] in (a
//! [`Https`] value, through the forwarder and quad-100) when it is built with TLS (the
//! `ringscale` crate's `tls` feature); there is no global hook. The connector finds the
//! server's addresses (an https server's name must not be resolved through the system
//! resolver, which is quad-100 itself once the host points at it), connects with
//! [`connect_any`] and runs TLS; the HTTP exchange is the same as for plain http.
//! Without one, `https://` upstreams fail with a clear error and the next upstream is
//! tried.
//!
//! Sockets to DoH servers carry the bypass mark (SO_MARK, as Go's system dialer does),
//! so they keep using the host's routes while an exit node has the default route; a
//! server on a tailnet address (an exit node's PeerAPI) is the exception: its only way
//! is through the tunnel.

use super::forward::check_answer;
use ringscale_http1::{blocking, BodyDecoder, HeadWriter, ReadError, ResponseHead};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Largest answer accepted from a DoH server.
const MAX_ANSWER: usize = 65_535;

/// A byte stream a DoH request runs over: plain TCP, or TLS on top of it.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// `https://` upstreams, supplied by the binary (which has TLS).
pub trait HttpsConnector: Send + Sync {
    /// A verified TLS stream to `url`'s server, ready for the request (read and
    /// write timeouts set), by `deadline`.
    fn connect(&self, url: &DohUrl, deadline: Instant) -> io::Result<Box<dyn Stream>>;
}

/// The client for `https://` upstreams, if this build has one.
pub type Https = Option<&'static dyn HttpsConnector>;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A DoH upstream's URL, split into what the client needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DohUrl {
    pub https: bool,
    /// A DNS name (lower-case, no trailing dot) or an IP address (no brackets).
    pub host: String,
    pub port: u16,
    /// The request target: path and query, starting with `/`.
    pub target: String,
    /// The `Host` header: the URL's authority as written.
    pub authority: String,
}

impl DohUrl {
    /// Parses `http://` and `https://` URLs; no user info, no fragment kept.
    pub fn parse(url: &str) -> io::Result<DohUrl> {
        let url = url.trim();
        let scheme_end = url
            .find("://")
            .ok_or_else(|| invalid(format!("not a URL: {url:?}")))?;
        let https = match url[..scheme_end].to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            other => return Err(invalid(format!("DoH URL scheme {other:?} is not http(s)"))),
        };
        let rest = &url[scheme_end + 3..];
        let rest = rest.split('#').next().unwrap_or("");
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(auth_end);
        if authority.contains('@') {
            return Err(invalid("DoH URL with user info"));
        }
        let target = match target.chars().next() {
            None => "/".to_string(),
            Some('?') => format!("/{target}"),
            Some(_) => target.to_string(),
        };
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (ip, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid(format!("bad IPv6 host in {url:?}")))?;
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| invalid(format!("bad IPv6 host in {url:?}")))?;
            let port = match after {
                "" => default_port,
                p => parse_port(p.strip_prefix(':').unwrap_or("x"), url)?,
            };
            (ip.to_string(), port)
        } else {
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, parse_port(p, url)?),
                None => (authority, default_port),
            };
            if !is_host_name(host) {
                return Err(invalid(format!("bad host {host:?} in DoH URL")));
            }
            (host.trim_end_matches('.').to_ascii_lowercase(), port)
        };
        Ok(DohUrl {
            https,
            host,
            port,
            target,
            authority: authority.to_string(),
        })
    }

    /// The host as an address, when the URL names one.
    pub fn host_ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

fn parse_port(p: &str, url: &str) -> io::Result<u16> {
    p.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| invalid(format!("bad port in {url:?}")))
}

/// A DNS name or IPv4 literal as a URL host may be.
fn is_host_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Tailnet addresses (100.64.0.0/10, fd7a:115c:a1e0::/48) are reached through the
/// tunnel, so sockets to them must not bypass it.
pub fn is_tailnet_addr(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 100 && (64..128).contains(&o[1])
        }
        IpAddr::V6(a) => a.segments()[..3] == [0xfd7a, 0x115c, 0xa1e0],
    }
}

/// Resolves `query` at the DoH server of `url` within `timeout`; `https` connects to
/// `https://` servers.
pub fn query(url: &str, query: &[u8], timeout: Duration, https: Https) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let parsed = DohUrl::parse(url)?;
    let mut stream: Box<dyn Stream> = if parsed.https {
        let https = https.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "https DoH upstreams need a build with the `tls` feature",
            )
        })?;
        https.connect(&parsed, deadline)?
    } else {
        // Plain http is for an exit node's PeerAPI, always named by its address.
        let ip = parsed
            .host_ip()
            .ok_or_else(|| invalid(format!("http DoH host must be an IP address: {url}")))?;
        let tcp = connect_any(&[ip], parsed.port, deadline)?;
        set_timeouts(&tcp, deadline)?;
        Box::new(tcp)
    };
    exchange(&mut *stream, &parsed, query, deadline)
}

/// Read and write timeouts on `tcp` for what is left until `deadline`.
pub fn set_timeouts(tcp: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "no time left"));
    }
    tcp.set_read_timeout(Some(left))?;
    tcp.set_write_timeout(Some(left))
}

/// A TCP connection to the first of `addrs` that answers, each tried with an equal
/// share of the time left; marked as [`connect`] says.
pub fn connect_any(addrs: &[IpAddr], port: u16, deadline: Instant) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
    for (i, &ip) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, last.to_string()));
        }
        let share = left / (addrs.len() - i) as u32;
        match connect(
            SocketAddr::new(ip, port),
            share.max(Duration::from_millis(100)),
        ) {
            Ok(s) => return Ok(s),
            Err(e) => {
                log::debug!("dns: DoH connect {ip}:{port}: {e}");
                last = io::Error::new(e.kind(), format!("{ip}: {e}"));
            }
        }
    }
    Err(last)
}

/// A TCP connection to `addr` within `timeout`, marked to bypass the tunnel unless
/// `addr` is on the tailnet.
pub(super) fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    ringscale_sys::tcp::connect_timeout(addr, timeout, !is_tailnet_addr(addr.ip()))
}

/// The bypass mark, quietly: without CAP_NET_ADMIN (tests, unprivileged use) there is
/// no policy routing to bypass either.
pub fn mark(sock: &impl AsRawFd) {
    if let Err(e) = ringscale_sys::fwmark::set_bypass_mark(sock) {
        log::trace!("dns: SO_MARK: {e}");
    }
}

/// One POST over `stream` (`Connection: close`): the answer to `query`.
fn exchange(
    stream: &mut dyn Stream,
    url: &DohUrl,
    query: &[u8],
    deadline: Instant,
) -> io::Result<Vec<u8>> {
    let req = HeadWriter::request("POST", &url.target)
        .header("Host", &url.authority)
        .header(
            "User-Agent",
            concat!("ringscale/", env!("CARGO_PKG_VERSION")),
        )
        .header("Content-Type", "application/dns-message")
        .header("Accept", "application/dns-message")
        .header("Connection", "close")
        .finish_with_body(query);
    stream.write_all(&req)?;
    stream.flush()?;
    let body = read_response(stream, deadline)?;
    check_answer(query, &body)?;
    Ok(body)
}

/// Reads one response and returns its `application/dns-message` body. Stops as soon as
/// the body is complete, so a TLS server that closes without close_notify is no error.
/// A server trickling bytes is cut off at `deadline` (the socket timeouts bound each
/// read only).
fn read_response<R: Read + ?Sized>(stream: &mut R, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut stream = UntilDeadline { stream, deadline };
    let mut buf = Vec::new();
    let head_len = blocking::read_head(&mut stream, &mut buf).map_err(read_error)?;
    let head = ResponseHead::parse(&buf[..head_len]).map_err(|e| invalid(e.to_string()))?;
    if head.status != 200 {
        return Err(invalid(format!("DoH server answered HTTP {}", head.status)));
    }
    let ct = head.headers.get("content-type").unwrap_or("");
    if !ct.starts_with("application/dns-message") {
        return Err(invalid(format!("DoH answer has content type {ct:?}")));
    }
    let body = head
        .body_length()
        .and_then(|len| BodyDecoder::new(len, MAX_ANSWER as u64))
        .map_err(|e| read_error(e.into()))?;
    blocking::read_body(&mut stream, &buf[head_len..], body).map_err(read_error)
}

fn read_error(e: ReadError) -> io::Error {
    match e {
        ReadError::Io(e) => e,
        ReadError::Closed { .. } | ReadError::Http(ringscale_http1::Error::BodyTruncated) => {
            invalid("DoH answer cut short")
        }
        ReadError::Http(ringscale_http1::Error::BodyTooLarge) => invalid("DoH answer too large"),
        ReadError::Http(e) => invalid(e.to_string()),
    }
}

/// A reader that fails once `deadline` has passed, and reads TLS's "closed without
/// close_notify" as the end of the stream (a body without length ends there).
struct UntilDeadline<'a, R: ?Sized> {
    stream: &'a mut R,
    deadline: Instant,
}

impl<R: Read + ?Sized> Read for UntilDeadline<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "DoH answer too slow",
            ));
        }
        match self.stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire;
    use super::*;
    use std::net::TcpListener;

    fn answer_to(q: &[u8]) -> Vec<u8> {
        let mut a = q.to_vec();
        a[2] |= 0x80;
        a
    }

    /// A one-request loopback HTTP server: reads a POST, answers `respond(head, body)`
    /// and returns the request head.
    fn http_server(
        respond: impl FnOnce(&str, &[u8]) -> Vec<u8> + Send + 'static,
    ) -> (u16, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "client closed before sending the body");
                req.extend_from_slice(&buf[..n]);
                let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&req[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if req.len() >= end + 4 + len {
                    let out = respond(&head, &req[end + 4..end + 4 + len]);
                    c.write_all(&out).unwrap();
                    return head;
                }
            }
        });
        (port, server)
    }

    #[test]
    fn https_urls_parse_into_host_port_and_target() {
        let u = DohUrl::parse("https://dns.NextDNS.io/c3a884").unwrap();
        assert!(u.https);
        assert_eq!((u.host.as_str(), u.port), ("dns.nextdns.io", 443));
        assert_eq!(u.target, "/c3a884");
        assert_eq!(u.authority, "dns.NextDNS.io");
        let u = DohUrl::parse("https://10.0.0.1:8443/dns-query?x=1#frag").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 8443));
        assert_eq!(u.target, "/dns-query?x=1");
        assert_eq!(u.host_ip(), Some("10.0.0.1".parse().unwrap()));
        let u = DohUrl::parse("http://[fd7a:115c:a1e0::1]:1234/dns-query").unwrap();
        assert!(!u.https);
        assert_eq!((u.host.as_str(), u.port), ("fd7a:115c:a1e0::1", 1234));
        assert_eq!(u.authority, "[fd7a:115c:a1e0::1]:1234");
        let u = DohUrl::parse("https://[2001:db8::1]").unwrap();
        assert_eq!((u.port, u.target.as_str()), (443, "/"));
        assert_eq!(
            DohUrl::parse("https://h.example?dns=x").unwrap().target,
            "/?dns=x"
        );
        for bad in [
            "tls://1.1.1.1",
            "dns.google/dns-query",
            "https://user@dns.google/",
            "https://[::1/dns-query",
            "https://[::1]x/",
            "https://dns.google:0/",
            "https://dns.google:99999/",
            "https://bad_host/",
            "https:///dns-query",
            "https://a..b/",
        ] {
            assert!(DohUrl::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn tailnet_servers_are_not_marked_to_bypass_the_tunnel() {
        assert!(is_tailnet_addr("100.101.102.103".parse().unwrap()));
        assert!(is_tailnet_addr("fd7a:115c:a1e0::53".parse().unwrap()));
        assert!(!is_tailnet_addr("100.128.0.1".parse().unwrap()));
        assert!(!is_tailnet_addr("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn doh_posts_the_query_and_reads_a_chunked_answer() {
        let (port, server) = http_server(|_, q| {
            let a = answer_to(q);
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                a.len()
            )
            .into_bytes();
            out.extend_from_slice(&a);
            out.extend_from_slice(b"\r\n0\r\n\r\n");
            out
        });
        let q = wire::build_query(0x7777, "exit.example.", wire::TYPE_A).unwrap();
        let url = format!("http://127.0.0.1:{port}/dns-query");
        let a = query(&url, &q, Duration::from_secs(5), None).unwrap();
        assert_eq!(&a[..2], &[0x77, 0x77]);
        let head = server.join().unwrap();
        assert!(head.starts_with("POST /dns-query HTTP/1.1"));
        assert!(head.contains(&format!("Host: 127.0.0.1:{port}")));
        assert!(head.contains("Content-Type: application/dns-message"));
    }

    #[test]
    fn server_errors_and_wrong_content_types_fail_the_upstream() {
        let q = wire::build_query(5, "a.example.", wire::TYPE_A).unwrap();
        let (port, _s) =
            http_server(|_, _| b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n".to_vec());
        let e = query(
            &format!("http://127.0.0.1:{port}/"),
            &q,
            Duration::from_secs(5),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("502"), "{e}");
        let (port, _s) = http_server(|_, _| {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi".to_vec()
        });
        let e = query(
            &format!("http://127.0.0.1:{port}/"),
            &q,
            Duration::from_secs(5),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("content type"), "{e}");
    }

    #[test]
    fn responses_are_complete_by_length_or_chunks_and_bounded() {
        // The HTTP framing itself is ringscale-http1's (and tested there); here: what
        // the DoH client makes of whole responses that end where the bytes end.
        let read = |r: &[u8]| {
            let deadline = Instant::now() + Duration::from_secs(5);
            read_response(&mut &r[..], deadline).map_err(|e| e.to_string())
        };
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\n";
        let r = format!("{head}Content-Length: 4\r\n\r\nab");
        assert_eq!(read(r.as_bytes()), Err("DoH answer cut short".into()));
        let r = format!("{head}Content-Length: 4\r\n\r\nabcdEXTRA");
        assert_eq!(read(r.as_bytes()), Ok(b"abcd".to_vec()));
        let r = format!("{head}Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n");
        assert_eq!(read(r.as_bytes()), Err("DoH answer cut short".into()));
        let r = format!("{head}Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n");
        assert_eq!(read(r.as_bytes()), Ok(b"abc".to_vec()));
        let r = format!("{head}\r\nxyz");
        assert_eq!(read(r.as_bytes()), Ok(b"xyz".to_vec()));
        let r = format!("{head}Content-Length: 99999999\r\n\r\n");
        assert_eq!(read(r.as_bytes()), Err("DoH answer too large".into()));
        let mut r = format!("{head}Transfer-Encoding: chunked\r\n\r\nffffffff\r\n").into_bytes();
        r.resize(r.len() + MAX_ANSWER + 1, b'x');
        assert_eq!(read(&r), Err("DoH answer too large".into()));
        let r = format!("{head}Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(read(r.as_bytes()).is_err());
        assert!(read(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(read(&[b'x'; ringscale_http1::MAX_HEAD_LEN]).is_err());
        assert_eq!(read(b""), Err("DoH answer cut short".into()));
    }

    #[test]
    fn https_without_tls_in_the_build_is_refused_with_a_reason() {
        // Without a connector (a build without TLS) https upstreams are refused.
        let q = wire::build_query(1, "a.", wire::TYPE_A).unwrap();
        let e = query(
            "https://192.0.2.1/dns-query",
            &q,
            Duration::from_secs(1),
            None,
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("tls"), "{e}");
        // Plain http (an exit node's PeerAPI) is always named by its address.
        let e = query(
            "http://peer.example/dns-query",
            &q,
            Duration::from_secs(1),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("IP address"), "{e}");
    }
}
