//! Disco: Tailscale's peer-to-peer path discovery (protocol.md §7), with no I/O.
//!
//! - [`naclbox`]: the NaCl box both disco and DERP seal their messages in;
//! - [`message`]: the packet and message formats;
//! - [`paths`]: the per-peer state machine that decides, like Go's magicsock, which
//!   path (direct UDP or a DERP relay) the data plane uses for each peer.
//!
//! Disco packets share the WireGuard UDP socket; the workers pass datagrams that start
//! with [`message::MAGIC`] to the control thread, which runs [`paths::Disco`].

pub mod message;
pub mod naclbox;
pub mod paths;

pub use message::{looks_like_disco, DiscoError, Message};
pub use paths::{derp_addr, derp_region_of, Disco, DiscoStats, Path, PeerInfo, Transmit, Via};
