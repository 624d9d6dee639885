//! The reconciler: one thread that owns everything the daemon changes on the host for
//! a netmap — the engine's peers, addresses and routes (netlink), table 52, the policy
//! rules and the nftables chains (netlink and the `nft` tool), and /etc/resolv.conf.
//!
//! The control thread (control client, LocalAPI, disco, STUN, DERP) never waits for
//! any of it: it computes what the host should look like ([`Desired`]) and puts it in
//! a [`LatestSlot`], which holds only the newest value. A slow `nft` therefore delays
//! the host by at most one state: if three netmaps arrive while it runs, the third is
//! applied next and the other two never are. The backend's lock is not held here.
//!
//! What the LocalAPI reports about the host comes from [`HostStatus`], written after
//! each state was applied.

use ringscale_control::netmap::NetMap;
use ringscale_control::prefs::Prefs;
use ringscale_control::tailcfg::PrivateKey;
use ringscale_dataplane::{Config, Engine};
use ringscale_host::{Router, RouterConfig};
use ringscale_sys::ifaddrs::InterfaceAddr;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use ringscale_host::resolv_conf::{HostDns, HostDnsWanted};

/// What the host should look like, computed on the control thread.
#[derive(Clone, Debug)]
pub struct Desired {
    /// The netmap while the node runs; None when stopped, logged out or before the
    /// first netmap (then nothing of the tailnet is on the host).
    pub netmap: Option<Arc<NetMap>>,
    pub prefs: Prefs,
    pub dns: HostDnsWanted,
}

/// A value handed from one thread to another where only the newest counts: putting
/// replaces a value not taken yet.
pub struct LatestSlot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
}

struct SlotState<T> {
    value: Option<T>,
    closed: bool,
}

