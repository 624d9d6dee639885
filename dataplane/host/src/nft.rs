//! Netfilter rules through the `nft` tool: the same chains Go's tailscaled installs
//! (tailscale-surface.md §5.2) — `ts-input`, `ts-forward` in table `filter` and
//! `ts-postrouting` in table `nat`, for `ip` and `ip6` — with jumps from the
//! conventional `INPUT`, `FORWARD` and `POSTROUTING` base chains, so that an accept
//! of ours is conclusive in the tables iptables-nft, ufw and Docker also use.
//!
//! Why the tool and not netlink: the measured binary cost is about the same (see the
//! issue-8 report), the only pure-Rust nftables netlink crate is GPL-3.0, and a
//! netlink implementation of our own (batches, expression encoding, and decoding
//! listed rules to find our jumps) would be a large, hard-to-verify body of code for
//! a handful of rules that change only when the configuration does. The price is a
//! runtime dependency on `nft`, which is present wherever nftables is the firewall
//! (OpenWrt fw4, Debian 11+); without it we warn and behave as netfilter mode off.
//!
//! Every change is one `nft -f -` transaction generated from the whole desired state
//! (plain text, built by [`script`] with no I/O), so a failure leaves the previous
//! rules in place. Tables and base chains we had to create carry the comment
//! [`OWNER`]; cleanup deletes those when nothing else lives in them, which leaves
//! `nft list ruleset` as it was before we started.
//!
//! One addition Go does not have: a table of family `arp` of our own (built by
//! [`arp_script`], in a transaction of its own) that marks incoming ARP requests
//! as ours, so that strict rp_filter does not make us ignore our LAN neighbours'
//! ARP while table 52 routes the LAN into the tunnel (see [`arp_script`]).

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// Comment on tables and base chains we created.
pub const OWNER: &str = "ringscale";

pub use ringscale_sys::fwmark::{BYPASS_MARK, FWMARK_MASK, SUBNET_ROUTE_MARK};

/// `--netfilter-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NetfilterMode {
    /// Chains, rules and the jumps into them (the default).
    #[default]
    On,
    /// Chains and rules, but no jumps: the administrator wires them in.
    NoDivert,
    /// Nothing at all.
    Off,
}

/// What the netfilter rules depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetfilterConfig {
    pub mode: NetfilterMode,
    pub tun: String,
    /// Our Tailscale addresses (loopback traffic from them is accepted).
    pub local_addrs: Vec<IpAddr>,
    /// Our WireGuard UDP port.
    pub port: u16,
    /// Masquerade forwarded tailnet traffic (`--snat-subnet-routes`, default on).
    pub snat: bool,
    /// Drop 100.64.0.0/10 arriving on other interfaces (off only with the node
    /// capability `DisableLinuxCGNATDropRule`).
    pub cgnat_drop: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ip, Family::Ip6];

    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    fn addr(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
}

/// Our chains and where they hook in: (table, base chain, hook spec, our chain).
/// The `mangle` pair is the rp_filter workaround (IPv4 only, as rp_filter is).
const HOOKS: [(&str, &str, &str, &str); 5] = [
    (
        "filter",
        "INPUT",
        "type filter hook input priority filter; policy accept;",
        "ts-input",
    ),
    (
        "filter",
        "FORWARD",
        "type filter hook forward priority filter; policy accept;",
        "ts-forward",
    ),
    (
        "nat",
        "POSTROUTING",
        "type nat hook postrouting priority srcnat; policy accept;",
        "ts-postrouting",
    ),
    (
        "mangle",
        "PREROUTING",
        "type filter hook prerouting priority mangle; policy accept;",
        "ts-prerouting",
    ),
    (
        "mangle",
        "OUTPUT",
        "type route hook output priority mangle; policy accept;",
        "ts-output",
    ),
];

/// The tables we touch, in the order cleanup visits them.
const TABLES: [&str; 3] = ["filter", "nat", "mangle"];

