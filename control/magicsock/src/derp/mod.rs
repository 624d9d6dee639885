//! DERP, Tailscale's packet relay (protocol.md §6): the frame format ([`frame`], also
//! used by the test DERP server) and the client ([`client`], cargo feature `derp`) that
//! keeps a connection per region for the paths task.
//!
//! Without the `derp` feature, [`spawn_region`] gives a client that never connects:
//! peers are then reached over direct UDP only.

#[cfg(feature = "derp")]
pub mod client;
pub mod frame;
#[cfg(all(feature = "derp", feature = "tls"))]
mod tls;

#[cfg(feature = "derp")]
pub use client::{spawn_region, RegionClient};
#[cfg(not(feature = "derp"))]
pub use disabled::{spawn_region, RegionClient};

use ringscale_keys::Key;

/// What a region's connection reports to the paths task.
#[derive(Debug)]
pub enum DerpEvent {
    /// A packet relayed from peer `src`.
    Packet {
        region: u16,
        src: Key,
        packet: Vec<u8>,
    },
    Connected(u16),
    Disconnected(u16),
}

/// Whether this build can relay through DERP at all.
pub const ENABLED: bool = cfg!(feature = "derp");

#[cfg(not(feature = "derp"))]
mod disabled {
    use super::DerpEvent;
    use ringscale_keys::Key;
    use ringscale_tailcfg::DerpRegion;
    use tokio::sync::mpsc;

    /// The client of a build without DERP: it drops every packet.
    pub struct RegionClient;

    impl RegionClient {
        pub fn send(&self, _dst: Key, _packet: Vec<u8>) -> bool {
            false
        }

        pub fn set_preferred(&self, _preferred: bool) {}
    }

    pub fn spawn_region(
        _region: DerpRegion,
        _node_private: ringscale_keys::PrivateKey,
        _preferred: bool,
        _events: mpsc::Sender<DerpEvent>,
    ) -> RegionClient {
        RegionClient
    }
}
