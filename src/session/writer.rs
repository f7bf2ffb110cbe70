//! The writing half of a connection: a task draining a bounded queue into the socket,
//! flushing when the queue runs empty.
//!
//! The session never waits on a slow socket: [`Outbox::send`] fails with `Full`
//! instead, and the session closes the connection with 1013. A close frame that
//! does not fit in a full queue is sent ahead of it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use hyper_tungstenite::tungstenite::Message;
use hyper_tungstenite::tungstenite::protocol::CloseFrame;
use hyper_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::protocol::CloseCode;

/// The session's handle on the writer task. Dropping it lets the writer finish what
/// is queued and end.
pub struct Outbox {
    queue: Arc<Queue>,
    task: Option<JoinHandle<()>>,
    write_timeout: Duration,
}

/// What the session and the writer share. The frames live in a `VecDeque` that
/// holds no memory until the first frame and only as much as the longest backlog
/// since: an idle connection pays for the struct alone (a channel would allocate its
/// first block of 32 slots at once, ≈ 2 KiB per connection).
struct Queue {
    state: Mutex<QueueState>,
    capacity: usize,
    /// Wakes the writer: something was queued, or the session is done.
    to_writer: Notify,
    /// Wakes the session: the writer has ended.
    writer_ended: Notify,
}

#[derive(Default)]
struct QueueState {
    frames: VecDeque<Message>,
    /// A close frame that did not fit in the queue: sent ahead of it.
    urgent_close: Option<CloseFrame>,
    /// The session will queue nothing more: write what is queued and end.
    session_done: bool,
    /// The writer has ended (socket failed or stalled, or its work is done).
    writer_done: bool,
}

/// The outbound queue is full: the client does not read fast enough.
#[derive(Debug)]
pub struct Full;

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the state inconsistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Outbox {
    /// Spawns the writer over `sink` with a queue of `capacity` frames; a write that
    /// takes longer than `write_timeout` ends it.
    pub fn spawn<S>(sink: S, capacity: usize, write_timeout: Duration) -> Self
    where
        S: Sink<Message> + Unpin + Send + 'static,
    {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            capacity,
            to_writer: Notify::new(),
            writer_ended: Notify::new(),
        });
        let task = tokio::spawn(write_loop(sink, queue.clone(), write_timeout));
        Self {
            queue,
            task: Some(task),
            write_timeout,
        }
    }

    /// Completes when the writer has ended (socket failed or stalled).
    pub async fn closed(&self) {
        loop {
            let ended = self.queue.writer_ended.notified();
            if self.queue.lock().writer_done {
                return;
            }
            ended.await;
        }
    }

    /// Queues a frame without waiting.
    pub fn send(&self, message: Message) -> Result<(), Full> {
        {
            let mut state = self.queue.lock();
            if state.writer_done || state.frames.len() >= self.queue.capacity {
                return Err(Full);
            }
            state.frames.push_back(message);
        }
        self.queue.to_writer.notify_one();
        Ok(())
    }

    /// Sends the close frame after what is already queued (or, when the queue is
    /// full, ahead of it) and waits for the writer to end.
    pub async fn close(mut self, code: CloseCode, reason: &str) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code.code()),
            reason: reason.to_owned().into(),
        };
        {
            let mut state = self.queue.lock();
            if state.frames.len() < self.queue.capacity {
                state.frames.push_back(Message::Close(Some(frame)));
            } else {
                state.urgent_close = Some(frame);
            }
        }
        self.wait_for_writer(self.write_timeout * 2).await;
    }

    /// Writes what is queued, then ends without a close frame (the peer closed).
    pub async fn finish(mut self) {
        self.wait_for_writer(self.write_timeout).await;
    }

    /// Tells the writer the session is done and waits (at most `limit`) for it to end.
    async fn wait_for_writer(&mut self, limit: Duration) {
        self.end_session();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(limit, task).await;
        }
    }

    fn end_session(&self) {
        self.queue.lock().session_done = true;
        self.queue.to_writer.notify_one();
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.end_session();
    }
}

/// What the writer does next.
enum Next {
    Write(Message),
    Close(CloseFrame),
    Finish,
    Wait,
}

