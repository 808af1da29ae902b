//! Durations as written in the config file: `"90s"`, `"10m"`, `"1h30m"`.

use std::time::Duration;

const EXAMPLES: &str = "write a whole number followed by a unit (ms, s, m, h, d), \
                        e.g. \"500ms\", \"90s\", \"10m\", \"1h\", \"1h30m\", \"2d\"";

/// Parses `"90s"`, `"10m"`, `"1h"`, `"1h30m"`, `"500ms"`, `"2d"`: one or more
/// whole numbers each followed by a unit (`ms`, `s`, `m`, `h`, `d`), summed.
/// Anything else (no unit, a fraction, a sign, spaces) is an error whose
/// message shows examples.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = |why: &str| format!("invalid duration {s:?}: {why}; {EXAMPLES}");
    if s.is_empty() {
        return Err(invalid("it is empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid("expected a number"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| invalid("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let (unit, after) = rest.split_at(unit_len);
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(invalid("a unit is missing")),
            other => return Err(invalid(&format!("unknown unit {other:?}"))),
        };
        let millis = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| invalid("it is too large"))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| invalid("it is too large"))?;
        rest = after;
    }
    Ok(total)
}

/// Formats a duration the way the config file writes it (`1h30m`, `90s`).
pub fn format_duration(d: Duration) -> String {
    let mut millis = d.as_millis();
    if millis == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if millis >= size {
            out.push_str(&format!("{}{unit}", millis / size));
            millis %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_documented_forms_parse() {
        let cases = [
            ("90s", 90),
            ("10m", 600),
            ("1h", 3600),
            ("1h30m", 5400),
            ("2d", 172_800),
            ("0s", 0),
        ];
        for (text, secs) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn malformed_durations_are_rejected_with_examples() {
        for text in [
            "", "90", "1.5h", "-1s", "1 h", " 1h", "1hour", "h", "10x", "1h30",
        ] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(&format!("{text:?}")), "{err}");
            assert!(err.contains("\"1h30m\""), "{err}");
        }
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("999999999999999d").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for text in ["1h30m", "90ms", "2d", "10m", "1m30s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
