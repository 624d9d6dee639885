//! Go's `time.Time` as it travels in JSON.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A Go `time.Time` as it travels in JSON: RFC 3339 with optional fractional seconds,
/// always held in UTC. The default is Go's zero time, `0001-01-01T00:00:00Z`, which Go
/// uses for "unset" (e.g. `Node.KeyExpiry` of a node that never expires).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoTime {
    /// Seconds since the Unix epoch.
    secs: i64,
    nanos: u32,
}

/// Unix seconds of `0001-01-01T00:00:00Z`.
const GO_ZERO_UNIX: i64 = -62_135_596_800;

impl Default for GoTime {
    fn default() -> Self {
        GoTime::ZERO
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeParseError(&'static str);

impl fmt::Display for TimeParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad RFC 3339 time: {}", self.0)
    }
}

impl std::error::Error for TimeParseError {}

impl GoTime {
    pub const ZERO: GoTime = GoTime {
        secs: GO_ZERO_UNIX,
        nanos: 0,
    };

    /// `time.Unix(secs, nanos)`; nanos beyond a second carry into secs.
    pub fn from_unix(secs: i64, nanos: u32) -> GoTime {
        GoTime {
            secs: secs.saturating_add((nanos / 1_000_000_000) as i64),
            nanos: nanos % 1_000_000_000,
        }
    }

    pub fn unix_secs(&self) -> i64 {
        self.secs
    }

    pub fn subsec_nanos(&self) -> u32 {
        self.nanos
    }

    pub fn is_zero(&self) -> bool {
        *self == GoTime::ZERO
    }

    pub fn now() -> GoTime {
        GoTime::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(t: SystemTime) -> GoTime {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => GoTime::from_unix(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                // Before the epoch: floor to whole seconds, keep nanos positive.
                let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
                if n == 0 {
                    GoTime::from_unix(-s, 0)
                } else {
                    GoTime::from_unix(-s - 1, 1_000_000_000 - n)
                }
            }
        }
    }

    /// None for times a `SystemTime` cannot hold (far before the epoch on some systems).
    pub fn to_system_time(&self) -> Option<SystemTime> {
        if self.secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::new(self.secs as u64, self.nanos))
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(self.secs.unsigned_abs()))?
                .checked_add(Duration::from_nanos(self.nanos as u64))
        }
    }

    /// This time plus `d` (saturating).
    pub fn add(&self, d: Duration) -> GoTime {
        let total = self.nanos as u64 + d.subsec_nanos() as u64;
        GoTime {
            secs: self
                .secs
                .saturating_add(d.as_secs() as i64)
                .saturating_add((total / 1_000_000_000) as i64),
            nanos: (total % 1_000_000_000) as u32,
        }
    }

    /// Parses RFC 3339 (`2026-01-25T18:31:27Z`, `…27.5505+02:00`), as Go's `time.Time`
    /// `UnmarshalJSON` does. Offsets are folded into UTC.
    pub fn parse_rfc3339(s: &str) -> Result<GoTime, TimeParseError> {
        let b = s.as_bytes();
        if b.len() < 20 {
            return Err(TimeParseError("too short"));
        }
        let num = |range: std::ops::Range<usize>| -> Result<i64, TimeParseError> {
            let part = &b[range];
            if !part.iter().all(u8::is_ascii_digit) {
                return Err(TimeParseError("expected digits"));
            }
            Ok(part
                .iter()
                .fold(0i64, |acc, d| acc * 10 + (d - b'0') as i64))
        };
        let sep = |i: usize, c: &[u8]| -> Result<(), TimeParseError> {
            if c.contains(&b[i]) {
                Ok(())
            } else {
                Err(TimeParseError("bad separator"))
            }
        };
        let year = num(0..4)?;
        sep(4, b"-")?;
        let month = num(5..7)?;
        sep(7, b"-")?;
        let day = num(8..10)?;
        sep(10, b"Tt")?;
        let hour = num(11..13)?;
        sep(13, b":")?;
        let minute = num(14..16)?;
        sep(16, b":")?;
        let second = num(17..19)?;
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return Err(TimeParseError("date out of range"));
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(TimeParseError("time of day out of range"));
        }
        let mut i = 19;
        let mut nanos: u32 = 0;
        if b[i] == b'.' || b[i] == b',' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 9 {
                    nanos = nanos * 10 + (b[i] - b'0') as u32;
                }
                i += 1;
            }
            let digits = i - start;
            if digits == 0 {
                return Err(TimeParseError("empty fraction"));
            }
            for _ in digits..9 {
                nanos *= 10;
            }
        }
        let offset_secs = match b.get(i) {
            Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
            Some(&c @ (b'+' | b'-')) if i + 6 == b.len() => {
                sep(i + 3, b":")?;
                let oh = num(i + 1..i + 3)?;
                let om = num(i + 4..i + 6)?;
                if oh > 23 || om > 59 {
                    return Err(TimeParseError("zone offset out of range"));
                }
                let off = oh * 3600 + om * 60;
                if c == b'-' {
                    -off
                } else {
                    off
                }
            }
            _ => return Err(TimeParseError("bad zone")),
        };
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
        Ok(GoTime { secs, nanos })
    }

    /// Formats like Go's `time.RFC3339Nano` in UTC: trailing zeros of the fraction are
    /// dropped, `Z` for the zone. None if the year is outside 0000–9999, which Go's
    /// `MarshalJSON` refuses as well.
    pub fn to_rfc3339(&self) -> Option<String> {
        let days = self.secs.div_euclid(86_400);
        let sod = self.secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        if !(0..=9999).contains(&y) {
            return None;
        }
        let mut s = format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        );
        if self.nanos != 0 {
            let frac = format!("{:09}", self.nanos);
            s.push('.');
            s.push_str(frac.trim_end_matches('0'));
        }
        s.push('Z');
        Some(s)
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl fmt::Display for GoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_rfc3339() {
            Some(s) => f.write_str(&s),
            None => write!(f, "@{}.{:09}", self.secs, self.nanos),
        }
    }
}

