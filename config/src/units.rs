//! Byte sizes and durations as written in the config file: parsing, formatting, serde glue.
//!
//! Used by the schema in the crate root (through `deserialize_with` / `serialize_with`), and
//! public so binaries can accept the same spellings on the command line (`--spin 20us`).
//!
//! # Sizes
//!
//! A size is either a TOML integer (a byte count, `>= 0`) or a string: a whole decimal number,
//! optional spaces, and an optional unit. Units are case-insensitive and **always binary**:
//!
//! | unit | bytes |
//! |---|---|
//! | (none), `B` | 1 |
//! | `K`, `KiB` | 1024 |
//! | `M`, `MiB` | 1024² |
//! | `G`, `GiB` | 1024³ |
//! | `T`, `TiB` | 1024⁴ |
//!
//! `KB`, `MB`, `GB` and `TB` are **rejected** as ambiguous (Redis reads `1mb` as 1048576 and
//! `1m` as 1000000, other tools the other way round); the error says which spelling to use.
//! Fractions (`1.5MiB`) are rejected too: write `1536KiB`. A value that does not fit in a `u64`
//! is an error, never a wrap-around.
//!
//! # Durations
//!
//! A duration is a string: a decimal number (a fraction is allowed, `1.5s`), optional spaces,
//! and a **required** unit: `ns`, `us` (or `µs`), `ms`, `s`, `m` (or `min`), `h`. Units are
//! case-sensitive. `"0s"` is zero. A bare TOML integer is rejected: `spin = 20` could mean
//! 20 µs or 20 ms, and guessing wrong by a factor of 1000 is the bug this rule exists to avoid.
//! The value must be a whole number of nanoseconds and fit in a [`Duration`].
//!
//! # Example
//!
//! ```
//! use config::units::{format_duration, format_size, parse_duration, parse_size};
//! use std::time::Duration;
//!
//! assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
//! assert_eq!(parse_size("16k").unwrap(), 16 << 10);
//! assert!(parse_size("4MB").is_err());
//! assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
//! assert_eq!(format_size(4 << 20), "4MiB");
//! assert_eq!(format_duration(Duration::from_secs(300)), "5m");
//! ```

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;

/// Hint appended to size errors.
const SIZE_HINT: &str = "expected a byte count or e.g. \"64KiB\", \"4MiB\"; units B, KiB, MiB, GiB, TiB (K, M, G, T also binary)";
/// Hint appended to duration errors.
const DURATION_HINT: &str = "expected e.g. \"30s\", \"250ms\"; units ns, us, ms, s, m, h";

/// A size or duration string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitError {
    /// `"size"` or `"duration"`.
    what: &'static str,
    /// The text as written (or the integer, printed).
    input: String,
    /// Why it was rejected, including what would be accepted.
    reason: String,
}

impl UnitError {
    fn size(input: &str, reason: impl Into<String>) -> Self {
        Self { what: "size", input: format!("{input:?}"), reason: reason.into() }
    }

    fn duration(input: &str, reason: impl Into<String>) -> Self {
        Self { what: "duration", input: format!("{input:?}"), reason: reason.into() }
    }
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {} ({})", self.what, self.input, self.reason)
    }
}

impl std::error::Error for UnitError {}

/// Splits `s` (already trimmed) into the leading number text and the unit after optional spaces.
fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, rest) = s.split_at(end);
    (num, rest.trim_start())
}

/// Parses a size: see the [module docs](self) for the accepted spellings.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let s = text.trim();
    let (num, unit) = split_number(s);
    if num.is_empty() {
        return Err(UnitError::size(text, SIZE_HINT));
    }
    if num.contains('.') {
        return Err(UnitError::size(
            text,
            "sizes are whole numbers: write e.g. \"1536KiB\", not \"1.5MiB\"",
        ));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" | "mb" | "gb" | "tb" => {
            let bin = format!("{}iB", &unit[..1].to_ascii_uppercase());
            return Err(UnitError::size(
                text,
                format!("ambiguous unit \"{unit}\": write \"{bin}\" (binary) or a byte count"),
            ));
        }
        _ => {
            return Err(UnitError::size(text, format!("unknown unit \"{unit}\"; {SIZE_HINT}")));
        }
    };
    let too_large =
        || UnitError::size(text, format!("too large; the maximum is {} bytes", u64::MAX));
    let n: u64 = num.parse().map_err(|_| too_large())?;
    n.checked_mul(multiplier).ok_or_else(too_large)
}