/// One chain as `nft -a list table` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainListing {
    pub name: String,
    pub comment: Option<String>,
    /// A base chain (attached to a hook).
    pub base: bool,
    pub policy_accept: bool,
    /// (rule text without the handle, handle).
    pub rules: Vec<(String, u64)>,
}

/// One table as `nft -a list table` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableListing {
    pub comment: Option<String>,
    pub chains: Vec<ChainListing>,
}

impl TableListing {
    pub fn chain(&self, name: &str) -> Option<&ChainListing> {
        self.chains.iter().find(|c| c.name == name)
    }

    fn owned_by_us(&self) -> bool {
        self.comment.as_deref() == Some(OWNER)
    }
}

fn comment_of(line: &str) -> Option<String> {
    let rest = line.strip_prefix("comment \"")?;
    Some(rest.strip_suffix('"')?.to_string())
}

/// Parses the output of `nft -a list table FAMILY NAME`.
pub fn parse_listing(text: &str) -> TableListing {
    let mut t = TableListing::default();
    let mut chain: Option<ChainListing> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with("table ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("chain ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            chain = Some(ChainListing {
                name: name.trim_matches('"').to_string(),
                ..Default::default()
            });
            continue;
        }
        if line == "}" {
            if let Some(c) = chain.take() {
                t.chains.push(c);
            }
            continue;
        }
        match chain.as_mut() {
            None => {
                if let Some(c) = comment_of(line) {
                    t.comment = Some(c);
                }
            }
            Some(c) => {
                if let Some(com) = comment_of(line) {
                    c.comment = Some(com);
                } else if line.starts_with("type ") && line.contains(" hook ") {
                    c.base = true;
                    c.policy_accept = !line.contains("policy drop");
                } else if let Some((rule, handle)) = line.rsplit_once(" # handle ") {
                    if let Ok(h) = handle.trim().parse() {
                        c.rules.push((rule.trim().to_string(), h));
                    }
                }
            }
        }
    }
    t
}

/// The current state of one family's `filter` and `nat` tables.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    pub filter: Option<TableListing>,
    pub nat: Option<TableListing>,
    pub mangle: Option<TableListing>,
}

impl Existing {
    fn table(&self, name: &str) -> Option<&TableListing> {
        match name {
            "filter" => self.filter.as_ref(),
            "nat" => self.nat.as_ref(),
            _ => self.mangle.as_ref(),
        }
    }
}

fn is_jump_to(rule: &str, chain: &str) -> bool {
    rule.split_whitespace()
        .collect::<Vec<_>>()
        .ends_with(&["jump", chain])
}

