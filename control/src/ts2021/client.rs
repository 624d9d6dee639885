//! The client side: fetch the server's Noise key (`GET /key`), upgrade a connection on
//! `/ts2021` with the Noise initiation in `X-Tailscale-Handshake`, finish the handshake,
//! sniff the early payload, and run an HTTP/2 client over the Noise stream.
//!
//! Transport choice follows the control URL: `https://` gets verified TLS (feature `tls`),
//! `http://` plain TCP. Go's client behaves the same for the URL it is given; it
//! additionally races port 443 for `http://` URLs on public addresses, which we do not —
//! such URLs only make sense for private test setups (see [`ControlUrl::is_private_address`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::early::{self, EarlyHeader, EarlyNoise, EARLY_HEADER_LEN};
use super::stream::NoiseStream;
use super::url::{ControlUrl, Scheme};
use super::{http_read_err, io_err, read_at_least, Body, Error};
use crate::noise::{self, InitiatorHandshake, ServerReplyHeader, HEADER_LEN, RESPONSE_LEN};
use ringscale_http1::{tokio_io, BodyDecoder, HeadWriter, ResponseHead};

/// Tunables for [`connect_with`]; [`Default`] matches Go's client.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Bound on DNS + TCP + TLS + upgrade + Noise + HTTP/2 setup (and on `GET /key`).
    pub handshake_timeout: Duration,
    /// The version announced in `/key?v=`, the initiation header and the prologue.
    pub capability_version: u16,
    /// `User-Agent` for the HTTP/1.1 requests.
    pub user_agent: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            handshake_timeout: super::DEFAULT_HANDSHAKE_TIMEOUT,
            capability_version: super::CAPABILITY_VERSION,
            user_agent: format!("ringscale/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// The byte stream to the control server: plain TCP or TLS.
pub enum ControlIo {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ControlIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ControlIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            ControlIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ControlIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ControlIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            ControlIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ControlIo::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            ControlIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ControlIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            ControlIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens TCP (and TLS for `https://`) to the control server.
async fn dial(url: &ControlUrl, step: &'static str) -> Result<ControlIo, Error> {
    let tcp = crate::bypass::connect(url.host.as_str(), url.port)
        .await
        .map_err(|source| Error::Connect {
            step,
            addr: format!("{}:{}", url.host, url.port),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    match url.scheme {
        Scheme::Http => Ok(ControlIo::Plain(tcp)),
        #[cfg(feature = "tls")]
        Scheme::Https => Ok(ControlIo::Tls(Box::new(
            super::tls::connect(&url.host, tcp, step).await?,
        ))),
        #[cfg(not(feature = "tls"))]
        Scheme::Https => Err(Error::Tls(format!(
            "{url} needs HTTPS, but this build has no TLS support (cargo feature `tls`)"
        ))),
    }
}

async fn with_timeout<T>(
    limit: Duration,
    step: &'static str,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Error::Timeout(step))?
}

/// `GET <control>/key?v=N`: the server's Noise public key (`publicKey` of
/// `OverTLSPublicKeyResponse`). This key is the trust anchor of the whole control channel,
/// hence TLS for public servers.
pub async fn fetch_server_key(url: &ControlUrl, opts: &ConnectOptions) -> Result<[u8; 32], Error> {
    const STEP: &str = "fetching the control server key (GET /key)";
    with_timeout(opts.handshake_timeout, STEP, async {
        let mut io = dial(url, STEP).await?;
        let target = format!("{}/key?v={}", url.path, opts.capability_version);
        let request = HeadWriter::request("GET", &target)
            .header("Host", url.authority())
            .header("User-Agent", &opts.user_agent)
            .header("Accept", "application/json")
            .header("Connection", "close")
            .finish();
        io.write_all(&request).await.map_err(io_err(STEP))?;
        io.flush().await.map_err(io_err(STEP))?;
        let mut buf = Vec::new();
        let head_len = tokio_io::read_head(&mut io, &mut buf)
            .await
            .map_err(http_read_err(STEP))?;
        let head = ResponseHead::parse(&buf[..head_len])?;
        let body = read_body(
            &mut io,
            &buf[head_len..],
            &head,
            super::MAX_KEY_RESPONSE_LEN,
            STEP,
        )
        .await?;
        if head.status != 200 {
            return Err(Error::Status {
                step: STEP,
                status: head.status,
                body: body_excerpt(&body),
            });
        }
        parse_key_response(&body)
    })
    .await
}

/// Reads the body of the response `head` (at most `limit` bytes), starting from the
/// already-buffered `start`.
async fn read_body<S: AsyncRead + Unpin>(
    io: &mut S,
    start: &[u8],
    head: &ResponseHead,
    limit: usize,
    step: &'static str,
) -> Result<Vec<u8>, Error> {
    let body = BodyDecoder::new(head.body_length()?, limit as u64)?;
    tokio_io::read_body(io, start, body)
        .await
        .map_err(http_read_err(step))
}

/// At most 200 printable characters of an error body, for messages.
fn body_excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// Parses the `/key` response body.
pub fn parse_key_response(body: &[u8]) -> Result<[u8; 32], Error> {
    #[derive(serde::Deserialize)]
    struct KeyResponse {
        #[serde(rename = "publicKey", default)]
        public_key: String,
    }
    let resp: KeyResponse = serde_json::from_slice(body).map_err(|_| {
        Error::BadServerKey(format!(
            "response is not JSON with a publicKey: {:?}",
            body_excerpt(body)
        ))
    })?;
    if resp.public_key.is_empty() {
        return Err(Error::BadServerKey(
            "control server is too old; no Noise key".into(),
        ));
    }
    let key = super::parse_key("mkey:", &resp.public_key)
        .ok_or_else(|| Error::BadServerKey(format!("malformed publicKey {:?}", resp.public_key)))?;
    if key == [0; 32] {
        return Err(Error::BadServerKey(
            "control server is too old; no Noise key".into(),
        ));
    }
    Ok(key)
}

/// Upgrades a fresh connection on `/ts2021` and runs the Noise handshake. Returns the
/// Noise stream (with any bytes read past the handshake kept inside it).
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    url: &ControlUrl,
    machine_private: &ringscale_keys::PrivateKey,
    server_public: &[u8; 32],
    opts: &ConnectOptions,
) -> Result<NoiseStream<S>, Error> {
    const STEP: &str = "upgrading to the control protocol (POST /ts2021)";
    let (handshake, initiation) =
        InitiatorHandshake::start(machine_private, server_public, opts.capability_version)?;
    let request = HeadWriter::request("POST", super::UPGRADE_PATH)
        .header("Host", url.authority())
        .header("User-Agent", &opts.user_agent)
        .header("Upgrade", super::UPGRADE_PROTOCOL)
        .header("Connection", "upgrade")
        .header(
            super::HANDSHAKE_HEADER,
            base64::engine::general_purpose::STANDARD.encode(initiation),
        )
        .finish_with_body(&[]);
    io.write_all(&request).await.map_err(io_err(STEP))?;
    io.flush().await.map_err(io_err(STEP))?;

    let mut buf = Vec::new();
    let head_len = tokio_io::read_head(&mut io, &mut buf)
        .await
        .map_err(http_read_err(STEP))?;
    let head = ResponseHead::parse(&buf[..head_len])?;
    let mut rest = buf.split_off(head_len);
    if head.status != 101 {
        // Best effort at the server's explanation; the status alone is the error.
        let read = read_body(&mut io, &rest, &head, 4096, STEP);
        let body = tokio::time::timeout(Duration::from_secs(1), read)
            .await
            .ok()
            .and_then(Result::ok);
        return Err(Error::Status {
            step: STEP,
            status: head.status,
            body: body.map(|b| body_excerpt(&b)).unwrap_or_default(),
        });
    }
    match head.headers.get("Upgrade") {
        Some(p) if p.eq_ignore_ascii_case(super::UPGRADE_PROTOCOL) => {}
        other => {
            return Err(Error::Http(format!(
                "{STEP}: server switched to protocol {other:?}, want {:?}",
                super::UPGRADE_PROTOCOL
            )))
        }
    }

    const HS_STEP: &str = "reading the Noise handshake response";
    if let Err(e) = read_at_least(&mut io, &mut rest, HEADER_LEN, HS_STEP).await {
        return Err(match e {
            Error::Io { source, .. }
                if rest.is_empty() && source.kind() == io::ErrorKind::UnexpectedEof =>
            {
                Error::Io {
                    step: HS_STEP,
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the server closed the connection without a handshake response \
                             (Headscale does this when it does not accept capability version {})",
                            opts.capability_version
                        ),
                    ),
                }
            }
            e => e,
        });
    }
    let header: [u8; HEADER_LEN] = rest[..HEADER_LEN].try_into().expect("length checked");
    match noise::parse_server_reply_header(&header)? {
        ServerReplyHeader::Response => {
            read_at_least(&mut io, &mut rest, RESPONSE_LEN, HS_STEP).await?;
            let leftover = rest.split_off(RESPONSE_LEN);
            let transport = handshake.read_response(&rest)?;
            Ok(NoiseStream::new(io, transport, leftover, Vec::new()))
        }
        ServerReplyHeader::Error { len } => {
            // Read what arrives of the message; a short one is still worth showing.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                read_at_least(&mut io, &mut rest, HEADER_LEN + len, HS_STEP),
            )
            .await;
            let end = rest.len().min(HEADER_LEN + len);
            Err(Error::Handshake(noise::server_error_text(
                &rest[HEADER_LEN..end],
            )))
        }
    }
}

