//! The LocalAPI server: one HTTP/1.1 request per unix-socket connection, answered from
//! a [`Backend`]. Deciding what a request means ([`route`]) is a pure function of the
//! request and the caller's permissions; [`serve`] does the socket work on the daemon's
//! current-thread runtime.

use super::access::{self, Permissions};
use super::http::{self, Request, Response, LOCALAPI_HOST};
use super::{sanitized_prefs, Backend, PingType, WhoIsTarget};
use ringscale_control::ipn::{watch_opt, Notify, Options, State};
use ringscale_control::prefs::{MaskedPrefs, Prefs};
use ringscale_control::tailcfg::CAPABILITY_VERSION;
use std::cell::Cell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::broadcast::error::RecvError;

/// Bound on a request body (prefs and start bodies are a few KiB).
const MAX_BODY: usize = 1 << 20;
/// A client must send its whole request within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; beyond this new ones get 503. IPN-bus watchers count.
const MAX_CONNECTIONS: usize = 128;
/// How long one IPN bus message may take to write before the watcher is dropped.
const BUS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Go's `magicsock.MaxDiscoPingSize`: largest WireGuard payload minus IPv4+UDP headers.
const MAX_DISCO_PING_SIZE: usize = 65503 - 20 - 8;

/// What a request asks for, once checked.
#[derive(Debug, PartialEq)]
pub enum Route {
    /// An answer that needs no backend (errors, the root page).
    Respond(Response),
    Status {
        peers: bool,
    },
    GetPrefs,
    EditPrefs(Box<MaskedPrefs>),
    CheckPrefs(Box<Prefs>),
    Start(Box<Options>),
    LoginInteractive,
    Logout,
    WatchIpnBus {
        mask: u64,
    },
    Ping {
        ip: IpAddr,
        kind: PingType,
        size: usize,
    },
    WhoIs {
        target: WhoIsTarget,
        proto: String,
    },
    CheckIpForwarding,
    Shutdown,
}

fn deny(msg: &str) -> Route {
    Route::Respond(Response::error(403, msg))
}

fn bad(msg: &str) -> Route {
    Route::Respond(Response::error(400, msg))
}