/// The transaction that brings one family from `existing` to `cfg`.
/// `with_nat` is false where the kernel has no NAT for the family.
pub fn script(fam: Family, cfg: &NetfilterConfig, existing: &Existing, with_nat: bool) -> String {
    let f = fam.name();
    let a = fam.addr();
    let tun = &cfg.tun;
    let mut s = String::new();
    let mut created: Vec<&str> = Vec::new();
    for (table, base, spec, ours) in HOOKS {
        if (table == "nat" && !with_nat) || (table == "mangle" && fam == Family::Ip6) {
            continue;
        }
        let listing = existing.table(table);
        if listing.is_none() && !created.contains(&table) {
            created.push(table);
            let _ = writeln!(s, "add table {f} {table} {{ comment \"{OWNER}\"; }}");
        }
        let base_chain = listing.and_then(|t| t.chain(base));
        if base_chain.is_none() {
            let _ = writeln!(
                s,
                "add chain {f} {table} {base} {{ {spec} comment \"{OWNER}\"; }}"
            );
        }
        let _ = writeln!(s, "add chain {f} {table} {ours}");
        let _ = writeln!(s, "flush chain {f} {table} {ours}");
        let jumps: Vec<u64> = base_chain
            .map(|c| {
                c.rules
                    .iter()
                    .filter(|(r, _)| is_jump_to(r, ours))
                    .map(|(_, h)| *h)
                    .collect()
            })
            .unwrap_or_default();
        match cfg.mode {
            NetfilterMode::On if jumps.is_empty() => {
                let _ = writeln!(s, "insert rule {f} {table} {base} jump {ours}");
            }
            NetfilterMode::On => {
                // Keep one; remove duplicates left by someone else's restarts.
                for h in &jumps[1..] {
                    let _ = writeln!(s, "delete rule {f} {table} {base} handle {h}");
                }
            }
            _ => {
                for h in &jumps {
                    let _ = writeln!(s, "delete rule {f} {table} {base} handle {h}");
                }
            }
        }
    }
    let rule = |s: &mut String, chain: &str, body: &str| {
        let table = match chain {
            "ts-postrouting" => "nat",
            "ts-prerouting" | "ts-output" => "mangle",
            _ => "filter",
        };
        let _ = writeln!(s, "add rule {f} {table} {chain} {body}");
    };
    // ts-input
    for ip in cfg
        .local_addrs
        .iter()
        .filter(|ip| ip.is_ipv6() == (fam == Family::Ip6))
    {
        rule(
            &mut s,
            "ts-input",
            &format!("iifname \"lo\" {a} saddr {ip} accept"),
        );
    }
    rule(&mut s, "ts-input", &format!("iifname \"{tun}\" accept"));
    if cfg.port != 0 {
        rule(
            &mut s,
            "ts-input",
            &format!("udp dport {} accept", cfg.port),
        );
    }
    if fam == Family::Ip && cfg.cgnat_drop {
        // ChromeOS VMs live in 100.115.92.0/23; Go exempts them.
        rule(
            &mut s,
            "ts-input",
            &format!("iifname != \"{tun}\" ip saddr 100.115.92.0/23 return"),
        );
        rule(
            &mut s,
            "ts-input",
            &format!("iifname != \"{tun}\" ip saddr 100.64.0.0/10 drop"),
        );
    }
    // ts-forward: mark what comes in from the tailnet, accept it, and accept what goes
    // out to it (except spoofed tailnet sources from elsewhere).
    let (mark, mask) = (SUBNET_ROUTE_MARK, FWMARK_MASK);
    let keep = !mask | mark;
    rule(
        &mut s,
        "ts-forward",
        &format!("iifname \"{tun}\" meta mark set meta mark & {keep:#010x} | {mark:#010x}"),
    );
    rule(
        &mut s,
        "ts-forward",
        &format!("meta mark & {mask:#010x} == {mark:#010x} accept"),
    );
    if fam == Family::Ip {
        rule(
            &mut s,
            "ts-forward",
            &format!("oifname \"{tun}\" ip saddr 100.64.0.0/10 drop"),
        );
    }
    rule(&mut s, "ts-forward", &format!("oifname \"{tun}\" accept"));
    if with_nat && cfg.snat {
        rule(
            &mut s,
            "ts-postrouting",
            &format!("meta mark & {mask:#010x} == {mark:#010x} oifname != \"{tun}\" masquerade"),
        );
    }
    if fam == Family::Ip {
        // Strict rp_filter checks a reply's source against the routes, and with an
        // exit node table 52 claims every source: replies to our own (bypass-marked)
        // connections would be dropped as martians. Remember the mark on the
        // connection and put it back on its replies; with src_valid_mark the check
        // then uses the main table, as the outgoing packets did. Unlike Go, not only
        // on a connection's first packet: a peer may have started our WireGuard
        // flow, and its conntrack entry must learn the mark from our first answer.
        let bypass = BYPASS_MARK;
        rule(
            &mut s,
            "ts-output",
            &format!(
                "meta mark & {mask:#010x} == {bypass:#010x} ct mark & {mask:#010x} != {bypass:#010x} ct mark set ct mark | {bypass:#010x}"
            ),
        );
        rule(
            &mut s,
            "ts-prerouting",
            &format!(
                "ct state established,related ct mark & {mask:#010x} == {bypass:#010x} meta mark set meta mark | {bypass:#010x}"
            ),
        );
    }
    s
}

/// Our table in the `arp` family (the name says whose it is; nothing else lives in
/// it, so cleanup deletes it whole).
pub const ARP_TABLE: &str = OWNER;

