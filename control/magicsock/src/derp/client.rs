//! A DERP client connection (protocol.md §6.1): TCP (and TLS unless plain HTTP is
//! asked for), the HTTP upgrade, the key exchange, then frames both ways. One task per
//! region ([`spawn_region`]) keeps the connection up with backoff and passes what
//! arrives to the paths task.

use super::frame::{self, FrameError, ServerFrame, HEADER_LEN, MAX_FRAME_SIZE};
use super::DerpEvent;
use ringscale_keys::{Key, PrivateKey};
use ringscale_tailcfg::{DerpNode, DerpRegion};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Bound on connecting: TCP, TLS, upgrade and key exchange (Go: 10 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The server sends a keep-alive every minute; twice that without any frame means
/// the connection is dead (Go's read timeout).
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Packets waiting for a region's connection.
const OUTGOING_QUEUE: usize = 1024;

#[derive(Debug)]
pub enum DerpError {
    Io(std::io::Error),
    Timeout,
    /// The server's HTTP answer was not the 101 upgrade.
    Upgrade(String),
    Frame(FrameError),
    /// A frame came that does not belong at this point of the handshake.
    Protocol(&'static str),
    NoAddress(String),
}

impl fmt::Display for DerpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DerpError::Io(e) => write!(f, "{e}"),
            DerpError::Timeout => f.write_str("timed out"),
            DerpError::Upgrade(s) => write!(f, "HTTP upgrade refused: {s}"),
            DerpError::Frame(e) => write!(f, "{e}"),
            DerpError::Protocol(s) => write!(f, "protocol error: {s}"),
            DerpError::NoAddress(s) => write!(f, "no address to dial: {s}"),
        }
    }
}

impl std::error::Error for DerpError {}

impl From<std::io::Error> for DerpError {
    fn from(e: std::io::Error) -> Self {
        DerpError::Io(e)
    }
}

impl From<FrameError> for DerpError {
    fn from(e: FrameError) -> Self {
        DerpError::Frame(e)
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Plain HTTP instead of TLS: Go's debug knob of the same name, so one environment
/// setting makes test nodes of both implementations speak plain DERP.
pub fn use_plain_http() -> bool {
    std::env::var("TS_DEBUG_USE_DERP_HTTP").is_ok_and(|v| v == "1" || v == "true")
}

/// The frame reader of a connection.
pub struct DerpReader {
    r: ReadHalf<Box<dyn Stream>>,
    buf: Vec<u8>,
}

impl DerpReader {
    /// The next frame, within the read timeout. A frame longer than 1 MiB is an error
    /// (the connection is then unusable: its framing is lost).
    pub async fn next(&mut self) -> Result<ServerFrame, DerpError> {
        let (kind, payload) = tokio::time::timeout(READ_TIMEOUT, self.read_raw())
            .await
            .map_err(|_| DerpError::Timeout)??;
        Ok(ServerFrame::parse(kind, payload)?)
    }

    async fn read_raw(&mut self) -> Result<(u8, &[u8]), DerpError> {
        let mut h = [0u8; HEADER_LEN];
        self.r.read_exact(&mut h).await?;
        let (kind, len) = frame::parse_header(&h);
        if len > MAX_FRAME_SIZE {
            return Err(FrameError::TooLarge { kind, len }.into());
        }
        self.buf.resize(len, 0);
        self.r.read_exact(&mut self.buf).await?;
        Ok((kind, &self.buf[..]))
    }
}

/// The frame writer of a connection.
pub struct DerpWriter {
    w: WriteHalf<Box<dyn Stream>>,
    buf: Vec<u8>,
}

impl DerpWriter {
    pub async fn send_packet(&mut self, dst: &Key, packet: &[u8]) -> Result<(), DerpError> {
        self.write(frame::SEND_PACKET, &[&dst.0, packet]).await
    }

    pub async fn note_preferred(&mut self, preferred: bool) -> Result<(), DerpError> {
        self.write(frame::NOTE_PREFERRED, &[&[preferred as u8]])
            .await
    }

    pub async fn pong(&mut self, data: &[u8; 8]) -> Result<(), DerpError> {
        self.write(frame::PONG, &[data]).await
    }

    async fn write(&mut self, kind: u8, parts: &[&[u8]]) -> Result<(), DerpError> {
        self.buf.clear();
        frame::encode_into(&mut self.buf, kind, parts);
        self.w.write_all(&self.buf).await?;
        self.w.flush().await?;
        Ok(())
    }
}

fn node_addr(node: &DerpNode, plain: bool) -> Result<SocketAddr, DerpError> {
    let port = match node.derp_port {
        p @ 1..=65535 => p as u16,
        _ if plain => 80,
        _ => 443,
    };
    for s in [&node.ipv4, &node.ipv6, &node.host_name] {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
    }
    Err(DerpError::NoAddress(format!(
        "DERP node {:?} has no IP address (host names are not resolved)",
        node.name
    )))
}

/// Connects to `node` and completes the DERP handshake with our node key.
pub async fn connect(
    node: &DerpNode,
    node_private: &PrivateKey,
) -> Result<(DerpReader, DerpWriter, Key), DerpError> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(node, node_private))
        .await
        .map_err(|_| DerpError::Timeout)?
}

