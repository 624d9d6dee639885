//! Packet formats as views over byte slices, with no I/O and no state (smoltcp's
//! `wire` is the model): parse what arrived, emit what to send.
//!
//! - [`dns`]: DNS messages (parse a query, build a response, truncate for UDP);
//! - [`stun`]: STUN binding requests and responses (RFC 5389), as disco uses them;
//! - [`disco`]: the disco magic that tells a disco packet from WireGuard on the shared
//!   socket (the sealed messages themselves live with their keys in ringscale-magicsock).
//!
//! The IP/TCP/UDP header views are still split between the data plane's offload
//! (`offload/ip.rs`) and filter (`filter/packet.rs`); they move here as one set next.

#![forbid(unsafe_code)]

pub mod disco;
pub mod dns;
pub mod stun;
