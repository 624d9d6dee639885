//! `tailscale status`: the daemon's state and its peers, as Go's table or as the raw
//! Status JSON (`--json`), which scripts parse (tailscale-surface.md §1.4).

use super::{dns_trim_suffix, msg, outln, sanitize_hostname, CmdError, CmdResult, Command, Ctx};
use crate::goflag::{self, Flag};
use ringscale_control::ipnstate::{PeerStatus, Status};
use ringscale_control::tailcfg::GoTime;
use std::io::Write;

pub const STATUS: Command = Command {
    name: "status",
    short_usage: "tailscale status [--active] [--web] [--json]",
    short_help: "Show state of tailscaled and its connections",
    flags: &[
        Flag::bool(
            "active",
            "filter output to only peers with active sessions (not applicable to web mode)",
        ),
        Flag::bool_on("browser", "open a browser in web mode"),
        Flag::bool("header", "show column headers in table format"),
        Flag::bool(
            "json",
            "output in JSON format (WARNING: format subject to change)",
        ),
        Flag::value(
            "listen",
            "127.0.0.1:8384",
            "listen address for web mode; use port 0 for automatic",
        ),
        Flag::bool_on("peers", "show status of peers"),
        Flag::bool_on("self", "show status of local machine"),
        Flag::bool("web", "run webserver with HTML showing status"),
    ],
    run: run_status,
};

/// Location-based (Mullvad) exit nodes are listed by `exit-node list`, not here.
const MULLVAD_SUFFIX: &str = "mullvad.ts.net.";

/// Table options.
#[derive(Clone, Copy, Debug)]
pub struct TableOptions {
    pub show_self: bool,
    pub peers: bool,
    pub active: bool,
    pub header: bool,
}

/// Go's `isRunningOrStarting`: Ok(state) when the table applies, Err(description) when
/// `status` should print the description and exit 1.
pub fn running_or_starting(st: &Status) -> Result<&str, String> {
    match st.backend_state.as_str() {
        "Running" | "Starting" => Ok(&st.backend_state),
        "Stopped" => Err("Tailscale is stopped.".into()),
        "NeedsLogin" => {
            let mut s = String::from("Logged out.");
            if !st.auth_url.is_empty() {
                s.push_str(&format!("\nLog in at: {}", st.auth_url));
            }
            Err(s)
        }
        "NeedsMachineAuth" => Err("Machine is not yet approved by tailnet admin.".into()),
        other => Err(format!("unexpected state: {other}")),
    }
}

/// Go's `lastSeenFmt`.
pub fn last_seen_fmt(t: GoTime, now: GoTime) -> String {
    if t.is_zero() {
        return String::new();
    }
    let mins = ((now.unix_secs() - t.unix_secs()) / 60).max(1);
    if mins < 60 {
        format!(", last seen {mins}m ago")
    } else if mins < 24 * 60 {
        format!(", last seen {}h ago", mins / 60)
    } else {
        format!(", last seen {}d ago", mins / (24 * 60))
    }
}

/// Go's `dnsOrQuoteHostname`: the MagicDNS base name, or the quoted hostname.
pub fn dns_or_quote_hostname(st: &Status, ps: &PeerStatus) -> String {
    let base = dns_trim_suffix(&ps.dns_name, &st.magic_dns_suffix);
    if !base.is_empty() {
        return base;
    }
    format!("({:?})", sanitize_hostname(&ps.host_name))
}

/// Go's `ownerLogin`: the sharer or owner, as `name@` when it is an email address.
fn owner_login(st: &Status, ps: &PeerStatus) -> String {
    let uid = if ps.alt_sharer_user_id != 0 {
        ps.alt_sharer_user_id
    } else {
        ps.user_id
    };
    if uid == 0 {
        return "-".into();
    }
    match st.user.get(&uid) {
        None => uid.to_string(),
        Some(u) => match u.login_name.find('@') {
            Some(i) => u.login_name[..=i].to_string(),
            None => u.login_name.clone(),
        },
    }
}

