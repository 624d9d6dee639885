//! The project's own test control server: a coordination server speaking Tailscale's
//! real ts2021 protocol from the server side (protocol.md §2–§5), for the end-to-end
//! tests and the benchmark. It is not part of the shipped `ringscale` binary; tests start
//! it in-process with [`ControlServer::start`], scripts run the `testcontrol` binary.
//!
//! # What it does
//!
//! - `GET /key`, the `/ts2021` upgrade, the Noise handshake and HTTP/2 inside it come from
//!   `ringscale_control::ts2021::server`; this module answers the requests.
//! - **Registration** (`/machine/register`): pre-auth keys (reusable or single-use,
//!   optionally ephemeral); interactive login (a register without auth gets
//!   `AuthURL: <server>/register/<id>`; the follow-up request long-polls until that URL
//!   is visited with a plain HTTP GET, or answers the same URL again after
//!   [`Options::followup_timeout`]); logout (an `Expiry` in the past expires the node, or
//!   removes it if ephemeral, and answers `NodeKeyExpired`); `NodeKeyExpired` for an
//!   expired key; key rotation via `OldNodeKey`. Node keys are bound to the machine key
//!   proven by the Noise handshake.
//! - **Addresses**: one IPv4 from 100.64.0.0/10 and one IPv6 from fd7a:115c:a1e0::/48
//!   per node, allocated in order, and stable per node key (and per machine key) across
//!   re-registration and even removal.
//! - **Map** (`/machine/map`): `Stream: true` gets the full map first (self node, peers,
//!   DNSConfig, DERPMap, PacketFilter, Domain, UserProfiles, ControlTime), then deltas as
//!   nodes join (`PeersChanged`), leave (`PeersRemoved`) or change (`PeersChangedPatch`
//!   for endpoints, disco key, online state…; whole nodes otherwise), and keep-alives
//!   every [`Options::keepalive`] if asked. Each message is a little-endian u32 length
//!   then the JSON, inside a zstd frame when the client sent `Compress: "zstd"` (Go's
//!   client always does and always decodes zstd; see [`zstd`]). `Stream: false,
//!   OmitPeers: true` is a lite update (endpoints, Hostinfo, disco key; empty answer);
//!   `Stream: false` without OmitPeers gets one full map. Hostinfo is replaced
//!   wholesale, as Headscale does. A node is online while it has a map stream open.
//! - **Routes**: advertised routes (`Hostinfo.RoutableIPs`) become effective once
//!   approved — automatically with [`Options::auto_approve_routes`] /
//!   [`Options::auto_approve_exit_nodes`], or by the admin API. Effective routes appear in
//!   the node's `AllowedIPs` (subnet routes where the node is primary, exit routes
//!   always) and subnet routes in `PrimaryRoutes` (one primary per route: online nodes
//!   first, then the lowest ID), as protocol.md §4.6 describes.
//! - **Settings**: DNSConfig (default: MagicDNS on, the domain as search domain), DERPMap
//!   (default: no regions), packet filter (default: allow all, Tailscale's default ACL
//!   as a FilterRule), all replaceable at runtime and pushed to every node as a delta.
//!   Every node sees every other node (no ACL-based peer visibility).
//! - **Robustness**: garbage handshakes, bad JSON, oversized bodies (> 1 MiB), stalled
//!   bodies and streams, and disconnects mid-stream end only that request or
//!   connection, with a log line saying why.
//!
//! # Admin API
//!
//! Plain HTTP/1.1 on the same listener, JSON in and out (errors are
//! `{"error": "..."}` with status 400/404). `<node>` is a numeric node ID, a
//! `nodekey:…`, the stable ID, or the node's name (short, or FQDN).
//!
//! | Method and path | Body | Does |
//! |---|---|---|
//! | `GET /register/<id>` | | "visits" an AuthURL: approves that interactive login |
//! | `POST /test/authkeys` | `{"reusable":bool,"ephemeral":bool,"key":"optional"}` | creates a pre-auth key; answers `{"key":…,"reusable":…,"ephemeral":…}` |
//! | `GET /test/authkeys` | | lists pre-auth keys |
//! | `GET /test/nodes` | | lists nodes: `id`, `name`, `hostname`, `node_key`, `machine_key`, `disco_key`, `addresses`, `endpoints`, `online`, `expired`, `key_expiry`, `ephemeral`, `advertised_routes`, `approved_routes`, `primary_routes`, `allowed_ips`, `cap` |
//! | `GET /test/nodes/<node>` | | one node |
//! | `POST /test/nodes/<node>/remove` (or `DELETE /test/nodes/<node>`) | | removes the node; peers get `PeersRemoved`, its own stream ends |
//! | `POST /test/nodes/<node>/expire` | `{}` (now), `{"at":"RFC 3339"}` or `{"in_seconds":N}` | sets the key expiry; an expired key gets `NodeKeyExpired` on register and `Expired` in peers' maps |
//! | `POST /test/nodes/<node>/routes` | `{"routes":["10.1.0.0/24","0.0.0.0/0","::/0"]}` | replaces the node's approved routes |
//! | `GET /test/pending` | | lists pending interactive logins (`id`, `auth_url`, `hostname`, `node_key`) |
//! | `GET`/`POST /test/packet-filter` | JSON array of FilterRule | reads / replaces the packet filter |
//! | `POST /test/dns-config` | DNSConfig JSON | replaces the DNS configuration |
//! | `POST /test/derp-map` | DERPMap JSON | replaces the DERP map |
//!
//! # The `testcontrol` binary
//!
//! ```text
//! testcontrol --listen ADDR:PORT [--auth-key KEY]... [--ephemeral-auth-key KEY]...
//!             [--auto-approve] [--auto-approve-routes] [--auto-approve-exit-nodes]
//!             [--keepalive SECS] [--followup-timeout SECS] [--ephemeral-idle SECS]
//!             [--dns-config FILE] [--derp-map FILE] [--packet-filter FILE]
//!             [--domain NAME] [--server-url URL] [--key-file FILE] [-v]
//! ```
//! `--auth-key` keys are reusable. When the server is ready it prints one line on
//! stdout: `testcontrol ready url=http://ADDR:PORT key=mkey:<hex>`; logs go to stderr.

