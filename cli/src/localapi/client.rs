//! The CLI's LocalAPI client: blocking, one request per connection, no runtime. Errors
//! read as Go's `client/local` words them (`Access denied: …`, `Failed to connect to
//! local Tailscale daemon for …`), since users and scripts match on them.

use super::http::{self, LOCALAPI_HOST};
use super::PingType;
use ringscale_control::ipn::{Notify, Options, WhoIsResponse};
use ringscale_control::ipnstate::{PingResult, Status};
use ringscale_control::prefs::{MaskedPrefs, Prefs};
use ringscale_control::tailcfg::CAPABILITY_VERSION;
use ringscale_http1::{blocking, BodyDecoder, ChunkedDecoder, HeadWriter, ReadError, ResponseHead};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bound on a response the CLI will buffer (a status with thousands of peers fits).
const MAX_RESPONSE: usize = 64 << 20;
/// Bound on one IPN bus line.
const MAX_NOTIFY_LINE: usize = 16 << 20;

#[derive(Debug)]
pub enum ClientError {
    /// The socket could not be reached.
    Connect {
        endpoint: String,
        socket: String,
        source: io::Error,
    },
    /// HTTP 403.
    AccessDenied(String),
    /// HTTP 412.
    PreconditionsFailed(String),
    /// Any other unexpected status; the text is Go's `bestError`.
    Status {
        status: u16,
        message: String,
    },
    /// `whois` found nothing (HTTP 404).
    PeerNotFound,
    /// The daemon spoke something that is not the LocalAPI.
    Protocol(String),
    /// No answer in time.
    Timeout,
    Io(io::Error),
}

impl ClientError {
    pub fn is_access_denied(&self) -> bool {
        matches!(self, ClientError::AccessDenied(_))
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { endpoint, socket, source } => write!(
                f,
                "Failed to connect to local Tailscale daemon for {endpoint}; not running? Error: dial unix {socket}: connect: {}",
                errno_text(source)
            ),
            ClientError::AccessDenied(m) => write!(f, "Access denied: {m}"),
            ClientError::PreconditionsFailed(m) => write!(f, "Preconditions failed: {m}"),
            ClientError::Status { message, .. } => f.write_str(message),
            ClientError::PeerNotFound => f.write_str("peer not found"),
            ClientError::Protocol(m) => write!(f, "malformed LocalAPI response: {m}"),
            ClientError::Timeout => f.write_str("timed out waiting for tailscaled"),
            ClientError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Go prints syscall errors in lower case without Rust's "(os error N)". std's text for
/// an errno is strerror's (it calls strerror_r) followed by " (os error N)".
fn errno_text(e: &io::Error) -> String {
    let Some(code) = e.raw_os_error() else {
        return e.to_string();
    };
    let full = io::Error::from_raw_os_error(code).to_string();
    let suffix = format!(" (os error {code})");
    let text = full.strip_suffix(&suffix).unwrap_or(&full);
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text.to_string(),
    }
}

/// Go's `bestError`: the JSON `{"error": …}` (or `{"Error": …}`) text if there is one,
/// else `"<status> <reason>: <body>"`.
pub fn best_error(status: u16, body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(body) {
        for k in ["error", "Error"] {
            if let Some(serde_json::Value::String(s)) = m.get(k) {
                if !s.is_empty() {
                    return s.clone();
                }
            }
        }
    }
    format!(
        "{status} {}: {}",
        ringscale_http1::reason_phrase(status),
        String::from_utf8_lossy(body).trim()
    )
}

/// Go's `errorMessageFromBody` for 403/412: the JSON error or the trimmed text.
fn message_from_body(body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(serde_json::Value::String(s)) = m.get("error").or_else(|| m.get("Error")) {
            if !s.is_empty() {
                return s.clone();
            }
        }
    }
    String::from_utf8_lossy(body).trim().to_string()
}

/// A complete response.
struct Reply {
    status: u16,
    body: Vec<u8>,
    version: Option<String>,
}

