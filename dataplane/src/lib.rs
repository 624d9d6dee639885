//! ringscale's packet path: packets between the TUN device and the UDP sockets through
//! WireGuard (boringtun): the peer table, AllowedIPs routing, the packet filter, TUN and
//! UDP segmentation offloads, and the per-core workers (io_uring or epoll).
//!
//! The whole data plane is configured through one value, [`Config`]: a WireGuard config
//! file and the control plane's netmap both produce it, and [`Engine::reconfigure`]
//! swaps it in.

// No `#![forbid(unsafe_code)]` here yet, unlike every other crate but ringscale-sys and
// ringscale-aead: uring.rs still has its own `unsafe` (io_uring submissions and the
// buffers they point at), to move into ringscale-sys. Nothing else in this crate has any.

pub mod allowed_ips;
pub mod config;
pub mod engine;
pub mod filter;
pub mod offload;
#[cfg(feature = "io-uring")]
pub mod uring;
pub mod wgconfig;
pub mod wireguard;
pub mod worker;

pub use config::{derp_addr, derp_region_of, Config, IfAddr, PeerConfig, DERP_MAGIC_IP};
pub use engine::{Engine, EngineOptions};
pub use ringscale_keys::{Key, PrivateKey};
pub use worker::IoBackend;
