//! Eight packets of one length under one key at once: the segments of a TSO
//! super-packet (sealing) or of a UDP GRO receive (opening).
//!
//! One packet at a time leaves work on the table in both halves of the cipher.
//! ChaCha20 runs in sets of sixteen blocks, so a 1280-byte packet (21 blocks with the
//! Poly1305 key) pays for 24, and one set's four dependency chains cannot keep the
//! vector units busy. Poly1305's eight lanes need r^1..r^8 and a lane sum for every
//! packet, since every packet has its own key. Here the lanes are the packets instead:
//! lane `k` of a ChaCha20 set is block `2·set + k/8` of packet `k % 8` (the nonce and
//! block counter are per lane anyway), sets run in interleaved pairs, and a packet's
//! Poly1305 key comes out of set 0 already in the lane layout. Poly1305 lane `p` is
//! packet `p`'s own Horner chain under its own r (no powers, no lane sum).

use super::*;

/// Packets per call.
pub const LANES: usize = 8;

/// Seals `C` octets of `len`-byte messages: `dst[c][p][..len]` = ciphertext of
/// `src[c][p][..len]` under `counters[c][p]`, and the tag at `dst[c][p][len..len + 16]`.
///
/// # Safety
/// The CPU has the features [`available`] checks; every `src` pointer is valid for
/// `len` bytes and every `dst` pointer for `len + 16`; a `dst` range overlaps no `src`
/// and no other `dst` range.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512ifma")]
pub unsafe fn seal_octets<const C: usize>(
    key: &[u8; 32],
    counters: &[[u64; LANES]; C],
    len: usize,
    src: &[[*const u8; LANES]; C],
    dst: &[[*mut u8; LANES]; C],
) {
    let keys = crypt_octets(key, counters, len, src, dst);
    let tags = poly1305_8(&keys, &dst.map(|d| d.map(<*mut u8>::cast_const)), len);
    for (tags, dst) in tags.iter().zip(dst) {
        for (tag, &out) in tags.iter().zip(dst) {
            core::ptr::copy_nonoverlapping(tag.as_ptr(), out.add(len), TAG_LEN);
        }
    }
}

/// Opens `C` octets of `len + 16`-byte sealed messages (ciphertext || tag): decrypts
/// `src[c][p]` into `dst[c][p][..len]` and sets `ok[c][p]` to whether its tag matched.
/// Where it did not, `dst[c][p]` holds unauthenticated bytes the caller must not use.
///
/// # Safety
/// As [`seal_octets`], with `src` pointers valid for `len + 16` bytes and `dst` for `len`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512ifma")]
pub unsafe fn open_octets<const C: usize>(
    key: &[u8; 32],
    counters: &[[u64; LANES]; C],
    len: usize,
    src: &[[*const u8; LANES]; C],
    dst: &[[*mut u8; LANES]; C],
    ok: &mut [[bool; LANES]; C],
) {
    let keys = crypt_octets(key, counters, len, src, dst);
    let tags = poly1305_8(&keys, src, len);
    for c in 0..C {
        for p in 0..LANES {
            let received = core::slice::from_raw_parts(src[c][p].add(len), TAG_LEN);
            // Constant time: fold every difference before looking at it.
            let diff = tags[c][p]
                .iter()
                .zip(received)
                .fold(0u8, |d, (a, b)| d | (a ^ b));
            ok[c][p] = core::hint::black_box(diff) == 0;
        }
    }
}

/// Each lane's Poly1305 key: r in radix-2^44 limbs (one packet per 64-bit lane) and s.
struct PolyKeys8 {
    r: [__m512i; 3],
    s: [u128; LANES],
}

