//! The JSON messages of Tailscale's control protocol (Go package `tailcfg`), with Go's
//! field names and Go's `encoding/json` behaviour:
//!
//! - every field is optional when decoding and unknown fields are ignored (servers add
//!   fields all the time); slices and maps also accept `null`, as Go does;
//! - `omitempty`/`omitzero` fields are left out when zero, the others are always written
//!   (a nil slice as `null`);
//! - where Go gives `nil` a meaning of its own ("unchanged", "same as Addresses"), the
//!   field is an `Option<Vec<_>>` so that `null`/absent (`None`) and `[]` (`Some(empty)`)
//!   stay distinct; see the field docs;
//! - keys are `<prefix><64 hex>` strings, times are RFC 3339 ([`GoTime`]), prefixes are
//!   `addr/bits` ([`IpPrefix`]), `[]byte` is standard base64.
//!
//! Malformed JSON, a bad key, time or prefix is a `serde_json::Error`, never a panic.
//! Field lists follow `tailcfg/tailcfg.go` and `tailcfg/derpmap.go` of tailscale 1.103
//! (see shared/docs/protocol.md §0, §3, §4, §6.5, §9.1).

#![forbid(unsafe_code)]

mod key;
mod messages;
mod prefix;
mod time;

#[doc(hidden)]
pub mod json;

#[doc(hidden)]
pub use json::*;
pub use key::*;
pub use messages::*;
pub use prefix::*;
pub use time::*;
