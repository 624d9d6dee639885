//! What the node tells control about itself: Hostinfo and its UDP endpoints.

use ringscale_control::prefs::Prefs;
use ringscale_control::tailcfg::{is_tailscale_ip, Hostinfo};
use std::net::{IpAddr, SocketAddr};

fn uname() -> (String, String) {
    // SAFETY: utsname is plain data filled by uname(2).
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return (String::new(), String::new());
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&u.nodename), field(&u.release))
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
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk and then free.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & libc::IFF_UP as u32 == 0 {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if name == exclude_if {
            continue;
        }
        // SAFETY: the family tells which sockaddr type ifa_addr points to.
        let ip = unsafe {
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::from(sa.sin_addr.s_addr.to_ne_bytes())
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::from(sa.sin6_addr.s6_addr)
                }
                _ => continue,
            }
        };
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
    // SAFETY: `ifap` came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    out.sort();
    out.dedup();
    out
}