/// The transaction for the ARP half of the rp_filter workaround: with `wanted`,
/// (re)creates `table arp ringscale`, whose one rule sets the bypass mark on every
/// incoming ARP request; otherwise deletes the table if it `exists`.
///
/// Why: a node using an exit node without `--exit-node-allow-lan-access` routes its
/// own LAN prefix into the tunnel (table 52). Replying to an ARP request, the
/// kernel (`arp_process` → `ip_route_input_noref` → `fib_validate_source`) checks
/// the requester's address against the routes as if it were an IP packet's source;
/// under strict rp_filter that lookup goes through table 52, answers "the TUN", not
/// the interface the request came in on, and the request is dropped unanswered. The
/// LAN neighbours (the gateway, or an exit node on the same LAN) then lose our MAC
/// address when their entry expires, and the WireGuard traffic back to us stalls.
/// The reverse-path lookup carries the packet's mark when `src_valid_mark` is on
/// (which the router turns on together with these rules, as Go and wg-quick do),
/// so a request marked here meets the rule at 5210 and is checked against the main
/// table, as it was before we started. Only requests consult the routes, so replies
/// are left alone (IP packets are the `ts-prerouting` chain's business); a TUN
/// carries no ARP, so no interface needs excluding. One side effect: on a host that
/// answers ARP for others (`proxy_arp`), that decision also looks at the main table
/// instead of table 52, as it did before we started.
pub fn arp_script(wanted: bool, exists: bool) -> String {
    let t = ARP_TABLE;
    let mut s = String::new();
    if wanted {
        let (mask, bypass) = (FWMARK_MASK, BYPASS_MARK);
        // The form `nft list` prints for "clear our byte, set the bypass value".
        let keep = !mask | bypass;
        let _ = writeln!(s, "add table arp {t} {{ comment \"{OWNER}\"; }}");
        // Before any ARP filtering (-150, where mangle sits for IP).
        let _ = writeln!(
            s,
            "add chain arp {t} input {{ type filter hook input priority -150; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain arp {t} input");
        let _ = writeln!(
            s,
            "add rule arp {t} input arp operation request meta mark set meta mark & {keep:#010x} | {bypass:#010x}"
        );
    } else if exists {
        let _ = writeln!(s, "delete table arp {t}");
    }
    s
}

/// The transaction that removes everything of ours from one family, given what is
/// there now: jumps, our chains, and base chains and tables we created if they are
/// otherwise empty.
pub fn cleanup_script(fam: Family, existing: &Existing) -> String {
    let f = fam.name();
    let mut s = String::new();
    for table in TABLES {
        let Some(t) = existing.table(table) else {
            continue;
        };
        let mut remaining: Vec<&str> = t.chains.iter().map(|c| c.name.as_str()).collect();
        for (tbl, base, _, ours) in HOOKS {
            if tbl != table {
                continue;
            }
            let mut base_left = 0;
            if let Some(b) = t.chain(base) {
                for (r, h) in &b.rules {
                    if is_jump_to(r, ours) {
                        let _ = writeln!(s, "delete rule {f} {table} {base} handle {h}");
                    } else {
                        base_left += 1;
                    }
                }
                if base_left == 0 && b.comment.as_deref() == Some(OWNER) && b.policy_accept {
                    let _ = writeln!(s, "delete chain {f} {table} {base}");
                    remaining.retain(|c| *c != base);
                }
            }
            if t.chain(ours).is_some() {
                let _ = writeln!(s, "flush chain {f} {table} {ours}");
                let _ = writeln!(s, "delete chain {f} {table} {ours}");
                remaining.retain(|c| *c != ours);
            }
        }
        if remaining.is_empty() && t.owned_by_us() {
            let _ = writeln!(s, "delete table {f} {table}");
        }
    }
    s
}

/// Where the `nft` tool is, if anywhere.
pub fn nft_path() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

fn nft() -> io::Result<Command> {
    let path = nft_path().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "the nft tool is not installed (needed for netfilter rules)",
        )
    })?;
    Ok(Command::new(path))
}

