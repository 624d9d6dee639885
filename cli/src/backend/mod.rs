//! The daemon's backend (Go's LocalBackend): one place that owns the prefs, the login,
//! the state file, the netmap and the engine, and the control task that keeps the node
//! registered and its netmap current. The LocalAPI reads and edits it; the control task
//! ([`control_loop`]) runs the protocol steps from `ringscale_control::client`.

pub mod api;
pub mod control_loop;
pub mod dns;
#[cfg(feature = "tls")]
pub mod doh_https;
pub mod hostinfo;

use ringscale_control::ipn::{EmptyMessage, Notify};
use ringscale_control::netmap::NetMap;
use ringscale_control::prefs::{LoginProfile, MaskedPrefs, Prefs};
use ringscale_control::state::{new_profile_id, StateError, StateStore};
use ringscale_control::tailcfg::{PrivateKey, UserProfile};
use ringscale_dataplane::{Config, Engine};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// The backend's state, as Go's ipn.State.
pub use ringscale_control::ipn::State as BackendState;

/// Mutable state behind one lock; never held across an await.
pub struct Inner {
    pub store: StateStore,
    pub machine_key: PrivateKey,
    pub profile: LoginProfile,
    pub prefs: Prefs,
    pub state: BackendState,
    pub netmap: Option<Arc<NetMap>>,
    /// The last configuration given to the engine, to skip identical reconfigurations.
    pub engine_config: Option<Config>,
    pub auth_url: String,
    /// An auth key for the next registration (from `up --auth-key` or `--config`);
    /// kept in memory only, as Go does.
    pub auth_key: Option<String>,
    /// The persisted node key is not (or no longer) registered: register before polling.
    pub need_register: bool,
    /// Bumped whenever the control task must drop its session and start over (login,
    /// logout, a new control URL, up/down).
    pub generation: u64,
    pub ephemeral: bool,
    pub last_error: String,
    /// A login was asked for (`up` with an auth key, `login`, `--config`): only then
    /// does a node without a registered key register, as Go's backend waits for
    /// `login-interactive` instead of starting a login on its own.
    pub login_requested: bool,
    /// Hostinfo changed since control last saw it (routes, hostname, PeerAPI ports).
    pub hostinfo_dirty: bool,
}

pub struct LocalBackend {
    inner: Mutex<Inner>,
    /// Wakes the control task: prefs or login changed.
    pub wake: tokio::sync::Notify,
    pub bus: broadcast::Sender<Notify>,
    pub engine: Engine,
    /// quad-100's configuration, the host's resolv.conf, the PeerAPI.
    pub dns: dns::Dns,
    /// Disco, DERP and the path each peer takes (runs beside the control task).
    pub paths: Arc<ringscale_magicsock::driver::Paths>,
    /// A key for the engine while logged out, so it never runs with a registered key
    /// that control no longer knows.
    idle_key: PrivateKey,
    /// Table 52, the policy rules and netfilter (issue 8); empty while not running.
    pub router: ringscale_host::Router,
}

#[derive(Debug)]
pub enum BackendError {
    State(StateError),
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::State(e) => write!(f, "{e}"),
        }
    }
}

impl From<StateError> for BackendError {
    fn from(e: StateError) -> Self {
        BackendError::State(e)
    }
}

