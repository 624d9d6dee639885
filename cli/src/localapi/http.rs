//! The bits of HTTP/1.1 the LocalAPI needs beyond the head parser in
//! `ringscale_control::ts2021::http1`: query strings with percent-decoding (Go's
//! `FormValue`), responses in the shape Go's `net/http` writes them (`http.Error` bodies,
//! reason phrases), and chunked framing for the streaming IPN bus. Pure functions over
//! bytes; the server and the client do the I/O.

use std::fmt::Write as _;

/// The Host header Go's client sends; the server accepts it or an empty one.
pub const LOCALAPI_HOST: &str = "local-tailscaled.sock";

/// A parsed request: what the router needs, nothing more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    pub host: Option<String>,
    pub referer: Option<String>,
    pub origin: Option<String>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of query parameter `key`, or "" (Go's `FormValue`).
    pub fn form_value(&self, key: &str) -> &str {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// Builds a Request from a head parsed by `http1::parse_request_head` and its body.
    pub fn from_head(
        head: &ringscale_control::ts2021::http1::RequestHead,
        body: Vec<u8>,
    ) -> Request {
        let (path, query) = match head.target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (head.target.as_str(), ""),
        };
        Request {
            method: head.method.clone(),
            path: percent_decode(path, false).unwrap_or_else(|| path.to_string()),
            query: parse_query(query),
            host: head.headers.get("Host").map(str::to_string),
            referer: head.headers.get("Referer").map(str::to_string),
            origin: head.headers.get("Origin").map(str::to_string),
            body,
        }
    }
}

/// Parses `a=1&b=x%20y`; pairs that fail to decode are dropped, as Go drops them.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

/// Percent-decoding; `plus_is_space` for query components. None on a bad escape or
/// non-UTF-8 result.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encoding for a query value (Go's `url.QueryEscape`).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(c as char)
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{c:02X}");
            }
        }
    }
    out
}

