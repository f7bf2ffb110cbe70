//! The sending half (pure, no I/O): messages queued by the app, the batches formed
//! from them with their `time_key`s, the window of batches in flight, and what to
//! (re)send when.
//!
//! A batch is formed when it can be sent (the connection is open and the window has
//! room), from as many queued messages as fit (the batch limit and the frame limit),
//! so that messages queued together go together. It keeps its `time_key` and its exact
//! content until courier acks or refuses it: a resend after a reconnect or a
//! retryable error is the same batch, which courier's dedup writes once.

use std::collections::VecDeque;

use crate::protocol::{ClientFrame, MAX_SAFE_TIME_KEY, OutgoingMessage, TimeKey, json_string_len};

/// Bytes of a batch frame besides its messages (type, a 20-digit time key, brackets).
pub const FRAME_OVERHEAD: usize = 80;
/// Bytes of one message besides its text (field names, two 20-digit ids, braces).
pub const MESSAGE_OVERHEAD: usize = 90;

/// Batch `time_key`s: strictly increasing, below 2^53. `max(now in µs, last + 1)`, so
/// that a client started later (or restarted without a persistent outbox) continues
/// above the keys it used before, as long as the clock does not go back.
#[derive(Debug, Clone, Copy)]
pub struct TimeKeys {
    last: u64,
}

impl TimeKeys {
    /// Keys above `last` (0 for a fresh client, the stored key for a restored one).
    pub fn after(last: u64) -> Self {
        Self { last }
    }

    /// The next key, given the time in microseconds since the Unix epoch. Past 2^53 − 1
    /// (the year 2255) keys stop increasing.
    pub fn next(&mut self, now_micros: u64) -> u64 {
        let key = now_micros
            .max(self.last.saturating_add(1))
            .min(MAX_SAFE_TIME_KEY);
        self.last = key;
        key
    }

    /// The last key given out.
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// How batches are formed and paced.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages per batch (courier's `COURIER_BATCH_MAX`).
    pub batch_max: usize,
    /// Bytes per frame (courier's `COURIER_MAX_FRAME_BYTES`).
    pub max_frame_bytes: usize,
    /// Batches in flight (sent, not acked) at once.
    pub window: usize,
}

/// Where a batch stands on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// To be sent (formed, restored, or in flight on a connection that ended).
    Unsent,
    /// Sent on this connection; waiting for courier's answer.
    Sent,
    /// courier answered with a retryable error; resent when the retry is due.
    RetryWait,
}

/// A message queued by the app, not in a batch yet.
#[derive(Debug)]
struct Queued<W> {
    chat_id: u64,
    text: String,
    /// `None` for a message restored from the outbox (its sender is gone).
    waiter: Option<W>,
}

/// A formed batch, until courier acks or refuses it.
#[derive(Debug)]
pub struct Batch<W> {
    /// Its name, kept for every resend.
    pub time_key: u64,
    /// Its messages, kept exactly for every resend.
    pub messages: Vec<OutgoingMessage>,
    /// Who waits for its outcome (one per message sent in this run).
    pub waiters: Vec<W>,
    state: State,
}

/// A batch just formed, for the persistent outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formed {
    /// The batch's `time_key`.
    pub time_key: u64,
    /// The sender id its messages carry.
    pub sender_id: u64,
    /// How many of the oldest queued messages it took.
    pub count: usize,
}

/// The send-side state of a client; `W` is what waits for a message's outcome.
#[derive(Debug)]
pub struct Outbound<W> {
    limits: Limits,
    queued: VecDeque<Queued<W>>,
    batches: VecDeque<Batch<W>>,
    time_keys: TimeKeys,
}

impl<W> Outbound<W> {
    /// Empty, with `time_keys` continuing where a previous run stopped.
    pub fn new(limits: Limits, time_keys: TimeKeys) -> Self {
        Self {
            limits,
            queued: VecDeque::new(),
            batches: VecDeque::new(),
            time_keys,
        }
    }

    /// Adds a batch restored from the outbox, to be sent first with its `time_key`.
    pub fn restore_batch(&mut self, time_key: u64, messages: Vec<OutgoingMessage>) {
        self.batches.push_back(Batch {
            time_key,
            messages,
            waiters: Vec::new(),
            state: State::Unsent,
        });
    }

    /// Queues a message (`waiter: None` for one restored from the outbox).
    pub fn enqueue(&mut self, chat_id: u64, text: String, waiter: Option<W>) {
        self.queued.push_back(Queued {
            chat_id,
            text,
            waiter,
        });
    }

