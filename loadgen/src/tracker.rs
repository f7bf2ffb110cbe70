//! Accounting of every sent message: which recipients got it (loss and duplicates),
//! whether courier acked the send, and the send→deliver latency.
//!
//! Each sent message is `(sender k, seq q)`; its `content_text` carries
//! `t=<ns since start>;s=<k>;q=<q>;r=<run>;` so a recipient can find it without any
//! lookup. Sender `k`'s chat holds connection `c_k` and the `fanout` connections after
//! it, so a recipient's position in that chat — one bit of the message's seen-mask —
//! is arithmetic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use hdrhistogram::Histogram;

/// Who is in which chat.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Connections.
    pub n: usize,
    /// Recipients per message.
    pub fanout: usize,
    /// Connection index of each sender.
    pub sender_conn: Vec<usize>,
}

impl Layout {
    pub fn new(n: usize, fanout: usize, senders: usize) -> Self {
        let sender_conn = (0..senders).map(|k| k * n / senders).collect();
        Self {
            n,
            fanout,
            sender_conn,
        }
    }

    /// The recipients (connection indexes) of sender `k`'s chat.
    pub fn recipients(&self, k: usize) -> impl Iterator<Item = usize> + '_ {
        let c = self.sender_conn[k];
        (0..self.fanout).map(move |j| (c + 1 + j) % self.n)
    }

    /// Position of connection `r` among sender `k`'s recipients.
    fn position(&self, k: usize, r: usize) -> Option<usize> {
        let c = *self.sender_conn.get(k)?;
        let j = (r + self.n - c - 1) % self.n;
        (j < self.fanout).then_some(j)
    }
}

/// What courier answered to a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
    Unanswered,
    Acked,
    Refused,
}

/// One sender's messages.
struct SenderLog {
    state: Vec<SendState>,
    /// `words` u64s per message: bit j = recipient j got it.
    seen: Vec<u64>,
}

/// Counters updated as frames come and go.
#[derive(Default)]
pub struct Counters {
    pub sent_msgs: AtomicU64,
    pub sent_batches: AtomicU64,
    pub acked_msgs: AtomicU64,
    pub acked_batches: AtomicU64,
    pub refused_msgs: AtomicU64,
    /// Sent batches answered with an error frame (`unavailable`, ...).
    pub refused_batches: AtomicU64,
    /// Every delivered message, duplicates included.
    pub deliveries: AtomicU64,
    /// First deliveries of a (message, recipient).
    pub unique: AtomicU64,
    pub duplicates: AtomicU64,
    /// Deliveries not from this run, or to a connection outside the message's chat.
    pub foreign: AtomicU64,
    pub delivery_batches: AtomicU64,
    /// Deliveries and acked sends inside the measurement window.
    pub window_deliveries: AtomicU64,
    pub window_acked: AtomicU64,
    /// Rate-mode slots skipped because the sender's window was full.
    pub stalls: AtomicU64,
    /// Sent batches awaiting courier's answer.
    pub inflight_batches: AtomicU64,
    /// Connections closed by courier or the network during the run.
    pub dropped: AtomicU64,
}

/// The measurement window, in ns since [`Tracker::start`]; both 0 until set.
#[derive(Default)]
struct Window {
    from: AtomicU64,
    to: AtomicU64,
}

