//! One WebSocket connection, from the upgrade to the last ack.
//!
//! [`upgrade()`] checks the request (DESIGN §1); the connection's task then runs
//! `prepare` before the 101: it subscribes the user's wake-ups and joins the device's
//! consumer group (claiming what earlier connections left pending, and reading the
//! first batch in the same round trip), so a Redis failure is still an HTTP error.
//! `run` then serves the socket in a task of its own (the preparing task ends, so an
//! idle connection holds only the serving task's state): client frames go to
//! `sending` (batches, written one at a time through the node's publisher while the
//! session goes on; at most `sending::SEND_QUEUE` unanswered, then the socket is not
//! read) and `delivery` (acks); wake-ups make `delivery` read the inbox and push
//! batches while fewer than `COURIER_MAX_INFLIGHT_BATCHES` are unacked, and the
//! ack-timeout check reclaims while batches are unacked. An idle connection sends
//! Redis nothing (unless the optional safety poll is configured).
//! Writes go through the bounded `writer::Outbox`. When the connection ends (or is
//! never served), its consumer is deleted if nothing is pending on it; otherwise the
//! device's next connection claims the entries.

mod delivery;
mod inflight;
mod limits;
mod schedule;
mod sending;
pub mod settings;
mod upgrade;
mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use hyper_tungstenite::HyperWebsocketStream;
use hyper_tungstenite::tungstenite::{self, Message};
use tracing::{Instrument, debug, info, warn};

use crate::auth::Claims;
use crate::node::{ConnectionSlot, Node};
use crate::protocol::{
    self, ClientFrame, CloseCode, ErrorCode, ProtocolError, ServerFrame, TimeKey,
};
use crate::store::notify::Subscription;
use crate::store::{ConsumerRef, StoreError, StreamEntry};
use inflight::InFlight;
use limits::{Limits, Verdict};
use schedule::{Due, Schedule};
use sending::Sends;
use settings::SessionSettings;
use writer::Outbox;

pub use upgrade::upgrade;

/// A connection ready to be served: authenticated, subscribed, its consumer joined,
/// its first batch read. Either [`run`] serves it, or [`Prepared::release`] gives its
/// consumer back.
struct Prepared {
    slot: ConnectionSlot,
    claims: Claims,
    consumer: ConsumerRef,
    subscription: Subscription,
    span: tracing::Span,
    /// The join's first batch, and where reading goes on from.
    first: FirstRead,
}

/// What the join read, and so where the session's reads continue.
struct FirstRead {
    entries: Vec<StreamEntry>,
    /// Own pending history remains after this id (the join read a full batch of it).
    history_after: Option<String>,
    /// The next read is due at once: more history or new entries may wait.
    more: bool,
}

impl FirstRead {
    fn new(report_claimed: u64, entries: Vec<StreamEntry>, batch_max: usize) -> Self {
        let full = entries.len() >= batch_max;
        if report_claimed > 0 {
            // History was read: what is left of it, then new entries (never read yet).
            let history_after = full
                .then(|| entries.last().map(|e| e.stream_id.clone()))
                .flatten();
            Self {
                entries,
                history_after,
                more: true,
            }
        } else {
            Self {
                entries,
                history_after: None,
                more: full,
            }
        }
    }
}

impl Prepared {
    /// The `connection` span.
    fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// For a connection that will never be served (the client went away before the
    /// 101): deletes the consumer — unless it holds entries claimed from the device's
    /// earlier connections, which then wait for the device's next connection, as at
    /// any end — and, by dropping the rest, unsubscribes the wake-ups and frees the
    /// user's connection slot.
    async fn release(self, node: &Node) {
        release_consumer(node, &self.consumer, &self.span).await;
    }
}