impl<T> Default for LatestSlot<T> {
    fn default() -> Self {
        LatestSlot {
            state: Mutex::new(SlotState {
                value: None,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<T> LatestSlot<T> {
    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `value`, replacing one not taken yet; returns whether it did.
    pub fn put(&self, value: T) -> bool {
        let replaced = self.lock().value.replace(value).is_some();
        self.ready.notify_one();
        replaced
    }

    /// Waits for a value; None once the slot is closed (a value still waiting is
    /// dropped then: nobody wants it applied any more).
    pub fn take(&self) -> Option<T> {
        let mut st = self.lock();
        loop {
            if st.closed {
                return None;
            }
            if let Some(v) = st.value.take() {
                return Some(v);
            }
            st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Makes [`LatestSlot::take`] return None from now on.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// What the host side has reached, for the LocalAPI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostStatus {
    /// The number of desired states handed over so far.
    pub wanted: u64,
    /// The number of the last one applied (states skipped for a newer one count as
    /// applied with it); below `wanted` while a change is pending.
    pub applied: u64,
    /// Errors from applying the last one (health messages).
    pub errors: Vec<String>,
}

/// The host, as the reconciler thread changes it.
pub trait Host: Send + 'static {
    /// Brings the host to `desired`; returns what went wrong, as health messages.
    fn apply(&mut self, desired: &Desired) -> Vec<String>;
    /// Removes everything of ours from the host (daemon exit).
    fn remove_all(&mut self);
}

/// The handle on the reconciler thread.
pub struct Reconciler {
    slot: Arc<LatestSlot<(u64, Desired)>>,
    status: Arc<Mutex<HostStatus>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Reconciler {
    /// Starts the thread, which owns `host` from now on.
    pub fn start(mut host: impl Host) -> io::Result<Reconciler> {
        let slot: Arc<LatestSlot<(u64, Desired)>> = Arc::default();
        let status: Arc<Mutex<HostStatus>> = Arc::default();
        let (thread_slot, thread_status) = (slot.clone(), status.clone());
        let thread = std::thread::Builder::new()
            .name("reconciler".into())
            .spawn(move || {
                while let Some((n, desired)) = thread_slot.take() {
                    let errors = host.apply(&desired);
                    let mut st = lock(&thread_status);
                    st.applied = n;
                    st.errors = errors;
                }
                host.remove_all();
            })?;
        Ok(Reconciler {
            slot,
            status,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Hands over a new desired state; returns at once.
    pub fn post(&self, desired: Desired) {
        // Numbered under the status lock so that numbers reach the slot in order.
        let mut st = lock(&self.status);
        st.wanted += 1;
        if self.slot.put((st.wanted, desired)) {
            log::debug!("host: a newer state replaces one not applied yet");
        }
    }

    pub fn status(&self) -> HostStatus {
        lock(&self.status).clone()
    }

    /// Stops taking states, lets the one being applied finish, removes everything
    /// from the host and joins the thread. Later calls do nothing.
    pub fn shutdown(&self) {
        self.slot.close();
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            if t.join().is_err() {
                log::error!("host: the reconciler thread panicked");
            }
        }
    }
}

impl Drop for Reconciler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The real host: the engine, the router and resolv.conf.
pub struct LinuxHost {
    engine: Arc<Engine>,
    router: Router,
    dns: HostDns,
    /// A key for the engine while logged out, so it never runs with a registered key
    /// that control no longer knows.
    idle_key: PrivateKey,
    /// The last configuration the engine took, to skip identical reconfigurations.
    engine_config: Option<Config>,
}

impl LinuxHost {
    pub fn new(engine: Arc<Engine>, dns: HostDns) -> LinuxHost {
        let router = Router::new(engine.ifindex());
        LinuxHost {
            engine,
            router,
            dns,
            idle_key: PrivateKey::generate(),
            engine_config: None,
        }
    }

    /// The engine's configuration for `desired`; None when the netmap gives none
    /// (the engine then keeps the last good one).
    fn engine_config(&self, desired: &Desired, host: &[InterfaceAddr]) -> Option<Config> {
        let Some(nm) = &desired.netmap else {
            return Some(idle_config(&desired.prefs, &self.idle_key));
        };
        match ringscale_control::netmap::dataplane_config(nm, &desired.prefs) {
            Ok(mut c) => {
                let mut f = ringscale_control::hostconfig::filter_config(nm, &desired.prefs, host);
                // PeerAPI checks its callers itself; Go lets it past the rules.
                for svc in super::dns::advertised_services() {
                    use ringscale_control::dnsmap::{SERVICE_PEERAPI4, SERVICE_PEERAPI6};
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
                Some(c)
            }
            Err(e) => {
                log::warn!("netmap gives no data-plane configuration: {e}");
                None
            }
        }
    }
}

impl LinuxHost {
    fn apply_engine(&mut self, cfg: Config, errors: &mut Vec<String>) {
        if self.engine_config.as_ref() == Some(&cfg) {
            return;
        }
        match self.engine.reconfigure(&cfg) {
            Ok(()) => {
                log::debug!(
                    "data plane: {} peers, {} addresses",
                    cfg.peers.len(),
                    cfg.addresses.len()
                );
                self.engine_config = Some(cfg);
            }
            Err(e) => {
                log::error!("applying the netmap to the data plane: {e}");
                errors.push(e.to_string());
                // Unknown state: the next configuration is applied in full.
                self.engine_config = None;
            }
        }
    }

    fn apply_dns(&mut self, wanted: &HostDnsWanted) {
        if let Err(e) = self.dns.apply(wanted) {
            log::warn!("dns: host configuration: {e}");
        }
    }

    fn apply_router(&mut self, rc: Option<RouterConfig>, errors: &mut Vec<String>) {
        if let Err(e) = self.router.set(rc.as_ref()) {
            errors.push(format!("host configuration: {e}"));
        }
    }
}

impl Host for LinuxHost {
    fn apply(&mut self, desired: &Desired) -> Vec<String> {
        let mut errors = Vec::new();
        // The host's interfaces: what "the LAN" is for an exit node and its users.
        let host = ringscale_sys::ifaddrs::interface_addrs().unwrap_or_else(|e| {
            log::warn!("listing interface addresses: {e}");
            Vec::new()
        });
        let Some(cfg) = self.engine_config(desired, &host) else {
            // The engine and the routes keep the last good netmap's configuration.
            self.apply_dns(&desired.dns);
            return errors;
        };
        let rc: Option<RouterConfig> = desired.netmap.as_ref().map(|nm| {
            ringscale_control::hostconfig::router_config(
                nm,
                &desired.prefs,
                &host,
                self.engine.tun_name(),
                self.engine.port(),
            )
        });
        if rc.is_some() {
            // Up or changing: the engine first, as it is quick (a table swap and a few
            // netlink requests), so new peers wait neither for netfilter nor for
            // routes that send traffic to them.
            self.apply_engine(cfg, &mut errors);
            self.apply_dns(&desired.dns);
            self.apply_router(rc, &mut errors);
        } else {
            // Going down: stop sending traffic into the tunnel before its peers go.
            self.apply_dns(&desired.dns);
            self.apply_router(rc, &mut errors);
            self.apply_engine(cfg, &mut errors);
        }
        errors
    }

    fn remove_all(&mut self) {
        if let Err(e) = self.router.close() {
            log::warn!("removing host configuration: {e}");
        }
        if let Err(e) = self.dns.restore() {
            log::warn!("dns: restoring the host configuration: {e}");
        }
    }
}

/// No peers and no addresses: what a stopped or logged-out node forwards.
pub fn idle_config(prefs: &Prefs, idle_key: &PrivateKey) -> Config {
    let key = prefs.node_private_key().unwrap_or_else(|| idle_key.clone());
    Config {
        private_key: key.0,
        listen_port: 0,
        addresses: Vec::new(),
        mtu: ringscale_dataplane::config::DEFAULT_MTU,
        peers: Vec::new(),
        filter: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A host whose every apply waits until the test lets it go, and reports which
    /// state (by hostname) it applied.
    struct GatedHost {
        entered: mpsc::Sender<String>,
        release: mpsc::Receiver<()>,
        removed: mpsc::Sender<()>,
    }

    impl Host for GatedHost {
        fn apply(&mut self, desired: &Desired) -> Vec<String> {
            let _ = self.entered.send(desired.prefs.hostname.clone());
            let _ = self.release.recv();
            vec![format!("applied {}", desired.prefs.hostname)]
        }
        fn remove_all(&mut self) {
            let _ = self.removed.send(());
        }
    }

    fn desired(name: &str) -> Desired {
        Desired {
            netmap: None,
            prefs: Prefs {
                hostname: name.into(),
                ..Prefs::default()
            },
            dns: HostDnsWanted::Original,
        }
    }

    const WAIT: Duration = Duration::from_secs(5);

    /// A reconciler over a [`GatedHost`], with the test's ends of its channels: which
    /// state it entered, the release of the apply in progress, and "removed".
    fn gated() -> (
        Reconciler,
        mpsc::Receiver<String>,
        mpsc::Sender<()>,
        mpsc::Receiver<()>,
    ) {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let (removed_tx, removed) = mpsc::channel();
        let r = Reconciler::start(GatedHost {
            entered: entered_tx,
            release: release_rx,
            removed: removed_tx,
        })
        .unwrap();
        (r, entered, release, removed)
    }

    #[test]
    fn states_posted_during_a_slow_apply_collapse_into_the_newest() {
        let (r, entered, release, removed) = gated();
        r.post(desired("one"));
        assert_eq!(entered.recv_timeout(WAIT).unwrap(), "one");
        // "one" is being applied (think: nft running); three more arrive, and posting
        // returns at once.
        for name in ["two", "three", "four"] {
            r.post(desired(name));
        }
        let st = r.status();
        assert!(st.applied < st.wanted, "{st:?}");
        assert_eq!(st.wanted, 4);
        release.send(()).unwrap();
        // Only the newest is applied next.
        assert_eq!(entered.recv_timeout(WAIT).unwrap(), "four");
        release.send(()).unwrap();
        // Then nothing more.
        assert!(entered.recv_timeout(Duration::from_millis(100)).is_err());
        let st = r.status();
        assert_eq!(st.applied, st.wanted, "{st:?}");
        assert_eq!(st.errors, vec!["applied four".to_string()]);
        r.shutdown();
        removed.recv_timeout(WAIT).unwrap();
    }

    #[test]
    fn shutdown_drops_a_waiting_state_and_removes_everything() {
        let (r, entered, release, removed) = gated();
        r.post(desired("one"));
        assert_eq!(entered.recv_timeout(WAIT).unwrap(), "one");
        r.post(desired("two"));
        // The daemon exits while "one" is being applied and "two" waits.
        r.slot.close();
        drop(release);
        r.shutdown();
        removed.recv_timeout(WAIT).unwrap();
        // "two" was never applied.
        assert!(entered.try_recv().is_err());
    }
}
