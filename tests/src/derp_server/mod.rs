//! The project's test DERP relay (protocol.md §6) with a STUN server (§10), for the
//! paths tests and the benchmark. Plain HTTP DERP (clients run with
//! `TS_DEBUG_USE_DERP_HTTP=1`, as Go's knob says); it serves our nodes and the real Go
//! client alike. Not part of the shipped binary.
//!
//! - `GET /derp` with `Upgrade: DERP`: 101, ServerKey, the client's ClientInfo must open
//!   with its claimed node key (that proves the key), ServerInfo; then SendPacket frames
//!   are relayed as RecvPacket to the connected client with that key (PeerGone "not
//!   here" otherwise), Pings are answered, a keep-alive goes out every 60 s. A newer
//!   connection with the same key replaces the older one.
//! - `GET /derp/probe`, `/derp/latency-check`: 200. Anything else: 426 or 404.
//! - STUN: Binding Requests get a Binding Success with the source address.
//! - Bad input (oversized or malformed frames, a ClientInfo that does not open, garbage
//!   HTTP) ends that connection only, with a log line.
//!
//! [`Options::hostile`] turns it into a server that answers every client with garbage
//! or oversized frames, for the client's bad-input tests.

use ringscale_dataplane::{Key, PrivateKey};
use ringscale_magicsock::derp::frame::{self, ClientFrame, HEADER_LEN};
use ringscale_wire::stun;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

const KEEPALIVE: Duration = Duration::from_secs(60);
/// Frames queued per client before the server drops (a slow client loses packets).
const CLIENT_QUEUE: usize = 1024;

/// How a hostile server misbehaves after the HTTP upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostility {
    /// A frame header announcing 16 MiB.
    OversizedFrame,
    /// Random bytes instead of frames.
    Garbage,
    /// A correct handshake, then RecvPacket frames with random bodies from a random
    /// source key, and a RecvPacket whose length exceeds the packet limit.
    JunkPackets,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// TCP address for DERP over plain HTTP.
    pub listen: SocketAddr,
    /// UDP address for STUN, if any.
    pub stun_listen: Option<SocketAddr>,
    /// Network namespace to bind in (e.g. `/run/netns/NAME`).
    pub netns: Option<PathBuf>,
    pub hostile: Option<Hostility>,
    /// Serve DERP over TLS with this certificate and key (PEM files); plain HTTP if
    /// None. See [`self_signed`].
    pub tls: Option<TlsFiles>,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed certificate for `ip` (and the name `derp.test`) in `dir`, made with
/// the `openssl` command (Debian's openssl package), for DERP nodes the map marks
/// `InsecureForTests`.
pub fn self_signed(dir: &std::path::Path, ip: std::net::IpAddr) -> io::Result<TlsFiles> {
    let files = TlsFiles {
        cert: dir.join("derp-cert.pem"),
        key: dir.join("derp-key.pem"),
    };
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=derp.test", "-addext"])
        .arg(format!("subjectAltName=DNS:derp.test,IP:{ip}"))
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(files)
}

