//! The Internet checksum (RFC 1071) and the pieces offload needs: unfolded sums that can
//! be combined, IPv4/IPv6 pseudo-headers, and incremental update (RFC 1624).
//!
//! Sums are carried as `u64` "big-endian word" values: the sum of the data read as
//! big-endian 16-bit words, not yet folded. Such values add up freely (pseudo-header +
//! header + payload) and are folded once at the end with [`fold`] / [`finish`].

use ringscale_wire::ip::{Ipv4Packet, Ipv6Packet};

/// Unfolded sum of `data` read as big-endian 16-bit words (an odd trailing byte is padded
/// with zero), plus `initial`.
///
/// Speed: the loop is ringscale-sys's [`native_word_sum`](ringscale_sys::checksum), which
/// sums native-endian words (with an AVX-512 build where the CPU has it); the result is
/// byte-swapped once here, which RFC 1071 section 2(B) shows equals summing big-endian
/// words.
#[inline]
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let native = ringscale_sys::checksum::native_word_sum(data);
    initial + u64::from(u16::from_be(fold(native)))
}

/// Folds an unfolded sum to 16 bits (end-around carry), without complementing.
#[inline]
pub fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The value to store in a checksum field: the complement of the folded sum.
#[inline]
pub fn finish(s: u64) -> u16 {
    !fold(s)
}

/// The IPv4 header checksum of `header` (its checksum field, bytes 10..12, is skipped,
/// so it need not be zeroed first).
#[inline]
pub fn ipv4_header(header: &[u8]) -> u16 {
    let s = sum(&header[..10], 0);
    finish(sum(&header[12..], s))
}

/// Unfolded pseudo-header sum for IPv4 (RFC 793 / 768): addresses, protocol, L4 length.
#[inline]
pub fn pseudo_header_v4(src: &[u8; 4], dst: &[u8; 4], proto: u8, l4_len: u16) -> u64 {
    let w = |a: &[u8; 4]| {
        u64::from(u16::from_be_bytes([a[0], a[1]])) + u64::from(u16::from_be_bytes([a[2], a[3]]))
    };
    w(src) + w(dst) + u64::from(proto) + u64::from(l4_len)
}

/// Unfolded pseudo-header sum for IPv6 (RFC 8200 section 8.1): addresses, upper-layer
/// length (32-bit), next header.
#[inline]
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, l4_len: u32) -> u64 {
    sum(dst, sum(src, 0)) + u64::from(proto) + u64::from(l4_len >> 16) + u64::from(l4_len & 0xffff)
}

/// Pseudo-header sum for the addresses of an IP packet (`version` 4 or 6; the caller has
/// checked that `packet` holds the full fixed header).
#[inline]
pub(crate) fn pseudo_header(packet: &[u8], v6: bool, proto: u8, l4_len: usize) -> u64 {
    if v6 {
        let ip = Ipv6Packet::new_unchecked(packet);
        pseudo_header_v6(
            &ip.src_addr_bytes(),
            &ip.dst_addr_bytes(),
            proto,
            l4_len as u32,
        )
    } else {
        let ip = Ipv4Packet::new_unchecked(packet);
        pseudo_header_v4(
            &ip.src_addr_bytes(),
            &ip.dst_addr_bytes(),
            proto,
            l4_len as u16,
        )
    }
}

/// Updates checksum field `check` after a 16-bit word of the covered data changed from
/// `old` to `new` (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline]
pub fn update_u16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!check) + u64::from(!old) + u64::from(new))
}

