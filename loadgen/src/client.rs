//! One simulated client: a WebSocket connection from its own 127.0.0.x source address,
//! that acks every delivery batch and, when it is a sender, sends batches on schedule.
//! The connection and the frames are `courier-client`'s (`Connection`, `protocol`):
//! the repository's one copy of the transport and of the wire format.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use courier_client::protocol::{OutgoingMessage, ServerFrameRef};
use courier_client::tungstenite::protocol::WebSocketConfig;
use courier_client::{ClientFrame, CloseCode, ConnectError, ConnectOptions, Connection};
use courier_client::{Incoming, TimeKey};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::args::Pace;
use crate::storm::{self, Storm};
use crate::tracker::Tracker;

/// The sending period, the same for every sender.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub end: Instant,
}

/// What every connection task shares.
pub struct Ctx {
    pub tracker: Arc<Tracker>,
    pub url: String,
    pub pace: Pace,
    pub senders: usize,
    pub batch: usize,
    pub window: usize,
    pub text_bytes: usize,
    pub connect_timeout: Duration,
    pub max_connect_failures: usize,
    /// Handshakes in progress at once; each task holds a permit while connecting.
    pub connecting: Semaphore,
    /// Set once by the main task when sending may start; read by the senders.
    pub schedule: watch::Receiver<Option<Schedule>>,
    /// Becomes true when the run ends; every task then closes its connection.
    pub stop: watch::Receiver<bool>,
    pub connect: ConnectStats,
    /// Set in a connect storm: a lost connection waits for `go` and comes back.
    pub storm: Option<Storm>,
}

/// Outcome of the connection phase.
#[derive(Default)]
pub struct ConnectStats {
    pub open: AtomicUsize,
    pub failed: AtomicUsize,
    /// Attempts skipped after too many failures.
    pub skipped: AtomicUsize,
    pub give_up: AtomicBool,
    pub first_error: Mutex<Option<String>>,
}

impl ConnectStats {
    pub fn done(&self) -> usize {
        self.open.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
            + self.skipped.load(Ordering::Relaxed)
    }

    pub fn fail(&self, error: String, max_failures: usize) {
        let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
        if failed >= max_failures {
            self.give_up.store(true, Ordering::Relaxed);
        }
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        first.get_or_insert(error);
    }
}

/// One client's identity.
pub struct ClientSpec {
    pub index: usize,
    pub user: u64,
    pub token: String,
    pub source: Ipv4Addr,
    /// `(sender number k, chat id)` when this client sends.
    pub sender: Option<(usize, u64)>,
}

/// A sent batch awaiting courier's answer.
struct Pending {
    time_key: u64,
    first_seq: usize,
    count: usize,
    sent_ns: u64,
}