/// Decides what `req` means for a caller with `perms`, with Go's checks in Go's order
/// and Go's texts (`ipn/localapi/localapi.go`).
pub fn route(req: &Request, perms: Permissions) -> Route {
    // CSRF guard: browsers add these; the CLI never does. Also refuse Host names that
    // could come from DNS rebinding.
    let host_ok = matches!(req.host.as_deref(), None | Some("") | Some(LOCALAPI_HOST));
    if req.referer.as_deref().is_some_and(|r| !r.is_empty())
        || req.origin.as_deref().is_some_and(|o| !o.is_empty())
        || !host_ok
    {
        return deny("invalid localapi request");
    }
    if req.path == "/" {
        return Route::Respond(Response {
            status: 200,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: b"tailscaled\n".to_vec(),
        });
    }
    let Some(name) = req.path.strip_prefix("/localapi/v0/") else {
        return Route::Respond(Response::error(404, "404 page not found"));
    };
    let method = req.method.as_str();
    match name {
        "status" => {
            if !perms.read {
                return deny("status access denied");
            }
            // Go's `def.Bool`: an unparsable value keeps the default.
            let peers = crate::goflag::parse_bool(req.form_value("peers")).unwrap_or(true);
            Route::Status { peers }
        }
        "prefs" => {
            if !perms.read {
                return deny("prefs access denied");
            }
            match method {
                "PATCH" => {
                    if !perms.write {
                        return deny("prefs write access denied");
                    }
                    match serde_json::from_slice::<MaskedPrefs>(&req.body) {
                        Ok(mp) => Route::EditPrefs(Box::new(mp)),
                        Err(e) => bad(&e.to_string()),
                    }
                }
                "GET" | "HEAD" => Route::GetPrefs,
                _ => Route::Respond(Response::error(405, "unsupported method")),
            }
        }
        "check-prefs" => {
            if !perms.write {
                return deny("checkprefs access denied");
            }
            if method != "POST" {
                return Route::Respond(Response::error(405, "unsupported method"));
            }
            match serde_json::from_slice::<Prefs>(&req.body) {
                Ok(p) => Route::CheckPrefs(Box::new(p)),
                Err(_) => bad("invalid JSON body"),
            }
        }
        "start" => {
            if !perms.write {
                return deny("access denied");
            }
            if method != "POST" {
                return bad("want POST");
            }
            match serde_json::from_slice::<Options>(&req.body) {
                Ok(o) => Route::Start(Box::new(o)),
                Err(e) => bad(&e.to_string()),
            }
        }
        "login-interactive" => {
            if !perms.write {
                return deny("login access denied");
            }
            if method != "POST" {
                return bad("want POST");
            }
            Route::LoginInteractive
        }
        "logout" => {
            if !perms.write {
                return deny("logout access denied");
            }
            if method != "POST" {
                return bad("want POST");
            }
            Route::Logout
        }
        "watch-ipn-bus" => {
            if !perms.read {
                return deny("watch ipn bus access denied");
            }
            let mask = match req.form_value("mask") {
                "" => 0,
                s => match s.parse::<u64>() {
                    Ok(m) => m,
                    Err(_) => return bad("bad mask"),
                },
            };
            if mask & watch_opt::IN_PROCESS_NO_DISCONNECT != 0 {
                return bad(
                    "NotifyInProcessNoDisconnect is only valid for in-process IPN bus subscribers",
                );
            }
            if mask & watch_opt::RATE_LIMIT != 0 && mask & watch_opt::RATE_LIMIT_INCOMPATIBLE != 0 {
                return bad(&format!(
                    "NotifyRateLimit is incompatible with new-style IPN bus subscription bits {:#x}",
                    mask & watch_opt::RATE_LIMIT_INCOMPATIBLE
                ));
            }
            Route::WatchIpnBus { mask }
        }
        "ping" => route_ping(req),
        "whois" => {
            if !perms.read {
                return deny("whois access denied");
            }
            let addr = req.form_value("addr");
            if addr.is_empty() {
                return bad("missing 'addr' parameter");
            }
            let target = if addr.starts_with("nodekey:") {
                match addr.parse() {
                    Ok(k) => WhoIsTarget::NodeKey(k),
                    Err(_) => return bad("invalid nodekey in 'addr' parameter"),
                }
            } else if let Ok(ip) = addr.parse::<IpAddr>() {
                WhoIsTarget::Addr { ip, port: 0 }
            } else {
                match addr.parse::<SocketAddr>() {
                    Ok(sa) => WhoIsTarget::Addr {
                        ip: sa.ip(),
                        port: sa.port(),
                    },
                    Err(_) => return bad("invalid 'addr' parameter"),
                }
            };
            Route::WhoIs {
                target,
                proto: req.form_value("proto").to_string(),
            }
        }
        "check-ip-forwarding" => {
            if !perms.read {
                return deny("IP forwarding check access denied");
            }
            Route::CheckIpForwarding
        }
        "shutdown" => {
            if method != "POST" {
                return Route::Respond(Response::error(405, "only POST allowed"));
            }
            if !perms.write {
                return deny("shutdown access denied");
            }
            Route::Shutdown
        }
        _ => Route::Respond(Response::error(404, "404 page not found")),
    }
}

fn route_ping(req: &Request) -> Route {
    // Go's ping handler has no permission check: anyone may ping.
    if req.method != "POST" {
        return bad("want POST");
    }
    let ip = match req.form_value("ip") {
        "" => return bad("missing 'ip' parameter"),
        s => match s.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return bad("invalid IP"),
        },
    };
    let type_name = req.form_value("type");
    if type_name.is_empty() {
        return bad("missing 'type' parameter");
    }
    let kind = PingType::parse(type_name);
    let size = match req.form_value("size") {
        "" => 0,
        s => match s.parse::<usize>() {
            Ok(n) => n,
            Err(_) => return bad("invalid 'size' parameter"),
        },
    };
    if size != 0 && kind != Some(PingType::Disco) {
        return bad("'size' parameter is only supported with disco pings");
    }
    if size > MAX_DISCO_PING_SIZE {
        return bad(&format!(
            "maximum value for 'size' is {MAX_DISCO_PING_SIZE}"
        ));
    }
    match kind {
        Some(kind) => Route::Ping { ip, kind, size },
        None => Route::Respond(Response::json(
            500,
            &serde_json::json!({ "error": format!("unknown ping type {type_name:?}") }),
            None,
        )),
    }
}

