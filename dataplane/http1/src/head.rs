//! Request and response heads: finding their end in received bytes, and parsing them.

use crate::body::{self, BodyLength};
use crate::{Error, MAX_HEADERS, MAX_HEAD_LEN};

/// The length of the head at the start of `buf` (through its blank line) once `buf`
/// holds all of it; `Ok(None)` while more bytes are needed. Fails as soon as the bytes
/// so far cannot start a valid head: a bare LF, or [`MAX_HEAD_LEN`] bytes without an
/// end. Call it again on the grown buffer after each read.
pub fn head_len(buf: &[u8]) -> Result<Option<usize>, Error> {
    let scan = &buf[..buf.len().min(MAX_HEAD_LEN)];
    for (i, &b) in scan.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        if i == 0 || scan[i - 1] != b'\r' {
            return Err(Error::BareLineEnding);
        }
        if i >= 3 && &scan[i - 3..i - 1] == b"\r\n" {
            return Ok(Some(i + 1));
        }
    }
    if buf.len() >= MAX_HEAD_LEN {
        return Err(Error::HeadTooLarge);
    }
    Ok(None)
}

/// Header name/value pairs in arrival order; values without surrounding whitespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).next()
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn get_all<'s, 'n>(&'s self, name: &'n str) -> impl Iterator<Item = &'s str> + use<'s, 'n> {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True if a comma-separated header contains `token` (case-insensitive), e.g.
    /// `Connection: keep-alive, Upgrade`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// A parsed request line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The target in origin form, e.g. `/key?v=113`. A target sent in absolute form
    /// (`http://100.64.0.1:5252/dns-query?dns=…`) is reduced to its path and query, as
    /// Go's `net/http` server does; its authority is in [`RequestHead::authority`].
    pub target: String,
    /// The authority of an absolute-form target (`100.64.0.1:5252`); None in origin form.
    pub authority: Option<String>,
    /// The minor version: 0 or 1.
    pub minor_version: u8,
    pub headers: Headers,
}

impl RequestHead {
    /// Parses a complete head as delimited by [`head_len`] (bytes after it are ignored).
    pub fn parse(buf: &[u8]) -> Result<RequestHead, Error> {
        let (line, headers) = split_head(buf)?;
        let mut parts = line.split(|&b| b == b' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::BadRequestLine);
        };
        if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
            return Err(Error::BadRequestLine);
        }
        let minor_version = parse_version(version)?;
        if target.is_empty() || !target.iter().all(|b| b.is_ascii_graphic()) {
            return Err(Error::BadRequestTarget);
        }
        // Checked above: ASCII only.
        let target = std::str::from_utf8(target).map_err(|_| Error::BadRequestTarget)?;
        let (authority, target) = split_target(target)?;
        Ok(RequestHead {
            method: ascii(method),
            target,
            authority,
            minor_version,
            headers,
        })
    }

    /// Parses the head at the start of `buf` if it is all there: the head and its length,
    /// or `Ok(None)` while more bytes are needed.
    pub fn parse_prefix(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, Error> {
        let Some(len) = head_len(buf)? else {
            return Ok(None);
        };
        Ok(Some((RequestHead::parse(&buf[..len])?, len)))
    }

    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query, without `?`; "" when there is none.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// The raw value of query parameter `key` (no percent-decoding).
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query()
            .split('&')
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// The authority the request is for, as Go's `Request.Host`: the absolute-form
    /// target's, else the Host header's.
    pub fn host(&self) -> Option<&str> {
        self.authority
            .as_deref()
            .or_else(|| self.headers.get("Host"))
    }

    /// How the body is framed (RFC 9112 §6.3): chunked, Content-Length, or none.
    pub fn body_length(&self) -> Result<BodyLength, Error> {
        Ok(body::framing(&self.headers)?.unwrap_or(BodyLength::Fixed(0)))
    }
}

/// A parsed status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor_version: u8,
    pub headers: Headers,
}