fn next(queue: &Queue) -> Next {
    let mut state = queue.lock();
    if let Some(frame) = state.urgent_close.take() {
        Next::Close(frame)
    } else if let Some(message) = state.frames.pop_front() {
        Next::Write(message)
    } else if state.session_done {
        Next::Finish
    } else {
        Next::Wait
    }
}

async fn write_loop<S>(mut sink: S, queue: Arc<Queue>, write_timeout: Duration)
where
    S: Sink<Message> + Unpin,
{
    loop {
        let message = match next(&queue) {
            Next::Write(message) => message,
            Next::Close(frame) => {
                let close = sink.send(Message::Close(Some(frame)));
                let _ = tokio::time::timeout(write_timeout, close).await;
                break;
            }
            Next::Finish => {
                let _ = tokio::time::timeout(write_timeout, sink.flush()).await;
                break;
            }
            Next::Wait => {
                queue.to_writer.notified().await;
                continue;
            }
        };
        let is_close = message.is_close();
        let written = tokio::time::timeout(write_timeout, async {
            sink.feed(message).await?;
            if queue.lock().frames.is_empty() {
                sink.flush().await?;
            }
            Ok::<_, S::Error>(())
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
    let mut state = queue.lock();
    state.writer_done = true;
    // What was never written goes now, not when the session ends.
    state.frames = VecDeque::new();
    drop(state);
    queue.writer_ended.notify_one();
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// A socket stand-in that takes frames only while open, and records them.
    #[derive(Clone, Default)]
    struct Gate(Arc<Mutex<GateState>>);

    #[derive(Default)]
    struct GateState {
        open: bool,
        written: Vec<Message>,
        waiting: Option<Waker>,
    }

    impl Gate {
        fn open(&self) {
            let mut state = self.0.lock().unwrap();
            state.open = true;
            if let Some(waker) = state.waiting.take() {
                waker.wake();
            }
        }

        fn written(&self) -> Vec<Message> {
            self.0.lock().unwrap().written.clone()
        }
    }

    impl Sink<Message> for Gate {
        type Error = ();

        fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
            let mut state = self.0.lock().unwrap();
            if state.open {
                Poll::Ready(Ok(()))
            } else {
                state.waiting = Some(cx.waker().clone());
                Poll::Pending
            }
        }

        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), ()> {
            self.0.lock().unwrap().written.push(item);
            Ok(())
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn texts(messages: &[Message]) -> Vec<String> {
        messages
            .iter()
            .map(|m| match m {
                Message::Close(Some(frame)) => format!("close {}", u16::from(frame.code)),
                other => other.to_text().unwrap_or("?").to_owned(),
            })
            .collect()
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn queued_frames_are_written_in_order_and_finish_waits_for_them() {
        let gate = Gate::default();
        gate.open();
        let outbox = Outbox::spawn(gate.clone(), 4, TIMEOUT);
        for text in ["a", "b", "c"] {
            outbox.send(Message::text(text)).unwrap();
        }
        outbox.finish().await;
        assert_eq!(texts(&gate.written()), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_frames_and_a_close_goes_ahead_of_it() {
        let gate = Gate::default();
        let outbox = Outbox::spawn(gate.clone(), 2, TIMEOUT);
        outbox.send(Message::text("a")).unwrap();
        // The writer takes "a" and waits on the closed socket; the queue fills.
        tokio::task::yield_now().await;
        outbox.send(Message::text("b")).unwrap();
        outbox.send(Message::text("c")).unwrap();
        assert!(
            outbox.send(Message::text("d")).is_err(),
            "the queue holds 2"
        );

        let mut closing = Box::pin(outbox.close(CloseCode::Overloaded, "slow consumer"));
        assert!(futures_util::poll!(&mut closing).is_pending());
        gate.open();
        closing.await;
        assert_eq!(texts(&gate.written()), ["a", "close 1013"]);
    }

    #[tokio::test]
    async fn a_stalled_socket_ends_the_writer_and_the_session_hears_of_it() {
        let gate = Gate::default();
        let outbox = Outbox::spawn(gate.clone(), 2, Duration::from_millis(100));
        outbox.send(Message::text("a")).unwrap();
        outbox.closed().await;
        assert!(
            outbox.send(Message::text("b")).is_err(),
            "nobody writes any more"
        );
        assert!(gate.written().is_empty());
    }
}
