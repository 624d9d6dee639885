//! The data plane's whole configuration as one value. The WireGuard config file and
//! the control plane's netmap both produce a [`Config`]; the engine applies it.

use crate::Key;
use ip_network::IpNetwork;
use std::net::{IpAddr, SocketAddr};

/// Default TUN MTU: Tailscale's "safe" MTU, which fits any path with IPv6 + WireGuard.
pub const DEFAULT_MTU: u16 = 1280;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub private_key: Key,
    /// UDP port for WireGuard; 0 picks a free one.
    pub listen_port: u16,
    /// Our own addresses, assigned to the TUN device.
    pub addresses: Vec<IfAddr>,
    pub mtu: u16,
    pub peers: Vec<PeerConfig>,
    /// The packet filter for traffic from the tunnel. None lets everything through,
    /// as plain WireGuard does; a tailnet node always has one (from the netmap).
    pub filter: Option<crate::filter::FilterConfig>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PeerConfig {
    pub public_key: Key,
    /// Destinations routed to this peer and sources accepted from it.
    pub allowed_ips: Vec<IpNetwork>,
    /// Where to send; follows the peer's authenticated packets when it roams.
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
}

/// An address on our interface with its on-link prefix length (10.0.0.1/24). Tailscale
/// nodes use /32 and /128; WireGuard config files often use a subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}
