//! Curve25519 keys as WireGuard and Tailscale write them.

#![forbid(unsafe_code)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::fmt;
use zeroize::Zeroize as _;

/// A 32-byte Curve25519 public key. Private keys are [`PrivateKey`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Key(pub [u8; 32]);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    NotBase64,
    WrongLength(usize),
    NotHex,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NotBase64 => f.write_str("key is not valid base64"),
            KeyError::WrongLength(n) => write!(f, "key must be 32 bytes, got {n}"),
            KeyError::NotHex => f.write_str("key is not 64 hex digits"),
        }
    }
}

impl std::error::Error for KeyError {}

impl Key {
    /// Parses the base64 form used in WireGuard config files and `wg`.
    pub fn from_base64(s: &str) -> Result<Key, KeyError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| KeyError::NotBase64)?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Key(arr))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Parses 64 hex digits (Tailscale's `nodekey:…`/`mkey:…` bodies, WireGuard's UAPI).
    pub fn from_hex(s: &str) -> Result<Key, KeyError> {
        let mut out = Key([0; 32]);
        parse_hex_into(s, &mut out.0)?;
        Ok(out)
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for Key {
    // A public key is no secret; the short form keeps logs readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}…)", &self.to_hex()[..8])
    }
}

/// A Curve25519 private key (WireGuard node key, Tailscale machine/node/disco key).
///
/// Unlike [`Key`] it is not `Copy`, so copies of the secret are visible in the code
/// (`clone()`); its memory is zeroed when it is dropped; `Debug` prints no key material and
/// there is no `Display`. The bytes leave only through [`PrivateKey::expose_secret_bytes`]
/// (and the text forms built on it), so every place that writes a secret out can be found
/// with `grep expose_secret`.
#[derive(Clone, Default)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// Takes the bytes as the key (no clamping: X25519 clamps when it uses the key).
    pub fn from_bytes(bytes: [u8; 32]) -> PrivateKey {
        PrivateKey(bytes)
    }

    /// A fresh private key from the OS random source, clamped as X25519 does, so the
    /// stored form matches what `wg genkey` writes.
    pub fn generate() -> PrivateKey {
        let mut k = PrivateKey([0; 32]);
        ringscale_sys::random::fill(&mut k.0);
        k.0[0] &= 248;
        k.0[31] &= 127;
        k.0[31] |= 64;
        k
    }

    /// Parses the base64 form used in WireGuard config files and `wg`. The error never
    /// contains the text.
    pub fn from_base64(s: &str) -> Result<PrivateKey, KeyError> {
        let mut bytes = STANDARD.decode(s.trim()).map_err(|_| KeyError::NotBase64)?;
        let key = match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(arr) => Ok(PrivateKey(arr)),
            Err(_) => Err(KeyError::WrongLength(bytes.len())),
        };
        bytes.as_mut_slice().zeroize();
        key
    }

    /// Parses 64 hex digits (Tailscale's `privkey:…` body, WireGuard's UAPI).
    pub fn from_hex(s: &str) -> Result<PrivateKey, KeyError> {
        let mut k = PrivateKey([0; 32]);
        parse_hex_into(s, &mut k.0)?;
        Ok(k)
    }

    /// The public key of this private key.
    pub fn public(&self) -> Key {
        // StaticSecret zeroes itself on drop (x25519-dalek's `zeroize` feature).
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        Key(boringtun::x25519::PublicKey::from(&secret).to_bytes())
    }

    /// The all-zero key: Tailscale's "no key" in persisted state.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    /// The raw secret, for the places that must hand it on: the state file, WireGuard's
    /// UAPI, boringtun's `StaticSecret`, a NaCl box, a Noise handshake. Never log it.
    pub fn expose_secret_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The secret as 64 lower-case hex digits (`privkey:` bodies, UAPI `private_key=`).
    pub fn expose_secret_hex(&self) -> String {
        hex(&self.0)
    }

    /// Overwrites the key with zeros. `Drop` calls this; it is public so that tests (and
    /// callers done with a key early) can see it happen.
    pub fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.zeroize();
    }
}

/// Compared without an early exit, so the time taken does not depend on where two keys
/// first differ.
impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for PrivateKey {}

impl fmt::Debug for PrivateKey {
    // No key material at all, not even a prefix: logs are read by people and shipped off.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

fn parse_hex_into(s: &str, out: &mut [u8; 32]) -> Result<(), KeyError> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return Err(KeyError::NotHex);
    }
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).ok_or(KeyError::NotHex)?;
        let lo = (pair[1] as char).to_digit(16).ok_or(KeyError::NotHex)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(())
}

fn hex(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_hex_round_trip() {
        let k = PrivateKey::generate().public();
        assert_eq!(Key::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(Key::from_hex(&k.to_hex()).unwrap(), k);
        assert_eq!(Key::from_hex(&k.to_hex().to_uppercase()).unwrap(), k);
        assert_eq!(Key::from_base64("AAAA"), Err(KeyError::WrongLength(3)));
        assert_eq!(Key::from_base64("!!"), Err(KeyError::NotBase64));
        assert_eq!(Key::from_hex(&"g".repeat(64)), Err(KeyError::NotHex));

        let private = PrivateKey::generate();
        let hex = private.expose_secret_hex();
        assert_eq!(PrivateKey::from_hex(&hex).unwrap(), private);
        let b64 = STANDARD.encode(private.expose_secret_bytes());
        assert_eq!(PrivateKey::from_base64(&b64).unwrap(), private);
        assert_eq!(
            PrivateKey::from_base64("AAAA").unwrap_err(),
            KeyError::WrongLength(3)
        );
        assert_eq!(PrivateKey::from_hex("00").unwrap_err(), KeyError::NotHex);
        assert_ne!(PrivateKey::generate(), private);
    }

    #[test]
    fn generated_keys_are_clamped_like_wg_genkey() {
        let k = PrivateKey::generate();
        let b = k.expose_secret_bytes();
        assert_eq!((b[0] & 7, b[31] & 0xc0), (0, 0x40));
    }

    #[test]
    fn private_key_debug_shows_no_key_material() {
        // Fixed keys: a random one could share a 4-character window with the output
        // by chance ("edac" of "redacted" is hex).
        let counting: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
        for k in [
            PrivateKey::from_bytes([0x42; 32]),
            PrivateKey::from_bytes(counting),
        ] {
            let hex = k.expose_secret_hex();
            let b64 = STANDARD.encode(k.expose_secret_bytes());
            for shown in [
                format!("{k:?}"),
                format!("{k:#?}"),
                format!("{:?}", Some(&k)),
            ] {
                // No 4-character window of either text form, anywhere in the output.
                for text in [&hex, &b64] {
                    for i in 0..=text.len() - 4 {
                        let window = &text[i..i + 4];
                        assert!(!shown.contains(window), "{shown:?} shows {window:?}");
                    }
                }
                assert!(shown.contains("redacted"), "{shown}");
            }
        }
    }

    #[test]
    fn zeroize_clears_the_key() {
        // Drop calls exactly this method; observing memory after drop would need unsafe.
        let mut k = PrivateKey::from_bytes([0x42; 32]);
        assert!(!k.is_zero());
        k.zeroize();
        assert_eq!(k.expose_secret_bytes(), &[0; 32]);
        assert!(k.is_zero());
    }

    #[test]
    fn public_key_matches_wg_pubkey() {
        // From `wg genkey | tee priv | wg pubkey`.
        let private =
            PrivateKey::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
        assert_eq!(
            private.public().to_base64(),
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
        );
    }
}