fn tls_acceptor(files: &TlsFiles) -> io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| io::Error::other(format!("{:?}: {e}", files.cert)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::other(format!("{:?}: {e}", files.cert)))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| io::Error::other(format!("{:?}: {e}", files.key)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// What the server has seen, for tests.
#[derive(Default)]
pub struct Stats {
    /// Packets relayed from one client to another.
    pub relayed: AtomicU64,
    /// Packets for keys not connected.
    pub not_here: AtomicU64,
    pub stun_requests: AtomicU64,
    /// Connections ended for bad input.
    pub bad_clients: AtomicU64,
}

type Clients = Arc<Mutex<HashMap<Key, (u64, mpsc::Sender<Vec<u8>>)>>>;

struct Server {
    private: PrivateKey,
    public: Key,
    clients: Clients,
    stats: Arc<Stats>,
    hostile: Option<Hostility>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    next_conn: AtomicU64,
}

/// A running DERP (and STUN) server on its own thread; stopped on drop.
pub struct DerpServer {
    pub addr: SocketAddr,
    pub stun_addr: Option<SocketAddr>,
    pub public_key: Key,
    pub stats: Arc<Stats>,
    clients: Clients,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DerpServer {
    pub fn start(options: Options) -> io::Result<DerpServer> {
        let private = PrivateKey::generate();
        let public_key = private.public();
        let stats = Arc::new(Stats::default());
        let clients: Clients = Arc::default();
        let tls = options.tls.as_ref().map(tls_acceptor).transpose()?;
        let server = Arc::new(Server {
            public: public_key,
            private,
            clients: clients.clone(),
            stats: stats.clone(),
            hostile: options.hostile,
            tls,
            next_conn: AtomicU64::new(1),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-derp".into())
            .spawn(move || {
                if let Some(ns) = &options.netns {
                    crate::testbed::enter_netns(ns);
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let bound = async {
                        let tcp = TcpListener::bind(options.listen).await?;
                        let udp = match options.stun_listen {
                            Some(a) => Some(UdpSocket::bind(a).await?),
                            None => None,
                        };
                        io::Result::Ok((tcp, udp))
                    };
                    let (tcp, udp) = match bound.await {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let addrs = (
                        tcp.local_addr().unwrap_or(options.listen),
                        udp.as_ref().and_then(|u| u.local_addr().ok()),
                    );
                    let _ = ready_tx.send(Ok(addrs));
                    let stun_task = udp.map(|u| tokio::spawn(serve_stun(u, server.stats.clone())));
                    tokio::select! {
                        _ = accept_loop(tcp, server) => {}
                        _ = stop_rx => {}
                    }
                    if let Some(t) = stun_task {
                        t.abort();
                    }
                });
            })?;
        let (addr, stun_addr) = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the DERP server thread died while starting"))??;
        Ok(DerpServer {
            addr,
            stun_addr,
            public_key,
            stats,
            clients,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Node keys of the connected clients.
    pub fn clients(&self) -> Vec<Key> {
        self.clients.lock().unwrap().keys().copied().collect()
    }

    pub fn relayed(&self) -> u64 {
        self.stats.relayed.load(Ordering::Relaxed)
    }
}

impl Drop for DerpServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_stun(sock: UdpSocket, stats: Arc<Stats>) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        match stun::parse_request(&buf[..n]) {
            Ok(tx) => {
                stats.stun_requests.fetch_add(1, Ordering::Relaxed);
                let _ = sock.send_to(&stun::response(&tx, from), from).await;
            }
            Err(e) => log::debug!("stun: {n} bytes from {from} ignored: {e}"),
        }
    }
}

async fn accept_loop(listener: TcpListener, server: Arc<Server>) {
    loop {
        let Ok((tcp, from)) = listener.accept().await else {
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let result = match &server.tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(tls) => serve_conn(&server, tls).await,
                    Err(e) => Err(e),
                },
                None => serve_conn(&server, tcp).await,
            };
            if let Err(e) = result {
                log::debug!("derp server: connection from {from} ended: {e}");
            }
        });
    }
}

/// Reads an HTTP request head (bounded) and returns (path, upgrade-to-DERP?).
async fn read_request(tcp: &mut (impl AsyncRead + Unpin)) -> io::Result<(String, bool)> {
    let mut head = Vec::with_capacity(512);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(io::Error::other("request head over 16 KiB"));
        }
        head.push(tcp.read_u8().await?);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
        .to_string();
    let upgrade = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("upgrade") && v.trim().eq_ignore_ascii_case("derp")
        })
    });
    Ok((path, upgrade))
}

async fn read_frame(tcp: &mut (impl AsyncRead + Unpin), max: usize) -> io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; HEADER_LEN];
    tcp.read_exact(&mut h).await?;
    let (kind, len) = frame::parse_header(&h);
    if len > max {
        return Err(io::Error::other(format!(
            "frame type {kind:#04x} of {len} bytes"
        )));
    }
    let mut p = vec![0u8; len];
    tcp.read_exact(&mut p).await?;
    Ok((kind, p))
}

async fn serve_conn<S>(server: &Arc<Server>, mut tcp: S) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (path, upgrade) = read_request(&mut tcp).await?;
    if !upgrade {
        let resp: &[u8] = match path.as_str() {
            "/derp/probe" | "/derp/latency-check" => {
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            "/derp" => {
                b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        };
        tcp.write_all(resp).await?;
        tcp.flush().await?;
        return Ok(());
    }
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: {}\r\nDerp-Public-Key: {}\r\n\r\n",
        frame::PROTOCOL_VERSION,
        server.public.to_hex()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.flush().await?;
    if let Some(h) = server.hostile {
        return misbehave(server, tcp, h).await;
    }
    tcp.write_all(&frame::server_key_frame(&server.public))
        .await?;
    tcp.flush().await?;
    let (kind, p) = read_frame(&mut tcp, frame::MAX_CLIENT_INFO_SIZE).await?;
    let client = match ClientFrame::parse(kind, &p) {
        Ok(ClientFrame::ClientInfo { key, sealed }) => {
            if let Err(e) = frame::open_info(&server.private, &key, &sealed) {
                server.stats.bad_clients.fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::other(format!("ClientInfo of {key:?}: {e}")));
            }
            key
        }
        _ => {
            server.stats.bad_clients.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::other("first frame is not ClientInfo"));
        }
    };
    tcp.write_all(&frame::server_info_frame(&server.private, &client))
        .await?;
    tcp.flush().await?;
    let conn_id = server.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE);
    server
        .clients
        .lock()
        .unwrap()
        .insert(client, (conn_id, tx.clone()));
    log::debug!("derp server: {client:?} connected");
    let (mut r, mut w) = tokio::io::split(tcp);
    let writer = tokio::spawn(async move {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            let frame = tokio::select! {
                f = rx.recv() => match f { Some(f) => f, None => return },
                _ = keepalive.tick() => frame::encode(frame::KEEP_ALIVE, &[]),
            };
            if w.write_all(&frame).await.is_err() || w.flush().await.is_err() {
                return;
            }
        }
    });
    let result = relay_loop(server, client, &mut r, &tx).await;
    {
        let mut clients = server.clients.lock().unwrap();
        if clients.get(&client).is_some_and(|(id, _)| *id == conn_id) {
            clients.remove(&client);
        }
    }
    writer.abort();
    if result.is_err() {
        server.stats.bad_clients.fetch_add(1, Ordering::Relaxed);
    }
    result
}

