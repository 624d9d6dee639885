//! Curve25519 keys as WireGuard and Tailscale write them.

#![forbid(unsafe_code)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::fmt;

/// A 32-byte Curve25519 key (public or private).
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
        let s = s.as_bytes();
        if s.len() != 64 {
            return Err(KeyError::NotHex);
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16).ok_or(KeyError::NotHex)?;
            let lo = (pair[1] as char).to_digit(16).ok_or(KeyError::NotHex)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Ok(Key(out))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The public key of this private key.
    pub fn public(&self) -> Key {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        Key(boringtun::x25519::PublicKey::from(&secret).to_bytes())
    }

    /// A fresh private key from the OS random source.
    pub fn generate_private() -> Key {
        let mut k = [0u8; 32];
        ringscale_sys::random::fill(&mut k);
        // Clamp as X25519 does, so the stored form matches what `wg genkey` writes.
        k[0] &= 248;
        k[31] &= 127;
        k[31] |= 64;
        Key(k)
    }
}

impl fmt::Debug for Key {
    // Never print key material in full: this also guards private keys in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}…)", &self.to_hex()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_hex_round_trip() {
        let k = Key::generate_private();
        assert_eq!(Key::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(Key::from_hex(&k.to_hex()).unwrap(), k);
        assert_eq!(Key::from_base64("AAAA"), Err(KeyError::WrongLength(3)));
        assert_eq!(Key::from_base64("!!"), Err(KeyError::NotBase64));
    }

    #[test]
    fn public_key_matches_wg_pubkey() {
        // From `wg genkey | tee priv | wg pubkey`.
        let private = Key::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
        assert_eq!(
            private.public().to_base64(),
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
        );
    }
}
