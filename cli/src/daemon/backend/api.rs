//! The LocalAPI's view of the backend: status, prefs, login and logout, whois, ping.

use super::{control_loop, BackendState, LocalBackend};
use crate::localapi::{Backend, BackendError, PingType, WhoIsTarget};
use ringscale_control::ipn::{Notify, Options, WhoIsResponse};
use ringscale_control::ipnstate::{
    build_status, PeerEngineStatus, PingResult, Status, StatusSource,
};
use ringscale_control::prefs::{MaskedPrefs, Prefs};
use ringscale_control::tailcfg::{GoTime, Node, NodePublic};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

impl From<super::BackendError> for BackendError {
    fn from(e: super::BackendError) -> Self {
        BackendError(e.to_string())
    }
}

/// The LocalAPI runs on the control thread with the backend behind an Arc.
impl Backend for Arc<LocalBackend> {
    fn status(&self, with_peers: bool) -> Status {
        let inner = self.lock();
        // What the engine knows, by node key, gathered once.
        let table = self.engine.table();
        let now = SystemTime::now();
        let engine: HashMap<NodePublic, PeerEngineStatus> = table
            .peers()
            .iter()
            .map(|p| {
                let (since_handshake, tx, rx) = p.stats();
                let last_handshake = since_handshake
                    .and_then(|d| now.checked_sub(d))
                    .map(GoTime::from_system_time)
                    .unwrap_or(GoTime::ZERO);
                let st = PeerEngineStatus {
                    rx_bytes: rx as i64,
                    tx_bytes: tx as i64,
                    last_handshake,
                    cur_addr: p.endpoint().map(|e| e.to_string()).unwrap_or_default(),
                    active: since_handshake.is_some_and(|d| d < Duration::from_secs(120)),
                    ..Default::default()
                };
                (NodePublic(p.key), st)
            })
            .collect();
        let hostname = super::hostinfo::hostinfo(&inner.prefs).hostname;
        let src = StatusSource {
            version: crate::VERSION,
            tun: true,
            state: inner.state,
            auth_url: &inner.auth_url,
            // The control session's error, and the host's as of the last state the
            // reconciler applied.
            health: (!inner.last_error.is_empty())
                .then(|| inner.last_error.clone())
                .into_iter()
                .chain(self.reconciler.status().errors)
                .collect(),
            have_node_key: inner.prefs.node_private_key().is_some(),
            in_poll_netmap: inner.state == BackendState::Running,
            os: "linux",
            os_hostname: &hostname,
            want_peers: with_peers,
        };
        // An exit node chosen by IP is reported by its stable ID, as Go's backend does
        // once it has resolved ExitNodeIP against the netmap (ExitNodeStatus, and
        // Peer.ExitNode, are keyed on the ID).
        let mut prefs = std::borrow::Cow::Borrowed(&inner.prefs);
        if prefs.exit_node_id.is_empty() {
            if let Some(exit) = inner
                .netmap
                .as_deref()
                .and_then(|nm| ringscale_control::netmap::selected_exit_node(nm, &inner.prefs))
            {
                prefs.to_mut().exit_node_id = exit.stable_id.clone();
            }
        }
        build_status(&src, &prefs, inner.netmap.as_deref(), &|k| {
            engine.get(k).cloned()
        })
    }

    fn prefs(&self) -> Prefs {
        self.lock().prefs.clone()
    }

    fn self_node(&self) -> Option<Node> {
        self.lock()
            .netmap
            .as_ref()
            .and_then(|n| n.self_node.clone())
    }

    async fn edit_prefs(&self, edit: MaskedPrefs) -> Result<Prefs, BackendError> {
        check_exit_node(self, &edit.prefs)?;
        Ok(LocalBackend::edit_prefs(self, &edit)?)
    }

    fn check_prefs(&self, prefs: &Prefs) -> Result<(), BackendError> {
        check_exit_node(self, prefs)?;
        if prefs.run_ssh {
            return Err(BackendError(
                "Tailscale SSH is not supported by ringscale".into(),
            ));
        }
        Ok(())
    }

    async fn start(&self, opts: Options) -> Result<(), BackendError> {
        if let Some(mut prefs) = opts.update_prefs {
            let mut inner = self.lock();
            // The stored login survives a start, as in Go.
            prefs.persist = inner.prefs.persist.clone();
            let before = inner.prefs.clone();
            inner.prefs = prefs;
            self.save(&mut inner)?;
            self.after_prefs_change(&mut inner, &before);
            let p = crate::localapi::sanitized_prefs(inner.prefs.clone());
            self.publish(Notify {
                prefs: Some(p),
                ..Notify::default()
            });
        }
        let key = (!opts.auth_key.is_empty()).then_some(opts.auth_key);
        let mut inner = self.lock();
        if key.is_some() {
            inner.auth_key = key;
            inner.need_register = true;
            inner.login_requested = true;
        }
        // Watchers must see a state: `up` waits on the bus.
        let state = inner.state;
        self.publish(Notify::state(state));
        if inner.prefs.want_running {
            self.restart_control(&mut inner);
        }
        Ok(())
    }

    async fn login_interactive(&self) -> Result<(), BackendError> {
        let mut inner = self.lock();
        inner.prefs.want_running = true;
        if inner.need_register && inner.login_requested && inner.auth_key.is_some() {
            // `up --auth-key` asks for this too; the key's login is already under way.
            return Ok(());
        }
        inner.need_register = true;
        inner.login_requested = true;
        inner.auth_url.clear();
        self.set_state(&mut inner, BackendState::NeedsLogin);
        self.restart_control(&mut inner);
        Ok(())
    }