/// Runs a transaction through `nft -f -`.
pub fn run(script: &str) -> io::Result<()> {
    if script.is_empty() {
        return Ok(());
    }
    let mut child = nft()?
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Lists one table; None if it does not exist.
pub fn list_table(fam: Family, table: &str) -> io::Result<Option<TableListing>> {
    list_family_table(fam.name(), table)
}

fn list_family_table(family: &str, table: &str) -> io::Result<Option<TableListing>> {
    let out = nft()?
        .args(["-a", "list", "table", family, table])
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        return Ok(Some(parse_listing(&String::from_utf8_lossy(&out.stdout))));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(io::Error::other(format!("nft list table: {}", err.trim())))
    }
}

pub fn existing(fam: Family) -> io::Result<Existing> {
    Ok(Existing {
        filter: list_table(fam, "filter")?,
        nat: list_table(fam, "nat")?,
        mangle: match fam {
            Family::Ip => list_table(fam, "mangle")?,
            Family::Ip6 => None,
        },
    })
}

/// Installs the rules of `cfg` for both families. A kernel without IPv6 (or without
/// IPv6 NAT) gets what it supports; comments are dropped for an `nft` too old for them.
pub fn apply(cfg: &NetfilterConfig) -> io::Result<()> {
    if cfg.mode == NetfilterMode::Off {
        return cleanup();
    }
    for fam in Family::ALL {
        let ex = existing(fam)?;
        let attempt = |with_nat: bool| -> io::Result<()> {
            let text = script(fam, cfg, &ex, with_nat);
            run(&text).or_else(|e| {
                if text.contains("comment") {
                    run(&text.replace(&format!(" comment \"{OWNER}\";"), ""))
                } else {
                    Err(e)
                }
            })
        };
        match attempt(true) {
            Ok(()) => {}
            Err(e) if fam == Family::Ip6 => {
                log::debug!("ip6 netfilter with NAT failed ({e}); trying without NAT");
                if let Err(e) = attempt(false) {
                    log::warn!("ip6 netfilter rules: {e}");
                }
            }
            Err(e) => return Err(e),
        }
    }
    // Its own transaction: a kernel without nf_tables ARP support
    // (CONFIG_NF_TABLES_ARP) must not cost us the IP rules.
    if let Err(e) = apply_arp(cfg.mode == NetfilterMode::On) {
        log::warn!(
            "ARP marking for strict rp_filter: {e} (with an exit node in use, LAN \
             neighbours may stop reaching this host; rp_filter=2 avoids it)"
        );
    }
    Ok(())
}

/// Brings the ARP table to `wanted` (see [`arp_script`]).
fn apply_arp(wanted: bool) -> io::Result<()> {
    let exists = list_family_table("arp", ARP_TABLE)?.is_some();
    let text = arp_script(wanted, exists);
    run(&text).or_else(|e| {
        if text.contains("comment") {
            run(&text.replace(&format!(" comment \"{OWNER}\";"), ""))
        } else {
            Err(e)
        }
    })
}

