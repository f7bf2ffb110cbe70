//! The client's background task: it owns the connection and every piece of state,
//! and runs the protocol's subtle half (SDK-SPEC.md) as one loop per phase:
//!
//! - *connecting*: fetch a token when there is none, open a connection;
//! - *open*: resend unacked batches first, then form and send new ones within the
//!   window; hand deliveries to the app and ack what it acked; retry batches courier
//!   answered with a retryable error; ping a silent connection;
//! - *waiting*: a full-jitter backoff delay before the next attempt.
//!
//! Commands from the app are served in every phase, so a send queued while offline
//! is persisted at once (with an outbox) and goes out with the next connection.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use crate::connection::{ConnectError, Connection, Incoming, Refusal};
use crate::protocol::{ClientFrame, CloseCode, ErrorFrame, ServerFrame, TimeKey};

use super::Delivery;
use super::config::Settings;
use super::events::{Acked, ConnectionState, Disconnect, Disposition, Event, SendError};
use super::inbound::{Inbound, SeenIds};
use super::outbound::{Outbound, TimeKeys};
use super::outbox_file::{OutboxFile, Record, Restored, snapshot_records};
use super::token::{self, TokenSource};

/// Acks of delivery batches remembered, to resend one courier answered with a
/// retryable error.
const RECENT_ACKS: usize = 64;
/// How long `close()` waits for courier's side of the closing handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Who waits for a message's outcome.
pub type Waiter = oneshot::Sender<Result<Acked, SendError>>;

/// What the app asks of the engine.
#[derive(Debug)]
pub enum Command {
    /// Queue a message; answer on `reply`.
    Send {
        chat_id: u64,
        text: String,
        reply: Waiter,
    },
    /// The app acked delivery `seq`.
    Ack(u64),
    /// The app dropped delivery `seq` without acking it.
    Drop(u64),
    /// Stop; answer when stopped.
    Close(oneshot::Sender<()>),
}

/// What the engine is built from.
pub struct Parts {
    pub settings: Settings,
    pub token: TokenSource,
    /// The user of a fixed token; a provider's tokens are read when fetched.
    pub user_id: Option<u64>,
    pub outbox: Option<(OutboxFile, Restored)>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub handle: mpsc::UnboundedSender<Command>,
    pub deliveries: mpsc::UnboundedSender<Delivery>,
    pub state: watch::Sender<ConnectionState>,
    pub events: broadcast::Sender<Event>,
}

/// The outcome of one connection attempt.
enum Attempt {
    Open(Box<Connection>),
    /// Try again after a backoff delay.
    Retry(Disconnect),
    /// Stop for good.
    Stop(Disconnect),
}

/// The pending retry of frames courier answered with a retryable error.
#[derive(Debug, Default)]
struct Retry {
    /// When it is due; `None` when nothing waits.
    at: Option<Instant>,
    /// Consecutive retries without an ack in between (the backoff attempt).
    attempt: u32,
    /// Acks of delivery batches to send again.
    acks: Vec<u64>,
}

pub struct Engine {
    settings: Settings,
    token: TokenSource,
    /// The token of the next attempt; `None` after a 401 or a 4001 (fetch a new one).
    current_token: Option<String>,
    /// The sender id of new batches: the current token's `id`.
    user_id: Option<u64>,
    /// From the app's handles. Never closes: the engine holds `handle`.
    commands: mpsc::UnboundedReceiver<Command>,
    /// Cloned into each [`Delivery`] so that its ack comes back here.
    handle: mpsc::UnboundedSender<Command>,
    /// To the app's [`Deliveries`](super::Deliveries); a send fails once it is dropped.
    deliveries: mpsc::UnboundedSender<Delivery>,
    state: watch::Sender<ConnectionState>,
    events: broadcast::Sender<Event>,
    outbound: Outbound<Waiter>,
    inbound: Inbound,
    outbox: Option<OutboxFile>,
    /// Outbox records not written yet: written (and synced) before the next frame.
    records: Vec<Record>,
    /// Consecutive failed connection attempts (the backoff attempt).
    attempt: u32,
    retry: Retry,
    /// `time_key`s of the delivery batches acked on this connection, newest last.
    recent_acks: VecDeque<u64>,
    /// Who waits for the engine to stop.
    closers: Vec<oneshot::Sender<()>>,
}

