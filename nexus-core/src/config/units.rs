//! Durations (`250ms`, `5s`, `1m`) and sizes (`512KiB`, `10MiB`, bytes) as they
//! are written in the config file.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::fmt;
use std::str::FromStr;

/// A duration written as a string: `250ms`, `5s`, `1m`, `1h` (or several: `1m30s`).
///
/// ```
/// use nexus_core::config::Duration;
/// let d: Duration = "250ms".parse().unwrap();
/// assert_eq!(d.as_std(), std::time::Duration::from_millis(250));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// The standard-library duration.
    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }

    /// Whether this is zero.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = String;

    /// Exactly the documented forms: whole numbers with a unit of `ms`, `s`, `m` or `h`,
    /// one or more of them (`250ms`, `5s`, `1m30s`), nothing else: `5 seconds`, `1.5s`,
    /// `2d` or `30` (no unit) are errors rather than a guess.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid =
            |why: &str| format!("invalid duration {s:?} ({why}); write e.g. \"250ms\", \"5s\", \"1m\", \"1h\"");
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(invalid("empty"));
        }
        let mut total = std::time::Duration::ZERO;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(invalid("a number must come first"));
            }
            let n: u64 = rest[..digits].parse().map_err(|_| invalid("too large"))?;
            rest = &rest[digits..];
            let (part, unit_len) = if rest.starts_with("ms") {
                (Some(std::time::Duration::from_millis(n)), 2)
            } else if rest.starts_with('s') {
                (Some(std::time::Duration::from_secs(n)), 1)
            } else if rest.starts_with('m') {
                (n.checked_mul(60).map(std::time::Duration::from_secs), 1)
            } else if rest.starts_with('h') {
                (n.checked_mul(3600).map(std::time::Duration::from_secs), 1)
            } else {
                return Err(invalid("the unit must be ms, s, m or h"));
            };
            rest = &rest[unit_len..];
            total = part.and_then(|p| total.checked_add(p)).ok_or_else(|| invalid("too large"))?;
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    /// In the largest unit that is exact (`90s` is `90s`, `120s` is `2m`), so what is shown
    /// parses back to the same duration (sub-millisecond parts are not shown).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => f.write_str("0s"),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\", \"5s\" or \"1m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size in bytes, written as `512KiB`, `10MiB`, `1GiB`, `64KB` or a plain number of bytes.
///
/// ```
/// use nexus_core::config::ByteSize;
/// assert_eq!("64KiB".parse::<ByteSize>().unwrap().bytes(), 65536);
/// assert_eq!("1000".parse::<ByteSize>().unwrap().bytes(), 1000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// `n` KiB.
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }

    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("invalid size {s:?}; write e.g. \"512KiB\", \"10MiB\" or a number of bytes");
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"512KiB\", \"10MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_spec_forms() {
        for (s, ms) in [("250ms", 250), ("5s", 5000), ("1m", 60_000), ("1h", 3_600_000)] {
            assert_eq!(s.parse::<Duration>().unwrap().as_std().as_millis(), ms);
        }
        assert_eq!("1m30s".parse::<Duration>().unwrap().as_std().as_millis(), 90_000);
        // Only the documented forms: no words, spaces, fractions, other units or bare numbers.
        for bad in
            ["5 parsecs", "", "5 seconds", "1m 30s", "1.5s", "2d", "1y", "30", "s", "-1s", "99999999999999999999h"]
        {
            let err = bad.parse::<Duration>().expect_err(bad);
            assert!(err.contains("write e.g."), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_display_in_a_form_that_parses_back() {
        for (ms, shown) in
            [(0, "0s"), (250, "250ms"), (1500, "1500ms"), (90_000, "90s"), (120_000, "2m"), (7_200_000, "2h")]
        {
            let d = Duration::from_millis(ms);
            assert_eq!(d.to_string(), shown);
            assert_eq!(shown.parse::<Duration>().unwrap(), d);
        }
    }

    #[test]
    fn sizes_parse_spec_forms() {
        assert_eq!("512KiB".parse::<ByteSize>().unwrap().bytes(), 512 * 1024);
        assert_eq!("10MiB".parse::<ByteSize>().unwrap().bytes(), 10 << 20);
        assert_eq!("42".parse::<ByteSize>().unwrap().bytes(), 42);
        assert!("10 furlongs".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize::mib(10).to_string(), "10MiB");
    }
}