    /// Forms batches from the queue while the window has room, each with the next
    /// `time_key`; returns them (oldest first) for the persistent outbox.
    pub fn form(&mut self, sender_id: u64, now_micros: u64) -> Vec<Formed> {
        let mut formed = Vec::new();
        while self.batches.len() < self.limits.window && !self.queued.is_empty() {
            let mut size = FRAME_OVERHEAD;
            let mut messages = Vec::new();
            let mut waiters = Vec::new();
            while let Some(next) = self.queued.front() {
                let added = MESSAGE_OVERHEAD + json_string_len(&next.text);
                let full = messages.len() >= self.limits.batch_max
                    || (!messages.is_empty() && size + added > self.limits.max_frame_bytes);
                if full {
                    break;
                }
                let Some(message) = self.queued.pop_front() else {
                    break;
                };
                size += added;
                messages.push(OutgoingMessage {
                    sender_id,
                    chat_id: message.chat_id,
                    content_text: message.text,
                });
                waiters.extend(message.waiter);
            }
            let time_key = self.time_keys.next(now_micros);
            formed.push(Formed {
                time_key,
                sender_id,
                count: messages.len(),
            });
            self.batches.push_back(Batch {
                time_key,
                messages,
                waiters,
                state: State::Unsent,
            });
        }
        formed
    }

    /// The frames to send now, in order: unsent batches while fewer than `window` are
    /// in flight, none past a batch waiting for its retry (to keep the order). They
    /// count as sent from here on.
    pub fn sendable(&mut self) -> Vec<ClientFrame> {
        let mut in_flight = self
            .batches
            .iter()
            .filter(|b| b.state != State::Unsent)
            .count();
        let mut frames = Vec::new();
        for batch in &mut self.batches {
            if in_flight >= self.limits.window || batch.state == State::RetryWait {
                break;
            }
            if batch.state == State::Unsent {
                batch.state = State::Sent;
                in_flight += 1;
                frames.push(ClientFrame::Messages {
                    time_key: TimeKey::from(batch.time_key),
                    messages: batch.messages.clone(),
                });
            }
        }
        frames
    }

    /// courier acked batch `time_key`: it is done.
    pub fn on_ack(&mut self, time_key: u64) -> Option<Batch<W>> {
        self.take(time_key)
    }

    /// courier refused batch `time_key` for good: it is done.
    pub fn on_refused(&mut self, time_key: u64) -> Option<Batch<W>> {
        self.take(time_key)
    }

    /// courier answered batch `time_key` with a retryable error: it waits for
    /// [`retry_now`](Self::retry_now). False if no batch in flight has that key.
    pub fn on_retryable(&mut self, time_key: u64) -> bool {
        match self
            .batches
            .iter_mut()
            .find(|b| b.time_key == time_key && b.state == State::Sent)
        {
            Some(batch) => {
                batch.state = State::RetryWait;
                true
            }
            None => false,
        }
    }

    /// The retry is due: batches waiting for it are sent again by the next
    /// [`sendable`](Self::sendable).
    pub fn retry_now(&mut self) {
        for batch in &mut self.batches {
            if batch.state == State::RetryWait {
                batch.state = State::Unsent;
            }
        }
    }

    /// The connection ended: every batch in flight is sent again on the next one, in
    /// order, before any newer batch.
    pub fn on_disconnect(&mut self) {
        for batch in &mut self.batches {
            batch.state = State::Unsent;
        }
    }

    /// Removes every batch and queued message; returns their waiters.
    pub fn drain_waiters(&mut self) -> Vec<W> {
        let batches = self.batches.drain(..).flat_map(|b| b.waiters);
        let queued = self.queued.drain(..).filter_map(|q| q.waiter);
        batches.chain(queued).collect()
    }

    /// The batches, oldest first, with their messages (what a compacted outbox holds).
    pub fn batches(&self) -> impl Iterator<Item = (u64, &[OutgoingMessage])> {
        self.batches
            .iter()
            .map(|b| (b.time_key, b.messages.as_slice()))
    }

    /// The queued messages, oldest first, as `(chat_id, text)`.
    pub fn queued(&self) -> impl Iterator<Item = (u64, &str)> {
        self.queued.iter().map(|q| (q.chat_id, q.text.as_str()))
    }

    /// The last `time_key` given out.
    pub fn last_time_key(&self) -> u64 {
        self.time_keys.last()
    }

    fn take(&mut self, time_key: u64) -> Option<Batch<W>> {
        let index = self.batches.iter().position(|b| b.time_key == time_key)?;
        self.batches.remove(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        batch_max: 3,
        max_frame_bytes: 1 << 20,
        window: 2,
    };

    fn time_keys(frames: &[ClientFrame]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| match f {
                ClientFrame::Messages { time_key, .. } => time_key.as_u64().expect("u64"),
                other => panic!("not a batch: {other:?}"),
            })
            .collect()
    }

