//! The LocalAPI: Tailscale's HTTP/1.1-over-unix-socket interface between the CLI and
//! the daemon (tailscale-surface.md §1.1). The server half runs on the daemon's
//! current-thread tokio runtime and answers from a [`Backend`]; the client half is a
//! small blocking client for the CLI.
//!
//! The endpoint set, JSON shapes, status codes, error texts and the permission model
//! follow Go's `ipn/localapi` and `ipn/ipnserver`, so Go's `tailscale` CLI can drive
//! this daemon and this CLI can drive Go's `tailscaled`.

// The server half is only reached from tests until the daemon serves its LocalBackend
// through it; the CLI uses the client half.
#[cfg_attr(not(test), allow(dead_code))]
pub mod access;
pub mod client;
#[cfg_attr(not(test), allow(dead_code))]
pub mod forwarding;
#[cfg_attr(not(test), allow(dead_code))]
pub mod http;
#[cfg_attr(not(test), allow(dead_code))]
pub mod server;

#[cfg(test)]
mod server_tests;

use ringscale_control::ipn::{Notify, Options, WhoIsResponse};
use ringscale_control::ipnstate::{PingResult, Status};
use ringscale_control::prefs::{MaskedPrefs, Prefs};
use ringscale_control::tailcfg::{Node, NodePublic};
use std::fmt;
use std::net::IpAddr;

/// Where the daemon listens and the CLI connects unless `--socket` says otherwise
/// (Go's `paths.DefaultTailscaledSocket` on Linux).
pub fn default_socket_path() -> &'static str {
    if std::path::Path::new("/var/run").is_dir() {
        "/var/run/tailscale/tailscaled.sock"
    } else {
        "tailscaled.sock"
    }
}

/// An operation the backend refused or failed; the message reaches the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendError(pub String);

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BackendError {}

impl From<String> for BackendError {
    fn from(s: String) -> Self {
        BackendError(s)
    }
}

impl From<&str> for BackendError {
    fn from(s: &str) -> Self {
        BackendError(s.to_string())
    }
}

/// `tailcfg.PingType`: how `tailscale ping` reaches the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PingType {
    /// Disco ping over the peer's path (direct or DERP), no IP layer.
    Disco,
    /// Through WireGuard, answered by the peer's tailscaled without its OS stack.
    Tsmp,
    /// ICMP echo through WireGuard, answered by the peer's OS.
    Icmp,
    /// An HTTP request to the peer's PeerAPI.
    PeerApi,
}

impl PingType {
    /// The wire names (`type=` query parameter).
    pub fn as_str(self) -> &'static str {
        match self {
            PingType::Disco => "disco",
            PingType::Tsmp => "TSMP",
            PingType::Icmp => "ICMP",
            PingType::PeerApi => "peerapi",
        }
    }

    pub fn parse(s: &str) -> Option<PingType> {
        [
            PingType::Disco,
            PingType::Tsmp,
            PingType::Icmp,
            PingType::PeerApi,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// What `whois` asks about: an address (port 0 if none was given) or a node key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WhoIsTarget {
    Addr { ip: IpAddr, port: u16 },
    NodeKey(NodePublic),
}

/// The daemon state the LocalAPI serves. Implemented by the daemon's LocalBackend (the
/// state machine joining control client, engine, prefs and state file).
///
/// Methods run on the daemon's single control thread (the server is driven inside a
/// `tokio::task::LocalSet`), so futures need not be `Send` and implementations may use
/// `RefCell`. Keep the synchronous methods quick: they run between socket reads.
///
/// Errors are shown to the user as they are, so they should read like Go's.
#[allow(async_fn_in_trait)] // single-threaded by design; no Send bound wanted
pub trait Backend {
    /// `ipnstate.Status` (`with_peers == false` for `status?peers=false`: no Peer map,
    /// but the self user's profile). See `ringscale_control::ipnstate::build_status`.
    fn status(&self, with_peers: bool) -> Status;

    /// The current prefs. The server strips private keys before they leave the socket.
    fn prefs(&self) -> Prefs;

    /// Our own node from the netmap, if any (for the IPN bus's initial netmap).
    fn self_node(&self) -> Option<Node>;

    /// `PATCH prefs`: apply the fields whose `<Field>Set` flag is true (Go's
    /// `EditPrefs`), persist, reconfigure, notify watchers of the new prefs, and return
    /// them. An error becomes HTTP 400 `{"Error": msg}`.
    async fn edit_prefs(&self, edit: MaskedPrefs) -> Result<Prefs, BackendError>;

    /// `check-prefs`: would these prefs be accepted? Nothing changes.
    fn check_prefs(&self, prefs: &Prefs) -> Result<(), BackendError>;

    /// `start`: take `opts.update_prefs` (keeping the stored login), remember the auth
    /// key, and (re)start the control client. Like Go, the backend must pass through
    /// a state change that watchers see (NoState → Starting/NeedsLogin/Running), since
    /// `tailscale up` waits for `State == Running` on the bus.
    async fn start(&self, opts: Options) -> Result<(), BackendError>;

    /// `login-interactive`: begin an interactive login; the URL arrives on the bus as
    /// `BrowseToURL` (and in `Status.AuthURL`).
    async fn login_interactive(&self) -> Result<(), BackendError>;

    /// `logout`: expire the node key at control, forget the login, stop.
    async fn logout(&self) -> Result<(), BackendError>;

    /// The IPN bus. Every state change, new prefs (keys stripped), login URL and self-node
    /// change is sent here. A watcher that falls behind is disconnected, as in Go.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Notify>;

    /// `ping`. `size` is only non-zero for disco pings. The server drops the future when
    /// the client goes away.
    async fn ping(
        &self,
        ip: IpAddr,
        kind: PingType,
        size: usize,
    ) -> Result<PingResult, BackendError>;

    /// `whois`: the node (and its user) owning an address or node key; `proto` is "",
    /// "tcp" or "udp". See `ringscale_control::ipn`'s WhoIsResponse.
    fn whois(&self, target: &WhoIsTarget, proto: &str) -> Option<WhoIsResponse>;

    /// `shutdown`: stop the daemon gracefully (after the response is sent).
    fn shutdown(&self);
}

/// Prefs as they may leave the daemon: no private keys (Go's `stripKeysFromPrefs`).
pub fn sanitized_prefs(mut p: Prefs) -> Prefs {
    if let Some(persist) = p.persist.as_mut() {
        persist.private_node_key = Default::default();
        persist.old_private_node_key = Default::default();
        persist.network_lock_key = Default::default();
        persist.attestation_key = None;
    }
    p
}
