//! The refresh and retry policy, as pure functions.
//!
//! Nothing here reads a clock or does I/O: every function takes the times
//! and the random draw (`draw` in `[0, 1)`) it needs, so the policy can be
//! tested exhaustively and the rotator stays a thin adapter around it.
//!
//! # The invariant
//!
//! While a token is valid, the next attempt to replace it comes before it
//! expires, with a margin, whatever the server says: with `left` the time
//! the current token has to live, every delay this module returns is at
//! most `max(left / 2, 1 s)`. A refresh is planned strictly inside the
//! lifetime; a retry's exponential backoff is capped at a quarter of
//! `left`; and a server's `Retry-After` (429), however large, is honoured
//! only up to half of `left`. The property test at the end of this file
//! checks it over random lifetimes, attempts, draws and server answers.
//!
//! And no schedule can hammer a server: a refresh is never planned sooner
//! than [`MIN_REFRESH_INTERVAL`] after the request (or half the lifetime,
//! for a token that lives less than twice that), and no retry comes sooner
//! than [`BACKOFF_FLOOR`].

use std::time::Duration;

/// Jitter is at most this fraction of the window between the planned refresh and expiry...
pub const JITTER_FRACTION: f64 = 0.10;
/// ...and never more than this.
pub const MAX_JITTER: Duration = Duration::from_secs(60);
/// A token is refreshed at the latest this long after it was issued.
pub const MAX_REFRESH_AFTER: Duration = Duration::from_secs(24 * 3600);
/// First retry delay (before jitter).
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay while the current token is still valid.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Longest retry delay once the current token has expired (or there is none).
pub const BACKOFF_EXPIRED_MAX: Duration = Duration::from_secs(30);
/// Shortest retry delay: a floor under full jitter so a failing cluster cannot spin.
pub const BACKOFF_FLOOR: Duration = Duration::from_millis(200);
/// Longest `Retry-After` mcprom honours; a server asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// A token is never refreshed sooner than this after it was requested (the
/// config refuses `refresh_at × expiration` below it).
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(2);

fn unit(draw: f64) -> f64 {
    if draw.is_finite() {
        draw.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// How long after the request for a token was *sent* to refresh it.
///
/// `refresh_at × lifetime`, minus a jitter of up to 10 % of the rest of the
/// lifetime (at most 60 s) so that clusters issued together spread out, and
/// never more than 24 h; never sooner than [`MIN_REFRESH_INTERVAL`] (or half
/// the lifetime, if that is shorter). Measured from the send time on the local monotonic
/// clock, so a skewed server clock cannot make the token expire early: the
/// lifetime itself comes from `exp − iat`, both the server's clock.
pub fn refresh_after(lifetime: Duration, refresh_at: f64, draw: f64) -> Duration {
    let planned = lifetime.mul_f64(refresh_at.clamp(0.0, 1.0));
    let window = lifetime.saturating_sub(planned);
    let jitter = window
        .mul_f64(JITTER_FRACTION)
        .min(MAX_JITTER)
        .mul_f64(unit(draw));
    let floor = MIN_REFRESH_INTERVAL.min(lifetime / 2);
    planned
        .saturating_sub(jitter)
        .max(floor)
        .min(MAX_REFRESH_AFTER)
}

/// For a token found on disk at start-up: `Some(delay until its refresh)` when
/// it can be adopted, `None` when it should be replaced now.
///
/// A token is adopted while more than `(1 − refresh_at)` of its lifetime is
/// left, i.e. before the point at which mcprom would have refreshed it anyway.
pub fn adopt(lifetime: Duration, age: Duration, refresh_at: f64, draw: f64) -> Option<Duration> {
    if lifetime.is_zero() || age >= lifetime {
        return None;
    }
    if age.as_secs_f64() >= lifetime.as_secs_f64() * refresh_at {
        return None;
    }
    Some(refresh_after(lifetime, refresh_at, draw).saturating_sub(age))
}

/// Delay before retry number `attempt` (0 for the first retry).
///
/// Exponential from 1 s with full jitter; the cap is a quarter of the time
/// the current token has left (at least 1 s, at most 5 min), or 30 s when
/// it has expired or there is none. A `Retry-After` from the server (429)
/// is honoured up to 5 min, and while the token is valid up to half of the
/// time it has left: a server's wish never outlives the token.
pub fn backoff(
    attempt: u32,
    time_left: Option<Duration>,
    retry_after: Option<Duration>,
    draw: f64,
) -> Duration {
    let exponential = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16));
    let cap = match time_left {
        Some(left) if !left.is_zero() => (left / 4).clamp(BACKOFF_BASE, BACKOFF_MAX),
        _ => BACKOFF_EXPIRED_MAX,
    };
    let jittered = exponential.min(cap).mul_f64(unit(draw)).max(BACKOFF_FLOOR);
    let honoured = match time_left {
        Some(left) if !left.is_zero() => MAX_RETRY_AFTER.min(left / 2),
        _ => MAX_RETRY_AFTER,
    };
    match retry_after {
        Some(after) => jittered.max(after.min(honoured)),
        None => jittered,
    }
}

