//! NaCl `crypto_box` (Curve25519, HSalsa20, XSalsa20-Poly1305) as Tailscale uses it for
//! disco packets and DERP's ClientInfo/ServerInfo (protocol.md §6.3, §7.1): the shared
//! key is computed once per key pair, a sealed box is the 16-byte Poly1305 tag followed
//! by the ciphertext, and the 24-byte nonce travels in front of it.

use crypto_box::aead::generic_array::GenericArray;
use crypto_box::aead::AeadInPlace;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use ringscale_keys::PrivateKey;
use std::fmt;

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;

/// A box that failed to open: wrong key, altered bytes, or too short to hold a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenError;

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NaCl box does not open (wrong key or corrupted)")
    }
}

impl std::error::Error for OpenError {}

/// The precomputed key between our private key and one peer's public key.
pub struct SharedKey(SalsaBox);

impl SharedKey {
    pub fn new(our_private: &PrivateKey, their_public: &[u8; 32]) -> SharedKey {
        // crypto_box's SecretKey zeroes itself on drop.
        let secret = SecretKey::from(*our_private.expose_secret_bytes());
        SharedKey(SalsaBox::new(&PublicKey::from(*their_public), &secret))
    }

    /// Appends the box of `plaintext` (tag ‖ ciphertext) to `out`.
    pub fn seal_into(&self, nonce: &[u8; NONCE_LEN], plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + TAG_LEN, 0);
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .encrypt_in_place_detached(
                GenericArray::from_slice(nonce),
                b"",
                &mut out[start + TAG_LEN..],
            )
            // Only non-empty associated data fails, and we pass none.
            .unwrap_or_default();
        out[start..start + TAG_LEN].copy_from_slice(&tag);
    }

    /// Opens a box (tag ‖ ciphertext) and returns the plaintext.
    pub fn open(&self, nonce: &[u8; NONCE_LEN], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < TAG_LEN {
            return Err(OpenError);
        }
        let (tag, ct) = sealed.split_at(TAG_LEN);
        let mut plain = ct.to_vec();
        self.0
            .decrypt_in_place_detached(
                GenericArray::from_slice(nonce),
                b"",
                &mut plain,
                GenericArray::from_slice(tag),
            )
            .map_err(|_| OpenError)?;
        Ok(plain)
    }
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedKey(…)")
    }
}

/// A fresh random nonce. 24 random bytes never repeat in practice, which is why NaCl
/// (and Go's disco and DERP code) use random nonces with XSalsa20.
pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    ringscale_sys::random::fill(&mut n);
    n
}

/// Seals `plaintext` to `their_public` with a random nonce: nonce ‖ box, the layout
/// DERP's ClientInfo and ServerInfo frames carry.
pub fn seal_with_nonce(shared: &SharedKey, plaintext: &[u8]) -> Vec<u8> {
    let nonce = random_nonce();
    let mut out = Vec::with_capacity(NONCE_LEN + TAG_LEN + plaintext.len());
    out.extend_from_slice(&nonce);
    shared.seal_into(&nonce, plaintext, &mut out);
    out
}

/// Opens nonce ‖ box.
pub fn open_with_nonce(shared: &SharedKey, data: &[u8]) -> Result<Vec<u8>, OpenError> {
    if data.len() < NONCE_LEN + TAG_LEN {
        return Err(OpenError);
    }
    let (nonce, sealed) = data.split_at(NONCE_LEN);
    let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError)?;
    shared.open(nonce, sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Made with PyNaCl 1.6 (libsodium): `Box(PrivateKey(b"\x01"*32),
    /// PrivateKey(b"\x02"*32).public_key).encrypt(msg, bytes(range(24)))`.
    const SEALED: &str =
        "1ac8e0637e9aaf277b4e6d29d2ababb990a6eda4e952875adc761caebfff68d8afb60f9283c1ae11752f29";
    const MSG: &[u8] = b"ringscale disco test vector";

    fn nonce() -> [u8; 24] {
        core::array::from_fn(|i| i as u8)
    }

    #[test]
    fn seals_exactly_as_libsodium_does() {
        let b_pub = PrivateKey::from_bytes([2; 32]).public();
        let mut out = Vec::new();
        SharedKey::new(&PrivateKey::from_bytes([1; 32]), &b_pub.0).seal_into(
            &nonce(),
            MSG,
            &mut out,
        );
        assert_eq!(out, unhex(SEALED));
    }

    #[test]
    fn opens_what_libsodium_sealed_from_the_other_side() {
        let a_pub = PrivateKey::from_bytes([1; 32]).public();
        let shared = SharedKey::new(&PrivateKey::from_bytes([2; 32]), &a_pub.0);
        assert_eq!(shared.open(&nonce(), &unhex(SEALED)).unwrap(), MSG);
    }

    #[test]
    fn altered_boxes_wrong_keys_and_short_input_do_not_open() {
        let a_pub = PrivateKey::from_bytes([1; 32]).public();
        let shared = SharedKey::new(&PrivateKey::from_bytes([2; 32]), &a_pub.0);
        let good = unhex(SEALED);
        for i in [0, 15, 16, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 1;
            assert_eq!(shared.open(&nonce(), &bad), Err(OpenError), "byte {i}");
        }
        let stranger = SharedKey::new(&PrivateKey::from_bytes([3; 32]), &a_pub.0);
        assert_eq!(stranger.open(&nonce(), &good), Err(OpenError));
        assert_eq!(shared.open(&nonce(), &good[..15]), Err(OpenError));
        assert_eq!(open_with_nonce(&shared, &[0; 39]), Err(OpenError));
    }

    #[test]
    fn nonce_prefixed_round_trip() {
        let (a, b) = (
            PrivateKey::from_bytes([5; 32]),
            PrivateKey::from_bytes([6; 32]),
        );
        let sealed = seal_with_nonce(&SharedKey::new(&a, &b.public().0), b"{\"version\":2}");
        let opened = open_with_nonce(&SharedKey::new(&b, &a.public().0), &sealed).unwrap();
        assert_eq!(opened, b"{\"version\":2}");
    }
}
