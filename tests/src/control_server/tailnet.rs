//! The tailnet as plain state: nodes, pre-auth keys, pending interactive logins, address
//! allocation, route approval, DNS/DERP/packet-filter settings, and the rules of
//! registration and map requests. No I/O and no clock of its own: every operation that
//! depends on time takes `now`, so the rules are testable as plain functions.
//!
//! What a node sees of the tailnet is computed from this state by
//! [`Tailnet::session_view`]; [`super::session`] turns successive views into the full map
//! and its deltas.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ringscale_control::tailcfg::{
    CapabilityVersion, DerpMap, DnsConfig, FilterRule, GoTime, Hostinfo, IpPrefix, Login,
    MachinePublic, MapRequest, NetPortRange, Node, NodeId, NodePublic, PortRange, RegisterRequest,
    RegisterResponse, User, UserId, UserProfile, DERP_MAGIC_IP,
};
use serde::Serialize;

use super::session::SessionView;

/// Every node belongs to this one user: the test server has no identity provider.
pub const USER_ID: UserId = 1;

/// The settings that shape what the tailnet hands out.
#[derive(Clone, Debug)]
pub struct TailnetSettings {
    /// The tailnet's MagicDNS suffix, e.g. `tailnet.test`; node names are
    /// `<host>.<domain>.`.
    pub domain: String,
    /// Base of interactive-login URLs: `<base>/register/<id>`, e.g. `http://10.0.0.1:8080`.
    pub auth_url_base: String,
    /// Approve advertised subnet routes as soon as a node advertises them.
    pub auto_approve_routes: bool,
    /// Approve advertised exit routes (`0.0.0.0/0`, `::/0`) as soon as advertised.
    pub auto_approve_exit_nodes: bool,
}

/// Tailscale's default ACL (`{"action":"accept","src":["*"],"dst":["*:*"]}`) as the
/// FilterRule list a client receives: everything may reach everything.
pub fn allow_all_filter() -> Vec<FilterRule> {
    vec![FilterRule {
        src_ips: vec!["*".into()],
        dst_ports: vec![NetPortRange {
            ip: "*".into(),
            bits: None,
            ports: PortRange::ANY,
        }],
        ..FilterRule::default()
    }]
}

/// The DNS configuration sent when none is configured: MagicDNS on, the tailnet suffix
/// as search domain, no upstream resolvers (the node keeps its own).
pub fn default_dns_config(domain: &str) -> DnsConfig {
    DnsConfig {
        domains: vec![domain.to_string()],
        proxied: true,
        ..DnsConfig::default()
    }
}

/// An empty DERP map (no regions): nodes must reach each other directly until a DERP
/// server is configured.
pub fn empty_derp_map() -> DerpMap {
    DerpMap {
        regions: Some(BTreeMap::new()),
        ..DerpMap::default()
    }
}

/// A pre-auth key.
#[derive(Clone, Debug, Serialize)]
pub struct AuthKey {
    pub key: String,
    pub reusable: bool,
    /// Nodes registered with it are ephemeral: removed once offline for a while.
    pub ephemeral: bool,
    /// For a single-use key: the node key that used it. The same node key may present it
    /// again (a retried register whose answer was lost); nobody else may.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_by: Option<String>,
}

/// One registered node.
#[derive(Clone, Debug)]
pub struct NodeRecord {
    pub id: NodeId,
    pub machine: MachinePublic,
    pub node_key: NodePublic,
    pub disco_key: ringscale_control::tailcfg::DiscoPublic,
    /// The DNS label the node is known by (its hostname, made unique).
    pub given_name: String,
    /// Index into the address ranges; the node's addresses derive from it.
    pub addr_index: u32,
    /// As last received, replaced wholesale (Headscale does the same), except that a
    /// Hostinfo without NetInfo keeps the previous NetInfo.
    pub hostinfo: Hostinfo,
    pub endpoints: Vec<SocketAddr>,
    pub created: GoTime,
    /// Zero = never expires.
    pub key_expiry: GoTime,
    pub ephemeral: bool,
    /// Routes an admin (or auto-approval) allowed; effective routes are those both
    /// approved and currently advertised in `Hostinfo.RoutableIPs`.
    pub approved_routes: BTreeSet<IpPrefix>,
    /// Open streaming map sessions; the node is online while this is non-zero.
    pub map_sessions: u32,
    /// When the node was last online (set when its last session ends).
    pub last_seen: Option<GoTime>,
    /// The capability version the node announced.
    pub cap: CapabilityVersion,
    /// Node capabilities an admin granted (`Node.CapMap` keys), e.g.
    /// `disable-linux-cgnat-drop-rule`.
    pub capabilities: Vec<String>,
}

impl NodeRecord {
    pub fn is_expired(&self, now: GoTime) -> bool {
        !self.key_expiry.is_zero() && self.key_expiry <= now
    }

    pub fn online(&self) -> bool {
        self.map_sessions > 0
    }

    pub fn addresses(&self) -> [IpPrefix; 2] {
        let (v4, v6) = addresses_for_index(self.addr_index);
        [
            IpPrefix::host(IpAddr::V4(v4)),
            IpPrefix::host(IpAddr::V6(v6)),
        ]
    }

    /// Advertised routes (host bits cleared, de-duplicated).
    pub fn advertised_routes(&self) -> BTreeSet<IpPrefix> {
        self.hostinfo
            .routable_ips
            .iter()
            .map(|p| p.masked())
            .collect()
    }

    /// Routes both advertised and approved.
    pub fn effective_routes(&self) -> BTreeSet<IpPrefix> {
        self.advertised_routes()
            .intersection(&self.approved_routes)
            .copied()
            .collect()
    }
}

/// The v4 and v6 address of allocation `index` (≥ 1): 100.64.0.0 + index and
/// fd7a:115c:a1e0::<index>.
pub fn addresses_for_index(index: u32) -> (Ipv4Addr, Ipv6Addr) {
    let v4 = Ipv4Addr::from(0x6440_0000u32 + index);
    let v6 = Ipv6Addr::new(
        0xfd7a,
        0x115c,
        0xa1e0,
        0,
        0,
        0,
        (index >> 16) as u16,
        index as u16,
    );
    (v4, v6)
}