type EarlyResult = Result<Option<EarlyNoise>, String>;

enum Sniff {
    /// Collecting the first 9 decrypted bytes.
    Header {
        buf: [u8; EARLY_HEADER_LEN],
        got: usize,
    },
    /// Collecting the early payload JSON.
    Payload {
        buf: Vec<u8>,
        want: usize,
    },
    /// No payload: handing the 9 bytes back to HTTP/2.
    Replay {
        buf: [u8; EARLY_HEADER_LEN],
        pos: usize,
    },
    Done,
}

/// Wraps the client's Noise stream: the first read looks for the early payload (Go does
/// this lazily too, so HTTP/2 can send its preface first), delivers it through a oneshot,
/// and passes everything else through unchanged.
struct EarlyPayloadSniffer<S> {
    inner: NoiseStream<S>,
    state: Sniff,
    report: Option<oneshot::Sender<EarlyResult>>,
}

impl<S> EarlyPayloadSniffer<S> {
    fn finish(&mut self, result: EarlyResult) {
        if let Some(tx) = self.report.take() {
            let _ = tx.send(result);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for EarlyPayloadSniffer<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                Sniff::Done => return Pin::new(&mut this.inner).poll_read(cx, out),
                Sniff::Replay { buf, pos } => {
                    let n = (EARLY_HEADER_LEN - *pos).min(out.remaining());
                    out.put_slice(&buf[*pos..*pos + n]);
                    *pos += n;
                    if *pos == EARLY_HEADER_LEN {
                        this.state = Sniff::Done;
                    }
                    return Poll::Ready(Ok(()));
                }
                Sniff::Header { buf, got } => {
                    let mut rb = ReadBuf::new(&mut buf[*got..]);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => {
                            let msg = e.to_string();
                            this.finish(Err(msg));
                            return Poll::Ready(Err(e));
                        }
                        Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                            let at_start = *got == 0;
                            this.finish(Err("connection closed before HTTP/2 started".into()));
                            this.state = Sniff::Done;
                            if at_start {
                                return Poll::Ready(Ok(()));
                            }
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "control server closed the connection after a partial frame header",
                            )));
                        }
                        Poll::Ready(Ok(())) => *got += rb.filled().len(),
                    }
                    if *got < EARLY_HEADER_LEN {
                        continue;
                    }
                    let header = *buf;
                    match early::parse_early_header(&header) {
                        Ok(EarlyHeader::Absent) => {
                            this.finish(Ok(None));
                            this.state = Sniff::Replay {
                                buf: header,
                                pos: 0,
                            };
                        }
                        Ok(EarlyHeader::Payload(len)) => {
                            this.state = Sniff::Payload {
                                buf: Vec::with_capacity(len),
                                want: len,
                            };
                        }
                        Err(e) => {
                            this.finish(Err(e.clone()));
                            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                        }
                    }
                }
                Sniff::Payload { buf, want } => {
                    if buf.len() == *want {
                        let result = early::parse_early_payload(buf);
                        this.state = Sniff::Done;
                        match result {
                            Ok(p) => this.finish(Ok(Some(p))),
                            Err(e) => {
                                this.finish(Err(e.clone()));
                                return Poll::Ready(Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    e,
                                )));
                            }
                        }
                        continue;
                    }
                    let mut chunk = [0u8; 1024];
                    let room = (*want - buf.len()).min(chunk.len());
                    let mut rb = ReadBuf::new(&mut chunk[..room]);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => {
                            this.finish(Err(e.to_string()));
                            return Poll::Ready(Err(e));
                        }
                        Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                            let e = "control server closed the connection inside the early payload";
                            this.finish(Err(e.into()));
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                e,
                            )));
                        }
                        Poll::Ready(Ok(())) => buf.extend_from_slice(rb.filled()),
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EarlyPayloadSniffer<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// An established control connection: HTTP/2 over Noise. Cheap to share by reference;
/// requests may run concurrently (register, the map long-poll, lite updates…).
pub struct ControlConnection {
    send_request: h2::client::SendRequest<Bytes>,
    authority: String,
    server_public: [u8; 32],
    protocol_version: u16,
    handshake_hash: [u8; 32],
    early: tokio::sync::Mutex<EarlyState>,
    driver: JoinHandle<Result<(), h2::Error>>,
}

