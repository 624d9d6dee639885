//! The server side, for the project's test control server: answer `GET /key`, accept the
//! `/ts2021` upgrade, run the responder handshake, send the early payload, and serve
//! HTTP/2 over Noise, handing each request to the caller together with the client's
//! machine key (proven by the handshake).
//!
//! Every step is bounded (head size, body size, handshake timeout) and every failure ends
//! only the one connection: a client sending garbage gets an error response or an error
//! frame and is dropped, the listener carries on.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::early::{encode_early_payload, EarlyNoise};
use super::stream::NoiseStream;
use super::{format_key, http_read_err, io_err, Body, Error};
use crate::noise::{self, HandshakeError};
use ringscale_http1::{tokio_io, BodyDecoder, HeadWriter, ReadError, RequestHead};

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The server's Noise private key; its public half is served at `/key`.
    pub private_key: ringscale_keys::PrivateKey,
    /// Send the `EarlyNoise` payload with a fresh challenge key, as Headscale and
    /// Tailscale's production servers do (Go's own `testcontrol` does not).
    pub send_early_payload: bool,
    /// Refuse clients whose protocol version is lower (0 accepts all). Headscale uses 113.
    pub min_protocol_version: u16,
    /// Bound on reading the HTTP/1.1 request, the handshake and the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// Largest body accepted on plain HTTP/1.1 requests passed to the caller.
    pub max_http1_body: usize,
}

impl ServerConfig {
    /// Defaults: early payload on, no version floor, 10 s handshake bound, 1 MiB bodies.
    pub fn new(private_key: ringscale_keys::PrivateKey) -> Self {
        ServerConfig {
            private_key,
            send_early_payload: true,
            min_protocol_version: 0,
            handshake_timeout: super::DEFAULT_HANDSHAKE_TIMEOUT,
            max_http1_body: 1 << 20,
        }
    }

    /// The public key clients learn from `GET /key`.
    pub fn public_key(&self) -> [u8; 32] {
        noise::public_key(&self.private_key)
    }
}

/// A plain HTTP/1.1 request that is neither `/key` nor `/ts2021`.
#[derive(Debug, Clone)]
pub struct Http1Request {
    pub head: RequestHead,
    pub body: Vec<u8>,
}

