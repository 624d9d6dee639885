//! The LocalAPI's wire types from Go's `ipn` and `apitype` packages: the backend
//! [`State`], the IPN bus message [`Notify`] (newline-delimited JSON on
//! `watch-ipn-bus`), the `start` body [`Options`] and the `whois` answer
//! [`WhoIsResponse`] (tailscale-surface.md §1.1). Plain types, no I/O.
//!
//! JSON names and null/omit rules follow `ipn/backend.go` and `client/tailscale/apitype`
//! of tailscale 1.103 so that Go's CLI can read our daemon and our CLI Go's daemon.

use crate::ipnstate::Status;
use crate::prefs::Prefs;
use crate::tailcfg::{nullable, CapMap, Node, UserProfile};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// `ipn.State`: where the backend is in its life. JSON carries the integer (in
/// [`Notify`]); `ipnstate.Status.BackendState` carries [`State::as_str`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum State {
    #[default]
    NoState,
    InUseOtherUser,
    NeedsLogin,
    NeedsMachineAuth,
    Stopped,
    Starting,
    Running,
}

const STATE_NAMES: [&str; 7] = [
    "NoState",
    "InUseOtherUser",
    "NeedsLogin",
    "NeedsMachineAuth",
    "Stopped",
    "Starting",
    "Running",
];

const STATES: [State; 7] = [
    State::NoState,
    State::InUseOtherUser,
    State::NeedsLogin,
    State::NeedsMachineAuth,
    State::Stopped,
    State::Starting,
    State::Running,
];

impl State {
    pub fn as_int(self) -> i64 {
        self as i64
    }

    pub fn from_int(n: i64) -> Option<State> {
        usize::try_from(n).ok().and_then(|i| STATES.get(i)).copied()
    }

    /// The name Go's `State.String` gives (and `Status.BackendState` holds).
    pub fn as_str(self) -> &'static str {
        STATE_NAMES[self as usize]
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<State, String> {
        STATE_NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| STATES[i])
            .ok_or_else(|| format!("unknown backend state {s:?}"))
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.as_int())
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<State, D::Error> {
        let n = i64::deserialize(d)?;
        State::from_int(n).ok_or_else(|| serde::de::Error::custom(format!("unknown ipn.State {n}")))
    }
}

/// `ipn.NotifyWatchOpt` bits: the `mask` query parameter of `watch-ipn-bus`.
pub mod watch_opt {
    pub const ENGINE_UPDATES: u64 = 1 << 0;
    /// The first message carries the current State (and BrowseToURL when NeedsLogin).
    pub const INITIAL_STATE: u64 = 1 << 1;
    /// The first message carries the current Prefs.
    pub const INITIAL_PREFS: u64 = 1 << 2;
    /// The first message carries the current netmap (here: the self node).
    pub const INITIAL_NETMAP: u64 = 1 << 3;
    pub const NO_PRIVATE_KEYS: u64 = 1 << 4;
    pub const INITIAL_HEALTH_STATE: u64 = 1 << 7;
    pub const RATE_LIMIT: u64 = 1 << 8;
    pub const PEER_CHANGES: u64 = 1 << 12;
    pub const NO_NETMAP: u64 = 1 << 13;
    /// The first message carries the current `ipnstate.Status`.
    pub const INITIAL_STATUS: u64 = 1 << 14;
    pub const PEER_PATCHES: u64 = 1 << 15;
    /// Only for in-process subscribers; LocalAPI clients may not ask for it.
    pub const IN_PROCESS_NO_DISCONNECT: u64 = 1 << 16;

    /// Bits that describe delta streams and so cannot be rate limited (Go's
    /// `NotifyRateLimitIncompatibleBits`).
    pub const RATE_LIMIT_INCOMPATIBLE: u64 =
        PEER_CHANGES | NO_NETMAP | INITIAL_STATUS | PEER_PATCHES;
}

/// `empty.Message`: a present-but-empty JSON object (`{}`), used as a flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyMessage {}

