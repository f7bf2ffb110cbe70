//! The SDK (SDK-SPEC.md): a [`Client`] whose background task owns the connection,
//! batches and resends the app's messages until courier acks them, and hands
//! delivered messages to the app once each, acking them only after the app does.
//!
//! The task (`engine.rs`) is the only owner of the state; the app talks to it through
//! a channel of commands ([`Client::send`], [`Delivery::ack`], [`Client::close`]) and
//! hears from it through a channel of deliveries ([`Deliveries`]), a `watch` of the
//! connection state and a broadcast of [`Event`]s.

mod backoff;
mod config;
mod engine;
mod events;
mod inbound;
mod outbound;
mod outbox_file;
mod token;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::protocol::Message;

pub use backoff::Backoff;
pub use config::{ClientBuilder, Settings};
pub use events::{Acked, ConnectionState, Disconnect, Disposition, Event, SendError};
pub use outbox_file::OutboxError;
pub use token::{BoxError, TokenError, TokenSource, user_id};

use engine::{Command, Engine};

/// How many events a lagging [`Client::events`] receiver may fall behind.
const EVENT_BUFFER: usize = 1024;

/// A courier client: cheap to clone, all clones share one connection. Dropping the
/// last clone closes the client (like [`close`](Self::close), without waiting).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// To the engine task; it holds the receiver until it ends.
    commands: mpsc::UnboundedSender<Command>,
    /// The engine sends every state change; the app reads the latest.
    state: watch::Receiver<ConnectionState>,
    /// The engine sends events; each [`Client::events`] call subscribes.
    events: broadcast::Sender<Event>,
    max_text_bytes: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let (done, _) = oneshot::channel();
        let _ = self.commands.send(Command::Close(done));
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Neither [`ClientBuilder::token`] nor [`ClientBuilder::token_provider`] was
    /// called.
    #[error("no token: call token() or token_provider()")]
    NoToken,
    /// The fixed token names no user.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The settings contradict each other or the contract.
    #[error("invalid settings: {0}")]
    Settings(String),
    /// The persistent outbox cannot be used.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// [`ClientBuilder::connect`] was called outside a Tokio runtime.
    #[error("a courier client needs a Tokio runtime")]
    NoRuntime,
}

impl Client {
    /// A builder for a client of courier at `url` (`ws://host:port/ws`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url.into())
    }

    /// Sends `text` to chat `chat_id`. The message is queued at once (messages queued
    /// together go in one batch); the future resolves when courier acks its batch,
    /// or fails with a [`SendError`]. Dropping the future does not cancel the send.
    pub fn send(
        &self,
        chat_id: u64,
        text: impl Into<String>,
    ) -> impl Future<Output = Result<Acked, SendError>> + Send + 'static {
        let text = text.into();
        let (reply, outcome) = oneshot::channel();
        let max = self.inner.max_text_bytes;
        let queued = if text.len() > max {
            Err(SendError::TextTooLong {
                bytes: text.len(),
                max,
            })
        } else {
            self.inner
                .commands
                .send(Command::Send {
                    chat_id,
                    text,
                    reply,
                })
                .map_err(|_| self.closed_error())
        };
        let state = self.inner.state.clone();
        async move {
            queued?;
            outcome.await.unwrap_or_else(|_| Err(closed_error(&state)))
        }
    }

    /// The connection state: read it with `borrow()`, await changes with `changed()`
    /// or `wait_for()`.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// A receiver of the events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Closes the connection (1000) and stops the client; sends not acked yet fail
    /// with [`SendError::Closed`] (with a persistent outbox they stay stored). Returns
    /// once the client has stopped.
    pub async fn close(&self) {
        let (done, stopped) = oneshot::channel();
        if self.inner.commands.send(Command::Close(done)).is_ok() {
            let _ = stopped.await;
        }
    }

    fn closed_error(&self) -> SendError {
        closed_error(&self.inner.state)
    }
}

/// The error of a send the engine will not answer: it has stopped.
fn closed_error(state: &watch::Receiver<ConnectionState>) -> SendError {
    match &*state.borrow() {
        ConnectionState::Closed { reason } => SendError::Closed(reason.clone()),
        _ => SendError::Closed(Disconnect::ClosedByApp),
    }
}

impl ClientBuilder {
    /// Starts the client's task and returns at once (the connection opens in the
    /// background: watch [`Client::state`]). Opens the persistent outbox first, when
    /// one is set. Must be called within a Tokio runtime.
    pub fn connect(self) -> Result<(Client, Deliveries), ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        self.settings.validate().map_err(ClientError::Settings)?;
        let token = self.token.ok_or(ClientError::NoToken)?;
        let user_id = match &token {
            TokenSource::Fixed(token) => Some(token::user_id(token)?),
            TokenSource::Provider(_) => None,
        };
        let outbox = match &self.outbox {
            Some(path) => Some(outbox_file::OutboxFile::open(path, self.settings.seen_ids)?),
            None => None,
        };
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (deliveries_tx, deliveries) = mpsc::unbounded_channel();
        let max_text_bytes = self.settings.max_text_bytes;
        let engine = Engine::new(engine::Parts {
            settings: self.settings,
            token,
            user_id,
            outbox,
            commands: command_rx,
            handle: commands.clone(),
            deliveries: deliveries_tx,
            state: state_tx,
            events: events.clone(),
        });
        runtime.spawn(engine.run());
        let client = Client {
            inner: Arc::new(Inner {
                commands,
                state,
                events,
                max_text_bytes,
            }),
        };
        Ok((client, Deliveries { rx: deliveries }))
    }
}

/// The delivered messages, one [`Delivery`] at a time, each holding only messages the
/// app has not had. Ends when the client stops.
///
/// Dropping it means the app takes no deliveries: none is acked, and courier keeps
/// them for the device (redelivering them, up to its dead-letter limit).
pub struct Deliveries {
    /// From the engine. Unbounded, yet bounded in practice: the engine hands over only
    /// ids the app does not hold, from at most courier's in-flight batches.
    rx: mpsc::UnboundedReceiver<Delivery>,
}

impl Deliveries {
    /// The next delivery; `None` once the client has stopped.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// Polls for the next delivery (what a `Stream` adapter calls).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx)
    }
}

impl futures_util::Stream for Deliveries {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.get_mut().poll_recv(cx)
    }
}

/// Messages for the app. Call [`ack`](Self::ack) once the app has them (stored,
/// shown): only then does courier hear that they arrived. Dropping a delivery without
/// acking it hands its messages over again when courier redelivers them.
#[derive(Debug)]
pub struct Delivery {
    /// The messages, in courier's order; none the app has had before. Take them
    /// (`std::mem::take`) before acking if the app keeps them.
    pub messages: Vec<Message>,
    seq: u64,
    commands: mpsc::UnboundedSender<Command>,
    settled: bool,
}

impl Delivery {
    pub(crate) fn new(
        seq: u64,
        messages: Vec<Message>,
        commands: mpsc::UnboundedSender<Command>,
    ) -> Self {
        Self {
            messages,
            seq,
            commands,
            settled: false,
        }
    }

    /// The app has these messages: they are marked seen (persisted with the outbox)
    /// and courier's batches that carried them are acked.
    pub fn ack(mut self) {
        self.settled = true;
        let _ = self.commands.send(Command::Ack(self.seq));
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            let _ = self.commands.send(Command::Drop(self.seq));
        }
    }
}
