//! `tailscale down` (stop, keep the login) and `tailscale logout` (expire the node key).

use super::{go_quote_list, msg, CmdResult, Command, Ctx};
use crate::goflag::{self, Flag};
use ringscale_control::prefs::MaskedPrefs;

pub const DOWN: Command = Command {
    name: "down",
    short_usage: "tailscale down",
    short_help: "Disconnect from Tailscale",
    flags: &[
        Flag::value(
            "accept-risk",
            "",
            "accept risk and skip confirmation for risk types: lose-ssh,mac-app-connector,all",
        ),
        Flag::value(
            "reason",
            "",
            "reason for the disconnect, if required by a policy",
        ),
    ],
    run: run_down,
};

pub const LOGOUT: Command = Command {
    name: "logout",
    short_usage: "tailscale logout",
    short_help: "Disconnect from Tailscale and expire current node key",
    flags: &[Flag::value(
        "reason",
        "",
        "reason for the logout, if required by a policy",
    )],
    run: run_logout,
};

/// The PATCH body of `down`: only WantRunning=false.
pub fn down_edit() -> MaskedPrefs {
    let mut mp = MaskedPrefs::default();
    mp.prefs.want_running = false;
    mp.mask.want_running_set = true;
    mp
}

fn run_down(ctx: &Ctx, p: &goflag::Parsed) -> CmdResult {
    if !p.args.is_empty() {
        return Err(msg(format!(
            "too many non-flag arguments: {}",
            go_quote_list(&p.args)
        )));
    }
    let st = ctx
        .client
        .status()
        .map_err(|e| msg(format!("error fetching current status: {e}")))?;
    if st.backend_state == "Stopped" {
        eprintln!("Tailscale was already stopped.");
        return Ok(());
    }
    ctx.client.edit_prefs(&down_edit())?;
    Ok(())
}

fn run_logout(ctx: &Ctx, p: &goflag::Parsed) -> CmdResult {
    if !p.args.is_empty() {
        return Err(msg(format!(
            "too many non-flag arguments: {}",
            go_quote_list(&p.args)
        )));
    }
    ctx.client.logout()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn down_patches_only_want_running() {
        let v = serde_json::to_value(super::down_edit()).unwrap();
        assert_eq!(v["WantRunning"], false);
        assert_eq!(v["WantRunningSet"], true);
        let sets: Vec<&String> = v
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.ends_with("Set"))
            .collect();
        assert_eq!(sets, vec!["WantRunningSet"]);
    }
}