/// Nanoseconds per unit, for the units [`parse_duration`] accepts.
fn duration_unit_ns(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Parses a duration: see the [module docs](self) for the accepted spellings.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let s = text.trim();
    let (num, unit) = split_number(s);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || frac.contains('.') || (num.contains('.') && frac.is_empty()) {
        return Err(UnitError::duration(text, DURATION_HINT));
    }
    if unit.is_empty() {
        return Err(UnitError::duration(text, format!("missing unit; {DURATION_HINT}")));
    }
    let Some(unit_ns) = duration_unit_ns(unit) else {
        return Err(UnitError::duration(text, format!("unknown unit \"{unit}\"; {DURATION_HINT}")));
    };
    let too_large = || UnitError::duration(text, "too large");
    if frac.len() > 18 {
        return Err(UnitError::duration(text, "too many decimal places"));
    }
    // value = (int + frac / 10^k) * unit_ns = (int * 10^k + frac) * unit_ns / 10^k
    let scale = 10u128.pow(frac.len() as u32);
    let int: u128 = int.parse().map_err(|_| too_large())?;
    let frac_n: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| too_large())? };
    let scaled = int
        .checked_mul(scale)
        .and_then(|v| v.checked_add(frac_n))
        .and_then(|v| v.checked_mul(unit_ns))
        .ok_or_else(too_large)?;
    if scaled % scale != 0 {
        return Err(UnitError::duration(text, "finer than 1ns"));
    }
    let ns = scaled / scale;
    let secs = u64::try_from(ns / 1_000_000_000).map_err(|_| too_large())?;
    // The remainder is < 10^9, so it fits in a u32.
    let nanos = (ns % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Formats a byte count with the largest binary unit that divides it exactly (`"4MiB"`,
/// `"1000B"`). [`parse_size`] reads the result back to the same value.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    if bytes != 0 {
        for (shift, unit) in UNITS {
            if bytes.trailing_zeros() >= shift {
                return format!("{}{unit}", bytes >> shift);
            }
        }
    }
    format!("{bytes}B")
}

/// Formats a duration with the largest unit that divides it exactly (`"5m"`, `"250ms"`,
/// `"0s"`). [`parse_duration`] reads the result back to the same value.
pub fn format_duration(d: Duration) -> String {
    const UNITS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_owned();
    }
    for (per, unit) in UNITS {
        if ns.is_multiple_of(per) {
            return format!("{}{unit}", ns / per);
        }
    }
    unreachable!("every duration is a whole number of nanoseconds")
}

/// serde `deserialize_with` for a size field (`u64` bytes).
pub fn deserialize_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct SizeVisitor;
    impl Visitor<'_> for SizeVisitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size: a byte count or a string like \"64KiB\"")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("invalid size {v} (must not be negative)")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_size(v).map_err(E::custom)
        }
    }
    d.deserialize_any(SizeVisitor)
}

/// serde `serialize_with` for a size field: a string like `"4MiB"` when a unit divides it,
/// else the integer.
pub fn serialize_size<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    if *v != 0 && v.trailing_zeros() >= 10 {
        s.serialize_str(&format_size(*v))
    } else {
        s.serialize_u64(*v)
    }
}

/// serde `deserialize_with` for a [`Duration`] field.
pub fn deserialize_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string like \"30s\" or \"250ms\"")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "invalid duration {v} (a bare number has no unit: write e.g. \"{v}s\" or \"{v}ms\")"
            )))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "invalid duration {v} (a bare number has no unit: write e.g. \"{v}s\" or \"{v}ms\")"
            )))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }
    d.deserialize_any(DurationVisitor)
}