pub mod admin;
pub mod handler;
pub mod session;
pub mod tailnet;
pub mod zstd;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ringscale_control::tailcfg::{DerpMap, DnsConfig, FilterRule, GoTime, IpPrefix, NodeId};
use ringscale_control::ts2021::{format_key, ServerConfig};
use tokio::sync::oneshot;

pub use handler::{Shared, Timing};
pub use tailnet::{AuthKey, NodeInfo, PendingInfo, Tailnet, TailnetSettings};

/// How to run the server.
#[derive(Clone, Debug)]
pub struct Options {
    /// Address to listen on; port 0 picks a free port (see [`ControlServer::addr`]).
    pub listen: SocketAddr,
    /// Base URL for AuthURLs; default `http://<listen address>`.
    pub server_url: Option<String>,
    /// The server's Noise private key; default a fresh one.
    pub private_key: Option<ringscale_keys::PrivateKey>,
    /// Pre-auth keys created at start: `(key, reusable, ephemeral)`.
    pub auth_keys: Vec<(String, bool, bool)>,
    pub auto_approve_routes: bool,
    pub auto_approve_exit_nodes: bool,
    /// Keep-alive interval on map streams (Headscale: 50 s).
    pub keepalive: Duration,
    /// How long a follow-up register waits for its login to be visited.
    pub followup_timeout: Duration,
    /// How long an ephemeral node may stay offline before it is removed.
    pub ephemeral_idle: Duration,
    /// Tailnet name (MagicDNS suffix).
    pub domain: String,
    /// None = MagicDNS on with the domain as search domain.
    pub dns_config: Option<DnsConfig>,
    /// None = no DERP regions.
    pub derp_map: Option<DerpMap>,
    /// None = allow all.
    pub packet_filter: Option<Vec<FilterRule>>,
    /// For [`ControlServer::start`]: run (and listen) inside this network namespace
    /// (e.g. `/run/netns/NAME`).
    pub netns: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            server_url: None,
            private_key: None,
            auth_keys: Vec::new(),
            auto_approve_routes: false,
            auto_approve_exit_nodes: false,
            keepalive: Duration::from_secs(50),
            followup_timeout: Duration::from_secs(60),
            ephemeral_idle: Duration::from_secs(120),
            domain: "tailnet.test".into(),
            dns_config: None,
            derp_map: None,
            packet_filter: None,
            netns: None,
        }
    }
}