/// Largest allocation index: 100.64.0.0/10 holds 2^22 addresses.
const MAX_ADDR_INDEX: u32 = (1 << 22) - 2;

/// Indices whose IPv4 address must not be handed out: network-looking `.0`/`.255`
/// addresses, quad-100 (100.100.100.100, Tailscale's service address) and the ChromeOS
/// range 100.115.92.0/23 that Tailscale excludes.
fn index_is_reserved(index: u32) -> bool {
    let (v4, _) = addresses_for_index(index);
    let o = v4.octets();
    let n = u32::from(v4);
    o[3] == 0
        || o[3] == 255
        || v4 == Ipv4Addr::new(100, 100, 100, 100)
        || n & 0xffff_fe00 == 0x6473_5c00
}

/// Bound on interactive logins waiting for a visit.
const MAX_PENDING_LOGINS: usize = 1000;

/// An interactive login waiting for its URL to be visited.
#[derive(Clone, Debug)]
struct PendingLogin {
    machine: MachinePublic,
    node_key: NodePublic,
    request: RegisterRequest,
    /// The existing node this login re-authorises (key rotation of an expired node).
    reauth_node: Option<NodeId>,
    /// Set once the URL was visited: the node it registered.
    completed: Option<NodeId>,
}

/// What to do with a `/machine/register` request.
// A short-lived return value: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum RegisterAction {
    /// Answer now.
    Respond(RegisterResponse),
    /// A follow-up of a pending interactive login: hold the request until
    /// [`Tailnet::followup`] says it is done, or a timeout.
    Wait { id: String },
}

/// State of an interactive login, for a waiting follow-up.
#[allow(clippy::large_enum_variant)] // short-lived, as RegisterAction
#[derive(Clone, Debug, PartialEq)]
pub enum FollowupState {
    /// Not visited yet; the AuthURL to repeat if the wait times out.
    Pending { auth_url: String },
    /// Visited: the final answer.
    Done(RegisterResponse),
    /// No such login (or it was withdrawn).
    Unknown,
}

/// Why a map request is refused, with the HTTP status to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRefused {
    pub status: u16,
    pub message: String,
}

impl fmt::Display for MapRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

/// Why an admin call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminError {
    NotFound(String),
    BadRequest(String),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::NotFound(m) => write!(f, "not found: {m}"),
            AdminError::BadRequest(m) => write!(f, "bad request: {m}"),
        }
    }
}

impl std::error::Error for AdminError {}

/// A node as the admin API lists it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeInfo {
    pub id: NodeId,
    pub stable_id: String,
    /// MagicDNS name with trailing dot.
    pub name: String,
    pub hostname: String,
    pub node_key: String,
    pub machine_key: String,
    pub disco_key: String,
    pub addresses: Vec<IpPrefix>,
    pub endpoints: Vec<SocketAddr>,
    pub online: bool,
    pub expired: bool,
    /// RFC 3339; absent if the key never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_expiry: Option<String>,
    pub ephemeral: bool,
    pub advertised_routes: Vec<IpPrefix>,
    pub approved_routes: Vec<IpPrefix>,
    pub primary_routes: Vec<IpPrefix>,
    pub allowed_ips: Vec<IpPrefix>,
    pub cap: CapabilityVersion,
}

/// A pending interactive login as the admin API lists it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PendingInfo {
    pub id: String,
    pub auth_url: String,
    pub hostname: String,
    pub node_key: String,
}

/// The whole tailnet.
pub struct Tailnet {
    settings: TailnetSettings,
    nodes: BTreeMap<NodeId, NodeRecord>,
    next_node_id: NodeId,
    auth_keys: BTreeMap<String, AuthKey>,
    /// Keyed by login ID, which starts with a sequence number: oldest first.
    pending: BTreeMap<String, PendingLogin>,
    next_login_seq: u64,
    /// Addresses stay with a node key (and a machine key) across removal and
    /// re-registration.
    index_by_node_key: HashMap<NodePublic, u32>,
    index_by_machine: HashMap<MachinePublic, u32>,
    next_addr_index: u32,
    dns_config: DnsConfig,
    derp_map: DerpMap,
    packet_filter: Vec<FilterRule>,
    user: UserProfile,
}

/// Random hex, from the OS random source (via the control crate's key generator).
pub fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        for &b in ringscale_control::noise::generate_private_key().expose_secret_bytes() {
            if out.len() < bytes * 2 {
                out.push_str(&format!("{b:02x}"));
            }
        }
    }
    out
}

/// A hostname made into a DNS label: lower case, `[a-z0-9-]`, at most 63 bytes.
pub fn dns_label(hostname: &str) -> String {
    let mut label: String = hostname
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    label = label.trim_matches('-').to_string();
    label.truncate(63);
    let label = label.trim_end_matches('-').to_string();
    if label.is_empty() {
        "node".into()
    } else {
        label
    }
}

fn hostname_of(req: &RegisterRequest) -> &str {
    req.hostinfo.as_ref().map_or("", |h| h.hostname.as_str())
}

impl Tailnet {
    pub fn new(settings: TailnetSettings) -> Tailnet {
        let dns_config = default_dns_config(&settings.domain);
        let user = UserProfile {
            id: USER_ID,
            login_name: format!("tester@{}", settings.domain),
            display_name: "Test User".into(),
            ..UserProfile::default()
        };
        Tailnet {
            settings,
            nodes: BTreeMap::new(),
            next_node_id: 1,
            auth_keys: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_login_seq: 1,
            index_by_node_key: HashMap::new(),
            index_by_machine: HashMap::new(),
            next_addr_index: 1,
            dns_config,
            derp_map: empty_derp_map(),
            packet_filter: allow_all_filter(),
            user,
        }
    }

    pub fn settings(&self) -> &TailnetSettings {
        &self.settings
    }

    // ----- pre-auth keys -------------------------------------------------------------

