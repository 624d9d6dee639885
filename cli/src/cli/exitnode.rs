//! `tailscale exit-node list [--filter=COUNTRY]`: the peers offering to be exit nodes.

use super::status::{last_seen_fmt, tabwrite};
use super::{msg, CmdError, CmdResult, Command, Ctx};
use crate::goflag::{self, Flag};
use ringscale_control::ipnstate::PeerStatus;
use ringscale_control::tailcfg::{GoTime, Location};
use std::io::Write;

pub const EXIT_NODE: Command = Command {
    name: "exit-node",
    short_usage: "tailscale exit-node [flags]",
    short_help: "Show machines on your tailnet configured as exit nodes",
    flags: &[],
    run: run_exit_node,
};

const LIST_FLAGS: &[Flag] = &[Flag::value("filter", "", "filter exit nodes by country")];

/// Go's `peerStatus` column.
fn peer_status(p: &PeerStatus, now: GoTime) -> String {
    if !p.active {
        let seen = last_seen_fmt(p.last_seen, now);
        if p.exit_node {
            return format!("selected but offline{seen}");
        }
        if !p.online {
            return format!("offline{seen}");
        }
    }
    if p.exit_node {
        "selected".into()
    } else {
        "-".into()
    }
}

struct City<'a> {
    name: String,
    peers: Vec<&'a PeerStatus>,
}

struct Country<'a> {
    name: String,
    cities: Vec<City<'a>>,
}