/// Subscribes the user's wake-ups, then joins: creates the consumer, claims what the
/// device's earlier connections left pending and reads the first batch. In that
/// order: a message published after the subscription wakes this connection, one
/// written before is read by it (the first batch, or the reads it leads to). At most
/// [`Node::joins`] connections prepare at once, so a connect storm queues here
/// instead of in Redis's command queue, where it would run into the command timeout.
///
/// `traceparent` (from the upgrade request) makes the connection span continue the
/// client's trace.
async fn prepare(
    node: &Node,
    slot: ConnectionSlot,
    claims: Claims,
    device: String,
    traceparent: Option<&str>,
) -> Result<Prepared, StoreError> {
    let consumer = ConsumerRef {
        user: claims.id,
        device,
        consumer: format!("{}-{}", node.instance_id, uuid::Uuid::new_v4()),
    };
    let span = tracing::info_span!(
        "connection",
        user = claims.id,
        device = %consumer.device,
        consumer = %consumer.consumer,
    );
    if let Some(traceparent) = traceparent {
        crate::telemetry::set_remote_parent(&span, traceparent);
    }
    let _permit = node.joins.acquire().await;
    let subscription = node.notifier.subscribe(claims.id).await?;
    let batch_max = node.session.batch_max;
    let report = node
        .store
        .join(&consumer, batch_max)
        .instrument(span.clone())
        .await?;
    if report.trimmed > 0 {
        node.metrics.messages_trimmed.inc_by(report.trimmed);
        warn!(parent: &span, trimmed = report.trimmed, "pending entries were trimmed before delivery");
    }
    debug!(
        parent: &span,
        claimed = report.claimed,
        deleted_consumers = report.deleted_consumers,
        "consumer joined"
    );
    Ok(Prepared {
        slot,
        claims,
        consumer,
        subscription,
        span,
        first: FirstRead::new(report.claimed, report.first, batch_max),
    })
}

/// Serves the connection until it ends, then releases the consumer.
///
/// The setup is synchronous, so that the returned future — which lives as long as
/// the connection, and whose size is paid per connection — holds the session alone:
/// an `async fn` would keep its arguments (the WebSocket stream, the prepared parts)
/// in its state for its whole life, moved out or not.
fn run(
    node: Arc<Node>,
    prepared: Prepared,
    ws: HyperWebsocketStream,
) -> impl Future<Output = ()> + Send {
    let Prepared {
        slot,
        claims,
        consumer,
        subscription,
        span,
        first,
    } = prepared;
    let (sink, stream) = ws.split();
    let settings = &node.session;
    let outbox = Outbox::spawn(sink, settings.outbound_queue, settings.write_timeout);
    let session = Session {
        inflight: InFlight::new(settings.max_inflight_batches),
        limits: Limits::new(
            settings.rate_limit_fps,
            settings.rate_limit_burst,
            settings.max_client_errors,
            Instant::now(),
        ),
        node,
        claims,
        consumer,
        subscription,
        outbox,
        span,
        sends: Sends::default(),
        history_cursor: first.history_after,
        reclaim_cursor: "0-0".into(),
        last_reclaim: Instant::now(),
        want_read: first.more,
        read_retry: None,
        last_seen: Instant::now(),
        _slot: slot,
    };
    session.node.metrics.connections.inc();
    info!(parent: &session.span, "connected");
    session.live(stream, first.entries)
}

