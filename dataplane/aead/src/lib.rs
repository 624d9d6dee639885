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
//!
//! [`TransportKey::seal_batch`] and [`TransportKey::open_batch`] take many packets under
//! one key (the segments of one TSO super-packet, the datagrams of one GRO receive):
//! the AVX-512 code then runs eight or sixteen packets side by side, one packet per
//! vector lane (1280-byte packets: ~300 → ~207 ns each way per packet; 64-byte packets
//! ~185 → ~25 ns, measured here). Same bytes as one call per packet, which is what ring
//! does.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use std::fmt;
use std::ops::Range;
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

/// One packet of [`TransportKey::seal_batch`]: `src[plaintext]` is sealed into
/// `dst[out_start..out_start + plaintext.len() + TAG_LEN]` (ciphertext, then tag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealJob {
    pub counter: u64,
    pub plaintext: Range<usize>,
    pub out_start: usize,
}

/// One packet of [`TransportKey::open_batch`]: `src[sealed]` (ciphertext || tag) is
/// checked and decrypted into `dst[out_start..out_start + sealed.len() - TAG_LEN]`;
/// `opened` receives what [`TransportKey::open`] would have returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenJob {
    pub counter: u64,
    pub sealed: Range<usize>,
    pub out_start: usize,
    pub opened: Result<usize, BadTag>,
}

impl TransportKey {
    /// Seals several packets under this key at once: the same result as one
    /// [`TransportKey::seal`] per job, but an implementation may work on several
    /// packets together (the segments of one TSO super-packet). Outputs must not
    /// overlap one another. Panics if a range lies outside its buffer (caller bug).
    pub fn seal_batch(&self, src: &[u8], dst: &mut [u8], jobs: &[SealJob]) {
        #[cfg(target_arch = "x86_64")]
        let jobs = if self.implementation == Implementation::Avx512 {
            self.seal_avx512(src, dst, jobs)
        } else {
            jobs
        };
        self.seal_batch_one_by_one(src, dst, jobs);
    }

    fn seal_batch_one_by_one(&self, src: &[u8], dst: &mut [u8], jobs: &[SealJob]) {
        for job in jobs {
            let out_end = job.out_start + job.plaintext.len() + TAG_LEN;
            self.seal(
                job.counter,
                &src[job.plaintext.clone()],
                &mut dst[job.out_start..out_end],
            );
        }
    }

    /// Opens several packets under this key at once, setting each job's `opened`: the
    /// same result as one [`TransportKey::open`] per job. Outputs must not overlap one
    /// another. Panics if a range lies outside its buffer (caller bug); a sealed range
    /// shorter than a tag is `Err(BadTag)`, as with `open`.
    pub fn open_batch(&self, src: &[u8], dst: &mut [u8], jobs: &mut [OpenJob]) {
        #[cfg(target_arch = "x86_64")]
        let jobs = if self.implementation == Implementation::Avx512 {
            self.open_avx512(src, dst, jobs)
        } else {
            jobs
        };
        self.open_batch_one_by_one(src, dst, jobs);
    }

    fn open_batch_one_by_one(&self, src: &[u8], dst: &mut [u8], jobs: &mut [OpenJob]) {
        for job in jobs {
            let out_len = job.sealed.len().saturating_sub(TAG_LEN);
            job.opened = self.open(
                job.counter,
                &src[job.sealed.clone()],
                &mut dst[job.out_start..job.out_start + out_len],
            );
        }
    }
}

