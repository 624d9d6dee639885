//! Tailscale's 2021 control transport (protocol.md §2): `GET /key`, the HTTP/1.1 upgrade on
//! `/ts2021` carrying the Noise initiation, the Noise record stream, the optional early
//! payload, and HTTP/2 inside it. Both sides: [`client`] for our node, [`server`] for the
//! project's test control server.
//!
//! The protocol logic lives in sans-IO pieces ([`crate::noise`], [`ringscale_http1`], [`early`],
//! [`url`]); [`stream`], [`client`] and [`server`] are the tokio edges that drive them.

pub mod client;
pub mod early;
pub mod server;
pub mod stream;
#[cfg(feature = "tls")]
pub mod tls;
/// Blocking TLS with the control connection's roots (the DNS forwarder's https upstreams).
#[cfg(feature = "tls")]
pub use tls::connect_blocking as tls_connect_blocking;
pub mod url;

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::Bytes;

pub use client::{connect, connect_with, fetch_server_key, ConnectOptions, ControlConnection};
pub use early::EarlyNoise;
pub use server::{
    accept, serve, Accepted, Handler, Http1Request, Http1Response, IncomingRequest, Responder,
    ResponseStream, ServerConfig, ServerConnection,
};
pub use stream::NoiseStream;
pub use url::ControlUrl;

/// The capability version ringscale announces everywhere it appears: `/key?v=`, the Noise
/// initiation header and prologue, `RegisterRequest.Version`, `MapRequest.Version`.
///
/// 113 (Tailscale 1.80) is Headscale's current floor (protocol.md §5). What it promises the
/// server, and the node implements: delta peers and nil-means-unchanged (≤ 18), Noise and
/// EarlyNoise (28–49), PeersChangedPatch (33/36), Node.Expired/KeyExpiry (53), Node.Cap /
/// CapMap (54–89), lite updates beside a read-only stream (68), named PacketFilters (81),
/// HomeDERP (111), `AllowedIPs: null` = Addresses (112), Hostinfo.IngressEnabled (113,
/// always false: no funnel). It deliberately stays below 120: peers treat ≥ 121 as able to
/// act as a peer relay, which ringscale does not implement. Raising it to 115/116 needs
/// DERPRegion.NoMeasureNoHome in netcheck and MagicDNS AAAA records.
pub const CAPABILITY_VERSION: u16 = ringscale_tailcfg::CAPABILITY_VERSION as u16;

/// Path of the upgrade request (`serverUpgradePath` in Go).
pub const UPGRADE_PATH: &str = "/ts2021";
/// Value of the `Upgrade` header both ways.
pub const UPGRADE_PROTOCOL: &str = "tailscale-control-protocol";
/// Header carrying the base64 Noise initiation.
pub const HANDSHAKE_HEADER: &str = "X-Tailscale-Handshake";
/// The default bound for dialing plus upgrade plus handshake (Go: 10 s).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `/key` response body accepted (Go: 64 KiB).
pub const MAX_KEY_RESPONSE_LEN: usize = 64 * 1024;

/// Everything that can go wrong on the ts2021 transport, with enough context to tell the
/// user which step failed.
#[derive(Debug)]
pub enum Error {
    /// The control URL could not be understood.
    InvalidUrl(String),
    /// An I/O error during the named step.
    Io {
        step: &'static str,
        source: io::Error,
    },
    /// The control server could not be reached (DNS, TCP or TLS) during the named step.
    Connect {
        step: &'static str,
        addr: String,
        source: io::Error,
    },
    /// The named step did not finish in time.
    Timeout(&'static str),
    /// The peer spoke malformed HTTP/1.1.
    Http(String),
    /// The server answered the named step with an unexpected HTTP status.
    Status {
        step: &'static str,
        status: u16,
        body: String,
    },
    /// `GET /key` returned something that is not a usable Noise key.
    BadServerKey(String),
    /// The Noise handshake failed.
    Handshake(crate::noise::HandshakeError),
    /// The early payload was malformed.
    EarlyPayload(String),
    /// HTTP/2 inside the Noise channel failed.
    H2(h2::Error),
    /// A TLS problem (configuration or server name).
    Tls(String),
    /// The request could not be built or was refused by the peer before being sent.
    Request(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidUrl(msg) => write!(f, "invalid control URL: {msg}"),
            Error::Io { step, source } => write!(f, "{step}: {source}"),
            Error::Connect { step, addr, source } => {
                write!(f, "{step}: connecting to {addr}: {source}")
            }
            Error::Timeout(step) => write!(f, "{step}: timed out"),
            Error::Http(msg) => write!(f, "malformed HTTP: {msg}"),
            Error::Status { step, status, body } if body.is_empty() => {
                write!(f, "{step}: unexpected HTTP status {status}")
            }
            Error::Status { step, status, body } => {
                write!(f, "{step}: unexpected HTTP status {status}: {body}")
            }
            Error::BadServerKey(msg) => write!(f, "control server key: {msg}"),
            Error::Handshake(e) => write!(f, "Noise handshake: {e}"),
            Error::EarlyPayload(msg) => write!(f, "early payload: {msg}"),
            Error::H2(e) => write!(f, "HTTP/2 over Noise: {e}"),
            Error::Tls(msg) => write!(f, "TLS: {msg}"),
            Error::Request(msg) => write!(f, "request: {msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } | Error::Connect { source, .. } => Some(source),
            Error::Handshake(e) => Some(e),
            Error::H2(e) => Some(e),
            _ => None,
        }
    }
}

impl From<h2::Error> for Error {
    fn from(e: h2::Error) -> Self {
        Error::H2(e)
    }
}

impl From<crate::noise::HandshakeError> for Error {
    fn from(e: crate::noise::HandshakeError) -> Self {
        Error::Handshake(e)
    }
}

/// `io::Error` → [`Error::Io`] with the step that failed.
pub(crate) fn io_err(step: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { step, source }
}

impl From<ringscale_http1::Error> for Error {
    fn from(e: ringscale_http1::Error) -> Error {
        Error::Http(e.to_string())
    }
}

/// Reading an HTTP/1.1 message failed during `step`.
pub(crate) fn http_read_err(
    step: &'static str,
) -> impl FnOnce(ringscale_http1::ReadError) -> Error {
    move |e| match e {
        ringscale_http1::ReadError::Io(source) => Error::Io { step, source },
        ringscale_http1::ReadError::Closed { received } => Error::Io {
            step,
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                if received == 0 {
                    "connection closed before any response".to_string()
                } else {
                    format!("connection closed after {received} bytes of an incomplete HTTP head")
                },
            ),
        },
        ringscale_http1::ReadError::Http(e) => Error::Http(format!("{step}: {e}")),
    }
}

