//! The one duration grammar of Skein: every flag, environment variable and config-file
//! value that is a time (`--join-timeout`, `service create --timeout`, `--health-interval`,
//! `--restart-delay`, ...) goes through [`parse_duration`].
//!
//! Like Docker's (Go's `time.ParseDuration`), a unit is required: `10s`, `500ms`, `2m`,
//! `1h`, combinations such as `1m30s` or `1h30m`, and decimals such as `1.5s`. A bare
//! number is refused with a suggestion (`10` → "write 10s"), since whether it meant
//! seconds or milliseconds is a guess. Differences from Go, each deliberate:
//! - no `us`/`µs`/`ns`: every duration here is a timeout or interval the local API carries
//!   in whole milliseconds (`*_ms` fields), so a finer value would be silently rounded;
//!   refusing it says so instead. For the same reason a value must be a whole number of
//!   milliseconds (`1.5s` is fine, `0.5ms` is not);
//! - units go from largest to smallest, each at most once (`1m30s`, not `30s1m` or
//!   `1s1s`), which catches typos;
//! - no sign: a negative duration is refused, and so is a bare `0` (write `0s`).
//!
//! The longest accepted duration is Go's (about 292 years), so any value fits an `Instant`
//! deadline and a millisecond count.

use std::time::Duration;

/// The examples every error ends with.
const FORMS: &str = "like 10s, 500ms or 1m30s";

/// The longest duration accepted, in milliseconds: Go's `time.Duration` maximum
/// (`i64::MAX` nanoseconds, about 292 years).
const MAX_MILLIS: u128 = i64::MAX as u128 / 1_000_000;

/// Why a duration is refused when it is longer than [`MAX_MILLIS`].
const TOO_LONG: &str = "too long: the longest duration is about 292 years (2562047h)";

/// The units, smallest first (so that `Ord` compares their sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Unit {
    Millisecond,
    Second,
    Minute,
    Hour,
}

impl Unit {
    fn parse(unit: &str) -> Result<Unit, String> {
        match unit {
            "h" => Ok(Unit::Hour),
            "m" => Ok(Unit::Minute),
            "s" => Ok(Unit::Second),
            "ms" => Ok(Unit::Millisecond),
            "us" | "µs" | "μs" | "ns" => Err(format!(
                "`{unit}` is finer than Skein's durations, which are whole milliseconds; use ms, s, m or h, {FORMS}"
            )),
            _ => Err(format!("unknown unit `{unit}`; use ms, s, m or h, {FORMS}")),
        }
    }

    const fn millis(self) -> u128 {
        match self {
            Unit::Millisecond => 1,
            Unit::Second => 1_000,
            Unit::Minute => 60_000,
            Unit::Hour => 3_600_000,
        }
    }
}

/// Parses a duration such as `10s`, `500ms`, `2m`, `1h`, `1m30s` or `1.5s` (see the
/// [module docs](self) for the grammar). Zero (`0s`) is accepted; where zero makes no
/// sense use [`parse_nonzero_duration`]. The error is one sentence saying what is wrong
/// and how to write it, for clap or the config file to prefix with the value.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("an empty duration; write one {FORMS}"));
    }
    if text.starts_with('-') {
        return Err(format!("a duration cannot be negative; write one {FORMS}"));
    }
    if text.contains(char::is_whitespace) {
        return Err(format!("a duration has no spaces; write one {FORMS}"));
    }
    let too_long = || TOO_LONG.to_owned();
    let mut rest = text;
    let mut total: u128 = 0;
    let mut previous: Option<Unit> = None;
    while !rest.is_empty() {
        let (whole, after) = split_digits(rest);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => {
                let (fraction, after) = split_digits(after);
                (Some(fraction), after)
            }
            None => (None, after),
        };
        if whole.is_empty() || fraction == Some("") {
            return Err(format!(
                "not a duration; write a number before each unit, {FORMS}"
            ));
        }
        let unit_len = after
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(if after.is_empty() {
                format!("a number without a unit; write {text}s for seconds (units: ms, s, m, h)")
            } else {
                format!("not a duration; write a number and a unit, {FORMS}")
            });
        }
        let unit = Unit::parse(unit)?;
        if previous.is_some_and(|previous| unit >= previous) {
            return Err(
                "units must go from largest to smallest, each once, like 1h30m or 1m30s".to_owned(),
            );
        }
        previous = Some(unit);
        total = total
            .checked_add(segment_millis(whole, fraction, unit)?)
            .filter(|&total| total <= MAX_MILLIS)
            .ok_or_else(too_long)?;
        rest = after;
    }
    let millis = u64::try_from(total).map_err(|_| too_long())?;
    Ok(Duration::from_millis(millis))
}

/// [`parse_duration`], refusing zero: for times to wait, where zero would mean "never"
/// or a busy loop (`--join-timeout`).
pub(crate) fn parse_nonzero_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("must be longer than zero, {FORMS}"));
    }
    Ok(duration)
}

/// The leading ASCII digits of `text`, and the rest.
fn split_digits(text: &str) -> (&str, &str) {
    text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    )
}

