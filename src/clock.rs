//! The wall clock as an input.
//!
//! The rotator plans on two clocks: tokio's monotonic clock decides (and
//! paused-time tests control it), and the wall clock catches what the
//! monotonic clock cannot see: suspend and resume, a clock stepped by NTP
//! or by hand, the `exp` of a token. The wall clock comes in through
//! [`WallClock`], so a test can step it while tokio's clock stands still.

use std::sync::Arc;
use std::time::SystemTime;

/// Reads the wall clock.
pub trait WallClock: Send + Sync + 'static {
    /// The time now, on the wall clock.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A shared wall clock: what the daemon hands to every rotator and to the
/// clock-jump watch.
pub type Wall = Arc<dyn WallClock>;

/// The system's wall clock, shared.
pub fn system() -> Wall {
    Arc::new(SystemClock)
}