/// Talks to one daemon socket.
#[derive(Clone, Debug)]
pub struct LocalClient {
    pub socket: PathBuf,
    /// Bound on each request; None waits as long as the daemon takes.
    pub timeout: Option<Duration>,
}

impl LocalClient {
    pub fn new(socket: impl Into<PathBuf>) -> LocalClient {
        LocalClient {
            socket: socket.into(),
            timeout: None,
        }
    }

    fn connect(&self, endpoint: &str) -> Result<UnixStream, ClientError> {
        let s = UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
            endpoint: endpoint.to_string(),
            socket: self.socket.display().to_string(),
            source,
        })?;
        s.set_read_timeout(self.timeout).map_err(ClientError::Io)?;
        s.set_write_timeout(self.timeout).map_err(ClientError::Io)?;
        Ok(s)
    }

    fn request_bytes(method: &str, target: &str, body: &[u8]) -> Vec<u8> {
        let head = HeadWriter::request(method, target)
            .header("Host", LOCALAPI_HOST)
            .header("Tailscale-Cap", CAPABILITY_VERSION)
            .header("User-Agent", format_args!("ringscale/{}", crate::VERSION))
            .header("Connection", "close");
        if !body.is_empty() || matches!(method, "POST" | "PATCH" | "PUT") {
            head.header("Content-Type", "application/json")
                .finish_with_body(body)
        } else {
            head.finish()
        }
    }

    /// Sends a request and reads the whole answer.
    fn send(&self, method: &str, target: &str, body: &[u8]) -> Result<Reply, ClientError> {
        let endpoint = target.split('?').next().unwrap_or(target).to_string();
        let mut s = self.connect(&endpoint)?;
        s.write_all(&Self::request_bytes(method, target, body))
            .map_err(io_error)?;
        let (head, rest) = read_response_head(&mut s)?;
        let body = head
            .body_length()
            .and_then(|len| BodyDecoder::new(len, MAX_RESPONSE as u64))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let body = blocking::read_body(&mut s, &rest, body).map_err(read_error)?;
        let reply = Reply {
            status: head.status,
            body,
            version: head.headers.get("Tailscale-Version").map(str::to_string),
        };
        warn_on_version_mismatch(reply.version.as_deref());
        match reply.status {
            403 => Err(ClientError::AccessDenied(message_from_body(&reply.body))),
            412 => Err(ClientError::PreconditionsFailed(message_from_body(
                &reply.body,
            ))),
            _ => Ok(reply),
        }
    }

    /// A request that must answer `want`; its body is returned.
    fn expect(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
        want: u16,
    ) -> Result<Vec<u8>, ClientError> {
        let r = self.send(method, target, body)?;
        if r.status != want {
            return Err(ClientError::Status {
                status: r.status,
                message: best_error(r.status, &r.body),
            });
        }
        Ok(r.body)
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, target: &str) -> Result<T, ClientError> {
        decode(&self.expect("GET", target, &[], 200)?)
    }

    pub fn status(&self) -> Result<Status, ClientError> {
        self.get_json("/localapi/v0/status")
    }

    pub fn status_without_peers(&self) -> Result<Status, ClientError> {
        self.get_json("/localapi/v0/status?peers=false")
    }

    pub fn get_prefs(&self) -> Result<Prefs, ClientError> {
        self.get_json("/localapi/v0/prefs")
    }

    pub fn edit_prefs(&self, mp: &MaskedPrefs) -> Result<Prefs, ClientError> {
        let body = serde_json::to_vec(mp).map_err(|e| ClientError::Protocol(e.to_string()))?;
        decode(&self.expect("PATCH", "/localapi/v0/prefs", &body, 200)?)
    }

    /// Validates prefs without applying them; the daemon's objection is the error.
    pub fn check_prefs(&self, p: &Prefs) -> Result<(), ClientError> {
        let body = serde_json::to_vec(p).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let res: serde_json::Value =
            decode(&self.expect("POST", "/localapi/v0/check-prefs", &body, 200)?)?;
        match res.get("Error").and_then(|e| e.as_str()) {
            Some(e) if !e.is_empty() => Err(ClientError::Status {
                status: 200,
                message: e.to_string(),
            }),
            _ => Ok(()),
        }
    }

    pub fn start(&self, opts: &Options) -> Result<(), ClientError> {
        let body = serde_json::to_vec(opts).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.expect("POST", "/localapi/v0/start", &body, 204)
            .map(drop)
    }

    pub fn start_login_interactive(&self) -> Result<(), ClientError> {
        self.expect("POST", "/localapi/v0/login-interactive", &[], 204)
            .map(drop)
    }

    pub fn logout(&self) -> Result<(), ClientError> {
        self.expect("POST", "/localapi/v0/logout", &[], 204)
            .map(drop)
    }

    /// Stops the daemon. No CLI verb uses it (Go's CLI has none either); tests and
    /// tools do.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.expect("POST", "/localapi/v0/shutdown", &[], 200)
            .map(drop)
    }

    /// The daemon's IP forwarding warning, if any.
    pub fn check_ip_forwarding(&self) -> Result<Option<String>, ClientError> {
        let v: serde_json::Value = self.get_json("/localapi/v0/check-ip-forwarding")?;
        Ok(v.get("Warning")
            .and_then(|w| w.as_str())
            .filter(|w| !w.is_empty())
            .map(str::to_string))
    }

    pub fn ping(&self, ip: IpAddr, kind: PingType, size: usize) -> Result<PingResult, ClientError> {
        let target = format!(
            "/localapi/v0/ping?ip={ip}&size={size}&type={}",
            kind.as_str()
        );
        decode(&self.expect("POST", &target, &[], 200)?)
    }

    /// `proto` is "", "tcp" or "udp"; `addr` an IP, IP:port or node key.
    pub fn whois(&self, addr: &str, proto: &str) -> Result<WhoIsResponse, ClientError> {
        let mut target = format!("/localapi/v0/whois?addr={}", http::query_escape(addr));
        if !proto.is_empty() {
            target.push_str(&format!("&proto={}", http::query_escape(proto)));
        }
        match self.expect("GET", &target, &[], 200) {
            Err(ClientError::Status { status: 404, .. }) => Err(ClientError::PeerNotFound),
            other => decode(&other?),
        }
    }

    /// Opens the IPN bus. When this returns, the daemon has registered the watcher, so
    /// no later notification can be missed.
    pub fn watch_ipn_bus(&self, mask: u64) -> Result<BusWatcher, ClientError> {
        let target = format!("/localapi/v0/watch-ipn-bus?mask={mask}");
        let mut s = self.connect("/localapi/v0/watch-ipn-bus")?;
        s.write_all(&Self::request_bytes("GET", &target, &[]))
            .map_err(io_error)?;
        let (head, rest) = read_response_head(&mut s)?;
        warn_on_version_mismatch(head.headers.get("Tailscale-Version"));
        if head.status != 200 {
            // Read what there is of the body for the message, bounded.
            let mut body = rest;
            let _ = (&mut s).take(64 * 1024).read_to_end(&mut body);
            return Err(match head.status {
                403 => ClientError::AccessDenied(message_from_body(&body)),
                status => ClientError::Status {
                    status,
                    message: best_error(status, &body),
                },
            });
        }
        if !head.headers.has_token("Transfer-Encoding", "chunked") {
            return Err(ClientError::Protocol(
                "IPN bus response is not chunked".into(),
            ));
        }
        let mut w = BusWatcher {
            stream: s,
            decoder: ChunkedDecoder::default(),
            payload: Vec::new(),
        };
        w.decoder
            .decode(&rest, &mut w.payload)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(w)
    }
}