    async fn logout(&self) -> Result<(), BackendError> {
        control_loop::logout(self).await.map_err(BackendError)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Notify> {
        self.bus.subscribe()
    }

    async fn ping(
        &self,
        ip: IpAddr,
        kind: PingType,
        _size: usize,
    ) -> Result<PingResult, BackendError> {
        let (node, known) = {
            let inner = self.lock();
            let node = inner
                .netmap
                .as_ref()
                .and_then(|n| n.peer_by_tailscale_ip(ip).cloned());
            (node, inner.netmap.is_some())
        };
        let Some(node) = node else {
            let msg = if known {
                "no matching peer"
            } else {
                "no netmap"
            };
            return Err(BackendError(msg.to_string()));
        };
        match kind {
            PingType::Icmp => {}
            other => {
                return Err(BackendError(format!(
                    "{} pings are not supported yet; use --icmp",
                    other.as_str()
                )))
            }
        }
        let rtt = tokio::task::spawn_blocking(move || icmp_echo(ip, Duration::from_secs(5)))
            .await
            .map_err(|e| BackendError(e.to_string()))?
            .map_err(|e| BackendError(format!("ping {ip}: {e}")))?;
        Ok(PingResult {
            ip: ip.to_string(),
            node_ip: ip.to_string(),
            node_name: node.name.trim_end_matches('.').to_string(),
            latency_seconds: rtt.as_secs_f64(),
            endpoint: self
                .engine
                .table()
                .peers()
                .iter()
                .find(|p| p.key == node.key.0)
                .and_then(|p| p.endpoint())
                .map(|e| e.to_string())
                .unwrap_or_default(),
            ..Default::default()
        })
    }

    fn whois(&self, target: &WhoIsTarget, _proto: &str) -> Option<WhoIsResponse> {
        let inner = self.lock();
        let nm = inner.netmap.as_ref()?;
        let node = match target {
            WhoIsTarget::Addr { ip, .. } => nm.peer_by_tailscale_ip(*ip).or_else(|| {
                nm.self_node
                    .as_ref()
                    .filter(|n| n.addresses.iter().any(|a| a.addr() == *ip))
            })?,
            WhoIsTarget::NodeKey(k) => nm
                .peer_by_key(k)
                .or_else(|| nm.self_node.as_ref().filter(|n| n.key == *k))?,
        };
        let user_profile = nm
            .user_profiles
            .get(&node.user)
            .cloned()
            .unwrap_or_default();
        Some(WhoIsResponse {
            node: node.clone(),
            user_profile,
            ..Default::default()
        })
    }

    fn shutdown(&self) {
        log::info!("shutdown requested over the LocalAPI");
        // The main thread waits for SIGTERM and shuts down in order.
        let _ = ringscale_sys::process::kill(std::process::id() as i32, libc::SIGTERM);
    }
}

/// An exit node given by IP must be a peer that offers to be one, as Go checks.
fn check_exit_node(b: &LocalBackend, prefs: &Prefs) -> Result<(), BackendError> {
    let Some(ip) = prefs.exit_node_ip else {
        return Ok(());
    };
    let inner = b.lock();
    let Some(nm) = inner.netmap.as_ref() else {
        return Ok(());
    };
    if nm
        .self_node
        .as_ref()
        .is_some_and(|n| n.addresses.iter().any(|a| a.addr() == ip))
    {
        return Err(BackendError("cannot use self as an exit node".into()));
    }
    Ok(())
}

/// One ICMP echo through the tunnel; returns the round-trip time. Uses a ping socket
/// where `net.ipv4.ping_group_range` allows it, else a raw socket (the daemon is root).
fn icmp_echo(ip: IpAddr, timeout: Duration) -> std::io::Result<Duration> {
    let (family, proto, echo_type, reply_type) = match ip {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8, 129u8),
    };
    let open = |kind| ringscale_sys::socket(family, kind, proto).map(std::net::UdpSocket::from);
    let (sock, raw) = match open(libc::SOCK_DGRAM) {
        Ok(s) => (s, false),
        Err(_) => (open(libc::SOCK_RAW)?, true),
    };
    sock.set_read_timeout(Some(timeout))?;
    let ident = (std::process::id() & 0xffff) as u16;
    let payload = *b"ringscale-ping!!";
    let mut msg = vec![echo_type, 0, 0, 0];
    msg.extend_from_slice(&ident.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend_from_slice(&payload);
    if raw && ip.is_ipv4() {
        // Raw ICMPv4 needs our checksum; ping sockets and ICMPv6 get the kernel's.
        let sum = internet_checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    let start = Instant::now();
    sock.send_to(&msg, (ip, 0))?;
    let mut buf = [0u8; 1500];
    while start.elapsed() < timeout {
        let n = sock.recv(&mut buf)?;
        // Raw IPv4 sockets deliver the IP header too.
        let icmp = if raw && ip.is_ipv4() {
            let ihl = usize::from(buf.first().copied().unwrap_or(0) & 0x0f) * 4;
            buf.get(ihl..n).unwrap_or(&[])
        } else {
            &buf[..n]
        };
        if icmp.len() >= 8 + payload.len()
            && icmp[0] == reply_type
            && icmp[8..8 + payload.len()] == payload
        {
            return Ok(start.elapsed());
        }
    }
    Err(std::io::ErrorKind::TimedOut.into())
}

fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
