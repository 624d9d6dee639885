//! The one HTTP/1.1 codec of ringscale: the ts2021 upgrade (client and test server), the
//! LocalAPI (server and CLI client), PeerAPI's DoH endpoint and the DoH client all parse
//! and write their messages here.
//!
//! The core does no I/O (smoltcp `wire` style): [`head_len`] finds where a head ends in
//! the bytes received so far, [`RequestHead::parse`] / [`ResponseHead::parse`] read it,
//! [`RequestHead::body_length`] / [`ResponseHead::body_length`] say how the body is
//! framed, and a [`BodyDecoder`] is fed the bytes that follow. [`HeadWriter`] and
//! [`encode_chunk`] write messages. [`blocking`] and (feature `tokio`) `tokio_io` are
//! thin read loops over those for the users that own a socket.
//!
//! Strict where RFC 9112 lets a recipient be strict, because every user is on a trust
//! boundary (PeerAPI takes requests from the tailnet, the LocalAPI from local users) and a
//! lenient parser is where request smuggling and confusion come from: no obs-fold, no
//! bare LF in the head, no whitespace before a header's colon, Content-Length only as
//! digits (conflicting duplicates rejected, identical ones folded), no Content-Length
//! beside Transfer-Encoding, only the `chunked` transfer coding, bounded heads, header
//! counts and chunk lines, chunk sizes checked for overflow.
//!
//! Hand-written rather than `httparse`, measured with `packaging/size-gate.sh` (aarch64
//! musl release binary, default features; the budget had ~9 KB of room):
//!
//! ```text
//! tree                                            bytes      vs. before
//! before (four codecs, 702aec7)                   2,760,936
//! this crate, all users ported                    2,760,840  -96
//! same, head parsing through httparse 1.10.1      2,762,848  +1,912
//! ```
//!
//! httparse parses only the start line and header lines; the bare-LF scan, framing,
//! chunked decoding and writing stay ours either way, so it would add ~2 KB of parser
//! beside code we still need, and be more lenient (bare LF) than we want.

#![forbid(unsafe_code)]

mod body;
mod head;
mod io;
mod write;

pub use body::{BodyDecoder, BodyLength, ChunkedDecoder};
pub use head::{head_len, Headers, RequestHead, ResponseHead};
pub use io::blocking;
#[cfg(feature = "tokio")]
pub use io::tokio_io;
pub use io::ReadError;
pub use write::{encode_chunk, reason_phrase, HeadWriter, LAST_CHUNK};

use std::fmt;

/// Bound on a request or response head, start line through the blank line (Go's
/// `http.Server` default is 1 MiB, but nothing we talk to sends more than a few hundred
/// bytes; 16 KiB leaves room for long query strings).
pub const MAX_HEAD_LEN: usize = 16 * 1024;
/// Bound on the number of header lines in a head.
pub const MAX_HEADERS: usize = 64;
/// Bound on a chunk-size line including extensions (Go: 4096).
pub const MAX_CHUNK_LINE: usize = 4096;

/// Why a message was refused. Every variant is the peer's fault (or a limit); none of
/// them says anything about our own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The head is larger than [`MAX_HEAD_LEN`].
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header lines.
    TooManyHeaders,
    /// A line in the head or in chunked framing ends in LF without CR, or a CR is not
    /// followed by LF.
    BareLineEnding,
    /// A header line starting with SP or HTAB (obs-fold, RFC 9112 §5.2).
    ObsFold,
    /// The head was passed to a parser without its final blank line.
    Incomplete,
    BadRequestLine,
    /// A request target in neither origin form (`/path?q`) nor absolute form
    /// (`http://host/path?q`).
    BadRequestTarget,
    BadStatusLine,
    /// Not `HTTP/1.x`.
    BadVersion,
    /// A header line without colon, with an empty name, or with characters a field name
    /// may not have (including whitespace before the colon).
    BadHeaderName,
    /// Control characters or invalid UTF-8 in a header value.
    BadHeaderValue,
    /// A Content-Length that is not a decimal number that fits 64 bits.
    BadContentLength,
    /// Content-Length headers (or list members) with different values.
    ConflictingContentLength,
    /// Transfer-Encoding and Content-Length together (RFC 9112 §6.3: a smuggling sign).
    TransferEncodingWithContentLength,
    /// A transfer coding other than exactly `chunked`.
    UnsupportedTransferEncoding,
    /// A chunk-size line that is not hex digits (plus extensions).
    BadChunkSize,
    /// A chunk size larger than 64 bits.
    ChunkSizeOverflow,
    /// A chunk-size line or trailer longer than its bound.
    ChunkLineTooLong,
    /// Chunk data not followed by CRLF.
    ChunkNotTerminated,
    /// The body is larger than the limit the caller set.
    BodyTooLarge,
    /// The connection ended before the body did.
    BodyTruncated,
}

impl Error {
    /// The status a server answers this error with: 431 for head limits, 413 for a body
    /// over the limit, 501 for a transfer coding we do not implement, 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            Error::HeadTooLarge | Error::TooManyHeaders => 431,
            Error::BodyTooLarge => 413,
            Error::UnsupportedTransferEncoding => 501,
            _ => 400,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Error::HeadTooLarge => "HTTP head too large",
            Error::TooManyHeaders => "too many HTTP headers",
            Error::BareLineEnding => "HTTP line not ended by CRLF",
            Error::ObsFold => "obsolete line folding in HTTP header",
            Error::Incomplete => "incomplete HTTP head",
            Error::BadRequestLine => "malformed HTTP request line",
            Error::BadRequestTarget => "unsupported HTTP request target",
            Error::BadStatusLine => "malformed HTTP status line",
            Error::BadVersion => "not HTTP/1.x",
            Error::BadHeaderName => "malformed HTTP header line",
            Error::BadHeaderValue => "malformed HTTP header value",
            Error::BadContentLength => "bad Content-Length",
            Error::ConflictingContentLength => "conflicting Content-Length headers",
            Error::TransferEncodingWithContentLength => {
                "Transfer-Encoding together with Content-Length"
            }
            Error::UnsupportedTransferEncoding => "unsupported Transfer-Encoding",
            Error::BadChunkSize => "bad chunk size",
            Error::ChunkSizeOverflow => "chunk size too large",
            Error::ChunkLineTooLong => "chunk line too long",
            Error::ChunkNotTerminated => "chunk not terminated by CRLF",
            Error::BodyTooLarge => "HTTP body too large",
            Error::BodyTruncated => "connection closed before the end of the HTTP body",
        };
        f.write_str(text)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests;