/// `whole.fraction` units in milliseconds; an error if that is too long or not a whole
/// number of milliseconds.
fn segment_millis(whole: &str, fraction: Option<&str>, unit: Unit) -> Result<u128, String> {
    let too_long = || TOO_LONG.to_owned();
    let whole: u128 = whole.parse().map_err(|_| too_long())?;
    let mut millis = whole.checked_mul(unit.millis()).ok_or_else(too_long)?;
    // Trailing zeros say nothing (`1.50s` is `1.5s`). More than 20 significant digits
    // cannot be a whole number of milliseconds of any unit here, and 20 keep the
    // arithmetic within u128.
    let fraction = fraction.unwrap_or("").trim_end_matches('0');
    if fraction.is_empty() {
        return Ok(millis);
    }
    let finer = || "finer than a millisecond; Skein's durations are whole milliseconds".to_owned();
    if fraction.len() > 20 {
        return Err(finer());
    }
    let numerator = fraction.parse::<u128>().map_err(|_| finer())? * unit.millis();
    let denominator = 10u128.pow(fraction.len() as u32);
    if !numerator.is_multiple_of(denominator) {
        return Err(finer());
    }
    millis = millis
        .checked_add(numerator / denominator)
        .ok_or_else(too_long)?;
    Ok(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Result<Duration, String> {
        Ok(Duration::from_millis(millis))
    }

    #[test]
    fn units_and_combinations() {
        assert_eq!(parse_duration("10s"), ms(10_000));
        assert_eq!(parse_duration("500ms"), ms(500));
        assert_eq!(parse_duration("2m"), ms(120_000));
        assert_eq!(parse_duration("1h"), ms(3_600_000));
        assert_eq!(parse_duration("1m30s"), ms(90_000));
        assert_eq!(parse_duration("1h30m"), ms(5_400_000));
        assert_eq!(parse_duration("2h3m4s5ms"), ms(7_384_005));
        assert_eq!(parse_duration("1s500ms"), ms(1_500));
        assert_eq!(
            parse_duration(" 10s "),
            ms(10_000),
            "outer blanks are ignored"
        );
        assert_eq!(parse_duration("0s"), ms(0));
        assert_eq!(parse_duration("007s"), ms(7_000));
    }

    #[test]
    fn decimals_down_to_a_millisecond() {
        assert_eq!(parse_duration("1.5s"), ms(1_500));
        assert_eq!(parse_duration("0.25m"), ms(15_000));
        assert_eq!(parse_duration("1.5h30m"), ms(7_200_000));
        assert_eq!(parse_duration("0.001s"), ms(1));
        assert_eq!(parse_duration("1.500000000000000000000000s"), ms(1_500));
        for finer in ["0.5ms", "1.0001s", "0.0000000000000000000001h"] {
            let error = parse_duration(finer).unwrap_err();
            assert!(
                error.contains("finer than a millisecond"),
                "{finer}: {error}"
            );
        }
    }

    #[test]
    fn a_bare_number_gets_a_suggestion() {
        assert_eq!(
            parse_duration("10").unwrap_err(),
            "a number without a unit; write 10s for seconds (units: ms, s, m, h)"
        );
        assert!(parse_duration("0").unwrap_err().contains("write 0s"));
        assert!(parse_duration("1.5").unwrap_err().contains("write 1.5s"));
        assert!(parse_duration("1m30").unwrap_err().contains("write 1m30s"));
    }

    #[test]
    fn refusals_say_why() {
        for (bad, needle) in [
            ("", "empty"),
            ("   ", "empty"),
            ("-5s", "negative"),
            ("-0s", "negative"),
            ("+5s", "not a duration"),
            ("s", "number before each unit"),
            ("1.s", "number before each unit"),
            (".5s", "number before each unit"),
            ("10d", "unknown unit `d`"),
            ("10sec", "unknown unit `sec`"),
            ("10S", "unknown unit `S`"),
            ("10us", "whole milliseconds"),
            ("10µs", "whole milliseconds"),
            ("10ns", "whole milliseconds"),
            ("10 s", "no spaces"),
            ("1m 30s", "no spaces"),
            ("10s!", "not a duration"),
            ("30s1m", "largest to smallest"),
            ("1s1s", "largest to smallest"),
            ("99999999999999999999999999999999999999999s", "too long"),
            ("9999999999999999999h", "too long"),
            ("2562048h", "too long"),
        ] {
            let error = parse_duration(bad).unwrap_err();
            assert!(error.contains(needle), "{bad:?}: {error}");
        }
    }

    #[test]
    fn the_longest_is_gos() {
        // Go's maximum, 2562047h47m16.854775807s, truncated to milliseconds.
        assert_eq!(parse_duration("2562047h47m16.854s"), ms(9_223_372_036_854));
        assert!(parse_duration("2562047h47m16.855s").is_err());
    }

    #[test]
    fn nonzero_refuses_only_zero() {
        assert_eq!(parse_nonzero_duration("1ms"), ms(1));
        for zero in ["0s", "0ms", "0h0m0s", "0.0s"] {
            let error = parse_nonzero_duration(zero).unwrap_err();
            assert!(error.contains("longer than zero"), "{zero}: {error}");
        }
        assert!(parse_nonzero_duration("10").unwrap_err().contains("10s"));
    }
}