enum EarlyState {
    Waiting(oneshot::Receiver<EarlyResult>),
    Known(EarlyResult),
}

impl std::fmt::Debug for ControlConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlConnection")
            .field("authority", &self.authority)
            .field("protocol_version", &self.protocol_version)
            .finish_non_exhaustive()
    }
}

impl Drop for ControlConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Connects to `control_url` with default options: fetches the server key first unless
/// it is given, then upgrades, handshakes and starts HTTP/2. Must run inside a tokio
/// runtime (the HTTP/2 connection is driven by a spawned task, aborted on drop).
pub async fn connect(
    control_url: &str,
    machine_private: &ringscale_keys::PrivateKey,
    server_public: Option<[u8; 32]>,
) -> Result<ControlConnection, Error> {
    connect_with(
        &ControlUrl::parse(control_url)?,
        machine_private,
        server_public,
        &ConnectOptions::default(),
    )
    .await
}

/// [`connect`] with a parsed URL and explicit options.
pub async fn connect_with(
    url: &ControlUrl,
    machine_private: &ringscale_keys::PrivateKey,
    server_public: Option<[u8; 32]>,
    opts: &ConnectOptions,
) -> Result<ControlConnection, Error> {
    let server_public = match server_public {
        Some(k) => k,
        None => fetch_server_key(url, opts).await?,
    };
    const STEP: &str = "connecting to the control server (ts2021)";
    with_timeout(opts.handshake_timeout, STEP, async {
        let io = dial(url, STEP).await?;
        let stream = upgrade(io, url, machine_private, &server_public, opts).await?;
        let protocol_version = stream.protocol_version();
        let handshake_hash = stream.handshake_hash();
        let (report, early_rx) = oneshot::channel();
        let sniffer = EarlyPayloadSniffer {
            inner: stream,
            state: Sniff::Header {
                buf: [0; EARLY_HEADER_LEN],
                got: 0,
            },
            report: Some(report),
        };
        let (send_request, connection) = h2::client::Builder::new()
            // Netmaps are large and arrive in bursts; a generous window avoids stalls.
            .initial_window_size(1 << 20)
            .initial_connection_window_size(2 << 20)
            .enable_push(false)
            .handshake::<_, Bytes>(sniffer)
            .await?;
        let driver = tokio::spawn(async move {
            let result = connection.await;
            if let Err(e) = &result {
                log::debug!("control connection ended: {e}");
            }
            result
        });
        Ok(ControlConnection {
            send_request,
            authority: url.authority(),
            server_public,
            protocol_version,
            handshake_hash,
            early: tokio::sync::Mutex::new(EarlyState::Waiting(early_rx)),
            driver,
        })
    })
    .await
}

