//! The periodic duties of a session — the keep-alive ping, the ack-timeout check and,
//! when configured, the safety poll — on one timer. An idle connection then holds one
//! timer entry and wakes once per period instead of three timers waking on their own;
//! at 100k connections that is 100k timer entries instead of 300k. None of these
//! duties costs Redis anything while the connection is idle: the ping goes to the
//! client, and the ack-timeout check reclaims only while batches are unacked.

use std::time::{Duration, Instant};

use tokio::time::{Interval, MissedTickBehavior};

use super::SessionSettings;

/// One timer ticking at the shortest of the three periods.
pub(super) struct Schedule {
    tick: Interval,
    /// The safety poll, when configured: its period and next time.
    poll: Option<(Duration, Instant)>,
    ping_every: Duration,
    next_ping: Instant,
}

/// What is due at a tick. The ack-timeout check is due at every tick.
pub(super) struct Due {
    /// The safety poll (off by default): read the inbox even without a wake-up.
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
            poll: settings.poll_interval.map(|every| (every, now + every)),
            ping_every: settings.ping_interval,
            next_ping: now + settings.ping_interval,
        }
    }

    /// Waits for the next tick and says what is due.
    pub async fn next(&mut self) -> Due {
        self.tick.tick().await;
        let now = Instant::now();
        Due {
            poll: self
                .poll
                .as_mut()
                .is_some_and(|(every, next)| take_due(next, *every, now)),
            ping: take_due(&mut self.next_ping, self.ping_every, now),
        }
    }
}

/// The shortest of the ping interval, a quarter of the ack timeout (at least 10 ms)
/// and the poll interval if there is one.
fn tick_period(settings: &SessionSettings) -> Duration {
    let ack_check = (settings.ack_timeout / 4).max(Duration::from_millis(10));
    let period = ack_check.min(settings.ping_interval);
    settings
        .poll_interval
        .map_or(period, |poll| period.min(poll))
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