/// Go's `filterFormatAndSortExitNodes`: grouped by country and city; location-based
/// nodes collapsed to the best one per city (plus "Any" per country) unless filtering.
fn group<'a>(mut peers: Vec<&'a PeerStatus>, filter: &str) -> Vec<Country<'a>> {
    peers.sort_by(|a, b| a.dns_name.cmp(&b.dns_name));
    let none = Location::default();
    let loc = |p: &PeerStatus| p.location.clone().unwrap_or_else(|| none.clone());
    let mut countries: Vec<(String, Country)> = Vec::new();
    let mut city_of: Vec<(String, usize, usize)> = Vec::new(); // city code -> (country idx, city idx)
    for p in peers {
        let l = loc(p);
        if !filter.is_empty() && !l.country.eq_ignore_ascii_case(filter) {
            continue;
        }
        let ci = match countries
            .iter()
            .position(|(code, _)| *code == l.country_code)
        {
            Some(i) => i,
            None => {
                countries.push((
                    l.country_code.clone(),
                    Country {
                        name: l.country.clone(),
                        cities: Vec::new(),
                    },
                ));
                countries.len() - 1
            }
        };
        match city_of.iter().find(|(code, _, _)| *code == l.city_code) {
            Some(&(_, co, ct)) => countries[co].1.cities[ct].peers.push(p),
            None => {
                countries[ci].1.cities.push(City {
                    name: l.city.clone(),
                    peers: vec![p],
                });
                city_of.push((l.city_code.clone(), ci, countries[ci].1.cities.len() - 1));
            }
        }
    }
    let prio = |p: &PeerStatus| p.location.as_ref().map_or(0, |l| l.priority);
    let mut out: Vec<Country> = countries.into_iter().map(|(_, c)| c).collect();
    for country in &mut out {
        if country.name.is_empty() {
            continue;
        }
        let mut any: Vec<&PeerStatus> = Vec::new();
        for city in &mut country.cities {
            city.peers.sort_by_key(|p| std::cmp::Reverse(prio(p)));
            any.extend(city.peers.iter().copied());
            if filter.is_empty() {
                let keep: Vec<&PeerStatus> = city
                    .peers
                    .iter()
                    .enumerate()
                    .filter(|(i, p)| *i == 0 || p.exit_node)
                    .map(|(_, p)| *p)
                    .collect();
                city.peers = keep;
            }
        }
        country.cities.sort_by(|a, b| a.name.cmp(&b.name));
        any.sort_by_key(|p| std::cmp::Reverse(prio(p)));
        if country.cities.len() > 1 {
            country.cities.insert(
                0,
                City {
                    name: "Any".into(),
                    peers: vec![any[0]],
                },
            );
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The output of `exit-node list`, or its error.
pub fn format_exit_node_list(
    peers: &[&PeerStatus],
    filter: &str,
    now: GoTime,
) -> Result<String, String> {
    let offered: Vec<&PeerStatus> = peers
        .iter()
        .copied()
        .filter(|p| p.exit_node_option)
        .collect();
    if offered.is_empty() {
        return Err("no exit nodes found".into());
    }
    let countries = group(offered, filter);
    if countries.is_empty() && !filter.is_empty() {
        return Err(format!("no exit nodes found for {filter:?}"));
    }
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut t = String::from("\n IP\tHOSTNAME\tCOUNTRY\tCITY\tSTATUS\t");
    for country in &countries {
        for city in &country.cities {
            for p in &city.peers {
                t.push_str(&format!(
                    "\n {}\t{}\t{}\t{}\t{}\t",
                    p.tailscale_ips
                        .first()
                        .map(|i| i.to_string())
                        .unwrap_or_default(),
                    p.dns_name.trim_matches('.'),
                    dash(&country.name),
                    dash(&city.name),
                    peer_status(p, now)
                ));
            }
        }
    }
    t.push_str("\n\n");
    t.push_str("# To view the complete list of exit nodes for a country, use `tailscale exit-node list --filter=` followed by the country name.\n");
    t.push_str(
        "# To use an exit node, use `tailscale set --exit-node=` followed by the IP or hostname.\n",
    );
    Ok(tabwrite(&t, 10, 5))
}

fn run_exit_node(ctx: &Ctx, p: &goflag::Parsed) -> CmdResult {
    let Some(sub) = p.args.first() else {
        return Err(msg(
            "tailscale exit-node: missing subcommand: list, suggest",
        ));
    };
    match sub.as_str() {
        "list" => {
            let lp = super::parse_flags(LIST_FLAGS, &p.args[1..])?;
            if !lp.args.is_empty() {
                return Err(msg("unexpected non-flag arguments to 'tailscale exit-node list'"));
            }
            let st = ctx.client.status()?;
            let peers: Vec<&PeerStatus> = st.peer.values().collect();
            let out = format_exit_node_list(&peers, lp.str("filter"), GoTime::now()).map_err(msg)?;
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
            Ok(())
        }
        "suggest" => Err(msg("tailscale exit-node suggest: not supported by ringscale: exit node suggestions are not implemented")),
        "-h" | "--help" | "-help" => Err(CmdError::Help),
        other => Err(msg(format!("tailscale exit-node: unknown subcommand: {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringscale_control::tailcfg::NodePublic;
    use ringscale_dataplane::Key;

    fn exit(b: u8, name: &str, loc: Option<(&str, &str, i64)>) -> PeerStatus {
        PeerStatus {
            public_key: NodePublic(Key([b; 32])),
            dns_name: format!("{name}.tail1.ts.net."),
            tailscale_ips: vec![format!("100.64.0.{b}").parse().unwrap()],
            exit_node_option: true,
            online: true,
            location: loc.map(|(country, city, priority)| Location {
                country: country.into(),
                country_code: country[..2].to_uppercase(),
                city: city.into(),
                city_code: city[..3].to_uppercase(),
                priority,
                ..Location::default()
            }),
            ..PeerStatus::default()
        }
    }

    #[test]
    fn list_groups_and_collapses_location_nodes() {
        let mut own = exit(2, "gw", None);
        own.exit_node = true;
        let mut off = exit(3, "backup", None);
        off.online = false;
        let a = exit(10, "de-fra-1", Some(("Germany", "Frankfurt", 10)));
        let b = exit(11, "de-fra-2", Some(("Germany", "Frankfurt", 50)));
        let c = exit(12, "de-ber-1", Some(("Germany", "Berlin", 20)));
        let mut not_exit = exit(4, "laptop", None);
        not_exit.exit_node_option = false;
        let peers = vec![&own, &off, &a, &b, &c, &not_exit];
        let out = format_exit_node_list(&peers, "", GoTime::from_unix(0, 0)).unwrap();
        let rows: Vec<&str> = out.lines().skip(1).take(6).collect();
        assert!(rows[0].starts_with(" IP "), "{out}");
        assert!(
            rows[1].contains("backup.tail1.ts.net") && rows[1].trim_end().ends_with("offline"),
            "{out}"
        );
        assert!(
            rows[2].contains("gw.tail1.ts.net") && rows[2].contains("selected"),
            "{out}"
        );
        // Germany: "Any" (best priority overall), then Berlin, then Frankfurt's best.
        assert!(
            rows[3].contains("de-fra-2") && rows[3].contains("Any"),
            "{out}"
        );
        assert!(
            rows[4].contains("de-ber-1") && rows[4].contains("Berlin"),
            "{out}"
        );
        assert!(
            rows[5].contains("de-fra-2") && rows[5].contains("Frankfurt"),
            "{out}"
        );
        assert!(!out.contains("de-fra-1") && !out.contains("laptop"));
        let filtered = format_exit_node_list(&peers, "germany", GoTime::from_unix(0, 0)).unwrap();
        assert!(filtered.contains("de-fra-1"));
        assert_eq!(
            format_exit_node_list(&peers, "France", GoTime::from_unix(0, 0)).unwrap_err(),
            "no exit nodes found for \"France\""
        );
        assert_eq!(
            format_exit_node_list(&[&not_exit], "", GoTime::from_unix(0, 0)).unwrap_err(),
            "no exit nodes found"
        );
    }
}
