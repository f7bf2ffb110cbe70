//! The writing half of a connection: a task draining a bounded queue into the socket,
//! flushing when the queue runs empty.
//!
//! The session never waits on a slow socket: [`Outbox::send`] fails with `Full`
//! instead, and the session closes the connection with 1013. A close frame goes
//! through a separate one-shot, so it is sent even when the queue is full.

use std::time::Duration;

use futures_util::{SinkExt, stream::SplitSink};
use hyper_tungstenite::HyperWebsocketStream;
use hyper_tungstenite::tungstenite::Message;
use hyper_tungstenite::tungstenite::protocol::CloseFrame;
use hyper_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::protocol::CloseCode;

type Sink = SplitSink<HyperWebsocketStream, Message>;

/// The session's handle on the writer task.
pub struct Outbox {
    /// Frames to write, bounded; received by the writer task. Dropping it lets the
    /// writer finish what is queued and end.
    frames: mpsc::Sender<Message>,
    /// The close frame; received by the writer, which sends it at once and ends.
    close: Option<oneshot::Sender<CloseFrame>>,
    task: JoinHandle<()>,
    write_timeout: Duration,
}

/// The outbound queue is full: the client does not read fast enough.
#[derive(Debug)]
pub struct Full;

impl Outbox {
    /// Spawns the writer over `sink` with a queue of `capacity` frames; a write that
    /// takes longer than `write_timeout` ends it.
    pub fn spawn(sink: Sink, capacity: usize, write_timeout: Duration) -> Self {
        let (frames, frame_rx) = mpsc::channel(capacity);
        let (close, close_rx) = oneshot::channel();
        let task = tokio::spawn(write_loop(sink, frame_rx, close_rx, write_timeout));
        Self {
            frames,
            close: Some(close),
            task,
            write_timeout,
        }
    }

    /// Completes when the writer has ended (socket failed or stalled).
    pub async fn closed(&self) {
        self.frames.closed().await;
    }

    /// Queues a frame without waiting.
    pub fn send(&self, message: Message) -> Result<(), Full> {
        self.frames.try_send(message).map_err(|_| Full)
    }

    /// Sends the close frame after what is already queued (or, when the queue is
    /// full, ahead of it) and waits for the writer to end.
    pub async fn close(mut self, code: CloseCode, reason: &str) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code.code()),
            reason: reason.to_owned().into(),
        };
        if let Err(unsent) = self.frames.try_send(Message::Close(Some(frame))) {
            if let (Some(close), Message::Close(Some(frame))) =
                (self.close.take(), unsent.into_inner())
            {
                let _ = close.send(frame);
            }
        }
        drop(self.frames);
        let _ = tokio::time::timeout(self.write_timeout * 2, self.task).await;
    }

    /// Writes what is queued, then ends without a close frame (the peer closed).
    pub async fn finish(self) {
        drop(self.frames);
        drop(self.close);
        let _ = tokio::time::timeout(self.write_timeout, self.task).await;
    }
}

async fn write_loop(
    mut sink: Sink,
    mut frames: mpsc::Receiver<Message>,
    mut close: oneshot::Receiver<CloseFrame>,
    write_timeout: Duration,
) {
    let mut close_pending = true;
    loop {
        let message = tokio::select! {
            biased;
            frame = &mut close, if close_pending => match frame {
                Ok(frame) => {
                    let _ = tokio::time::timeout(write_timeout, sink.send(Message::Close(Some(frame)))).await;
                    break;
                }
                Err(_) => {
                    close_pending = false;
                    continue;
                }
            },
            message = frames.recv() => match message {
                Some(message) => message,
                None => {
                    let _ = tokio::time::timeout(write_timeout, sink.flush()).await;
                    break;
                }
            },
        };
        let is_close = message.is_close();
        let written = tokio::time::timeout(write_timeout, async {
            sink.feed(message).await?;
            if frames.is_empty() {
                sink.flush().await?;
            }
            Ok::<_, hyper_tungstenite::tungstenite::Error>(())
        })
        .await;
        match written {
            Ok(Ok(())) if is_close => break,
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                tracing::warn!("socket write stalled: slow consumer, dropping the connection");
                break;
            }
        }
    }
}
