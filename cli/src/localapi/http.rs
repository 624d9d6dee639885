//! What the LocalAPI (and PeerAPI) make of HTTP/1.1 on top of the shared codec,
//! `ringscale_http1`: query strings with percent-decoding (Go's `FormValue`), and
//! responses in the shape Go's `net/http` writes them (`http.Error` bodies, JSON
//! encoding). Pure functions over bytes, plus [`read_request`], the servers' one read
//! loop.

use ringscale_http1::{tokio_io, BodyDecoder, HeadWriter, ReadError, RequestHead};
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
    /// Go's `Request.Host`: an absolute-form target's authority, else the Host header.
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

    /// Builds a Request from a parsed head and its body.
    pub fn from_head(head: &RequestHead, body: Vec<u8>) -> Request {
        let path = head.path();
        Request {
            method: head.method.clone(),
            path: percent_decode(path, false).unwrap_or_else(|| path.to_string()),
            query: parse_query(head.query()),
            host: head.host().map(str::to_string),
            referer: head.headers.get("Referer").map(str::to_string),
            origin: head.headers.get("Origin").map(str::to_string),
            body,
        }
    }
}

/// Reads one request for the LocalAPI or PeerAPI: head (bounded), then a body framed by
/// Content-Length or chunked, at most `max_body` bytes. Errors come back as the
/// response to send (431 for an oversize head, 413 for an oversize body, 400 else).
pub async fn read_request<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    max_body: usize,
) -> Result<Request, Response> {
    let refusal = |e: ReadError| match e {
        ReadError::Http(e) => Response::error(e.status(), &e.to_string()),
        other => Response::error(400, &other.to_string()),
    };
    let mut buf = Vec::new();
    let head_len = tokio_io::read_head(rd, &mut buf).await.map_err(refusal)?;
    let head = RequestHead::parse(&buf[..head_len]).map_err(|e| refusal(e.into()))?;
    let body = head
        .body_length()
        .and_then(|len| BodyDecoder::new(len, max_body as u64))
        .map_err(|e| refusal(e.into()))?;
    let body = tokio_io::read_body(rd, &buf[head_len..], body)
        .await
        .map_err(refusal)?;
    Ok(Request::from_head(&head, body))
}

/// Answers a request that was refused before it was read to its end, then closes as
/// Go's net/http does (`closeWriteAndWait`): our side is shut for writing and what the
/// client still sends is read and dropped, for at most 500 ms and 256 KiB. Closing with
/// unread data would reset the connection, and a reset can destroy the response before
/// the client has read it.
pub async fn refuse<R, W>(rd: &mut R, wr: &mut W, response: &[u8]) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    wr.write_all(response).await?;
    wr.shutdown().await?;
    let mut sink = [0u8; 4096];
    let mut budget: usize = 256 * 1024;
    let drain = async {
        while budget > 0 {
            match rd.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), drain).await;
    Ok(())
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
        let mut head = HeadWriter::response(self.status);
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
            head = head.header(k, v);
        }
        head.header("Connection", "close")
            .finish_with_body(&self.body)
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

/// The head of a streaming response whose body follows in chunks
/// (`ringscale_http1::encode_chunk`, then `ringscale_http1::LAST_CHUNK`).
pub fn chunked_head(status: u16, headers: &[(&str, String)]) -> Vec<u8> {
    let mut head = HeadWriter::response(status);
    for (k, v) in headers {
        head = head.header(k, v);
    }
    head.header("Transfer-Encoding", "chunked").finish()
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
        let head = RequestHead::parse(
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

        // Absolute form, as an HTTP proxy or a raw client may send it: path and query
        // from the target, Host from its authority (Go's `Request.Host`).
        let head = RequestHead::parse(
            b"GET http://100.64.0.1:5252/dns-query?dns=q%2Bw HTTP/1.1\r\nHost: peer\r\n\r\n",
        )
        .unwrap();
        let r = Request::from_head(&head, Vec::new());
        assert_eq!(r.path, "/dns-query");
        assert_eq!(r.form_value("dns"), "q+w");
        assert_eq!(r.host.as_deref(), Some("100.64.0.1:5252"));
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
}
