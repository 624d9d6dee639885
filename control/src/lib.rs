//! The control plane: Tailscale's coordination protocol (ts2021), registration, the
//! netmap and the state file. Protocol logic is plain types and functions; the I/O that
//! drives them lives at the edges.

pub mod client;
pub mod ipn;
pub mod ipnstate;
pub mod netmap;
pub mod noise;
pub mod prefs;
pub mod state;
pub mod tailcfg;
pub mod ts2021;