/// Creates the socket as Go's tailscaled does on Linux: the directory is created (and
/// opened to 0755 if a umask made it private), a stale socket file left by a dead daemon
/// is removed, a live one is an error, and the socket is 0666 so any local user can
/// connect (permissions are decided per request by peer credentials).
pub fn listen(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{}: address already in use (is another tailscaled running?)",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves LocalAPI requests on `listener` until accepting fails for good. Must run
/// inside a `tokio::task::LocalSet` on the daemon's current-thread runtime: connections
/// are handled by `spawn_local` tasks sharing `backend`.
///
/// `backend` is any shared handle to the backend (`Rc<B>`, `Arc<B>`…).
pub async fn serve<B, H>(listener: std::os::unix::net::UnixListener, backend: H) -> io::Result<()>
where
    B: Backend + ?Sized + 'static,
    H: Deref<Target = B> + Clone + 'static,
{
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let active = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) if is_transient_accept_error(&e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                log::warn!("localapi: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let backend = backend.clone();
        let active = active.clone();
        tokio::task::spawn_local(async move {
            if active.get() >= MAX_CONNECTIONS {
                let resp = Response::error(503, "too many LocalAPI connections");
                let mut s = stream;
                let _ = s.write_all(&resp.to_bytes(&[])).await;
                return;
            }
            active.set(active.get() + 1);
            if let Err(e) = handle_connection(stream, &*backend).await {
                log::debug!("localapi: connection: {e}");
            }
            active.set(active.get() - 1);
        });
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EINTR
        )
    )
}

/// Headers on every answer past the CSRF check, as Go sets them.
fn common_headers() -> Vec<(&'static str, String)> {
    vec![
        ("Tailscale-Version", crate::VERSION.to_string()),
        ("Tailscale-Cap", CAPABILITY_VERSION.to_string()),
        (
            "Content-Security-Policy",
            "default-src 'none'; frame-ancestors 'none'; script-src 'none'; script-src-elem 'none'; script-src-attr 'none'".into(),
        ),
        ("X-Frame-Options", "DENY".into()),
        ("X-Content-Type-Options", "nosniff".into()),
    ]
}

async fn handle_connection<B: Backend + ?Sized>(stream: UnixStream, backend: &B) -> io::Result<()> {
    let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
    let (mut rd, mut wr) = stream.into_split();
    let req =
        match tokio::time::timeout(REQUEST_TIMEOUT, http::read_request(&mut rd, MAX_BODY)).await {
            Ok(Ok(r)) => r,
            Ok(Err(resp)) => return http::refuse(&mut rd, &mut wr, &resp.to_bytes(&[])).await,
            Err(_) => {
                return wr
                    .write_all(&Response::error(408, "request timeout").to_bytes(&[]))
                    .await
            }
        };
    // The operator can change with every `set --operator`, so look it up per request.
    let operator_uid = access::uid_of_user(&backend.prefs().operator_user);
    let perms = access::permissions(peer_uid, access::daemon_uid(), operator_uid);
    let route = route(&req, perms);
    log::debug!("localapi: {} {} (uid {peer_uid:?})", req.method, req.path);
    if let Route::Respond(resp) = &route {
        // The CSRF refusal goes out bare, as in Go; everything else with the headers.
        let extra = if resp.status == 403 && resp.body == b"invalid localapi request\n" {
            Vec::new()
        } else {
            common_headers()
        };
        return wr.write_all(&resp.to_bytes(&extra)).await;
    }
    let headers = common_headers();
    let resp = match route {
        Route::Respond(_) => unreachable!("answered above"),
        Route::WatchIpnBus { mask } => {
            return watch_ipn_bus(backend, mask, &headers, &mut rd, &mut wr).await
        }
        Route::Ping { ip, kind, size } => {
            // Go ties the ping to the request context; here, to the client's connection.
            tokio::select! {
                r = backend.ping(ip, kind, size) => match r {
                    Ok(res) => Response::json(200, &res, None),
                    Err(e) => Response::json(500, &serde_json::json!({ "error": e.0 }), None),
                },
                _ = wait_for_close(&mut rd) => return Ok(()),
            }
        }
        Route::Status { peers } => Response::json(200, &backend.status(peers), Some(b"\t")),
        Route::GetPrefs => Response::json(200, &sanitized_prefs(backend.prefs()), Some(b"\t")),
        Route::EditPrefs(mp) => match backend.edit_prefs(*mp).await {
            Ok(p) => Response::json(200, &sanitized_prefs(p), Some(b"\t")),
            Err(e) => Response::json_error(400, &e.0),
        },
        Route::CheckPrefs(p) => {
            let body = match backend.check_prefs(&p) {
                Ok(()) => serde_json::json!({}),
                Err(e) => serde_json::json!({ "Error": e.0 }),
            };
            Response::json(200, &body, None)
        }
        Route::Start(opts) => match backend.start(*opts).await {
            Ok(()) => Response::no_content(),
            Err(e) => Response::error(500, &e.0),
        },
        Route::LoginInteractive => match backend.login_interactive().await {
            Ok(()) => Response::no_content(),
            Err(e) => Response::error(500, &e.0),
        },
        Route::Logout => match backend.logout().await {
            Ok(()) => Response::no_content(),
            Err(e) => Response::error(500, &e.0),
        },
        Route::WhoIs { target, proto } => match backend.whois(&target, &proto) {
            Some(w) => Response::json(200, &w, Some(b"\t")),
            None => Response::error(404, "no match for IP:port"),
        },
        Route::CheckIpForwarding => {
            let warning = super::forwarding::check_host().unwrap_or_default();
            Response::json(200, &serde_json::json!({ "Warning": warning }), None)
        }
        Route::Shutdown => {
            let r = Response {
                status: 200,
                headers: Vec::new(),
                body: Vec::new(),
            };
            wr.write_all(&r.to_bytes(&headers)).await?;
            wr.shutdown().await?;
            backend.shutdown();
            return Ok(());
        }
    };
    let mut resp = resp;
    if req.method == "HEAD" {
        resp.body.clear();
    }
    wr.write_all(&resp.to_bytes(&headers)).await
}

