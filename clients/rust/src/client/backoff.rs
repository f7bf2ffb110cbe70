//! Full-jitter exponential backoff (SDK-SPEC "Connecting"): the delay before attempt
//! `n` is uniform in `[0, min(cap, base · 2^n))`, so that clients disconnected together
//! (a courier restart) do not come back together.

use std::time::Duration;

/// The backoff curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first delay. Defaults to 250 ms.
    pub base: Duration,
    /// The largest ceiling. Defaults to 30 s.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// `min(cap, base · 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1_u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay for `attempt` given `unit`, a number in `[0, 1)`.
    pub fn delay_at(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// A random delay for `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_at(attempt, fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        let backoff = Backoff::default();
        let ms = |attempt| backoff.ceiling(attempt).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(3)], [250, 500, 1000, 2000]);
        assert_eq!(ms(7), 30_000, "250 ms · 128 = 32 s is capped");
        assert_eq!(ms(40), 30_000, "no overflow on large attempts");
        assert_eq!(ms(u32::MAX), 30_000);
    }

    #[test]
    fn the_delay_is_full_jitter_below_the_ceiling() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay_at(2, 0.0), Duration::ZERO);
        assert_eq!(backoff.delay_at(2, 0.5), Duration::from_millis(500));
        for attempt in 0..12 {
            for _ in 0..100 {
                assert!(backoff.delay(attempt) <= backoff.ceiling(attempt));
            }
        }
        let spread: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff.delay(5)).collect();
        assert!(spread.len() > 40, "delays are spread out: {spread:?}");
    }
}