/// The reason phrase Go's `net/http` sends for a status.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A complete (non-streaming) response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Go's `http.Error`: plain text, the message plus a newline.
    pub fn error(status: u16, msg: &str) -> Response {
        Response {
            status,
            headers: vec![
                ("Content-Type", "text/plain; charset=utf-8".into()),
                ("X-Content-Type-Options", "nosniff".into()),
            ],
            body: format!("{msg}\n").into_bytes(),
        }
    }

    /// A JSON body as Go's `json.Encoder` writes it (trailing newline); `indent` is
    /// the `SetIndent` string, or None for compact output.
    pub fn json<T: serde::Serialize>(status: u16, v: &T, indent: Option<&[u8]>) -> Response {
        match encode_json(v, indent) {
            Ok(body) => Response {
                status,
                headers: vec![("Content-Type", "application/json".into())],
                body,
            },
            Err(e) => Response::error(500, &format!("JSON encoding error: {e}")),
        }
    }

    /// `{"Error":"..."}` with a status, as the prefs handler answers a refused edit.
    pub fn json_error(status: u16, msg: &str) -> Response {
        Response::json(status, &serde_json::json!({ "Error": msg }), None)
    }

    pub fn no_content() -> Response {
        Response {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The bytes on the wire, with `extra` headers first; one response per connection.
    pub fn to_bytes(&self, extra: &[(&str, String)]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        // A header given in both lists is written once, from `extra`.
        let own = self
            .headers
            .iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e.eq_ignore_ascii_case(k)));
        for (k, v) in extra
            .iter()
            .map(|(k, v)| (*k, v))
            .chain(own.map(|(k, v)| (*k, v)))
        {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        let _ = write!(
            out,
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        );
        let mut out = out.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// JSON with a trailing newline, optionally indented like Go's `SetIndent("", indent)`.
pub fn encode_json<T: serde::Serialize>(
    v: &T,
    indent: Option<&[u8]>,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    match indent {
        Some(ind) => {
            let fmt = serde_json::ser::PrettyFormatter::with_indent(ind);
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            v.serialize(&mut ser)?;
        }
        None => serde_json::to_writer(&mut out, v)?,
    }
    out.push(b'\n');
    Ok(out)
}

/// The head of a streaming response whose body follows in chunks.
pub fn chunked_head(status: u16, headers: &[(&str, String)]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    out.push_str("Transfer-Encoding: chunked\r\n\r\n");
    out.into_bytes()
}

/// One chunk of a chunked body (`data` must not be empty: that is the terminator).
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The last chunk of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Incremental decoder for a chunked body read from a stream: feed bytes, take out
/// payload. Used by the client for the IPN bus, whose body never ends by itself.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    buf: Vec<u8>,
    /// Bytes left in the current chunk's payload, or None when a size line is next.
    remaining: Option<usize>,
    done: bool,
}

/// Bound on a chunk-size line, so garbage cannot make the decoder buffer forever.
const MAX_CHUNK_LINE: usize = 64;

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Adds received bytes and appends the payload decoded so far to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        loop {
            if self.done {
                break;
            }
            match self.remaining {
                None => {
                    let rest = &self.buf[pos..];
                    let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if rest.len() > MAX_CHUNK_LINE {
                            return Err("chunk size line too long".into());
                        }
                        break;
                    };
                    let line =
                        std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size line")?;
                    let size_text = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size_text, 16)
                        .map_err(|_| format!("bad chunk size {size_text:?}"))?;
                    pos += eol + 2;
                    if size == 0 {
                        self.done = true;
                    } else {
                        self.remaining = Some(size);
                    }
                }
                Some(n) => {
                    let rest = &self.buf[pos..];
                    if n > 0 {
                        let take = n.min(rest.len());
                        out.extend_from_slice(&rest[..take]);
                        pos += take;
                        self.remaining = Some(n - take);
                        if take < n {
                            break;
                        }
                        continue;
                    }
                    // Payload complete; its CRLF must follow.
                    if rest.len() < 2 {
                        break;
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err("chunk not terminated by CRLF".into());
                    }
                    pos += 2;
                    self.remaining = None;
                }
            }
        }
        self.buf.drain(..pos);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded_like_go() {
        let q = parse_query("addr=%5Bfd7a%3A115c%3Aa1e0%3A%3A1%5D%3A80&proto=tcp&x&bad=%zz&y=a+b");
        assert_eq!(
            q,
            vec![
                ("addr".to_string(), "[fd7a:115c:a1e0::1]:80".to_string()),
                ("proto".to_string(), "tcp".to_string()),
                ("x".to_string(), String::new()),
                ("y".to_string(), "a b".to_string()),
            ]
        );
        assert_eq!(
            percent_decode(&query_escape("[::1]:80 a&b"), true).unwrap(),
            "[::1]:80 a&b"
        );
        assert_eq!(percent_decode("%4", true), None);
    }

    #[test]
    fn request_from_head() {
        let head = ringscale_control::ts2021::http1::parse_request_head(
            b"GET /localapi/v0/status?peers=false HTTP/1.1\r\nHost: local-tailscaled.sock\r\nOrigin: http://evil\r\n\r\n",
        )
        .unwrap();
        let r = Request::from_head(&head, Vec::new());
        assert_eq!(r.path, "/localapi/v0/status");
        assert_eq!(r.form_value("peers"), "false");
        assert_eq!(r.form_value("nope"), "");
        assert_eq!(r.host.as_deref(), Some(LOCALAPI_HOST));
        assert_eq!(r.origin.as_deref(), Some("http://evil"));
        assert_eq!(r.referer, None);
    }

    #[test]
    fn responses_look_like_go_net_http() {
        let r = Response::error(403, "status access denied").to_bytes(&[]);
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain; charset=utf-8\r\n"));
        assert!(text.ends_with("\r\n\r\nstatus access denied\n"));
        let j = Response::json(200, &serde_json::json!({"A": [1]}), Some(b"\t"));
        assert_eq!(j.body, b"{\n\t\"A\": [\n\t\t1\n\t]\n}\n");
    }

    #[test]
    fn chunked_round_trip_in_odd_pieces() {
        let mut wire = chunked_head(200, &[]);
        let head_len = wire.len();
        for msg in [&b"{\"State\":2}\n"[..], b"{\"BrowseToURL\":\"http://x\"}\n"] {
            wire.extend(chunk(msg));
        }
        wire.extend_from_slice(LAST_CHUNK);
        let body = &wire[head_len..];
        for step in [1, 2, 3, 7, body.len()] {
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            for piece in body.chunks(step) {
                d.feed(piece, &mut out).unwrap();
            }
            assert!(d.is_done());
            assert_eq!(out, b"{\"State\":2}\n{\"BrowseToURL\":\"http://x\"}\n");
        }
    }

    #[test]
    fn chunked_garbage_is_an_error_not_a_hang() {
        let mut d = ChunkedDecoder::default();
        assert!(d.feed(b"zz\r\n", &mut Vec::new()).is_err());
        let mut d = ChunkedDecoder::default();
        assert!(d.feed(&[b'1'; 100], &mut Vec::new()).is_err());
        let mut d = ChunkedDecoder::default();
        assert!(d.feed(b"1\r\nabc", &mut Vec::new()).is_err());
    }
}
