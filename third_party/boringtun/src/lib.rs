// Copyright (c) 2019 Cloudflare, Inc. All rights reserved.
// SPDX-License-Identifier: BSD-3-Clause

//! Simple implementation of the client-side of the WireGuard protocol.
//!
//! <code>git clone https://github.com/cloudflare/boringtun.git</code>

// ringscale: vendored upstream code, built as a path dependency, so cargo does not cap its
// lints as it does for crates.io dependencies and our `RUSTFLAGS=-D warnings` builds
// (packaging/feature-matrix.sh) would fail on upstream's warnings. Same effect as the cap.
#![allow(warnings)]

pub mod noise;

#[cfg(not(feature = "mock-instant"))]
pub(crate) mod sleepyinstant;

pub(crate) mod serialization;

/// Re-export of the x25519 types
pub mod x25519 {
    pub use x25519_dalek::{
        EphemeralSecret, PublicKey, ReusableSecret, SharedSecret, StaticSecret,
    };
}
