//! The host side of a tailnet node on Linux, as Go's tailscaled sets it up
//! (tailscale-surface.md §5): policy routing (table 52 and the rules at priorities
//! 5210–5270 that send everything not marked as ours through it) and netfilter
//! (`nft`). The engine owns the TUN and its addresses; the [`Router`] owns the rest
//! and removes all of it when told to stop, when dropped, and in [`cleanup`]
//! (`tailscaled --cleanup`), leaving the host as it was.
//!
//! [`RouterConfig`] is a plain value computed from the netmap and prefs elsewhere;
//! [`Router::set`] applies the difference to the host.

#![forbid(unsafe_code)]

pub mod nft;
pub mod resolv_conf;
pub mod rtnl;

pub use nft::{NetfilterConfig, NetfilterMode};
pub use ringscale_sys::fwmark::{
    mark_socket, set_bypass_mark, BYPASS_MARK, FWMARK_MASK, SUBNET_ROUTE_MARK,
};
pub use ringscale_sys::ifaddrs;

use ip_network::IpNetwork;
use parking_lot::Mutex;
use rtnl::{RouteKind, Rule, RuleAction};
use std::collections::BTreeSet;
use std::io;

/// Tailscale's routing table ("TS" on a QWERTY number row).
pub const TABLE: u32 = 52;
const TABLE_MAIN: u32 = 254;
const TABLE_DEFAULT: u32 = 253;
/// Base priority of our rules; each sits 20 above the previous so administrators
/// can put their own in between.
const RULE_BASE: u32 = 5200;

/// Go's four rules: our own (bypass-marked) packets try main, then default, then
/// fail rather than loop into the tunnel; everything else looks up table 52 first.
pub fn rules() -> [Rule; 4] {
    let ours = Some((BYPASS_MARK, FWMARK_MASK));
    [
        Rule {
            priority: RULE_BASE + 10,
            fwmark: ours,
            action: RuleAction::Lookup(TABLE_MAIN),
        },
        Rule {
            priority: RULE_BASE + 30,
            fwmark: ours,
            action: RuleAction::Lookup(TABLE_DEFAULT),
        },
        Rule {
            priority: RULE_BASE + 50,
            fwmark: ours,
            action: RuleAction::Unreachable,
        },
        Rule {
            priority: RULE_BASE + 70,
            fwmark: None,
            action: RuleAction::Lookup(TABLE),
        },
    ]
}

/// Everything the router puts on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    /// Prefixes sent into the tunnel (table 52 → TUN): peers' accepted AllowedIPs,
    /// the default routes when using an exit node, LAN prefixes that must not leak.
    pub routes: Vec<IpNetwork>,
    /// Prefixes that bypass table 52 (`throw`): loopback, and the LAN with
    /// `--exit-node-allow-lan-access`.
    pub local_routes: Vec<IpNetwork>,
    pub netfilter: NetfilterConfig,
}

#[derive(Default)]
struct Installed {
    rules: bool,
    routes: BTreeSet<(IpNetwork, RouteKind)>,
    netfilter: Option<NetfilterConfig>,
    /// We turned net.ipv4.conf.all.src_valid_mark on (it was off); turned back off
    /// when our netfilter rules go.
    set_src_valid_mark: bool,
}

const SRC_VALID_MARK: &str = "/proc/sys/net/ipv4/conf/all/src_valid_mark";

/// Applies [`RouterConfig`]s for one TUN device.
pub struct Router {
    ifindex: u32,
    installed: Mutex<Installed>,
    /// Set by [`Router::close`]: the daemon is exiting, and a configuration that
    /// arrives late (a netmap processed while the process winds down) must not put
    /// anything back.
    closed: std::sync::atomic::AtomicBool,
}

fn split(net: &IpNetwork) -> (std::net::IpAddr, u8) {
    (net.network_address(), net.netmask())
}

/// An IPv6 failure on a host without IPv6 is not worth failing over.
fn v6_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EOPNOTSUPP) | Some(libc::EPROTONOSUPPORT)
    )
}

