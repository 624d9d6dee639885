//! Peer paths, as Tailscale's magicsock finds them (protocol.md §6, §7): which way each
//! peer's WireGuard packets go right now, direct UDP or a DERP relay.
//!
//! - [`disco`]: the disco messages (sealed in NaCl boxes) and the per-peer state machine
//!   that picks a path from pings and pongs, with no I/O;
//! - [`derp`]: the DERP frame format and the client that keeps a connection per region;
//! - [`driver`]: the task on the control thread that runs both against the engine: it
//!   takes disco and STUN datagrams off the WireGuard socket, relays packets through
//!   DERP, sends STUN probes, and tells the data plane each peer's path.

#![forbid(unsafe_code)]

pub mod derp;
pub mod disco;
pub mod driver;

pub use driver::{Paths, PathsUpdate, ENDPOINT_LOCAL};