impl ResponseHead {
    /// Parses a complete head as delimited by [`head_len`] (bytes after it are ignored).
    pub fn parse(buf: &[u8]) -> Result<ResponseHead, Error> {
        let (line, headers) = split_head(buf)?;
        let mut parts = line.splitn(3, |&b| b == b' ');
        let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
            return Err(Error::BadStatusLine);
        };
        let minor_version = parse_version(version)?;
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            return Err(Error::BadStatusLine);
        }
        let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        if !(100..600).contains(&status) {
            return Err(Error::BadStatusLine);
        }
        // The reason phrase is free text (Go's client accepts a missing one too).
        if !parts
            .next()
            .unwrap_or_default()
            .iter()
            .all(|&b| is_field_value_byte(b))
        {
            return Err(Error::BadStatusLine);
        }
        Ok(ResponseHead {
            status,
            minor_version,
            headers,
        })
    }

    /// Parses the head at the start of `buf` if it is all there: the head and its length,
    /// or `Ok(None)` while more bytes are needed.
    pub fn parse_prefix(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, Error> {
        let Some(len) = head_len(buf)? else {
            return Ok(None);
        };
        Ok(Some((ResponseHead::parse(&buf[..len])?, len)))
    }

    /// How the body is framed (RFC 9112 §6.3): none for 1xx, 204 and 304; chunked or
    /// Content-Length when announced; else until the connection closes. (A response to
    /// HEAD has none either; the caller knows what it asked.)
    pub fn body_length(&self) -> Result<BodyLength, Error> {
        if self.status < 200 || self.status == 204 || self.status == 304 {
            return Ok(BodyLength::Fixed(0));
        }
        Ok(body::framing(&self.headers)?.unwrap_or(BodyLength::UntilClose))
    }
}

/// `HTTP/1.<digit>` → the minor version.
fn parse_version(v: &[u8]) -> Result<u8, Error> {
    match v {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit() => Ok(d - b'0'),
        _ => Err(Error::BadVersion),
    }
}

/// Origin form stays as it is; absolute form (`http://authority/path?query`) becomes its
/// authority and origin-form path and query.
fn split_target(target: &str) -> Result<(Option<String>, String), Error> {
    if target.starts_with('/') {
        return Ok((None, target.to_string()));
    }
    let scheme_end = target.find("://").ok_or(Error::BadRequestTarget)?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(Error::BadRequestTarget);
    }
    let rest = &target[scheme_end + 3..];
    let rest = rest.split('#').next().unwrap_or_default();
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if authority.is_empty() || authority.contains('@') {
        return Err(Error::BadRequestTarget);
    }
    let path = match path.as_bytes().first() {
        None => "/".to_string(),
        Some(b'?') => format!("/{path}"),
        Some(_) => path.to_string(),
    };
    Ok((Some(authority.to_string()), path))
}

/// The start line and the headers of a complete head.
fn split_head(buf: &[u8]) -> Result<(&[u8], Headers), Error> {
    let len = head_len(buf)?.ok_or(Error::Incomplete)?;
    // Without the final blank line; `head_len` has checked that every LF follows a CR.
    let text = &buf[..len - 4];
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let start = lines.next().unwrap_or_default();
    if start.contains(&b'\r') {
        return Err(Error::BareLineEnding);
    }
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(Error::TooManyHeaders);
        }
        headers.push(parse_header_line(line)?);
    }
    Ok((start, Headers(headers)))
}

fn parse_header_line(line: &[u8]) -> Result<(String, String), Error> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(Error::ObsFold);
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(Error::BadHeaderName)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    // Whitespace before the colon is a tchar failure too (RFC 9112 §5.1: reject).
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(Error::BadHeaderName);
    }
    let value = trim_ows(value);
    if value.contains(&b'\r') {
        return Err(Error::BareLineEnding);
    }
    if !value.iter().all(|&b| is_field_value_byte(b)) {
        return Err(Error::BadHeaderValue);
    }
    let value = std::str::from_utf8(value).map_err(|_| Error::BadHeaderValue)?;
    Ok((ascii(name), value.to_string()))
}

/// Without leading and trailing SP and HTAB (OWS; other whitespace is not OWS).
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// RFC 9110 `tchar`: what methods and header names are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Field-value bytes: visible ASCII, SP, HTAB and obs-text; no other controls.
fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || b.is_ascii_graphic() || b >= 0x80
}

/// Bytes already checked to be ASCII, as a String.
fn ascii(b: &[u8]) -> String {
    b.iter().map(|&c| char::from(c)).collect()
}
