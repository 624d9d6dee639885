//! The node's side of registration and the map poll, as steps over an established
//! [`ControlConnection`]: one register exchange, one map session. The daemon's backend
//! strings them together (retries, backoff, persistence); the framing of the map stream
//! is a plain decoder that tests drive with bytes.

use crate::tailcfg::{self, MapRequest, MapResponse, RegisterRequest, RegisterResponse};
use crate::ts2021::{self, Body, ControlConnection};
use std::fmt;
use std::time::Duration;

/// Largest map message accepted. Netmaps of large tailnets run to a few MB; a length
/// beyond this is a broken or hostile server, not a big tailnet.
pub const MAX_MAP_MESSAGE: usize = 32 << 20;
/// Largest register response body.
const MAX_REGISTER_BODY: usize = 1 << 20;
/// Without any message (keep-alives included) for this long, the poll is dead (Go's
/// watchdog, protocol.md §4.2).
pub const MAP_WATCHDOG: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub enum ClientError {
    /// The connection or HTTP/2 failed.
    Transport(ts2021::Error),
    /// HTTP 429: try again after this long.
    RateLimited(Duration),
    /// A non-200 status with the server's text.
    Status(u16, String),
    /// The server's body is not the JSON we expect.
    BadJson(String),
    /// The map stream's framing is broken (oversized length, truncated frame).
    Framing(String),
    /// No message within the watchdog interval.
    Stalled,
    /// The register response carried an Error.
    Refused(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Transport(e) => write!(f, "{e}"),
            ClientError::RateLimited(d) => write!(f, "rate limited by control; retry in {d:?}"),
            ClientError::Status(s, body) => write!(f, "control answered HTTP {s}: {}", body.trim()),
            ClientError::BadJson(e) => write!(f, "control sent invalid JSON: {e}"),
            ClientError::Framing(e) => write!(f, "map stream: {e}"),
            ClientError::Stalled => {
                write!(f, "map stream: nothing from control for {MAP_WATCHDOG:?}")
            }
            ClientError::Refused(e) => write!(f, "control refused registration: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<ts2021::Error> for ClientError {
    fn from(e: ts2021::Error) -> Self {
        ClientError::Transport(e)
    }
}

/// Go's reading of Retry-After: seconds; missing or unreadable means 5–10 s.
fn retry_after(headers: &http::HeaderMap) -> Duration {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)))
        .unwrap_or(Duration::from_secs(5 + rand_below(6)))
}

fn rand_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    ringscale_sys::random::fill(&mut b);
    u64::from_le_bytes(b) % n.max(1)
}

/// One `POST /machine/register`. A response with `Error` set becomes
/// [`ClientError::Refused`]; everything else (AuthURL, NodeKeyExpired) is the caller's.
pub async fn register(
    conn: &ControlConnection,
    req: &RegisterRequest,
) -> Result<RegisterResponse, ClientError> {
    let json = serde_json::to_vec(req).map_err(|e| ClientError::BadJson(e.to_string()))?;
    let node_key = req.node_key.to_string();
    let old_key = req.old_node_key.to_string();
    let mut lb: Vec<&str> = Vec::new();
    if !req.old_node_key.is_zero() {
        lb.push(&old_key);
    }
    lb.push(&node_key);
    let resp = conn.post_json("/machine/register", json, &lb).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().read_to_end(MAX_REGISTER_BODY).await?;
    check_status(status.as_u16(), &headers, &body)?;
    let r: RegisterResponse =
        tailcfg::decode(&body).map_err(|e| ClientError::BadJson(e.to_string()))?;
    if !r.error.is_empty() {
        return Err(ClientError::Refused(r.error));
    }
    Ok(r)
}

fn check_status(status: u16, headers: &http::HeaderMap, body: &[u8]) -> Result<(), ClientError> {
    match status {
        200 => Ok(()),
        s => Err(status_error(s, headers, body)),
    }
}

fn status_error(status: u16, headers: &http::HeaderMap, body: &[u8]) -> ClientError {
    match status {
        429 => ClientError::RateLimited(retry_after(headers)),
        s => ClientError::Status(
            s,
            String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        ),
    }
}

/// A frame buffer emptied to under a quarter of a capacity above this gives memory back.
const SHRINK_ABOVE: usize = 64 * 1024;

/// Splits the map stream into messages: a little-endian u32 length, then that many
/// bytes of JSON (we never ask for zstd). Bytes go in as they arrive; whole messages
/// come out.
#[derive(Default)]
pub struct MapFrameDecoder {
    buf: Vec<u8>,
}

impl MapFrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_MAP_MESSAGE {
            return Err(ClientError::Framing(format!(
                "message of {len} bytes exceeds the {MAX_MAP_MESSAGE}-byte limit"
            )));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let frame = if self.buf.len() == 4 + len {
            // The usual case, one whole message buffered: hand the buffer over, so its
            // allocation leaves with the message instead of a buffer the size of the
            // largest netmap staying for the whole session (~1.3 KB per peer).
            let mut frame = std::mem::take(&mut self.buf);
            frame.drain(..4);
            frame
        } else {
            let frame = self.buf[4..4 + len].to_vec();
            self.buf.drain(..4 + len);
            if self.buf.capacity() > SHRINK_ABOVE && self.buf.len() < self.buf.capacity() / 4 {
                self.buf.shrink_to(self.buf.len().max(4096));
            }
            frame
        };
        Ok(Some(frame))
    }

    /// Bytes of a message that never completed (the stream ended mid-frame).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Decodes one map message.
