//! The data plane's whole configuration as one value. The WireGuard config file and
//! the control plane's netmap both produce a [`Config`]; the engine applies it.

use ip_network::IpNetwork;
use ringscale_keys::{Key, PrivateKey};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Default TUN MTU: Tailscale's "safe" MTU, which fits any path with IPv6 + WireGuard.
pub const DEFAULT_MTU: u16 = 1280;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub private_key: PrivateKey,
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

pub use ringscale_sys::IfAddr;

/// `127.3.3.40`: a socket address with this IP stands for "DERP region <port>", as in
/// Go's magicsock. The data plane uses it as a peer's endpoint when packets for that
/// peer must be relayed.
pub const DERP_MAGIC_IP: Ipv4Addr = Ipv4Addr::new(127, 3, 3, 40);

/// The pseudo address of DERP region `region`.
pub fn derp_addr(region: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(DERP_MAGIC_IP), region)
}

/// The region a DERP pseudo address stands for.
pub fn derp_region_of(addr: SocketAddr) -> Option<u16> {
    match addr.ip() {
        IpAddr::V4(ip) if ip == DERP_MAGIC_IP => Some(addr.port()),
        IpAddr::V6(ip) if ip.to_ipv4_mapped() == Some(DERP_MAGIC_IP) => Some(addr.port()),
        _ => None,
    }
}
