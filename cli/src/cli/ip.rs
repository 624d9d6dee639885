//! `tailscale ip [-1|-4|-6] [peer]`: our (or a peer's) Tailscale addresses.

use super::ping::tailscale_ip_from_arg;
use super::{msg, outln, CmdResult, Command, Ctx};
use crate::goflag::{self, Flag};
use ringscale_control::ipnstate::Status;
use std::net::IpAddr;

pub const IP: Command = Command {
    name: "ip",
    short_usage: "tailscale ip [-1] [-4] [-6] [peer hostname or ip address]",
    short_help: "Show Tailscale IP addresses",
    flags: &[
        Flag::bool("1", "only print one IP address"),
        Flag::bool("4", "only print IPv4 address"),
        Flag::bool("6", "only print IPv6 address"),
        Flag::value(
            "assert",
            "",
            "assert that one of the node's IP(s) matches this IP address",
        ),
    ],
    run: run_ip,
};

/// Which addresses to print.
#[derive(Clone, Copy, Debug)]
pub struct IpFilter {
    pub one: bool,
    pub v4: bool,
    pub v6: bool,
}

/// Go's `runIP` after the lookup: the lines to print, or its error text.
pub fn select_ips(ips: &[IpAddr], f: IpFilter, state: &str) -> Result<Vec<String>, String> {
    if ips.is_empty() {
        return Err(format!("no current Tailscale IPs; state: {state}"));
    }
    let (want4, want6) = if !f.v4 && !f.v6 {
        (true, true)
    } else {
        (f.v4, f.v6)
    };
    let ips = if f.one { &ips[..1] } else { ips };
    let out: Vec<String> = ips
        .iter()
        .filter(|ip| (ip.is_ipv4() && want4) || (ip.is_ipv6() && want6))
        .map(|ip| ip.to_string())
        .collect();
    if out.is_empty() {
        if f.v4 {
            return Err("no Tailscale IPv4 address".into());
        }
        if f.v6 {
            return Err("no Tailscale IPv6 address".into());
        }
    }
    Ok(out)
}

/// The peer (or self) that owns `ip`.
fn ips_of_node_with(st: &Status, ip: IpAddr) -> Option<Vec<IpAddr>> {
    st.peer
        .values()
        .chain(st.self_status.iter())
        .find(|p| p.tailscale_ips.contains(&ip))
        .map(|p| p.tailscale_ips.clone())
}

fn run_ip(ctx: &Ctx, p: &goflag::Parsed) -> CmdResult {
    if p.args.len() > 1 {
        return Err(msg("too many arguments, expected at most one peer"));
    }
    let f = IpFilter {
        one: p.bool("1"),
        v4: p.bool("4"),
        v6: p.bool("6"),
    };
    if [f.one, f.v4, f.v6].iter().filter(|b| **b).count() > 1 {
        return Err(msg("tailscale ip -1, -4, and -6 are mutually exclusive"));
    }
    let st = ctx.client.status()?;
    let mut ips = st.tailscale_ips.clone();
    let assert = p.str("assert");
    if !assert.is_empty() {
        if ips.iter().any(|ip| ip.to_string() == assert) {
            return Ok(());
        }
        let list: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        return Err(msg(format!(
            "assertion failed: IP {assert:?} not found among [{}]",
            list.join(" ")
        )));
    }
    if let Some(of) = p.args.first() {
        let (ip, _) = tailscale_ip_from_arg(&st, of).map_err(msg)?;
        ips = ips_of_node_with(&st, ip)
            .ok_or_else(|| msg(format!("no peer or service found with IP {ip}")))?;
    }
    for line in select_ips(&ips, f, &st.backend_state).map_err(msg)? {
        outln(&line);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips() -> Vec<IpAddr> {
        vec![
            "100.64.0.1".parse().unwrap(),
            "fd7a:115c:a1e0::1".parse().unwrap(),
        ]
    }

    #[test]
    fn filters() {
        let f = |one, v4, v6| IpFilter { one, v4, v6 };
        assert_eq!(
            select_ips(&ips(), f(false, false, false), "Running").unwrap(),
            vec!["100.64.0.1", "fd7a:115c:a1e0::1"]
        );
        assert_eq!(
            select_ips(&ips(), f(false, true, false), "Running").unwrap(),
            vec!["100.64.0.1"]
        );
        assert_eq!(
            select_ips(&ips(), f(false, false, true), "Running").unwrap(),
            vec!["fd7a:115c:a1e0::1"]
        );
        assert_eq!(
            select_ips(&ips(), f(true, false, false), "Running").unwrap(),
            vec!["100.64.0.1"]
        );
        assert_eq!(
            select_ips(&ips()[..1], f(false, false, true), "Running").unwrap_err(),
            "no Tailscale IPv6 address"
        );
        assert_eq!(
            select_ips(&[], f(false, false, false), "Stopped").unwrap_err(),
            "no current Tailscale IPs; state: Stopped"
        );
    }
}
