//! Body framing: which of Content-Length, chunked or close-delimited a head announces,
//! and incremental decoders the caller feeds with whatever bytes arrived.

use crate::head::Headers;
use crate::{Error, MAX_CHUNK_LINE, MAX_HEAD_LEN};

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// Content-Length bytes (0: no body).
    Fixed(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses without length only).
    UntilClose,
}

/// The framing the headers announce; None when they announce none.
pub(crate) fn framing(headers: &Headers) -> Result<Option<BodyLength>, Error> {
    let mut has_te = false;
    let mut te_is_chunked = false;
    for coding in headers
        .get_all("Transfer-Encoding")
        .flat_map(|v| v.split(','))
    {
        // Exactly one coding, `chunked`: we decode no other, and a list like
        // `chunked, chunked` or `gzip, chunked` is refused rather than half-understood.
        te_is_chunked = !has_te && coding.trim().eq_ignore_ascii_case("chunked");
        has_te = true;
    }
    let mut length = None;
    for value in headers.get_all("Content-Length").flat_map(|v| v.split(',')) {
        let n = parse_content_length(value.trim())?;
        if has_te {
            return Err(Error::TransferEncodingWithContentLength);
        }
        // Identical duplicates (from a proxy that merged two copies) mean one length.
        match length {
            Some(m) if m != n => return Err(Error::ConflictingContentLength),
            _ => length = Some(n),
        }
    }
    if has_te {
        return match te_is_chunked {
            true => Ok(Some(BodyLength::Chunked)),
            false => Err(Error::UnsupportedTransferEncoding),
        };
    }
    Ok(length.map(BodyLength::Fixed))
}

/// `1*DIGIT` that fits 64 bits; no sign, no spaces, no hex.
fn parse_content_length(v: &str) -> Result<u64, Error> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadContentLength);
    }
    v.parse().map_err(|_| Error::BadContentLength)
}

/// Decodes one body of any framing from the bytes after the head, bounded by a limit.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    framing: Framing,
    limit: u64,
    produced: u64,
}

#[derive(Debug, Clone)]
enum Framing {
    Fixed { remaining: u64 },
    Chunked(ChunkedDecoder),
    UntilClose { closed: bool },
}

impl BodyDecoder {
    /// A decoder for a body framed as `length`, refusing more than `limit` payload bytes
    /// (at once for a Content-Length above it).
    pub fn new(length: BodyLength, limit: u64) -> Result<BodyDecoder, Error> {
        let framing = match length {
            BodyLength::Fixed(n) if n > limit => return Err(Error::BodyTooLarge),
            BodyLength::Fixed(n) => Framing::Fixed { remaining: n },
            BodyLength::Chunked => Framing::Chunked(ChunkedDecoder::default()),
            BodyLength::UntilClose => Framing::UntilClose { closed: false },
        };
        Ok(BodyDecoder {
            framing,
            limit,
            produced: 0,
        })
    }

    /// Decodes from `input`, appending payload to `out`. Returns how many bytes of
    /// `input` belong to the body; input after the body's end is not consumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        let before = out.len();
        let used = match &mut self.framing {
            Framing::Fixed { remaining } => {
                let take = input
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                out.extend_from_slice(&input[..take]);
                *remaining -= take as u64;
                take
            }
            Framing::Chunked(chunked) => chunked.decode(input, out)?,
            Framing::UntilClose { .. } => {
                out.extend_from_slice(input);
                input.len()
            }
        };
        self.produced += (out.len() - before) as u64;
        if self.produced > self.limit {
            return Err(Error::BodyTooLarge);
        }
        Ok(used)
    }

    /// The body is complete (for close-delimited bodies: after [`BodyDecoder::finish`]).
    pub fn is_done(&self) -> bool {
        match &self.framing {
            Framing::Fixed { remaining } => *remaining == 0,
            Framing::Chunked(chunked) => chunked.is_done(),
            Framing::UntilClose { closed } => *closed,
        }
    }

    /// The connection has ended: fine for a close-delimited or complete body, an error
    /// otherwise.
    pub fn finish(&mut self) -> Result<(), Error> {
        if let Framing::UntilClose { closed } = &mut self.framing {
            *closed = true;
        }
        match self.is_done() {
            true => Ok(()),
            false => Err(Error::BodyTruncated),
        }
    }
}

/// Incremental decoder for a chunked body: feed it bytes as they arrive, in any pieces,
/// and it appends the payload. Keeps no buffer of its own (a chunk's data is copied
/// straight through), so memory is bounded by what the caller keeps.
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// The size being read, then the data bytes left in the current chunk.
    size: u64,
    /// Bytes of the current chunk-size line or trailer section so far.
    line_len: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// The first hex digit of a chunk size.
    #[default]
    SizeStart,
    /// More hex digits, or what ends them.
    Size,
    /// Whitespace after the size (BWS before `;`, or before CRLF as Go allows).
    SizeSpace,
    /// A chunk extension, ignored to the line's end.
    Extension,
    /// The LF of the size line.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line or the final CRLF.
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

impl ChunkedDecoder {
    /// The last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input`, appending payload to `out`. Returns how many bytes of
    /// `input` it consumed: all of them, unless the body ended inside `input`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            if self.state == Done {
                break;
            }
            if self.state == Data {
                let take = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                out.extend_from_slice(&input[i..i + take]);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.line_len += 1;
            let limit = match self.state {
                TrailerStart | Trailer | TrailerLf | FinalLf => MAX_HEAD_LEN,
                _ => MAX_CHUNK_LINE,
            };
            if self.line_len > limit {
                return Err(Error::ChunkLineTooLong);
            }
            self.state = match (self.state, b) {
                (SizeStart | Size, _) if b.is_ascii_hexdigit() => {
                    let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(digit))
                        .ok_or(Error::ChunkSizeOverflow)?;
                    Size
                }
                (SizeStart, _) => return Err(Error::BadChunkSize),
                (Size | SizeSpace, b' ' | b'\t') => SizeSpace,
                (Size | SizeSpace, b';') => Extension,
                (Size | SizeSpace | Extension, b'\r') => SizeLf,
                (Size | SizeSpace, _) => return Err(Error::BadChunkSize),
                (Extension, b'\n') => return Err(Error::BareLineEnding),
                (Extension, _) if b == b'\t' || !b.is_ascii_control() => Extension,
                (Extension, _) => return Err(Error::BadChunkSize),
                (SizeLf, b'\n') => {
                    self.line_len = 0;
                    if self.size == 0 {
                        TrailerStart
                    } else {
                        Data
                    }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.line_len = 0;
                    SizeStart
                }
                (DataCr | DataLf, _) => return Err(Error::ChunkNotTerminated),
                // Trailer fields are read past, not kept: nothing we talk to sends any.
                (TrailerStart, b'\r') => FinalLf,
                (TrailerStart | Trailer, b'\n') => return Err(Error::BareLineEnding),
                (Trailer, b'\r') => TrailerLf,
                (TrailerStart | Trailer, _) => Trailer,
                (TrailerLf, b'\n') => TrailerStart,
                (FinalLf, b'\n') => Done,
                (SizeLf | TrailerLf | FinalLf, _) => return Err(Error::BareLineEnding),
                (Data | Done, _) => unreachable!("handled before the byte is taken"),
            };
        }
        Ok(i)
    }
}