/// Reads from `io` into `buf` until it holds at least `n` bytes (the Noise handshake
/// messages after the upgrade).
pub(crate) async fn read_at_least<S: tokio::io::AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    n: usize,
    step: &'static str,
) -> Result<(), Error> {
    use tokio::io::AsyncReadExt;
    while buf.len() < n {
        let mut chunk = [0u8; 2048];
        let got = io.read(&mut chunk).await.map_err(io_err(step))?;
        if got == 0 {
            return Err(Error::Io {
                step,
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {} of {n} bytes", buf.len()),
                ),
            });
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    Ok(())
}

/// Formats a 32-byte key as Tailscale's typed text, e.g. `mkey:<64 hex>`.
pub fn format_key(prefix: &str, key: &[u8; 32]) -> String {
    let mut s = String::with_capacity(prefix.len() + 64);
    s.push_str(prefix);
    for b in key {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// Parses Tailscale's typed key text (`mkey:<64 hex>`); upper-case hex is accepted.
pub fn parse_key(prefix: &str, text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix(prefix)?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut key = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        key[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(key)
}

/// A request or response body arriving over HTTP/2. Reading releases HTTP/2 flow-control
/// credit as data is consumed, so a long map stream never stalls on a full window.
#[derive(Debug)]
pub struct Body {
    inner: h2::RecvStream,
}

impl Body {
    pub(crate) fn new(inner: h2::RecvStream) -> Self {
        Body { inner }
    }

    /// The next chunk of data as it arrives, or `None` at the end of the body.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, Error>> {
        loop {
            match self.inner.data().await? {
                // An empty DATA frame (often the one carrying END_STREAM) is no chunk.
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => {
                    // Credit back what we took; an error here only means the stream is
                    // gone, which the next read reports.
                    let _ = self.inner.flow_control().release_capacity(bytes.len());
                    return Some(Ok(bytes));
                }
                Err(e) => return Some(Err(Error::H2(e))),
            }
        }
    }

    /// The whole body, refusing more than `limit` bytes.
    pub async fn read_to_end(mut self, limit: usize) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        while let Some(chunk) = self.chunk().await {
            let chunk = chunk?;
            if out.len() + chunk.len() > limit {
                return Err(Error::Request(format!(
                    "body exceeds the limit of {limit} bytes"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// True once the peer has ended the body.
    pub fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_round_trips() {
        let mut key = [0u8; 32];
        key[0] = 0xab;
        key[31] = 0x01;
        let text = format_key("mkey:", &key);
        assert_eq!(text, format!("mkey:ab{}01", "0".repeat(60)));
        assert_eq!(parse_key("mkey:", &text), Some(key));
        assert_eq!(
            parse_key("mkey:", &text.to_uppercase().replace("MKEY:", "mkey:")),
            Some(key)
        );
        assert_eq!(parse_key("nodekey:", &text), None);
        assert_eq!(parse_key("mkey:", "mkey:abc"), None);
        assert_eq!(
            parse_key("mkey:", &format!("mkey:{}", "zz".repeat(32))),
            None
        );
        assert_eq!(
            parse_key("mkey:", &format!("mkey:{}é", "0".repeat(62))),
            None
        );
    }
}