/// Connects (bounded by the semaphore and the timeout), then serves until stop.
pub async fn run_client(spec: ClientSpec, ctx: Arc<Ctx>) {
    let ws = {
        let Ok(_permit) = ctx.connecting.acquire().await else {
            return;
        };
        if ctx.connect.give_up.load(Ordering::Relaxed) || *ctx.stop.borrow() {
            ctx.connect.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match connect(&spec, &ctx.url, ctx.connect_timeout).await {
            Ok(ws) => {
                ctx.connect.open.fetch_add(1, Ordering::Relaxed);
                ws
            }
            Err(ConnectError::Timeout(_)) => {
                return ctx
                    .connect
                    .fail("connect timed out".into(), ctx.max_connect_failures);
            }
            Err(e) => return ctx.connect.fail(e.to_string(), ctx.max_connect_failures),
        }
    };
    let mut ws = ws;
    // A storm takes each client through one loss of its connection.
    let mut storms_left = usize::from(ctx.storm.is_some());
    loop {
        let mut client = Client {
            ws,
            index: spec.index,
            user: spec.user,
            sender: spec.sender,
            pending: VecDeque::new(),
            next_time_key: 1,
            ctx: ctx.clone(),
        };
        let served = client.serve().await;
        ctx.tracker.abandoned(client.pending.len() as u64);
        match (served, &ctx.storm) {
            (Err(_), Some(storm)) if storms_left > 0 => {
                storms_left -= 1;
                // The lost connection's socket is closed before reconnecting: held
                // during the retries, 19,900 of them and their new attempts would
                // exceed this process's open-file limit, and the storm would measure
                // loadgen's EMFILE instead of courier.
                drop(client);
                match storm::rejoin(&spec, &ctx, storm).await {
                    Some(again) => ws = again,
                    None => return,
                }
            }
            (served, _) => {
                if let Err(reason) = served {
                    ctx.tracker.dropped(reason);
                }
                let _ = client
                    .ws
                    .close(CloseCode::Normal, Duration::from_secs(3))
                    .await;
                return;
            }
        }
    }
}

/// Opens one connection as `spec`'s user from its source address, within `timeout`,
/// with small buffers (4 KiB read, no write buffering: 20,000 of them share one
/// process).
pub async fn connect(
    spec: &ClientSpec,
    url: &str,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    let lean = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    ConnectOptions::new(url)
        .token(&spec.token)
        .local_addr(spec.source.into())
        .websocket_config(lean)
        .connect_timeout(timeout)
        .connect()
        .await
}

struct Client {
    ws: Connection,
    index: usize,
    user: u64,
    sender: Option<(usize, u64)>,
    pending: VecDeque<Pending>,
    next_time_key: u64,
    ctx: Arc<Ctx>,
}

impl Client {
    /// Returns `Err(reason)` when the connection was lost before the stop signal.
    async fn serve(&mut self) -> Result<(), String> {
        let ctx = self.ctx.clone();
        let mut stop = ctx.stop.clone();
        let mut schedule_rx = ctx.schedule.clone();
        let mut schedule = *schedule_rx.borrow_and_update();
        let mut next_at: Option<Instant> = None;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let now = Instant::now();
            let mut wake_at = None;
            if let (Some((k, _)), Some(s)) = (self.sender, schedule) {
                match ctx.pace {
                    Pace::Max if now < s.start => wake_at = Some(s.start),
                    Pace::Max if now < s.end => {
                        while self.pending.len() < ctx.window {
                            self.send_batch().await?;
                        }
                    }
                    Pace::Rate(rate) => {
                        let interval =
                            Duration::from_secs_f64(ctx.senders as f64 * ctx.batch as f64 / rate);
                        let at = next_at.get_or_insert_with(|| {
                            s.start + interval.mul_f64(k as f64 / ctx.senders as f64)
                        });
                        while *at <= now && *at < s.end {
                            if self.pending.len() < ctx.window {
                                self.send_batch().await?;
                            } else {
                                ctx.tracker.counters.stalls.fetch_add(1, Ordering::Relaxed);
                            }
                            *at += interval;
                        }
                        if *at < s.end {
                            wake_at = Some(*at);
                        }
                    }
                    _ => {}
                }
            }
            tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                changed = schedule_rx.changed(), if schedule.is_none() => {
                    if changed.is_ok() {
                        schedule = *schedule_rx.borrow_and_update();
                    }
                }
                incoming = self.ws.next() => match incoming {
                    Ok(Incoming::Text(text)) => self.on_text(&text).await?,
                    Ok(Incoming::Binary(_)) => ctx.tracker.error("loadgen_unparsed_frame"),
                    Ok(Incoming::Closed(Some(close))) => {
                        return Err(format!("closed by courier: {} {}", close.code, close.reason));
                    }
                    Ok(Incoming::Closed(None)) => return Err("socket closed".into()),
                    Err(e) => return Err(format!("socket error: {e}")),
                },
                _ = sleep_until(wake_at) => {}
            }
        }
    }

    async fn send_batch(&mut self) -> Result<(), String> {
        let ctx = &self.ctx;
        let Some((k, chat_id)) = self.sender else {
            return Ok(());
        };
        let tracker = &ctx.tracker;
        let first_seq = tracker.register_sends(k, ctx.batch);
        let sent_ns = tracker.now_ns();
        let time_key = self.next_time_key;
        self.next_time_key += 1;
        let messages = (0..ctx.batch)
            .map(|i| {
                let mut text = String::with_capacity(ctx.text_bytes.max(64));
                let _ = write!(
                    text,
                    "t={sent_ns};s={k};q={};r={};",
                    first_seq + i,
                    tracker.run
                );
                let padding = ctx.text_bytes.saturating_sub(text.len());
                text.extend(std::iter::repeat_n('x', padding));
                OutgoingMessage {
                    sender_id: self.user,
                    chat_id,
                    content_text: text,
                }
            })
            .collect();
        let frame = ClientFrame::Messages {
            time_key: TimeKey::from(time_key),
            messages,
        };
        self.pending.push_back(Pending {
            time_key,
            first_seq,
            count: ctx.batch,
            sent_ns,
        });
        self.ws
            .send(&frame)
            .await
            .map_err(|e| format!("send failed: {e}"))
    }

    async fn on_text(&mut self, text: &str) -> Result<(), String> {
        let tracker = self.ctx.tracker.clone();
        // Borrowed: the delivered texts are read in place, not copied.
        let Ok(frame) = ServerFrameRef::decode(text) else {
            tracker.error("loadgen_unparsed_frame");
            return Ok(());
        };
        match frame {
            ServerFrameRef::Messages { time_key, messages } => {
                let texts = messages.iter().map(|m| m.content_text.as_ref());
                tracker.delivered(self.index, texts);
                let ack = ClientFrame::Ack {
                    time_key: TimeKey::from(time_key),
                };
                self.ws
                    .send(&ack)
                    .await
                    .map_err(|e| format!("ack failed: {e}"))?;
            }
            ServerFrameRef::Ack { time_key } => {
                if let Some(p) = time_key.as_u64().and_then(|tk| self.take_pending(tk)) {
                    tracker.acked(self.sender_k(), p.first_seq, p.count, p.sent_ns);
                }
            }
            ServerFrameRef::Error(error) => {
                tracker.error(error.code.as_str());
                let time_key = error.time_key.and_then(TimeKey::as_u64);
                if let Some(p) = time_key.and_then(|tk| self.take_pending(tk)) {
                    tracker.refused(self.sender_k(), p.first_seq, p.count);
                }
            }
        }
        Ok(())
    }

    fn sender_k(&self) -> usize {
        self.sender.map(|(k, _)| k).unwrap_or_default()
    }

    fn take_pending(&mut self, time_key: u64) -> Option<Pending> {
        let i = self.pending.iter().position(|p| p.time_key == time_key)?;
        self.pending.remove(i)
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
