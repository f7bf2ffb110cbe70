//! The delivery half of a session: reading the inbox, pushing batches, taking back
//! timed-out entries, and applying the client's acks.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};

use super::inflight::Batch;
use super::{Ending, Session, now_micros, store_error};
use crate::protocol::{DeliveredMessage, ErrorCode, ProtocolError, ServerFrame, TimeKey};
use crate::store::inbox::ReadFrom;
use crate::store::{EntryBody, StoredMessage, StreamEntry};
use crate::telemetry;

/// The longest pause between two reads retried after failures.
const READ_RETRY_CEILING: Duration = Duration::from_secs(5);

/// How long to wait before reading again after `failures` failed reads in a row:
/// 250 ms doubling up to [`READ_RETRY_CEILING`], each made 50–100 % of that at random, so that
/// after an outage the connections of an instance do not all come back to Redis at
/// the same instant. (A wake-up is lost if the read it caused fails, e.g. the read
/// right after Redis came back: this retry delivers it.)
fn read_retry_delay(failures: u32) -> Duration {
    let base = Duration::from_millis(250)
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(READ_RETRY_CEILING);
    let jitter = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1000);
    base / 2 + base / 2 * jitter / 1000
}

impl Session {
    /// Reads and pushes batches while there is room and something may be waiting.
    ///
    /// `want_read` is cleared when a read is *issued*, not when it returns: a wake-up
    /// that comes while the read is in flight (kept by the subscription until the
    /// session polls it) sets it again and causes another read. It is set again at
    /// once when more may remain: a full read, or the consumer's own pending history.
    /// A failed read is retried with backoff until one succeeds, and the retry starts
    /// with the consumer's own pending history ([`Session::recover_own_pending`]).
    pub(super) async fn deliver(&mut self) -> Result<(), Ending> {
        let batch_max = self.node.session.batch_max;
        while self.want_read && self.inflight.has_room() {
            self.want_read = false;
            let from = match &self.history_cursor {
                Some(cursor) => ReadFrom::PendingAfter(cursor),
                None => ReadFrom::New,
            };
            let entries = match self.node.store.read(&self.consumer, from, batch_max).await {
                Ok(entries) => {
                    self.read_retry = None;
                    entries
                }
                Err(e) => {
                    let failures = self.read_retry.map_or(0, |(_, failures)| failures) + 1;
                    let delay = read_retry_delay(failures);
                    warn!(error = %e, ?delay, "inbox read failed; retrying");
                    self.read_retry = Some((tokio::time::Instant::now() + delay, failures));
                    self.recover_own_pending();
                    return Ok(());
                }
            };
            let mut entries = entries;
            if self.history_cursor.is_some() {
                self.history_cursor = entries.last().map(|e| e.stream_id.clone());
                self.want_read = true;
                // Entries already in a live batch here are awaiting their ack: not
                // delivered twice on one connection.
                entries.retain(|e| !self.inflight.holds(&e.stream_id));
                if entries.is_empty() {
                    continue;
                }
            } else if entries.len() >= batch_max {
                self.want_read = true;
            }
            self.push_batch(entries).await?;
        }
        Ok(())
    }

    /// After a read or reclaim that failed: Redis may have executed it and only the
    /// reply was lost (a timeout, a dropped connection), leaving entries pending on
    /// this consumer that nothing else delivers before the ack timeout — and nothing
    /// reclaims for an idle connection. The next read walks the consumer's own
    /// pending entries from the start, skipping those in flight here, then goes on
    /// with new ones.
    fn recover_own_pending(&mut self) {
        self.history_cursor = Some("0".into());
    }

    /// Takes back timed-out entries of the device's group (this connection's own
    /// unacked deliveries and dead connections' leftovers) and delivers them again in
    /// a new batch, retiring the batches that held them.
    pub(super) async fn reclaim(&mut self) -> Result<(), Ending> {
        self.last_reclaim = Instant::now();
        let settings = &self.node.session;
        let reclaimed = self
            .node
            .store
            .reclaim(
                &self.consumer,
                settings.ack_timeout,
                &self.reclaim_cursor,
                settings.batch_max,
            )
            .await;
        let reclaimed = match reclaimed {
            Ok(reclaimed) => reclaimed,
            Err(e) => {
                warn!(error = %e, "reclaim failed; reading own pending entries next");
                self.recover_own_pending();
                self.want_read = true;
                return Ok(());
            }
        };
        self.reclaim_cursor = reclaimed.cursor;
        self.count_trimmed(reclaimed.trimmed);
        if reclaimed.entries.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = reclaimed
            .entries
            .iter()
            .map(|e| e.stream_id.as_str())
            .collect();
        self.inflight.retire_containing(&ids);
        debug!(
            count = reclaimed.entries.len(),
            "redelivering timed-out entries"
        );
        self.push_batch(reclaimed.entries).await
    }