    /// Creates a pre-auth key; `key` None picks a random `tskey-auth-…` one.
    pub fn create_auth_key(
        &mut self,
        key: Option<String>,
        reusable: bool,
        ephemeral: bool,
    ) -> Result<AuthKey, AdminError> {
        let key = key.unwrap_or_else(|| format!("tskey-auth-{}", random_hex(16)));
        if key.is_empty() || key.len() > 256 || key.chars().any(|c| c.is_control()) {
            return Err(AdminError::BadRequest(
                "an auth key must be 1-256 printable characters".into(),
            ));
        }
        let record = AuthKey {
            key: key.clone(),
            reusable,
            ephemeral,
            used_by: None,
        };
        self.auth_keys.insert(key, record.clone());
        Ok(record)
    }

    pub fn auth_keys(&self) -> Vec<AuthKey> {
        self.auth_keys.values().cloned().collect()
    }

    /// Checks `key` for `node_key` and consumes it if single-use. Returns whether it
    /// makes nodes ephemeral.
    fn use_auth_key(&mut self, key: &str, node_key: &NodePublic) -> Result<bool, String> {
        let Some(record) = self.auth_keys.get_mut(key) else {
            return Err("invalid auth key: unknown key".into());
        };
        if !record.reusable {
            let me = node_key.to_string();
            match &record.used_by {
                Some(user) if *user != me => {
                    return Err("invalid auth key: single-use key already used".into())
                }
                _ => record.used_by = Some(me),
            }
        }
        Ok(record.ephemeral)
    }

    // ----- registration --------------------------------------------------------------

    fn node_by_key(&self, key: &NodePublic) -> Option<NodeId> {
        if key.is_zero() {
            return None;
        }
        self.nodes
            .values()
            .find(|n| n.node_key == *key)
            .map(|n| n.id)
    }

    fn node_by_machine(&self, machine: &MachinePublic) -> Option<NodeId> {
        self.nodes
            .values()
            .find(|n| n.machine == *machine)
            .map(|n| n.id)
    }

    fn success(&self) -> RegisterResponse {
        RegisterResponse {
            user: User {
                id: USER_ID,
                display_name: self.user.display_name.clone(),
                ..User::default()
            },
            login: Login {
                id: USER_ID,
                provider: "testcontrol".into(),
                login_name: self.user.login_name.clone(),
                display_name: self.user.display_name.clone(),
                ..Login::default()
            },
            machine_authorized: true,
            ..RegisterResponse::default()
        }
    }

    fn refusal(message: impl Into<String>) -> RegisterResponse {
        RegisterResponse {
            error: message.into(),
            ..RegisterResponse::default()
        }
    }

    fn key_expired() -> RegisterResponse {
        RegisterResponse {
            node_key_expired: true,
            ..RegisterResponse::default()
        }
    }

    fn auth_url(&self, id: &str) -> String {
        format!(
            "{}/register/{id}",
            self.settings.auth_url_base.trim_end_matches('/')
        )
    }

    /// Handles `/machine/register` from the client whose Noise machine key is `machine`.
    ///
    /// In order: logout (Expiry in the past); a known node key (its machine must match;
    /// an expired key gets `NodeKeyExpired` unless a valid auth key re-authorises it);
    /// rotation (`OldNodeKey` names a known unexpired node of this machine); then a
    /// pre-auth key, a follow-up of an interactive login, or a new interactive login.
    pub fn register(
        &mut self,
        machine: MachinePublic,
        req: &RegisterRequest,
        now: GoTime,
    ) -> RegisterAction {
        use RegisterAction::Respond;
        if req.node_key.is_zero() {
            return Respond(Self::refusal("register request lacks a NodeKey"));
        }
        let auth_key = req
            .auth
            .as_ref()
            .map(|a| a.auth_key.as_str())
            .filter(|k| !k.is_empty());

        if !req.expiry.is_zero() && req.expiry <= now {
            return Respond(self.logout(machine, &req.node_key, now));
        }

        if let Some(id) = self.node_by_key(&req.node_key) {
            let node = &self.nodes[&id];
            if node.machine != machine {
                log::warn!(
                    "register: {} belongs to node {id} of another machine; refused",
                    req.node_key
                );
                return Respond(Self::refusal("node key belongs to another machine"));
            }
            if !node.is_expired(now) {
                // Already registered (a restart, or a retry): report the current state.
                if let Some(h) = &req.hostinfo {
                    let h = h.clone();
                    self.set_hostinfo(id, h);
                }
                return Respond(self.success());
            }
            return match auth_key {
                Some(key) => match self.use_auth_key(key, &req.node_key) {
                    Ok(_) => {
                        let node = self.nodes.get_mut(&id).expect("node exists");
                        node.key_expiry = requested_expiry(req, now);
                        log::info!("register: node {id} re-authorised with an auth key");
                        Respond(self.success())
                    }
                    Err(e) => Respond(Self::refusal(e)),
                },
                None => {
                    log::info!("register: node {id} presented its expired key");
                    Respond(Self::key_expired())
                }
            };
        }

        // Rotation: the old key names a node of this machine.
        let old_node = self
            .node_by_key(&req.old_node_key)
            .filter(|id| self.nodes[id].machine == machine);
        if let Some(id) = old_node {
            let expired = self.nodes[&id].is_expired(now);
            if !expired || auth_key.is_some() {
                if let Some(key) = auth_key {
                    if let Err(e) = self.use_auth_key(key, &req.node_key) {
                        return Respond(Self::refusal(e));
                    }
                }
                let node = self.nodes.get_mut(&id).expect("node exists");
                log::info!(
                    "register: node {id} rotated its key {} -> {}",
                    node.node_key,
                    req.node_key
                );
                node.node_key = req.node_key;
                if expired {
                    node.key_expiry = requested_expiry(req, now);
                }
                let index = node.addr_index;
                self.index_by_node_key.insert(req.node_key, index);
                if let Some(h) = &req.hostinfo {
                    self.set_hostinfo(id, h.clone());
                }
                return Respond(self.success());
            }
        }

        if let Some(key) = auth_key {
            return match self.use_auth_key(key, &req.node_key) {
                Ok(key_ephemeral) => {
                    let id = self.complete_registration(
                        machine,
                        req,
                        old_node,
                        key_ephemeral || req.ephemeral,
                        now,
                    );
                    log::info!(
                        "register: node {id} ({}) registered with an auth key",
                        self.nodes[&id].given_name
                    );
                    Respond(self.success())
                }
                Err(e) => {
                    log::warn!("register: {}: {e}", req.node_key);
                    Respond(Self::refusal(e))
                }
            };
        }

        if !req.followup.is_empty() {
            let id = req
                .followup
                .rsplit_once("/register/")
                .map(|(_, id)| id.to_string())
                .filter(|id| self.pending.contains_key(id));
            match id {
                Some(id) if self.pending[&id].machine == machine => {
                    return RegisterAction::Wait { id };
                }
                _ => log::info!(
                    "register: follow-up of an unknown login {:?}; starting a new one",
                    req.followup
                ),
            }
        }

        // A new interactive login (or the same one again for the same node key).
        if let Some((id, _)) = self
            .pending
            .iter()
            .find(|(_, p)| p.node_key == req.node_key && p.machine == machine)
        {
            let url = self.auth_url(id);
            return Respond(RegisterResponse {
                auth_url: url,
                ..RegisterResponse::default()
            });
        }
        // Logins nobody visits must not pile up without bound (a client can ask for
        // any number): drop the oldest beyond the cap.
        while self.pending.len() >= MAX_PENDING_LOGINS {
            let oldest = self.pending.keys().next().cloned().expect("non-empty");
            self.pending.remove(&oldest);
        }
        let id = format!("{:012x}{}", self.next_login_seq, random_hex(8));
        self.next_login_seq += 1;
        self.pending.insert(
            id.clone(),
            PendingLogin {
                machine,
                node_key: req.node_key,
                request: req.clone(),
                reauth_node: old_node,
                completed: None,
            },
        );
        let url = self.auth_url(&id);
        log::info!(
            "register: {} ({}) must log in interactively: {url}",
            req.node_key,
            hostname_of(req)
        );
        Respond(RegisterResponse {
            auth_url: url,
            ..RegisterResponse::default()
        })
    }