async fn relay_loop(
    server: &Arc<Server>,
    client: Key,
    r: &mut (impl AsyncRead + Unpin),
    own: &mpsc::Sender<Vec<u8>>,
) -> io::Result<()> {
    loop {
        let mut h = [0u8; HEADER_LEN];
        match r.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let (kind, len) = frame::parse_header(&h);
        if len > 32 + frame::MAX_PACKET_SIZE {
            return Err(io::Error::other(format!(
                "{client:?} sent a frame type {kind:#04x} of {len} bytes"
            )));
        }
        let mut p = vec![0u8; len];
        r.read_exact(&mut p).await?;
        match ClientFrame::parse(kind, &p) {
            Ok(ClientFrame::SendPacket { dst, packet }) => {
                let peer = server
                    .clients
                    .lock()
                    .unwrap()
                    .get(&dst)
                    .map(|c| c.1.clone());
                match peer {
                    Some(peer) => {
                        let f = frame::encode(frame::RECV_PACKET, &[&client.0, &packet]);
                        if peer.try_send(f).is_ok() {
                            server.stats.relayed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        server.stats.not_here.fetch_add(1, Ordering::Relaxed);
                        let _ = own.try_send(frame::encode(frame::PEER_GONE, &[&dst.0, &[1]]));
                    }
                }
            }
            Ok(ClientFrame::Ping(data)) => {
                let _ = own.try_send(frame::encode(frame::PONG, &[&data]));
            }
            Ok(_) => {}
            Err(e) => return Err(io::Error::other(format!("{client:?}: {e}"))),
        }
    }
}

async fn misbehave(
    server: &Arc<Server>,
    mut tcp: impl AsyncRead + AsyncWrite + Unpin,
    how: Hostility,
) -> io::Result<()> {
    let mut junk = vec![0u8; 4096];
    ringscale_sys::random::fill(&mut junk);
    match how {
        Hostility::OversizedFrame => {
            tcp.write_all(&[frame::SERVER_KEY, 0x01, 0x00, 0x00, 0x00])
                .await?;
            tcp.write_all(&junk).await?;
        }
        Hostility::Garbage => {
            tcp.write_all(&junk).await?;
        }
        Hostility::JunkPackets => {
            tcp.write_all(&frame::server_key_frame(&server.public))
                .await?;
            let (_, p) = read_frame(&mut tcp, frame::MAX_CLIENT_INFO_SIZE).await?;
            let client = match ClientFrame::parse(frame::CLIENT_INFO, &p) {
                Ok(ClientFrame::ClientInfo { key, .. }) => key,
                _ => return Ok(()),
            };
            tcp.write_all(&frame::server_info_frame(&server.private, &client))
                .await?;
            for i in 0..200 {
                let src = PrivateKey::generate().public();
                let len = 1 + (i * 37) % junk.len();
                let mut body = junk[..len].to_vec();
                if i % 3 == 0 {
                    // Looks like disco: the magic, then junk.
                    body[..len.min(6)]
                        .copy_from_slice(&ringscale_magicsock::disco::message::MAGIC[..len.min(6)]);
                }
                tcp.write_all(&frame::encode(frame::RECV_PACKET, &[&src.0, &body]))
                    .await?;
            }
            // Finally a RecvPacket longer than any packet may be.
            let big = vec![0u8; 32 + frame::MAX_PACKET_SIZE + 100];
            tcp.write_all(&frame::encode(frame::RECV_PACKET, &[&big]))
                .await?;
        }
    }
    tcp.flush().await?;
    // Hold the connection briefly so the client reads what we sent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}