/// `ipn.Notify`: one message on the IPN bus. Every `None` means "unchanged". Fields Go
/// writes without `omitempty` are written as `null` here too; the ones we never produce
/// (files, drive shares, policy…) are left out and ignored when read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Notify {
    /// The backend's long version.
    #[serde(rename = "Version")]
    pub version: String,
    /// Set in the first message of a session that asked for the initial state.
    #[serde(rename = "SessionID", skip_serializing_if = "String::is_empty")]
    pub session_id: String,
    /// A critical error.
    #[serde(rename = "ErrMessage")]
    pub err_message: Option<String>,
    /// Present (as `{}`) when a login finished.
    #[serde(rename = "LoginFinished")]
    pub login_finished: Option<EmptyMessage>,
    #[serde(rename = "State")]
    pub state: Option<State>,
    /// The new prefs (private keys removed).
    #[serde(rename = "Prefs")]
    pub prefs: Option<Prefs>,
    /// Our own node changed (addresses, key…); `tailscale up --force-reauth` waits for a
    /// new key here.
    #[serde(rename = "SelfChange", skip_serializing_if = "Option::is_none")]
    pub self_change: Option<Node>,
    #[serde(rename = "InitialStatus", skip_serializing_if = "Option::is_none")]
    pub initial_status: Option<Box<Status>>,
    /// Go's legacy full netmap; only ever null from this daemon, kept opaque when read.
    #[serde(rename = "NetMap")]
    pub net_map: Option<serde_json::Value>,
    /// WireGuard engine stats; kept opaque.
    #[serde(rename = "Engine")]
    pub engine: Option<serde_json::Value>,
    /// The UI should open this URL (the interactive login URL).
    #[serde(rename = "BrowseToURL")]
    pub browse_to_url: Option<String>,
    /// Health state; kept opaque.
    #[serde(rename = "Health", skip_serializing_if = "Option::is_none")]
    pub health: Option<serde_json::Value>,
}

impl Notify {
    /// A notify carrying only a state change.
    pub fn state(state: State) -> Notify {
        Notify {
            state: Some(state),
            ..Notify::default()
        }
    }

    /// A notify asking the UI to open `url`.
    pub fn browse_to(url: &str) -> Notify {
        Notify {
            browse_to_url: Some(url.to_string()),
            ..Notify::default()
        }
    }
}

/// `ipn.Options`, the body of `POST /localapi/v0/start`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Options {
    #[serde(rename = "FrontendLogID")]
    pub frontend_log_id: String,
    /// If present, replaces the stored prefs except their `Config` (the login).
    #[serde(rename = "UpdatePrefs")]
    pub update_prefs: Option<Prefs>,
    /// A pre-auth key to register a new node key without user interaction.
    #[serde(rename = "AuthKey")]
    pub auth_key: String,
}

/// `apitype.WhoIsResponse`, the answer of `GET /localapi/v0/whois`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WhoIsResponse {
    #[serde(rename = "Node")]
    pub node: Node,
    #[serde(rename = "UserProfile")]
    pub user_profile: UserProfile,
    /// Peer capabilities granted by the packet filter (`tailcfg.PeerCapMap`).
    #[serde(
        rename = "CapMap",
        deserialize_with = "nullable",
        serialize_with = "null_if_empty_map"
    )]
    pub cap_map: CapMap,
}

fn null_if_empty_map<S: Serializer>(m: &CapMap, s: S) -> Result<S::Ok, S::Error> {
    if m.is_empty() {
        s.serialize_none()
    } else {
        m.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_and_ints_match_go() {
        assert_eq!(State::Running.as_int(), 6);
        assert_eq!(State::NeedsLogin.as_str(), "NeedsLogin");
        assert_eq!(
            "NeedsMachineAuth".parse::<State>(),
            Ok(State::NeedsMachineAuth)
        );
        assert!("running".parse::<State>().is_err());
        assert_eq!(State::from_int(7), None);
        assert_eq!(State::from_int(-1), None);
        let n: Notify = serde_json::from_str(r#"{"State":4}"#).unwrap();
        assert_eq!(n.state, Some(State::Stopped));
        assert!(serde_json::from_str::<Notify>(r#"{"State":9}"#).is_err());
    }

    #[test]
    fn notify_json_has_go_nulls_and_reads_go_output() {
        let n = Notify {
            version: "1.0".into(),
            ..Notify::browse_to("http://x/a/1")
        };
        let v: serde_json::Value = serde_json::to_value(&n).unwrap();
        assert_eq!(v["BrowseToURL"], "http://x/a/1");
        assert!(v["State"].is_null() && v["Prefs"].is_null() && v["ErrMessage"].is_null());
        assert!(v.get("SelfChange").is_none() && v.get("SessionID").is_none());
        // A message as Go's tailscaled writes it, with fields we do not model.
        let go = r#"{"Version":"1.103.0-t","ErrMessage":null,"LoginFinished":{},"State":6,
            "Prefs":null,"NetMap":null,"Engine":null,"BrowseToURL":null,"DriveShares":null,
            "FilesWaiting":{}}"#;
        let n: Notify = serde_json::from_str(go).unwrap();
        assert_eq!(n.state, Some(State::Running));
        assert_eq!(n.login_finished, Some(EmptyMessage {}));
        assert_eq!(n.version, "1.103.0-t");
    }

    #[test]
    fn whois_cap_map_is_null_when_empty() {
        let v = serde_json::to_value(WhoIsResponse::default()).unwrap();
        assert!(v["CapMap"].is_null());
        assert!(v["Node"].is_object() && v["UserProfile"].is_object());
    }
}
