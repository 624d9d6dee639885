//! Writing heads and chunked bodies.

use std::fmt::{self, Write as _};

/// The reason phrase Go's `net/http` sends for a status ("" for one it does not name;
/// the status line then ends in `N `, which RFC 9112 allows).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Builds a request or response head, HTTP/1.1.
///
/// Header values are ours, but some carry text from elsewhere (an error message, a
/// URL's authority); CR and LF in them become spaces, as Go's `Header.Write` does, so
/// nothing can end a line early and add headers.
#[derive(Debug, Clone)]
pub struct HeadWriter {
    text: String,
}

impl HeadWriter {
    /// `METHOD target HTTP/1.1`.
    pub fn request(method: &str, target: &str) -> HeadWriter {
        let mut w = HeadWriter {
            text: String::with_capacity(256),
        };
        w.put_line(format_args!("{method} {target} HTTP/1.1"));
        w
    }

    /// `HTTP/1.1 status reason`.
    pub fn response(status: u16) -> HeadWriter {
        let mut w = HeadWriter {
            text: String::with_capacity(256),
        };
        w.put_line(format_args!("HTTP/1.1 {status} {}", reason_phrase(status)));
        w
    }

    /// Adds `name: value`.
    pub fn header(mut self, name: &str, value: impl fmt::Display) -> HeadWriter {
        self.put_line(format_args!("{name}: {value}"));
        self
    }

    /// The head, ended by its blank line; the body (if any) follows as the caller frames it.
    pub fn finish(mut self) -> Vec<u8> {
        self.text.push_str("\r\n");
        self.text.into_bytes()
    }

    /// The head with `Content-Length` and the body after it.
    pub fn finish_with_body(self, body: &[u8]) -> Vec<u8> {
        let mut out = self.header("Content-Length", body.len()).finish();
        out.extend_from_slice(body);
        out
    }

    fn put_line(&mut self, line: fmt::Arguments<'_>) {
        let start = self.text.len();
        let _ = self.text.write_fmt(line);
        if self.text[start..].contains(['\r', '\n']) {
            let clean = self.text[start..].replace(['\r', '\n'], " ");
            self.text.truncate(start);
            self.text.push_str(&clean);
        }
        self.text.push_str("\r\n");
    }
}

/// Appends one chunk of a chunked body to `out`. An empty `data` writes nothing: an
/// empty chunk would be the terminator, which is [`LAST_CHUNK`].
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body: the last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