/// The answer to an [`Http1Request`]; the connection closes after it.
#[derive(Debug, Clone)]
pub struct Http1Response {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Http1Response {
    pub fn text(status: u16, body: &str) -> Self {
        Http1Response {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn not_found() -> Self {
        Self::text(404, "not found\n")
    }
}

/// Writes `response` and shuts the connection down.
pub async fn write_http1_response<S: AsyncWrite + Unpin>(
    io: &mut S,
    response: &Http1Response,
) -> Result<(), Error> {
    const STEP: &str = "writing an HTTP/1.1 response";
    let bytes = HeadWriter::response(response.status)
        .header("Content-Type", &response.content_type)
        .header("Connection", "close")
        .finish_with_body(&response.body);
    io.write_all(&bytes).await.map_err(io_err(STEP))?;
    io.shutdown().await.map_err(io_err(STEP))
}

/// What [`accept`] made of a new connection.
pub enum Accepted<S> {
    /// A ts2021 client completed the upgrade and handshake; serve its HTTP/2 requests.
    Noise(Box<ServerConnection<S>>),
    /// `GET /key` was answered; the connection is done.
    KeyServed,
    /// Some other HTTP/1.1 request, for the caller to answer with [`write_http1_response`].
    Http1(Http1Request, S),
}

/// An established ts2021 connection from one client.
pub struct ServerConnection<S> {
    machine_public: [u8; 32],
    protocol_version: u16,
    h2: h2::server::Connection<NoiseStream<S>, Bytes>,
}

/// One HTTP/2 request from a ts2021 client.
#[derive(Debug)]
pub struct IncomingRequest {
    /// The client's machine public key, authenticated by the Noise handshake. Control
    /// servers bind node keys to it.
    pub machine_public: [u8; 32],
    /// The client's protocol (capability) version from the handshake.
    pub protocol_version: u16,
    pub request: http::Request<Body>,
    pub respond: Responder,
}

/// Sends the response to one [`IncomingRequest`].
#[derive(Debug)]
pub struct Responder {
    inner: h2::server::SendResponse<Bytes>,
}

/// A response body being streamed (the map long-poll).
#[derive(Debug)]
pub struct ResponseStream {
    inner: h2::SendStream<Bytes>,
}

fn response_head(
    status: u16,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<Response<()>, Error> {
    let status = StatusCode::from_u16(status).map_err(|e| Error::Request(e.to_string()))?;
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(name, value);
    }
    response.body(()).map_err(|e| Error::Request(e.to_string()))
}

impl Responder {
    /// Sends a complete response.
    pub fn send(
        mut self,
        status: u16,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<(), Error> {
        let head = response_head(status, headers)?;
        let end = body.is_empty();
        let mut stream = self.inner.send_response(head, end)?;
        if !end {
            // Queued by h2 and sent as the client's flow-control window allows.
            stream.send_data(body, true)?;
        }
        Ok(())
    }

    /// Sends a complete JSON response.
    pub fn send_json(self, status: u16, json: Vec<u8>) -> Result<(), Error> {
        let ct = [(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )];
        self.send(status, &ct, Bytes::from(json))
    }

    /// Sends the response head and returns a stream for the body.
    pub fn stream(
        mut self,
        status: u16,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<ResponseStream, Error> {
        let head = response_head(status, headers)?;
        Ok(ResponseStream {
            inner: self.inner.send_response(head, false)?,
        })
    }
}

impl ResponseStream {
    /// Sends `data`, waiting for flow-control credit so a slow client applies
    /// back-pressure instead of growing the server's buffers. Fails once the client has
    /// gone away or reset the stream.
    pub async fn send(&mut self, mut data: Bytes) -> Result<(), Error> {
        while !data.is_empty() {
            self.inner.reserve_capacity(data.len());
            let granted = std::future::poll_fn(|cx| self.inner.poll_capacity(cx)).await;
            match granted {
                None => return Err(Error::Request("client closed the response stream".into())),
                Some(Err(e)) => return Err(Error::H2(e)),
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let chunk = data.split_to(n.min(data.len()));
                    self.inner.send_data(chunk, false)?;
                }
            }
        }
        Ok(())
    }

    /// Ends the body.
    pub fn finish(mut self) -> Result<(), Error> {
        self.inner.send_data(Bytes::new(), true).map_err(Error::H2)
    }

    /// Resolves when the client resets the stream (e.g. it stopped a long-poll).
    pub async fn reset(&mut self) -> Error {
        match std::future::poll_fn(|cx| self.inner.poll_reset(cx)).await {
            Ok(reason) => Error::Request(format!("client reset the stream: {reason:?}")),
            Err(e) => Error::H2(e),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ServerConnection<S> {
    /// The client's machine public key.
    pub fn machine_public(&self) -> [u8; 32] {
        self.machine_public
    }

    /// The client's protocol (capability) version.
    pub fn protocol_version(&self) -> u16 {
        self.protocol_version
    }

    /// The next request, `None` when the client closed the connection. Keep calling it
    /// while requests are being answered: it also drives the connection's I/O.
    pub async fn next_request(&mut self) -> Option<Result<IncomingRequest, Error>> {
        let accepted = self.h2.accept().await?;
        Some(match accepted {
            Ok((request, respond)) => Ok(IncomingRequest {
                machine_public: self.machine_public,
                protocol_version: self.protocol_version,
                request: request.map(Body::new),
                respond: Responder { inner: respond },
            }),
            Err(e) => Err(Error::H2(e)),
        })
    }

    /// Starts a graceful shutdown (GOAWAY); keep calling [`Self::next_request`] until
    /// it returns `None`.
    pub fn graceful_shutdown(&mut self) {
        self.h2.graceful_shutdown();
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ServerConnection<S> {
    /// Serves every request with `handler`, each in its own task, until the client goes.
    pub async fn run<F, Fut>(mut self, handler: F) -> Result<(), Error>
    where
        F: Fn(IncomingRequest) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        while let Some(request) = self.next_request().await {
            tokio::spawn(handler(request?));
        }
        Ok(())
    }
}

async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, status: u16, message: &str) -> Error {
    let response = Http1Response::text(status, &format!("{message}\n"));
    let _ = write_http1_response(io, &response).await;
    Error::Http(format!("refused request: {message}"))
}

async fn refuse_handshake<S: AsyncWrite + Unpin>(
    io: &mut S,
    mut prefix: Vec<u8>,
    why: HandshakeError,
) -> Error {
    // Fixed texts only: nothing the client sent is echoed back.
    let text = match &why {
        HandshakeError::WrongSize { .. } => "wrong handshake initiation size",
        HandshakeError::UnexpectedMessageType(_) => "unexpected handshake message type",
        HandshakeError::WrongLengthField { .. } => "wrong handshake initiation length",
        HandshakeError::ServerError(_) => "unsupported protocol version",
        HandshakeError::LowOrderPoint(_) | HandshakeError::Decrypt(_) => "handshake failed",
    };
    prefix.extend_from_slice(&noise::encode_error_frame(text));
    let _ = io.write_all(&prefix).await;
    let _ = io.shutdown().await;
    Error::Handshake(why)
}

/// Reads one HTTP/1.1 request from a new connection and acts on it: answers `/key`,
/// upgrades `/ts2021` (handshake, early payload, HTTP/2 server preface), or hands any
/// other request back. Bounded by `config.handshake_timeout`.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    config: &ServerConfig,
) -> Result<Accepted<S>, Error> {
    tokio::time::timeout(config.handshake_timeout, accept_inner(io, config))
        .await
        .map_err(|_| Error::Timeout("accepting a control client"))?
}

async fn accept_inner<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    config: &ServerConfig,
) -> Result<Accepted<S>, Error> {
    const STEP: &str = "reading the client's HTTP request";
    let mut buf = Vec::new();
    let head = match tokio_io::read_head(&mut io, &mut buf).await {
        Ok(len) => RequestHead::parse(&buf[..len]).map(|head| (head, len)),
        Err(ReadError::Http(e)) => Err(e),
        Err(e) => return Err(http_read_err(STEP)(e)),
    };
    let (head, head_len) = match head {
        Ok(h) => h,
        // 400 for every malformed head, oversize ones included (as before the shared
        // codec); the codec's fixed texts only: nothing the client sent is echoed back.
        Err(e) => return Err(refuse(&mut io, 400, &e.to_string()).await),
    };
    let leftover = buf.split_off(head_len);

    match head.path() {
        "/key" => {
            if head.method != "GET" {
                return Err(refuse(&mut io, 405, "use GET for /key").await);
            }
            // Headscale insists on `v`; so do we, so clients are tested against the strict one.
            if head
                .query_param("v")
                .and_then(|v| v.parse::<u32>().ok())
                .is_none()
            {
                return Err(refuse(&mut io, 400, "missing or invalid capability version v").await);
            }
            let body = format!(
                "{{\"legacyPublicKey\":\"{}\",\"publicKey\":\"{}\"}}",
                format_key("mkey:", &[0; 32]),
                format_key("mkey:", &config.public_key())
            );
            let response = Http1Response {
                status: 200,
                content_type: "application/json".into(),
                body: body.into_bytes(),
            };
            write_http1_response(&mut io, &response).await?;
            Ok(Accepted::KeyServed)
        }
        super::UPGRADE_PATH => upgrade(io, &head, leftover, config)
            .await
            .map(|c| Accepted::Noise(Box::new(c))),
        _ => {
            const BODY_STEP: &str = "reading an HTTP/1.1 request body";
            let limit = config.max_http1_body as u64;
            let body = match head
                .body_length()
                .and_then(|len| BodyDecoder::new(len, limit))
            {
                Ok(body) => body,
                Err(e) => return Err(refuse(&mut io, e.status(), &e.to_string()).await),
            };
            let body = match tokio_io::read_body(&mut io, &leftover, body).await {
                Ok(body) => body,
                Err(ReadError::Http(e)) => {
                    return Err(refuse(&mut io, e.status(), &e.to_string()).await)
                }
                Err(e) => return Err(http_read_err(BODY_STEP)(e)),
            };
            Ok(Accepted::Http1(Http1Request { head, body }, io))
        }
    }
}

async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    head: &RequestHead,
    leftover: Vec<u8>,
    config: &ServerConfig,
) -> Result<ServerConnection<S>, Error> {
    if head.method != "POST" && head.method != "GET" {
        return Err(refuse(&mut io, 405, "use POST for /ts2021").await);
    }
    match head.headers.get("Upgrade") {
        None => return Err(refuse(&mut io, 400, "missing next protocol").await),
        Some(p) if p.eq_ignore_ascii_case(super::UPGRADE_PROTOCOL) => {}
        Some(p) if p.eq_ignore_ascii_case("websocket") => {
            return Err(refuse(&mut io, 400, "WebSocket upgrades are not supported").await)
        }
        Some(_) => return Err(refuse(&mut io, 400, "unknown next protocol").await),
    }
    let Some(init_b64) = head.headers.get(super::HANDSHAKE_HEADER) else {
        return Err(refuse(&mut io, 400, "missing Tailscale handshake header").await);
    };
    let Ok(initiation) = base64::engine::general_purpose::STANDARD.decode(init_b64) else {
        return Err(refuse(&mut io, 400, "invalid Tailscale handshake header").await);
    };

    // As Go does: switch protocols first, so handshake errors travel as error frames.
    let switching = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {}\r\nConnection: upgrade\r\n\r\n",
        super::UPGRADE_PROTOCOL
    )
    .into_bytes();
    if let Some(v) = noise::initiation_version(&initiation) {
        if v < config.min_protocol_version {
            let why = HandshakeError::ServerError(format!(
                "protocol version {v} is below {}",
                config.min_protocol_version
            ));
            return Err(refuse_handshake(&mut io, switching, why).await);
        }
    }
    let responded = match noise::respond(&config.private_key, &initiation) {
        Ok(r) => r,
        Err(why) => return Err(refuse_handshake(&mut io, switching, why).await),
    };
    let machine_public = responded.transport.peer_static;
    let protocol_version = responded.transport.protocol_version;

    let mut prefix = switching;
    prefix.extend_from_slice(&responded.response);
    let mut stream = NoiseStream::new(io, responded.transport, leftover, prefix);
    if config.send_early_payload {
        let challenge = format_key(
            "chalpub:",
            &noise::public_key(&noise::generate_private_key()),
        );
        let payload = encode_early_payload(&EarlyNoise {
            node_key_challenge: challenge,
        });
        stream
            .queue_plaintext(&payload)
            .map_err(io_err("sealing the early payload"))?;
    }
    // 101, handshake response and early payload leave together, before HTTP/2 (whose
    // server side may wait for the client preface before writing anything).
    stream
        .flush()
        .await
        .map_err(io_err("sending the handshake response"))?;

    let h2 = h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .max_concurrent_streams(64)
        .handshake(stream)
        .await?;
    Ok(ServerConnection {
        machine_public,
        protocol_version,
        h2,
    })
}

/// What a test control server plugs into [`serve`].
pub trait Handler: Send + Sync + 'static {
    /// Answers one HTTP/2 request from a ts2021 client (register, map, …). Runs in its
    /// own task; long-polls may run as long as the client stays.
    fn handle(&self, request: IncomingRequest) -> impl Future<Output = ()> + Send;

    /// Answers a plain HTTP/1.1 request other than `/key` and `/ts2021`.
    fn handle_http1(&self, _request: Http1Request) -> impl Future<Output = Http1Response> + Send {
        async { Http1Response::not_found() }
    }
}

async fn serve_connection<H: Handler>(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    handler: Arc<H>,
) -> Result<(), Error> {
    let _ = tcp.set_nodelay(true);
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    match accept(tcp, &config).await? {
        Accepted::KeyServed => log::debug!("ts2021 server: served /key to {peer}"),
        Accepted::Http1(request, mut io) => {
            log::debug!(
                "ts2021 server: {} {} from {peer}",
                request.head.method,
                request.head.target
            );
            let response = handler.handle_http1(request).await;
            write_http1_response(&mut io, &response).await?;
        }
        Accepted::Noise(connection) => {
            log::info!(
                "ts2021 server: {} connected from {peer} (protocol version {})",
                format_key("mkey:", &connection.machine_public()),
                connection.protocol_version()
            );
            let handler = handler.clone();
            connection
                .run(move |request| {
                    let handler = handler.clone();
                    async move { handler.handle(request).await }
                })
                .await?;
        }
    }
    Ok(())
}

/// Accepts connections on `listener` forever, each in its own task. A connection that
/// fails (garbage, timeouts, resets) is logged and dropped; the listener keeps serving.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    handler: Arc<H>,
) -> io::Result<()> {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                log::warn!("ts2021 server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (config, handler) = (config.clone(), handler.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_connection(tcp, config, handler).await {
                log::info!("ts2021 server: connection from {peer}: {e}");
            }
        });
    }
}