/// A bound, ready server that has not started accepting yet.
pub struct Prepared {
    pub listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
    pub url: String,
    pub config: Arc<ServerConfig>,
    pub shared: Arc<Shared>,
}

impl Prepared {
    /// Builds the tailnet from `options` around an already bound listener.
    pub fn new(options: &Options, listener: tokio::net::TcpListener) -> io::Result<Prepared> {
        let addr = listener.local_addr()?;
        let url = options
            .server_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let mut tailnet = Tailnet::new(TailnetSettings {
            domain: options.domain.clone(),
            auth_url_base: url.clone(),
            auto_approve_routes: options.auto_approve_routes,
            auto_approve_exit_nodes: options.auto_approve_exit_nodes,
        });
        for (key, reusable, ephemeral) in &options.auth_keys {
            tailnet
                .create_auth_key(Some(key.clone()), *reusable, *ephemeral)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        }
        if let Some(dns) = &options.dns_config {
            tailnet.set_dns_config(dns.clone());
        }
        if let Some(derp) = &options.derp_map {
            tailnet.set_derp_map(derp.clone());
        }
        if let Some(filter) = &options.packet_filter {
            tailnet.set_packet_filter(filter.clone());
        }
        let private_key = options
            .private_key
            .clone()
            .unwrap_or_else(ringscale_control::noise::generate_private_key);
        let mut config = ServerConfig::new(private_key);
        // The early payload as Headscale and Tailscale's servers send it.
        config.send_early_payload = true;
        let timing = Timing {
            keepalive: options.keepalive,
            followup_timeout: options.followup_timeout,
            ephemeral_idle: options.ephemeral_idle,
        };
        Ok(Prepared {
            listener,
            addr,
            url,
            config: Arc::new(config),
            shared: Arc::new(Shared::new(tailnet, timing)),
        })
    }

    /// `mkey:<hex>` of the server's Noise key, as `GET /key` serves it.
    pub fn server_key(&self) -> String {
        format_key("mkey:", &self.config.public_key())
    }

    /// Serves until the process ends (or the future is dropped).
    pub async fn serve(self) -> io::Result<()> {
        let handler = Arc::new(handler::ControlHandler {
            shared: self.shared.clone(),
        });
        ringscale_control::ts2021::serve(self.listener, self.config, handler).await
    }
}