impl Router {
    pub fn new(ifindex: u32) -> Router {
        Router {
            ifindex,
            installed: Mutex::new(Installed::default()),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Removes everything and refuses further configurations (daemon exit).
    pub fn close(&self) -> io::Result<()> {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.set(None)
    }

    /// Brings the host to `cfg`, or removes everything with None (the node is
    /// stopped or logged out). Errors are collected: one failing piece does not stop
    /// the others, and the first error is returned.
    pub fn set(&self, cfg: Option<&RouterConfig>) -> io::Result<()> {
        let mut inst = self.installed.lock();
        let cfg = cfg.filter(|_| !self.closed.load(std::sync::atomic::Ordering::SeqCst));
        let mut first_err: Option<io::Error> = None;
        let mut note = |what: &str, r: io::Result<()>| {
            if let Err(e) = r {
                log::warn!("router: {what}: {e}");
                first_err.get_or_insert(io::Error::new(e.kind(), format!("{what}: {e}")));
            }
        };

        // Routes before rules on the way up (rules pointing at an empty table 52 are
        // harmless), rules before routes on the way down.
        let wanted: BTreeSet<(IpNetwork, RouteKind)> = match cfg {
            Some(c) => c
                .routes
                .iter()
                .map(|n| (*n, RouteKind::Dev(self.ifindex)))
                .chain(c.local_routes.iter().map(|n| (*n, RouteKind::Throw)))
                .collect(),
            None => BTreeSet::new(),
        };
        if cfg.is_none() && inst.rules {
            for r in rules() {
                for v6 in [false, true] {
                    match rtnl::del_rule(v6, &r) {
                        Err(e) if v6 && v6_unsupported(&e) => {}
                        res => note("deleting ip rule", res),
                    }
                }
            }
            inst.rules = false;
        }
        let stale: Vec<_> = inst.routes.difference(&wanted).copied().collect();
        for (net, kind) in stale {
            let (a, l) = split(&net);
            note(
                &format!("deleting route {net}"),
                rtnl::del_route(a, l, kind, TABLE),
            );
            inst.routes.remove(&(net, kind));
        }
        let new: Vec<_> = wanted.difference(&inst.routes).copied().collect();
        for (net, kind) in new {
            let (a, l) = split(&net);
            match rtnl::add_route(a, l, kind, TABLE) {
                Ok(()) => {
                    inst.routes.insert((net, kind));
                }
                Err(e) if a.is_ipv6() && v6_unsupported(&e) => {}
                Err(e) => note(&format!("adding route {net} to table {TABLE}"), Err(e)),
            }
        }
        if cfg.is_some() && !inst.rules {
            for r in rules() {
                for v6 in [false, true] {
                    match rtnl::add_rule(v6, &r) {
                        Err(e) if v6 && v6_unsupported(&e) => {}
                        res => note("adding ip rule", res),
                    }
                }
            }
            inst.rules = true;
        }

        let nf = cfg.map(|c| &c.netfilter);
        if nf != inst.netfilter.as_ref() {
            let res = match nf {
                Some(nf) if nf.mode != NetfilterMode::Off => {
                    if nft::nft_path().is_none() {
                        Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            "the nft tool is missing: no SNAT, no forwarding rules (as --netfilter-mode=off)",
                        ))
                    } else {
                        nft::apply(nf)
                    }
                }
                _ => nft::cleanup(),
            };
            // On failure, forget what we think is installed so the next call retries.
            inst.netfilter = if res.is_ok() { nf.cloned() } else { None };
            note("netfilter", res);
            // The rp_filter workaround puts the bypass mark back on replies to our
            // own connections, and on incoming ARP requests (nft::arp_script); the
            // reverse-path check (fib_validate_source) looks at a packet's mark only
            // with src_valid_mark, which Go and wg-quick turn on as well.
            let on = inst
                .netfilter
                .as_ref()
                .is_some_and(|n| n.mode == NetfilterMode::On);
            if on && !inst.set_src_valid_mark {
                let off = std::fs::read_to_string(SRC_VALID_MARK).is_ok_and(|v| v.trim() == "0");
                if off {
                    note("src_valid_mark", std::fs::write(SRC_VALID_MARK, "1"));
                    inst.set_src_valid_mark = true;
                }
            } else if !on && inst.set_src_valid_mark {
                note("src_valid_mark", std::fs::write(SRC_VALID_MARK, "0"));
                inst.set_src_valid_mark = false;
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Err(e) = self.set(None) {
            log::warn!("router: cleanup on exit: {e}");
        }
    }
}

/// Removes everything any instance of us may have left on the host, for
/// `tailscaled --cleanup` and for a start after a crash: our ip rules, all of table
/// 52, and our netfilter chains (and the tables and base chains we created).
pub fn cleanup() -> io::Result<()> {
    let mut first_err = None;
    for r in rules() {
        for v6 in [false, true] {
            match rtnl::del_rule(v6, &r) {
                Err(e) if v6 && v6_unsupported(&e) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
                Ok(()) => {}
            }
        }
    }
    if let Err(e) = rtnl::flush_table(TABLE) {
        first_err.get_or_insert(e);
    }
    if let Err(e) = nft::cleanup() {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}

/// Whether the kernel forwards IPv4 and IPv6, from /proc/sys (for warnings).
pub fn forwarding_enabled() -> (bool, bool) {
    let on = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim() != "0")
            .unwrap_or(false)
    };
    (
        on("/proc/sys/net/ipv4/ip_forward"),
        on("/proc/sys/net/ipv6/conf/all/forwarding"),
    )
}
