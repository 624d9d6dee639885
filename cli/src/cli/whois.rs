//! `tailscale whois [--json] ip[:port]`: the machine and user behind a Tailscale IP.

use super::status::tabwrite;
use super::{msg, outln, CmdResult, Command, Ctx};
use crate::goflag::{self, Flag};
use ringscale_control::ipn::WhoIsResponse;
use ringscale_control::tailcfg::IpPrefix;
use std::io::Write;

pub const WHOIS: Command = Command {
    name: "whois",
    short_usage: "tailscale whois [--json] ip[:port]",
    short_help: "Show the machine and user associated with a Tailscale IP (v4 or v6)",
    flags: &[
        Flag::bool("json", "output in JSON format"),
        Flag::value(
            "proto",
            "",
            "protocol; one of \"tcp\" or \"udp\"; empty means both",
        ),
    ],
    run: run_whois,
};

/// Go prints prefix lists with `%s`: `[a b]`.
fn go_list(v: &[IpPrefix]) -> String {
    let items: Vec<String> = v.iter().map(|p| p.to_string()).collect();
    format!("[{}]", items.join(" "))
}

/// The human-readable form (Go's `printWhoIs` without tailnet details).
pub fn format_whois(who: &WhoIsResponse) -> String {
    let n = &who.node;
    let mut t = String::from("Machine:\n");
    t.push_str(&format!(
        "  Name:\t{}\n",
        n.name.strip_suffix('.').unwrap_or(&n.name)
    ));
    t.push_str(&format!("  ID:\t{}\n", n.stable_id));
    t.push_str(&format!("  Addresses:\t{}\n", go_list(&n.addresses)));
    if let Some(allowed) = &n.allowed_ips {
        if allowed.len() > 2 {
            t.push_str(&format!("  AllowedIPs:\t{}\n", go_list(&allowed[2..])));
        }
    }
    if !n.tags.is_empty() {
        t.push_str(&format!("  Tags:\t{}\n", n.tags.join(", ")));
    } else {
        t.push_str("User:\n");
        t.push_str(&format!("  Name:\t{}\n", who.user_profile.login_name));
        t.push_str(&format!("  ID:\t{}\n", who.user_profile.id));
    }
    let mut out = tabwrite(&t, 10, 5);
    if !who.cap_map.is_empty() {
        out.push_str("Capabilities:\n");
        for (cap, vals) in &who.cap_map {
            match vals {
                Some(v) if !v.is_empty() => {
                    let mut buf = Vec::new();
                    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"  ");
                    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
                    let _ = serde::Serialize::serialize(v, &mut ser);
                    let json = String::from_utf8_lossy(&buf).replace('\n', "\n      ");
                    out.push_str(&format!("  - {cap}:\n      {json}\n"));
                }
                _ => out.push_str(&format!("  - {cap}\n")),
            }
        }
    }
    out
}

fn run_whois(ctx: &Ctx, p: &goflag::Parsed) -> CmdResult {
    match p.args.len() {
        0 => return Err(msg("missing argument, expected one peer")),
        1 => {}
        _ => return Err(msg("too many arguments, expected at most one peer")),
    }
    let who = ctx.client.whois(&p.args[0], p.str("proto"))?;
    if p.bool("json") {
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"  ");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        serde::Serialize::serialize(&who, &mut ser).map_err(|e| msg(e.to_string()))?;
        outln(&String::from_utf8_lossy(&buf));
        return Ok(());
    }
    let _ = std::io::stdout()
        .lock()
        .write_all(format_whois(&who).as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringscale_control::tailcfg::{Node, UserProfile};

    #[test]
    fn whois_text_like_go() {
        let who = WhoIsResponse {
            node: Node {
                name: "exit.tail1.ts.net.".into(),
                stable_id: "nABC".into(),
                addresses: vec![
                    "100.64.0.2/32".parse().unwrap(),
                    "fd7a:115c:a1e0::2/128".parse().unwrap(),
                ],
                allowed_ips: Some(
                    [
                        "100.64.0.2/32",
                        "fd7a:115c:a1e0::2/128",
                        "0.0.0.0/0",
                        "::/0",
                    ]
                    .iter()
                    .map(|s| s.parse().unwrap())
                    .collect(),
                ),
                ..Node::default()
            },
            user_profile: UserProfile {
                id: 7,
                login_name: "alice@example.com".into(),
                ..UserProfile::default()
            },
            ..WhoIsResponse::default()
        };
        assert_eq!(
            format_whois(&who),
            "Machine:\n\
             \x20 Name:           exit.tail1.ts.net\n\
             \x20 ID:             nABC\n\
             \x20 Addresses:      [100.64.0.2/32 fd7a:115c:a1e0::2/128]\n\
             \x20 AllowedIPs:     [0.0.0.0/0 ::/0]\n\
             User:\n\
             \x20 Name:     alice@example.com\n\
             \x20 ID:       7\n"
        );
    }
}