    /// Where a waiting follow-up stands.
    pub fn followup(&self, id: &str) -> FollowupState {
        match self.pending.get(id) {
            None => FollowupState::Unknown,
            Some(p) => match p.completed {
                Some(node) if self.nodes.contains_key(&node) => FollowupState::Done(self.success()),
                Some(_) => FollowupState::Unknown,
                None => FollowupState::Pending {
                    auth_url: self.auth_url(id),
                },
            },
        }
    }

    /// "Visiting" the AuthURL: approves the pending login `id` and registers its node.
    pub fn approve_login(&mut self, id: &str, now: GoTime) -> Result<NodeId, AdminError> {
        let Some(pending) = self.pending.get(id).cloned() else {
            return Err(AdminError::NotFound(format!("no pending login {id:?}")));
        };
        if let Some(node) = pending.completed {
            return Ok(node);
        }
        let node = self.complete_registration(
            pending.machine,
            &pending.request,
            pending.reauth_node,
            pending.request.ephemeral,
            now,
        );
        if let Some(p) = self.pending.get_mut(id) {
            p.completed = Some(node);
        }
        log::info!("login {id} approved: node {node}");
        Ok(node)
    }

    pub fn pending_logins(&self) -> Vec<PendingInfo> {
        self.pending
            .iter()
            .filter(|(_, p)| p.completed.is_none())
            .map(|(id, p)| PendingInfo {
                id: id.clone(),
                auth_url: self.auth_url(id),
                hostname: hostname_of(&p.request).to_string(),
                node_key: p.node_key.to_string(),
            })
            .collect()
    }

    /// Registers (or re-registers) the node of an authorised request. An existing node of
    /// the same machine (or the one being re-authorised) is kept, with its addresses, and
    /// takes the new node key.
    fn complete_registration(
        &mut self,
        machine: MachinePublic,
        req: &RegisterRequest,
        existing: Option<NodeId>,
        ephemeral: bool,
        now: GoTime,
    ) -> NodeId {
        let existing = existing
            .or_else(|| self.node_by_key(&req.node_key))
            .or_else(|| self.node_by_machine(&machine));
        let hostinfo = req.hostinfo.clone().unwrap_or_default();
        let id = match existing {
            Some(id) => {
                let node = self.nodes.get_mut(&id).expect("node exists");
                node.node_key = req.node_key;
                node.key_expiry = requested_expiry(req, now);
                node.ephemeral = ephemeral;
                let index = node.addr_index;
                self.index_by_node_key.insert(req.node_key, index);
                id
            }
            None => {
                let id = self.next_node_id;
                self.next_node_id += 1;
                let addr_index = self.allocate_index(&req.node_key, &machine);
                self.index_by_node_key.insert(req.node_key, addr_index);
                self.index_by_machine.insert(machine, addr_index);
                let given_name = self.unique_name(&dns_label(&hostinfo.hostname), id);
                self.nodes.insert(
                    id,
                    NodeRecord {
                        id,
                        machine,
                        node_key: req.node_key,
                        disco_key: Default::default(),
                        given_name,
                        addr_index,
                        hostinfo: Hostinfo::default(),
                        endpoints: Vec::new(),
                        created: now,
                        key_expiry: requested_expiry(req, now),
                        ephemeral,
                        approved_routes: BTreeSet::new(),
                        map_sessions: 0,
                        last_seen: None,
                        cap: req.version,
                        capabilities: Vec::new(),
                    },
                );
                id
            }
        };
        self.nodes.get_mut(&id).expect("node exists").cap = req.version;
        self.set_hostinfo(id, hostinfo);
        id
    }

