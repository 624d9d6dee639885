//! The test bed shared by the end-to-end tests and the benchmark: network namespaces
//! joined by veth pairs, processes started inside them, and cleanup that runs also when
//! a test fails or panics. Only addresses inside the namespaces made here are used.

#![forbid(unsafe_code)]

pub mod caddytail;
pub mod control_server;
pub mod derp_server;
pub mod node;
pub mod testbed;
pub mod wgpeer;