/// The AVX-512 batch path: runs of jobs of one length go through
/// `x86_64_avx512::{seal_octets, open_octets}` sixteen at a time (two octets, whose
/// Poly1305 chains interleave), then eight; the rest is returned for one by one.
#[cfg(target_arch = "x86_64")]
impl TransportKey {
    fn seal_avx512<'j>(&self, src: &[u8], dst: &mut [u8], jobs: &'j [SealJob]) -> &'j [SealJob] {
        const LANES: usize = x86_64_avx512::LANES;
        let mut rest = jobs;
        while rest.len() >= LANES {
            let len = rest[0].plaintext.len();
            let same = rest.iter().take_while(|j| j.plaintext.len() == len).count();
            let take = if same >= 2 * LANES {
                self.seal_octets::<2>(src, dst, &rest[..2 * LANES]);
                2 * LANES
            } else if same >= LANES {
                self.seal_octets::<1>(src, dst, &rest[..LANES]);
                LANES
            } else {
                self.seal_batch_one_by_one(src, dst, &rest[..same]);
                same
            };
            rest = &rest[take..];
        }
        rest
    }

    /// `jobs`: `C` octets, all of one plaintext length.
    fn seal_octets<const C: usize>(&self, src: &[u8], dst: &mut [u8], jobs: &[SealJob]) {
        const LANES: usize = x86_64_avx512::LANES;
        let len = jobs[0].plaintext.len();
        let job = |c: usize, p: usize| &jobs[c * LANES + p];
        let from: [[*const u8; LANES]; C] = std::array::from_fn(|c| {
            std::array::from_fn(|p| {
                let j = job(c, p);
                assert_eq!(j.plaintext.len(), len);
                src[j.plaintext.clone()].as_ptr()
            })
        });
        let dst_len = dst.len();
        let base = dst.as_mut_ptr();
        let to: [[*mut u8; LANES]; C] = std::array::from_fn(|c| {
            std::array::from_fn(|p| {
                let start = job(c, p).out_start;
                let end = start.checked_add(len + TAG_LEN);
                assert!(
                    end.is_some_and(|e| e <= dst_len),
                    "seal_batch: output out of bounds"
                );
                // SAFETY: in bounds of dst, just checked.
                unsafe { base.add(start) }
            })
        });
        let counters = std::array::from_fn(|c| std::array::from_fn(|p| job(c, p).counter));
        // SAFETY: the CPU has the features (Avx512 is chosen only then); every range was
        // checked against its buffer; src and dst are distinct borrows.
        unsafe { x86_64_avx512::seal_octets::<C>(&self.raw, &counters, len, &from, &to) };
    }

    fn open_avx512<'j>(
        &self,
        src: &[u8],
        dst: &mut [u8],
        jobs: &'j mut [OpenJob],
    ) -> &'j mut [OpenJob] {
        const LANES: usize = x86_64_avx512::LANES;
        let mut rest = jobs;
        while rest.len() >= LANES {
            let sealed_len = rest[0].sealed.len();
            let same = rest
                .iter()
                .take_while(|j| j.sealed.len() == sealed_len)
                .count();
            let (now, after) =
                std::mem::take(&mut rest).split_at_mut(if same < LANES || sealed_len < TAG_LEN {
                    same
                } else if same >= 2 * LANES {
                    2 * LANES
                } else {
                    LANES
                });
            match now.len() {
                n if n == 2 * LANES => self.open_octets::<2>(src, dst, now),
                LANES if sealed_len >= TAG_LEN => self.open_octets::<1>(src, dst, now),
                _ => self.open_batch_one_by_one(src, dst, now),
            }
            rest = after;
        }
        rest
    }

    /// `jobs`: `C` octets, all of one sealed length (at least a tag).
    fn open_octets<const C: usize>(&self, src: &[u8], dst: &mut [u8], jobs: &mut [OpenJob]) {
        const LANES: usize = x86_64_avx512::LANES;
        let len = jobs[0].sealed.len() - TAG_LEN;
        let from: [[*const u8; LANES]; C] = std::array::from_fn(|c| {
            std::array::from_fn(|p| {
                let j = &jobs[c * LANES + p];
                assert_eq!(j.sealed.len(), len + TAG_LEN);
                src[j.sealed.clone()].as_ptr()
            })
        });
        let dst_len = dst.len();
        let base = dst.as_mut_ptr();
        let to: [[*mut u8; LANES]; C] = std::array::from_fn(|c| {
            std::array::from_fn(|p| {
                let start = jobs[c * LANES + p].out_start;
                let end = start.checked_add(len);
                assert!(
                    end.is_some_and(|e| e <= dst_len),
                    "open_batch: output out of bounds"
                );
                // SAFETY: in bounds of dst, just checked.
                unsafe { base.add(start) }
            })
        });
        let counters =
            std::array::from_fn(|c| std::array::from_fn(|p| jobs[c * LANES + p].counter));
        let mut ok = [[false; LANES]; C];
        // SAFETY: as in seal_octets.
        unsafe { x86_64_avx512::open_octets::<C>(&self.raw, &counters, len, &from, &to, &mut ok) };
        for (job, ok) in jobs.iter_mut().zip(ok.iter().flatten()) {
            job.opened = if *ok { Ok(len) } else { Err(BadTag) };
        }
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

    /// For a test whose precondition (here: a CPU with AVX-512 IFMA) is missing: skips
    /// with a note on a developer's machine, but fails in CI (`CI` set, as CI services
    /// do) or under `RINGSCALE_REQUIRE_ALL_TESTS=1`, so that code cannot go untested
    /// there unnoticed; `RINGSCALE_REQUIRE_ALL_TESTS=0` allows the skip anyway. (The cli
    /// crate has a copy: this crate has no test-helper dependency to share it through.)
    pub(crate) fn skip_or_fail_in_ci(why: &str) {
        let required = match std::env::var("RINGSCALE_REQUIRE_ALL_TESTS") {
            Ok(v) => v != "0",
            Err(_) => std::env::var("CI").is_ok_and(|v| !matches!(&*v, "" | "0" | "false")),
        };
        assert!(
            !required,
            "{why}, and CI or RINGSCALE_REQUIRE_ALL_TESTS=1 requires this test to run \
             (RINGSCALE_REQUIRE_ALL_TESTS=0 allows skipping it)"
        );
        eprintln!("skipped: {why}");
    }

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
        } else {
            skip_or_fail_in_ci("the AVX-512 implementation: this CPU has no AVX-512 IFMA");
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

    /// Jobs for `lengths`, plaintexts back to back in one buffer and outputs spread
    /// over another (with gaps, as boringtun's headers leave), random counters.
    fn batch_jobs(rng: &mut TestRng, lengths: &[usize]) -> (Vec<u8>, Vec<SealJob>, usize) {
        let src = rng.bytes(lengths.iter().sum());
        let (mut at, mut out_at) = (0, 16);
        let jobs = lengths
            .iter()
            .map(|&len| {
                let job = SealJob {
                    counter: rng.next_u64(),
                    plaintext: at..at + len,
                    out_start: out_at,
                };
                at += len;
                out_at += len + TAG_LEN + 16;
                job
            })
            .collect();
        (src, jobs, out_at)
    }

    /// Batches of every shape the worker makes (runs of one length with a shorter last
    /// packet, lengths changing mid-octet, fewer than eight) and every length up to
    /// past two ChaCha20 sets give byte for byte what one seal per packet gives, and
    /// open back, in every implementation.
    #[test]
    fn batches_match_one_packet_at_a_time() {
        let mut shapes: Vec<Vec<usize>> = (0..=300).map(|len| vec![len; 8]).collect();
        shapes.extend([1024, 1279, 1280, 1281, 1420, 1472, 2100].map(|len| vec![len; 8]));
        shapes.push([vec![1280; 50], vec![700]].concat());
        shapes.push([vec![1280; 5], vec![60; 9], vec![1280; 16], vec![0; 3]].concat());
        shapes.push(vec![52, 1280, 1280, 1280, 1280, 1280, 1280, 1280, 1280, 52]);
        shapes.push(vec![1280; 7]);
        for imp in implementations() {
            let mut rng = TestRng(6);
            for lengths in &shapes {
                let key = TransportKey::with_implementation(&rng.key(), imp);
                let (src, jobs, out_len) = batch_jobs(&mut rng, lengths);
                let mut sealed = vec![0x77u8; out_len];
                key.seal_batch(&src, &mut sealed, &jobs);

                let mut expected = vec![0x77u8; out_len];
                for j in &jobs {
                    let end = j.out_start + j.plaintext.len() + TAG_LEN;
                    key.seal(
                        j.counter,
                        &src[j.plaintext.clone()],
                        &mut expected[j.out_start..end],
                    );
                }
                assert_eq!(sealed, expected, "{imp} lengths {lengths:?}");

                let mut opens: Vec<OpenJob> = jobs
                    .iter()
                    .map(|j| OpenJob {
                        counter: j.counter,
                        sealed: j.out_start..j.out_start + j.plaintext.len() + TAG_LEN,
                        out_start: j.plaintext.start,
                        opened: Err(BadTag),
                    })
                    .collect();
                let mut opened = vec![0u8; src.len()];
                key.open_batch(&sealed, &mut opened, &mut opens);
                assert_eq!(opened, src, "{imp} lengths {lengths:?}");
                for (o, j) in opens.iter().zip(&jobs) {
                    assert_eq!(o.opened, Ok(j.plaintext.len()), "{imp} lengths {lengths:?}");
                }
            }
        }
    }

    /// In a batch, a forged packet (one bit flipped anywhere: ciphertext or tag, or the
    /// wrong counter) fails alone; the packets around it open.
    #[test]
    fn a_forged_packet_in_a_batch_fails_alone() {
        for imp in implementations() {
            let mut rng = TestRng(7);
            for len in [0, 17, 64, 200, 1280] {
                let key = TransportKey::with_implementation(&rng.key(), imp);
                let (src, jobs, out_len) = batch_jobs(&mut rng, &[len; 16]);
                let mut sealed = vec![0u8; out_len];
                key.seal_batch(&src, &mut sealed, &jobs);
                for bit in (0..(len + TAG_LEN) * 8).step_by(13) {
                    let victim = bit % 16;
                    let mut forged = sealed.clone();
                    forged[jobs[victim].out_start + bit / 8] ^= 1 << (bit % 8);
                    let mut opens: Vec<OpenJob> = jobs
                        .iter()
                        .map(|j| OpenJob {
                            counter: j.counter,
                            sealed: j.out_start..j.out_start + len + TAG_LEN,
                            out_start: j.plaintext.start,
                            opened: Ok(0),
                        })
                        .collect();
                    if bit % 5 == 0 {
                        // Or the right bytes under another counter.
                        forged = sealed.clone();
                        opens[victim].counter ^= 1;
                    }
                    let mut out = vec![0u8; src.len()];
                    key.open_batch(&forged, &mut out, &mut opens);
                    for (i, o) in opens.iter().enumerate() {
                        let want = if i == victim { Err(BadTag) } else { Ok(len) };
                        assert_eq!(o.opened, want, "{imp} len {len} bit {bit} packet {i}");
                        if i != victim {
                            let r = jobs[i].plaintext.clone();
                            assert_eq!(out[r.clone()], src[r], "{imp} len {len} packet {i}");
                        }
                    }
                }
            }
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
