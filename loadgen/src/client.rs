//! One simulated client: a WebSocket connection from its own 127.0.0.x source address,
//! that acks every delivery batch and, when it is a sender, sends batches on schedule.
//! The connection itself is the kit's transport (`courier_testkit::ws`).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use courier_testkit::ws::{ConnectError, ConnectOptions, Frame, WsConnection};
use serde::Deserialize;
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

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    time_key: Option<u64>,
    #[serde(borrow)]
    messages: Option<Vec<Delivered<'a>>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delivered<'a> {
    #[serde(borrow)]
    content_text: Cow<'a, str>,
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
        match tokio::time::timeout(ctx.connect_timeout, connect(&spec, &ctx.url)).await {
            Ok(Ok(ws)) => {
                ctx.connect.open.fetch_add(1, Ordering::Relaxed);
                ws
            }
            Ok(Err(e)) => return ctx.connect.fail(e.to_string(), ctx.max_connect_failures),
            Err(_) => {
                return ctx
                    .connect
                    .fail("connect timed out".into(), ctx.max_connect_failures);
            }
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
                let _ = tokio::time::timeout(Duration::from_secs(3), client.ws.close()).await;
                return;
            }
        }
    }
}

/// Opens one connection as `spec`'s user from its source address, with small
/// buffers (20,000 of them share one process).
pub async fn connect(spec: &ClientSpec, url: &str) -> Result<WsConnection, ConnectError> {
    let options = ConnectOptions {
        source: Some(spec.source.into()),
        lean: true,
        ..ConnectOptions::default()
    }
    .header("token", &spec.token);
    WsConnection::connect(url, &options).await
}

struct Client {
    ws: WsConnection,
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
                frame = self.ws.next_frame() => match frame {
                    Some(Ok(Frame::Text(text))) => self.on_text(text.as_str()).await?,
                    Some(Ok(Frame::Close(frame))) => {
                        return Err(match frame {
                            Some((code, reason)) => format!("closed by courier: {code} {reason}"),
                            None => "closed by courier".into(),
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("socket error: {e}")),
                    None => return Err("socket closed".into()),
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
        let mut frame = String::with_capacity(64 + ctx.batch * (ctx.text_bytes + 64));
        let _ = write!(
            frame,
            r#"{{"type":"messages","time_key":{time_key},"messages":["#
        );
        for i in 0..ctx.batch {
            if i > 0 {
                frame.push(',');
            }
            let _ = write!(
                frame,
                r#"{{"sender_id":{},"chat_id":{chat_id},"content_text":""#,
                self.user
            );
            let start = frame.len();
            let _ = write!(
                frame,
                "t={sent_ns};s={k};q={};r={};",
                first_seq + i,
                tracker.run
            );
            let written = frame.len() - start;
            frame.extend(std::iter::repeat_n(
                'x',
                ctx.text_bytes.saturating_sub(written),
            ));
            frame.push_str("\"}");
        }
        frame.push_str("]}");
        self.pending.push_back(Pending {
            time_key,
            first_seq,
            count: ctx.batch,
            sent_ns,
        });
        self.ws
            .send_text(frame)
            .await
            .map_err(|e| format!("send failed: {e}"))
    }

    async fn on_text(&mut self, text: &str) -> Result<(), String> {
        let tracker = self.ctx.tracker.clone();
        let Ok(frame) = serde_json::from_str::<Incoming<'_>>(text) else {
            tracker.error("loadgen_unparsed_frame");
            return Ok(());
        };
        match (frame.kind.as_ref(), frame.time_key) {
            ("messages", Some(time_key)) => {
                let messages = frame.messages.unwrap_or_default();
                tracker.delivered(self.index, messages.iter().map(|m| m.content_text.as_ref()));
                let ack = format!(r#"{{"type":"ack","time_key":{time_key}}}"#);
                self.ws
                    .send_text(ack)
                    .await
                    .map_err(|e| format!("ack failed: {e}"))?;
            }
            ("ack", Some(time_key)) => {
                if let Some(p) = self.take_pending(time_key) {
                    tracker.acked(self.sender_k(), p.first_seq, p.count, p.sent_ns);
                }
            }
            ("error", time_key) => {
                tracker.error(frame.code.as_deref().unwrap_or("?"));
                if let Some(p) = time_key.and_then(|tk| self.take_pending(tk)) {
                    tracker.refused(self.sender_k(), p.first_seq, p.count);
                }
            }
            _ => tracker.error("loadgen_unexpected_frame"),
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
