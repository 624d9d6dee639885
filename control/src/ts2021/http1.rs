//! The little HTTP/1.1 that ts2021 needs before switching to Noise: `GET /key`, the
//! `POST /ts2021` upgrade and its `101`, plus plain requests the test control server may
//! want to answer. Parsing works on byte slices; the two async helpers at the bottom only
//! move bytes.
//!
//! Deliberately small: one request per connection (`Connection: close`), bodies by
//! `Content-Length` or `chunked` (responses only), no pipelining, no continuation lines.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::Error;

/// Bound on a request or response head.
pub const MAX_HEAD_LEN: usize = 16 * 1024;
/// Bound on the number of header lines.
const MAX_HEADERS: usize = 64;

/// Header name/value pairs in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True if a comma-separated header contains `token` (case-insensitive), e.g.
    /// `Connection: keep-alive, Upgrade`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// A parsed request line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent, e.g. `/key?v=113`.
    pub target: String,
    pub headers: Headers,
}

impl RequestHead {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The raw value of query parameter `key` (no percent-decoding: ts2021 needs none).
    pub fn query_param(&self, key: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// A parsed status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Headers,
}

/// The length of the head (through the blank line) if `buf` holds a complete one.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn head_lines(head: &[u8]) -> Result<(&str, Headers), Error> {
    let text = std::str::from_utf8(head).map_err(|_| Error::Http("head is not UTF-8".into()))?;
    let text = text.strip_suffix("\r\n\r\n").unwrap_or(text);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(Error::Http(format!("more than {MAX_HEADERS} headers")));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| Error::Http(format!("bad header line {line:?}")))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Http(format!("bad header name {name:?}")));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok((first, Headers(headers)))
}

/// Parses a request head as delimited by [`find_head_end`].
pub fn parse_request_head(head: &[u8]) -> Result<RequestHead, Error> {
    let (line, headers) = head_lines(head)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Http(format!("bad request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(Error::Http(format!("bad request line {line:?}")));
    }
    Ok(RequestHead {
        method: method.into(),
        target: target.into(),
        headers,
    })
}

/// Parses a response head as delimited by [`find_head_end`].
pub fn parse_response_head(head: &[u8]) -> Result<ResponseHead, Error> {
    let (line, headers) = head_lines(head)?;
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(Error::Http(format!("bad status line {line:?}")));
    };
    let status = code.parse::<u16>().ok().filter(|s| (100..600).contains(s));
    match status {
        Some(status) if version.starts_with("HTTP/1.") => Ok(ResponseHead { status, headers }),
        _ => Err(Error::Http(format!("bad status line {line:?}"))),
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    Fixed(usize),
    Chunked,
    /// Until the connection closes (responses without length).
    UntilClose,
}

/// The body framing a response's headers announce.
pub fn response_body_length(head: &ResponseHead) -> Result<BodyLength, Error> {
    if head.headers.has_token("Transfer-Encoding", "chunked") {
        return Ok(BodyLength::Chunked);
    }
    match head.headers.get("Content-Length") {
        Some(v) => v
            .parse()
            .map(BodyLength::Fixed)
            .map_err(|_| Error::Http(format!("bad Content-Length {v:?}"))),
        None if head.status == 204 || head.status == 304 || head.status < 200 => {
            Ok(BodyLength::Fixed(0))
        }
        None => Ok(BodyLength::UntilClose),
    }
}

/// The body framing a request's headers announce (chunked requests are refused).
pub fn request_body_length(head: &RequestHead) -> Result<usize, Error> {
    if head.headers.get("Transfer-Encoding").is_some() {
        return Err(Error::Http(
            "chunked request bodies are not supported".into(),
        ));
    }
    match head.headers.get("Content-Length") {
        Some(v) => v
            .parse()
            .map_err(|_| Error::Http(format!("bad Content-Length {v:?}"))),
        None => Ok(0),
    }
}

/// Decodes a body from `data` (everything after the head). `complete` says the connection
/// has ended. Returns `Ok(None)` while more bytes are needed.
pub fn decode_body(
    length: BodyLength,
    data: &[u8],
    complete: bool,
) -> Result<Option<Vec<u8>>, Error> {
    match length {
        BodyLength::Fixed(n) if data.len() >= n => Ok(Some(data[..n].to_vec())),
        BodyLength::Fixed(n) if complete => Err(Error::Http(format!(
            "body ended after {} of {n} bytes",
            data.len()
        ))),
        BodyLength::Fixed(_) => Ok(None),
        BodyLength::UntilClose if complete => Ok(Some(data.to_vec())),
        BodyLength::UntilClose => Ok(None),
        BodyLength::Chunked => match decode_chunked(data)? {
            Some(body) => Ok(Some(body)),
            None if complete => Err(Error::Http("chunked body ended early".into())),
            None => Ok(None),
        },
    }
}

fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line =
            std::str::from_utf8(&data[..eol]).map_err(|_| Error::Http("bad chunk size".into()))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| Error::Http(format!("bad chunk size {size_text:?}")))?;
        data = &data[eol + 2..];
        if size == 0 {
            // Trailers are not used by anything ts2021 talks to; the body is complete.
            return Ok(Some(body));
        }
        if data.len() < size.saturating_add(2) {
            return Ok(None);
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err(Error::Http("chunk not terminated by CRLF".into()));
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The standard reason phrase for the statuses we send.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "Unknown",
    }
}