/// Removes all of our netfilter state, from both families.
pub fn cleanup() -> io::Result<()> {
    if nft_path().is_none() {
        return Ok(());
    }
    let mut first_err = None;
    for fam in Family::ALL {
        let res = existing(fam).and_then(|ex| run(&cleanup_script(fam, &ex)));
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
    }
    if let Err(e) = apply_arp(false) {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"table ip filter { # handle 1
	comment "ringscale"
	chain INPUT { # handle 1
		comment "ringscale"
		type filter hook input priority filter; policy accept;
		jump ts-input # handle 6
	}

	chain ts-input { # handle 2
		iifname "lo" ip saddr 100.64.0.1 accept # handle 3
		udp dport 41641 accept # handle 5
	}

	chain FORWARD { # handle 7
		type filter hook forward priority filter; policy drop;
		ct state established accept # handle 11
		jump ts-forward # handle 12
	}

	chain ts-forward { # handle 8
	}
}
"#;

    fn cfg(mode: NetfilterMode, snat: bool) -> NetfilterConfig {
        NetfilterConfig {
            mode,
            tun: "tailscale0".into(),
            local_addrs: vec![
                "100.64.0.1".parse().unwrap(),
                "fd7a:115c:a1e0::1".parse().unwrap(),
            ],
            port: 41641,
            snat,
            cgnat_drop: true,
        }
    }

    #[test]
    fn parses_a_listing() {
        let t = parse_listing(LISTING);
        assert_eq!(t.comment.as_deref(), Some("ringscale"));
        let input = t.chain("INPUT").unwrap();
        assert!(input.base && input.policy_accept);
        assert_eq!(input.comment.as_deref(), Some("ringscale"));
        assert_eq!(input.rules, vec![("jump ts-input".to_string(), 6)]);
        let fwd = t.chain("FORWARD").unwrap();
        assert!(fwd.base && !fwd.policy_accept && fwd.comment.is_none());
        assert_eq!(fwd.rules.len(), 2);
        assert_eq!(t.chain("ts-input").unwrap().rules.len(), 2);
        assert!(t.chain("ts-forward").unwrap().rules.is_empty());
    }

    #[test]
    fn fresh_host_gets_tables_chains_jumps_and_rules() {
        let s = script(
            Family::Ip,
            &cfg(NetfilterMode::On, true),
            &Existing::default(),
            true,
        );
        for want in [
            "add table ip filter { comment \"ringscale\"; }",
            "add chain ip filter INPUT { type filter hook input priority filter; policy accept; comment \"ringscale\"; }",
            "insert rule ip filter INPUT jump ts-input",
            "insert rule ip filter FORWARD jump ts-forward",
            "insert rule ip nat POSTROUTING jump ts-postrouting",
            "add rule ip filter ts-input iifname \"lo\" ip saddr 100.64.0.1 accept",
            "add rule ip filter ts-input udp dport 41641 accept",
            "add rule ip filter ts-input iifname != \"tailscale0\" ip saddr 100.64.0.0/10 drop",
            "add rule ip filter ts-forward iifname \"tailscale0\" meta mark set meta mark & 0xff04ffff | 0x00040000",
            "add rule ip filter ts-forward meta mark & 0x00ff0000 == 0x00040000 accept",
            "add rule ip nat ts-postrouting meta mark & 0x00ff0000 == 0x00040000 oifname != \"tailscale0\" masquerade",
        ] {
            assert!(s.lines().any(|l| l == want), "missing {want:?} in\n{s}");
        }
        assert!(s.contains("insert rule ip mangle PREROUTING jump ts-prerouting"));
        assert!(s.contains("add chain ip mangle OUTPUT { type route hook output priority mangle; policy accept; comment \"ringscale\"; }"));
        assert!(s.contains("add rule ip mangle ts-output meta mark & 0x00ff0000 == 0x00080000 ct mark & 0x00ff0000 != 0x00080000 ct mark set ct mark | 0x00080000"));
        // The v6 address is not in the ip family; no CGNAT rule in ip6.
        assert!(!s.contains("fd7a"));
        let s6 = script(
            Family::Ip6,
            &cfg(NetfilterMode::On, true),
            &Existing::default(),
            true,
        );
        assert!(s6.contains("ip6 saddr fd7a:115c:a1e0::1 accept"));
        assert!(!s6.contains("100.64.0.0/10"));
        assert!(!s6.contains("mangle"), "rp_filter is IPv4 only");
    }

    #[test]
    fn existing_tables_are_reused_and_jumps_not_duplicated() {
        let ex = Existing {
            filter: Some(parse_listing(LISTING)),
            nat: None,
            mangle: None,
        };
        let s = script(Family::Ip, &cfg(NetfilterMode::On, false), &ex, true);
        assert!(!s.contains("add table ip filter"));
        assert!(!s.contains("add chain ip filter INPUT"));
        assert!(!s.contains("add chain ip filter FORWARD"));
        assert!(!s.contains("jump ts-input\n") || !s.contains("insert rule ip filter INPUT"));
        assert!(!s.contains("insert rule ip filter FORWARD"));
        // Rules are refilled atomically.
        assert!(s.contains("flush chain ip filter ts-input"));
        // SNAT off: no masquerade, but the nat chain still exists and is hooked.
        assert!(!s.contains("masquerade"));
        assert!(s.contains("insert rule ip nat POSTROUTING jump ts-postrouting"));
    }

    #[test]
    fn nodivert_removes_jumps_but_keeps_chains() {
        let ex = Existing {
            filter: Some(parse_listing(LISTING)),
            nat: None,
            mangle: None,
        };
        let s = script(Family::Ip, &cfg(NetfilterMode::NoDivert, true), &ex, true);
        assert!(s.contains("delete rule ip filter INPUT handle 6"));
        assert!(s.contains("delete rule ip filter FORWARD handle 12"));
        assert!(!s.contains("insert rule"));
        assert!(s.contains("add rule ip filter ts-forward"));
    }

    #[test]
    fn arp_requests_get_the_bypass_mark_in_a_table_of_ours() {
        let s = arp_script(true, false);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines,
            [
                "add table arp ringscale { comment \"ringscale\"; }",
                "add chain arp ringscale input { type filter hook input priority -150; policy accept; }",
                "flush chain arp ringscale input",
                // As `nft list` prints it back.
                "add rule arp ringscale input arp operation request meta mark set meta mark & 0xff08ffff | 0x00080000",
            ]
        );
        // Re-applying refills the chain instead of adding a second rule.
        assert_eq!(arp_script(true, true), s);
        // Whatever an ARP request carried in our byte, the mark it leaves with is the
        // one the rule at 5210 (fwmark BYPASS_MARK/FWMARK_MASK → main) matches; the
        // other bits are kept.
        let rule = lines[3];
        let nums: Vec<u32> = rule
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("0x"))
            .map(|h| u32::from_str_radix(h, 16).unwrap())
            .collect();
        let (keep, set) = (nums[0], nums[1]);
        for before in [0, SUBNET_ROUTE_MARK, 0x00ff_0000, 0x1234_0001] {
            let after = (before & keep) | set;
            assert_eq!(after & FWMARK_MASK, BYPASS_MARK, "from {before:#x}");
            assert_eq!(after & !FWMARK_MASK, before & !FWMARK_MASK);
        }
    }

    #[test]
    fn arp_table_goes_when_not_wanted() {
        assert_eq!(arp_script(false, true), "delete table arp ringscale\n");
        // Nothing to delete: no transaction at all (an empty script is not run).
        assert_eq!(arp_script(false, false), "");
    }

    #[test]
    fn cleanup_removes_only_what_is_ours() {
        let ex = Existing {
            filter: Some(parse_listing(LISTING)),
            nat: None,
            mangle: None,
        };
        let s = cleanup_script(Family::Ip, &ex);
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines.contains(&"delete rule ip filter INPUT handle 6"));
        assert!(lines.contains(&"delete chain ip filter INPUT"));
        assert!(lines.contains(&"delete rule ip filter FORWARD handle 12"));
        assert!(lines.contains(&"delete chain ip filter ts-input"));
        assert!(lines.contains(&"delete chain ip filter ts-forward"));
        // FORWARD is the administrator's (no comment, a rule of theirs): kept, and so
        // the table stays.
        assert!(!lines.contains(&"delete chain ip filter FORWARD"));
        assert!(!lines.contains(&"delete table ip filter"));
        // A table that is all ours goes entirely.
        let ours = parse_listing(
            "table ip nat { # handle 2\n\tcomment \"ringscale\"\n\tchain POSTROUTING { # handle 1\n\t\tcomment \"ringscale\"\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tjump ts-postrouting # handle 4\n\t}\n\tchain ts-postrouting { # handle 2\n\t\tmasquerade # handle 3\n\t}\n}\n",
        );
        let s = cleanup_script(
            Family::Ip,
            &Existing {
                filter: None,
                nat: Some(ours),
                mangle: None,
            },
        );
        assert!(s.ends_with("delete table ip nat\n"), "{s}");
    }
}