pub fn decode_map_message(frame: &[u8]) -> Result<MapResponse, ClientError> {
    tailcfg::decode(frame).map_err(|e| ClientError::BadJson(e.to_string()))
}

/// An open map long-poll.
pub struct MapSession {
    body: Body,
    frames: MapFrameDecoder,
}

impl MapSession {
    /// Sends the map request (`req.stream` should be true) and waits for the response
    /// head.
    pub async fn start(
        conn: &ControlConnection,
        req: &MapRequest,
    ) -> Result<MapSession, ClientError> {
        let json = serde_json::to_vec(req).map_err(|e| ClientError::BadJson(e.to_string()))?;
        let node_key = req.node_key.to_string();
        let resp = conn.post_json("/machine/map", json, &[&node_key]).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body();
        if status != 200 {
            let text = body
                .read_to_end(MAX_REGISTER_BODY)
                .await
                .unwrap_or_default();
            return Err(status_error(status, &headers, &text));
        }
        Ok(MapSession {
            body,
            frames: MapFrameDecoder::default(),
        })
    }

    /// The next message; `Ok(None)` when the server ended the stream cleanly. Applies
    /// the watchdog: silence longer than [`MAP_WATCHDOG`] is an error.
    pub async fn next(&mut self) -> Result<Option<MapResponse>, ClientError> {
        loop {
            if let Some(frame) = self.frames.next_frame()? {
                return decode_map_message(&frame).map(Some);
            }
            match tokio::time::timeout(MAP_WATCHDOG, self.body.chunk()).await {
                Err(_) => return Err(ClientError::Stalled),
                Ok(None) if self.frames.pending() > 0 => {
                    return Err(ClientError::Framing(format!(
                        "stream ended inside a message ({} bytes pending)",
                        self.frames.pending()
                    )))
                }
                Ok(None) => return Ok(None),
                Ok(Some(chunk)) => self.frames.push(&chunk?),
            }
        }
    }
}

/// A "lite" map request: new endpoints or Hostinfo, no peers wanted, body ignored.
pub async fn lite_update(conn: &ControlConnection, req: &MapRequest) -> Result<(), ClientError> {
    let mut req = req.clone();
    req.stream = false;
    req.omit_peers = true;
    let json = serde_json::to_vec(&req).map_err(|e| ClientError::BadJson(e.to_string()))?;
    let node_key = req.node_key.to_string();
    let resp = conn.post_json("/machine/map", json, &[&node_key]).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().read_to_end(MAX_MAP_MESSAGE).await?;
    check_status(status, &headers, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(json: &str) -> Vec<u8> {
        let mut v = (json.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v
    }

    #[test]
    fn frames_split_across_chunks_reassemble() {
        let mut stream = framed(r#"{"KeepAlive":true}"#);
        stream.extend(framed(r#"{"Domain":"example.ts.net"}"#));
        let mut d = MapFrameDecoder::default();
        let mut got = Vec::new();
        for b in stream.chunks(3) {
            d.push(b);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(decode_map_message(&f).unwrap());
            }
        }
        assert_eq!(got.len(), 2);
        assert!(got[0].keep_alive);
        assert_eq!(got[1].domain, "example.ts.net");
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut d = MapFrameDecoder::default();
        d.push(&u32::MAX.to_le_bytes());
        assert!(matches!(d.next_frame(), Err(ClientError::Framing(_))));
        let mut d = MapFrameDecoder::default();
        d.push(&framed("{not json"));
        let f = d.next_frame().unwrap().unwrap();
        assert!(matches!(
            decode_map_message(&f),
            Err(ClientError::BadJson(_))
        ));
        let mut d = MapFrameDecoder::default();
        d.push(&framed(r#"{"Domain":"x"}"#)[..7]);
        assert!(d.next_frame().unwrap().is_none());
        assert_eq!(d.pending(), 7);
    }

    #[test]
    fn a_large_netmap_does_not_leave_its_buffer_behind() {
        let big = format!(r#"{{"Domain":"{}"}}"#, "x".repeat(300_000));
        // Alone in the buffer: the message takes the allocation with it.
        let mut d = MapFrameDecoder::default();
        d.push(&framed(&big));
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f, big.as_bytes());
        assert!(
            d.buf.capacity() < SHRINK_ABOVE,
            "{} bytes kept",
            d.buf.capacity()
        );
        // Followed by the start of the next one: what stays is about that much.
        let mut d = MapFrameDecoder::default();
        let mut stream = framed(&big);
        stream.extend(&framed(r#"{"KeepAlive":true}"#)[..10]);
        d.push(&stream);
        assert_eq!(d.next_frame().unwrap().unwrap(), big.as_bytes());
        assert_eq!(d.pending(), 10);
        assert!(
            d.buf.capacity() < SHRINK_ABOVE,
            "{} bytes kept",
            d.buf.capacity()
        );
        d.push(&framed(r#"{"KeepAlive":true}"#)[10..]);
        assert!(
            decode_map_message(&d.next_frame().unwrap().unwrap())
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn retry_after_follows_go() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Duration::from_secs(7));
        let d = retry_after(&http::HeaderMap::new());
        assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(10));
    }
}