impl Engine {
    pub fn new(parts: Parts) -> Self {
        let (outbox, restored) = match parts.outbox {
            Some((file, restored)) => (Some(file), restored),
            None => (None, Restored::default()),
        };
        let mut seen = SeenIds::new(parts.settings.seen_ids);
        for id in restored.seen {
            seen.insert(id);
        }
        let mut outbound = Outbound::new(
            parts.settings.limits(),
            TimeKeys::after(restored.last_time_key),
        );
        for (time_key, messages) in restored.batches {
            outbound.restore_batch(time_key, messages);
        }
        for (chat_id, text) in restored.queued {
            outbound.enqueue(chat_id, text, None);
        }
        let current_token = match &parts.token {
            TokenSource::Fixed(token) => Some(token.clone()),
            TokenSource::Provider(_) => None,
        };
        Self {
            settings: parts.settings,
            token: parts.token,
            current_token,
            user_id: parts.user_id,
            commands: parts.commands,
            handle: parts.handle,
            deliveries: parts.deliveries,
            state: parts.state,
            events: parts.events,
            outbound,
            inbound: Inbound::new(seen),
            outbox,
            records: Vec::new(),
            attempt: 0,
            retry: Retry::default(),
            recent_acks: VecDeque::new(),
            closers: Vec::new(),
        }
    }

    /// Connects, serves, reconnects, until the app closes the client or a refusal
    /// cannot be retried.
    pub async fn run(mut self) {
        let reason = loop {
            let reason = match self.attempt().await {
                Attempt::Open(mut conn) => {
                    let reason = self.serve(&mut conn).await;
                    self.outbound.on_disconnect();
                    self.inbound.on_disconnect();
                    self.retry = Retry::default();
                    self.recent_acks.clear();
                    if is_final(&reason) {
                        if reason == Disconnect::ClosedByApp {
                            let _ = conn.close(CloseCode::Normal, CLOSE_TIMEOUT).await;
                        }
                        break reason;
                    }
                    reason
                }
                Attempt::Retry(reason) => reason,
                Attempt::Stop(reason) => break reason,
            };
            let delay = self.settings.backoff.delay(self.attempt);
            self.attempt = self.attempt.saturating_add(1);
            self.set_state(ConnectionState::Reconnecting { delay, reason });
            if let Err(stop) = self.serve_commands_until(tokio::time::sleep(delay)).await {
                break stop;
            }
        };
        self.finish(reason);
    }

    /// One connection attempt: a token (fetched when there is none), then the upgrade.
    async fn attempt(&mut self) -> Attempt {
        self.set_state(ConnectionState::Connecting);
        let token = match self.current_token.clone() {
            Some(token) => token,
            None => {
                let source = self.token.clone();
                let fetched = match self
                    .serve_commands_until(async move { source.fetch().await })
                    .await
                {
                    Ok(fetched) => fetched,
                    Err(stop) => return Attempt::Stop(stop),
                };
                let token = match fetched {
                    Ok(token) => token,
                    Err(e) => return Attempt::Retry(Disconnect::Token(e.to_string())),
                };
                match token::user_id(&token) {
                    Ok(id) => self.user_id = Some(id),
                    Err(e) => return Attempt::Retry(Disconnect::Token(e.to_string())),
                }
                self.current_token = Some(token.clone());
                token
            }
        };
        let options = self.settings.connect_options(&token);
        match self
            .serve_commands_until(async move { options.connect().await })
            .await
        {
            Err(stop) => Attempt::Stop(stop),
            Ok(Ok(conn)) => Attempt::Open(Box::new(conn)),
            Ok(Err(ConnectError::Refused(refusal))) => self.on_refusal(refusal),
            Ok(Err(ConnectError::InvalidRequest(e))) => {
                Attempt::Stop(Disconnect::InvalidRequest(e))
            }
            Ok(Err(e)) => Attempt::Retry(Disconnect::Lost(e.to_string())),
        }
    }