/// [`update_u16`] for an aligned 32-bit field (such as a TCP sequence number).
#[inline]
pub fn update_u32(check: u16, old: u32, new: u32) -> u16 {
    let c = update_u16(check, (old >> 16) as u16, (new >> 16) as u16);
    update_u16(c, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::testpkt::{naive_checksum, Rng};

    #[test]
    fn matches_naive_sum_for_every_length_and_alignment() {
        let mut rng = Rng::new(7);
        let data: Vec<u8> = (0..300).map(|_| rng.byte()).collect();
        for start in 0..9 {
            for end in start..data.len() {
                let d = &data[start..end];
                assert_eq!(
                    finish(sum(d, 0)),
                    naive_checksum(&[d]),
                    "bytes {start}..{end}"
                );
            }
        }
    }

    /// Long inputs take the AVX-512 build of the loop where the CPU has it; it must
    /// agree with the independent routine at every length and alignment.
    #[test]
    fn long_inputs_match_naive_sum() {
        let mut rng = Rng::new(11);
        let data: Vec<u8> = (0..3000).map(|_| rng.byte()).collect();
        for start in 0..3 {
            for end in (start + 200..data.len()).step_by(7) {
                let d = &data[start..end];
                assert_eq!(
                    finish(sum(d, 5)),
                    naive_checksum_with(d, 5),
                    "bytes {start}..{end}"
                );
            }
        }
    }

    fn naive_checksum_with(d: &[u8], initial: u16) -> u16 {
        // initial enters as one more big-endian word.
        naive_checksum(&[&initial.to_be_bytes()[..], d])
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d, 0)), 0xddf2);
        assert_eq!(finish(sum(&d, 0)), !0xddf2);
    }

    #[test]
    fn all_ones_data_does_not_overflow() {
        let d = vec![0xffu8; 65536];
        assert_eq!(finish(sum(&d, 0)), naive_checksum(&[&d]));
        assert_eq!(
            finish(sum(&d, u64::from(u32::MAX))),
            naive_checksum(&[&d, &[0xff, 0xff, 0xff, 0xff]])
        );
    }

    #[test]
    fn pseudo_headers_match_their_byte_layout() {
        let s4 = [192, 0, 2, 1];
        let d4 = [198, 51, 100, 254];
        let bytes4 = [&s4[..], &d4[..], &[0, 6], &[0x05, 0xdc]].concat();
        assert_eq!(
            finish(pseudo_header_v4(&s4, &d4, 6, 1500)),
            naive_checksum(&[&bytes4])
        );

        let s6: [u8; 16] = core::array::from_fn(|i| 0x20 + i as u8);
        let d6: [u8; 16] = core::array::from_fn(|i| 0xf0 ^ (i as u8 * 7));
        let len: u32 = 70000;
        let bytes6 = [&s6[..], &d6[..], &len.to_be_bytes(), &[0, 0, 0, 17]].concat();
        assert_eq!(
            finish(pseudo_header_v6(&s6, &d6, 17, len)),
            naive_checksum(&[&bytes6])
        );
    }

    #[test]
    fn incremental_update_equals_recompute() {
        let mut rng = Rng::new(99);
        for _ in 0..2000 {
            let mut d: Vec<u8> = (0..40).map(|_| rng.byte()).collect();
            let check = naive_checksum(&[&d]);
            let at = 2 * (rng.byte() as usize % 19);
            let old = u32::from_be_bytes(d[at..at + 4].try_into().unwrap());
            let new = rng.u32();
            d[at..at + 4].copy_from_slice(&new.to_be_bytes());
            let want = naive_checksum(&[&d]);
            let got = update_u32(check, old, new);
            // 0x0000 and 0xffff are the same value in one's complement.
            assert!(
                got == want || (got | want == 0xffff && got & want == 0),
                "{got:#x} vs {want:#x}"
            );
            let old16 = u16::from_be_bytes([d[at], d[at + 1]]);
            d[at] ^= 0x5a;
            let new16 = u16::from_be_bytes([d[at], d[at + 1]]);
            let got = update_u16(want, old16, new16);
            let want = naive_checksum(&[&d]);
            assert!(got == want || (got | want == 0xffff && got & want == 0));
        }
    }

    #[test]
    fn ipv4_header_checksum_ignores_the_field() {
        let mut h = [
            0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0xde, 0xad, 192, 168, 0, 1, 192, 168, 0,
            199,
        ];
        let c = ipv4_header(&h);
        // Example from Wikipedia "IPv4 header checksum": b861.
        assert_eq!(c, 0xb861);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(naive_checksum(&[&h]), 0);
    }
}
