//! `GET /localapi/v0/check-ip-forwarding`: the warning `tailscale up/set` prints when
//! the kernel will not forward for a subnet router or exit node. Same checks and texts
//! as Go's `netutil.CheckIPForwarding` with the exit routes (both families wanted):
//! the global v4/v6 switches, then IPv4 forwarding per interface.

use std::path::Path;

const KB_LINK: &str = "\nSee https://tailscale.com/s/ip-forwarding";

/// Reads one sysctl below /proc/sys given as a slash path: Ok(None) when the key does
/// not exist (IPv6 disabled), Err with a message when it cannot be read.
pub type SysctlReader<'a> = &'a dyn Fn(&str) -> Result<Option<String>, String>;

/// The warning to show, or None when forwarding is fully on. `interfaces` are the
/// host's interface names.
pub fn ip_forwarding_warning(read: SysctlReader, interfaces: &[String]) -> Option<String> {
    let enabled = |key: &str| -> Result<bool, String> {
        let Some(text) = read(key)? else {
            return Ok(false);
        };
        let val: i64 = text
            .trim()
            .parse()
            .map_err(|e| format!("couldn't parse {key}: {e}"))?;
        // 0 = off, 1 = on, 2 = on (rare).
        if !(0..=2).contains(&val) {
            return Err(format!("unexpected value {val} for {key}"));
        }
        Ok(val != 0)
    };
    let couldnt = |e: String| {
        Some(format!(
            "Couldn't check system's IP forwarding configuration, subnet routing/exit nodes may not work: {e}{KB_LINK}"
        ))
    };
    let v4 = match enabled("net/ipv4/ip_forward") {
        Ok(v) => v,
        Err(e) => return couldnt(e),
    };
    let v6 = match enabled("net/ipv6/conf/all/forwarding") {
        Ok(v) => v,
        Err(e) => return couldnt(e),
    };
    if v4 && v6 {
        return None;
    }
    let mut warnings = Vec::new();
    if !v6 {
        warnings.push("IPv6 forwarding is disabled.".to_string());
    }
    let mut any_enabled = false;
    for iface in interfaces.iter().filter(|i| *i != "lo") {
        match enabled(&format!("net/ipv4/conf/{iface}/forwarding")) {
            Err(e) => return couldnt(e),
            Ok(true) => any_enabled = true,
            Ok(false) => warnings.push(format!(
                "Traffic received on {iface} won't be forwarded (net.ipv4.conf.{}.forwarding disabled)",
                iface.replace('.', "/")
            )),
        }
    }
    if !any_enabled {
        return Some(format!(
            "IP forwarding is disabled, subnet routing/exit nodes will not work.{KB_LINK}"
        ));
    }
    if !warnings.is_empty() {
        return Some(format!(
            "{}\nSubnet routes and exit nodes may not work correctly.{KB_LINK}",
            warnings.join("\n")
        ));
    }
    None
}

/// The check against this host's /proc/sys and /sys/class/net.
pub fn check_host() -> Option<String> {
    let read = |key: &str| -> Result<Option<String>, String> {
        // Interface names come from the kernel's own listing, but refuse path tricks anyway.
        if key.split('/').any(|c| c.is_empty() || c == "..") {
            return Err(format!("bad sysctl key {key:?}"));
        }
        match std::fs::read_to_string(Path::new("/proc/sys").join(key)) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if Path::new("/proc/sys").is_dir() {
                    Ok(None)
                } else {
                    Err(format!("failed to check sysctl {key}; no procfs?"))
                }
            }
            Err(e) => Err(e.to_string()),
        }
    };
    let mut interfaces: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    interfaces.sort();
    ip_forwarding_warning(&read, &interfaces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn check(values: &[(&str, &str)], ifaces: &[&str]) -> Option<String> {
        let m: HashMap<String, String> = values
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let read = move |k: &str| -> Result<Option<String>, String> { Ok(m.get(k).cloned()) };
        let ifaces: Vec<String> = ifaces.iter().map(|s| s.to_string()).collect();
        ip_forwarding_warning(&read, &ifaces)
    }

    #[test]
    fn all_on_is_silent() {
        let on = [
            ("net/ipv4/ip_forward", "1\n"),
            ("net/ipv6/conf/all/forwarding", "1\n"),
        ];
        assert_eq!(check(&on, &["lo", "eth0"]), None);
    }

    #[test]
    fn all_off_says_it_will_not_work() {
        let off = [
            ("net/ipv4/ip_forward", "0\n"),
            ("net/ipv6/conf/all/forwarding", "0\n"),
            ("net/ipv4/conf/eth0/forwarding", "0\n"),
        ];
        assert_eq!(
            check(&off, &["lo", "eth0"]).unwrap(),
            "IP forwarding is disabled, subnet routing/exit nodes will not work.\nSee https://tailscale.com/s/ip-forwarding"
        );
    }

    #[test]
    fn v6_off_and_one_interface_off_are_listed() {
        let mixed = [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv6/conf/all/forwarding", "0"),
            ("net/ipv4/conf/eth0/forwarding", "1"),
            ("net/ipv4/conf/eth0.10/forwarding", "0"),
        ];
        assert_eq!(
            check(&mixed, &["eth0", "eth0.10"]).unwrap(),
            "IPv6 forwarding is disabled.\nTraffic received on eth0.10 won't be forwarded \
             (net.ipv4.conf.eth0/10.forwarding disabled)\nSubnet routes and exit nodes may not \
             work correctly.\nSee https://tailscale.com/s/ip-forwarding"
        );
    }

    #[test]
    fn unreadable_values_are_reported() {
        let bad = [
            ("net/ipv4/ip_forward", "yes"),
            ("net/ipv6/conf/all/forwarding", "1"),
        ];
        let w = check(&bad, &[]).unwrap();
        assert!(
            w.starts_with("Couldn't check system's IP forwarding configuration"),
            "{w}"
        );
        let bad = [
            ("net/ipv4/ip_forward", "7"),
            ("net/ipv6/conf/all/forwarding", "1"),
        ];
        assert!(check(&bad, &[]).unwrap().contains("unexpected value 7"));
    }
}