    fn allocate_index(&mut self, node_key: &NodePublic, machine: &MachinePublic) -> u32 {
        let in_use: BTreeSet<u32> = self.nodes.values().map(|n| n.addr_index).collect();
        for remembered in [
            self.index_by_node_key.get(node_key),
            self.index_by_machine.get(machine),
        ]
        .into_iter()
        .flatten()
        {
            if !in_use.contains(remembered) {
                return *remembered;
            }
        }
        let remembered: BTreeSet<u32> = self
            .index_by_node_key
            .values()
            .chain(self.index_by_machine.values())
            .copied()
            .collect();
        loop {
            let index = self.next_addr_index;
            // Wrapping would reuse addresses; a test tailnet never gets near 4M nodes.
            self.next_addr_index = if index >= MAX_ADDR_INDEX {
                1
            } else {
                index + 1
            };
            if !index_is_reserved(index) && !in_use.contains(&index) && !remembered.contains(&index)
            {
                return index;
            }
        }
    }

    fn unique_name(&self, label: &str, id: NodeId) -> String {
        let taken = |name: &str| {
            self.nodes
                .values()
                .any(|n| n.id != id && n.given_name == name)
        };
        if !taken(label) {
            return label.to_string();
        }
        let mut name = format!("{label}-{id}");
        let mut n = 1;
        while taken(&name) {
            name = format!("{label}-{id}-{n}");
            n += 1;
        }
        name
    }

    fn logout(
        &mut self,
        machine: MachinePublic,
        node_key: &NodePublic,
        now: GoTime,
    ) -> RegisterResponse {
        match self.node_by_key(node_key) {
            Some(id) if self.nodes[&id].machine == machine => {
                if self.nodes[&id].ephemeral {
                    self.nodes.remove(&id);
                    log::info!("logout: ephemeral node {id} removed");
                } else {
                    self.nodes.get_mut(&id).expect("node exists").key_expiry = now;
                    log::info!("logout: node {id} expired");
                }
            }
            Some(id) => {
                log::warn!("logout of node {id} from another machine refused");
                return Self::refusal("node key belongs to another machine");
            }
            None => log::info!("logout of unknown node key {node_key}"),
        }
        // As Headscale answers a logout.
        Self::key_expired()
    }

    /// Replaces the node's Hostinfo (keeping NetInfo if the new one has none) and
    /// auto-approves newly advertised routes if configured.
    fn set_hostinfo(&mut self, id: NodeId, mut hostinfo: Hostinfo) {
        let settings = self.settings.clone();
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if hostinfo.net_info.is_none() {
            hostinfo.net_info = node.hostinfo.net_info.take();
        }
        node.hostinfo = hostinfo;
        for route in node.advertised_routes() {
            let approve = if route.is_exit_route() {
                settings.auto_approve_exit_nodes
            } else {
                settings.auto_approve_routes
            };
            if approve && node.approved_routes.insert(route) {
                log::info!("node {id}: route {route} auto-approved");
            }
        }
    }

    // ----- map requests --------------------------------------------------------------

    /// Applies a `/machine/map` request from `machine`: checks the node, then takes its
    /// disco key, endpoints (if any) and Hostinfo (if any). Returns the node's ID.
    pub fn map_request(
        &mut self,
        machine: MachinePublic,
        req: &MapRequest,
    ) -> Result<NodeId, MapRefused> {
        let Some(id) = self.node_by_key(&req.node_key) else {
            return Err(MapRefused {
                status: 403,
                message: format!("node key {} is not registered", req.node_key),
            });
        };
        let node = self.nodes.get_mut(&id).expect("node exists");
        if node.machine != machine {
            return Err(MapRefused {
                status: 403,
                message: format!("node key {} belongs to another machine", req.node_key),
            });
        }
        if !req.disco_key.is_zero() {
            node.disco_key = req.disco_key;
        }
        if !req.endpoints.is_empty() {
            node.endpoints = req.endpoints.clone();
        }
        if req.version > 0 {
            node.cap = req.version;
        }
        if let Some(h) = &req.hostinfo {
            self.set_hostinfo(id, h.clone());
        }
        Ok(id)
    }

