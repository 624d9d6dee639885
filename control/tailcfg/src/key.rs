//! Tailscale's typed keys: `<prefix><64 hex>` strings around a 32-byte key.

use ringscale_keys::{Key, KeyError};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Why a `<prefix><hex>` key string was refused. The key text itself is never echoed: it
/// may be (part of) a private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyParseError {
    WrongPrefix { expected: &'static str },
    Body(KeyError),
    WrongLength { expected: usize },
}

impl fmt::Display for KeyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyParseError::WrongPrefix { expected } => {
                write!(f, "key doesn't have the expected type prefix {expected}")
            }
            KeyParseError::Body(e) => write!(f, "bad key: {e}"),
            KeyParseError::WrongLength { expected } => {
                write!(f, "bad key: expected {expected} hex digits")
            }
        }
    }
}

impl std::error::Error for KeyParseError {}

/// Deserializes a key from a string; `null` and `""` give the zero key (Go leaves the
/// field zero on `null`; `""` is accepted rather than failing a whole netmap over it).
struct KeyStrVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: FromStr<Err = KeyParseError> + Default> Visitor<'de> for KeyStrVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a <prefix><hex> key string")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        if s.is_empty() {
            return Ok(T::default());
        }
        s.parse().map_err(E::custom)
    }
    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_str(self)
    }
}

macro_rules! prefixed_key {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub Key);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            pub const ZERO: $name = $name(Key([0; 32]));

            pub fn is_zero(&self) -> bool {
                self.0 .0 == [0; 32]
            }
        }

        impl FromStr for $name {
            type Err = KeyParseError;
            fn from_str(s: &str) -> Result<Self, KeyParseError> {
                let body = s
                    .strip_prefix($prefix)
                    .ok_or(KeyParseError::WrongPrefix { expected: $prefix })?;
                Key::from_hex(body).map($name).map_err(KeyParseError::Body)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0.to_hex())
            }
        }

        impl fmt::Debug for $name {
            // A public key: the short form is enough to tell keys apart in logs.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}…", $prefix, &self.0.to_hex()[..8])
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_option(KeyStrVisitor::<$name>(std::marker::PhantomData))
            }
        }

        impl From<Key> for $name {
            fn from(k: Key) -> Self {
                $name(k)
            }
        }
    };
}

prefixed_key!(
    /// A node (WireGuard) public key, `nodekey:<hex>`.
    NodePublic, "nodekey:"
);
prefixed_key!(
    /// A machine public key, `mkey:<hex>` (also the control server's Noise key).
    MachinePublic, "mkey:"
);
prefixed_key!(
    /// A disco public key, `discokey:<hex>`.
    DiscoPublic, "discokey:"
);
prefixed_key!(
    /// A tailnet-lock public key, `nlpub:<hex>` (ed25519, 32 bytes).
    NlPublic, "nlpub:"
);

/// The text form of a secret, `<prefix><hex>`, written straight into a formatter (for
/// `serialize` through `collect_str`), so that no extra `String` copy of it is left behind.
struct SecretText<'a> {
    prefix: &'static str,
    bytes: &'a [u8],
}

impl fmt::Display for SecretText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix)?;
        for b in self.bytes {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A Curve25519 private key as Tailscale persists it (`privkey:<hex>`): the machine key in
/// `_machinekey` and the node keys in `Persist`. Not `Copy`, zeroed on drop, no `Display`,
/// and `Debug` shows no key material (see [`ringscale_keys::PrivateKey`]); the text form
/// leaves only through `Serialize` and [`PrivateKey::expose_secret_text`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PrivateKey(pub ringscale_keys::PrivateKey);

impl PrivateKey {
    pub const PREFIX: &'static str = "privkey:";

    /// A fresh clamped private key from the OS random source.
    pub fn generate() -> PrivateKey {
        PrivateKey(ringscale_keys::PrivateKey::generate())
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    pub fn public(&self) -> Key {
        self.0.public()
    }

    pub fn node_public(&self) -> NodePublic {
        NodePublic(self.0.public())
    }

    pub fn machine_public(&self) -> MachinePublic {
        MachinePublic(self.0.public())
    }

    /// `privkey:<hex>`, the form Tailscale's state file holds. Only for writing it there.
    pub fn expose_secret_text(&self) -> String {
        self.secret_text().to_string()
    }

    fn secret_text(&self) -> SecretText<'_> {
        SecretText {
            prefix: Self::PREFIX,
            bytes: self.0.expose_secret_bytes(),
        }
    }
}

impl FromStr for PrivateKey {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<Self, KeyParseError> {
        let body = s
            .strip_prefix(Self::PREFIX)
            .ok_or(KeyParseError::WrongPrefix {
                expected: Self::PREFIX,
            })?;
        ringscale_keys::PrivateKey::from_hex(body)
            .map(PrivateKey)
            .map_err(KeyParseError::Body)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print private key material, not even a prefix of it.
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl Serialize for PrivateKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.secret_text())
    }
}

impl<'de> Deserialize<'de> for PrivateKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_option(KeyStrVisitor::<PrivateKey>(std::marker::PhantomData))
    }
}

impl From<ringscale_keys::PrivateKey> for PrivateKey {
    fn from(k: ringscale_keys::PrivateKey) -> Self {
        PrivateKey(k)
    }
}

/// A tailnet-lock private key, `nlpriv:<128 hex>` (64-byte ed25519 private key). Handled
/// like [`PrivateKey`]: not `Copy`, zeroed on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct NlPrivate([u8; 64]);

impl NlPrivate {
    pub const PREFIX: &'static str = "nlpriv:";

