//! Abuse limits of one connection: a token bucket for frames per second and one for
//! client errors (pure: time is passed in). The cap on connections per user is the
//! node's (`node::connections`).

use std::time::{Duration, Instant};

/// A token bucket: `capacity` tokens, refilled continuously at `per_second`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: u32, per_second: f64, now: Instant) -> Self {
        Self {
            capacity: f64::from(capacity),
            per_second,
            tokens: f64::from(capacity),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The limits of one connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Client frames (data and control) per second, with a burst allowance.
    frames: TokenBucket,
    /// Client errors: `max` within a minute, refilled over the minute.
    errors: TokenBucket,
}

/// What to do with a frame after counting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Accept,
    /// Answer `rate_limited` and drop it.
    RateLimited,
}

impl Limits {
    /// `frames_per_second` sustained with bursts of `burst`; at most `max_errors`
    /// client errors per minute.
    pub fn new(frames_per_second: u32, burst: u32, max_errors: u32, now: Instant) -> Self {
        Self {
            frames: TokenBucket::new(burst.max(1), f64::from(frames_per_second), now),
            errors: TokenBucket::new(
                max_errors.max(1),
                f64::from(max_errors) / ERROR_WINDOW.as_secs_f64(),
                now,
            ),
        }
    }

    /// Counts one incoming frame.
    pub fn on_frame(&mut self, now: Instant) -> Verdict {
        if self.frames.try_take(now) {
            Verdict::Accept
        } else {
            Verdict::RateLimited
        }
    }

    /// Counts one client error (a rate-limited frame included); false once the
    /// connection has made too many: close it with 1008.
    pub fn on_error(&mut self, now: Instant) -> bool {
        self.errors.try_take(now)
    }
}

/// How long a full error budget takes to refill.
pub const ERROR_WINDOW: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_beyond_the_burst_are_limited_until_the_bucket_refills() {
        let start = Instant::now();
        let mut limits = Limits::new(10, 3, 100, start);
        for _ in 0..3 {
            assert_eq!(limits.on_frame(start), Verdict::Accept);
        }
        assert_eq!(limits.on_frame(start), Verdict::RateLimited);
        let later = start + Duration::from_millis(100);
        assert_eq!(
            limits.on_frame(later),
            Verdict::Accept,
            "one token per 100 ms"
        );
        assert_eq!(limits.on_frame(later), Verdict::RateLimited);
    }

    #[test]
    fn errors_past_the_budget_end_the_connection() {
        let start = Instant::now();
        let mut limits = Limits::new(10, 10, 3, start);
        assert!(limits.on_error(start));
        assert!(limits.on_error(start));
        assert!(limits.on_error(start));
        assert!(!limits.on_error(start));
        assert!(limits.on_error(start + ERROR_WINDOW), "the budget refills");
    }
}