/// `dst[c][p][..len] = src[c][p][..len] ^ keystream(counters[c][p])` from block 1 on,
/// and the Poly1305 keys (block 0 of every packet). The sets of all `C` octets run in
/// interleaved pairs: one set's four dependency chains leave the vector units idle.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn crypt_octets<const C: usize>(
    key: &[u8; 32],
    counters: &[[u64; LANES]; C],
    len: usize,
    src: &[[*const u8; LANES]; C],
    dst: &[[*mut u8; LANES]; C],
) -> [PolyKeys8; C] {
    // Words 13..15 (the nonce: zero, then the counter) are set per lane below.
    let state = chacha_state(key, &[0; 12]);
    let nonce_words: [[__m512i; 2]; C] = core::array::from_fn(|c| {
        let lo: [u32; 16] = core::array::from_fn(|k| counters[c][k % LANES] as u32);
        let hi: [u32; 16] = core::array::from_fn(|k| (counters[c][k % LANES] >> 32) as u32);
        [
            _mm512_loadu_si512(lo.as_ptr().cast()),
            _mm512_loadu_si512(hi.as_ptr().cast()),
        ]
    });
    let second_half = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let input = |c: usize, set: usize| {
        let mut v = [_mm512_setzero_si512(); 16];
        for (r, &w) in v.iter_mut().zip(&state[..12]) {
            *r = _mm512_set1_epi32(w as i32);
        }
        v[12] = _mm512_add_epi32(second_half, _mm512_set1_epi32(2 * set as i32));
        [v[14], v[15]] = nonce_words[c];
        v
    };

    // Blocks per packet, counting block 0 (the Poly1305 key); two per set.
    let sets = (1 + len.div_ceil(64)).div_ceil(2);
    let total = C * sets;
    let mut keys: [Option<PolyKeys8>; C] = core::array::from_fn(|_| None);
    let mut g = 0;
    while g < total {
        let (c, set) = (g / sets, g % sets);
        let in_x = input(c, set);
        let mut x = in_x;
        if g + 1 < total {
            let (d, set_y) = ((g + 1) / sets, (g + 1) % sets);
            let in_y = input(d, set_y);
            let mut y = in_y;
            for _ in 0..10 {
                double_round!(x, y);
            }
            if set_y == 0 {
                keys[d] = Some(poly_keys8(&y, &in_y));
            }
            xor8(&chacha20_output16(y, &in_y), set_y, len, &src[d], &dst[d]);
        } else {
            for _ in 0..10 {
                double_round!(x);
            }
        }
        if set == 0 {
            keys[c] = Some(poly_keys8(&x, &in_x));
        }
        xor8(&chacha20_output16(x, &in_x), set, len, &src[c], &dst[c]);
        g += 2;
    }
    keys.map(|k| k.expect("every octet's set 0 runs"))
}

/// The Poly1305 keys from set 0 before its transposition: lanes 0..8 are block 0 of
/// packets 0..8, word w in register w, so r (words 0..4) and s (4..8) come out one
/// packet per lane already.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn poly_keys8(x: &[__m512i; 16], input: &[__m512i; 16]) -> PolyKeys8 {
    let word =
        |w: usize| _mm512_cvtepu32_epi64(_mm512_castsi512_si256(_mm512_add_epi32(x[w], input[w])));
    let qword = |w: usize| _mm512_or_si512(word(w), _mm512_slli_epi64::<32>(word(w + 1)));
    let splat = |v: u64| _mm512_set1_epi64(v as i64);
    // RFC 8439 §2.5's clamp of r, in two 64-bit halves.
    let r_lo = _mm512_and_si512(qword(0), splat(0x0fff_fffc_0fff_ffff));
    let r_hi = _mm512_and_si512(qword(2), splat(0x0fff_fffc_0fff_fffc));
    let r = [
        _mm512_and_si512(r_lo, splat(M44)),
        _mm512_and_si512(
            _mm512_or_si512(_mm512_srli_epi64::<44>(r_lo), _mm512_slli_epi64::<20>(r_hi)),
            splat(M44),
        ),
        _mm512_srli_epi64::<24>(r_hi),
    ];
    let mut s_lo = [0u64; LANES];
    let mut s_hi = [0u64; LANES];
    _mm512_storeu_si512(s_lo.as_mut_ptr().cast(), qword(4));
    _mm512_storeu_si512(s_hi.as_mut_ptr().cast(), qword(6));
    PolyKeys8 {
        r,
        s: core::array::from_fn(|p| s_lo[p] as u128 | (s_hi[p] as u128) << 64),
    }
}

