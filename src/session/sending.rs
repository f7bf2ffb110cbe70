//! The send half of a session: a client batch goes to the node's
//! [`Publisher`](crate::publish::Publisher), which validates it whole and writes it
//! in one atomic step; the client gets the ack — or one error frame, and nothing is
//! written.
//!
//! A connection's batches are written one at a time, in the order they came, each by
//! a task of its own, while the session goes on serving the rest: acks and
//! deliveries do not wait for a send that waits its turn at the store's gate
//! (`store/gate.rs`) under overload. (A task, not a future the session polls: a
//! write handed its turn must not wait for the session to come back from a read
//! that waits for a turn too — with every turn taken that way, nothing would move.)
//! At most [`SEND_QUEUE`] batches (and [`SEND_QUEUE_BYTES`] of frames) per connection
//! are accepted and not yet answered; while that many are, the session reads nothing
//! more from the socket, so TCP pushes back on the sender instead of courier refusing
//! its batches.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::error;

use super::{Ending, Session, store_error};
use crate::node::Node;
use crate::protocol::{ErrorCode, ProtocolError, SendBatch, ServerFrame, TimeKey};
use crate::publish::PublishError;
use crate::store::SendOutcome;

/// Batches of one connection accepted and not yet answered (the one being written
/// included). A client with fewer batches unanswered at a time (its window) never
/// has its socket left unread: its acks keep flowing while its sends wait their
/// turn, however long that is. (With a bound equal to a client's window, its acks
/// waited behind its sends, past the ack timeout under overload: BENCHMARKS.md,
/// "Overload (issue 12)".) Bigger windows gain nothing under overload: the writes
/// are the bottleneck.
pub(super) const SEND_QUEUE: usize = 16;

/// Bytes of the frames of one connection's batches accepted and not yet answered:
/// big batches are held back sooner (a maximal frame fills it alone).
pub(super) const SEND_QUEUE_BYTES: usize = 1 << 20;

/// A batch's `time_key` and what became of it.
pub(super) type Written = (TimeKey, Result<SendOutcome, PublishError>);

/// A batch being written, its `time_key` (for an answer should the task fail) and
/// its frame's size.
type Writing = (TimeKey, usize, JoinHandle<Written>);

/// A connection's batches between their frame and their answer.
#[derive(Default)]
pub(super) struct Sends {
    /// The batch being written, if any.
    writing: Option<Writing>,
    /// Batches waiting for it, oldest first, with their frames' sizes.
    queued: VecDeque<(SendBatch, usize)>,
    /// The frames' sizes of every batch here.
    bytes: usize,
}

impl Sends {
    /// Whether another batch may be accepted (and so another frame read).
    pub fn has_room(&self) -> bool {
        usize::from(self.writing.is_some()) + self.queued.len() < SEND_QUEUE
            && self.bytes < SEND_QUEUE_BYTES
    }

    /// Whether a batch is being written.
    pub fn busy(&self) -> bool {
        self.writing.is_some()
    }

    /// Waits for the batch being written (forever when none is). Cancel-safe: the
    /// write goes on where it was at the next call.
    pub async fn written(&mut self) -> Written {
        let Some((time_key, _, task)) = self.writing.as_mut() else {
            return std::future::pending().await;
        };
        let written = task.await.unwrap_or_else(|e| {
            error!(error = %e, "a send task failed");
            let error = ProtocolError::new(ErrorCode::Internal, "internal error");
            (
                *time_key,
                Err(PublishError::Refused(error.with_time_key(*time_key))),
            )
        });
        if let Some((_, size, _)) = self.writing.take() {
            self.bytes -= size;
        }
        written
    }
}

impl Session {
    /// A client batch: written at once if no other batch of this connection is,
    /// otherwise queued behind them. `size` is its frame's.
    pub(super) fn on_send(&mut self, batch: SendBatch, size: usize) {
        self.sends.bytes += size;
        if self.sends.busy() {
            self.sends.queued.push_back((batch, size));
        } else {
            self.sends.writing = Some(self.write(batch, size));
        }
    }

    /// A batch written (or refused): answers it and starts the next one.
    pub(super) fn on_written(
        &mut self,
        time_key: TimeKey,
        outcome: Result<SendOutcome, PublishError>,
    ) -> Result<(), Ending> {
        if let Some((next, size)) = self.sends.queued.pop_front() {
            self.sends.writing = Some(self.write(next, size));
        }
        match outcome {
            Ok(_) => self.send_frame(&ServerFrame::Ack { time_key }),
            Err(PublishError::Refused(error)) => self.reply_error(&error),
            Err(PublishError::Store(e)) => {
                self.reply_error(&store_error(e).with_time_key(time_key))
            }
        }
    }

    /// Answers every batch accepted, for a session that ends with its socket still
    /// open: what a client sent before it closed is written and acked.
    pub(super) async fn finish_sends(&mut self) -> Result<(), Ending> {
        while self.sends.busy() {
            let (time_key, outcome) = self.sends.written().await;
            self.on_written(time_key, outcome)?;
        }
        Ok(())
    }

    /// Starts the write of one batch; its trace links to the connection's span. A
    /// write whose connection ends meanwhile still runs to its end (the client,
    /// unanswered, sends the batch again: the dedup record absorbs it).
    fn write(&self, batch: SendBatch, size: usize) -> Writing {
        let node: Arc<Node> = self.node.clone();
        let span = self.span.clone();
        let sender = self.claims.id;
        let time_key = batch.time_key;
        let task = tokio::spawn(async move {
            let outcome = node.publisher.publish(sender, batch, Some(&span)).await;
            (time_key, outcome)
        });
        (time_key, size, task)
    }
}