    /// A streaming map session of `id` started: the node is online.
    pub fn session_started(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.map_sessions += 1;
            node.last_seen = None;
        }
    }

    /// A streaming map session of `id` ended; the node goes offline with its last one.
    pub fn session_ended(&mut self, id: NodeId, now: GoTime) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.map_sessions = node.map_sessions.saturating_sub(1);
            if node.map_sessions == 0 {
                node.last_seen = Some(now);
            }
        }
    }

    /// Removes ephemeral nodes offline for at least `idle`. Returns the removed IDs.
    pub fn reap_ephemeral(&mut self, now: GoTime, idle: Duration) -> Vec<NodeId> {
        let idle_secs = i64::try_from(idle.as_secs()).unwrap_or(i64::MAX);
        let gone: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.ephemeral && !n.online())
            .filter(|n| {
                let since = n.last_seen.unwrap_or(n.created);
                now.unix_secs().saturating_sub(since.unix_secs()) >= idle_secs
            })
            .map(|n| n.id)
            .collect();
        for id in &gone {
            self.nodes.remove(id);
            log::info!("ephemeral node {id} removed after being offline for {idle:?}");
        }
        gone
    }

    // ----- what nodes see ------------------------------------------------------------

    /// For each subnet route, the node that serves it: among nodes (unexpired) with the
    /// route effective, online ones first, then the lowest ID (stable failover).
    fn primary_routes(&self, now: GoTime) -> BTreeMap<IpPrefix, NodeId> {
        let mut candidates: Vec<&NodeRecord> =
            self.nodes.values().filter(|n| !n.is_expired(now)).collect();
        candidates.sort_by_key(|n| (!n.online(), n.id));
        let mut primaries = BTreeMap::new();
        for node in candidates {
            for route in node.effective_routes() {
                if !route.is_exit_route() {
                    primaries.entry(route).or_insert(node.id);
                }
            }
        }
        primaries
    }

    fn node_view(
        &self,
        node: &NodeRecord,
        primaries: &BTreeMap<IpPrefix, NodeId>,
        now: GoTime,
    ) -> Node {
        let addresses = node.addresses().to_vec();
        let primary_routes: Vec<IpPrefix> = primaries
            .iter()
            .filter(|(_, owner)| **owner == node.id)
            .map(|(route, _)| *route)
            .collect();
        let mut allowed_ips = addresses.clone();
        allowed_ips.extend(primary_routes.iter().copied());
        allowed_ips.extend(
            node.effective_routes()
                .into_iter()
                .filter(|r| r.is_exit_route()),
        );
        let home_derp = node
            .hostinfo
            .net_info
            .as_ref()
            .map_or(0, |n| n.preferred_derp);
        let mut hostinfo = node.hostinfo.clone();
        if hostinfo.hostname.is_empty() {
            hostinfo.hostname = node.given_name.clone();
        }
        Node {
            id: node.id,
            stable_id: format!("nTEST{}CNTRL", node.id),
            name: format!("{}.{}.", node.given_name, self.settings.domain),
            user: USER_ID,
            key: node.node_key,
            key_expiry: node.key_expiry,
            machine: node.machine,
            disco_key: node.disco_key,
            addresses,
            allowed_ips: Some(allowed_ips),
            endpoints: node.endpoints.clone(),
            // The legacy form too, for clients older than capability version 111.
            legacy_derp_string: if home_derp > 0 {
                format!("{DERP_MAGIC_IP}:{home_derp}")
            } else {
                String::new()
            },
            home_derp,
            hostinfo: Some(hostinfo),
            created: node.created,
            cap: node.cap,
            primary_routes,
            last_seen: if node.online() { None } else { node.last_seen },
            online: Some(node.online()),
            machine_authorized: true,
            expired: node.is_expired(now),
            cap_map: node
                .capabilities
                .iter()
                .map(|c| (c.clone(), None))
                .collect(),
            ..Node::default()
        }
    }

    /// Everything node `id` is told about the tailnet right now; None if the node is gone.
    pub fn session_view(&self, id: NodeId, now: GoTime) -> Option<SessionView> {
        let me = self.nodes.get(&id)?;
        let primaries = self.primary_routes(now);
        let peers = self
            .nodes
            .values()
            .filter(|n| n.id != id)
            .map(|n| (n.id, self.node_view(n, &primaries, now)))
            .collect();
        Some(SessionView {
            self_node: self.node_view(me, &primaries, now),
            peers,
            dns_config: self.dns_config.clone(),
            derp_map: self.derp_map.clone(),
            packet_filter: self.packet_filter.clone(),
            domain: self.settings.domain.clone(),
            user_profiles: vec![self.user.clone()],
        })
    }

    // ----- admin ---------------------------------------------------------------------

    /// Finds a node by numeric ID, `nodekey:…`, stable ID, or name (given or hostname).
    pub fn find_node(&self, selector: &str) -> Result<NodeId, AdminError> {
        let selector = selector.trim();
        let found = if let Ok(id) = selector.parse::<NodeId>() {
            self.nodes.contains_key(&id).then_some(id)
        } else if let Ok(key) = selector.parse::<NodePublic>() {
            self.node_by_key(&key)
        } else {
            let name = selector.trim_end_matches('.');
            self.nodes
                .values()
                .find(|n| {
                    n.given_name == name
                        || format!("nTEST{}CNTRL", n.id) == name
                        || format!("{}.{}", n.given_name, self.settings.domain) == name
                })
                .or_else(|| self.nodes.values().find(|n| n.hostinfo.hostname == name))
                .map(|n| n.id)
        };
        found.ok_or_else(|| AdminError::NotFound(format!("no node {selector:?}")))
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    pub fn nodes(&self, now: GoTime) -> Vec<NodeInfo> {
        let primaries = self.primary_routes(now);
        self.nodes
            .values()
            .map(|n| {
                let view = self.node_view(n, &primaries, now);
                NodeInfo {
                    id: n.id,
                    stable_id: view.stable_id.clone(),
                    name: view.name.clone(),
                    hostname: n.hostinfo.hostname.clone(),
                    node_key: n.node_key.to_string(),
                    machine_key: n.machine.to_string(),
                    disco_key: n.disco_key.to_string(),
                    addresses: view.addresses.clone(),
                    endpoints: n.endpoints.clone(),
                    online: n.online(),
                    expired: n.is_expired(now),
                    key_expiry: (!n.key_expiry.is_zero()).then(|| n.key_expiry.to_string()),
                    ephemeral: n.ephemeral,
                    advertised_routes: n.advertised_routes().into_iter().collect(),
                    approved_routes: n.approved_routes.iter().copied().collect(),
                    primary_routes: view.primary_routes.clone(),
                    allowed_ips: view.allowed_ips.clone().unwrap_or_default(),
                    cap: n.cap,
                }
            })
            .collect()
    }

    pub fn remove_node(&mut self, id: NodeId) -> Result<(), AdminError> {
        self.nodes
            .remove(&id)
            .map(|n| log::info!("node {id} ({}) removed", n.given_name))
            .ok_or_else(|| AdminError::NotFound(format!("no node {id}")))
    }

    /// Sets the node's key expiry (a time at or before `now` expires it at once).
    pub fn set_key_expiry(&mut self, id: NodeId, at: GoTime) -> Result<(), AdminError> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| AdminError::NotFound(format!("no node {id}")))?;
        node.key_expiry = at;
        log::info!("node {id}: key expiry set to {at}");
        Ok(())
    }

    /// Replaces the node's approved routes.
    pub fn set_approved_routes(
        &mut self,
        id: NodeId,
        routes: &[IpPrefix],
    ) -> Result<(), AdminError> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| AdminError::NotFound(format!("no node {id}")))?;
        node.approved_routes = routes.iter().map(|r| r.masked()).collect();
        log::info!("node {id}: approved routes {:?}", node.approved_routes);
        Ok(())
    }

    /// Replaces the node's capabilities.
    pub fn set_capabilities(&mut self, id: NodeId, caps: &[&str]) -> Result<(), AdminError> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| AdminError::NotFound(format!("no node {id}")))?;
        node.capabilities = caps.iter().map(|c| c.to_string()).collect();
        log::info!("node {id}: capabilities {:?}", node.capabilities);
        Ok(())
    }

    pub fn set_packet_filter(&mut self, rules: Vec<FilterRule>) {
        log::info!("packet filter replaced ({} rules)", rules.len());
        self.packet_filter = rules;
    }

    pub fn set_dns_config(&mut self, dns: DnsConfig) {
        log::info!("DNS configuration replaced");
        self.dns_config = dns;
    }

    pub fn set_derp_map(&mut self, derp: DerpMap) {
        log::info!(
            "DERP map replaced ({} regions)",
            derp.regions.as_ref().map_or(0, |r| r.len())
        );
        self.derp_map = derp;
    }

    pub fn packet_filter(&self) -> &[FilterRule] {
        &self.packet_filter
    }
}