/// How a session ended.
enum Ending {
    /// The server closes with this code.
    Close(CloseCode, &'static str),
    /// The client sent a close frame.
    PeerClosed,
    /// The socket is gone or dead.
    Dropped(&'static str),
}

/// The state of one connection, owned by its task.
struct Session {
    node: Arc<Node>,
    claims: Claims,
    consumer: ConsumerRef,
    subscription: Subscription,
    outbox: Outbox,
    /// The `connection` span; client batches link to it.
    span: tracing::Span,
    inflight: InFlight,
    /// Client batches accepted and not yet answered.
    sends: Sends,
    /// While `Some`, the consumer's own pending entries after this id are read first
    /// (those already in flight here are skipped); `None` once they are all
    /// delivered, then only new entries are read. Set again to the start after a
    /// failed read or reclaim: Redis may have executed it and lost only the reply,
    /// leaving entries pending on this consumer that no one else would deliver
    /// before the ack timeout.
    history_cursor: Option<String>,
    /// Where the next reclaim scan of the group's pending list continues.
    reclaim_cursor: String,
    /// When the group was last scanned for timed-out entries.
    last_reclaim: Instant,
    /// The inbox may hold entries this connection has not read: set by a wake-up, a
    /// failed read's retry, the safety poll (when configured), a full read or unread
    /// pending history; cleared when a read is issued. An ack does not set it: a read
    /// waits for room only while this is set.
    want_read: bool,
    /// After failed reads: when to read again, and how many failed in a row.
    read_retry: Option<(tokio::time::Instant, u32)>,
    /// Last frame of any kind from the client.
    last_seen: Instant,
    /// Frame rate and error budget.
    limits: Limits,
    /// This user's connection slot here; dropped with the session.
    _slot: ConnectionSlot,
}

impl Session {
    /// Serves, says goodbye the way the ending calls for, and releases the consumer.
    ///
    /// An `async move` block, not an `async fn`: an async fn keeps each argument twice
    /// in its state (the argument, and the local it is moved into), and this future
    /// lives as long as the connection (1,808 instead of 3,376 bytes).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would keep the session twice in this future"
    )]
    fn live(
        mut self,
        mut stream: SplitStream<HyperWebsocketStream>,
        first: Vec<StreamEntry>,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let span = self.span.clone();
            let ending = self
                .serve(&mut stream, first)
                .instrument(span.clone())
                .await;
            if !matches!(ending, Ending::Dropped(_)) {
                // Errors here are the socket's: the ending says goodbye as it can.
                let _ = Box::pin(self.finish_sends()).instrument(span.clone()).await;
            }
            let Session {
                node,
                outbox,
                consumer,
                ..
            } = self;
            match ending {
                Ending::Close(code, reason) => {
                    info!(parent: &span, code = code.code(), reason, "closing");
                    Box::pin(outbox.close(code, reason)).await;
                    Box::pin(await_peer_close(&mut stream)).await;
                }
                Ending::PeerClosed => {
                    info!(parent: &span, "peer closed");
                    Box::pin(outbox.finish()).await;
                }
                Ending::Dropped(why) => info!(parent: &span, why, "connection dropped"),
            }
            node.metrics.connections.dec();
            Box::pin(release_consumer(&node, &consumer, &span)).await;
        }
    }

    /// Pushes the join's `first` batch, then serves the socket until the connection
    /// ends.
    async fn serve(
        &mut self,
        stream: &mut SplitStream<HyperWebsocketStream>,
        first: Vec<StreamEntry>,
    ) -> Ending {
        if !first.is_empty() {
            if let Err(ending) = Box::pin(self.push_batch(first)).await {
                return ending;
            }
        }
        // An Arc, not a copy of the settings: this future lives as long as the
        // connection, and its size is paid per connection.
        let node = self.node.clone();
        let settings = &node.session;
        let mut schedule = Schedule::new(settings);
        // Pinned once: a timer made anew at every turn of the loop would be
        // registered anew each time.
        let mut expiry = std::pin::pin!(sleep_until(token_expiry(&self.claims)));
        let shutdown = self.node.shutdown.clone();
        loop {
            if self.want_read && self.inflight.has_room() {
                // When a connection's own messages come back to it, its batches are
                // answered before it reads: the ack of a batch precedes its echo.
                if node.publisher.delivers_to_sender() {
                    if let Err(ending) = Box::pin(self.finish_sends()).await {
                        return ending;
                    }
                }
                if let Err(ending) = Box::pin(self.deliver()).await {
                    return ending;
                }
            }
            // Biased, cheapest and most urgent first: wake-ups and timers only set
            // flags, so they cannot starve client frames, while a client that sends
            // without pause cannot starve its own deliveries.
            let result = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    return Ending::Close(CloseCode::GoingAway, "server shutting down");
                }
                _ = &mut expiry => {
                    return Ending::Close(CloseCode::TokenExpired, "token expired");
                }
                _ = self.outbox.closed() => {
                    return Ending::Dropped("socket write stalled or failed");
                }
                _ = self.subscription.notified() => {
                    self.want_read = true;
                    Ok(())
                }
                due = schedule.next() => self.housekeep(due, settings).await,
                _ = sleep_until(self.read_retry.map(|(at, _)| at)) => {
                    self.want_read = true;
                    Ok(())
                }
                (time_key, outcome) = self.sends.written(), if self.sends.busy() => {
                    self.on_written(time_key, outcome)
                }
                // Not while the connection's batches fill their queue: TCP pushes back.
                frame = stream.next(), if self.sends.has_room() => {
                    self.last_seen = Instant::now();
                    match frame {
                        None => return Ending::Dropped("socket closed"),
                        Some(Err(tungstenite::Error::Capacity(_))) => {
                            return Ending::Close(CloseCode::TooBig, "frame too big");
                        }
                        Some(Err(tungstenite::Error::Utf8(_))) => {
                            return Ending::Close(CloseCode::InvalidPayload, "text frame is not UTF-8");
                        }
                        Some(Err(_)) => return Ending::Dropped("socket error"),
                        Some(Ok(Message::Close(_))) => return Ending::PeerClosed,
                        Some(Ok(Message::Pong(_) | Message::Frame(_))) => Ok(()),
                        Some(Ok(message)) => Box::pin(self.on_message(message)).await,
                    }
                }
            };
            if let Err(ending) = result {
                return ending;
            }
        }
    }

    /// The periodic duties: the keep-alive ping (a peer silent for two ping intervals
    /// is dropped), the safety poll if configured, and — only while batches are
    /// unacked, or a scan is unfinished — taking back timed-out entries: this
    /// connection's own, and those a dead connection of the device left behind. An
    /// idle connection costs Redis nothing here; a dead connection's entries are
    /// otherwise claimed by the device's next connection at its join.
    async fn housekeep(&mut self, due: Due, settings: &SessionSettings) -> Result<(), Ending> {
        if due.poll {
            self.want_read = true;
        }
        if due.ping {
            if self.last_seen.elapsed() > settings.ping_interval * 2 {
                return Err(Ending::Dropped("no pong within two ping intervals"));
            }
            self.send(Message::Ping(Default::default()))?;
        }
        let unfinished = self.reclaim_cursor != "0-0";
        let busy = !self.inflight.is_empty();
        let overdue = self.inflight.any_older_than(settings.ack_timeout);
        if unfinished || overdue || (busy && self.last_reclaim.elapsed() >= settings.ack_timeout) {
            Box::pin(self.reclaim()).await?;
        }
        Ok(())
    }

    /// Queues a frame; a full queue means a slow consumer.
    fn send(&self, message: Message) -> Result<(), Ending> {
        self.outbox
            .send(message)
            .map_err(|_| Ending::Close(CloseCode::Overloaded, "slow consumer"))
    }

    fn send_frame(&self, frame: &ServerFrame<'_>) -> Result<(), Ending> {
        self.node.metrics.frame_out(frame.kind());
        self.send(Message::text(frame.encode()))
    }

    /// Answers with an error frame. Errors of the client's making count against its
    /// error budget; past it, the connection is closed with 1008.
    fn reply_error(&mut self, error: &ProtocolError) -> Result<(), Ending> {
        debug!(code = error.code.as_str(), message = %error.message, "client error");
        self.node.metrics.error(error.code.as_str());
        self.send_frame(&ServerFrame::from(error))?;
        let clients_fault = !matches!(error.code, ErrorCode::Unavailable | ErrorCode::Internal);
        if clients_fault && !self.limits.on_error(Instant::now()) {
            return Err(Ending::Close(CloseCode::Policy, "too many errors"));
        }
        Ok(())
    }

    /// A data frame or ping from the client, once it passed the rate limit.
    async fn on_message(&mut self, message: Message) -> Result<(), Ending> {
        if self.limits.on_frame(Instant::now()) == Verdict::RateLimited {
            self.node.metrics.frame_in("rate_limited");
            let mut error = ProtocolError::new(
                ErrorCode::RateLimited,
                "too many frames: slow down and resend this frame (same time_key)",
            );
            if let Message::Text(text) = &message {
                error.time_key = protocol::decode_client_frame(text.as_str())
                    .err()
                    .and_then(|e| e.time_key)
                    .or_else(|| protocol::time_key_of(text.as_str()));
            }
            return self.reply_error(&error);
        }
        match message {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Binary(_) => {
                self.node.metrics.frame_in("binary");
                self.reply_error(&ProtocolError::new(
                    ErrorCode::InvalidFrame,
                    "binary frames are not supported: send JSON text frames",
                ))
            }
            _ => {
                self.node.metrics.frame_in("ping");
                Ok(())
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Ending> {
        let frame = protocol::decode_client_frame(text);
        let metrics = &self.node.metrics;
        match frame {
            Err(error) => {
                metrics.frame_in("invalid");
                self.reply_error(&error)
            }
            Ok(ClientFrame::Send(batch)) => {
                metrics.frame_in("messages");
                self.on_send(batch, text.len());
                Ok(())
            }
            Ok(ClientFrame::Ack(time_key)) => {
                metrics.frame_in("ack");
                self.on_ack(time_key).await
            }
            Ok(ClientFrame::Received) => {
                metrics.frame_in("received");
                match self.inflight.oldest() {
                    Some(batch) => self.on_ack(TimeKey::from_u64(batch.time_key)).await,
                    None => self.reply_error(&ProtocolError::new(
                        ErrorCode::UnknownTimeKey,
                        "`received` acks the oldest unacked batch, and none is unacked",
                    )),
                }
            }
        }
    }
}

/// Deletes a connection's consumer if nothing is pending on it; otherwise the device's
/// next connection claims the entries.
async fn release_consumer(node: &Node, consumer: &ConsumerRef, span: &tracing::Span) {
    match node.store.leave(consumer).await {
        Ok(deleted) => debug!(parent: span, deleted, "consumer released"),
        Err(e) => warn!(parent: span, error = %e, "could not release consumer"),
    }
}

/// The protocol error for a Redis failure; the cause goes to the log only.
fn store_error(e: StoreError) -> ProtocolError {
    match e {
        StoreError::Unavailable(cause) => {
            warn!(%cause, "redis unavailable");
            ProtocolError::new(
                ErrorCode::Unavailable,
                "storage unavailable: retry the same batch with the same time_key",
            )
        }
        StoreError::Internal(cause) => {
            warn!(%cause, "redis error");
            ProtocolError::new(ErrorCode::Internal, "internal error")
        }
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// How long a connection closed by courier waits for the client's close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// The closing handshake (RFC 6455 §7.1.1): after courier's close frame, reads and
/// discards what the client still sends until its close frame, its end of stream or
/// [`CLOSE_HANDSHAKE`]. Closing the socket with unread input would reset it, and the
/// client could lose the close frame (and its code) with the reset.
async fn await_peer_close(stream: &mut SplitStream<HyperWebsocketStream>) {
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

/// When the token expires, as a tokio instant (`None`: no `exp`).
fn token_expiry(claims: &Claims) -> Option<tokio::time::Instant> {
    let exp = claims.exp?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(tokio::time::Instant::now() + Duration::from_secs(exp.saturating_sub(now)))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EntryBody;

    fn entries(count: usize) -> Vec<StreamEntry> {
        (1..=count)
            .map(|n| StreamEntry {
                stream_id: format!("{n}-0"),
                body: EntryBody::Trimmed,
                deliveries: 1,
            })
            .collect()
    }

    /// The size of what `f` returns, without calling it.
    fn output_size<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn the_future_an_idle_connection_lives_in_stays_small() {
        // Every connection holds this future for its whole life: 1,808 bytes when
        // written, 3,376 as an async fn taking the session by value (BENCHMARKS.md,
        // "What an idle connection holds"). With tokio's task header it makes a
        // 2,048-byte task cell, with little room before the next size.
        let size = output_size(run);
        assert!(
            size <= 1_900,
            "the serving future is {size} bytes: box what made it grow, or keep an \
             argument out of an async fn's state"
        );
    }

    #[test]
    fn after_the_joins_first_batch_reading_goes_on_only_where_more_may_wait() {
        // A full batch of claimed history: more history after its last entry.
        let first = FirstRead::new(5, entries(3), 3);
        assert_eq!(
            (first.history_after.as_deref(), first.more),
            (Some("3-0"), true)
        );
        // All the claimed history: new entries were not read yet.
        let first = FirstRead::new(2, entries(2), 3);
        assert_eq!((first.history_after, first.more), (None, true));
        // New entries, a full batch: more may wait.
        let first = FirstRead::new(0, entries(3), 3);
        assert_eq!((first.history_after, first.more), (None, true));
        // New entries, fewer than a batch: nothing until a wake-up.
        let first = FirstRead::new(0, entries(1), 3);
        assert_eq!((first.history_after, first.more), (None, false));
    }
}