impl ControlConnection {
    /// The server's Noise key this connection was authenticated with (cache it to skip
    /// `GET /key` on reconnects).
    pub fn server_public(&self) -> [u8; 32] {
        self.server_public
    }

    /// The protocol version negotiated in the handshake.
    pub fn protocol_version(&self) -> u16 {
        self.protocol_version
    }

    /// The Noise handshake hash (channel binding).
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.handshake_hash
    }

    /// True once the underlying connection has ended (error or close); make a new one.
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }

    /// The early payload, once HTTP/2 has read past it: `Ok(None)` if the server sent
    /// none. Waits for the first bytes from the server.
    pub async fn early_payload(&self) -> Result<Option<EarlyNoise>, Error> {
        let mut state = self.early.lock().await;
        let result = match &mut *state {
            EarlyState::Known(result) => result.clone(),
            EarlyState::Waiting(rx) => rx
                .await
                .unwrap_or_else(|_| Err("connection ended before the early payload".into())),
        };
        *state = EarlyState::Known(result.clone());
        result.map_err(Error::EarlyPayload)
    }

    /// Sends a request with `body` on a new HTTP/2 stream and waits for the response
    /// head. `path` is like `/machine/map`; `:scheme` is https and `:authority` the
    /// control host, as Go sends them.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Response<Body>, Error> {
        let uri = format!("https://{}{}", self.authority, path);
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(())
            .map_err(|e| Error::Request(e.to_string()))?;
        let mut sender = self.send_request.clone().ready().await?;
        let end_of_stream = body.is_empty();
        let (response, mut send) = sender.send_request(request, end_of_stream)?;
        if !end_of_stream {
            // Request bodies are small JSON; h2 queues them within its flow-control window.
            send.send_data(body, true)?;
        }
        let response = response.await?;
        Ok(response.map(Body::new))
    }

    /// `POST path` with a JSON body and `Content-Type: application/json`. `ts_lb` are
    /// values for the `Ts-Lb` load-balancer hint header (`nodekey:…`), in order.
    pub async fn post_json(
        &self,
        path: &str,
        json: Vec<u8>,
        ts_lb: &[&str],
    ) -> Result<Response<Body>, Error> {
        let mut headers = vec![(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )];
        for value in ts_lb {
            let value = HeaderValue::from_str(value)
                .map_err(|e| Error::Request(format!("Ts-Lb {value:?}: {e}")))?;
            headers.push((HeaderName::from_static("ts-lb"), value));
        }
        self.request(Method::POST, path, &headers, Bytes::from(json))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_response_shapes() {
        let key_hex = "5b".repeat(32);
        let body = format!(
            "{{\"legacyPublicKey\":\"mkey:{}\",\"publicKey\":\"mkey:{key_hex}\"}}",
            "0".repeat(64)
        );
        assert_eq!(parse_key_response(body.as_bytes()).unwrap(), [0x5b; 32]);
        let zero = format!(
            "{{\"legacyPublicKey\":\"mkey:{0}\",\"publicKey\":\"mkey:{0}\"}}",
            "0".repeat(64)
        );
        assert!(parse_key_response(zero.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("too old"));
        assert!(parse_key_response(b"{}")
            .unwrap_err()
            .to_string()
            .contains("too old"));
        // An old server's bare hex legacy key is not a Noise key.
        assert!(parse_key_response(key_hex.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("not JSON"));
        assert!(parse_key_response(b"{\"publicKey\":\"nodekey:00\"}")
            .unwrap_err()
            .to_string()
            .contains("malformed"));
    }
}