/// XORs the sixteen blocks of `set` (lane k: packet k % 8, block 2·set + k/8) into
/// their packets; block 0 is the Poly1305 key, and blocks past `len` are not needed.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn xor8(
    blocks: &[__m512i; 16],
    set: usize,
    len: usize,
    src: &[*const u8; LANES],
    dst: &[*mut u8; LANES],
) {
    for (k, &block) in blocks.iter().enumerate() {
        let (p, b) = (k % LANES, 2 * set + k / LANES);
        if b == 0 || (b - 1) * 64 >= len {
            continue;
        }
        let pos = (b - 1) * 64;
        let (from, to) = (src[p].add(pos), dst[p].add(pos));
        let n = len - pos;
        if n >= 64 {
            let v = _mm512_loadu_si512(from.cast());
            _mm512_storeu_si512(to.cast(), _mm512_xor_si512(v, block));
        } else {
            // Masked bytes are neither read nor written: no access past the end.
            let mask: __mmask64 = (1u64 << n) - 1;
            let v = _mm512_maskz_loadu_epi8(mask, from.cast());
            _mm512_mask_storeu_epi8(to.cast(), mask, _mm512_xor_si512(v, block));
        }
    }
}

/// The tags of the AEAD construction (ct || pad16 || le64(0) || le64(len)) of `C`
/// octets of packets, one packet per lane: h = (h + m)·r for every block, one vector
/// step for eight packets. A step is a chain of dependent multiplies, so the octets'
/// chains are interleaved to fill the multiplier's pipeline.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512ifma")]
unsafe fn poly1305_8<const C: usize>(
    keys: &[PolyKeys8; C],
    ct: &[[*const u8; LANES]; C],
    len: usize,
) -> [[[u8; 16]; LANES]; C] {
    let s: [[__m512i; 2]; C] =
        core::array::from_fn(|c| [times20(keys[c].r[1]), times20(keys[c].r[2])]);
    let mut acc = [[_mm512_setzero_si512(); 3]; C];
    // Whole 64-byte runs straight from the packets, four blocks per transposition.
    let groups = len / 64;
    for g in 0..groups {
        let q: [[__m512i; 8]; C] = core::array::from_fn(|c| load_transposed(&ct[c], g * 64));
        for i in 0..4 {
            for c in 0..C {
                acc[c] = absorb8(acc[c], q[c][2 * i], q[c][2 * i + 1], &keys[c].r, &s[c]);
            }
        }
    }
    // The rest (under 64 bytes), zero-padded to whole blocks, then the lengths block,
    // from a copy: at most five blocks.
    let done = groups * 64;
    let rest = len - done;
    let padded = rest.div_ceil(16) * 16;
    let mut tail = [[[0u8; 128]; LANES]; C];
    for (tails, ptrs) in tail.iter_mut().zip(ct) {
        for (t, &c) in tails.iter_mut().zip(ptrs) {
            core::ptr::copy_nonoverlapping(c.add(done), t.as_mut_ptr(), rest);
            t[padded + 8..padded + 16].copy_from_slice(&(len as u64).to_le_bytes());
        }
    }
    let tail_ptrs: [[*const u8; LANES]; C] =
        core::array::from_fn(|c| core::array::from_fn(|p| tail[c][p].as_ptr()));
    let steps = padded / 16 + 1;
    for g in 0..steps.div_ceil(4) {
        let q: [[__m512i; 8]; C] = core::array::from_fn(|c| load_transposed(&tail_ptrs[c], g * 64));
        for i in 0..(steps - 4 * g).min(4) {
            for c in 0..C {
                acc[c] = absorb8(acc[c], q[c][2 * i], q[c][2 * i + 1], &keys[c].r, &s[c]);
            }
        }
    }
    core::array::from_fn(|c| {
        let mut h = [[0u64; LANES]; 3];
        for (limb, v) in h.iter_mut().zip(acc[c]) {
            _mm512_storeu_si512(limb.as_mut_ptr().cast(), v);
        }
        core::array::from_fn(|p| finish([h[0][p], h[1][p], h[2][p]], keys[c].s[p]))
    })
}

/// One Horner step in every lane: acc = (acc + m)·r, m the block whose low and high
/// 64-bit halves are `lo` and `hi` (with the 2^128 bit every AEAD block carries).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512ifma")]
unsafe fn absorb8(
    acc: [__m512i; 3],
    lo: __m512i,
    hi: __m512i,
    r: &[__m512i; 3],
    s: &[__m512i; 2],
) -> [__m512i; 3] {
    let m44 = _mm512_set1_epi64(M44 as i64);
    let m0 = _mm512_and_si512(lo, m44);
    let m1 = _mm512_and_si512(
        _mm512_or_si512(_mm512_srli_epi64::<44>(lo), _mm512_slli_epi64::<20>(hi)),
        m44,
    );
    let m2 = _mm512_or_si512(_mm512_srli_epi64::<24>(hi), _mm512_set1_epi64(HIBIT as i64));
    let h = [
        _mm512_add_epi64(acc[0], m0),
        _mm512_add_epi64(acc[1], m1),
        _mm512_add_epi64(acc[2], m2),
    ];
    mul8(h, r, s)
}