/// An open IPN bus: a stream of [`Notify`] messages.
pub struct BusWatcher {
    stream: UnixStream,
    decoder: ChunkedDecoder,
    /// Decoded payload not yet split into lines.
    payload: Vec<u8>,
}

impl BusWatcher {
    /// The next message; `Ok(None)` when the daemon ended the stream. With a deadline,
    /// [`ClientError::Timeout`] when it passes first.
    pub fn next(&mut self, deadline: Option<Instant>) -> Result<Option<Notify>, ClientError> {
        loop {
            if let Some(nl) = self.payload.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.payload.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| ClientError::Protocol(format!("bad IPN bus message: {e}")));
            }
            if self.decoder.is_done() {
                return Ok(None);
            }
            if self.payload.len() > MAX_NOTIFY_LINE {
                return Err(ClientError::Protocol("IPN bus message too large".into()));
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(ClientError::Timeout),
                },
                None => None,
            };
            self.stream
                .set_read_timeout(wait)
                .map_err(ClientError::Io)?;
            let mut buf = [0u8; 16384];
            let n = self.stream.read(&mut buf).map_err(io_error)?;
            if n == 0 {
                return Ok(None);
            }
            self.decoder
                .decode(&buf[..n], &mut self.payload)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
        }
    }
}

fn io_error(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
        _ => ClientError::Io(e),
    }
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(b).map_err(|e| {
        ClientError::Protocol(format!(
            "failed to unmarshal JSON into {}: {e}",
            std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("value")
        ))
    })
}

