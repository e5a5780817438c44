//! Sizes and durations with units, as every `levee` command takes and prints them.
//!
//! - Sizes: a plain number of bytes (`256`) or a number with `B`, `k`/`kB` (1000), `KiB`
//!   (1024), `M`/`MB`, `MiB`, `G`/`GB`, `GiB` (units case-insensitive, fractions allowed when the
//!   result is a whole number of bytes: `1.5KiB`).
//! - Durations: a number with `us`, `ms`, `s`, `m`/`min` or `h` (`30s`, `500ms`, `2m`). A bare
//!   number is seconds for [`parse_duration`] (the `levee bench` flags) and milliseconds for
//!   [`parse_millis`] (the flags named `…-ms`, so that the numbers scripts pass today keep their
//!   meaning).
//!
//! Config files take the same forms (`max_frame = "16MiB"`, `heartbeat_ms = "10s"`) or plain
//! numbers, through [`de_size`], [`de_size_usize`] and [`de_millis_u32`].
//!
//! Invariant: [`format_size`] and [`format_millis`] print values that the parsers read back to
//! the same number, so `levee queue inspect` output can be pasted into flags.

use std::time::Duration;

/// Splits `"12.5KiB"` into `("12.5", "KiB")` (unit trimmed).
fn split_number(t: &str) -> (&str, &str) {
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    (num, unit.trim())
}

/// Parses a byte size: a plain number, or a number with `B`, `k`/`kB` (1000), `KiB` (1024), `MB`,
/// `MiB`, `GB`, `GiB` (case-insensitive units, fractions allowed: `1.5KiB`).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let (num, unit) = split_number(s.trim());
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        u => return Err(format!("invalid size unit {u:?} in {s:?}")),
    };
    // Whole numbers exactly (no float rounding of large byte counts), fractions through f64.
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| format!("size {s:?} is too large"));
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 256, 1KiB, 64MiB"))?;
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 || v.fract() != 0.0 {
        return Err(format!("invalid size {s:?}: not a whole number of bytes"));
    }
    Ok(v as u64)
}

/// [`parse_size`] for a `usize` value.
pub(crate) fn parse_size_usize(s: &str) -> Result<usize, String> {
    let v = parse_size(s)?;
    usize::try_from(v).map_err(|_| format!("size {s:?} is too large"))
}

/// Parses a duration: `10s`, `500ms`, `2m`, `1h`, `250us`, or a bare number of seconds (`1.5`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = split_number(s.trim());
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 10s, 500ms, 2m"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("invalid duration unit {u:?} in {s:?}")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {s:?}"))
}

/// Parses a duration in whole milliseconds: a bare number is milliseconds (`30000`), a number
/// with a unit is that unit (`30s`, `1.5s`, `2m`, `500ms`).
pub(crate) fn parse_millis(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = split_number(t);
    if unit.is_empty() {
        return num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30000 (ms), 30s, 2m"));
    }
    let d = parse_duration(t)?;
    let ms = d.as_secs_f64() * 1e3;
    if ms.fract() != 0.0 || ms > u64::MAX as f64 {
        return Err(format!(
            "invalid duration {s:?}: not a whole number of milliseconds"
        ));
    }
    Ok(ms as u64)
}

/// [`parse_millis`] for a `u32` value.
pub(crate) fn parse_millis_u32(s: &str) -> Result<u32, String> {
    let v = parse_millis(s)?;
    u32::try_from(v).map_err(|_| format!("duration {s:?} is too long"))
}

/// A byte count in the largest binary unit that divides it exactly: `64MiB`, `1536` → `1536`
/// only when no unit divides it (`1.5KiB` is printed as `1536`).
pub(crate) fn format_size(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (m, u) in UNITS {
        if n >= m && n.is_multiple_of(m) {
            return format!("{}{u}", n / m);
        }
    }
    n.to_string()
}

/// Milliseconds in the largest unit that divides them exactly: `30s`, `2m`, `1h`, `250ms`.
pub(crate) fn format_millis(ms: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    for (m, u) in UNITS {
        if ms >= m && ms.is_multiple_of(m) {
            return format!("{}{u}", ms / m);
        }
    }
    format!("{ms}ms")
}

/// A number or a string with a unit, as a config file may give a size or a duration.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

fn de_with<'de, D, T>(d: D, parse: fn(&str) -> Result<T, String>) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::Deserialize;
    match NumberOrText::deserialize(d)? {
        NumberOrText::Number(n) => T::try_from(n)
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{n} is out of range"))),
        NumberOrText::Text(t) => parse(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Config-file form of a size: `16777216` or `"16MiB"` (use with `#[serde(default)]`).
pub(crate) fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_with(d, parse_size)
}

/// [`de_size`] for a `usize`.
pub(crate) fn de_size_usize<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    de_with(d, parse_size_usize)
}

/// Config-file form of a duration in milliseconds: `1500` or `"1.5s"`.
pub(crate) fn de_millis_u32<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u32>, D::Error> {
    de_with(d, parse_millis_u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_take_bare_numbers_as_ms_and_units_as_given() {
        assert_eq!(parse_millis("30000"), Ok(30_000));
        assert_eq!(parse_millis("30s"), Ok(30_000));
        assert_eq!(parse_millis("1.5s"), Ok(1_500));
        assert_eq!(parse_millis("2m"), Ok(120_000));
        assert_eq!(parse_millis("500ms"), Ok(500));
        assert_eq!(parse_millis("1h"), Ok(3_600_000));
        assert!(parse_millis("1us").is_err(), "not whole milliseconds");
        assert!(parse_millis("soon").is_err());
        assert!(parse_millis("-5").is_err());
        assert_eq!(parse_millis_u32("10s"), Ok(10_000));
        assert!(parse_millis_u32("100000h").is_err());
    }

    #[test]
    fn formatted_values_parse_back_to_the_same_number() {
        for n in [
            0,
            1,
            1000,
            1024,
            1536,
            64 << 20,
            3 << 30,
            100_000,
            (1 << 53) + 1,
            u64::MAX,
        ] {
            assert_eq!(parse_size(&format_size(n)), Ok(n), "{}", format_size(n));
        }
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1536), "1536");
        for ms in [
            0, 1, 250, 1_000, 30_000, 90_000, 120_000, 3_600_000, 86_400_000,
        ] {
            assert_eq!(
                parse_millis(&format_millis(ms)),
                Ok(ms),
                "{}",
                format_millis(ms)
            );
        }
        assert_eq!(format_millis(30_000), "30s");
        assert_eq!(format_millis(90_000), "90s");
        assert_eq!(format_millis(250), "250ms");
    }
}