    /// Turns read entries into one delivery batch. Entries past the maximum number of
    /// deliveries and malformed ones are dead-lettered; trimmed ones are acked, as
    /// none of them can be delivered.
    pub(super) async fn push_batch(&mut self, entries: Vec<StreamEntry>) -> Result<(), Ending> {
        let max_deliveries = self.node.session.max_deliveries;
        let metrics = self.node.metrics.clone();
        let mut messages = Vec::with_capacity(entries.len());
        let mut stream_ids = Vec::with_capacity(entries.len());
        let mut traced = Vec::new();
        let mut trimmed = Vec::new();
        let mut dead = Vec::new();
        let now_ms = now_millis();
        for entry in entries {
            match entry.body {
                EntryBody::Trimmed => trimmed.push(entry.stream_id),
                _ if entry.deliveries > max_deliveries => {
                    dead.push((entry.stream_id, entry.deliveries - 1));
                }
                EntryBody::Malformed => dead.push((entry.stream_id, entry.deliveries)),
                EntryBody::Message {
                    message,
                    traceparent,
                } => {
                    if entry.deliveries <= 1 {
                        metrics.messages_delivered.inc();
                        if let Some(written_ms) = entry_millis(&entry.stream_id) {
                            let latency = now_ms.saturating_sub(written_ms) as f64 / 1000.0;
                            metrics.send_to_deliver.observe(latency);
                        }
                    } else {
                        metrics.messages_redelivered.inc();
                    }
                    if let Some(traceparent) = traceparent.filter(|_| telemetry::enabled()) {
                        traced.push((message.id, traceparent, entry.deliveries));
                    }
                    messages.push(delivered(message));
                    stream_ids.push(entry.stream_id);
                }
            }
        }
        if !trimmed.is_empty() {
            self.count_trimmed(trimmed.len() as u64);
            if let Err(e) = self.node.store.ack(&self.consumer, &trimmed).await {
                warn!(error = %e, "could not ack trimmed entries");
            }
        }
        if !dead.is_empty() {
            match self.node.store.dead_letter(&self.consumer, &dead).await {
                Ok(copied) => {
                    warn!(count = copied, "entries moved to dead letters");
                    metrics.messages_dead_lettered.inc_by(copied);
                }
                Err(e) => warn!(error = %e, "could not dead-letter entries; they stay pending"),
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        let time_key = self.inflight.next_time_key(now_micros());
        self.send_frame(&ServerFrame::Messages {
            time_key,
            messages: &messages,
        })?;
        metrics.batch("out", messages.len());
        debug!(time_key, count = messages.len(), "batch delivered");
        for (message_id, traceparent, deliveries) in &traced {
            let span = tracing::info_span!(
                parent: None,
                "deliver",
                message.id = message_id,
                user = self.claims.id,
                device = %self.consumer.device,
                consumer = %self.consumer.consumer,
                time_key,
                deliveries,
            );
            telemetry::set_remote_parent(&span, traceparent);
        }
        self.inflight.push(Batch {
            time_key,
            stream_ids,
            traced: traced.into_iter().map(|(id, tp, _)| (id, tp)).collect(),
            sent_at: Instant::now(),
        });
        Ok(())
    }

    /// A client ack: XACK exactly that batch's entries. It reads nothing by itself:
    /// if a read was held back for room, `want_read` is still set and the freed slot
    /// is filled at the top of the session loop.
    pub(super) async fn on_ack(&mut self, time_key: TimeKey) -> Result<(), Ending> {
        let Some(batch) = time_key.as_u64().and_then(|tk| self.inflight.get(tk)) else {
            return self.reply_error(
                &ProtocolError::new(
                    ErrorCode::UnknownTimeKey,
                    format!("no unacked delivery batch has time_key {time_key} on this connection"),
                )
                .with_time_key(time_key),
            );
        };
        let batch_time_key = batch.time_key;
        if let Err(e) = self.node.store.ack(&self.consumer, &batch.stream_ids).await {
            return self.reply_error(&store_error(e).with_time_key(time_key));
        }
        if let Some(batch) = self.inflight.take(batch_time_key) {
            let metrics = &self.node.metrics;
            metrics.acks.inc();
            metrics
                .deliver_to_ack
                .observe(batch.sent_at.elapsed().as_secs_f64());
            for (message_id, traceparent) in &batch.traced {
                let span = tracing::info_span!(
                    parent: None,
                    "ack",
                    message.id = message_id,
                    user = self.claims.id,
                    device = %self.consumer.device,
                    time_key = batch_time_key,
                );
                telemetry::set_remote_parent(&span, traceparent);
            }
        }
        Ok(())
    }

    fn count_trimmed(&self, trimmed: u64) {
        if trimmed > 0 {
            warn!(
                count = trimmed,
                "pending entries were trimmed before delivery"
            );
            self.node.metrics.messages_trimmed.inc_by(trimmed);
        }
    }
}

/// A stored message as the wire protocol delivers it.
fn delivered(message: StoredMessage) -> DeliveredMessage {
    let StoredMessage {
        id,
        sender_id,
        chat_id,
        content_text,
    } = message;
    DeliveredMessage {
        id,
        sender_id,
        chat_id,
        content_text,
    }
}

/// The creation time (ms since the epoch) in a stream entry id `<ms>-<seq>`.
fn entry_millis(stream_id: &str) -> Option<u64> {
    stream_id.split('-').next()?.parse().ok()
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_retries_back_off_from_a_quarter_second_to_the_ceiling_with_jitter() {
        for (failures, full) in [
            (1, 250),
            (2, 500),
            (3, 1000),
            (5, 4000),
            (6, 5000),
            (40, 5000),
        ] {
            let full = Duration::from_millis(full);
            let delay = read_retry_delay(failures);
            assert!(
                delay >= full / 2 && delay <= full,
                "{failures} failures: {delay:?} not within [{:?}, {full:?}]",
                full / 2
            );
        }
    }
}
