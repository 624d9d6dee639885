//! MagicDNS: quad-100 (100.100.100.100 and fd7a:115c:a1e0::53) served from inside the
//! data plane, with no kernel socket and no full netstack (protocol.md §9).
//!
//! * DNS messages themselves are parsed and built by `ringscale_wire::dns`;
//! * [`resolver`]: what quad-100 answers, from a [`ResolverConfig`] the control plane
//!   builds from the netmap (ringscale-control's `dnsmap`); no I/O;
//! * [`forward`]: sending a query to upstream resolvers (UDP with TCP retry, DoH),
//!   blocking, on threads of its own;
//! * [`doh`]: DNS over HTTP(S) upstreams; `https://` ones through the connector the
//!   binary passes in ([`doh::Https`]: TLS, and finding the servers without asking
//!   quad-100);
//! * `quad100` (feature `quad100`): the service itself: packets to quad-100 taken off the
//!   WireGuard path, a small smoltcp interface with UDP and TCP port 53 (and ICMP
//!   echo), replies written back to the TUN.

#![forbid(unsafe_code)]

pub mod doh;
pub mod forward;
#[cfg(feature = "quad100")]
pub mod quad100;
pub mod resolver;
pub use ringscale_wire::dns as wire;

pub use resolver::{Action, Resolver, ResolverConfig, Upstream};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Tailscale's service address (Go: `tsaddr.TailscaleServiceIP`).
pub const QUAD100_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);
/// Its IPv6 form (Go: `tsaddr.TailscaleServiceIPv6`).
pub const QUAD100_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);

/// Is `ip` one of quad-100's addresses?
pub fn is_quad100(ip: IpAddr) -> bool {
    ip == IpAddr::V4(QUAD100_V4) || ip == IpAddr::V6(QUAD100_V6)
}
