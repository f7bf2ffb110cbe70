//! One WebSocket connection, from the upgrade to the last ack.
//!
//! [`prepare`] runs before the upgrade: it subscribes the user's wake-ups and joins
//! the device's consumer group (claiming what earlier connections left pending), so a
//! Redis failure is still an HTTP error. [`run`] then serves the socket in one task:
//! client frames (sends, acks), wake-ups and the safety poll trigger reads of the
//! inbox, and each read becomes a delivery batch while fewer than
//! `COURIER_MAX_INFLIGHT_BATCHES` are unacked. Writes go through the bounded
//! [`writer::Outbox`]. When the connection ends, its consumer is deleted if nothing is
//! pending on it; otherwise the device's next connection claims the entries.

mod inflight;
mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use hyper_tungstenite::HyperWebsocketStream;
use hyper_tungstenite::tungstenite::{self, Message};
use tracing::{debug, info, warn};

use crate::auth::Claims;
use crate::protocol::{
    self, BatchLimits, ClientFrame, CloseCode, ErrorCode, ProtocolError, SendBatch, ServerFrame,
    TimeKey,
};
use crate::server::AppState;
use crate::store::inbox::{EntryBody, ReadFrom};
use crate::store::notify::Subscription;
use crate::store::send::{SendError, SendPolicy};
use crate::store::{ConsumerRef, SendRequest, StoreError};
use inflight::{Batch, InFlight};
use writer::Outbox;

pub use inflight::MAX_SAFE_TIME_KEY;

/// Per-connection settings, derived once from the configuration.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Messages per delivery batch.
    pub batch_max: usize,
    /// Unacked delivery batches per connection.
    pub max_inflight_batches: usize,
    /// Frames queued for the socket.
    pub outbound_queue: usize,
    /// Limits on sent batches.
    pub limits: BatchLimits,
    /// Fan-out and retention of sends.
    pub send_policy: SendPolicy,
    /// Safety poll interval.
    pub poll_interval: Duration,
    /// Ping interval; a peer silent for two intervals is dropped.
    pub ping_interval: Duration,
    /// Bound of the dead-letter stream.
    pub dead_letter_maxlen: u64,
}

/// A connection ready to be served: authenticated, subscribed, its consumer joined.
pub struct Prepared {
    claims: Claims,
    consumer: ConsumerRef,
    subscription: Subscription,
}

/// Subscribes the user's wake-ups, then creates the consumer and claims what the
/// device's earlier connections left pending. In that order: a message published
/// after the subscription wakes this connection, one written before is read by it.
pub async fn prepare(
    state: &AppState,
    claims: Claims,
    device: String,
) -> Result<Prepared, StoreError> {
    let consumer = ConsumerRef {
        user: claims.id,
        device,
        consumer: format!("{}-{}", state.instance_id, uuid::Uuid::new_v4()),
    };
    let subscription = state.notifier.subscribe(claims.id).await?;
    let report = state.store.join(&consumer).await?;
    if report.trimmed > 0 {
        warn!(
            user = claims.id,
            trimmed = report.trimmed,
            "pending entries were trimmed before delivery"
        );
    }
    debug!(consumer = %consumer.consumer, claimed = report.claimed, "consumer joined");
    Ok(Prepared {
        claims,
        consumer,
        subscription,
    })
}

