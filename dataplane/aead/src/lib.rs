//! ChaCha20-Poly1305 (RFC 8439) as WireGuard uses it for transport data: no associated
//! data, and the 96-bit nonce is 4 zero bytes followed by the packet's 64-bit counter in
//! little endian (WireGuard paper §5.4.6).
//!
//! The vendored boringtun (third_party/boringtun) seals and opens every data packet
//! through [`TransportKey`], so this crate is the one place where the packet cipher is
//! chosen: our AVX-512 code on x86_64 CPUs that have AVX-512 F/BW/VL and IFMA
//! (`x86_64_avx512`, about twice ring's speed on 1280-byte packets here), ring
//! everywhere else. [`implementation`] says which one this process uses; setting
//! `RINGSCALE_AEAD=ring` in the environment forces ring (for comparison and as an escape
//! hatch).
//!
//! Both operations work out of place (input and output are different buffers), which
//! saves the copy boringtun made before encrypting in place and lets an implementation
//! read and write in one pass.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use std::fmt;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
mod x86_64_avx512;

/// The ChaCha20-Poly1305 code that seals and opens transport data in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// ring's (assembly from BoringSSL: AVX2 on x86_64, NEON on aarch64, C elsewhere).
    Ring,
    /// This crate's AVX-512 ChaCha20 with IFMA Poly1305 (x86_64).
    Avx512,
}

impl fmt::Display for Implementation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Implementation::Ring => "ring",
            Implementation::Avx512 => "avx512",
        })
    }
}

/// Decided once per process: the CPU's features, unless `RINGSCALE_AEAD=ring`.
pub fn implementation() -> Implementation {
    static CHOSEN: OnceLock<Implementation> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        if std::env::var_os("RINGSCALE_AEAD").is_some_and(|v| v == "ring") {
            return Implementation::Ring;
        }
        #[cfg(target_arch = "x86_64")]
        if x86_64_avx512::available() {
            return Implementation::Avx512;
        }
        Implementation::Ring
    })
}

/// Length of the Poly1305 tag that follows the ciphertext.
pub const TAG_LEN: usize = 16;

/// The tag did not match: the packet was forged, corrupted, or sealed with another key
/// or counter. (Also returned for input too short to hold a tag.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadTag;

impl fmt::Display for BadTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChaCha20-Poly1305 authentication tag mismatch")
    }
}

impl std::error::Error for BadTag {}

/// A ChaCha20-Poly1305 key for WireGuard transport data (RFC 8439; nonce = 4 zero bytes
/// || counter LE).
pub struct TransportKey {
    /// The key bytes themselves: ring keeps only its own form of the key, and an
    /// implementation outside ring needs the bytes.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    raw: [u8; 32],
    ring: LessSafeKey,
    /// `implementation()` at creation, kept here so a packet costs no atomic load.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    implementation: Implementation,
}

impl TransportKey {
    pub fn new(key: &[u8; 32]) -> TransportKey {
        Self::with_implementation(key, implementation())
    }

    fn with_implementation(key: &[u8; 32], implementation: Implementation) -> TransportKey {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key)
            .expect("a 32-byte key is always a valid ChaCha20-Poly1305 key");
        TransportKey {
            raw: *key,
            ring: LessSafeKey::new(unbound),
            implementation,
        }
    }

    /// Encrypts `plaintext` into `out[..plaintext.len()]` and writes the tag after it;
    /// returns plaintext.len() + TAG_LEN. Panics if out is too short (caller bug).
    pub fn seal(&self, counter: u64, plaintext: &[u8], out: &mut [u8]) -> usize {
        let sealed_len = plaintext.len() + TAG_LEN;
        assert!(
            out.len() >= sealed_len,
            "seal: output buffer of {} bytes cannot hold {} bytes of plaintext and the tag",
            out.len(),
            plaintext.len()
        );

        #[cfg(target_arch = "x86_64")]
        if self.implementation == Implementation::Avx512 {
            // SAFETY: Avx512 is chosen only when the CPU has the features it needs.
            unsafe {
                x86_64_avx512::seal(
                    &self.raw,
                    &nonce_bytes(counter),
                    plaintext,
                    &mut out[..sealed_len],
                )
            };
            return sealed_len;
        }

        let (ciphertext, tag_out) = out[..sealed_len].split_at_mut(plaintext.len());
        ciphertext.copy_from_slice(plaintext);
        let tag = self
            .ring
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), ciphertext)
            // ring refuses only inputs over 256 GiB (RFC 8439's limit); a packet never is.
            .expect("ChaCha20-Poly1305 input within RFC 8439's length limit");
        tag_out.copy_from_slice(tag.as_ref());
        sealed_len
    }

    /// Checks the tag of `sealed` (ciphertext || tag) and decrypts the ciphertext into
    /// `out[..sealed.len()-16]`; returns that length. On a bad tag (or sealed shorter
    /// than 16) returns Err(BadTag). Panics if out is too short for the plaintext (caller
    /// bug). After Err(BadTag), `out[..sealed.len()-16]` holds no meaningful data.
    pub fn open(&self, counter: u64, sealed: &[u8], out: &mut [u8]) -> Result<usize, BadTag> {
        let plaintext_len = sealed.len().checked_sub(TAG_LEN).ok_or(BadTag)?;
        assert!(
            out.len() >= plaintext_len,
            "open: output buffer of {} bytes cannot hold {} bytes of plaintext",
            out.len(),
            plaintext_len
        );

        #[cfg(target_arch = "x86_64")]
        if self.implementation == Implementation::Avx512 {
            // SAFETY: Avx512 is chosen only when the CPU has the features it needs.
            let opened =
                unsafe { x86_64_avx512::open(&self.raw, &nonce_bytes(counter), sealed, out) };
            return opened.ok_or(BadTag);
        }

        let (ciphertext, tag) = sealed.split_at(plaintext_len);
        let tag = Tag::try_from(tag).map_err(|_| BadTag)?;
        let plaintext = &mut out[..plaintext_len];
        plaintext.copy_from_slice(ciphertext);
        self.ring
            .open_in_place_separate_tag(nonce(counter), Aad::empty(), tag, plaintext, 0..)
            .map_err(|_| BadTag)?;
        Ok(plaintext_len)
    }
}