async fn connect_inner(
    node: &DerpNode,
    node_private: &PrivateKey,
) -> Result<(DerpReader, DerpWriter, Key), DerpError> {
    let plain = use_plain_http();
    let addr = node_addr(node, plain)?;
    // Marked to bypass table 52: relay traffic must not loop into the tunnel when an
    // exit node is in use.
    let tcp = ringscale_control::bypass::connect_addr(addr).await?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = if plain {
        Box::new(tcp)
    } else {
        tls_stream(node, tcp).await?
    };
    let (r, mut w) = tokio::io::split(stream);
    let host = if node.host_name.is_empty() {
        addr.ip().to_string()
    } else {
        node.host_name.clone()
    };
    let req = format!(
        "GET /derp HTTP/1.1\r\nHost: {host}\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
    );
    w.write_all(req.as_bytes()).await?;
    w.flush().await?;
    let mut reader = DerpReader { r, buf: Vec::new() };
    read_upgrade(&mut reader.r).await?;
    let server_key = match reader.next().await? {
        ServerFrame::ServerKey(k) => k,
        _ => return Err(DerpError::Protocol("first frame is not ServerKey")),
    };
    let mut writer = DerpWriter { w, buf: Vec::new() };
    let info = frame::client_info_frame(node_private, &server_key);
    writer.w.write_all(&info).await?;
    writer.w.flush().await?;
    match reader.next().await? {
        ServerFrame::ServerInfo(sealed) => {
            frame::open_info(node_private, &server_key, &sealed)?;
        }
        _ => return Err(DerpError::Protocol("expected ServerInfo")),
    }
    Ok((reader, writer, server_key))
}

/// Reads the HTTP response head byte by byte (it is short, and nothing after it may be
/// consumed: DERP frames follow at once) and checks for the 101.
async fn read_upgrade(r: &mut ReadHalf<Box<dyn Stream>>) -> Result<(), DerpError> {
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(DerpError::Upgrade("response head over 8 KiB".into()));
        }
        head.push(r.read_u8().await?);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.lines().next().unwrap_or("").to_string();
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(DerpError::Upgrade(status));
    }
    Ok(())
}

#[cfg(feature = "tls")]
async fn tls_stream(node: &DerpNode, tcp: TcpStream) -> Result<Box<dyn Stream>, DerpError> {
    Ok(Box::new(super::tls::connect(node, tcp).await?))
}

#[cfg(not(feature = "tls"))]
async fn tls_stream(_node: &DerpNode, _tcp: TcpStream) -> Result<Box<dyn Stream>, DerpError> {
    Err(DerpError::Upgrade(
        "DERP needs TLS but this build has none (cargo feature `tls`); set TS_DEBUG_USE_DERP_HTTP=1 for plain HTTP".into(),
    ))
}