/// A server running on its own thread (with its own tokio runtime), stopped on drop.
/// The methods are the admin API as direct calls.
pub struct ControlServer {
    addr: SocketAddr,
    url: String,
    server_key: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlServer {
    /// Binds (inside `options.netns` if set) and starts serving.
    pub fn start(options: Options) -> io::Result<ControlServer> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("testcontrol".into())
            .spawn(move || {
                if let Some(ns) = &options.netns {
                    crate::testbed::enter_netns(ns);
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let prepared = match tokio::net::TcpListener::bind(options.listen)
                        .await
                        .and_then(|l| Prepared::new(&options, l))
                    {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok((
                        prepared.addr,
                        prepared.url.clone(),
                        prepared.server_key(),
                        prepared.shared.clone(),
                    )));
                    tokio::select! {
                        result = prepared.serve() => {
                            if let Err(e) = result {
                                log::error!("test control server stopped: {e}");
                            }
                        }
                        _ = stop_rx => {}
                    }
                });
            })?;
        let (addr, url, server_key, shared) = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the control server thread died while starting"))??;
        log::info!("test control server listening on {url}");
        Ok(ControlServer {
            addr,
            url,
            server_key,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The control URL for clients, `http://ADDR:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `mkey:<hex>` of the server's Noise key.
    pub fn server_key(&self) -> &str {
        &self.server_key
    }

    /// The shared state, for anything the methods below do not cover.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Creates a random pre-auth key.
    pub fn create_auth_key(&self, reusable: bool, ephemeral: bool) -> String {
        self.shared
            .update(|t| t.create_auth_key(None, reusable, ephemeral))
            .expect("a generated key is valid")
            .key
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.shared.read(|t| t.nodes(GoTime::now()))
    }

    /// The node named `selector` (ID, node key, or name), if registered.
    pub fn node(&self, selector: &str) -> Option<NodeInfo> {
        self.shared.read(|t| {
            let id = t.find_node(selector).ok()?;
            t.nodes(GoTime::now()).into_iter().find(|n| n.id == id)
        })
    }

    pub fn pending_logins(&self) -> Vec<PendingInfo> {
        self.shared.read(|t| t.pending_logins())
    }

    /// Approves an interactive login, as visiting its AuthURL does.
    pub fn approve_login(&self, id: &str) -> Result<NodeId, tailnet::AdminError> {
        self.shared.update(|t| t.approve_login(id, GoTime::now()))
    }

    pub fn remove_node(&self, selector: &str) -> Result<(), tailnet::AdminError> {
        self.shared.update(|t| {
            let id = t.find_node(selector)?;
            t.remove_node(id)
        })
    }

    /// Sets the node's key expiry; `GoTime::now()` expires it at once.
    pub fn expire_node(&self, selector: &str, at: GoTime) -> Result<(), tailnet::AdminError> {
        self.shared.update(|t| {
            let id = t.find_node(selector)?;
            t.set_key_expiry(id, at)
        })
    }

    pub fn approve_routes(
        &self,
        selector: &str,
        routes: &[IpPrefix],
    ) -> Result<(), tailnet::AdminError> {
        self.shared.update(|t| {
            let id = t.find_node(selector)?;
            t.set_approved_routes(id, routes)
        })
    }

    /// Replaces the node's capabilities (sent in its self node, and to its peers).
    pub fn set_node_capabilities(
        &self,
        selector: &str,
        caps: &[&str],
    ) -> Result<(), tailnet::AdminError> {
        self.shared.update(|t| {
            let id = t.find_node(selector)?;
            t.set_capabilities(id, caps)
        })
    }

    pub fn set_packet_filter(&self, rules: Vec<FilterRule>) {
        self.shared.update(|t| t.set_packet_filter(rules));
    }

    pub fn set_dns_config(&self, dns: DnsConfig) {
        self.shared.update(|t| t.set_dns_config(dns));
    }

    pub fn set_derp_map(&self, derp: DerpMap) {
        self.shared.update(|t| t.set_derp_map(derp));
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A minimal logger to stderr (`LEVEL target: message`), for the binary and for tests
/// that want to see the server's log (`RINGSCALE_TEST_LOG=debug`). Installing it twice
/// is harmless.
pub fn init_stderr_logger(level: log::LevelFilter) {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                eprintln!(
                    "{:5} {}: {}",
                    record.level(),
                    record.target(),
                    record.args()
                );
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Where the `testcontrol` binary is for scripts and the benchmark: `$TESTCONTROL_BIN`,
/// else next to the workspace's other binaries (`target/<profile>/testcontrol`, built by
/// `cargo build -p ringscale-tests --bin testcontrol`). Integration tests of this crate
/// can use `env!("CARGO_BIN_EXE_testcontrol")` instead.
pub fn testcontrol_bin_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TESTCONTROL_BIN") {
        return PathBuf::from(p);
    }
    crate::testbed::ringscale_bin_path().with_file_name("testcontrol")
}