/// Shared by every connection task.
pub struct Tracker {
    pub start: Instant,
    pub run: u32,
    pub layout: Layout,
    words: usize,
    logs: Vec<Mutex<SenderLog>>,
    pub counters: Counters,
    window: Window,
    latency_us: Mutex<Histogram<u64>>,
    ack_latency_us: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    drops: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles in milliseconds (also the report's JSON shape).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// The end-of-run reconciliation.
#[derive(Debug, Clone, Default)]
pub struct Reconciled {
    /// (acked message, recipient) pairs never delivered.
    pub lost: u64,
    /// Acked messages with at least one recipient missing.
    pub lost_messages: u64,
    /// Messages never answered by courier (connection dropped, run ended).
    pub unanswered_msgs: u64,
    /// Deliveries of messages courier did not ack (written, ack not seen).
    pub delivered_unacked: u64,
    pub latency: Percentiles,
    pub ack_latency: Percentiles,
    pub errors: BTreeMap<String, u64>,
    pub drops: BTreeMap<String, u64>,
}

/// A sent message's header, parsed back from `content_text`.
struct Header {
    sent_ns: u64,
    sender: usize,
    seq: usize,
    run: u32,
}

fn parse_header(text: &str) -> Option<Header> {
    let mut sent_ns = None;
    let mut sender = None;
    let mut seq = None;
    let mut run = None;
    for part in text.split(';').take(4) {
        let (k, v) = part.split_once('=')?;
        match k {
            "t" => sent_ns = v.parse().ok(),
            "s" => sender = v.parse().ok(),
            "q" => seq = v.parse().ok(),
            "r" => run = v.parse().ok(),
            _ => return None,
        }
    }
    Some(Header {
        sent_ns: sent_ns?,
        sender: sender?,
        seq: seq?,
        run: run?,
    })
}

impl Tracker {
    pub fn new(layout: Layout, run: u32) -> Self {
        let words = layout.fanout.div_ceil(64).max(1);
        let logs = (0..layout.sender_conn.len())
            .map(|_| {
                Mutex::new(SenderLog {
                    state: Vec::new(),
                    seen: Vec::new(),
                })
            })
            .collect();
        Self {
            start: Instant::now(),
            run,
            layout,
            words,
            logs,
            counters: Counters::default(),
            window: Window::default(),
            latency_us: Mutex::new(histogram()),
            ack_latency_us: Mutex::new(histogram()),
            errors: Mutex::default(),
            drops: Mutex::default(),
        }
    }

    /// Nanoseconds since the start of the run.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Sets the measurement window (ns since start).
    pub fn set_window(&self, from_ns: u64, to_ns: u64) {
        self.window.to.store(to_ns, Ordering::Relaxed);
        self.window.from.store(from_ns, Ordering::Relaxed);
    }

    fn in_window(&self, ns: u64) -> bool {
        let from = self.window.from.load(Ordering::Relaxed);
        let to = self.window.to.load(Ordering::Relaxed);
        to > 0 && ns >= from && ns < to
    }

    /// Registers `count` new messages of sender `k` and returns the first seq.
    pub fn register_sends(&self, k: usize, count: usize) -> usize {
        let mut log = lock(&self.logs[k]);
        let first = log.state.len();
        log.state.resize(first + count, SendState::Unanswered);
        let words = self.words;
        log.seen.resize((first + count) * words, 0);
        self.counters
            .sent_msgs
            .fetch_add(count as u64, Ordering::Relaxed);
        self.counters.sent_batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .inflight_batches
            .fetch_add(1, Ordering::Relaxed);
        first
    }

    /// courier acked sender `k`'s batch `first..first+count`, sent at `sent_ns`.
    pub fn acked(&self, k: usize, first: usize, count: usize, sent_ns: u64) {
        let now = self.now_ns();
        {
            let mut log = lock(&self.logs[k]);
            for s in &mut log.state[first..first + count] {
                *s = SendState::Acked;
            }
        }
        let c = &self.counters;
        c.acked_msgs.fetch_add(count as u64, Ordering::Relaxed);
        c.acked_batches.fetch_add(1, Ordering::Relaxed);
        c.inflight_batches.fetch_sub(1, Ordering::Relaxed);
        if self.in_window(now) {
            c.window_acked.fetch_add(count as u64, Ordering::Relaxed);
        }
        if self.in_window(sent_ns) {
            lock(&self.ack_latency_us).saturating_record(now.saturating_sub(sent_ns) / 1000);
        }
    }

    /// courier refused sender `k`'s batch with an error frame.
    pub fn refused(&self, k: usize, first: usize, count: usize) {
        let mut log = lock(&self.logs[k]);
        for s in &mut log.state[first..first + count] {
            *s = SendState::Refused;
        }
        let c = &self.counters;
        c.refused_msgs.fetch_add(count as u64, Ordering::Relaxed);
        c.refused_batches.fetch_add(1, Ordering::Relaxed);
        c.inflight_batches.fetch_sub(1, Ordering::Relaxed);
    }

    /// A batch that will never be answered (its connection is gone).
    pub fn abandoned(&self, batches: u64) {
        self.counters
            .inflight_batches
            .fetch_sub(batches, Ordering::Relaxed);
    }

    /// Records one delivery batch received by connection `recipient`.
    pub fn delivered<'a>(&self, recipient: usize, texts: impl Iterator<Item = &'a str>) {
        let now = self.now_ns();
        let in_window = self.in_window(now);
        let mut latencies: Vec<u64> = Vec::new();
        let (mut total, mut unique, mut dups, mut foreign) = (0u64, 0u64, 0u64, 0u64);
        for text in texts {
            total += 1;
            let Some(h) = parse_header(text).filter(|h| h.run == self.run) else {
                foreign += 1;
                continue;
            };
            let Some(j) = self.layout.position(h.sender, recipient) else {
                foreign += 1;
                continue;
            };
            let mut log = lock(&self.logs[h.sender]);
            if h.seq >= log.state.len() {
                foreign += 1;
                continue;
            }
            let word = &mut log.seen[h.seq * self.words + j / 64];
            let bit = 1u64 << (j % 64);
            if *word & bit != 0 {
                dups += 1;
            } else {
                *word |= bit;
                unique += 1;
            }
            drop(log);
            if self.in_window(h.sent_ns) {
                latencies.push(now.saturating_sub(h.sent_ns) / 1000);
            }
        }
        let c = &self.counters;
        c.deliveries.fetch_add(total, Ordering::Relaxed);
        c.unique.fetch_add(unique, Ordering::Relaxed);
        c.duplicates.fetch_add(dups, Ordering::Relaxed);
        c.foreign.fetch_add(foreign, Ordering::Relaxed);
        c.delivery_batches.fetch_add(1, Ordering::Relaxed);
        if in_window {
            c.window_deliveries.fetch_add(total, Ordering::Relaxed);
        }
        if !latencies.is_empty() {
            let mut h = lock(&self.latency_us);
            for us in latencies {
                h.saturating_record(us);
            }
        }
    }

    /// Counts an error frame by code.
    pub fn error(&self, code: &str) {
        *lock(&self.errors).entry(code.to_string()).or_default() += 1;
    }

    /// Counts a connection lost during the run, by reason.
    pub fn dropped(&self, reason: String) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        *lock(&self.drops).entry(reason).or_default() += 1;
    }

