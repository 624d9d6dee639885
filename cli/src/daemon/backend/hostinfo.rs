//! What the node tells control about itself: Hostinfo and its UDP endpoints.

use ringscale_control::prefs::Prefs;
use ringscale_control::tailcfg::{is_tailscale_ip, Hostinfo};
use std::net::{IpAddr, SocketAddr};

fn uname() -> (String, String) {
    match ringscale_sys::process::uname() {
        Ok(u) => (u.nodename, u.release),
        Err(_) => (String::new(), String::new()),
    }
}

/// Go's GOARCH names, which control and admin tools expect.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "mips" => "mips",
        "mips64" => "mips64",
        "riscv64" => "riscv64",
        "arm" => "arm",
        other => other,
    }
}

/// The complete Hostinfo, sent on every register and map request (Headscale replaces
/// the stored one wholesale, so a partial one would drop advertised routes).
pub fn hostinfo(prefs: &Prefs) -> Hostinfo {
    let (hostname, release) = uname();
    let mut hi = Hostinfo {
        ipn_version: crate::VERSION.to_string(),
        os: "linux".into(),
        os_version: release,
        hostname,
        go_arch: go_arch().into(),
        // ringscale never uploads logs.
        no_logs_no_support: true,
        ..Default::default()
    };
    prefs.apply_to_hostinfo(&mut hi);
    // PeerAPI ports and the DoH capability (always sent, even without CollectServices).
    hi.services.extend(super::dns::advertised_services());
    hi
}

/// Our UDP endpoints: every global address on a non-tailnet interface, with our port
/// (EndpointType 1, "local"). STUN-mapped addresses come with the paths work.
pub fn local_endpoints(port: u16, exclude_if: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    let Ok(addrs) = ringscale_sys::ifaddrs::interface_addrs() else {
        return out;
    };
    for a in addrs {
        if a.interface == exclude_if {
            continue;
        }
        let ip = a.addr;
        let usable = match ip {
            IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local() && !a.is_unspecified(),
            IpAddr::V6(a) => {
                !a.is_loopback() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80
            }
        };
        if usable && !is_tailscale_ip(ip) {
            out.push(SocketAddr::new(ip, port));
        }
    }
    out.sort();
    out.dedup();
    out
}
