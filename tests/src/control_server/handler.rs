//! The I/O edge: answers the ts2021 client's HTTP/2 requests (`/machine/register`,
//! `/machine/map`) and the plain HTTP/1.1 ones (the AuthURL "visit" and the admin API,
//! see [`super::admin`]), driving the [`Tailnet`] rules and the map sessions.
//!
//! Every request is bounded: bodies by size and time, follow-ups by
//! [`Timing::followup_timeout`], each write to a map stream by [`WRITE_TIMEOUT`]. A
//! failing request is logged and answered (or dropped) on its own; nothing a client
//! sends ends the server.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use ringscale_control::tailcfg::{
    self, GoTime, MachinePublic, MapRequest, NodeId, RegisterRequest, RegisterResponse,
};
use ringscale_control::ts2021::{
    format_key, Handler, Http1Request, Http1Response, IncomingRequest, Responder, ResponseStream,
};
use tokio::sync::watch;

use super::session::{self, SessionView};
use super::tailnet::{FollowupState, RegisterAction, Tailnet};

/// Largest register/map request body (Headscale's limit too).
pub const MAX_REQUEST_BODY: usize = 1 << 20;
/// Bound on receiving a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one write to a map stream; a client that stops reading is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Time-related behaviour of the server.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Interval of keep-alive messages on map streams whose client asked for them.
    pub keepalive: Duration,
    /// How long a follow-up register request waits for its login before it is answered
    /// with the same AuthURL (the client then asks again).
    pub followup_timeout: Duration,
    /// How long an ephemeral node may stay offline before it is removed.
    pub ephemeral_idle: Duration,
}

/// The tailnet plus the signal that tells map sessions something changed.
pub struct Shared {
    tailnet: Mutex<Tailnet>,
    changes: watch::Sender<u64>,
    pub timing: Timing,
}

