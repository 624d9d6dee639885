//! serde helpers for Go's `encoding/json` behaviour, shared with ringscale-control's
//! prefs (hence `pub` but hidden from the docs).

use serde::{Deserialize, Deserializer};

#[doc(hidden)]
pub fn is_false(b: &bool) -> bool {
    !*b
}

#[doc(hidden)]
pub fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

#[doc(hidden)]
pub fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

#[doc(hidden)]
pub fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

/// Go decodes JSON `null` into a slice or map as "leave it empty"; serde would refuse.
#[doc(hidden)]
pub fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A `netip.Addr` value: the zero address is `""`.
#[doc(hidden)]
pub mod addr_or_empty {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::IpAddr;

    pub fn serialize<S: Serializer>(v: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        let s = Option::<std::borrow::Cow<str>>::deserialize(d)?;
        match s.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                serde::de::Error::custom(format!(
                    "bad IP address {:?}",
                    s.chars().take(64).collect::<String>()
                ))
            }),
        }
    }
}

/// A Go `[]byte` that is written even when nil (`null`).
#[doc(hidden)]
pub mod base64_opt {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<std::borrow::Cow<str>>::deserialize(d)? {
            None => Ok(None),
            Some(s) => STANDARD
                .decode(s.as_bytes())
                .map(Some)
                .map_err(|_| serde::de::Error::custom("bytes field is not valid base64")),
        }
    }
}

/// A Go `[]byte` with omitempty: empty and nil are the same.
#[doc(hidden)]
pub mod base64_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(super::base64_opt::deserialize(d)?.unwrap_or_default())
    }
}
