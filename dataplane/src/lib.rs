//! ringscale's data plane: the TUN device, the UDP socket, WireGuard (boringtun),
//! AllowedIPs routing and the host configuration the tunnel needs.
//!
//! The whole data plane is configured through one value, [`Config`]: a WireGuard config
//! file and the control plane's netmap both produce it, and [`Engine::reconfigure`]
//! swaps it in.

pub mod allowed_ips;
pub mod config;
pub mod disco;
pub mod dns;
pub mod engine;
pub mod filter;
pub mod key;
pub mod offload;
pub mod router;
pub mod sys;
#[cfg(feature = "io-uring")]
pub mod uring;
pub mod wgconfig;
pub mod wireguard;
pub mod worker;

pub use config::{Config, IfAddr, PeerConfig};
pub use engine::{Engine, EngineOptions};
pub use key::Key;
pub use worker::IoBackend;
