//! The control task: connect, register when needed, long-poll the map, apply it, and
//! start over with backoff when anything breaks. A broken or hostile control server
//! costs a log line and a reconnect: the engine keeps the last good configuration
//! until a new session has delivered a complete netmap.

use super::{hostinfo, BackendState, LocalBackend};
use ringscale_control::client::{self, ClientError, MapSession};
use ringscale_control::ipn::Notify;
use ringscale_control::netmap::NetMap;
use ringscale_control::tailcfg::{
    GoTime, MapRequest, MapResponse, NodePublic, PrivateKey, RegisterRequest, RegisterResponseAuth,
    UserProfile, CAPABILITY_VERSION,
};
use ringscale_control::ts2021::{self, ControlConnection};
use std::sync::Arc;
use std::time::Duration;

/// Where a session ended.
enum Ended {
    /// Prefs or login changed: start over at once.
    Restart,
    /// Nothing to do until prefs change (logged out, stopped, no control URL).
    Idle,
}

/// Exponential backoff with jitter, as Go's control client reconnects (up to 30 s).
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: Duration::from_millis(500),
        }
    }
    fn reset(&mut self) {
        *self = Backoff::new();
    }
    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(30));
        let mut b = [0u8; 2];
        ringscale_sys::random::fill(&mut b);
        // Jitter of up to half the delay spreads reconnecting nodes apart.
        let jitter = base.as_millis() as u64 * u16::from_le_bytes(b) as u64 / 65535 / 2;
        base + Duration::from_millis(jitter)
    }
}

pub async fn run(b: Arc<LocalBackend>) {
    let paths = b.clone();
    tokio::spawn(async move { paths.paths.run(&paths.engine).await });
    let mut backoff = Backoff::new();
    loop {
        // A session that delivered a netmap was healthy: whatever broke it afterwards
        // starts the backoff over, as Go's map routine does, instead of growing the
        // delay across days of occasional stream breaks.
        let mut got_netmap = false;
        match session(&b, &mut got_netmap).await {
            Ok(Ended::Restart) => backoff.reset(),
            Ok(Ended::Idle) => {
                backoff.reset();
                b.wake.notified().await;
            }
            Err(e) => {
                if got_netmap {
                    backoff.reset();
                }
                let delay = match &e {
                    ClientError::RateLimited(d) => *d,
                    _ => backoff.step(),
                };
                log::warn!("control: {e}; retrying in {delay:.1?}");
                {
                    let mut inner = b.lock();
                    inner.last_error = e.to_string();
                }
                b.publish(Notify {
                    err_message: Some(e.to_string()),
                    ..Notify::default()
                });
                // A prefs change during the wait retries at once.
                let _ = tokio::time::timeout(delay, b.wake.notified()).await;
            }
        }
    }
}

struct Plan {
    url: String,
    machine_key: PrivateKey,
    generation: u64,
    need_register: bool,
}

fn plan(b: &LocalBackend) -> Option<Plan> {
    let inner = b.lock();
    let p = &inner.prefs;
    // Without a control URL the default (Tailscale's server) would be used, as Go does;
    // a node with neither login nor a pending `up` has nothing to do.
    // Without a registered key, wait until a login is asked for; with one, run when
    // the prefs say so.
    if inner.need_register {
        if !inner.login_requested {
            return None;
        }
    } else if !p.want_running {
        return None;
    }
    Some(Plan {
        url: p.control_url_or_default().to_string(),
        machine_key: inner.machine_key.clone(),
        generation: inner.generation,
        need_register: inner.need_register,
    })
}

fn stale(b: &LocalBackend, generation: u64) -> bool {
    b.lock().generation != generation
}

async fn session(b: &Arc<LocalBackend>, got_netmap: &mut bool) -> Result<Ended, ClientError> {
    let Some(plan) = plan(b) else {
        return Ok(Ended::Idle);
    };
    log::debug!("control: connecting to {}", plan.url);
    let conn = ts2021::connect(&plan.url, &plan.machine_key.0, None).await?;
    if plan.need_register {
        if let Some(ended) = register(b, &conn, plan.generation).await? {
            return Ok(ended);
        }
    }
    if stale(b, plan.generation) {
        return Ok(Ended::Restart);
    }
    poll(b, &conn, plan.generation, got_netmap).await
}

/// The node public key of `k`, or the zero key for "no key" (Go sends zeros).
fn public_or_zero(k: &PrivateKey) -> NodePublic {
    if k.is_zero() {
        NodePublic::ZERO
    } else {
        k.node_public()
    }
}