/// Serves the connection until it ends, then releases the consumer.
pub async fn run(state: Arc<AppState>, prepared: Prepared, ws: HyperWebsocketStream) {
    let Prepared {
        claims,
        consumer,
        subscription,
    } = prepared;
    let span = tracing::info_span!("connection", user = claims.id, device = %consumer.device, consumer = %consumer.consumer);
    let (sink, stream) = ws.split();
    let outbox = Outbox::spawn(sink, state.session.outbound_queue);
    let mut session = Session {
        inflight: InFlight::new(state.session.max_inflight_batches),
        state: state.clone(),
        claims,
        consumer,
        subscription,
        outbox,
        history_cursor: Some("0".into()),
        want_read: true,
        last_seen: Instant::now(),
    };
    info!(parent: &span, "connected");
    let ending = tracing::Instrument::instrument(session.serve(stream), span.clone()).await;
    let Session {
        outbox, consumer, ..
    } = session;
    match ending {
        Ending::Close(code, reason) => {
            info!(parent: &span, code = code.code(), reason, "closing");
            outbox.close(code, reason).await;
        }
        Ending::PeerClosed => {
            info!(parent: &span, "peer closed");
            outbox.finish().await;
        }
        Ending::Dropped(why) => info!(parent: &span, why, "connection dropped"),
    }
    match state.store.leave(&consumer).await {
        Ok(deleted) => debug!(parent: &span, deleted, "consumer released"),
        Err(e) => warn!(parent: &span, error = %e, "could not release consumer"),
    }
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

struct Session {
    state: Arc<AppState>,
    claims: Claims,
    consumer: ConsumerRef,
    subscription: Subscription,
    outbox: Outbox,
    inflight: InFlight,
    /// While `Some`, the consumer's own pending entries after this id are read first;
    /// `None` once they are all delivered, then only new entries are read.
    history_cursor: Option<String>,
    /// A wake-up or poll asked for a read that has not happened yet.
    want_read: bool,
    /// Last frame of any kind from the client.
    last_seen: Instant,
}

impl Session {
    async fn serve(&mut self, mut stream: SplitStream<HyperWebsocketStream>) -> Ending {
        let settings = self.state.session.clone();
        let mut poll = tokio::time::interval(settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping = tokio::time::interval(settings.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let expiry = token_expiry(&self.claims);
        let shutdown = self.state.shutdown.clone();
        loop {
            if self.want_read && self.inflight.has_room() {
                if let Err(ending) = self.deliver().await {
                    return ending;
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ending::Close(CloseCode::GoingAway, "server shutting down"),
                _ = sleep_until(expiry) => return Ending::Close(CloseCode::TokenExpired, "token expired"),
                frame = stream.next() => {
                    self.last_seen = Instant::now();
                    let result = match frame {
                        None => return Ending::Dropped("socket closed"),
                        Some(Err(tungstenite::Error::Capacity(_))) => {
                            return Ending::Close(CloseCode::TooBig, "frame too big");
                        }
                        Some(Err(_)) => return Ending::Dropped("socket error"),
                        Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
                        Some(Ok(Message::Binary(_))) => self.reply_error(&ProtocolError::new(
                            ErrorCode::InvalidFrame,
                            "binary frames are not supported: send JSON text frames",
                        )),
                        Some(Ok(Message::Close(_))) => return Ending::PeerClosed,
                        Some(Ok(_)) => Ok(()),
                    };
                    if let Err(ending) = result {
                        return ending;
                    }
                }
                _ = self.subscription.notified() => self.want_read = true,
                _ = poll.tick() => self.want_read = true,
                _ = ping.tick() => {
                    if self.last_seen.elapsed() > settings.ping_interval * 2 {
                        return Ending::Dropped("no pong within two ping intervals");
                    }
                    if let Err(ending) = self.send(Message::Ping(Default::default())) {
                        return ending;
                    }
                }
            }
        }
    }

    /// Queues a frame; a full queue means a slow consumer.
    fn send(&self, message: Message) -> Result<(), Ending> {
        self.outbox
            .send(message)
            .map_err(|_| Ending::Close(CloseCode::Overloaded, "slow consumer"))
    }

    fn send_frame(&self, frame: &ServerFrame<'_>) -> Result<(), Ending> {
        self.send(Message::text(frame.encode()))
    }

    fn reply_error(&self, error: &ProtocolError) -> Result<(), Ending> {
        debug!(code = error.code.as_str(), message = %error.message, "client error");
        self.send_frame(&ServerFrame::from(error))
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Ending> {
        match protocol::decode_client_frame(text) {
            Err(error) => self.reply_error(&error),
            Ok(ClientFrame::Send(batch)) => self.on_send(batch).await,
            Ok(ClientFrame::Ack(time_key)) => self.on_ack(time_key).await,
            Ok(ClientFrame::Received) => match self.inflight.oldest() {
                Some(batch) => self.on_ack(TimeKey::from_u64(batch.time_key)).await,
                None => self.reply_error(&ProtocolError::new(
                    ErrorCode::UnknownTimeKey,
                    "`received` acks the oldest unacked batch, and none is unacked",
                )),
            },
        }
    }

    /// A client batch: validated whole, written atomically, then acked.
    async fn on_send(&mut self, batch: SendBatch) -> Result<(), Ending> {
        let settings = &self.state.session;
        if let Err(error) = protocol::validate_batch(&batch, self.claims.id, settings.limits) {
            return self.reply_error(&error);
        }
        let time_key = batch.time_key;
        let request = SendRequest::from_batch(self.claims.id, batch);
        match self.state.store.send(&request, settings.send_policy).await {
            Ok(outcome) => {
                debug!(%time_key, ?outcome, "batch written");
                self.send_frame(&ServerFrame::Ack { time_key })
            }
            Err(SendError::NotAMember { user, chat_id, index }) => self.reply_error(
                &ProtocolError::new(
                    ErrorCode::NotAMember,
                    format!("user {user} is not a member of chat {chat_id} (messages[{index}]); nothing was sent"),
                )
                .with_time_key(time_key),
            ),
            Err(SendError::Store(e)) => self.reply_error(&store_error(e).with_time_key(time_key)),
        }
    }

    /// A client ack: XACK exactly that batch's entries.
    async fn on_ack(&mut self, time_key: TimeKey) -> Result<(), Ending> {
        let Some(batch) = time_key.as_u64().and_then(|tk| self.inflight.get(tk)) else {
            return self.reply_error(
                &ProtocolError::new(
                    ErrorCode::UnknownTimeKey,
                    format!("no unacked delivery batch has time_key {time_key} on this connection"),
                )
                .with_time_key(time_key),
            );
        };
        let stream_ids = batch.stream_ids.clone();
        let batch_time_key = batch.time_key;
        match self.state.store.ack(&self.consumer, &stream_ids).await {
            Ok(_) => {
                self.inflight.take(batch_time_key);
                self.want_read = true;
                Ok(())
            }
            Err(e) => self.reply_error(&store_error(e).with_time_key(time_key)),
        }
    }

    /// Reads and pushes batches while there is room and something to read.
    async fn deliver(&mut self) -> Result<(), Ending> {
        let batch_max = self.state.session.batch_max;
        while self.want_read && self.inflight.has_room() {
            let from = match &self.history_cursor {
                Some(cursor) => ReadFrom::PendingAfter(cursor),
                None => ReadFrom::New,
            };
            let entries = match self.state.store.read(&self.consumer, from, batch_max).await {
                Ok(entries) => entries,
                Err(e) => {
                    warn!(error = %e, "inbox read failed; retrying at the next wake-up or poll");
                    self.want_read = false;
                    return Ok(());
                }
            };
            let reading_history = self.history_cursor.is_some();
            if reading_history {
                self.history_cursor = entries.last().map(|e| e.stream_id.clone());
                if entries.is_empty() {
                    continue;
                }
            } else if entries.len() < batch_max {
                self.want_read = false;
            }
            self.push_batch(entries).await?;
        }
        Ok(())
    }

    /// Turns read entries into one delivery batch; trimmed entries are acked and
    /// malformed ones dead-lettered, as neither can be delivered.
    async fn push_batch(&mut self, entries: Vec<crate::store::StreamEntry>) -> Result<(), Ending> {
        let mut messages = Vec::with_capacity(entries.len());
        let mut stream_ids = Vec::with_capacity(entries.len());
        let mut trimmed = Vec::new();
        let mut malformed = Vec::new();
        for entry in entries {
            match entry.body {
                EntryBody::Message { message, .. } => {
                    messages.push(message);
                    stream_ids.push(entry.stream_id);
                }
                EntryBody::Trimmed => trimmed.push(entry.stream_id),
                EntryBody::Malformed => malformed.push((entry.stream_id, 1)),
            }
        }
        if !trimmed.is_empty() {
            warn!(
                count = trimmed.len(),
                "pending entries were trimmed before delivery"
            );
            if let Err(e) = self.state.store.ack(&self.consumer, &trimmed).await {
                warn!(error = %e, "could not ack trimmed entries");
            }
        }
        if !malformed.is_empty() {
            warn!(
                count = malformed.len(),
                "malformed inbox entries moved to dead letters"
            );
            let maxlen = self.state.session.dead_letter_maxlen;
            if let Err(e) = self
                .state
                .store
                .dead_letter(&self.consumer, &malformed, maxlen)
                .await
            {
                warn!(error = %e, "could not dead-letter malformed entries");
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
        debug!(time_key, count = messages.len(), "batch delivered");
        self.inflight.push(Batch {
            time_key,
            stream_ids,
            sent_at: Instant::now(),
        });
        Ok(())
    }
}

/// The protocol error for a Redis failure.
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