    pub fn from_bytes(bytes: [u8; 64]) -> NlPrivate {
        NlPrivate(bytes)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 64]
    }

    /// The raw secret, for whatever must sign with it. Never log it.
    pub fn expose_secret_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    /// `nlpriv:<hex>`, the persisted form.
    pub fn expose_secret_text(&self) -> String {
        self.secret_text().to_string()
    }

    fn secret_text(&self) -> SecretText<'_> {
        SecretText {
            prefix: Self::PREFIX,
            bytes: &self.0,
        }
    }

    /// Overwrites the key with zeros; `Drop` calls this.
    pub fn zeroize(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Drop for NlPrivate {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl Default for NlPrivate {
    fn default() -> Self {
        NlPrivate([0; 64])
    }
}

impl FromStr for NlPrivate {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<Self, KeyParseError> {
        let body = s
            .strip_prefix(Self::PREFIX)
            .ok_or(KeyParseError::WrongPrefix {
                expected: Self::PREFIX,
            })?;
        if body.len() != 128 || !body.is_char_boundary(64) {
            return Err(KeyParseError::WrongLength { expected: 128 });
        }
        // Two halves through the 32-byte hex parser keep one hex implementation.
        let lo = ringscale_keys::PrivateKey::from_hex(&body[..64]).map_err(KeyParseError::Body)?;
        let hi = ringscale_keys::PrivateKey::from_hex(&body[64..]).map_err(KeyParseError::Body)?;
        let mut out = NlPrivate::default();
        out.0[..32].copy_from_slice(lo.expose_secret_bytes());
        out.0[32..].copy_from_slice(hi.expose_secret_bytes());
        Ok(out)
    }
}

impl fmt::Debug for NlPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NlPrivate(<redacted>)")
    }
}

impl Serialize for NlPrivate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.secret_text())
    }
}

impl<'de> Deserialize<'de> for NlPrivate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_option(KeyStrVisitor::<NlPrivate>(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_accept_upper_case_null_and_empty() {
        let k: NodePublic =
            serde_json::from_str(&format!(r#""nodekey:{}""#, "AB".repeat(32))).unwrap();
        assert_eq!(k.0 .0, [0xab; 32]);
        assert_eq!(k.to_string(), format!("nodekey:{}", "ab".repeat(32)));
        assert!(serde_json::from_str::<DiscoPublic>("null")
            .unwrap()
            .is_zero());
        assert!(serde_json::from_str::<DiscoPublic>(r#""""#)
            .unwrap()
            .is_zero());
    }

    /// Every 4-character window of `secret` (its hex form): none may appear in `shown`.
    fn assert_shows_none_of(shown: &str, secret: &str) {
        for i in 0..=secret.len() - 4 {
            let window = &secret[i..i + 4];
            assert!(!shown.contains(window), "{shown:?} shows {window:?}");
        }
    }

    #[test]
    fn private_keys_never_show_in_debug_output() {
        // Fixed keys: a random one could share a 4-character window with the output
        // by chance ("edac" of "redacted" is hex).
        let bytes: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
        let k = PrivateKey(ringscale_keys::PrivateKey::from_bytes(bytes));
        let text = k.expose_secret_text();
        let hex = &text[PrivateKey::PREFIX.len()..];
        let persist_like = (Some(k.clone()), vec![k.clone()]);
        for shown in [
            format!("{k:?}"),
            format!("{k:#?}"),
            format!("{persist_like:?}"),
        ] {
            assert_shows_none_of(&shown, hex);
        }
        let mut nl_bytes = [0u8; 64];
        nl_bytes[..32].copy_from_slice(k.0.expose_secret_bytes());
        nl_bytes[32..].fill(0x42);
        let nl = NlPrivate::from_bytes(nl_bytes);
        let nl_text = nl.expose_secret_text();
        assert_shows_none_of(&format!("{nl:?}"), &nl_text[NlPrivate::PREFIX.len()..]);
        assert_eq!(k.public(), k.0.public());
    }

    #[test]
    fn private_keys_keep_their_text_forms() {
        let k = PrivateKey(ringscale_keys::PrivateKey::from_bytes([0x42; 32]));
        let text = format!("privkey:{}", "42".repeat(32));
        assert_eq!(k.expose_secret_text(), text);
        assert_eq!(serde_json::to_value(&k).unwrap(), text.as_str());
        assert_eq!(text.parse::<PrivateKey>().unwrap(), k);
        assert_eq!(
            serde_json::from_str::<PrivateKey>(&format!("{text:?}")).unwrap(),
            k
        );
        assert!(serde_json::from_str::<PrivateKey>("null")
            .unwrap()
            .is_zero());

        let nl = NlPrivate::from_bytes([0x42; 64]);
        let nl_text = format!("nlpriv:{}", "42".repeat(64));
        assert_eq!(nl.expose_secret_text(), nl_text);
        assert_eq!(serde_json::to_value(&nl).unwrap(), nl_text.as_str());
        assert_eq!(nl_text.parse::<NlPrivate>().unwrap(), nl);
        assert!("nlpriv:00".parse::<NlPrivate>().is_err());
        // 128 bytes, but a two-byte character across the halves: an error, not a panic.
        let split_char = format!("nlpriv:{}é{}", "0".repeat(63), "0".repeat(63));
        assert!(split_char.parse::<NlPrivate>().is_err());
    }

    #[test]
    fn nl_private_zeroize_clears_it() {
        // Drop calls exactly this method.
        let mut nl = NlPrivate::from_bytes([0x42; 64]);
        nl.zeroize();
        assert!(nl.is_zero());
    }
}