/// The handle of a region's connection task; dropping it ends the task.
pub struct RegionClient {
    outgoing: mpsc::Sender<(Key, Vec<u8>)>,
    preferred: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RegionClient {
    /// Queues a packet for `dst`; false (and dropped) when the queue is full.
    pub fn send(&self, dst: Key, packet: Vec<u8>) -> bool {
        self.outgoing.try_send((dst, packet)).is_ok()
    }

    pub fn set_preferred(&self, preferred: bool) {
        self.preferred.send_replace(preferred);
    }
}

impl Drop for RegionClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the connection task for `region`: connect to its nodes in order, keep the
/// connection, reconnect with exponential backoff (1 s to 30 s, with jitter).
pub fn spawn_region(
    region: DerpRegion,
    node_private: PrivateKey,
    preferred: bool,
    events: mpsc::Sender<DerpEvent>,
) -> RegionClient {
    let (out_tx, out_rx) = mpsc::channel(OUTGOING_QUEUE);
    let (pref_tx, pref_rx) = tokio::sync::watch::channel(preferred);
    let task = tokio::spawn(region_task(region, node_private, out_rx, pref_rx, events));
    RegionClient {
        outgoing: out_tx,
        preferred: pref_tx,
        task,
    }
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    ringscale_sys::random::fill(&mut b);
    d + d.mul_f64(f64::from(u16::from_le_bytes(b)) / 65535.0 / 2.0)
}

async fn region_task(
    region: DerpRegion,
    node_private: PrivateKey,
    mut outgoing: mpsc::Receiver<(Key, Vec<u8>)>,
    mut preferred: tokio::sync::watch::Receiver<bool>,
    events: mpsc::Sender<DerpEvent>,
) {
    let id = region.region_id as u16;
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut last_err = None;
        let mut conn = None;
        for node in region.nodes.iter().filter(|n| !n.stun_only) {
            match connect(node, &node_private).await {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(e) => last_err = Some(format!("{}: {e}", node.name)),
            }
        }
        if let Some((reader, mut writer, _server)) = conn {
            log::info!("derp: connected to region {id} ({})", region.region_code);
            backoff = Duration::from_secs(1);
            let _ = events.send(DerpEvent::Connected(id)).await;
            let why = serve(
                id,
                reader,
                &mut writer,
                &mut outgoing,
                &mut preferred,
                &events,
            )
            .await;
            log::info!("derp: region {id} connection ended: {why}");
            let _ = events.send(DerpEvent::Disconnected(id)).await;
        } else {
            log::warn!(
                "derp: cannot connect to region {id}: {}",
                last_err.unwrap_or_else(|| "no DERP nodes".into())
            );
        }
        // Wait out the backoff, dropping what is sent meanwhile (it would be stale).
        let sleep = tokio::time::sleep(jitter(backoff));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                m = outgoing.recv() => if m.is_none() { return },
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: frames in, packets out. Returns why it ended.
///
/// Frames are read on a task of their own: a read cancelled half-way (as a `select!`
/// would) loses the framing of the whole stream.
async fn serve(
    region: u16,
    reader: DerpReader,
    writer: &mut DerpWriter,
    outgoing: &mut mpsc::Receiver<(Key, Vec<u8>)>,
    preferred: &mut tokio::sync::watch::Receiver<bool>,
    events: &mpsc::Sender<DerpEvent>,
) -> DerpError {
    if *preferred.borrow_and_update() {
        if let Err(e) = writer.note_preferred(true).await {
            return e;
        }
    }
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Result<ServerFrame, DerpError>>(16);
    let events_in = events.clone();
    let read_task = tokio::spawn(async move {
        let mut reader = reader;
        loop {
            match reader.next().await {
                Ok(ServerFrame::RecvPacket { src, packet }) => {
                    // A full queue drops the packet, as a congested link would.
                    let _ = events_in.try_send(DerpEvent::Packet {
                        region,
                        src,
                        packet,
                    });
                }
                Ok(ServerFrame::KeepAlive) => {}
                Ok(f) => {
                    if ctl_tx.send(Ok(f)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = ctl_tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    let why = loop {
        tokio::select! {
            f = ctl_rx.recv() => match f {
                Some(Ok(ServerFrame::Ping(data))) => {
                    if let Err(e) = writer.pong(&data).await {
                        break e;
                    }
                }
                Some(Ok(ServerFrame::Health(text))) if !text.is_empty() => {
                    log::warn!("derp: region {region} server reports: {text}");
                }
                Some(Ok(ServerFrame::PeerGone { key, .. })) => {
                    log::debug!("derp: region {region}: peer {key:?} gone");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => break DerpError::Protocol("reader ended"),
            },
            m = outgoing.recv() => match m {
                Some((dst, packet)) => {
                    if let Err(e) = writer.send_packet(&dst, &packet).await {
                        break e;
                    }
                }
                None => break DerpError::Protocol("closed"),
            },
            r = preferred.changed() => {
                if r.is_err() {
                    break DerpError::Protocol("closed");
                }
                let p = *preferred.borrow_and_update();
                if let Err(e) = writer.note_preferred(p).await {
                    break e;
                }
            }
        }
    };
    read_task.abort();
    why
}
