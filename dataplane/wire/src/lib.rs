//! Packet formats as views over byte slices, with no I/O and no state (smoltcp's
//! `wire` is the model): parse what arrived, emit what to send.
//!
//! - [`dns`]: DNS messages (parse a query, build a response, truncate for UDP);
//! - [`stun`]: STUN binding requests and responses (RFC 5389), as disco uses them;
//! - [`disco`]: the disco magic that tells a disco packet from WireGuard on the shared
//!   socket (the sealed messages themselves live with their keys in ringscale-magicsock);
//! - [`ip`], [`tcp`], [`udp`], [`icmp`]: IPv4/IPv6 and transport headers as views over
//!   byte slices, and [`ip::transport`], which finds the transport header. The data
//!   plane's offload (segmentation, coalescing) and packet filter both read packets
//!   through them.

#![forbid(unsafe_code)]

pub mod disco;
pub mod dns;
pub mod icmp;
pub mod ip;
pub mod stun;
pub mod tcp;
pub mod udp;