/// Registration (protocol.md §3.3): auth key or interactive login with follow-up,
/// node-key rotation when control says the key expired. `Some(_)` when the session
/// should end instead of going on to the map poll.
async fn register(
    b: &Arc<LocalBackend>,
    conn: &ControlConnection,
    generation: u64,
) -> Result<Option<Ended>, ClientError> {
    let (mut node_key, mut old_key, auth_key, prefs, ephemeral) = {
        let inner = b.lock();
        let current = inner.prefs.node_private_key();
        let old = inner
            .prefs
            .persist
            .as_ref()
            .map(|p| p.old_private_node_key.clone())
            .unwrap_or_default();
        (
            current.unwrap_or_else(PrivateKey::generate),
            old,
            inner.auth_key.clone(),
            inner.prefs.clone(),
            inner.ephemeral,
        )
    };
    let mut req = RegisterRequest {
        version: CAPABILITY_VERSION,
        node_key: node_key.node_public(),
        old_node_key: public_or_zero(&old_key),
        auth: auth_key.map(|k| RegisterResponseAuth {
            auth_key: k,
            ..Default::default()
        }),
        expiry: GoTime::ZERO,
        followup: String::new(),
        hostinfo: Some(hostinfo::hostinfo(&prefs)),
        ephemeral,
        ..Default::default()
    };
    let mut rotations = 0;
    loop {
        let resp = client::register(conn, &req).await?;
        if stale(b, generation) {
            return Ok(Some(Ended::Restart));
        }
        if resp.node_key_expired {
            rotations += 1;
            if rotations > 2 {
                return Err(ClientError::Refused(
                    "control keeps reporting the node key as expired".into(),
                ));
            }
            log::info!("control: node key expired; rotating");
            old_key = node_key;
            node_key = PrivateKey::generate();
            req.node_key = node_key.node_public();
            req.old_node_key = old_key.node_public();
            continue;
        }
        if !resp.auth_url.is_empty() {
            let url = resp.auth_url.clone();
            {
                let mut inner = b.lock();
                if inner.auth_url != url {
                    log::info!("control: to authenticate, visit: {url}");
                    inner.auth_url = url.clone();
                    b.publish(Notify::browse_to(&url));
                }
                b.set_state(&mut inner, BackendState::NeedsLogin);
            }
            // The follow-up long-polls until the user completes the login.
            req.followup = url;
            req.auth = None;
            continue;
        }
        let user = UserProfile {
            id: resp.user.id,
            login_name: resp.login.login_name.clone(),
            display_name: resp.user.display_name.clone(),
            ..Default::default()
        };
        log::info!("control: registered as {}", node_key.node_public());
        if let Err(e) = b.commit_login(node_key, old_key, user) {
            log::error!("saving the login: {e}");
        }
        if stale(b, generation) {
            // commit_login does not bump the generation; a change made meanwhile does.
            return Ok(Some(Ended::Restart));
        }
        return Ok(None);
    }
}

fn map_request(b: &LocalBackend, stream: bool) -> Option<MapRequest> {
    let mut inner = b.lock();
    let node_key = inner.prefs.node_private_key()?;
    // This request carries the current Hostinfo.
    inner.hostinfo_dirty = false;
    // Paths knows STUN-mapped endpoints and our home DERP region; before its first
    // report, the local interface addresses are all we have.
    let report = b.paths.report();
    let (endpoints, endpoint_types) = if report.endpoints.is_empty() {
        let local = hostinfo::local_endpoints(b.engine.port(), b.engine.tun_name());
        let types = vec![ringscale_magicsock::driver::ENDPOINT_LOCAL; local.len()];
        (local, types)
    } else {
        report.endpoints.iter().copied().unzip()
    };
    let mut hostinfo = hostinfo::hostinfo(&inner.prefs);
    hostinfo.net_info = report.net_info();
    Some(MapRequest {
        version: CAPABILITY_VERSION,
        keep_alive: stream,
        node_key: node_key.node_public(),
        disco_key: b.paths.disco_key(),
        stream,
        hostinfo: Some(hostinfo),
        endpoints,
        endpoint_types,
        ..Default::default()
    })
}

/// The map long-poll of one session.
async fn poll(
    b: &Arc<LocalBackend>,
    conn: &ControlConnection,
    generation: u64,
    got_netmap: &mut bool,
) -> Result<Ended, ClientError> {
    let Some(req) = map_request(b, true) else {
        return Ok(Ended::Idle);
    };
    let mut session = match MapSession::start(conn, &req).await {
        Ok(s) => s,
        Err(ClientError::Status(401 | 403, text)) => {
            // Control no longer knows this key: log in again.
            log::warn!(
                "control rejected our node key ({}); need to log in again",
                text.trim()
            );
            let mut inner = b.lock();
            inner.need_register = true;
            // An auth key we still hold (from --config or `up`) logs in again at once.
            inner.login_requested = inner.auth_key.is_some();
            b.set_state(&mut inner, BackendState::NeedsLogin);
            return Ok(Ended::Idle);
        }
        Err(e) => return Err(e),
    };
    // Shared with `Inner::netmap` (and through it with DNS and the LocalAPI) once a
    // full message was applied: one copy of the netmap, not one per holder. A message
    // copies it only while others still hold the previous version.
    let mut netmap = Arc::new(NetMap::new());
    let mut keep_alive_time = None;
    loop {
        let msg = tokio::select! {
            m = session.next() => m?,
            _ = b.wake.notified() => {
                if stale(b, generation) {
                    return Ok(Ended::Restart);
                }
                // Prefs that only change how the netmap is used (routes, exit node),
                // and Hostinfo changes control must hear about.
                let dirty = {
                    let mut inner = b.lock();
                    b.reconfigure_engine(&mut inner);
                    std::mem::take(&mut inner.hostinfo_dirty)
                };
                if dirty {
                    if let Some(req) = map_request(b, false) {
                        client::lite_update(conn, &req).await?;
                    }
                }
                continue;
            }
            _ = b.paths.changed() => {
                // New endpoints or home DERP region: tell control (a lite update).
                if let Some(req) = map_request(b, false) {
                    client::lite_update(conn, &req).await?;
                }
                continue;
            }
        };
        let Some(msg) = msg else {
            return Err(ClientError::Framing("control ended the map stream".into()));
        };
        // A logout or new login while the message was in flight: it belongs to a
        // session that no longer counts.
        if stale(b, generation) {
            return Ok(Ended::Restart);
        }
        let keep_alive = msg.keep_alive;
        apply(b, &mut netmap, &mut keep_alive_time, msg)?;
        *got_netmap |= !keep_alive;
    }
}

