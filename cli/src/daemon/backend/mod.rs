//! The daemon's backend (Go's LocalBackend): one place that owns the prefs, the login,
//! the state file, the netmap and the engine, and the control task that keeps the node
//! registered and its netmap current. The LocalAPI reads and edits it; the control task
//! ([`control_loop`]) runs the protocol steps from `ringscale_control::client`. What
//! the netmap and prefs mean for the host (engine, routes, rules, netfilter, resolv.conf)
//! is applied by the [`reconciler`] thread; nothing here waits for it.

pub mod api;
pub mod control_loop;
pub mod dns;
#[cfg(feature = "tls")]
pub mod doh_https;
pub mod hostinfo;
pub mod reconciler;

use ringscale_control::ipn::{EmptyMessage, Notify};
use ringscale_control::netmap::NetMap;
use ringscale_control::prefs::{LoginProfile, MaskedPrefs, Prefs};
use ringscale_control::state::{new_profile_id, StateError, StateStore};
use ringscale_control::tailcfg::{PrivateKey, UserProfile};
use ringscale_dataplane::Engine;
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
    /// The control session's last error (host errors are in the reconciler's status).
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
    pub engine: Arc<Engine>,
    /// quad-100's configuration, the PeerAPI.
    pub dns: dns::Dns,
    /// Disco, DERP and the path each peer takes (runs beside the control task).
    pub paths: Arc<ringscale_magicsock::driver::Paths>,
    /// The thread that applies the engine configuration, table 52, the policy rules,
    /// netfilter (issue 8) and resolv.conf; nothing of it while not running.
    pub reconciler: reconciler::Reconciler,
}

#[derive(Debug)]
pub enum BackendError {
    State(StateError),
    Io(std::io::Error),
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::State(e) => write!(f, "{e}"),
            BackendError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<StateError> for BackendError {
    fn from(e: StateError) -> Self {
        BackendError::State(e)
    }
}

impl LocalBackend {
    /// Loads the login and prefs from `store` and decides the starting state; starts
    /// the reconciler thread, which owns `host_dns` (the host's resolv.conf) from now on.
    pub fn new(
        mut store: StateStore,
        engine: Arc<Engine>,
        ephemeral: bool,
        host_dns: ringscale_host::resolv_conf::HostDns,
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
        let dns = dns::Dns::new(&engine, &host_dns);
        let reconciler =
            reconciler::Reconciler::start(reconciler::LinuxHost::new(engine.clone(), host_dns))
                .map_err(BackendError::Io)?;
        Ok(LocalBackend {
            inner: Mutex::new(Inner {
                store,
                machine_key,
                profile,
                prefs,
                state,
                netmap: None,
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
            reconciler,
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

    /// Hands the host configuration for the current netmap and prefs (or an empty one
    /// when not running) to the reconciler, and quad-100 its configuration. Returns
    /// at once: the host is changed on the reconciler thread.
    pub fn reconfigure_engine(&self, inner: &mut Inner) {
        let running = inner.prefs.want_running && inner.state == BackendState::Running;
        let dns = self
            .dns
            .update(inner.netmap.as_ref(), &inner.prefs, running);
        if dns.services_changed {
            // New PeerAPI ports: control learns them from a lite map update.
            self.hostinfo_changed(inner);
        }
        self.reconciler.post(reconciler::Desired {
            netmap: inner.netmap.clone().filter(|_| running),
            prefs: inner.prefs.clone(),
            dns: dns.host,
        });
    }

    /// Removes everything the daemon put on the host (routes, rules, netfilter,
    /// resolv.conf) and stops the reconciler; the daemon calls it on exit, after the
    /// control thread ended.
    pub fn shutdown_host(&self) {
        self.dns.shutdown();
        self.reconciler.shutdown();
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
