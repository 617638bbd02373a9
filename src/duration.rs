//! The one duration syntax of the whole API: a positive whole number and a
//! unit, `30s`, `5m`, `24h`, `30d`, `8w`. Relative ranges (`last`),
//! conversion windows, token lifetimes and later settings all parse here,
//! so they accept and reject the same spellings.

use std::time::Duration;

/// The longest duration anything may name: past every range bound, and far
/// from where time arithmetic could overflow.
pub const MAX: Duration = Duration::from_secs(100 * 366 * 86_400);

const UNITS: &str = "s, m, h, d or w";

/// A duration of `unit`s: `s`econds, `m`inutes, `h`ours, `d`ays, `w`eeks.
/// Errors say what was expected, for a client to read.
pub fn parse(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let expected = || format!("`{raw}` is not a duration such as 30s, 5m, 24h, 30d or 8w");
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(expected)?;
    let (digits, unit) = raw.split_at(split);
    if digits.is_empty() || digits.len() > 12 {
        return Err(expected());
    }
    let n: u64 = digits.parse().map_err(|_| expected())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("`{raw}`: unknown unit `{unit}` ({UNITS})")),
    };
    let total = n
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX)
        .ok_or_else(|| format!("`{raw}` is longer than 100 years"))?;
    if total.is_zero() {
        return Err(format!("`{raw}` must be longer than zero"));
    }
    Ok(total)
}

/// [`parse`] as a `chrono` duration, for time arithmetic.
pub fn parse_chrono(raw: &str) -> Result<chrono::Duration, String> {
    let d = parse(raw)?;
    chrono::Duration::from_std(d).map_err(|_| format!("`{raw}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse(" 8w "), Ok(Duration::from_secs(8 * 604_800)));
    }

    #[test]
    fn bad_spellings_are_refused_with_a_reason() {
        for bad in [
            "", "10", "h", "0s", "-5m", "+5m", "5 m", "5y", "1.5h", "5mm", "٣d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn huge_values_are_refused_not_overflowed() {
        assert!(parse("5218w").is_ok());
        assert!(parse("5300w").is_err());
        assert!(parse("99999999999999999999d").is_err());
        assert!(parse("18446744073709551615s").is_err());
        assert!(parse_chrono("36600d").is_ok());
    }
}