    fn sizes(frames: &[ClientFrame]) -> Vec<usize> {
        frames
            .iter()
            .map(|f| match f {
                ClientFrame::Messages { messages, .. } => messages.len(),
                _ => 0,
            })
            .collect()
    }

    fn outbound_with(count: usize) -> Outbound<usize> {
        let mut outbound = Outbound::new(LIMITS, TimeKeys::after(0));
        for i in 0..count {
            outbound.enqueue(10, format!("m{i}"), Some(i));
        }
        outbound
    }

    #[test]
    fn time_keys_strictly_increase_and_stay_below_2_pow_53() {
        let mut keys = TimeKeys::after(0);
        assert_eq!(keys.next(100), 100);
        assert_eq!(keys.next(100), 101, "same microsecond");
        assert_eq!(keys.next(50), 102, "clock went back");
        assert_eq!(keys.next(1_000), 1_000);
        let mut restored = TimeKeys::after(5_000);
        assert_eq!(restored.next(1_000), 5_001, "continues above a stored key");
        assert_eq!(keys.next(u64::MAX), MAX_SAFE_TIME_KEY);
        assert!(TimeKeys::after(u64::MAX).next(0) <= MAX_SAFE_TIME_KEY);
    }

    #[test]
    fn queued_messages_go_together_up_to_the_batch_limit_and_the_window() {
        let mut outbound = outbound_with(8);
        let formed = outbound.form(1, 1_000);
        assert_eq!(
            formed,
            [
                Formed {
                    time_key: 1_000,
                    sender_id: 1,
                    count: 3
                },
                Formed {
                    time_key: 1_001,
                    sender_id: 1,
                    count: 3
                }
            ],
            "two batches: the window"
        );
        let frames = outbound.sendable();
        assert_eq!(time_keys(&frames), [1_000, 1_001]);
        assert!(outbound.sendable().is_empty(), "the window is full");
        assert!(
            outbound.form(1, 1_000).is_empty(),
            "no batch beyond the window"
        );
        let acked = outbound.on_ack(1_000).expect("batch");
        assert_eq!(acked.waiters, [0, 1, 2]);
        assert_eq!(outbound.form(1, 1_000).len(), 1, "room for one more");
        assert_eq!(sizes(&outbound.sendable()), [2], "the last two messages");
    }

    #[test]
    fn a_batch_stops_before_the_frame_limit() {
        let limits = Limits {
            batch_max: 100,
            max_frame_bytes: FRAME_OVERHEAD + 2 * (MESSAGE_OVERHEAD + 12),
            window: 4,
        };
        let mut outbound: Outbound<()> = Outbound::new(limits, TimeKeys::after(0));
        for _ in 0..5 {
            outbound.enqueue(1, "0123456789".into(), None);
        }
        outbound.form(1, 1);
        assert_eq!(sizes(&outbound.sendable()), [2, 2, 1]);
        for frame in outbound.sendable() {
            assert!(frame.encode().len() <= limits.max_frame_bytes);
        }
    }

    #[test]
    fn a_reconnect_resends_every_unacked_batch_first_with_its_time_key() {
        let mut outbound = outbound_with(6);
        outbound.form(1, 1_000);
        let first = outbound.sendable();
        outbound.on_disconnect();
        outbound.enqueue(10, "later".into(), Some(99));
        assert!(
            outbound.form(1, 5_000).is_empty(),
            "the window is still full"
        );
        let again = outbound.sendable();
        assert_eq!(again, first, "same time keys, same content, same order");
        outbound.on_ack(1_000);
        outbound.on_ack(1_001);
        outbound.form(1, 5_000);
        assert_eq!(time_keys(&outbound.sendable()), [5_000]);
    }

    #[test]
    fn a_retryable_error_resends_the_batch_and_holds_back_later_ones() {
        let mut outbound = outbound_with(3);
        outbound.form(1, 1_000);
        outbound.sendable();
        assert!(outbound.on_retryable(1_000));
        assert!(!outbound.on_retryable(1_000), "not in flight any more");
        outbound.enqueue(10, "next".into(), Some(3));
        outbound.form(1, 2_000);
        assert!(
            outbound.sendable().is_empty(),
            "nothing overtakes the retry"
        );
        outbound.retry_now();
        assert_eq!(time_keys(&outbound.sendable()), [1_000, 2_000]);
    }

    #[test]
    fn a_refused_batch_leaves_and_its_waiters_are_returned() {
        let mut outbound = outbound_with(4);
        outbound.form(1, 1_000);
        outbound.sendable();
        let refused = outbound.on_refused(1_001).expect("batch");
        assert_eq!(refused.waiters, [3]);
        assert!(outbound.on_ack(1_001).is_none(), "it left");
        assert_eq!(outbound.drain_waiters(), [0, 1, 2]);
    }
}