    /// A refused upgrade: retried when waiting or a new token may help, else final.
    fn on_refusal(&mut self, refusal: Refusal) -> Attempt {
        let provider = matches!(self.token, TokenSource::Provider(_));
        match refusal.status {
            401 if provider => {
                self.current_token = None;
                Attempt::Retry(Disconnect::Refused(refusal))
            }
            408 | 429 | 500..=599 => Attempt::Retry(Disconnect::Refused(refusal)),
            // 400 invalid device, 403 origin, 401 with a fixed token: retrying cannot
            // change the answer.
            _ => Attempt::Stop(Disconnect::Refused(refusal)),
        }
    }

    /// Serves an open connection until it ends; returns why.
    async fn serve(&mut self, conn: &mut Connection) -> Disconnect {
        self.set_state(ConnectionState::Open);
        let stable_at = Instant::now() + self.settings.stable_after;
        let mut heard_at = Instant::now();
        let mut pinged = false;
        if let Err(reason) = self.pump(conn).await {
            return reason;
        }
        loop {
            let silence = self.settings.ping_interval * if pinged { 2 } else { 1 };
            tokio::select! {
                incoming = conn.next() => {
                    heard_at = Instant::now();
                    pinged = false;
                    match incoming {
                        Ok(Incoming::Text(text)) => self.on_text(&text),
                        Ok(Incoming::Binary(bytes)) => self.emit(Event::UnreadableFrame(
                            format!("a binary frame of {} bytes", bytes.len()),
                        )),
                        Ok(Incoming::Closed(close)) => return self.on_close(close),
                        Err(e) => return Disconnect::Lost(e.to_string()),
                    }
                }
                command = self.commands.recv() => {
                    if let Err(stop) = self.on_commands(command) {
                        return stop;
                    }
                }
                () = sleep_until_some(self.retry.at) => {
                    self.retry.at = None;
                    self.outbound.retry_now();
                }
                () = sleep_until(stable_at), if self.attempt > 0 => self.attempt = 0,
                () = sleep_until(heard_at + silence) => {
                    if pinged {
                        return Disconnect::Silent;
                    }
                    pinged = true;
                    if let Err(e) = self.write(conn, Frame::Ping).await {
                        return e;
                    }
                }
            }
            if let Err(reason) = self.pump(conn).await {
                return reason;
            }
        }
    }

    /// Forms batches, persists what must be stored first, then sends the batches the
    /// window allows and the acks that are due.
    async fn pump(&mut self, conn: &mut Connection) -> Result<(), Disconnect> {
        if let Some(sender_id) = self.user_id {
            let formed = self.outbound.form(sender_id, now_micros());
            self.records
                .extend(formed.into_iter().map(|f| Record::Batch {
                    time_key: f.time_key,
                    sender_id: f.sender_id,
                    count: f.count,
                }));
        }
        self.persist()?;
        for frame in self.outbound.sendable() {
            self.write(conn, Frame::Client(frame)).await?;
        }
        let mut acks = self.inbound.ready_acks();
        if self.retry.at.is_none() {
            acks.append(&mut self.retry.acks);
        }
        for time_key in acks {
            if self.recent_acks.len() == RECENT_ACKS {
                self.recent_acks.pop_front();
            }
            self.recent_acks.push_back(time_key);
            let ack = ClientFrame::Ack {
                time_key: TimeKey::from(time_key),
            };
            self.write(conn, Frame::Client(ack)).await?;
        }
        Ok(())
    }

