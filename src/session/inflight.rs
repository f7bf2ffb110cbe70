//! The delivery batches a connection has pushed and the client has not acked yet.
//! Pure bookkeeping, tested without I/O.
//!
//! Invariants: at most `max` batches are read from Redis while others are unacked;
//! time keys strictly increase and stay below 2^53; an entry is in at most one live
//! batch (the reader walks its pending entries forward once, then reads only new
//! ones; a redelivery first retires the batches that held the entries).
//!
//! A retired batch is no longer waited for, but its `time_key` stays ackable for a
//! while: the client did receive those entries, so a late ack of the old batch still
//! XACKs them.

use std::collections::VecDeque;
use std::time::Instant;

use crate::protocol::MAX_SAFE_TIME_KEY;

/// One pushed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The server `time_key` the client acks.
    pub time_key: u64,
    /// Stream ids of its entries, for XACK.
    pub stream_ids: Vec<String>,
    /// `(message id, traceparent)` of its traced entries, for the ack spans (empty
    /// when tracing is off).
    pub traced: Vec<(u64, String)>,
    /// When it was pushed.
    pub sent_at: Instant,
}

/// The batches in flight on one connection, oldest first.
#[derive(Debug)]
pub struct InFlight {
    batches: VecDeque<Batch>,
    /// Batches replaced by a redelivery, newest last, at most [`RETIRED_KEPT`].
    retired: VecDeque<Batch>,
    max: usize,
    last_time_key: u64,
}

/// How many retired batches stay ackable.
const RETIRED_KEPT: usize = 64;

impl InFlight {
    /// Room for `max` unacked batches.
    pub fn new(max: usize) -> Self {
        Self {
            // Allocated on the first delivery: an idle connection holds none.
            batches: VecDeque::new(),
            retired: VecDeque::new(),
            max,
            last_time_key: 0,
        }
    }

    /// Whether another batch may be pushed.
    pub fn has_room(&self) -> bool {
        self.batches.len() < self.max
    }

    /// A fresh time key: `now_micros` (microseconds since the epoch), or one more than
    /// the last if the clock did not move forward.
    pub fn next_time_key(&mut self, now_micros: u64) -> u64 {
        let key = now_micros
            .max(self.last_time_key + 1)
            .min(MAX_SAFE_TIME_KEY);
        self.last_time_key = key;
        key
    }

    /// Records a pushed batch.
    pub fn push(&mut self, batch: Batch) {
        self.batches.push_back(batch);
    }

    /// Removes and returns the batch (live or retired) with this time key.
    pub fn take(&mut self, time_key: u64) -> Option<Batch> {
        if let Some(index) = self.batches.iter().position(|b| b.time_key == time_key) {
            return self.batches.remove(index);
        }
        let index = self.retired.iter().position(|b| b.time_key == time_key)?;
        self.retired.remove(index)
    }

    /// The batch (live or retired) with this time key.
    pub fn get(&self, time_key: u64) -> Option<&Batch> {
        self.batches
            .iter()
            .chain(&self.retired)
            .find(|b| b.time_key == time_key)
    }

    /// Retires every live batch holding one of `stream_ids` (they are about to be
    /// delivered again in a new batch).
    pub fn retire_containing(&mut self, stream_ids: &[&str]) {
        let (retire, keep): (Vec<Batch>, Vec<Batch>) = self.batches.drain(..).partition(|b| {
            b.stream_ids
                .iter()
                .any(|id| stream_ids.contains(&id.as_str()))
        });
        self.batches = keep.into();
        for batch in retire {
            if self.retired.len() == RETIRED_KEPT {
                self.retired.pop_front();
            }
            self.retired.push_back(batch);
        }
    }

    /// Whether no live batch waits for an ack.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Whether a live batch holds this entry.
    pub fn holds(&self, stream_id: &str) -> bool {
        self.batches
            .iter()
            .any(|b| b.stream_ids.iter().any(|id| id == stream_id))
    }

    /// Whether a live batch has waited at least `timeout` for its ack.
    pub fn any_older_than(&self, timeout: std::time::Duration) -> bool {
        self.batches
            .front()
            .is_some_and(|b| b.sent_at.elapsed() >= timeout)
    }

    /// The oldest batch (what `received` acks).
    pub fn oldest(&self) -> Option<&Batch> {
        self.batches.front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(time_key: u64) -> Batch {
        Batch {
            time_key,
            stream_ids: vec![format!("{time_key}-0")],
            traced: Vec::new(),
            sent_at: Instant::now(),
        }
    }

    #[test]
    fn time_keys_strictly_increase_below_2_pow_53() {
        let mut inflight = InFlight::new(2);
        assert_eq!(inflight.next_time_key(100), 100);
        assert_eq!(inflight.next_time_key(100), 101);
        assert_eq!(inflight.next_time_key(50), 102);
        assert_eq!(inflight.next_time_key(u64::MAX), MAX_SAFE_TIME_KEY);
    }

    #[test]
    fn bounded_and_acked_by_time_key_or_oldest() {
        let mut inflight = InFlight::new(2);
        inflight.push(batch(1));
        assert!(inflight.has_room());
        inflight.push(batch(2));
        assert!(!inflight.has_room());
        assert_eq!(inflight.oldest().map(|b| b.time_key), Some(1));
        assert_eq!(inflight.take(2).map(|b| b.time_key), Some(2));
        assert_eq!(inflight.take(2), None);
        assert_eq!(inflight.get(1).map(|b| b.stream_ids.len()), Some(1));
        assert!(inflight.has_room());
        inflight.take(1);
        assert!(inflight.is_empty());
    }

    #[test]
    fn retired_batches_leave_the_window_but_stay_ackable() {
        let mut inflight = InFlight::new(2);
        inflight.push(batch(1));
        inflight.push(batch(2));
        assert!(inflight.holds("1-0") && inflight.holds("2-0"));
        inflight.retire_containing(&["1-0"]);
        assert!(inflight.has_room(), "the retired batch no longer counts");
        assert!(
            !inflight.holds("1-0"),
            "a retired batch's entries may be delivered again"
        );
        assert_eq!(inflight.oldest().map(|b| b.time_key), Some(2));
        assert_eq!(
            inflight.take(1).map(|b| b.stream_ids),
            Some(vec!["1-0".to_string()])
        );
        assert_eq!(inflight.take(1), None);
    }
}
