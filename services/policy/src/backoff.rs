//! Capped exponential backoff, the one rule every retry of the project follows: the first pause,
//! doubled after each further failure, never above the cap.

use std::time::Duration;

/// The pause after the `failures`-th consecutive failure (1-based): `initial` doubled
/// `failures - 1` times, at most `max`. No failure yet is no pause.
pub fn pause_after(initial: Duration, max: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(32);
    initial
        .checked_mul(1u32 << doublings.min(31))
        .map_or(max, |pause| pause.min(max))
}

/// The pauses of one retry loop.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// Counts a failure and returns the pause to take before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        pause_after(self.initial, self.max, self.failures)
    }

    /// Failures counted since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure pauses `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_never_overflow() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(200), ms(1000));
        let pauses: Vec<_> = (0..5).map(|_| backoff.failed()).collect();
        assert_eq!(pauses, [ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        backoff.reset();
        assert_eq!(backoff.failed(), ms(200));
        assert_eq!(pause_after(ms(1), Duration::MAX, u32::MAX), ms(1 << 31));
        assert_eq!(
            pause_after(
                Duration::from_secs(u64::MAX / 2),
                Duration::from_secs(300),
                3
            ),
            Duration::from_secs(300)
        );
        assert_eq!(pause_after(ms(200), ms(1000), 0), Duration::ZERO);
    }
}
