//! [`NoiseStream`]: the Noise record layer as a tokio byte stream, so HTTP/2 can run on
//! top of it. Reads decrypt whole records in place in one receive buffer; writes are
//! sealed into a send buffer that is drained before more plaintext is accepted (so memory
//! stays bounded and a partial TCP write never desynchronizes the nonce counters).
//!
//! Any authentication failure, unexpected frame or oversized frame poisons the stream:
//! every later read fails too, as in Go, because the two sides can no longer agree.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::noise::{
    RecordError, RecordOpener, RecordSealer, Transport, HEADER_LEN, MAX_FRAME_LEN,
    MAX_PLAINTEXT_LEN,
};

/// Plaintext accepted per `poll_write`: four full records (~16 KiB), enough to keep
/// HTTP/2 frames whole without buffering without bound.
const MAX_PLAINTEXT_PER_WRITE: usize = 4 * MAX_PLAINTEXT_LEN;

/// An established ts2021 Noise connection over `S` (TCP or TLS).
pub struct NoiseStream<S> {
    io: S,
    sealer: RecordSealer,
    opener: RecordOpener,
    peer_static: [u8; 32],
    protocol_version: u16,
    handshake_hash: [u8; 32],
    /// Received bytes; `rx[rx_pos..]` is not yet decrypted.
    rx: Vec<u8>,
    rx_pos: usize,
    /// Decrypted bytes not yet handed out: `rx[plain_start..plain_end]`.
    plain_start: usize,
    plain_end: usize,
    /// Bytes to send; `tx[tx_pos..]` not yet written.
    tx: Vec<u8>,
    tx_pos: usize,
    read_failed: Option<RecordError>,
    write_failed: bool,
}

impl<S> std::fmt::Debug for NoiseStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseStream")
            .field("protocol_version", &self.protocol_version)
            .field("sealer", &self.sealer)
            .field("opener", &self.opener)
            .finish_non_exhaustive()
    }
}

impl<S> NoiseStream<S> {
    /// Wraps `io` after a completed handshake. `rx_leftover` are bytes already read past
    /// the handshake (they belong to the record stream); `tx_prefix` are raw bytes to send
    /// before any record (the server's `101` and handshake response, so they leave in one
    /// segment with the early payload).
    pub fn new(io: S, transport: Transport, rx_leftover: Vec<u8>, tx_prefix: Vec<u8>) -> Self {
        NoiseStream {
            io,
            sealer: transport.sealer,
            opener: transport.opener,
            peer_static: transport.peer_static,
            protocol_version: transport.protocol_version,
            handshake_hash: transport.handshake_hash,
            rx: rx_leftover,
            rx_pos: 0,
            plain_start: 0,
            plain_end: 0,
            tx: tx_prefix,
            tx_pos: 0,
            read_failed: None,
            write_failed: false,
        }
    }

    /// The peer's static key (the client's machine key, seen from the server).
    pub fn peer_static(&self) -> [u8; 32] {
        self.peer_static
    }

    /// The protocol (capability) version of the handshake.
    pub fn protocol_version(&self) -> u16 {
        self.protocol_version
    }

    /// The final Noise handshake hash (channel binding).
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.handshake_hash
    }

    /// Seals `plaintext` into the send buffer without writing it; the next flush sends it.
    /// Used for the early payload, which must precede HTTP/2.
    pub fn queue_plaintext(&mut self, plaintext: &[u8]) -> io::Result<()> {
        self.sealer
            .seal(plaintext, &mut self.tx)
            .map_err(record_io_error)
    }
}