impl LocalBackend {
    /// Loads the login and prefs from `store` and decides the starting state.
    pub fn new(
        mut store: StateStore,
        engine: Engine,
        ephemeral: bool,
        dns: dns::Dns,
    ) -> Result<LocalBackend, BackendError> {
        let machine_key = store.load_or_create_machine_key()?;
        let (profile, prefs) = match store.current_profile()? {
            Some(p) => p,
            None => {
                let known = store.known_profiles()?;
                let id = new_profile_id(&known);
                let profile = LoginProfile {
                    key: format!("profile-{id}"),
                    id,
                    ..Default::default()
                };
                (profile, Prefs::default())
            }
        };
        let logged_in = prefs.node_private_key().is_some() && !prefs.logged_out;
        let state = match (logged_in, prefs.want_running) {
            (false, _) => BackendState::NeedsLogin,
            (true, false) => BackendState::Stopped,
            (true, true) => BackendState::Starting,
        };
        let (bus, _) = broadcast::channel(256);
        let paths = ringscale_magicsock::driver::Paths::new(&engine);
        // Routes go to table 52 (the router), not main.
        if let Err(e) = engine.leave_routes_to_router() {
            log::warn!("moving routes out of the main table: {e}");
        }
        let router = ringscale_host::Router::new(engine.ifindex());
        Ok(LocalBackend {
            inner: Mutex::new(Inner {
                store,
                machine_key,
                profile,
                prefs,
                state,
                netmap: None,
                engine_config: None,
                auth_url: String::new(),
                auth_key: None,
                need_register: !logged_in,
                generation: 0,
                ephemeral,
                last_error: String::new(),
                hostinfo_dirty: false,
                login_requested: false,
            }),
            wake: tokio::sync::Notify::new(),
            bus,
            engine,
            dns,
            paths,
            idle_key: PrivateKey::generate(),
            router,
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a bug elsewhere; the state is still the
        // best we have, so keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn publish(&self, n: Notify) {
        let _ = self.bus.send(n);
    }

    pub fn set_state(&self, inner: &mut Inner, state: BackendState) {
        if inner.state != state {
            log::info!("state: {} -> {}", inner.state.as_str(), state.as_str());
            inner.state = state;
            self.publish(Notify::state(state));
        }
    }

    /// Persists the current profile and prefs; the store writes only if bytes changed.
    pub fn save(&self, inner: &mut Inner) -> Result<(), BackendError> {
        if inner.ephemeral {
            return Ok(());
        }
        let (profile, prefs) = (inner.profile.clone(), inner.prefs.clone());
        inner.store.save_profile(&profile, &prefs)?;
        Ok(())
    }

    /// Tells the control task to send control our new Hostinfo (a lite map update),
    /// without dropping the map session.
    pub fn hostinfo_changed(&self, inner: &mut Inner) {
        inner.hostinfo_dirty = true;
        self.wake.notify_one();
    }

    /// Tells the control task to start over with the current prefs and login.
    pub fn restart_control(&self, inner: &mut Inner) {
        inner.generation += 1;
        self.wake.notify_one();
    }

    /// Pushes the configuration for the current netmap and prefs into the engine, or an
    /// empty one when not running.
    pub fn reconfigure_engine(&self, inner: &mut Inner) {
        let running = inner.prefs.want_running && inner.state == BackendState::Running;
        if self
            .dns
            .update(inner.netmap.as_ref(), &inner.prefs, running)
        {
            // New PeerAPI ports: control learns them from a lite map update.
            self.hostinfo_changed(inner);
        }
        // The host's interfaces: what "the LAN" is for an exit node and its users.
        let host = ringscale_sys::ifaddrs::interface_addrs().unwrap_or_else(|e| {
            log::warn!("listing interface addresses: {e}");
            Vec::new()
        });
        let cfg = match (
            &inner.netmap,
            inner.prefs.want_running && inner.state == BackendState::Running,
        ) {
            (Some(nm), true) => match ringscale_control::netmap::dataplane_config(nm, &inner.prefs)
            {
                Ok(mut c) => {
                    let mut f =
                        ringscale_control::hostconfig::filter_config(nm, &inner.prefs, &host);
                    // PeerAPI checks its callers itself; Go lets it past the rules.
                    for svc in dns::advertised_services() {
                        use ringscale_dns::dnsmap::{SERVICE_PEERAPI4, SERVICE_PEERAPI6};
                        let v6 = match svc.proto.as_str() {
                            SERVICE_PEERAPI4 => false,
                            SERVICE_PEERAPI6 => true,
                            _ => continue,
                        };
                        for a in nm.self_addresses().iter().filter(|a| a.is_ipv4() != v6) {
                            f.open_tcp.push((a.addr(), svc.port));
                        }
                    }
                    c.filter = Some(f);
                    c
                }
                Err(e) => {
                    log::warn!("netmap gives no data-plane configuration: {e}");
                    return;
                }
            },
            _ => self.idle_config(inner),
        };
        self.apply_router(inner, running, &host);
        if inner.engine_config.as_ref() == Some(&cfg) {
            return;
        }
        if let Err(e) = self.engine.reconfigure(&cfg) {
            log::error!("applying the netmap to the data plane: {e}");
            inner.last_error = e.to_string();
            return;
        }
        log::debug!(
            "data plane: {} peers, {} addresses",
            cfg.peers.len(),
            cfg.addresses.len()
        );
        inner.engine_config = Some(cfg);
    }

    /// Table 52, the policy rules and netfilter for the current netmap and prefs; all
    /// of it removed when not running (`down`, logout).
    fn apply_router(
        &self,
        inner: &mut Inner,
        running: bool,
        host: &[ringscale_sys::ifaddrs::InterfaceAddr],
    ) {
        let rc = match (&inner.netmap, running) {
            (Some(nm), true) => Some(ringscale_control::hostconfig::router_config(
                nm,
                &inner.prefs,
                host,
                self.engine.tun_name(),
                self.engine.port(),
            )),
            _ => None,
        };
        if let Err(e) = self.router.set(rc.as_ref()) {
            inner.last_error = format!("host configuration: {e}");
        }
    }

    /// Removes everything the router put on the host; the daemon calls it on exit.
    pub fn shutdown_host(&self) {
        if let Err(e) = self.router.close() {
            log::warn!("removing host configuration: {e}");
        }
    }

    /// No peers and no addresses: what a stopped or logged-out node forwards.
    pub fn idle_config(&self, inner: &Inner) -> Config {
        let key = inner
            .prefs
            .node_private_key()
            .unwrap_or_else(|| self.idle_key.clone());
        Config {
            private_key: key.0,
            listen_port: 0,
            addresses: Vec::new(),
            mtu: ringscale_dataplane::config::DEFAULT_MTU,
            peers: Vec::new(),
            filter: None,
        }
    }

    /// Applies a prefs edit (LocalAPI PATCH /prefs, `tailscale set`, `up`), persists it,
    /// and makes the control task and the engine follow.
    pub fn edit_prefs(&self, mp: &MaskedPrefs) -> Result<Prefs, BackendError> {
        let mut inner = self.lock();
        let before = inner.prefs.clone();
        inner.prefs.apply_edits(mp);
        // Persisted login is never edited through prefs.
        inner.prefs.persist = before.persist.clone();
        self.save(&mut inner)?;
        self.after_prefs_change(&mut inner, &before);
        let prefs = inner.prefs.clone();
        self.publish(Notify {
            prefs: Some(crate::localapi::sanitized_prefs(prefs.clone())),
            ..Notify::default()
        });
        Ok(prefs)
    }

    pub(crate) fn after_prefs_change(&self, inner: &mut Inner, before: &Prefs) {
        let p = inner.prefs.clone();
        let logged_in = p.node_private_key().is_some() && !p.logged_out;
        if p.control_url != before.control_url && !before.control_url.is_empty() {
            // A different control server means a different login.
            inner.need_register = true;
        }
        match (p.want_running, before.want_running) {
            (false, true) if logged_in => self.set_state(inner, BackendState::Stopped),
            (true, false) if logged_in => self.set_state(inner, BackendState::Starting),
            _ => {}
        }
        let hostinfo_changed = p.hostname != before.hostname
            || p.advertise_routes != before.advertise_routes
            || p.advertise_tags != before.advertise_tags
            || p.shields_up != before.shields_up;
        if p.want_running != before.want_running || p.control_url != before.control_url {
            self.restart_control(inner);
        } else if hostinfo_changed {
            self.hostinfo_changed(inner);
        }
        if p.advertise_routes != before.advertise_routes && !p.advertise_routes.is_empty() {
            // Go's health warning `ip-forwarding-off`, in the log.
            if let Some(w) = crate::localapi::forwarding::check_host() {
                log::warn!("{w}");
            }
        }
        self.reconfigure_engine(inner);
    }

    /// `tailscale up`/`login`: remember the auth key for the next registration and start.
    pub fn start_login(&self, auth_key: Option<String>, force_reauth: bool) {
        let mut inner = self.lock();
        // The auth key is kept for whenever a login is needed (now, or after control
        // forgets the node), but a node that is logged in does not register again just
        // because one was given: `tailscaled --config` with an AuthKey restarts from
        // the state file without a new registration.
        if let Some(k) = auth_key.filter(|k| !k.is_empty()) {
            inner.auth_key = Some(k);
        }
        if force_reauth || inner.prefs.node_private_key().is_none() || inner.prefs.logged_out {
            inner.need_register = true;
            inner.login_requested = true;
        }
        inner.prefs.want_running = true;
        if inner.need_register {
            self.set_state(&mut inner, BackendState::NeedsLogin);
        } else if inner.state != BackendState::Running {
            self.set_state(&mut inner, BackendState::Starting);
        }
        let _ = self.save(&mut inner);
        self.restart_control(&mut inner);
    }

    /// Records a completed registration: the node key becomes the persisted login.
    pub fn commit_login(
        &self,
        node_key: PrivateKey,
        old_key: PrivateKey,
        user: UserProfile,
    ) -> Result<(), BackendError> {
        let mut inner = self.lock();
        let mut persist = inner.prefs.persist.clone().unwrap_or_default();
        persist.private_node_key = node_key;
        persist.old_private_node_key = old_key;
        persist.user_profile = user.clone();
        inner.prefs.persist = Some(persist);
        inner.prefs.logged_out = false;
        inner.prefs.want_running = true;
        inner.profile.user_profile = user.clone();
        inner.profile.name = user.login_name.clone();
        inner.profile.control_url = inner.prefs.control_url.clone();
        inner.need_register = false;
        inner.login_requested = false;
        inner.auth_url.clear();
        inner.auth_key = None;
        self.save(&mut inner)?;
        self.set_state(&mut inner, BackendState::Starting);
        self.publish(Notify {
            login_finished: Some(EmptyMessage {}),
            ..Notify::default()
        });
        Ok(())
    }

    /// Forgets the login locally (after control was told): prefs say logged out, the
    /// profile is deleted, the engine stops forwarding.
    pub fn forget_login(&self) -> Result<(), BackendError> {
        let mut inner = self.lock();
        inner.prefs.want_running = false;
        inner.prefs.logged_out = true;
        inner.prefs.persist = None;
        inner.netmap = None;
        inner.need_register = true;
        inner.login_requested = false;
        inner.auth_key = None;
        if !inner.ephemeral {
            let id = inner.profile.id.clone();
            inner.store.delete_profile(&id)?;
        }
        let known = inner.store.known_profiles()?;
        let id = new_profile_id(&known);
        let control_url = inner.prefs.control_url.clone();
        inner.profile = LoginProfile {
            key: format!("profile-{id}"),
            id,
            ..Default::default()
        };
        // Keep pointing at the same control server, as Go's new profile does.
        inner.prefs = Prefs {
            control_url,
            logged_out: true,
            ..Prefs::default()
        };
        self.set_state(&mut inner, BackendState::NeedsLogin);
        self.reconfigure_engine(&mut inner);
        self.restart_control(&mut inner);
        Ok(())
    }
}