fn status_cell(ps: &PeerStatus, now: GoTime) -> String {
    let any_traffic = ps.tx_bytes != 0 || ps.rx_bytes != 0;
    let offline = if ps.online {
        String::new()
    } else {
        format!("; offline{}", last_seen_fmt(ps.last_seen, now))
    };
    let mut s = String::new();
    if !ps.active {
        if ps.exit_node {
            s.push_str(&format!("idle; exit node{offline}"));
        } else if ps.exit_node_option {
            s.push_str(&format!("idle; offers exit node{offline}"));
        } else if any_traffic {
            s.push_str(&format!("idle{offline}"));
        } else if !ps.online {
            s.push_str(&format!("offline{}", last_seen_fmt(ps.last_seen, now)));
        } else {
            s.push('-');
        }
    } else {
        s.push_str("active; ");
        if ps.exit_node {
            s.push_str("exit node; ");
        } else if ps.exit_node_option {
            s.push_str("offers exit node; ");
        }
        if !ps.relay.is_empty() && ps.cur_addr.is_empty() && ps.peer_relay.is_empty() {
            s.push_str(&format!("relay {:?}", ps.relay));
        } else if !ps.cur_addr.is_empty() {
            s.push_str(&format!("direct {}", ps.cur_addr));
        } else if !ps.peer_relay.is_empty() {
            s.push_str(&format!("peer-relay {}", ps.peer_relay));
        }
        if !ps.online {
            s.push_str(&offline);
        }
    }
    if any_traffic {
        s.push_str(&format!(", tx {} rx {}", ps.tx_bytes, ps.rx_bytes));
    }
    s
}

/// Go's `text/tabwriter` (no flags, space padding): a tab ends a cell; the cells of a
/// column are padded to the widest one plus `pad` (at least `min_width`), where a column
/// runs over consecutive lines that have a cell in it, as Go's "column blocks" do.
pub fn tabwrite(text: &str, min_width: usize, pad: usize) -> String {
    let lines: Vec<Vec<&str>> = text
        .split_inclusive('\n')
        .map(|l| l.trim_end_matches('\n').split('\t').collect())
        .collect();
    let mut out = String::new();
    let mut widths = Vec::new();
    format_block(
        &lines,
        0,
        lines.len(),
        &mut widths,
        min_width,
        pad,
        &mut out,
    );
    out
}

fn format_block(
    lines: &[Vec<&str>],
    mut line0: usize,
    line1: usize,
    widths: &mut Vec<usize>,
    min_width: usize,
    pad: usize,
    out: &mut String,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        if column >= lines[this].len() - 1 {
            this += 1;
            continue;
        }
        // Lines before the block are written with the widths known so far.
        write_lines(lines, line0, this, widths, out);
        line0 = this;
        let mut width = min_width;
        while this < line1 && column < lines[this].len() - 1 {
            width = width.max(lines[this][column].chars().count() + pad);
            this += 1;
        }
        widths.push(width);
        format_block(lines, line0, this, widths, min_width, pad, out);
        widths.pop();
        line0 = this;
    }
    write_lines(lines, line0, line1, widths, out);
}

fn write_lines(lines: &[Vec<&str>], from: usize, to: usize, widths: &[usize], out: &mut String) {
    for cells in &lines[from..to] {
        for (j, c) in cells.iter().enumerate() {
            out.push_str(c);
            if j < widths.len() && j < cells.len() - 1 {
                out.extend(std::iter::repeat_n(
                    ' ',
                    widths[j].saturating_sub(c.chars().count()),
                ));
            }
        }
        out.push('\n');
    }
}