fn record_io_error(e: RecordError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<S: AsyncWrite + Unpin> NoiseStream<S> {
    /// Writes out the send buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tx_pos < self.tx.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.tx[self.tx_pos..]) {
                Poll::Ready(Ok(0)) => {
                    self.write_failed = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.tx_pos += n,
                Poll::Ready(Err(e)) => {
                    self.write_failed = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        self.tx.clear();
        self.tx_pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for NoiseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(e) = &this.read_failed {
                return Poll::Ready(Err(record_io_error(e.clone())));
            }
            if this.plain_start < this.plain_end {
                let n = (this.plain_end - this.plain_start).min(buf.remaining());
                buf.put_slice(&this.rx[this.plain_start..this.plain_start + n]);
                this.plain_start += n;
                return Poll::Ready(Ok(()));
            }
            // Decrypt the next whole record if it is buffered; zero-length records are
            // legal, hence the loop.
            match RecordOpener::complete_frame_len(&this.rx[this.rx_pos..]) {
                Err(e) => {
                    this.read_failed = Some(e);
                    continue;
                }
                Ok(Some(len)) => {
                    let frame = &mut this.rx[this.rx_pos..this.rx_pos + len];
                    match this.opener.open_in_place(frame) {
                        Ok(plain_len) => {
                            this.plain_start = this.rx_pos + HEADER_LEN;
                            this.plain_end = this.plain_start + plain_len;
                            this.rx_pos += len;
                        }
                        Err(e) => this.read_failed = Some(e),
                    }
                    continue;
                }
                Ok(None) => {}
            }
            // Need more bytes: compact, then read into the tail.
            if this.rx_pos > 0 {
                this.rx.drain(..this.rx_pos);
                this.rx_pos = 0;
                this.plain_start = 0;
                this.plain_end = 0;
            }
            let filled = this.rx.len();
            this.rx.resize(filled + MAX_FRAME_LEN, 0);
            let mut read_buf = ReadBuf::new(&mut this.rx[filled..]);
            let res = Pin::new(&mut this.io).poll_read(cx, &mut read_buf);
            let got = read_buf.filled().len();
            this.rx.truncate(filled + got);
            match res {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if got == 0 => {
                    return Poll::Ready(if this.rx.is_empty() {
                        Ok(()) // clean end of stream between records
                    } else {
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "Noise stream ended inside a record ({} bytes buffered)",
                                this.rx.len()
                            ),
                        ))
                    });
                }
                Poll::Ready(Ok(())) => {}
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NoiseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_failed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "Noise stream failed earlier",
            )));
        }
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_PLAINTEXT_PER_WRITE);
        if let Err(e) = this.sealer.seal(&buf[..n], &mut this.tx) {
            this.write_failed = true;
            return Poll::Ready(Err(record_io_error(e)));
        }
        // Start sending right away; what does not fit now goes out on the next
        // write or flush (callers always flush).
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{generate_private_key, public_key, respond, InitiatorHandshake};
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    fn transports() -> (Transport, Transport) {
        let machine = generate_private_key();
        let server = generate_private_key();
        let (hs, init) = InitiatorHandshake::start(&machine, &public_key(&server), 113).unwrap();
        let r = respond(&server, &init).unwrap();
        (hs.read_response(&r.response).unwrap(), r.transport)
    }

    #[tokio::test]
    async fn large_transfer_both_ways_through_small_pipe() {
        let (c, s) = transports();
        // A 1000-byte pipe forces partial writes and reads that split records.
        let (a, b) = duplex(1000);
        let mut client = NoiseStream::new(a, c, Vec::new(), Vec::new());
        let mut server = NoiseStream::new(b, s, Vec::new(), Vec::new());
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let send = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&send).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        let mut client = writer.await.unwrap();
        server.write_all(b"reply").await.unwrap();
        server.flush().await.unwrap();
        let mut reply = [0u8; 5];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
    }

    #[tokio::test]
    async fn leftover_and_prefix_bytes_are_kept() {
        let (c, mut s) = transports();
        // The server sealed a record that the client's HTTP parser already swallowed.
        let mut early = Vec::new();
        s.sealer.seal(b"early", &mut early).unwrap();
        let (a, b) = duplex(4096);
        let mut client = NoiseStream::new(a, c, early, Vec::new());
        let mut server = NoiseStream::new(b, s, Vec::new(), b"RAW".to_vec());
        server.write_all(b" then sealed").await.unwrap();
        server.flush().await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"early");
        // The raw prefix reaches the client's transport unencrypted before any record,
        // which the client's record parser rejects as a wrong message type.
        let mut rest = [0u8; 1];
        let err = client.read_exact(&mut rest).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("type 82"), "{err}");
    }

    #[tokio::test]
    async fn garbage_poisons_the_stream() {
        let (c, _s) = transports();
        let (a, mut b) = duplex(4096);
        let mut client = NoiseStream::new(a, c, Vec::new(), Vec::new());
        b.write_all(&[4, 0, 20]).await.unwrap();
        b.write_all(&[0x55; 20]).await.unwrap();
        let mut buf = [0u8; 16];
        let err = client.read(&mut buf).await.unwrap_err();
        assert!(err.to_string().contains("authentication"), "{err}");
        // Poisoned: later reads fail the same way, even with nothing new on the wire.
        assert_eq!(
            client.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_from_its_header() {
        let (c, _s) = transports();
        let (a, mut b) = duplex(4096);
        let mut client = NoiseStream::new(a, c, Vec::new(), Vec::new());
        b.write_all(&[4, 0xff, 0xff]).await.unwrap();
        let err = client.read(&mut [0u8; 16]).await.unwrap_err();
        assert!(err.to_string().contains("exceeds the maximum"), "{err}");
    }

    #[tokio::test]
    async fn truncated_record_is_an_unexpected_eof() {
        let (c, mut s) = transports();
        let mut rec = Vec::new();
        s.sealer.seal(b"hello", &mut rec).unwrap();
        let (a, mut b) = duplex(4096);
        let mut client = NoiseStream::new(a, c, Vec::new(), Vec::new());
        b.write_all(&rec[..rec.len() - 3]).await.unwrap();
        drop(b);
        let err = client.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
