//! The periodic duties of a session — the safety poll, the keep-alive ping and the
//! ack-timeout check — on one timer. An idle connection then holds one timer entry
//! and wakes once per period instead of three timers waking on their own; at 100k
//! connections that is 100k timer entries instead of 300k.

use std::time::{Duration, Instant};

use tokio::time::{Interval, MissedTickBehavior};

use super::SessionSettings;

/// One timer ticking at the shortest of the three periods.
pub(super) struct Schedule {
    tick: Interval,
    poll_every: Duration,
    ping_every: Duration,
    next_poll: Instant,
    next_ping: Instant,
}

/// What is due at a tick. The ack-timeout check is due at every tick.
pub(super) struct Due {
    /// The safety poll: read the inbox even without a wake-up.
    pub poll: bool,
    /// Check the peer answered the last ping, and ping again.
    pub ping: bool,
}

impl Schedule {
    /// Starts the schedule: the first poll and ping are one period away (the session
    /// reads at once anyway).
    pub fn new(settings: &SessionSettings) -> Self {
        let period = tick_period(settings);
        let now = Instant::now();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            tick,
            poll_every: settings.poll_interval,
            ping_every: settings.ping_interval,
            next_poll: now + settings.poll_interval,
            next_ping: now + settings.ping_interval,
        }
    }

    /// Waits for the next tick and says what is due.
    pub async fn next(&mut self) -> Due {
        self.tick.tick().await;
        let now = Instant::now();
        Due {
            poll: take_due(&mut self.next_poll, self.poll_every, now),
            ping: take_due(&mut self.next_ping, self.ping_every, now),
        }
    }
}

/// The shortest of the poll interval, the ping interval and a quarter of the ack
/// timeout (at least 10 ms, at most the poll interval).
fn tick_period(settings: &SessionSettings) -> Duration {
    let ack_check =
        (settings.ack_timeout / 4).clamp(Duration::from_millis(10), settings.poll_interval);
    ack_check
        .min(settings.poll_interval)
        .min(settings.ping_interval)
}

/// Whether `next` has come; if so, moves it one period past now.
fn take_due(next: &mut Instant, every: Duration, now: Instant) -> bool {
    if now < *next {
        return false;
    }
    *next = now + every;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duty_is_due_once_its_time_has_come_then_one_period_later() {
        let start = Instant::now();
        let every = Duration::from_secs(5);
        let mut next = start + every;
        assert!(!take_due(&mut next, every, start + Duration::from_secs(4)));
        assert!(take_due(&mut next, every, start + Duration::from_secs(6)));
        assert_eq!(next, start + Duration::from_secs(11));
        assert!(!take_due(&mut next, every, start + Duration::from_secs(10)));
    }
}