/// The table `tailscale status` prints, and whether location-based exit nodes were
/// left out.
pub fn format_table(st: &Status, o: TableOptions, now: GoTime) -> (String, bool) {
    let mut t = String::new();
    if o.header {
        t.push_str("IP\tHostname\tOwner\tOS\tStatus\t\n--\t--------\t-----\t--\t------\t\n");
    }
    let mut row = |ps: &PeerStatus| {
        t.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t\n",
            ps.tailscale_ips
                .first()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            dns_or_quote_hostname(st, ps),
            owner_login(st, ps),
            ps.os,
            status_cell(ps, now)
        ));
    };
    if o.show_self {
        if let Some(me) = &st.self_status {
            row(me);
        }
    }
    let mut loc_based = false;
    if o.peers {
        for ps in st.sorted_peers() {
            if ps.sharee_node {
                continue;
            }
            if ps.exit_node_option && !ps.exit_node && ps.dns_name.ends_with(MULLVAD_SUFFIX) {
                loc_based = true;
                continue;
            }
            if o.active && !ps.active {
                continue;
            }
            row(ps);
        }
    }
    (tabwrite(&t, 0, 2), loc_based)
}

fn run_status(ctx: &Ctx, p: &goflag::Parsed) -> CmdResult {
    if !p.args.is_empty() {
        return Err(msg("unexpected non-flag arguments to 'tailscale status'"));
    }
    if p.bool("web") {
        return Err(msg(
            "--web is not supported by ringscale: the status web page is not implemented",
        ));
    }
    let mut st = if p.bool("peers") {
        ctx.client.status()?
    } else {
        ctx.client.status_without_peers()?
    };
    if p.bool("json") {
        if p.bool("active") {
            st.peer.retain(|_, ps| ps.active);
        }
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"  ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        serde::Serialize::serialize(&st, &mut ser).map_err(|e| msg(e.to_string()))?;
        // Go prints it without a trailing newline.
        let _ = std::io::stdout().lock().write_all(&out);
        return Ok(());
    }
    let print_health = |st: &Status| {
        outln("# Health check:");
        for m in &st.health {
            outln(&format!("#     - {m}"));
        }
    };
    if let Err(description) = running_or_starting(&st) {
        if !st.health.is_empty() && matches!(st.backend_state.as_str(), "Starting" | "NoState") {
            print_health(&st);
            outln("");
        }
        outln(&description);
        return Err(CmdError::Exit(1));
    }
    let opts = TableOptions {
        show_self: p.bool("self"),
        peers: p.bool("peers"),
        active: p.bool("active"),
        header: p.bool("header"),
    };
    let (table, loc_based) = format_table(&st, opts, GoTime::now());
    let _ = std::io::stdout().lock().write_all(table.as_bytes());
    if loc_based {
        outln("");
        outln("# To see the full list of exit nodes, including location-based exit nodes, run `tailscale exit-node list`  ");
    }
    if !st.health.is_empty() {
        outln("");
        print_health(&st);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringscale_control::tailcfg::{NodePublic, UserProfile};
    use ringscale_dataplane::Key;

    fn peer(b: u8, name: &str, ip: &str) -> PeerStatus {
        PeerStatus {
            public_key: NodePublic(Key([b; 32])),
            dns_name: format!("{name}.tail1.ts.net."),
            host_name: name.into(),
            os: "linux".into(),
            user_id: 7,
            tailscale_ips: vec![ip.parse().unwrap()],
            online: true,
            ..PeerStatus::default()
        }
    }

    fn status() -> Status {
        let mut st = Status {
            backend_state: "Running".into(),
            magic_dns_suffix: "tail1.ts.net".into(),
            self_status: Some(peer(1, "router", "100.64.0.1")),
            ..Status::default()
        };
        st.user.insert(
            7,
            UserProfile {
                id: 7,
                login_name: "alice@example.com".into(),
                ..UserProfile::default()
            },
        );
        let mut exit = peer(2, "exit-node-fra", "100.64.0.2");
        exit.exit_node_option = true;
        exit.exit_node = true;
        exit.active = true;
        exit.cur_addr = "192.0.2.10:41641".into();
        exit.tx_bytes = 1200;
        exit.rx_bytes = 3400;
        let mut laptop = peer(3, "laptop", "100.64.0.3");
        laptop.online = false;
        laptop.last_seen = GoTime::from_unix(1_000_000 - 3 * 3600, 0);
        laptop.user_id = 9;
        let mut relayed = peer(4, "nas", "100.64.0.4");
        relayed.active = true;
        relayed.relay = "fra".into();
        let mut mullvad = peer(5, "de-fra-wg-001", "100.64.0.5");
        mullvad.dns_name = "de-fra-wg-001.mullvad.ts.net.".into();
        mullvad.exit_node_option = true;
        for p in [exit, laptop, relayed, mullvad] {
            st.peer.insert(p.public_key, p);
        }
        st
    }

    #[test]
    fn table_matches_go_layout() {
        let opts = TableOptions {
            show_self: true,
            peers: true,
            active: false,
            header: false,
        };
        let (t, loc) = format_table(&status(), opts, GoTime::from_unix(1_000_000, 0));
        assert!(loc);
        // Each column is its widest cell plus two spaces: IPs 10, names 13 ("exit-node-fra"),
        // owners 6 ("alice@"), OS 5, status 59 (the exit node's line).
        let row = |ip: &str, host: &str, owner: &str, status: &str| {
            format!("{ip:<12}{host:<15}{owner:<8}{:<7}{status:<61}\n", "linux")
        };
        let expected = [
            row("100.64.0.1", "router", "alice@", "-"),
            row(
                "100.64.0.2",
                "exit-node-fra",
                "alice@",
                "active; exit node; direct 192.0.2.10:41641, tx 1200 rx 3400",
            ),
            row("100.64.0.3", "laptop", "9", "offline, last seen 3h ago"),
            row("100.64.0.4", "nas", "alice@", "active; relay \"fra\""),
        ]
        .concat();
        assert_eq!(t, expected);
    }

    #[test]
    fn active_and_header_options() {
        let opts = TableOptions {
            show_self: false,
            peers: true,
            active: true,
            header: true,
        };
        let (t, _) = format_table(&status(), opts, GoTime::from_unix(1_000_000, 0));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("IP          Hostname"));
        assert!(lines[2].contains("exit-node-fra") && lines[3].contains("nas"));
    }

    #[test]
    fn non_running_states_explain_themselves() {
        let mut st = Status {
            backend_state: "NeedsLogin".into(),
            auth_url: "http://ctl/a/1".into(),
            ..Status::default()
        };
        assert_eq!(
            running_or_starting(&st).unwrap_err(),
            "Logged out.\nLog in at: http://ctl/a/1"
        );
        st.backend_state = "Stopped".into();
        assert_eq!(
            running_or_starting(&st).unwrap_err(),
            "Tailscale is stopped."
        );
        st.backend_state = "NeedsMachineAuth".into();
        assert_eq!(
            running_or_starting(&st).unwrap_err(),
            "Machine is not yet approved by tailnet admin."
        );
        st.backend_state = "Starting".into();
        assert!(running_or_starting(&st).is_ok());
    }

    #[test]
    fn names_and_last_seen() {
        let st = status();
        let mut ps = peer(9, "x", "100.64.0.9");
        ps.dns_name = String::new();
        ps.host_name = "My Box.local".into();
        assert_eq!(dns_or_quote_hostname(&st, &ps), "(\"my-box\")");
        let now = GoTime::from_unix(10_000_000, 0);
        assert_eq!(
            last_seen_fmt(GoTime::from_unix(10_000_000 - 10, 0), now),
            ", last seen 1m ago"
        );
        assert_eq!(
            last_seen_fmt(GoTime::from_unix(10_000_000 - 3 * 86400, 0), now),
            ", last seen 3d ago"
        );
        assert_eq!(last_seen_fmt(GoTime::ZERO, now), "");
    }
}