/// Longest wait between failed reloads of Prometheus, and the wait after
/// a failure that only an operator can fix.
pub const RELOAD_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Delay after the `failures`-th failed reload in a row (0 for the first):
/// doubling from 1 s to 256 s (within [`RELOAD_BACKOFF_MAX`]). A failure that needs an
/// operator (403: the lifecycle API is off; 401) waits the maximum at once:
/// nothing changes until someone acts. Reloads never block rotation.
pub fn reload_backoff(failures: u32, needs_operator: bool) -> Duration {
    if needs_operator {
        return RELOAD_BACKOFF_MAX;
    }
    Duration::from_secs(1u64 << failures.min(8)).min(RELOAD_BACKOFF_MAX)
}

/// Whether the server granted noticeably less than was asked for
/// (more than 1 % and more than 1 s short).
pub fn is_shortened(requested: Duration, granted: Duration) -> bool {
    let short_by = requested.saturating_sub(granted);
    short_by > Duration::from_secs(1) && short_by.as_secs_f64() > requested.as_secs_f64() * 0.01
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_retries_double_from_one_second_and_operator_failures_wait_five_minutes() {
        let waits: Vec<u64> = (0..10)
            .map(|n| reload_backoff(n, false).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 256]);
        assert_eq!(reload_backoff(u32::MAX, false), Duration::from_secs(256));
        assert_eq!(reload_backoff(0, true), RELOAD_BACKOFF_MAX);
    }

    const H: Duration = Duration::from_secs(3600);
    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn refresh_is_at_the_fraction_minus_bounded_jitter() {
        // 1 h at 0.8: planned 48 min; window 12 min; jitter ≤ min(72 s, 60 s).
        assert_eq!(refresh_after(H, 0.8, 0.0), S(48 * 60));
        assert_eq!(refresh_after(H, 0.8, 1.0), S(48 * 60 - 60));
        for i in 0..=100 {
            let d = refresh_after(H, 0.8, f64::from(i) / 100.0);
            assert!(d <= S(48 * 60) && d >= S(48 * 60 - 60), "{d:?}");
        }
        // 10 min at 0.8: window 120 s, jitter ≤ 12 s.
        assert_eq!(refresh_after(S(600), 0.8, 1.0), S(480 - 12));
    }

    #[test]
    fn jitter_never_moves_the_refresh_past_expiry_or_before_zero() {
        for lifetime in [S(1), S(10), S(600), H, 48 * H] {
            for at in [0.01, 0.5, 0.8, 0.99] {
                for draw in [0.0, 0.5, 0.999_999, f64::NAN, -3.0, 7.0] {
                    let d = refresh_after(lifetime, at, draw);
                    assert!(d < lifetime, "{lifetime:?} {at} {draw}: {d:?}");
                }
            }
        }
    }

    #[test]
    fn refresh_is_capped_at_24_hours() {
        assert_eq!(refresh_after(72 * H, 0.8, 0.0), MAX_REFRESH_AFTER);
    }

    #[test]
    fn server_shortened_lifetimes_are_scheduled_on_what_was_granted() {
        // Asked for 24 h, got 1 h: refresh after ~48 min, not after 19 h.
        let granted = H;
        assert!(is_shortened(24 * H, granted));
        assert!(refresh_after(granted, 0.8, 0.5) < H);
        assert!(!is_shortened(H, H - S(1)));
        assert!(!is_shortened(H, H + S(5)));
    }

    #[test]
    fn skewed_server_clock_does_not_change_the_schedule() {
        // The schedule uses exp − iat only; a server clock 2 h ahead issues
        // iat = now + 2 h, exp = now + 3 h, and the lifetime is still 1 h.
        let (iat_skewed, exp_skewed) = (7200 + 1_000_000u64, 10_800 + 1_000_000u64);
        let lifetime = S(exp_skewed - iat_skewed);
        assert_eq!(
            refresh_after(lifetime, 0.8, 0.0),
            refresh_after(H, 0.8, 0.0)
        );
    }

    #[test]
    fn backoff_grows_exponentially_and_is_capped_by_the_time_left() {
        // Full jitter at draw 1.0 shows the ceiling.
        assert_eq!(backoff(0, Some(H), None, 1.0), S(1));
        assert_eq!(backoff(3, Some(H), None, 1.0), S(8));
        assert_eq!(backoff(30, Some(H), None, 1.0), BACKOFF_MAX);
        // A quarter of the time left: 40 s left → ≤ 10 s.
        assert_eq!(backoff(30, Some(S(40)), None, 1.0), S(10));
        // At least 1 s even when almost nothing is left.
        assert_eq!(
            backoff(30, Some(Duration::from_millis(100)), None, 1.0),
            S(1)
        );
        // Expired: 30 s.
        assert_eq!(backoff(30, None, None, 1.0), BACKOFF_EXPIRED_MAX);
        assert_eq!(
            backoff(30, Some(Duration::ZERO), None, 1.0),
            BACKOFF_EXPIRED_MAX
        );
        for attempt in 0..40 {
            for draw in [0.0, 0.3, 1.0] {
                let d = backoff(attempt, Some(S(600)), None, draw);
                assert!(d >= BACKOFF_FLOOR && d <= S(150), "{attempt} {draw} {d:?}");
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_five_minutes() {
        assert_eq!(backoff(0, Some(H), Some(S(7)), 0.0), S(7));
        assert_eq!(backoff(0, Some(H), Some(S(7200)), 0.0), MAX_RETRY_AFTER);
        // A longer jittered backoff wins over a short Retry-After.
        assert_eq!(backoff(5, Some(H), Some(S(2)), 1.0), S(32));
    }

    #[test]
    fn retry_after_never_outlives_the_token() {
        // 119 s left, the server asks for 300 s: retried within 59.5 s.
        let d = backoff(0, Some(S(119)), Some(S(300)), 0.0);
        assert_eq!(d, Duration::from_millis(59_500));
        // Expired: the server's wish is honoured up to the usual 5 min.
        assert_eq!(backoff(0, None, Some(S(7200)), 0.0), MAX_RETRY_AFTER);
    }

    #[test]
    fn refreshes_never_come_sooner_than_the_floor() {
        // refresh_at = 1e-9 of an hour would be 3.6 µs.
        assert_eq!(refresh_after(H, 1e-9, 0.0), MIN_REFRESH_INTERVAL);
        // A 1 s token (a simulator): half its life.
        assert_eq!(refresh_after(S(1), 1e-9, 0.0), Duration::from_millis(500));
    }

    proptest::proptest! {
        /// The module's invariant: while a token is valid, the next attempt
        /// comes at most `max(left / 2, 1 s)` from now, whatever the server
        /// answers; refreshes land inside the lifetime and not before the
        /// floor.
        #[test]
        fn the_next_attempt_always_comes_before_the_token_expires(
            lifetime_ms in 1u64..=(30 * 86_400_000),
            left_ms in 1u64..=(30 * 86_400_000),
            refresh_at in 1e-12f64..0.999_999,
            attempt in 0u32..=u32::MAX,
            retry_after_ms in proptest::option::of(0u64..=u64::MAX / 4),
            draw in -1.0f64..2.0,
        ) {
            let lifetime = Duration::from_millis(lifetime_ms);
            let refresh = refresh_after(lifetime, refresh_at, draw);
            proptest::prop_assert!(refresh < lifetime);
            proptest::prop_assert!(refresh >= MIN_REFRESH_INTERVAL.min(lifetime / 2));

            let left = Duration::from_millis(left_ms);
            let retry_after = retry_after_ms.map(Duration::from_millis);
            let delay = backoff(attempt, Some(left), retry_after, draw);
            proptest::prop_assert!(delay <= (left / 2).max(BACKOFF_BASE), "{delay:?} for {left:?} left");
            proptest::prop_assert!(delay >= BACKOFF_FLOOR);
            let expired = backoff(attempt, None, retry_after, draw);
            proptest::prop_assert!(expired <= MAX_RETRY_AFTER && expired >= BACKOFF_FLOOR);
        }
    }

    #[test]
    fn adoption_only_before_the_refresh_point() {
        // 1 h token, 0.8: adopt while more than 12 min are left.
        assert!(adopt(H, S(10 * 60), 0.8, 0.0).is_some());
        assert_eq!(adopt(H, S(10 * 60), 0.8, 0.0), Some(S(38 * 60)));
        assert_eq!(adopt(H, S(48 * 60), 0.8, 0.0), None);
        assert_eq!(adopt(H, S(59 * 60), 0.8, 0.0), None);
        assert_eq!(adopt(H, 2 * H, 0.8, 0.0), None);
        assert_eq!(adopt(Duration::ZERO, Duration::ZERO, 0.8, 0.0), None);
        // Just inside the window but past the jittered refresh point: due now.
        assert_eq!(adopt(H, S(47 * 60 + 30), 0.8, 1.0), Some(Duration::ZERO));
    }
}
