//! `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h): the 10-byte header that a
//! TUN opened with `IFF_VNET_HDR` puts in front of every packet it reads and expects in
//! front of every packet written to it. It says whether the packet is a GSO
//! super-packet and whether its L4 checksum still has to be completed.
//!
//! Byte order: the TUN driver uses the host's byte order for these fields unless
//! `TUNSETVNETLE`/`TUNSETVNETBE` is set (`tun_is_little_endian` falls back to
//! `virtio_legacy_is_little_endian()`, i.e. native). That is little-endian on x86 and
//! ARM, and big-endian on MIPS BE routers; so this module reads and writes native order.

use super::OffloadError;

/// Size of `struct virtio_net_hdr` (without the `num_buffers` field of the mergeable
/// variant; the TUN's default `TUNSETVNETHDRSZ` is this size).
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial (pseudo-header only) and
/// must be completed over `csum_start..` and stored at `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum has already been verified.
pub const F_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP` (UFO, IP fragmentation of UDP): not produced by a TUN we
/// configure, and rejected.
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO: split into UDP datagrams of `gso_size`).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: or-ed into `gso_type`; the first segment carries CWR.
pub const GSO_ECN: u8 = 0x80;

/// What kind of segmentation a header asks for, with the ECN bit split off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoKind {
    None,
    TcpV4,
    TcpV6,
    UdpL4,
}

/// A decoded `virtio_net_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the L3+L4 headers. The kernel sets it unreliably on the forwarding path
    /// (it can cover the whole first segment), so segmentation parses the headers itself
    /// and only checks that this does not point beyond the packet.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Offset of the L4 header, where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start` (16 for TCP, 6 for UDP).
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Decodes the first [`VNET_HDR_LEN`] bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, OffloadError> {
        let b: &[u8; VNET_HDR_LEN] = buf
            .get(..VNET_HDR_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(OffloadError::Malformed("shorter than a virtio_net_hdr"))?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Ok(VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// The encoded header.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// Encodes the header into the first [`VNET_HDR_LEN`] bytes of `buf`.
    pub fn write(&self, buf: &mut [u8]) -> Result<(), OffloadError> {
        let available = buf.len();
        let dst = buf
            .get_mut(..VNET_HDR_LEN)
            .ok_or(OffloadError::BufferTooSmall {
                needed: VNET_HDR_LEN,
                available,
            })?;
        dst.copy_from_slice(&self.to_bytes());
        Ok(())
    }

    /// The segmentation requested, and whether the ECN bit is set. Unknown types (and
    /// UFO) are an error: we cannot know how to split them.
    pub fn gso_kind(&self) -> Result<(GsoKind, bool), OffloadError> {
        let ecn = self.gso_type & GSO_ECN != 0;
        let kind = match self.gso_type & !GSO_ECN {
            GSO_NONE => GsoKind::None,
            GSO_TCPV4 => GsoKind::TcpV4,
            GSO_TCPV6 => GsoKind::TcpV6,
            GSO_UDP_L4 => GsoKind::UdpL4,
            _ => return Err(OffloadError::Unsupported("virtio_net_hdr gso_type")),
        };
        if ecn && !matches!(kind, GsoKind::TcpV4 | GsoKind::TcpV6) {
            return Err(OffloadError::Unsupported("ECN bit on a non-TCP gso_type"));
        }
        Ok((kind, ecn))
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field_in_native_order() {
        let h = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6 | GSO_ECN,
            hdr_len: 0x0102,
            gso_size: 1208,
            csum_start: 40,
            csum_offset: 16,
        };
        let mut buf = [0xAAu8; 12];
        h.write(&mut buf).unwrap();
        assert_eq!(buf[10..], [0xAA, 0xAA], "must not write past 10 bytes");
        assert_eq!(buf[0], 1);
        assert_eq!(buf[1], 0x84);
        assert_eq!(u16::from_ne_bytes([buf[4], buf[5]]), 1208);
        assert_eq!(VirtioNetHdr::parse(&buf).unwrap(), h);
        assert_eq!(h.gso_kind().unwrap(), (GsoKind::TcpV6, true));
        assert!(h.needs_csum());
    }

    #[test]
    fn little_endian_layout_on_little_endian_hosts() {
        if cfg!(target_endian = "little") {
            let b = [1, 5, 42, 0, 0xb8, 0x04, 20, 0, 6, 0];
            let h = VirtioNetHdr::parse(&b).unwrap();
            assert_eq!(
                (h.hdr_len, h.gso_size, h.csum_start, h.csum_offset),
                (42, 1208, 20, 6)
            );
            assert_eq!(h.gso_kind().unwrap(), (GsoKind::UdpL4, false));
        }
    }

    #[test]
    fn rejects_short_input_and_unknown_types() {
        assert!(VirtioNetHdr::parse(&[0; 9]).is_err());
        assert!(VirtioNetHdr::default().write(&mut [0; 9]).is_err());
        let mut h = VirtioNetHdr::default();
        for t in [GSO_UDP, 2, 6, 0x7f] {
            h.gso_type = t;
            assert!(h.gso_kind().is_err(), "gso_type {t}");
        }
        h.gso_type = GSO_UDP_L4 | GSO_ECN;
        assert!(h.gso_kind().is_err());
        h.gso_type = GSO_NONE;
        assert_eq!(h.gso_kind().unwrap(), (GsoKind::None, false));
    }
}