/// The key expiry a register request asks for: zero (never) unless it names a future time.
fn requested_expiry(req: &RegisterRequest, now: GoTime) -> GoTime {
    if !req.expiry.is_zero() && req.expiry > now {
        req.expiry
    } else {
        GoTime::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringscale_control::tailcfg::{PrivateKey, RegisterResponseAuth};

    fn tailnet() -> Tailnet {
        let mut t = Tailnet::new(TailnetSettings {
            domain: "tailnet.test".into(),
            auth_url_base: "http://10.0.0.1:8080".into(),
            auto_approve_routes: false,
            auto_approve_exit_nodes: true,
        });
        t.create_auth_key(Some("reusable".into()), true, false)
            .unwrap();
        t.create_auth_key(Some("once".into()), false, false)
            .unwrap();
        t
    }

    fn now() -> GoTime {
        GoTime::from_unix(1_800_000_000, 0)
    }

    fn request(node_key: NodePublic, auth: Option<&str>, hostname: &str) -> RegisterRequest {
        RegisterRequest {
            version: 130,
            node_key,
            auth: auth.map(|k| RegisterResponseAuth {
                auth_key: k.into(),
                ..Default::default()
            }),
            hostinfo: Some(Hostinfo {
                hostname: hostname.into(),
                ..Hostinfo::default()
            }),
            ..RegisterRequest::default()
        }
    }

    fn respond(action: RegisterAction) -> RegisterResponse {
        match action {
            RegisterAction::Respond(r) => r,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn keys() -> (MachinePublic, NodePublic) {
        (
            PrivateKey::generate().machine_public(),
            PrivateKey::generate().node_public(),
        )
    }

    #[test]
    fn single_use_key_serves_one_node_key_only() {
        let mut t = tailnet();
        let (m1, k1) = keys();
        let (m2, k2) = keys();
        let r = respond(t.register(m1, &request(k1, Some("once"), "a"), now()));
        assert!(r.machine_authorized && r.error.is_empty(), "{r:?}");
        // The same node retrying is fine; another node is refused.
        let r = respond(t.register(m1, &request(k1, Some("once"), "a"), now()));
        assert!(r.machine_authorized, "{r:?}");
        let r = respond(t.register(m2, &request(k2, Some("once"), "b"), now()));
        assert!(r.error.contains("already used"), "{r:?}");
        let r = respond(t.register(m2, &request(k2, Some("nope"), "b"), now()));
        assert!(r.error.contains("invalid auth key"), "{r:?}");
        assert_eq!(t.nodes(now()).len(), 1);
    }

    #[test]
    fn addresses_are_unique_in_range_and_stable_per_node_key() {
        let mut t = tailnet();
        let mut seen = BTreeSet::new();
        let mut first = None;
        for i in 0..300 {
            let (m, k) = keys();
            respond(t.register(m, &request(k, Some("reusable"), &format!("h{i}")), now()));
            let id = t.find_node(&k.to_string()).unwrap();
            let addrs = t.node(id).unwrap().addresses();
            assert!(ringscale_control::tailcfg::is_tailscale_ip(addrs[0].addr()));
            assert!(ringscale_control::tailcfg::is_tailscale_ip(addrs[1].addr()));
            assert!(seen.insert(addrs[0]), "{addrs:?} handed out twice");
            assert!(seen.insert(addrs[1]));
            let o = match addrs[0].addr() {
                IpAddr::V4(a) => a.octets(),
                _ => unreachable!(),
            };
            assert!(o[3] != 0 && o[3] != 255, "{addrs:?}");
            if i == 0 {
                first = Some((m, k, id, addrs));
            }
        }
        // Removed, then registered again with the same node key: same addresses.
        let (m, k, id, addrs) = first.unwrap();
        t.remove_node(id).unwrap();
        respond(t.register(m, &request(k, Some("reusable"), "h0"), now()));
        let again = t.find_node(&k.to_string()).unwrap();
        assert_ne!(again, id);
        assert_eq!(t.node(again).unwrap().addresses(), addrs);
    }

    #[test]
    fn rotation_logout_and_expiry() {
        let mut t = tailnet();
        let (m, k1) = keys();
        respond(t.register(m, &request(k1, Some("reusable"), "a"), now()));
        let id = t.find_node("a").unwrap();
        let addrs = t.node(id).unwrap().addresses();

        // Rotation without auth: OldNodeKey names our unexpired node.
        let k2 = PrivateKey::generate().node_public();
        let mut rotate = request(k2, None, "a");
        rotate.old_node_key = k1;
        assert!(respond(t.register(m, &rotate, now())).machine_authorized);
        assert_eq!(t.find_node(&k2.to_string()), Ok(id));
        assert!(t.find_node(&k1.to_string()).is_err());
        assert_eq!(t.node(id).unwrap().addresses(), addrs);
        // Another machine cannot rotate or use our key.
        let (other, k3) = keys();
        let mut steal = request(k3, None, "x");
        steal.old_node_key = k2;
        assert!(!respond(t.register(other, &steal, now()))
            .auth_url
            .is_empty());
        assert!(!respond(t.register(other, &request(k2, None, "x"), now()))
            .error
            .is_empty());

        // Logout: Expiry in the past.
        let mut logout = request(k2, None, "a");
        logout.expiry = GoTime::from_unix(123, 0);
        assert!(respond(t.register(m, &logout, now())).node_key_expired);
        assert!(t.node(id).unwrap().is_expired(now()));
        // The expired key is told so; a rotation then needs a login.
        assert!(respond(t.register(m, &request(k2, None, "a"), now())).node_key_expired);
        let k4 = PrivateKey::generate().node_public();
        let mut relogin = request(k4, None, "a");
        relogin.old_node_key = k2;
        let r = respond(t.register(m, &relogin, now()));
        assert!(
            r.auth_url.starts_with("http://10.0.0.1:8080/register/"),
            "{r:?}"
        );
        let login = r.auth_url.rsplit('/').next().unwrap().to_string();
        assert_eq!(t.approve_login(&login, now()), Ok(id));
        assert_eq!(t.find_node(&k4.to_string()), Ok(id));
        assert!(!t.node(id).unwrap().is_expired(now()));
        assert_eq!(t.node(id).unwrap().addresses(), addrs);

        // Admin expiry.
        t.set_key_expiry(id, now()).unwrap();
        assert!(respond(t.register(m, &request(k4, None, "a"), now())).node_key_expired);
        let view = t.session_view(id, now()).unwrap();
        assert!(view.self_node.expired);
    }

    #[test]
    fn interactive_login_waits_for_the_visit() {
        let mut t = tailnet();
        let (m, k) = keys();
        let r = respond(t.register(m, &request(k, None, "web"), now()));
        let url = r.auth_url.clone();
        assert!(url.starts_with("http://10.0.0.1:8080/register/"), "{r:?}");
        // Asking again gives the same URL.
        assert_eq!(
            respond(t.register(m, &request(k, None, "web"), now())).auth_url,
            url
        );
        let mut follow = request(k, None, "web");
        follow.followup = url.clone();
        let id = match t.register(m, &follow, now()) {
            RegisterAction::Wait { id } => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(t.followup(&id), FollowupState::Pending { auth_url: url });
        assert_eq!(t.pending_logins().len(), 1);
        let node = t.approve_login(&id, now()).unwrap();
        assert!(matches!(t.followup(&id), FollowupState::Done(r) if r.machine_authorized));
        assert!(t.pending_logins().is_empty());
        assert_eq!(t.find_node("web"), Ok(node));
        // A follow-up of an unknown login starts a new one.
        let (m2, k2) = keys();
        let mut stale = request(k2, None, "other");
        stale.followup = "http://10.0.0.1:8080/register/doesnotexist".into();
        assert!(!respond(t.register(m2, &stale, now())).auth_url.is_empty());
    }

    #[test]
    fn unvisited_logins_are_bounded() {
        let mut t = tailnet();
        let mut first_url = String::new();
        for i in 0..MAX_PENDING_LOGINS + 5 {
            let (m, k) = keys();
            let r = respond(t.register(m, &request(k, None, "x"), now()));
            if i == 0 {
                first_url = r.auth_url;
            }
        }
        let pending = t.pending_logins();
        assert_eq!(pending.len(), MAX_PENDING_LOGINS);
        assert!(
            pending.iter().all(|p| p.auth_url != first_url),
            "the oldest goes first"
        );
    }

    #[test]
    fn routes_need_approval_and_appear_in_allowed_ips() {
        let mut t = tailnet();
        let (m1, k1) = keys();
        let (m2, k2) = keys();
        let mut router = request(k1, Some("reusable"), "router");
        router.hostinfo.as_mut().unwrap().routable_ips = vec![
            "10.9.0.0/24".parse().unwrap(),
            "0.0.0.0/0".parse().unwrap(),
            "::/0".parse().unwrap(),
        ];
        respond(t.register(m1, &router, now()));
        respond(t.register(m2, &request(k2, Some("reusable"), "other"), now()));
        let r = t.find_node("router").unwrap();
        let o = t.find_node("other").unwrap();
        let peer = |t: &Tailnet| t.session_view(o, now()).unwrap().peers[&r].clone();
        // Exit routes auto-approved (setting), the subnet route not yet.
        let allowed = peer(&t).allowed_ips.unwrap();
        assert!(allowed.contains(&"0.0.0.0/0".parse().unwrap()));
        assert!(allowed.contains(&"::/0".parse().unwrap()));
        assert!(!allowed.contains(&"10.9.0.0/24".parse().unwrap()));
        assert!(peer(&t).primary_routes.is_empty());
        t.set_approved_routes(r, &["10.9.0.0/24".parse().unwrap()])
            .unwrap();
        let p = peer(&t);
        assert!(p
            .allowed_ips
            .unwrap()
            .contains(&"10.9.0.0/24".parse().unwrap()));
        assert_eq!(p.primary_routes, vec!["10.9.0.0/24".parse().unwrap()]);
        // Admin approval replaced the set: the exit routes are no longer approved.
        assert!(!peer(&t)
            .allowed_ips
            .unwrap()
            .contains(&"0.0.0.0/0".parse().unwrap()));
    }

    #[test]
    fn hostnames_become_unique_dns_labels() {
        assert_eq!(dns_label("My Laptop!"), "my-laptop");
        assert_eq!(dns_label("---"), "node");
        assert_eq!(dns_label(&"x".repeat(100)).len(), 63);
        let mut t = tailnet();
        for _ in 0..2 {
            let (m, k) = keys();
            respond(t.register(m, &request(k, Some("reusable"), "Twin"), now()));
        }
        let names: Vec<String> = t.nodes(now()).into_iter().map(|n| n.name).collect();
        assert_eq!(names, vec!["twin.tailnet.test.", "twin-2.tailnet.test."]);
    }

    #[test]
    fn ephemeral_nodes_are_reaped_once_offline_long_enough() {
        let mut t = tailnet();
        let (m, k) = keys();
        let mut req = request(k, Some("reusable"), "eph");
        req.ephemeral = true;
        respond(t.register(m, &req, now()));
        let id = t.find_node("eph").unwrap();
        t.session_started(id);
        let later = GoTime::from_unix(now().unix_secs() + 600, 0);
        assert!(t.reap_ephemeral(later, Duration::from_secs(60)).is_empty());
        t.session_ended(id, now());
        assert!(t
            .reap_ephemeral(
                GoTime::from_unix(now().unix_secs() + 30, 0),
                Duration::from_secs(60)
            )
            .is_empty());
        assert_eq!(t.reap_ephemeral(later, Duration::from_secs(60)), vec![id]);
        assert!(t.node(id).is_none());
    }
}
