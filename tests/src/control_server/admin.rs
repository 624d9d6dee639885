//! The plain HTTP/1.1 side of the listener: the interactive-login "visit"
//! (`GET /register/<id>`) and the admin API under `/test/` (JSON in, JSON out). The
//! routes are documented in the module docs of [`super`].

use std::net::IpAddr;

use ringscale_control::tailcfg::{DerpMap, DnsConfig, FilterRule, GoTime, IpPrefix, NodeId};
use ringscale_control::ts2021::{Http1Request, Http1Response};
use serde::Deserialize;

use super::handler::Shared;
use super::tailnet::{AdminError, Tailnet};

fn json<T: serde::Serialize>(status: u16, value: &T) -> Http1Response {
    let mut body = serde_json::to_vec_pretty(value).expect("admin response serializes");
    body.push(b'\n');
    Http1Response {
        status,
        content_type: "application/json".into(),
        body,
    }
}

fn error(status: u16, message: &str) -> Http1Response {
    json(status, &serde_json::json!({ "error": message }))
}

fn admin_error(e: AdminError) -> Http1Response {
    match e {
        AdminError::NotFound(m) => error(404, &m),
        AdminError::BadRequest(m) => error(400, &m),
    }
}

/// Parses a JSON body; an empty body is `T::default()`.
fn body<T: serde::de::DeserializeOwned + Default>(
    request: &Http1Request,
) -> Result<T, Http1Response> {
    if request.body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(&request.body)
        .map_err(|e| error(400, &format!("invalid JSON body: {e}")))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct CreateAuthKey {
    key: Option<String>,
    reusable: bool,
    ephemeral: bool,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Expire {
    /// RFC 3339 time; absent = now.
    at: Option<String>,
    /// Seconds from now (may be negative); alternative to `at`.
    in_seconds: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Routes {
    routes: Vec<String>,
}

/// Answers one plain HTTP/1.1 request.
pub fn handle(shared: &Shared, request: &Http1Request) -> Http1Response {
    let method = request.head.method.as_str();
    let path = request.head.path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let response = route(shared, method, &segments, request);
    let level = if response.status < 400 {
        log::Level::Info
    } else {
        log::Level::Warn
    };
    log::log!(level, "HTTP/1.1 {method} {path} -> {}", response.status);
    response
}

fn node_id(t: &Tailnet, selector: &str) -> Result<NodeId, Http1Response> {
    t.find_node(selector).map_err(admin_error)
}

fn route(
    shared: &Shared,
    method: &str,
    segments: &[&str],
    request: &Http1Request,
) -> Http1Response {
    let now = GoTime::now;
    match (method, segments) {
        ("GET", ["register", id]) => match shared.update(|t| t.approve_login(id, now())) {
            Ok(node) => {
                let name = shared
                    .read(|t| t.node(node).map(|n| n.given_name.clone()))
                    .unwrap_or_default();
                Http1Response::text(200, &format!("Login approved: node {node} ({name}).\n"))
            }
            Err(e) => Http1Response::text(404, &format!("{e}\n")),
        },
        ("GET", ["test", "nodes"]) => json(200, &shared.read(|t| t.nodes(now()))),
        ("GET", ["test", "nodes", selector]) => shared.read(|t| match node_id(t, selector) {
            Ok(id) => {
                let nodes = t.nodes(now());
                json(200, &nodes.into_iter().find(|n| n.id == id))
            }
            Err(r) => r,
        }),
        ("DELETE", ["test", "nodes", selector])
        | ("POST", ["test", "nodes", selector, "remove"]) => {
            shared.update(|t| match node_id(t, selector) {
                Ok(id) => match t.remove_node(id) {
                    Ok(()) => json(200, &serde_json::json!({ "removed": id })),
                    Err(e) => admin_error(e),
                },
                Err(r) => r,
            })
        }
        ("POST", ["test", "nodes", selector, "expire"]) => {
            let req: Expire = match body(request) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let at = match (req.at, req.in_seconds) {
                (Some(_), Some(_)) => return error(400, "give either \"at\" or \"in_seconds\""),
                (Some(at), None) => match at.parse::<GoTime>() {
                    Ok(t) => t,
                    Err(e) => return error(400, &format!("bad time {at:?}: {e}")),
                },
                (None, Some(secs)) => {
                    let n = now();
                    GoTime::from_unix(n.unix_secs().saturating_add(secs), n.subsec_nanos())
                }
                (None, None) => now(),
            };
            shared.update(|t| match node_id(t, selector) {
                Ok(id) => match t.set_key_expiry(id, at) {
                    Ok(()) => json(200, &serde_json::json!({ "id": id, "key_expiry": at })),
                    Err(e) => admin_error(e),
                },
                Err(r) => r,
            })
        }
        ("POST", ["test", "nodes", selector, "routes"]) => {
            let req: Routes = match body(request) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let mut routes = Vec::new();
            for r in &req.routes {
                match r.parse::<IpPrefix>() {
                    Ok(p) => routes.push(p),
                    // A bare address means its host route.
                    Err(_) => match r.parse::<IpAddr>() {
                        Ok(a) => routes.push(IpPrefix::host(a)),
                        Err(_) => return error(400, &format!("bad route {r:?}")),
                    },
                }
            }
            shared.update(|t| match node_id(t, selector) {
                Ok(id) => match t.set_approved_routes(id, &routes) {
                    Ok(()) => json(200, &t.nodes(now()).into_iter().find(|n| n.id == id)),
                    Err(e) => admin_error(e),
                },
                Err(r) => r,
            })
        }
        ("GET", ["test", "authkeys"]) => json(200, &shared.read(|t| t.auth_keys())),
        ("POST", ["test", "authkeys"]) => {
            let req: CreateAuthKey = match body(request) {
                Ok(b) => b,
                Err(r) => return r,
            };
            match shared.update(|t| t.create_auth_key(req.key, req.reusable, req.ephemeral)) {
                Ok(key) => json(200, &key),
                Err(e) => admin_error(e),
            }
        }
        ("GET", ["test", "pending"]) => json(200, &shared.read(|t| t.pending_logins())),
        ("GET", ["test", "packet-filter"]) => {
            json(200, &shared.read(|t| t.packet_filter().to_vec()))
        }
        ("POST", ["test", "packet-filter"]) => {
            match serde_json::from_slice::<Vec<FilterRule>>(&request.body) {
                Ok(rules) => {
                    shared.update(|t| t.set_packet_filter(rules.clone()));
                    json(200, &rules)
                }
                Err(e) => error(400, &format!("expected a JSON array of FilterRule: {e}")),
            }
        }
        ("POST", ["test", "dns-config"]) => {
            match serde_json::from_slice::<DnsConfig>(&request.body) {
                Ok(dns) => {
                    shared.update(|t| t.set_dns_config(dns.clone()));
                    json(200, &dns)
                }
                Err(e) => error(400, &format!("expected a DNSConfig JSON object: {e}")),
            }
        }
        ("POST", ["test", "derp-map"]) => match serde_json::from_slice::<DerpMap>(&request.body) {
            Ok(derp) => {
                shared.update(|t| t.set_derp_map(derp.clone()));
                json(200, &derp)
            }
            Err(e) => error(400, &format!("expected a DERPMap JSON object: {e}")),
        },
        (_, ["test", ..]) | (_, ["register", ..]) => error(
            404,
            "unknown admin route or method; see the testcontrol module docs",
        ),
        _ => Http1Response::not_found(),
    }
}
