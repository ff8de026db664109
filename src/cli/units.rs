//! Reading and writing quantities the way people type them: durations (`500ms`, `30s`, `2m`),
//! sizes (`256K`, `4MiB`) and the short human forms the programs print. One parser per kind of
//! quantity, used by every flag that takes one, so that all flags accept the same spellings.

use std::time::Duration;

/// Parses a duration written as a number and a unit: `500ms`, `30s`, `1.5s`, `2m`, `1h`.
///
/// A unit is required: a bare `30` is as likely to mean milliseconds as seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{text:?} has no unit; write e.g. 500ms, 30s, 2m or 1h"))?;
    let (number, unit) = text.split_at(split);
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 60 * 60 * 1000,
        _ => return Err(format!("unknown unit {unit:?}; use ms, s, m or h")),
    };
    let millis = parse_decimal(number, millis_per_unit)
        .ok_or_else(|| format!("{text:?} does not start with a number of at most 3 decimals"))?;
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A duration where a bare number means seconds (`20` = `20s`), for flags that took plain
/// seconds before units were accepted; anything with a unit goes through [`parse_duration`].
pub fn parse_seconds_or_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_duration(&format!("{trimmed}s"));
    }
    parse_duration(trimmed)
}

/// `number` (digits, optionally a point and up to three more digits) times `scale`, in whole
/// units of `scale / 1000`. `None` when it is not such a number; `Some(None)` on overflow.
fn parse_decimal(number: &str, scale: u64) -> Option<Option<u64>> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > 3 {
        return None;
    }
    if number.ends_with('.') {
        return None;
    }
    let Ok(whole) = whole.parse::<u64>() else {
        return Some(None);
    };
    let fraction_value: u64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<3}").parse().ok()?
    };
    // `scale` is per unit; the fraction is in thousandths of a unit.
    Some(
        whole
            .checked_mul(scale)
            .and_then(|w| w.checked_add(fraction_value.checked_mul(scale)? / 1000)),
    )
}

/// Parses a byte count: a whole number, optionally followed by `K`, `M` or `G` (or `KiB`,
/// `MiB`, `GiB`), all multiples of 1024; a `B` suffix alone means bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err("expected a number of bytes, optionally followed by K, M or G".into());
    }
    let multiple: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit {unit:?}; use K, M or G (or KiB, MiB, GiB), multiples of 1024"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiple))
        .ok_or_else(|| "the number is far too large".to_string())
}

/// Parses a rate: a number (decimals allowed) and a unit per second, bytes or bits, decimal or
/// binary: `50MB/s`, `400Mbit/s`, `20MiB/s`, `1.5GB/s`, `800KB/s`, `100B/s`. Returns bytes per
/// second, at least 1.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let per_second = text.strip_suffix("/s").ok_or_else(|| {
        format!("{text:?} is not a rate; write e.g. 50MB/s, 400Mbit/s or 20MiB/s")
    })?;
    let split = per_second
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{text:?} has no unit; write e.g. 50MB/s or 400Mbit/s"))?;
    let (number, unit) = per_second.split_at(split);
    let bytes_per_unit: f64 = match unit {
        "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "bit" => 1.0 / 8.0,
        "Kbit" | "kbit" => 1e3 / 8.0,
        "Mbit" => 1e6 / 8.0,
        "Gbit" => 1e9 / 8.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}; use B, KB, MB, GB, KiB, MiB, GiB, Kbit, \
                 Mbit or Gbit, then /s"
            ))
        }
    };
    let digits_ok = !number.is_empty()
        && !number.starts_with('.')
        && !number.ends_with('.')
        && number.matches('.').count() <= 1;
    let value: f64 = number
        .parse()
        .ok()
        .filter(|_| digits_ok)
        .ok_or_else(|| format!("{text:?} does not start with a number"))?;
    let bytes = value * bytes_per_unit;
    if !(1.0..=1e15).contains(&bytes) {
        return Err(format!("{text:?} is not between 1 B/s and 1 PB/s"));
    }
    Ok(bytes.round() as u64)
}

/// A rate as people read it, decimal units: `20.0 MB/s`.
pub fn human_rate(bytes_per_second: f64) -> String {
    let (value, unit) = match bytes_per_second {
        r if r >= 1e9 => (r / 1e9, "GB/s"),
        r if r >= 1e6 => (r / 1e6, "MB/s"),
        r if r >= 1e3 => (r / 1e3, "kB/s"),
        r => (r, "B/s"),
    };
    format!("{value:.1} {unit}")
}

/// Human-readable bytes, binary units: `1.50 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// A short duration for an ETA: `42s`, `3m05s`, `2h07m`.
pub fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs_f64().ceil() as u64;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 1h "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25m"), Ok(Duration::from_secs(15)));
        for bad in [
            "30",
            "",
            "s",
            ".5s",
            "1.s",
            "1.2345s",
            "1.5.2s",
            "-1s",
            "10 s",
            "3d",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse_duration("18446744073709551615h").is_err());
    }

    #[test]
    fn bare_numbers_are_seconds_where_allowed() {
        assert_eq!(parse_seconds_or_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(
            parse_seconds_or_duration("0.5"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            parse_seconds_or_duration("300ms"),
            Ok(Duration::from_millis(300))
        );
        assert!(parse_seconds_or_duration("").is_err());
        assert!(parse_seconds_or_duration("x").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("262144"), Ok(262_144));
        assert_eq!(parse_size("256K"), Ok(256 << 10));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("7B"), Ok(7));
        for bad in ["", "K", "1.5M", "4T", "-1", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50MB/s"), Ok(50_000_000));
        assert_eq!(parse_rate("400Mbit/s"), Ok(50_000_000));
        assert_eq!(parse_rate("20MiB/s"), Ok(20 << 20));
        assert_eq!(parse_rate("1.5GB/s"), Ok(1_500_000_000));
        assert_eq!(parse_rate(" 800KB/s "), Ok(800_000));
        assert_eq!(parse_rate("8bit/s"), Ok(1));
        for bad in [
            "50MB",
            "50/s",
            "MB/s",
            ".5MB/s",
            "5.MB/s",
            "1.2.3MB/s",
            "-5MB/s",
            "5 MB/s",
            "5TB/s",
            "0MB/s",
            "0.1bit/s",
            "9e99GB/s",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(human_rate(20e6), "20.0 MB/s");
        assert_eq!(human_rate(999.0), "999.0 B/s");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(Duration::from_millis(0)), "0s");
        assert_eq!(human_duration(Duration::from_millis(1200)), "2s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(human_duration(Duration::from_secs(7620)), "2h07m");
    }
}
