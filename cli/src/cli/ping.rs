//! `tailscale ping <host>`: ping a peer at the Tailscale layer and say which path the
//! answer took (Go's `cli/ping.go`).

use super::status::{dns_or_quote_hostname, running_or_starting};
use super::{duration_flag, msg, outln, CmdError, CmdResult, Command, Ctx};
use crate::goflag::{self, Flag};
use crate::localapi::client::ClientError;
use crate::localapi::PingType;
use ringscale_control::ipnstate::{PingResult, Status};
use std::net::IpAddr;
use std::time::Duration;

pub const PING: Command = Command {
    name: "ping",
    short_usage: "tailscale ping <hostname-or-IP>",
    short_help: "Ping a host at the Tailscale layer, see how it routed",
    flags: &[
        Flag::value("c", "10", "max number of pings to send. 0 for infinity."),
        Flag::bool(
            "icmp",
            "do a ICMP-level ping (through WireGuard, but not the local host OS stack)",
        ),
        Flag::bool("peerapi", "try hitting the peer's peerapi HTTP server"),
        Flag::value(
            "size",
            "0",
            "size of the ping message (disco pings only). 0 for minimum size.",
        ),
        Flag::value("timeout", "5s", "timeout before giving up on a ping"),
        Flag::bool(
            "tsmp",
            "do a TSMP-level ping (through WireGuard, but not either host OS stack)",
        ),
        Flag::bool_on("until-direct", "stop once a direct path is established"),
        Flag::bool("verbose", "verbose output"),
    ],
    run: run_ping,
};

/// Go's `tailscaleIPFromArg` without the final DNS lookup: an IP as is, else a peer (or
/// self) by MagicDNS name. Returns the IP and whether it is our own.
pub fn tailscale_ip_from_arg(st: &Status, host_or_ip: &str) -> Result<(IpAddr, bool), String> {
    if let Ok(ip) = host_or_ip.parse::<IpAddr>() {
        return Ok((ip, false));
    }
    let matches = |ps: &ringscale_control::ipnstate::PeerStatus| {
        host_or_ip.eq_ignore_ascii_case(&dns_or_quote_hostname(st, ps)) || host_or_ip == ps.dns_name
    };
    for ps in st.peer.values() {
        if matches(ps) {
            return ps
                .tailscale_ips
                .first()
                .map(|ip| (*ip, false))
                .ok_or_else(|| "node found but lacks an IP".to_string());
        }
    }
    if let Some(me) = &st.self_status {
        if matches(me) {
            if let Some(ip) = me.tailscale_ips.first() {
                return Ok((*ip, true));
            }
        }
    }
    Err(format!(
        "no peer found with name {host_or_ip:?}; give its Tailscale IP or MagicDNS name"
    ))
}

/// The line Go prints for one answer.
pub fn pong_line(pr: &PingResult, kind: PingType) -> String {
    let latency = Duration::from_secs_f64(pr.latency_seconds.max(0.0));
    let latency = Duration::from_millis(((latency.as_secs_f64() * 1000.0).round()) as u64);
    let via = if !pr.peer_relay.is_empty() {
        format!("peer-relay({})", pr.peer_relay)
    } else if pr.derp_region_id != 0 {
        format!("DERP({})", pr.derp_region_code)
    } else if !pr.endpoint.is_empty() {
        pr.endpoint.clone()
    } else {
        kind.as_str().to_string()
    };
    let extra = if pr.peer_api_port != 0 {
        format!(", {}", pr.peer_api_port)
    } else {
        String::new()
    };
    format!(
        "pong from {} ({}{extra}) via {via} in {}",
        pr.node_name,
        pr.node_ip,
        super::up::go_duration_string(latency)
    )
}

fn run_ping(ctx: &Ctx, p: &goflag::Parsed) -> CmdResult {
    let st = ctx.client.status()?;
    if let Err(d) = running_or_starting(&st) {
        outln(&d);
        return Err(CmdError::Exit(1));
    }
    let [host] = p.args.as_slice() else {
        return Err(msg("usage: tailscale ping <hostname-or-IP>"));
    };
    if host.is_empty() {
        return Err(msg("usage: tailscale ping <hostname-or-IP>"));
    }
    let num: u64 = p.num("c")?;
    let size: usize = p.num("size")?;
    let timeout = duration_flag(p, "timeout")?;
    let kind = if p.bool("tsmp") {
        PingType::Tsmp
    } else if p.bool("icmp") {
        PingType::Icmp
    } else if p.bool("peerapi") {
        PingType::PeerApi
    } else {
        PingType::Disco
    };
    let until_direct = p.bool("until-direct");
    let (ip, is_self) = tailscale_ip_from_arg(&st, host).map_err(msg)?;
    if is_self {
        outln(&format!("{ip} is local Tailscale IP"));
        return Ok(());
    }
    if p.bool("verbose") && ip.to_string() != *host {
        eprintln!("lookup {host:?} => \"{ip}\"");
    }
    let mut client = ctx.client.clone();
    client.timeout = (!timeout.is_zero()).then_some(timeout);
    let mut any_pong = false;
    let mut n = 0u64;
    loop {
        n += 1;
        match client.ping(ip, kind, size) {
            Err(ClientError::Timeout) => {
                outln(&format!("ping \"{ip}\" timed out"));
                if n == num {
                    return if any_pong {
                        Ok(())
                    } else {
                        Err(msg("no reply"))
                    };
                }
                continue;
            }
            Err(e) => return Err(e.into()),
            Ok(pr) => {
                if !pr.err.is_empty() {
                    if pr.is_local_ip {
                        outln(&pr.err);
                        return Ok(());
                    }
                    return Err(msg(pr.err));
                }
                if kind == PingType::PeerApi {
                    outln(&format!(
                        "hit peerapi of {} ({}) at {} in {}",
                        pr.node_ip,
                        pr.node_name,
                        pr.peer_api_url,
                        super::up::go_duration_string(Duration::from_secs_f64(
                            pr.latency_seconds.max(0.0)
                        ))
                    ));
                    return Ok(());
                }
                any_pong = true;
                outln(&pong_line(&pr, kind));
                if matches!(kind, PingType::Tsmp | PingType::Icmp) {
                    return Ok(());
                }
                if !pr.endpoint.is_empty() && until_direct {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_secs(1));
                if n == num {
                    if until_direct {
                        return Err(msg("direct connection not established"));
                    }
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong_lines_name_the_path() {
        let mut pr = PingResult {
            node_name: "exit".into(),
            node_ip: "100.64.0.2".into(),
            latency_seconds: 0.0123,
            endpoint: "192.0.2.10:41641".into(),
            ..PingResult::default()
        };
        assert_eq!(
            pong_line(&pr, PingType::Disco),
            "pong from exit (100.64.0.2) via 192.0.2.10:41641 in 12ms"
        );
        pr.endpoint.clear();
        pr.derp_region_id = 4;
        pr.derp_region_code = "fra".into();
        assert_eq!(
            pong_line(&pr, PingType::Disco),
            "pong from exit (100.64.0.2) via DERP(fra) in 12ms"
        );
        pr.derp_region_id = 0;
        pr.peer_api_port = 41000;
        assert_eq!(
            pong_line(&pr, PingType::Tsmp),
            "pong from exit (100.64.0.2, 41000) via TSMP in 12ms"
        );
    }
}