/// Resolves when the client closes its end (or sends anything more, which a LocalAPI
/// client never does after its request).
async fn wait_for_close(rd: &mut OwnedReadHalf) {
    let mut b = [0u8; 64];
    loop {
        match rd.read(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// Streams IPN bus messages as newline-delimited JSON in HTTP chunks until the client
/// goes away, the backend closes the bus, or the watcher falls behind (Go disconnects
/// slow watchers too). The response head is written right after subscribing, so a
/// client that has read it knows no later notification can be missed.
async fn watch_ipn_bus<B: Backend + ?Sized>(
    backend: &B,
    mask: u64,
    headers: &[(&str, String)],
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) -> io::Result<()> {
    let mut rx = backend.subscribe();
    let mut head_headers: Vec<(&str, String)> = headers.to_vec();
    head_headers.push(("Content-Type", "application/json".into()));
    wr.write_all(&http::chunked_head(200, &head_headers))
        .await?;
    if let Some(first) = initial_notify(backend, mask) {
        write_notify(wr, first).await?;
    }
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                // A watcher that stops reading must not hold its task forever.
                Ok(n) => match tokio::time::timeout(BUS_WRITE_TIMEOUT, write_notify(wr, n)).await {
                    Ok(r) => r?,
                    Err(_) => {
                        log::info!("localapi: IPN bus watcher stopped reading; disconnecting it");
                        return Ok(());
                    }
                },
                Err(RecvError::Lagged(n)) => {
                    log::info!("localapi: IPN bus watcher fell {n} messages behind; disconnecting it");
                    break;
                }
                Err(RecvError::Closed) => break,
            },
            _ = wait_for_close(rd) => return Ok(()),
        }
    }
    wr.write_all(ringscale_http1::LAST_CHUNK).await
}

async fn write_notify(wr: &mut OwnedWriteHalf, mut n: Notify) -> io::Result<()> {
    if n.version.is_empty() {
        n.version = crate::VERSION.to_string();
    }
    // Whatever the backend put there, keys never leave the daemon.
    n.prefs = n.prefs.map(sanitized_prefs);
    let line = http::encode_json(&n, None).map_err(io::Error::other)?;
    let mut chunk = Vec::with_capacity(line.len() + 16);
    ringscale_http1::encode_chunk(&line, &mut chunk);
    wr.write_all(&chunk).await
}

/// The first message Go sends when the mask asks for initial state; None otherwise.
fn initial_notify<B: Backend + ?Sized>(backend: &B, mask: u64) -> Option<Notify> {
    let initial_bits = watch_opt::INITIAL_STATE
        | watch_opt::INITIAL_PREFS
        | watch_opt::INITIAL_NETMAP
        | watch_opt::INITIAL_STATUS;
    if mask & initial_bits == 0 {
        return None;
    }
    let mut n = Notify::default();
    if mask & (watch_opt::INITIAL_STATE | watch_opt::INITIAL_STATUS) != 0 {
        let st = backend.status(mask & watch_opt::INITIAL_STATUS != 0);
        if mask & watch_opt::INITIAL_STATE != 0 {
            n.session_id = session_id();
            let state = st.state().unwrap_or(State::NoState);
            n.state = Some(state);
            if state == State::NeedsLogin && !st.auth_url.is_empty() {
                n.browse_to_url = Some(st.auth_url.clone());
            }
        }
        if mask & watch_opt::INITIAL_STATUS != 0 {
            n.initial_status = Some(Box::new(st));
        }
    }
    if mask & watch_opt::INITIAL_PREFS != 0 {
        n.prefs = Some(backend.prefs());
    }
    if mask & watch_opt::INITIAL_NETMAP != 0 {
        n.self_change = backend.self_node();
    }
    Some(n)
}

