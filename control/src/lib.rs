//! The control plane: Tailscale's coordination protocol (ts2021), registration, the
//! netmap and prefs, the state file, and the mappings from a netmap to the data plane's
//! and the host's configuration. Protocol logic is plain types and functions; the I/O
//! that drives them lives at the edges. The wire types are ringscale-tailcfg's,
//! re-exported as [`tailcfg`].

#![forbid(unsafe_code)]

pub mod bypass;
pub mod client;
pub mod dnsmap;
pub mod hostconfig;
pub mod ipn;
pub mod ipnstate;
pub mod netmap;
pub mod noise;
pub mod prefs;
pub mod state;
pub mod ts2021;

pub use ringscale_tailcfg as tailcfg;
