//! The control plane: Tailscale's coordination protocol (ts2021), registration, the
//! netmap and the state file. Protocol logic is plain types and functions; the I/O that
//! drives them lives at the edges.

pub mod bypass;
pub mod client;
pub mod derp;
pub mod dnsmap;
pub mod hostconfig;
pub mod ipn;
pub mod ipnstate;
pub mod netmap;
pub mod noise;
pub mod paths;
pub mod prefs;
pub mod state;
pub mod stun;
pub mod tailcfg;
pub mod ts2021;
