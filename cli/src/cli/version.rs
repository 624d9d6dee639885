//! `tailscale version [--daemon] [--json]`.

use super::{go_quote_list, msg, outln, CmdResult, Command, Ctx};
use crate::goflag::{self, Flag};

pub const VERSION_CMD: Command = Command {
    name: "version",
    short_usage: "tailscale version [flags]",
    short_help: "Print Tailscale version",
    flags: &[
        Flag::bool("daemon", "also print local node's daemon version"),
        Flag::bool("json", "output in JSON format"),
        Flag::bool("upstream", "fetch and print the latest upstream release version from pkgs.tailscale.com"),
        Flag::value("track", "", "which track to check for updates: \"stable\", \"release-candidate\", or \"unstable\" (dev); empty means same as current"),
    ],
    run: run_version,
};

fn run_version(ctx: &Ctx, p: &goflag::Parsed) -> CmdResult {
    if !p.args.is_empty() {
        return Err(msg(format!(
            "too many non-flag arguments: {}",
            go_quote_list(&p.args)
        )));
    }
    if p.bool("upstream") {
        return Err(msg("fetching latest version not supported in this build"));
    }
    let daemon = if p.bool("daemon") {
        Some(ctx.client.status_without_peers()?.version)
    } else {
        None
    };
    let v = crate::VERSION;
    if p.bool("json") {
        let mut m = serde_json::json!({
            "majorMinorPatch": v,
            "short": v,
            "long": v,
            "unstableBranch": false,
            "cap": ringscale_control::tailcfg::CAPABILITY_VERSION,
        });
        if let Some(d) = &daemon {
            m["daemonLong"] = serde_json::Value::String(d.clone());
        }
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        serde::Serialize::serialize(&m, &mut ser).map_err(|e| msg(e.to_string()))?;
        outln(&String::from_utf8_lossy(&buf));
        return Ok(());
    }
    match daemon {
        None => outln(v),
        Some(d) => {
            outln(&format!("Client: {v}"));
            outln(&format!("Daemon: {d}"));
        }
    }
    Ok(())
}