    async fn write(&mut self, conn: &mut Connection, frame: Frame) -> Result<(), Disconnect> {
        let write = async {
            match frame {
                Frame::Client(frame) => conn.send(&frame).await,
                Frame::Ping => conn.send_ping(Vec::new()).await,
            }
        };
        match tokio::time::timeout(self.settings.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Disconnect::Lost(e.to_string())),
            Err(_) => Err(Disconnect::Lost(format!(
                "a write stalled for {:?}",
                self.settings.write_timeout
            ))),
        }
    }

    fn on_text(&mut self, text: &str) {
        match ServerFrame::decode(text) {
            Err(e) => self.emit(Event::UnreadableFrame(format!("{e}: {text}"))),
            Ok(ServerFrame::Ack { time_key }) => {
                let Some(time_key) = time_key.as_u64() else {
                    return;
                };
                if let Some(batch) = self.outbound.on_ack(time_key) {
                    self.attempt = 0;
                    self.retry.attempt = 0;
                    self.records.push(Record::Done { time_key });
                    for waiter in batch.waiters {
                        let _ = waiter.send(Ok(Acked { time_key }));
                    }
                }
            }
            Ok(ServerFrame::Messages(batch)) => {
                self.attempt = 0;
                let arrival = self.inbound.on_batch(batch);
                if !arrival.duplicates.is_empty() {
                    self.emit(Event::DuplicatesDropped {
                        ids: arrival.duplicates,
                    });
                }
                if let Some((seq, messages)) = arrival.hand_over {
                    let delivery = Delivery::new(seq, messages, self.handle.clone());
                    if let Err(unsent) = self.deliveries.send(delivery) {
                        // The app dropped its `Deliveries`: it takes no more, and
                        // that is no event.
                        let mut delivery = unsent.0;
                        delivery.settled = true;
                        self.inbound.on_app_drop(seq);
                    }
                }
            }
            Ok(ServerFrame::Error(error)) => self.on_error(error),
        }
    }

    /// An error frame: the batch (or ack) it names is rejected, retried or left, by
    /// the code's [`Disposition`].
    fn on_error(&mut self, error: ErrorFrame) {
        self.emit(Event::ServerError(error.clone()));
        let Some(time_key) = error.time_key.and_then(TimeKey::as_u64) else {
            return;
        };
        match Disposition::of(&error.code) {
            Disposition::Report => {}
            Disposition::Retry => {
                let batch = self.outbound.on_retryable(time_key);
                let ack = self.recent_acks.contains(&time_key);
                if ack {
                    self.retry.acks.push(time_key);
                }
                if (batch || ack) && self.retry.at.is_none() {
                    let delay = self.settings.backoff.delay(self.retry.attempt);
                    self.retry.attempt = self.retry.attempt.saturating_add(1);
                    self.retry.at = Some(Instant::now() + delay);
                }
            }
            Disposition::Reject => {
                let Some(batch) = self.outbound.on_refused(time_key) else {
                    return;
                };
                self.records.push(Record::Done { time_key });
                let failure = SendError::Rejected {
                    code: error.code.clone(),
                    message: error.message.clone(),
                };
                for waiter in batch.waiters {
                    let _ = waiter.send(Err(failure.clone()));
                }
                self.emit(Event::BatchRejected {
                    time_key,
                    messages: batch.messages.len(),
                    error,
                });
            }
        }
    }

    /// courier closed the connection (or it ended without a close frame).
    fn on_close(&mut self, close: Option<crate::protocol::CloseInfo>) -> Disconnect {
        match close {
            Some(close) => {
                if close.code == CloseCode::TokenExpired {
                    self.current_token = None;
                }
                Disconnect::Closed(close)
            }
            None => Disconnect::Lost("the connection ended without a close frame".into()),
        }
    }

    /// Serves `command` and every other command already waiting, then persists what
    /// they recorded. `Err` when the client must stop.
    fn on_commands(&mut self, command: Option<Command>) -> Result<(), Disconnect> {
        let mut stop = None;
        let mut next = command;
        loop {
            match next {
                None => stop = Some(Disconnect::ClosedByApp),
                Some(Command::Close(done)) => {
                    self.closers.push(done);
                    stop = Some(Disconnect::ClosedByApp);
                }
                Some(Command::Send {
                    chat_id,
                    text,
                    reply,
                }) => {
                    if self.outbox.is_some() {
                        self.records.push(Record::Queued {
                            chat_id,
                            text: text.clone(),
                        });
                    }
                    self.outbound.enqueue(chat_id, text, Some(reply));
                }
                Some(Command::Ack(seq)) => {
                    let ids = self.inbound.on_app_ack(seq);
                    if !ids.is_empty() {
                        self.records.push(Record::Seen { ids });
                    }
                }
                Some(Command::Drop(seq)) => {
                    let ids = self.inbound.on_app_drop(seq);
                    if !ids.is_empty() {
                        self.emit(Event::DeliveryNotAcked { ids });
                    }
                }
            }
            match self.commands.try_recv() {
                Ok(command) => next = Some(command),
                Err(_) => break,
            }
        }
        self.persist()?;
        stop.map_or(Ok(()), Err)
    }

    /// Runs `future` while serving commands; `Err` when the client must stop first.
    async fn serve_commands_until<T>(
        &mut self,
        future: impl Future<Output = T>,
    ) -> Result<T, Disconnect> {
        let mut future = pin!(future);
        loop {
            tokio::select! {
                output = &mut future => return Ok(output),
                command = self.commands.recv() => self.on_commands(command)?,
            }
        }
    }

    /// Writes and syncs the pending outbox records (and compacts the file when it
    /// has grown). An outbox that cannot be written stops the client.
    fn persist(&mut self) -> Result<(), Disconnect> {
        let records = std::mem::take(&mut self.records);
        let Some(outbox) = &mut self.outbox else {
            return Ok(());
        };
        let result = outbox.append(&records).and_then(|()| {
            if !outbox.wants_compaction() {
                return Ok(());
            }
            let snapshot = snapshot_records(
                self.outbound.last_time_key(),
                self.outbound.batches(),
                self.outbound.queued(),
                self.inbound.seen().iter(),
            );
            outbox.compact(&snapshot)
        });
        result.map_err(|e| Disconnect::Outbox(e.to_string()))
    }

    /// Publishes the final state, fails every waiting send (a send that raced the
    /// stop was not stored in the outbox), answers `close()`.
    fn finish(&mut self, reason: Disconnect) {
        if !matches!(reason, Disconnect::Outbox(_)) {
            let _ = self.persist();
        }
        let failure = SendError::Closed(reason.clone());
        for waiter in self.outbound.drain_waiters() {
            let _ = waiter.send(Err(failure.clone()));
        }
        // The state first: a send that finds the channel closed reads the reason.
        self.set_state(ConnectionState::Closed {
            reason: reason.clone(),
        });
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Send { reply, .. } => {
                    let _ = reply.send(Err(failure.clone()));
                }
                Command::Close(done) => self.closers.push(done),
                Command::Ack(_) | Command::Drop(_) => {}
            }
        }
        for done in self.closers.drain(..) {
            let _ = done.send(());
        }
    }

    fn set_state(&self, state: ConnectionState) {
        self.emit(Event::State(state.clone()));
        self.state.send_replace(state);
    }

    fn emit(&self, event: Event) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }
}

/// A frame the engine writes.
enum Frame {
    Client(ClientFrame),
    Ping,
}

/// Whether the client stops after this reason.
fn is_final(reason: &Disconnect) -> bool {
    matches!(reason, Disconnect::ClosedByApp | Disconnect::Outbox(_))
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