/// Reads the response head; returns it and the bytes after it.
fn read_response_head(s: &mut UnixStream) -> Result<(ResponseHead, Vec<u8>), ClientError> {
    let mut buf = Vec::new();
    let len = blocking::read_head(s, &mut buf).map_err(read_error)?;
    let head =
        ResponseHead::parse(&buf[..len]).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok((head, buf.split_off(len)))
}

fn read_error(e: ReadError) -> ClientError {
    match e {
        ReadError::Io(e) => io_error(e),
        ReadError::Closed { received: 0 } => {
            ClientError::Protocol("daemon closed the connection without answering".into())
        }
        ReadError::Closed { .. } => {
            ClientError::Protocol("daemon closed the connection mid-response".into())
        }
        ReadError::Http(e) => ClientError::Protocol(e.to_string()),
    }
}

/// Go's CLI warns once when the daemon runs another version.
fn warn_on_version_mismatch(server: Option<&str>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Some(server) = server {
        if !server.is_empty() && server != crate::VERSION && !WARNED.swap(true, Ordering::Relaxed) {
            eprintln!(
                "Warning: client version {:?} != tailscaled server version {server:?}",
                crate::VERSION
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_match_go() {
        assert_eq!(best_error(400, br#"{"Error":"bad prefs"}"#), "bad prefs");
        assert_eq!(best_error(500, br#"{"error":"no route"}"#), "no route");
        assert_eq!(
            best_error(500, b"backend exploded\n"),
            "500 Internal Server Error: backend exploded"
        );
        assert_eq!(
            message_from_body(b"prefs write access denied\n"),
            "prefs write access denied"
        );
        let e = ClientError::AccessDenied("prefs write access denied".into());
        assert_eq!(e.to_string(), "Access denied: prefs write access denied");
    }

    #[test]
    fn missing_socket_reads_like_go() {
        let c = LocalClient::new("/nonexistent-ringscale/tailscaled.sock");
        let e = c.status().unwrap_err();
        assert_eq!(
            e.to_string(),
            "Failed to connect to local Tailscale daemon for /localapi/v0/status; not running? \
             Error: dial unix /nonexistent-ringscale/tailscaled.sock: connect: no such file or directory"
        );
    }

    #[test]
    fn requests_carry_go_headers() {
        let r = String::from_utf8(LocalClient::request_bytes(
            "PATCH",
            "/localapi/v0/prefs",
            b"{}",
        ))
        .unwrap();
        assert!(
            r.starts_with("PATCH /localapi/v0/prefs HTTP/1.1\r\nHost: local-tailscaled.sock\r\n")
        );
        assert!(r.contains(&format!("Tailscale-Cap: {CAPABILITY_VERSION}\r\n")));
        assert!(r.ends_with("Content-Length: 2\r\n\r\n{}"));
        let r = String::from_utf8(LocalClient::request_bytes(
            "GET",
            "/localapi/v0/status",
            b"",
        ))
        .unwrap();
        assert!(!r.contains("Content-Length") && !r.contains("Origin") && !r.contains("Referer"));
    }
}