impl Shared {
    pub fn new(tailnet: Tailnet, timing: Timing) -> Shared {
        Shared {
            tailnet: Mutex::new(tailnet),
            changes: watch::Sender::new(0),
            timing,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tailnet> {
        // A panic while holding the lock is a bug, but the state itself stays usable:
        // keep serving rather than failing every later request.
        self.tailnet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the tailnet, then wakes every map session to look for changes.
    pub fn update<R>(&self, f: impl FnOnce(&mut Tailnet) -> R) -> R {
        let result = f(&mut self.lock());
        self.changes.send_modify(|generation| *generation += 1);
        result
    }

    /// Runs `f` on the tailnet without signalling a change.
    pub fn read<R>(&self, f: impl FnOnce(&Tailnet) -> R) -> R {
        f(&self.lock())
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// The [`Handler`] plugged into the ts2021 server.
pub struct ControlHandler {
    pub shared: Arc<Shared>,
}

impl Handler for ControlHandler {
    async fn handle(&self, request: IncomingRequest) {
        handle_noise_request(self.shared.clone(), request).await;
    }

    async fn handle_http1(&self, request: Http1Request) -> Http1Response {
        super::admin::handle(&self.shared, &request)
    }
}

fn machine_key(raw: &[u8; 32]) -> MachinePublic {
    format_key(MachinePublic::PREFIX, raw)
        .parse()
        .expect("formatted key parses")
}

fn send_text(respond: Responder, status: u16, text: &str) {
    let ct = [(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    )];
    if let Err(e) = respond.send(status, &ct, Bytes::from(format!("{text}\n"))) {
        log::info!("could not send the {status} answer: {e}");
    }
}

fn send_json<T: serde::Serialize>(respond: Responder, value: &T) {
    let json = serde_json::to_vec(value).expect("response serializes");
    if let Err(e) = respond.send_json(200, json) {
        log::info!("could not send a response: {e}");
    }
}

/// Reads and parses a JSON request body, answering the client itself on failure.
async fn read_json<T: serde::de::DeserializeOwned>(
    body: ringscale_control::ts2021::Body,
    what: &str,
    peer: &str,
) -> Result<T, (u16, String)> {
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.read_to_end(MAX_REQUEST_BODY)).await {
        Err(_) => {
            return Err((
                408,
                format!("{what}: body not received within {BODY_TIMEOUT:?}"),
            ))
        }
        Ok(Err(e)) => return Err((413, format!("{what}: reading the body: {e}"))),
        Ok(Ok(b)) => b,
    };
    tailcfg::decode(&bytes).map_err(|e| {
        log::warn!("{what} from {peer}: invalid JSON: {e}");
        (400, format!("{what}: invalid JSON: {e}"))
    })
}

async fn handle_noise_request(shared: Arc<Shared>, request: IncomingRequest) {
    let IncomingRequest {
        machine_public,
        protocol_version,
        request,
        respond,
    } = request;
    let machine = machine_key(&machine_public);
    let peer = format!("{machine:?} (v{protocol_version})");
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    log::debug!("{} {path} from {peer}", parts.method);
    if parts.method != http::Method::POST {
        send_text(respond, 405, "use POST");
        return;
    }
    match path.as_str() {
        "/machine/register" => match read_json::<RegisterRequest>(body, "register", &peer).await {
            Ok(req) => register(&shared, machine, req, respond).await,
            Err((status, msg)) => send_text(respond, status, &msg),
        },
        "/machine/map" => match read_json::<MapRequest>(body, "map request", &peer).await {
            Ok(req) => map(&shared, machine, req, respond, &peer).await,
            Err((status, msg)) => send_text(respond, status, &msg),
        },
        _ => {
            log::info!("{peer} asked for {path}, which this server does not implement");
            send_text(respond, 404, "not implemented by the test control server");
        }
    }
}

async fn register(
    shared: &Shared,
    machine: MachinePublic,
    req: RegisterRequest,
    respond: Responder,
) {
    let mut changes = shared.subscribe();
    let action = shared.update(|t| t.register(machine, &req, GoTime::now()));
    let id = match action {
        RegisterAction::Respond(response) => return send_json(respond, &response),
        RegisterAction::Wait { id } => id,
    };
    log::info!("register: {} waits for login {id}", req.node_key);
    let deadline = tokio::time::Instant::now() + shared.timing.followup_timeout;
    loop {
        changes.borrow_and_update();
        let response = match shared.read(|t| t.followup(&id)) {
            FollowupState::Done(response) => response,
            FollowupState::Unknown => {
                // Withdrawn meanwhile: start over as a fresh login.
                let fresh = RegisterRequest {
                    followup: String::new(),
                    ..req.clone()
                };
                match shared.update(|t| t.register(machine, &fresh, GoTime::now())) {
                    RegisterAction::Respond(r) => r,
                    RegisterAction::Wait { .. } => RegisterResponse {
                        error: "login could not be restarted".into(),
                        ..RegisterResponse::default()
                    },
                }
            }
            FollowupState::Pending { auth_url } => {
                match tokio::time::timeout_at(deadline, changes.changed()).await {
                    Ok(Ok(())) => continue,
                    // Timed out (or the server is stopping): the same URL again; the
                    // client backs off and follows up once more.
                    _ => RegisterResponse {
                        auth_url,
                        ..RegisterResponse::default()
                    },
                }
            }
        };
        return send_json(respond, &response);
    }
}

/// Marks a map session online for its lifetime; on drop the node goes offline (if it
/// was its last session) and, if ephemeral, is reaped after the idle time.
struct SessionGuard {
    shared: Arc<Shared>,
    node: NodeId,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let now = GoTime::now();
        self.shared.update(|t| t.session_ended(self.node, now));
        let ephemeral = self
            .shared
            .read(|t| t.node(self.node).is_some_and(|n| n.ephemeral));
        if ephemeral {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let shared = self.shared.clone();
                let idle = shared.timing.ephemeral_idle;
                rt.spawn(async move {
                    tokio::time::sleep(idle).await;
                    shared.update(|t| t.reap_ephemeral(GoTime::now(), idle));
                });
            }
        }
    }
}

async fn map(
    shared: &Arc<Shared>,
    machine: MachinePublic,
    req: MapRequest,
    respond: Responder,
    peer: &str,
) {
    let node = match shared.update(|t| t.map_request(machine, &req)) {
        Ok(id) => id,
        Err(refused) => {
            log::warn!("map request from {peer} refused: {refused}");
            return send_text(respond, refused.status, &refused.message);
        }
    };
    let zstd = req.compress == "zstd";
    if !req.stream {
        if req.omit_peers {
            // A lite update: the node told us its endpoints/Hostinfo; nothing to send.
            log::debug!("lite map update from node {node}");
            if let Err(e) = respond.send(200, &[], Bytes::new()) {
                log::info!("could not answer a lite update: {e}");
            }
            return;
        }
        // One-shot: exactly one full map, then the end of the body.
        let Some(view) = shared.read(|t| t.session_view(node, GoTime::now())) else {
            return send_text(respond, 404, "node removed");
        };
        let msg = session::encode_message(&session::full_map(&view, GoTime::now()), zstd);
        if let Err(e) = respond.send(200, &[], Bytes::from(msg)) {
            log::info!("could not send a one-shot map to node {node}: {e}");
        }
        return;
    }

    let mut changes = shared.subscribe();
    shared.update(|t| t.session_started(node));
    let _guard = SessionGuard {
        shared: shared.clone(),
        node,
    };
    let name = shared.read(|t| {
        t.node(node)
            .map(|n| n.given_name.clone())
            .unwrap_or_default()
    });
    log::info!(
        "map session of node {node} ({name}) started (zstd: {zstd}, keep-alives: {})",
        req.keep_alive
    );
    let out = match respond.stream(200, &[]) {
        Ok(out) => out,
        Err(e) => return log::info!("map session of node {node}: {e}"),
    };
    match stream_map(shared, node, out, &mut changes, zstd, req.keep_alive).await {
        Ok(why) => log::info!("map session of node {node} ({name}) ended: {why}"),
        Err(e) => log::info!("map session of node {node} ({name}) ended: {e}"),
    }
}

async fn send_message(
    out: &mut ResponseStream,
    msg: &tailcfg::MapResponse,
    zstd: bool,
) -> Result<(), String> {
    let bytes = Bytes::from(session::encode_message(msg, zstd));
    log::debug!("sending a map message of {} bytes", bytes.len());
    match tokio::time::timeout(WRITE_TIMEOUT, out.send(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("sending: {e}")),
        Err(_) => Err(format!("client did not read for {WRITE_TIMEOUT:?}")),
    }
}

async fn stream_map(
    shared: &Shared,
    node: NodeId,
    mut out: ResponseStream,
    changes: &mut watch::Receiver<u64>,
    zstd: bool,
    keep_alives: bool,
) -> Result<&'static str, String> {
    changes.borrow_and_update();
    let Some(mut last): Option<SessionView> = shared.read(|t| t.session_view(node, GoTime::now()))
    else {
        return Ok("node removed");
    };
    send_message(&mut out, &session::full_map(&last, GoTime::now()), zstd).await?;
    let period = shared.timing.keepalive;
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    let _ = out.finish();
                    return Ok("server stopping");
                }
                changes.borrow_and_update();
                let Some(now) = shared.read(|t| t.session_view(node, GoTime::now())) else {
                    let _ = out.finish();
                    return Ok("node removed");
                };
                if let Some(delta) = session::delta(&last, &now) {
                    send_message(&mut out, &delta, zstd).await?;
                    last = now;
                }
            }
            _ = keepalive.tick(), if keep_alives => {
                send_message(&mut out, &session::keep_alive(), zstd).await?;
            }
            e = out.reset() => return Err(e.to_string()),
        }
    }
}
