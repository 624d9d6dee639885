//! ringscale's packet path: packets between the TUN device and the UDP sockets through
//! WireGuard (boringtun): the peer table, AllowedIPs routing, the packet filter, TUN and
//! UDP segmentation offloads, and the per-core workers (io_uring or epoll).
//!
//! The whole data plane is configured through one value, [`Config`]: a WireGuard config
//! file and the control plane's netmap both produce it, and [`Engine::reconfigure`]
//! swaps it in.

// `deny`, not `forbid` as in every other crate but ringscale-sys and ringscale-aead:
// uring.rs keeps the io_uring submission `push` calls, which are unsafe because the
// kernel reads and writes the memory an entry points at until its completion; only the
// worker that owns that memory (its buffers and message headers) can promise that. It
// is the one `allow` in this crate (packaging/unsafe-gate.sh names this file too).
#![deny(unsafe_code)]

pub mod allowed_ips;
pub mod config;
pub mod engine;
pub mod filter;
pub mod offload;
#[cfg(feature = "io-uring")]
#[allow(unsafe_code)]
pub mod uring;
pub mod wgconfig;
pub mod wireguard;
pub mod worker;

pub use config::{derp_addr, derp_region_of, Config, IfAddr, PeerConfig, DERP_MAGIC_IP};
pub use engine::{Engine, EngineOptions};
pub use ringscale_keys::{Key, PrivateKey};
pub use worker::IoBackend;