/// 16 hex digits identifying one bus session.
fn session_id() -> String {
    let mut b = [0u8; 8];
    // A session ID only needs to be unique, not secret; fall back to time if the
    // random source fails.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        b = t.to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringscale_http1::RequestHead;

    fn req(method: &str, target: &str, body: &str) -> Request {
        let raw = format!("{method} {target} HTTP/1.1\r\nHost: local-tailscaled.sock\r\n\r\n");
        let head = RequestHead::parse(raw.as_bytes()).unwrap();
        Request::from_head(&head, body.as_bytes().to_vec())
    }

    const READ_ONLY: Permissions = Permissions {
        read: true,
        write: false,
    };
    const ADMIN: Permissions = Permissions {
        read: true,
        write: true,
    };

    fn error_text(r: Route) -> (u16, String) {
        match r {
            Route::Respond(resp) => (resp.status, String::from_utf8(resp.body).unwrap()),
            other => panic!("expected an error response, got {other:?}"),
        }
    }

    #[test]
    fn browser_requests_are_refused() {
        let mut r = req("GET", "/localapi/v0/status", "");
        r.origin = Some("https://evil.example".into());
        assert_eq!(
            error_text(route(&r, ADMIN)),
            (403, "invalid localapi request\n".into())
        );
        let mut r = req("GET", "/localapi/v0/status", "");
        r.referer = Some("https://evil.example/x".into());
        assert_eq!(error_text(route(&r, ADMIN)).0, 403);
        let mut r = req("GET", "/localapi/v0/status", "");
        r.host = Some("evil.example".into());
        assert_eq!(error_text(route(&r, ADMIN)).0, 403);
        // Empty Host and empty Origin are fine, as in Go.
        let mut r = req("GET", "/localapi/v0/status", "");
        r.host = Some(String::new());
        r.origin = Some(String::new());
        assert_eq!(route(&r, READ_ONLY), Route::Status { peers: true });
    }

    #[test]
    fn reads_are_open_writes_need_permission() {
        assert_eq!(
            route(
                &req("GET", "/localapi/v0/status?peers=false", ""),
                READ_ONLY
            ),
            Route::Status { peers: false }
        );
        assert_eq!(
            route(&req("GET", "/localapi/v0/prefs", ""), READ_ONLY),
            Route::GetPrefs
        );
        let writes = [
            ("PATCH", "prefs", "{}", "prefs write access denied"),
            ("POST", "check-prefs", "{}", "checkprefs access denied"),
            ("POST", "start", "{}", "access denied"),
            ("POST", "login-interactive", "", "login access denied"),
            ("POST", "logout", "", "logout access denied"),
            ("POST", "shutdown", "", "shutdown access denied"),
        ];
        for (m, name, body, msg) in writes {
            let r = req(m, &format!("/localapi/v0/{name}"), body);
            assert_eq!(
                error_text(route(&r, READ_ONLY)),
                (403, format!("{msg}\n")),
                "{name}"
            );
            assert!(
                !matches!(route(&r, ADMIN), Route::Respond(_)),
                "{name} as admin"
            );
        }
    }

    #[test]
    fn bodies_and_methods_are_checked() {
        let r = route(
            &req(
                "PATCH",
                "/localapi/v0/prefs",
                r#"{"WantRunning":true,"WantRunningSet":true}"#,
            ),
            ADMIN,
        );
        match r {
            Route::EditPrefs(mp) => assert!(mp.mask.want_running_set && mp.prefs.want_running),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            error_text(route(&req("PATCH", "/localapi/v0/prefs", "{"), ADMIN)).0,
            400
        );
        assert_eq!(
            error_text(route(&req("PUT", "/localapi/v0/prefs", ""), ADMIN)),
            (405, "unsupported method\n".into())
        );
        assert_eq!(
            error_text(route(&req("GET", "/localapi/v0/start", ""), ADMIN)),
            (400, "want POST\n".into())
        );
        assert_eq!(
            error_text(route(
                &req("POST", "/localapi/v0/check-prefs", "nope"),
                ADMIN
            )),
            (400, "invalid JSON body\n".into())
        );
        match route(
            &req(
                "POST",
                "/localapi/v0/start",
                r#"{"AuthKey":"tskey-x","UpdatePrefs":{"WantRunning":true}}"#,
            ),
            ADMIN,
        ) {
            Route::Start(o) => {
                assert_eq!(o.auth_key, "tskey-x");
                assert!(o.update_prefs.unwrap().want_running);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            error_text(route(&req("GET", "/localapi/v0/nope", ""), ADMIN)).0,
            404
        );
        assert_eq!(error_text(route(&req("GET", "/other", ""), ADMIN)).0, 404);
    }

    #[test]
    fn bus_ping_and_whois_parameters() {
        assert_eq!(
            route(
                &req("GET", "/localapi/v0/watch-ipn-bus?mask=0", ""),
                READ_ONLY
            ),
            Route::WatchIpnBus { mask: 0 }
        );
        assert_eq!(
            route(&req("GET", "/localapi/v0/watch-ipn-bus", ""), READ_ONLY),
            Route::WatchIpnBus { mask: 0 }
        );
        assert_eq!(
            error_text(route(
                &req("GET", "/localapi/v0/watch-ipn-bus?mask=x", ""),
                READ_ONLY
            )),
            (400, "bad mask\n".into())
        );
        assert_eq!(
            error_text(route(
                &req("GET", "/localapi/v0/watch-ipn-bus?mask=65536", ""),
                READ_ONLY
            ))
            .0,
            400
        );
        assert_eq!(
            error_text(route(
                &req("GET", "/localapi/v0/watch-ipn-bus?mask=4352", ""),
                READ_ONLY
            ))
            .0,
            400
        );

        let ping = |q: &str| {
            route(
                &req("POST", &format!("/localapi/v0/ping?{q}"), ""),
                READ_ONLY,
            )
        };
        assert_eq!(
            ping("ip=100.64.0.2&type=disco&size=0"),
            Route::Ping {
                ip: "100.64.0.2".parse().unwrap(),
                kind: PingType::Disco,
                size: 0
            }
        );
        assert_eq!(
            error_text(ping("type=disco")),
            (400, "missing 'ip' parameter\n".into())
        );
        assert_eq!(
            error_text(ping("ip=x&type=disco")),
            (400, "invalid IP\n".into())
        );
        assert_eq!(
            error_text(ping("ip=100.64.0.2")),
            (400, "missing 'type' parameter\n".into())
        );
        assert_eq!(
            error_text(ping("ip=100.64.0.2&type=TSMP&size=10")),
            (
                400,
                "'size' parameter is only supported with disco pings\n".into()
            )
        );
        assert_eq!(
            error_text(ping("ip=100.64.0.2&type=disco&size=70000")).0,
            400
        );
        assert_eq!(error_text(ping("ip=100.64.0.2&type=carrier-pigeon")).0, 500);

        let whois = |q: &str| {
            route(
                &req("GET", &format!("/localapi/v0/whois?{q}"), ""),
                READ_ONLY,
            )
        };
        assert_eq!(
            whois("addr=100.64.0.2&proto=tcp"),
            Route::WhoIs {
                target: WhoIsTarget::Addr {
                    ip: "100.64.0.2".parse().unwrap(),
                    port: 0
                },
                proto: "tcp".into()
            }
        );
        assert_eq!(
            whois("addr=%5Bfd7a%3A115c%3Aa1e0%3A%3A2%5D%3A443"),
            Route::WhoIs {
                target: WhoIsTarget::Addr {
                    ip: "fd7a:115c:a1e0::2".parse().unwrap(),
                    port: 443
                },
                proto: String::new()
            }
        );
        assert_eq!(
            error_text(whois("")),
            (400, "missing 'addr' parameter\n".into())
        );
        assert_eq!(
            error_text(whois("addr=host.example")),
            (400, "invalid 'addr' parameter\n".into())
        );
        assert_eq!(
            error_text(whois("addr=nodekey:zz")),
            (400, "invalid nodekey in 'addr' parameter\n".into())
        );
    }

    #[test]
    fn listen_replaces_a_stale_socket_but_not_a_live_one() {
        let dir = std::env::temp_dir().join(format!("ringscale-listen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("t.sock");
        let l = listen(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        let err = listen(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(l); // the file stays behind, as after a crash
        assert!(path.exists());
        let _l2 = listen(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
