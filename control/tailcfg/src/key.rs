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
    ($(#[$doc:meta])* $name:ident, $prefix:literal, secret: $secret:literal) => {
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
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if $secret {
                    // Never print private key material, not even a prefix of it.
                    write!(f, "{}(…)", stringify!($name))
                } else {
                    write!(f, "{}{}…", $prefix, &self.0.to_hex()[..8])
                }
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
    NodePublic, "nodekey:", secret: false
);
prefixed_key!(
    /// A machine public key, `mkey:<hex>` (also the control server's Noise key).
    MachinePublic, "mkey:", secret: false
);
prefixed_key!(
    /// A disco public key, `discokey:<hex>`.
    DiscoPublic, "discokey:", secret: false
);
prefixed_key!(
    /// A tailnet-lock public key, `nlpub:<hex>` (ed25519, 32 bytes).
    NlPublic, "nlpub:", secret: false
);
prefixed_key!(
    /// A Curve25519 private key as Tailscale persists it (`privkey:<hex>`): the machine
    /// key in `_machinekey` and the node keys in `Persist`.
    PrivateKey, "privkey:", secret: true
);

impl PrivateKey {
    /// A fresh clamped private key from the OS random source.
    pub fn generate() -> PrivateKey {
        PrivateKey(Key::generate_private())
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
}

/// A tailnet-lock private key, `nlpriv:<128 hex>` (64-byte ed25519 private key).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NlPrivate(pub [u8; 64]);

impl NlPrivate {
    pub const PREFIX: &'static str = "nlpriv:";
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 64]
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
        if body.len() != 128 {
            return Err(KeyParseError::WrongLength { expected: 128 });
        }
        // Two halves through the 32-byte hex parser keep one hex implementation.
        let lo = Key::from_hex(&body[..64]).map_err(KeyParseError::Body)?;
        let hi = Key::from_hex(&body[64..]).map_err(KeyParseError::Body)?;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&lo.0);
        out[32..].copy_from_slice(&hi.0);
        Ok(NlPrivate(out))
    }
}

impl fmt::Display for NlPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lo = [0u8; 32];
        let mut hi = [0u8; 32];
        lo.copy_from_slice(&self.0[..32]);
        hi.copy_from_slice(&self.0[32..]);
        write!(
            f,
            "{}{}{}",
            Self::PREFIX,
            Key(lo).to_hex(),
            Key(hi).to_hex()
        )
    }
}

impl fmt::Debug for NlPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NlPrivate(…)")
    }
}

impl Serialize for NlPrivate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
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

    #[test]
    fn private_keys_never_show_in_debug_output() {
        let k = PrivateKey(Key([0x42; 32]));
        assert!(!format!("{k:?}").contains("42"));
        let nl = NlPrivate([0x42; 64]);
        assert!(!format!("{nl:?}").contains("42"));
        assert_eq!(nl.to_string(), format!("nlpriv:{}", "42".repeat(64)));
        assert_eq!(nl.to_string().parse::<NlPrivate>().unwrap(), nl);
        assert!("nlpriv:00".parse::<NlPrivate>().is_err());
        assert_eq!(k.public(), k.0.public());
    }
}