/// WireGuard's nonce: 4 zero bytes, then the counter in little endian.
fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    nonce
}

fn nonce(counter: u64) -> Nonce {
    Nonce::assume_unique_for_key(nonce_bytes(counter))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic, well-mixed test data (SplitMix64), so failures reproduce.
    struct TestRng(u64);

    impl TestRng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn fill(&mut self, buf: &mut [u8]) {
            for chunk in buf.chunks_mut(8) {
                let bytes = self.next_u64().to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }

        fn key(&mut self) -> [u8; 32] {
            let mut key = [0u8; 32];
            self.fill(&mut key);
            key
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            let mut buf = vec![0u8; len];
            self.fill(&mut buf);
            buf
        }
    }

    /// Every implementation this CPU can run: each test runs against all of them.
    fn implementations() -> Vec<Implementation> {
        let mut all = vec![Implementation::Ring];
        #[cfg(target_arch = "x86_64")]
        if x86_64_avx512::available() {
            all.push(Implementation::Avx512);
        }
        all
    }

    fn seal_to_vec(key: &TransportKey, counter: u64, plaintext: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; plaintext.len() + TAG_LEN];
        assert_eq!(key.seal(counter, plaintext, &mut out), out.len());
        out
    }

    /// The same operation done with ring directly, with WireGuard's nonce layout spelled
    /// out here rather than taken from the code under test.
    fn ring_seal(key: &[u8; 32], counter: u64, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).unwrap());
        let mut in_out = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut in_out,
        )
        .unwrap();
        in_out
    }

    #[test]
    fn round_trip_every_length_up_to_1500() {
        for imp in implementations() {
            let mut rng = TestRng(1);
            for len in 0..=1500 {
                let key = TransportKey::with_implementation(&rng.key(), imp);
                let counter = rng.next_u64();
                let plaintext = rng.bytes(len);

                let sealed = seal_to_vec(&key, counter, &plaintext);
                if len >= 8 {
                    assert_ne!(sealed[..len], plaintext[..], "length {len}: not encrypted");
                }

                // Larger than needed, as boringtun's buffers are: the bytes past the
                // plaintext must stay untouched.
                let mut out = vec![0xa5u8; len + 64];
                assert_eq!(
                    key.open(counter, &sealed, &mut out),
                    Ok(len),
                    "length {len}"
                );
                assert_eq!(out[..len], plaintext[..], "length {len}");
                assert!(out[len..].iter().all(|&b| b == 0xa5), "length {len}");
            }
        }
    }

    #[test]
    fn seal_writes_only_ciphertext_and_tag() {
        for imp in implementations() {
            let mut rng = TestRng(2);
            let key = TransportKey::with_implementation(&rng.key(), imp);
            let plaintext = rng.bytes(100);
            let mut out = vec![0x5au8; 200];
            assert_eq!(key.seal(7, &plaintext, &mut out), 116);
            assert!(out[116..].iter().all(|&b| b == 0x5a));
        }
    }

    #[test]
    fn any_flipped_bit_is_rejected() {
        for imp in implementations() {
            let mut rng = TestRng(3);
            for len in [0, 1, 15, 16, 17, 63, 64, 65, 200, 1280] {
                let key = TransportKey::with_implementation(&rng.key(), imp);
                let counter = rng.next_u64();
                let sealed = seal_to_vec(&key, counter, &rng.bytes(len));
                let mut out = vec![0u8; len];
                for bit in 0..sealed.len() * 8 {
                    let mut forged = sealed.clone();
                    forged[bit / 8] ^= 1 << (bit % 8);
                    assert_eq!(
                        key.open(counter, &forged, &mut out),
                        Err(BadTag),
                        "length {len}, bit {bit} flipped"
                    );
                }
                // And the untouched packet still opens.
                assert_eq!(key.open(counter, &sealed, &mut out), Ok(len));
            }
        }
    }

    #[test]
    fn wrong_counter_or_key_is_rejected() {
        for imp in implementations() {
            let mut rng = TestRng(4);
            let key_bytes = rng.key();
            let key = TransportKey::with_implementation(&key_bytes, imp);
            let sealed = seal_to_vec(&key, 1000, &rng.bytes(300));
            let mut out = vec![0u8; 300];
            for counter in [0, 999, 1001, 1000 | (1 << 32), 1000 | (1 << 63)] {
                assert_eq!(key.open(counter, &sealed, &mut out), Err(BadTag));
            }
            let mut other_key = key_bytes;
            other_key[31] ^= 0x80;
            assert_eq!(
                TransportKey::with_implementation(&other_key, imp).open(1000, &sealed, &mut out),
                Err(BadTag)
            );
        }
    }

    #[test]
    fn shorter_than_a_tag_is_rejected() {
        for imp in implementations() {
            let key = TransportKey::with_implementation(&[9; 32], imp);
            let mut out = [0u8; 32];
            for len in 0..TAG_LEN {
                assert_eq!(key.open(0, &vec![0u8; len], &mut out), Err(BadTag));
            }
            // Even with no room for output at all: bad input is an error, not a panic.
            assert_eq!(key.open(0, &[0u8; 3], &mut []), Err(BadTag));
        }
    }

    #[test]
    fn matches_ring_with_wireguard_nonce() {
        for imp in implementations() {
            let mut rng = TestRng(5);
            // Counters that tell byte order and position apart: a little-endian counter in
            // bytes 4..12 is the only layout that matches ring for all of them.
            let counters = [
                0,
                1,
                0x0102_0304_0506_0708,
                u64::MAX - 1,
                1 << 63,
                rng.next_u64(),
            ];
            // Every length across the AVX-512 code's block, batch and vector-Poly1305 edges.
            let lengths = (0..=2100).chain([4095, 4096, 9000]);
            for len in lengths {
                for counter in counters {
                    let key_bytes = rng.key();
                    let plaintext = rng.bytes(len);
                    let expected = ring_seal(&key_bytes, counter, &plaintext);

                    let key = TransportKey::with_implementation(&key_bytes, imp);
                    assert_eq!(
                        seal_to_vec(&key, counter, &plaintext),
                        expected,
                        "length {len}, counter {counter:#x}"
                    );
                    let mut out = vec![0u8; len];
                    assert_eq!(key.open(counter, &expected, &mut out), Ok(len));
                    assert_eq!(out, plaintext);
                }
            }
        }
    }

    #[test]
    fn keepalive_is_a_bare_tag() {
        for imp in implementations() {
            let key_bytes = [0x42; 32];
            let key = TransportKey::with_implementation(&key_bytes, imp);
            let mut out = [0u8; 64];
            assert_eq!(key.seal(5, &[], &mut out), TAG_LEN);
            assert_eq!(out[..TAG_LEN], ring_seal(&key_bytes, 5, &[])[..]);
            assert!(out[TAG_LEN..].iter().all(|&b| b == 0));
            assert_eq!(key.open(5, &out[..TAG_LEN], &mut []), Ok(0));
            assert_eq!(key.open(6, &out[..TAG_LEN], &mut []), Err(BadTag));
        }
    }

    #[test]
    #[should_panic(expected = "output buffer")]
    fn seal_into_too_short_buffer_panics() {
        let key = TransportKey::new(&[1; 32]);
        let mut out = [0u8; 20];
        key.seal(0, &[0u8; 5], &mut out);
    }

    #[test]
    fn fast_path_is_used_where_the_cpu_has_it() {
        let forced_ring = std::env::var_os("RINGSCALE_AEAD").is_some_and(|v| v == "ring");
        let expected =
            if *implementations().last().unwrap() == Implementation::Avx512 && !forced_ring {
                Implementation::Avx512
            } else {
                Implementation::Ring
            };
        assert_eq!(implementation(), expected);
        assert_eq!(TransportKey::new(&[3; 32]).implementation, expected);
    }
}