/// The 64 bytes at `ptrs[p] + offset` for every p, transposed: result j holds 64-bit
/// word j of every packet (lane p = packet p), so results 2i and 2i+1 are the low and
/// high halves of block i.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn load_transposed(ptrs: &[*const u8; LANES], offset: usize) -> [__m512i; 8] {
    let a: [__m512i; 8] = core::array::from_fn(|p| _mm512_loadu_si512(ptrs[p].add(offset).cast()));
    // Per 128-bit chunk c, t[2i] holds words 2c of packets 2i, 2i+1 and t[2i+1] words 2c+1.
    let mut t = [_mm512_setzero_si512(); 8];
    for i in 0..4 {
        t[2 * i] = _mm512_unpacklo_epi64(a[2 * i], a[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi64(a[2 * i], a[2 * i + 1]);
    }
    let mut out = [_mm512_setzero_si512(); 8];
    for odd in 0..2 {
        let (t0, t2, t4, t6) = (t[odd], t[2 + odd], t[4 + odd], t[6 + odd]);
        let u0 = _mm512_shuffle_i64x2::<0x88>(t0, t2);
        let u1 = _mm512_shuffle_i64x2::<0xdd>(t0, t2);
        let v0 = _mm512_shuffle_i64x2::<0x88>(t4, t6);
        let v1 = _mm512_shuffle_i64x2::<0xdd>(t4, t6);
        out[odd] = _mm512_shuffle_i64x2::<0x88>(u0, v0);
        out[4 + odd] = _mm512_shuffle_i64x2::<0xdd>(u0, v0);
        out[2 + odd] = _mm512_shuffle_i64x2::<0x88>(u1, v1);
        out[6 + odd] = _mm512_shuffle_i64x2::<0xdd>(u1, v1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::reference_tag;
    use super::*;

    /// The eight-lane Poly1305 against RustCrypto's with all-ones keys and data (every
    /// limb and carry at its maximum) and mixed lanes, at lengths around the 64-byte
    /// transposition groups and the padded tail.
    #[test]
    fn poly1305_lanes_match_reference_at_extremes() {
        if !available() {
            return crate::tests::skip_or_fail_in_ci("this CPU has no AVX-512 IFMA");
        }
        let fills = [(0xffu8, 0xffu8), (0xff, 0x00), (0x00, 0xff), (0x55, 0xaa)];
        for len in (0..=300).chain([1279, 1280, 1281, 2100]) {
            // Lane p gets fill pattern p % 4, with lane-specific bytes in the odd lanes.
            let key_of = |p: usize| {
                let (k, _) = fills[p % 4];
                core::array::from_fn::<u8, 32, _>(|i| if p % 2 == 1 { k ^ (i as u8) } else { k })
            };
            let data: Vec<Vec<u8>> = (0..LANES)
                .map(|p| {
                    let (_, d) = fills[p % 4];
                    (0..len)
                        .map(|i| if p >= 4 { d ^ (i * p) as u8 } else { d })
                        .collect()
                })
                .collect();
            let keys: [[u8; 32]; LANES] = core::array::from_fn(key_of);
            let scalar = keys.map(|k| poly1305_key(&k));
            let lanes =
                |i: usize| unsafe { _mm512_loadu_si512(scalar.map(|(r, _)| r[i]).as_ptr().cast()) };
            let poly_keys = PolyKeys8 {
                r: [lanes(0), lanes(1), lanes(2)],
                s: scalar.map(|(_, s)| s),
            };
            let ptrs: [*const u8; LANES] = core::array::from_fn(|p| data[p].as_ptr());
            let [tags] = unsafe { poly1305_8(&[poly_keys], &[ptrs], len) };
            for p in 0..LANES {
                assert_eq!(
                    tags[p],
                    reference_tag(&keys[p], &data[p]),
                    "len {len} lane {p}"
                );
            }
        }
    }
}
