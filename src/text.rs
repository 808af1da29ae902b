//! Small text helpers shared by every part that reports: an error with its
//! sources on one line, a server's text on one line, RFC 3339 times and
//! durations as the config writes them. What they quote is made safe to
//! show by [`crate::outside`].

use std::time::SystemTime;

pub use crate::config::format_duration as duration;

/// The error and all its sources on one line, made safe to show
/// ([`crate::outside::text`]: errors quote servers, URLs and plugins).
pub fn chain(error: &dyn std::error::Error) -> String {
    crate::outside::error_chain(error)
}

/// A server's text on one line, capped, without control characters or
/// secrets ([`crate::outside::text`]): a failure is one log line, whatever
/// the server said.
pub fn one_line(text: &str) -> String {
    crate::outside::text(text)
}

/// RFC 3339 in UTC, seconds precision (`?` for a time it cannot show).
pub fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_are_rfc3339_to_the_second() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_600);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:21Z");
        assert_eq!(duration(Duration::from_secs(5400)), "1h30m");
    }
}