    /// Deliveries still expected for the messages acked so far.
    pub fn outstanding(&self) -> u64 {
        let c = &self.counters;
        let expected = c.acked_msgs.load(Ordering::Relaxed) * self.layout.fanout as u64;
        expected.saturating_sub(c.unique.load(Ordering::Relaxed))
    }

    /// Walks every message: loss, unanswered sends, deliveries of unacked messages.
    pub fn reconcile(&self) -> Reconciled {
        let mut out = Reconciled::default();
        let fanout = self.layout.fanout as u64;
        for log in &self.logs {
            let log = lock(log);
            for (seq, state) in log.state.iter().enumerate() {
                let seen: u64 = log.seen[seq * self.words..(seq + 1) * self.words]
                    .iter()
                    .map(|w| u64::from(w.count_ones()))
                    .sum();
                match state {
                    SendState::Acked if seen < fanout => {
                        out.lost += fanout - seen;
                        out.lost_messages += 1;
                    }
                    SendState::Acked => {}
                    SendState::Unanswered => {
                        out.unanswered_msgs += 1;
                        out.delivered_unacked += seen;
                    }
                    SendState::Refused => out.delivered_unacked += seen,
                }
            }
        }
        out.latency = Percentiles::of(&lock(&self.latency_us));
        out.ack_latency = Percentiles::of(&lock(&self.ack_latency_us));
        out.errors = lock(&self.errors).clone();
        out.drops = lock(&self.drops).clone();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &Tracker, k: usize, q: usize) -> String {
        format!("t=0;s={k};q={q};r={};xxxx", t.run)
    }

    #[test]
    fn layout_positions_are_the_chat_order() {
        let l = Layout::new(10, 3, 2);
        assert_eq!(l.sender_conn, vec![0, 5]);
        assert_eq!(l.recipients(1).collect::<Vec<_>>(), vec![6, 7, 8]);
        assert_eq!(l.position(1, 8), Some(2));
        assert_eq!(l.position(1, 5), None);
        let wrap = Layout::new(4, 3, 4);
        assert_eq!(wrap.recipients(3).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(wrap.position(3, 0), Some(0));
    }

    #[test]
    fn counts_loss_and_duplicates() {
        let t = Tracker::new(Layout::new(10, 3, 2), 7);
        let first = t.register_sends(0, 2);
        t.acked(0, first, 2, 0);
        let m0 = text(&t, 0, 0);
        let m1 = text(&t, 0, 1);
        t.delivered(1, [m0.as_str(), m1.as_str()].into_iter());
        t.delivered(2, [m0.as_str()].into_iter());
        t.delivered(2, [m0.as_str()].into_iter());
        t.delivered(3, [m0.as_str(), "hello"].into_iter());
        t.delivered(9, [m1.as_str()].into_iter());
        let r = t.reconcile();
        assert_eq!(t.counters.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(t.counters.foreign.load(Ordering::Relaxed), 2);
        assert_eq!(r.lost, 2, "m1 missed recipients 2 and 3");
        assert_eq!(r.lost_messages, 1);
        assert_eq!(t.outstanding(), 2);
    }
}
