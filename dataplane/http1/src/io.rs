//! Thin read loops over the codec for callers that own a socket: one for blocking
//! `std::io::Read`, one for tokio's `AsyncRead`. They only move bytes; every decision is
//! the codec's. Bounds on time are the caller's (socket timeouts, `tokio::time::timeout`).

use std::fmt;

use crate::Error;

/// Why reading a message failed.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// The peer closed the connection before a complete head; `received` bytes of it
    /// had arrived.
    Closed {
        received: usize,
    },
    /// The bytes are not an acceptable HTTP/1.1 message.
    Http(Error),
}

impl From<Error> for ReadError {
    fn from(e: Error) -> ReadError {
        ReadError::Http(e)
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Closed { received: 0 } => f.write_str("connection closed without a message"),
            ReadError::Closed { received } => write!(
                f,
                "connection closed after {received} bytes of an incomplete HTTP head"
            ),
            ReadError::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Read size per call: a LocalAPI status or a DoH answer in a few reads.
const READ_STEP: usize = 4096;

/// For blocking readers (the CLI's LocalAPI client, the DNS forwarder's DoH client).
pub mod blocking {
    use std::io::{ErrorKind, Read};

    use super::{ReadError, READ_STEP};
    use crate::{head_len, BodyDecoder};

    /// Reads until `buf` holds a complete head and returns its length; bytes read past
    /// it stay in `buf`.
    pub fn read_head<R: Read + ?Sized>(r: &mut R, buf: &mut Vec<u8>) -> Result<usize, ReadError> {
        loop {
            if let Some(len) = head_len(buf)? {
                return Ok(len);
            }
            let mut chunk = [0u8; READ_STEP];
            let n = match r.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError::Io(e)),
            };
            if n == 0 {
                return Err(ReadError::Closed {
                    received: buf.len(),
                });
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads the rest of a body whose first bytes (those after the head) are `start`,
    /// and stops reading as soon as it is complete.
    pub fn read_body<R: Read + ?Sized>(
        r: &mut R,
        start: &[u8],
        mut body: BodyDecoder,
    ) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::new();
        body.decode(start, &mut out)?;
        while !body.is_done() {
            let mut chunk = [0u8; READ_STEP];
            let n = match r.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError::Io(e)),
            };
            if n == 0 {
                body.finish()?;
                break;
            }
            body.decode(&chunk[..n], &mut out)?;
        }
        Ok(out)
    }
}

/// For tokio readers (ts2021 on the control thread, the LocalAPI server, PeerAPI).
#[cfg(feature = "tokio")]
pub mod tokio_io {
    use tokio::io::{AsyncRead, AsyncReadExt};

    use super::{ReadError, READ_STEP};
    use crate::{head_len, BodyDecoder};

    /// Reads until `buf` holds a complete head and returns its length; bytes read past
    /// it stay in `buf`.
    pub async fn read_head<R: AsyncRead + Unpin + ?Sized>(
        r: &mut R,
        buf: &mut Vec<u8>,
    ) -> Result<usize, ReadError> {
        loop {
            if let Some(len) = head_len(buf)? {
                return Ok(len);
            }
            let mut chunk = [0u8; READ_STEP];
            let n = r.read(&mut chunk).await.map_err(ReadError::Io)?;
            if n == 0 {
                return Err(ReadError::Closed {
                    received: buf.len(),
                });
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads the rest of a body whose first bytes (those after the head) are `start`,
    /// and stops reading as soon as it is complete.
    pub async fn read_body<R: AsyncRead + Unpin + ?Sized>(
        r: &mut R,
        start: &[u8],
        mut body: BodyDecoder,
    ) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::new();
        body.decode(start, &mut out)?;
        while !body.is_done() {
            let mut chunk = [0u8; READ_STEP];
            let n = r.read(&mut chunk).await.map_err(ReadError::Io)?;
            if n == 0 {
                body.finish()?;
                break;
            }
            body.decode(&chunk[..n], &mut out)?;
        }
        Ok(out)
    }
}