/// Serializes a complete response that closes the connection.
pub fn format_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Reads from `io` into `buf` until it holds a complete head (at most [`MAX_HEAD_LEN`]
/// bytes); returns the head's length. Bytes after the head stay in `buf`.
pub async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    step: &'static str,
) -> Result<usize, Error> {
    loop {
        if let Some(end) = find_head_end(buf) {
            return Ok(end);
        }
        if buf.len() > MAX_HEAD_LEN {
            return Err(Error::Http(format!(
                "{step}: HTTP head longer than {MAX_HEAD_LEN} bytes"
            )));
        }
        let mut chunk = [0u8; 2048];
        let n = io.read(&mut chunk).await.map_err(super::io_err(step))?;
        if n == 0 {
            return Err(Error::Io {
                step,
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    if buf.is_empty() {
                        "connection closed before any response".to_string()
                    } else {
                        format!(
                            "connection closed after {} bytes of an incomplete HTTP head",
                            buf.len()
                        )
                    },
                ),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads from `io` into `buf` until it holds at least `n` bytes.
pub async fn read_at_least<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    n: usize,
    step: &'static str,
) -> Result<(), Error> {
    while buf.len() < n {
        let mut chunk = [0u8; 2048];
        let got = io.read(&mut chunk).await.map_err(super::io_err(step))?;
        if got == 0 {
            return Err(Error::Io {
                step,
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {} of {n} bytes", buf.len()),
                ),
            });
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upgrade_request() {
        let raw = b"POST /ts2021 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUpgrade: tailscale-control-protocol\r\n\
Connection: upgrade\r\nX-Tailscale-Handshake: AAAA\r\n\r\nleftover";
        let end = find_head_end(raw).unwrap();
        assert_eq!(&raw[end..], b"leftover");
        let head = parse_request_head(&raw[..end]).unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.path(), "/ts2021");
        assert_eq!(head.headers.get("x-tailscale-handshake"), Some("AAAA"));
        assert!(head.headers.has_token("connection", "Upgrade"));
    }

    #[test]
    fn query_parameters() {
        let head = parse_request_head(b"GET /key?v=130&x HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(head.path(), "/key");
        assert_eq!(head.query_param("v"), Some("130"));
        assert_eq!(head.query_param("x"), Some(""));
        assert_eq!(head.query_param("y"), None);
    }

    #[test]
    fn rejects_malformed_heads() {
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /key HTTP/1.1 extra\r\n\r\n",
            b"GET key HTTP/1.1\r\n\r\n",
            b"GET /key SPDY/3\r\n\r\n",
            b"GET /key HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /key HTTP/1.1\r\n: empty name\r\n\r\n",
        ] {
            assert!(
                parse_request_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_response_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_response_head(b"HTTP/1.1 999 Nope\r\n\r\n").is_err());
        assert!(parse_response_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn response_bodies() {
        let head = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").unwrap();
        let len = response_body_length(&head).unwrap();
        assert_eq!(decode_body(len, b"hel", false).unwrap(), None);
        assert!(decode_body(len, b"hel", true).is_err());
        assert_eq!(
            decode_body(len, b"hello!", false).unwrap().unwrap(),
            b"hello"
        );

        let head =
            parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        let len = response_body_length(&head).unwrap();
        assert_eq!(len, BodyLength::Chunked);
        assert_eq!(
            decode_body(len, b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n", true)
                .unwrap()
                .unwrap(),
            b"hello world"
        );
        assert_eq!(decode_body(len, b"5\r\nhel", false).unwrap(), None);
        assert!(decode_body(len, b"5\r\nhelloXX0\r\n\r\n", true).is_err());
        assert!(decode_body(len, b"zz\r\n", true).is_err());
        assert!(decode_body(len, b"ffffffffffffffffff\r\n", true).is_err());

        let head = parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        let len = response_body_length(&head).unwrap();
        assert_eq!(decode_body(len, b"abc", false).unwrap(), None);
        assert_eq!(decode_body(len, b"abc", true).unwrap().unwrap(), b"abc");
    }

    #[test]
    fn formats_responses() {
        let r = format_response(404, &[("Content-Type", "text/plain")], b"nope");
        assert_eq!(
            r,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope"
        );
        let head = parse_response_head(&r[..find_head_end(&r).unwrap()]).unwrap();
        assert_eq!(head.status, 404);
    }
}