/// Applies one message of the session to its netmap. A keep-alive carries nothing but
/// `ControlTime`, which only matters to the next message's expiry check: it waits in
/// `keep_alive_time` (with the local time it arrived at) instead of copying a netmap
/// that others share.
fn apply(
    b: &LocalBackend,
    netmap: &mut Arc<NetMap>,
    keep_alive_time: &mut Option<(MapResponse, GoTime)>,
    mut msg: MapResponse,
) -> Result<(), ClientError> {
    // Actions, not state: taken out before the netmap sees the message.
    let _ping = msg.ping_request.take();
    if msg.keep_alive {
        if msg.control_time.is_some() {
            let now = GoTime::now();
            match Arc::get_mut(netmap) {
                Some(nm) => {
                    // A keep-alive cannot fail to apply.
                    let _ = nm.apply(msg, now);
                }
                None => *keep_alive_time = Some((msg, now)),
            }
        }
        return Ok(());
    }
    let nm = Arc::make_mut(netmap);
    if let Some((ka, at)) = keep_alive_time.take() {
        let _ = nm.apply(ka, at);
    }
    let update = nm
        .apply(msg, GoTime::now())
        .map_err(|e| ClientError::BadJson(e.to_string()))?;
    let shared = Arc::clone(netmap);
    let netmap: &NetMap = &shared;
    let mut inner = b.lock();
    let authorized = netmap
        .self_node
        .as_ref()
        .is_some_and(|n| n.machine_authorized);
    let state = if authorized {
        BackendState::Running
    } else {
        BackendState::NeedsMachineAuth
    };
    if inner.prefs.want_running {
        b.set_state(&mut inner, state);
    }
    if let Some(node) = &netmap.self_node {
        if inner.profile.node_id != node.stable_id {
            inner.profile.node_id = node.stable_id.clone();
            if let Some(p) = inner.prefs.persist.as_mut() {
                p.node_id = node.stable_id.clone();
            }
            if let Err(e) = b.save(&mut inner) {
                log::error!("saving the node ID: {e}");
            }
        }
    }
    inner.netmap = Some(Arc::clone(&shared));
    b.reconfigure_engine(&mut inner);
    if let Some(key) = inner.prefs.node_private_key() {
        let endpoints = hostinfo::local_endpoints(b.engine.port(), b.engine.tun_name());
        b.paths
            .update(ringscale_magicsock::driver::PathsUpdate::from_netmap(
                netmap, key, endpoints,
            ));
    }
    drop(inner);
    log::debug!(
        "netmap: {} peers (+{} -{} ~{})",
        netmap.peers.len(),
        update.peers_added,
        update.peers_removed,
        update.peers_modified
    );
    if update.self_changed {
        if let Some(node) = &netmap.self_node {
            b.publish(Notify {
                self_change: Some(node.clone()),
                ..Notify::default()
            });
        }
    }
    Ok(())
}

/// Logs out: tells control (a register with an expiry in the past), then forgets the
/// login locally even if control could not be reached.
pub async fn logout(b: &Arc<LocalBackend>) -> Result<(), String> {
    let (url, machine_key, node_key) = {
        let inner = b.lock();
        (
            inner.prefs.control_url_or_default().to_string(),
            inner.machine_key.clone(),
            inner.prefs.node_private_key(),
        )
    };
    if let Some(node_key) = node_key {
        let result = async {
            let conn = ts2021::connect(&url, &machine_key.0, None).await?;
            let req = RegisterRequest {
                version: CAPABILITY_VERSION,
                node_key: node_key.node_public(),
                // Go's "past" expiry.
                expiry: GoTime::from_unix(123, 0),
                ..Default::default()
            };
            client::register(&conn, &req).await.map(drop)
        };
        match tokio::time::timeout(Duration::from_secs(10), result).await {
            Ok(Ok(())) => log::info!("control: logged out"),
            Ok(Err(e)) => log::warn!("control: logout not confirmed: {e}"),
            Err(_) => log::warn!("control: logout timed out"),
        }
    }
    b.forget_login().map_err(|e| e.to_string())
}
