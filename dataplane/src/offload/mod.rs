//! TUN segmentation offload, in pure code: no I/O, no allocation per packet (callers pass
//! the output buffers), parsing over byte slices.
//!
//! A TUN opened with `IFF_VNET_HDR` and configured with `TUNSETOFFLOAD`
//! (`TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`, plus `TUN_F_USO4 | TUN_F_USO6` where the kernel
//! accepts them) exchanges packets prefixed by a 10-byte [`VirtioNetHdr`]:
//!
//! * **Read path** (kernel → us → encrypt → UDP): a read returns one header and up to
//!   64 KB of TCP (or UDP) "super-packet". [`Segmenter`] checks it and writes the
//!   MTU-sized segments the peer must receive, each a normal IP packet with correct
//!   lengths, IPv4 ID, TCP sequence number, flags and checksums. With `gso_type` NONE it
//!   yields the packet itself, its checksum completed if `NEEDS_CSUM` asks for it
//!   ([`complete_checksum`] does that in place, without the copy).
//! * **Write path** (UDP → decrypt → us → kernel): [`Coalescer`] takes a batch of
//!   decrypted IP packets and merges consecutive TCP segments of one flow (and, if
//!   enabled, same-size UDP datagrams of one flow) into super-packets with a GSO header,
//!   so the kernel's stack handles 64 KB at a time. Everything else passes through with
//!   an all-zero header. Packets of one flow are never reordered.
//!
//! ```ignore
//! use ringscale_dataplane::offload::{Coalescer, Segmenter, VNET_HDR_LEN};
//!
//! // Read path: `read` is what one read(2) of the TUN returned.
//! let seg = Segmenter::from_tun_read(&read[..n])?;        // Err: drop the packet
//! for i in 0..seg.segment_count() {
//!     // Leave room in front for the WireGuard data header; the segment is a plain
//!     // IP packet of seg.segment_len(i) <= seg.max_segment_len() bytes.
//!     let len = seg.write_segment(i, &mut scratch[16..])?;
//!     encrypt_and_queue(&scratch[16..16 + len]);
//! }
//! // (or seg.write_all(&mut bufs, headroom, &mut lens) into a batch of buffers)
//!
//! // Write path: one Coalescer per worker, sized for the largest batch.
//! let mut gro = Coalescer::new(128, /* udp_gro: */ uso_accepted);
//! // `packets`: the batch of decrypted IP packets (anything AsRef<[u8]>).
//! // `out` must hold Coalescer::out_len_needed(&packets) bytes (sum of lengths + 10 each).
//! let n = gro.coalesce(&packets, &mut out, &mut spans)?;
//! for r in &spans[..n] {
//!     tun.write(&out[r.clone()])?;  // virtio_net_hdr + packet, one write(2) each
//! }
//! ```
//!
//! Rules follow the Linux kernel (tcp_gso_segment / tcp_gro_receive / udp_gro_receive)
//! and wireguard-go's tun/offload_linux.go, which runs against the same TUN interface.

pub mod checksum;
mod coalesce;
#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod roundtrip_tests;
mod segment;
#[cfg(test)]
pub(crate) mod testpkt;
pub mod virtio;

pub use coalesce::Coalescer;
pub use segment::{complete_checksum, Segmenter};
pub use virtio::{GsoKind, VirtioNetHdr, VNET_HDR_LEN};

use std::fmt;

/// Why a packet or a call was refused. Packet errors mean "drop this packet"; buffer
/// errors mean the caller's buffers are too small for what it asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadError {
    /// The packet (or its virtio_net_hdr) is inconsistent: lengths, offsets, versions.
    Malformed(&'static str),
    /// Valid, but something we do not segment (fragments, unknown gso_type, ...).
    Unsupported(&'static str),
    /// A caller-provided output buffer is too short.
    BufferTooSmall { needed: usize, available: usize },
    /// The caller provided fewer output buffers (or spans) than there are outputs.
    TooManyOutputs { needed: usize, available: usize },
    /// [`Segmenter::write_segment`] was asked for a segment past the last one.
    NoSuchSegment { index: usize, count: usize },
    /// [`Coalescer::coalesce`] got more packets than the coalescer was sized for.
    BatchTooLarge { len: usize, capacity: usize },
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OffloadError::Malformed(what) => write!(f, "malformed packet: {what}"),
            OffloadError::Unsupported(what) => write!(f, "unsupported packet: {what}"),
            OffloadError::BufferTooSmall { needed, available } => {
                write!(
                    f,
                    "output buffer too small: need {needed} bytes, have {available}"
                )
            }
            OffloadError::TooManyOutputs { needed, available } => {
                write!(
                    f,
                    "too many output packets: need {needed} slots, have {available}"
                )
            }
            OffloadError::NoSuchSegment { index, count } => {
                write!(f, "segment {index} requested of {count}")
            }
            OffloadError::BatchTooLarge { len, capacity } => {
                write!(
                    f,
                    "batch of {len} packets exceeds the coalescer's capacity of {capacity}"
                )
            }
        }
    }
}

impl std::error::Error for OffloadError {}