/// serde `serialize_with` for a [`Duration`] field: [`format_duration`].
pub fn serialize_duration<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let ok = [
            ("0", 0),
            ("512", 512),
            ("512B", 512),
            ("512 b", 512),
            ("  64KiB ", 64 << 10),
            ("16k", 16 << 10),
            ("16K", 16 << 10),
            ("4MiB", 4 << 20),
            ("4mib", 4 << 20),
            ("4M", 4 << 20),
            ("1GiB", 1 << 30),
            ("1g", 1 << 30),
            ("2TiB", 2 << 40),
            ("16777215TiB", 16_777_215 << 40),
            ("18446744073709551615", u64::MAX),
        ];
        for (text, want) in ok {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_sizes() {
        for text in [
            "",
            "KiB",
            "-1",
            "1.5MiB",
            "4MB",
            "4kb",
            "4 parsecs",
            "4MiBs",
            "0x10",
            "99999999999GiB",
            "16777216TiB",
            "18446744073709551616",
            "99999999999999999999999999",
        ] {
            assert!(parse_size(text).is_err(), "{text} parsed as {:?}", parse_size(text));
        }
    }

    #[test]
    fn size_errors_say_why() {
        let e = parse_size("99999999999GiB").unwrap_err().to_string();
        assert!(e.starts_with("invalid size \"99999999999GiB\" (too large"), "{e}");
        let e = parse_size("4MB").unwrap_err().to_string();
        assert!(e.contains("ambiguous unit \"MB\": write \"MiB\""), "{e}");
        let e = parse_size("1.5MiB").unwrap_err().to_string();
        assert!(e.contains("1536KiB"), "{e}");
    }

    #[test]
    fn durations() {
        let ok = [
            ("0s", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("250ms", Duration::from_millis(250)),
            ("20us", Duration::from_micros(20)),
            ("20µs", Duration::from_micros(20)),
            ("7ns", Duration::from_nanos(7)),
            ("5m", Duration::from_secs(300)),
            ("5min", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            (" 1.5s ", Duration::from_millis(1500)),
            ("1.5 s", Duration::from_millis(1500)),
            ("0.25ms", Duration::from_micros(250)),
            ("1.000000001s", Duration::new(1, 1)),
            ("18446744073709551615s", Duration::new(u64::MAX, 0)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_durations() {
        for text in [
            "",
            "s",
            "30",
            "30 parsecs",
            "30S",
            "30sec",
            "-1s",
            "1.s",
            ".5s",
            "1..5s",
            "1.5.5s",
            "1.5ns",
            "1s30ms",
            "18446744073709551616s",
            "99999999999999999999999h",
            "999999999999999999999999999999999999999999h",
            "1.0000000000000000001s",
        ] {
            assert!(parse_duration(text).is_err(), "{text} parsed as {:?}", parse_duration(text));
        }
    }

    #[test]
    fn duration_errors_say_why() {
        let e = parse_duration("30 parsecs").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid duration \"30 parsecs\" (unknown unit \"parsecs\"; expected e.g. \"30s\", \
             \"250ms\"; units ns, us, ms, s, m, h)"
        );
        let e = parse_duration("30").unwrap_err().to_string();
        assert!(e.contains("missing unit"), "{e}");
        let e = parse_duration("6000000000000000h").unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(1024), "1KiB");
        assert_eq!(format_size(1536), "1536B");
        assert_eq!(format_size(3 << 19), "1536KiB");
        assert_eq!(format_size(4 << 20), "4MiB");
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(1 << 50), "1024TiB");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_micros(20)), "20us");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::new(1, 1)), "1000000001ns");
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn size_roundtrip(v: u64) {
                prop_assert_eq!(parse_size(&format_size(v)), Ok(v));
            }

            #[test]
            fn size_with_unit(n in 0u64..=u64::MAX >> 20, unit in prop::sample::select(vec![
                ("", 0u32), ("B", 0), ("K", 10), ("KiB", 10), ("M", 20), ("mib", 20),
            ])) {
                prop_assert_eq!(parse_size(&format!("{n}{}", unit.0)), Ok(n << unit.1));
            }

            #[test]
            fn size_never_wraps(n: u64, shift in 0u32..=40) {
                let unit = match shift { 0..=9 => "B", 10..=19 => "KiB", 20..=29 => "MiB", 30..=39 => "GiB", _ => "TiB" };
                let mul = match unit { "B" => 1u128, "KiB" => 1 << 10, "MiB" => 1 << 20, "GiB" => 1 << 30, _ => 1 << 40 };
                let want = u64::try_from(u128::from(n) * mul).ok();
                prop_assert_eq!(parse_size(&format!("{n}{unit}")).ok(), want);
            }

            #[test]
            fn duration_roundtrip(secs: u64, nanos in 0u32..1_000_000_000) {
                let d = Duration::new(secs, nanos);
                prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
            }

            #[test]
            fn parsers_never_panic(s in "\\PC{0,24}") {
                let _ = parse_size(&s);
                let _ = parse_duration(&s);
            }
        }
    }
}