impl fmt::Debug for GoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for GoTime {
    type Err = TimeParseError;
    fn from_str(s: &str) -> Result<Self, TimeParseError> {
        GoTime::parse_rfc3339(s)
    }
}

impl Serialize for GoTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.to_rfc3339() {
            Some(t) => s.serialize_str(&t),
            None => Err(serde::ser::Error::custom(
                "time year outside of range [0,9999]",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for GoTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = GoTime;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<GoTime, E> {
                GoTime::parse_rfc3339(s).map_err(E::custom)
            }
            // Go leaves a time.Time zero on JSON null.
            fn visit_none<E: de::Error>(self) -> Result<GoTime, E> {
                Ok(GoTime::ZERO)
            }
            fn visit_unit<E: de::Error>(self) -> Result<GoTime, E> {
                Ok(GoTime::ZERO)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<GoTime, D::Error> {
                d.deserialize_str(self)
            }
        }
        d.deserialize_option(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_times_parse_and_format() {
        for (s, unix, nanos) in [
            ("0001-01-01T00:00:00Z", GO_ZERO_UNIX, 0),
            ("1970-01-01T00:00:00Z", 0, 0),
            ("1970-01-01T00:02:03Z", 123, 0),
            ("2025-07-29T18:31:27.550535802Z", 1753813887, 550_535_802),
            ("2024-02-29T23:59:59.1Z", 1709251199, 100_000_000),
            ("1969-12-31T23:59:59.5Z", -1, 500_000_000),
            ("9999-12-31T23:59:59Z", 253402300799, 0),
        ] {
            let t = GoTime::parse_rfc3339(s).unwrap();
            assert_eq!((t.unix_secs(), t.subsec_nanos()), (unix, nanos), "{s}");
            assert_eq!(t.to_rfc3339().unwrap(), s);
        }
        assert!(GoTime::parse_rfc3339("0001-01-01T00:00:00Z")
            .unwrap()
            .is_zero());
        assert_eq!(GoTime::default(), GoTime::ZERO);
        // Offsets fold into UTC; lower-case separators and >9 fraction digits are accepted.
        let t = GoTime::parse_rfc3339("2026-08-01T14:30:00+02:30").unwrap();
        assert_eq!(t.to_rfc3339().unwrap(), "2026-08-01T12:00:00Z");
        let t = GoTime::parse_rfc3339("2026-08-01t12:00:00.1234567891-01:00").unwrap();
        assert_eq!(t.to_rfc3339().unwrap(), "2026-08-01T13:00:00.123456789Z");
        for bad in [
            "2026-08-01T12:00:00",
            "2026-08-01 12:00:00Z",
            "2026-08-01T24:00:00Z",
            "2026-08-01T12:00:60Z",
            "2026-08-01T12:00:00.Z",
            "2026-08-01T12:00:00+2:00",
            "2026-08-01T12:00:00Zjunk",
            "2023-02-29T00:00:00Z",
            "２026-08-01T12:00:00Z",
        ] {
            assert!(GoTime::parse_rfc3339(bad).is_err(), "accepted {bad:?}");
        }
        // SystemTime conversions agree with each other.
        let now = std::time::SystemTime::now();
        assert_eq!(GoTime::from_system_time(now).to_system_time(), Some(now));
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        let g = GoTime::from_system_time(before);
        assert_eq!((g.unix_secs(), g.subsec_nanos()), (-2, 500_000_000));
        assert_eq!(g.to_system_time(), Some(before));
        assert!(
            GoTime::from_unix(1, 0).add(Duration::from_millis(1500))
                == GoTime::from_unix(2, 500_000_000)
        );
        // Go refuses to marshal years past 9999; so do we, as an error.
        assert!(serde_json::to_string(&GoTime::from_unix(253402300800, 0)).is_err());
    }
}
