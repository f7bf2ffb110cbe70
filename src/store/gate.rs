//! The gate in front of the command connection: how much Redis work is in flight,
//! whose turn is next, and whether Redis is worth waiting for at all.
//!
//! - **A bound on commands in flight** (`COURIER_REDIS_MAX_INFLIGHT` per instance; on
//!   a cluster per primary, each with a gate of its own: `gates.rs`).
//!   A command first waits here for a permit, then is sent; the command timeout
//!   (`COURIER_REDIS_TIMEOUT_MS`) covers only the time from sending to the reply. So
//!   however many commands the clients cause, the queue inside the multiplexed
//!   connection stays short, and time spent queueing in courier is never reported as
//!   a Redis failure (`unavailable`); what waits here is slowed down, not refused.
//!   A permit is given back as soon as the command's reply (or its timeout) wakes the
//!   task that awaits it ([`in_flight`]), not when that task next runs: on a busy
//!   instance thousands of tasks are ready to run, and a command whose reply has
//!   come in but whose task waits its turn costs Redis nothing. (Held until the
//!   task ran, 1,024 permits allowed only ~17,000 commands/s at 10,000 senders while
//!   Redis was 35 % idle: BENCHMARKS.md, "Overload (issue 12)".)
//! - **Lanes** ([`Lane`]): a freed permit goes to the oldest waiter of the most urgent
//!   lane: acks and joins, then catch-up reads (own pending entries, reclaims, dead
//!   letters), then reads of new entries, then sends. What drains Redis goes before
//!   what fills it: an ack never queues behind the sends that overload Redis, and a
//!   session's reads (which it awaits before it reads its client's next frames,
//!   acks included) do not either, so a client that acks what it gets has nothing
//!   left for the ack timeout. The queue forms where it is harmless: at the sends,
//!   which then push back on their clients. Reads cannot starve sends: each read
//!   follows a wake-up, which follows a send (or the rare safety poll).
//! - **Fail fast while Redis is down**: after a command fails because the
//!   connection was refused or broken (not because Redis was slow), every command
//!   waiting or arriving is answered `unavailable` at once, and one background
//!   `PING` at a time probes Redis until it answers. Sessions thus keep answering
//!   their clients during an outage instead of each waiting for a reconnect attempt.
//!   Single node only: on a cluster one node's outage must not refuse the commands
//!   for the others (the cluster client reports per node).

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use redis::RedisError;
use tokio::sync::oneshot;

/// How urgent a command is. Lower lanes are served first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Acks, joins, leaves, pings: small, and what frees Redis of work.
    Control = 0,
    /// Reads of entries already delivered once: a connection's own pending history,
    /// reclaims of timed-out entries, dead letters.
    CatchUp = 1,
    /// Reads of entries never delivered (`>`).
    Read = 2,
    /// Sends (and operators' requests): the work an overload is made of.
    Intake = 3,
}

const LANES: usize = 4;

impl Lane {
    /// The lane of a store operation (the names of `courier_redis_command_seconds`).
    pub fn of(operation: &str) -> Self {
        match operation {
            "ack" | "join" | "leave" | "ping" => Self::Control,
            "read_pending" | "reclaim" | "dead_letter" => Self::CatchUp,
            "read_new" => Self::Read,
            _ => Self::Intake,
        }
    }

    /// The lane's name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::CatchUp => "catch_up",
            Self::Read => "read",
            Self::Intake => "intake",
        }
    }
}

/// Redis is known to be down: the command was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisDown;

/// What a command's result says about Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Redis answered (a value or an error reply).
    Answered,
    /// The connection is refused or broken: Redis is down.
    Down,
    /// No verdict (a timeout: Redis may only be slow).
    Unknown,
}

impl Health {
    /// Sorts a command's result.
    pub fn of<T>(result: &Result<T, RedisError>) -> Self {
        match result {
            Ok(_) => Self::Answered,
            Err(e) if e.is_timeout() => Self::Unknown,
            Err(e) if e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error() => {
                Self::Down
            }
            Err(e) if e.is_cluster_error() => Self::Unknown,
            Err(_) => Self::Answered,
        }
    }
}

/// The gate: shared by every clone of the store.
pub struct Gate {
    fail_fast: bool,
    state: Mutex<State>,
}

/// A waiter is told `Ok` with a permit handed over, or `Err` when Redis went down.
type Waiter = oneshot::Sender<Result<(), RedisDown>>;

struct State {
    /// Permits not held by any command.
    free: usize,
    /// Commands waiting, per lane, oldest first. Invariant: `free > 0` only when all
    /// are empty (a freed permit goes to a waiter first).
    waiting: [VecDeque<Waiter>; LANES],
    /// Redis refused or broke the connection and has not answered since.
    down: bool,
    /// A background probe is running.
    probing: bool,
}

/// A command's right to be in flight; given back when dropped.
pub struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        release(&mut state);
    }
}

/// Hands a freed permit to the oldest waiter of the most urgent lane, or frees it.
fn release(state: &mut State) {
    for lane in &mut state.waiting {
        while let Some(waiter) = lane.pop_front() {
            // A waiter whose command was dropped meanwhile is skipped.
            if waiter.send(Ok(())).is_ok() {
                return;
            }
        }
    }
    state.free += 1;
}

impl Gate {
    /// A gate letting `limit` commands be in flight at once (at least 1); with
    /// `fail_fast`, commands are refused at once while Redis is known to be down.
    pub fn new(limit: usize, fail_fast: bool) -> Arc<Self> {
        let limit = limit.max(1);
        Arc::new(Self {
            fail_fast,
            state: Mutex::new(State {
                free: limit,
                waiting: Default::default(),
                down: false,
                probing: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every step; a panic elsewhere cannot break it.
        match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Waits for a permit in `lane`; `Err` at once (or as soon as it is known) while
    /// Redis is down. Dropping the future gives up the place (and a permit handed to
    /// it meanwhile goes to the next waiter).
    pub async fn enter(self: &Arc<Self>, lane: Lane) -> Result<Permit, RedisDown> {
        let receiver = {
            let mut state = self.lock();
            if state.down {
                return Err(RedisDown);
            }
            if state.free > 0 {
                state.free -= 1;
                return Ok(Permit { gate: self.clone() });
            }
            let (sender, receiver) = oneshot::channel();
            state.waiting[lane as usize].push_back(sender);
            receiver
        };
        let mut place = Place {
            gate: self,
            receiver: Some(receiver),
        };
        let told = match place.receiver.as_mut() {
            Some(receiver) => receiver.await,
            None => return Err(RedisDown),
        };
        place.receiver = None;
        match told {
            Ok(Ok(())) => Ok(Permit { gate: self.clone() }),
            // Told Redis is down, or (never, the gate outlives its waiters) dropped.
            Ok(Err(RedisDown)) | Err(_) => Err(RedisDown),
        }
    }

    /// Takes note of what a command's result says about Redis. Returns true when
    /// Redis has just been found down and a probe should start (the caller owns the
    /// connection to probe with).
    pub fn observe(&self, health: Health) -> bool {
        if !self.fail_fast {
            return false;
        }
        let mut state = self.lock();
        match health {
            Health::Answered => {
                state.down = false;
                false
            }
            Health::Unknown => false,
            Health::Down => {
                if !state.down {
                    state.down = true;
                    for lane in &mut state.waiting {
                        for waiter in lane.drain(..) {
                            let _ = waiter.send(Err(RedisDown));
                        }
                    }
                }
                let start = !state.probing;
                state.probing = true;
                start
            }
        }
    }

    /// Runs the probe: `ping` every `every` until Redis answers, then opens the gate.
    pub async fn probe<F, Fut>(&self, every: Duration, mut ping: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), RedisError>>,
    {
        loop {
            tokio::time::sleep(every).await;
            let answered = Health::of(&ping().await) == Health::Answered;
            let mut state = self.lock();
            if answered || !state.down {
                state.down = false;
                state.probing = false;
                return;
            }
        }
    }

    /// Commands waiting for a permit, per lane (for tests and diagnostics).
    #[cfg(test)]
    fn waiting(&self) -> [usize; LANES] {
        let state = self.lock();
        [0, 1, 2, 3].map(|lane| state.waiting[lane].len())
    }
}

/// Runs `request` (one command sent on the multiplexed connection) holding `permit`
/// until the request first wakes its task — its reply or its timeout came in, or
/// (rarely) the connection's queue had room again — or completes, whichever is first.
/// What wakes the task gives the permit back at once, on the thread that completed
/// the reply, so the bound counts commands Redis has yet to answer rather than tasks
/// yet to run. (So a command handed a permit by a reply that says Redis went down may
/// be sent before that reply is observed; it then fails on its own, `unavailable`
/// too. A request dropped unanswered keeps its permit until its waker is dropped —
/// at the latest when its reply, or the connection's end, completes it.)
pub async fn in_flight<F: Future>(permit: Permit, request: F) -> F::Output {
    let holder = Arc::new(PermitHolder {
        permit: Mutex::new(Some(permit)),
        task: AtomicWaker::new(),
    });
    let waker = Waker::from(holder.clone());
    let mut request = pin!(request);
    std::future::poll_fn(|cx| {
        holder.task.register(cx.waker());
        match request.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(output) => {
                holder.release();
                Poll::Ready(output)
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// The permit of a command in flight, and the task awaiting the command.
struct PermitHolder {
    permit: Mutex<Option<Permit>>,
    task: AtomicWaker,
}

impl PermitHolder {
    /// Gives the permit back (once; later calls find it gone).
    fn release(&self) {
        let permit = self
            .permit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(permit);
    }
}

impl Wake for PermitHolder {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.release();
        self.task.wake();
    }
}

/// A waiter's place in line. If its command is dropped after a permit was handed to
/// it but before it took it, the permit goes on to the next waiter.
struct Place<'a> {
    gate: &'a Gate,
    receiver: Option<oneshot::Receiver<Result<(), RedisDown>>>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let Some(mut receiver) = self.receiver.take() else {
            return;
        };
        // Under the lock, so that no permit is handed over between the check and the
        // close.
        let mut state = self.gate.lock();
        receiver.close();
        if let Ok(Ok(())) = receiver.try_recv() {
            release(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn a_freed_permit_goes_to_the_most_urgent_lane_first_then_in_arrival_order() {
        let gate = Gate::new(1, true);
        let held = gate.enter(Lane::Intake).await.unwrap();
        let mut intake = Box::pin(gate.enter(Lane::Intake));
        let mut read = Box::pin(gate.enter(Lane::Read));
        let mut catch_up = Box::pin(gate.enter(Lane::CatchUp));
        let mut control_1 = Box::pin(gate.enter(Lane::Control));
        let mut control_2 = Box::pin(gate.enter(Lane::Control));
        assert!(intake.as_mut().now_or_never().is_none());
        assert!(read.as_mut().now_or_never().is_none());
        assert!(catch_up.as_mut().now_or_never().is_none());
        assert!(control_1.as_mut().now_or_never().is_none());
        assert!(control_2.as_mut().now_or_never().is_none());
        assert_eq!(gate.waiting(), [2, 1, 1, 1]);

        drop(held);
        let permit = control_1.await.unwrap();
        assert!(catch_up.as_mut().now_or_never().is_none());
        drop(permit);
        let permit = control_2.await.unwrap();
        drop(permit);
        let permit = catch_up.await.unwrap();
        assert!(intake.as_mut().now_or_never().is_none());
        drop(permit);
        let permit = read.await.unwrap();
        assert!(intake.as_mut().now_or_never().is_none());
        drop(permit);
        drop(intake.await.unwrap());
        assert_eq!(gate.lock().free, 1);
    }

    #[tokio::test]
    async fn a_waiter_given_up_passes_its_permit_on() {
        let gate = Gate::new(1, true);
        let held = gate.enter(Lane::Intake).await.unwrap();
        let mut first = Box::pin(gate.enter(Lane::Intake));
        let mut second = Box::pin(gate.enter(Lane::Intake));
        assert!(first.as_mut().now_or_never().is_none());
        assert!(second.as_mut().now_or_never().is_none());
        // The permit is handed to `first`, which is dropped before it takes it.
        drop(held);
        drop(first);
        drop(second.await.unwrap());
        assert_eq!(gate.lock().free, 1);
    }

    #[tokio::test]
    async fn while_redis_is_down_waiters_and_newcomers_are_refused_until_it_answers() {
        let gate = Gate::new(1, true);
        let held = gate.enter(Lane::Intake).await.unwrap();
        let mut waiting = Box::pin(gate.enter(Lane::Control));
        assert!(waiting.as_mut().now_or_never().is_none());

        assert!(
            gate.observe(Health::Down),
            "the first failure starts a probe"
        );
        assert!(!gate.observe(Health::Down), "one probe at a time");
        assert_eq!(waiting.await.err(), Some(RedisDown));
        drop(held);
        assert_eq!(gate.enter(Lane::Control).await.err(), Some(RedisDown));

        let mut answers = [false, true].into_iter();
        gate.probe(Duration::from_millis(1), || {
            let answer = answers.next().unwrap_or(true);
            async move {
                if answer {
                    Ok(())
                } else {
                    Err(RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::ConnectionRefused,
                    )))
                }
            }
        })
        .await;
        assert!(gate.enter(Lane::Intake).await.is_ok());
    }

    #[tokio::test]
    async fn without_fail_fast_a_broken_connection_refuses_nothing() {
        let gate = Gate::new(1, false);
        assert!(!gate.observe(Health::Down));
        assert!(gate.enter(Lane::Intake).await.is_ok());
    }

    #[tokio::test]
    async fn a_permit_is_given_back_when_the_reply_wakes_the_task_not_when_it_runs() {
        let gate = Gate::new(1, true);
        let (reply, replied) = oneshot::channel::<u32>();
        let permit = gate.enter(Lane::Intake).await.unwrap();
        let mut command = Box::pin(in_flight(permit, replied));
        assert!(command.as_mut().now_or_never().is_none());
        let mut next = Box::pin(gate.enter(Lane::Intake));
        assert!(next.as_mut().now_or_never().is_none(), "the permit is held");

        // The reply comes in; the command's task has not run since.
        reply.send(7).unwrap();
        let next = next.now_or_never().expect("the permit was given back");
        assert!(next.is_ok());
        assert_eq!(command.await, Ok(7));
        drop(next);
        assert_eq!(gate.lock().free, 1);
    }

    #[tokio::test]
    async fn a_command_that_completes_at_once_gives_its_permit_back() {
        let gate = Gate::new(1, true);
        let permit = gate.enter(Lane::Control).await.unwrap();
        assert_eq!(in_flight(permit, async { 3 }).await, 3);
        assert_eq!(gate.lock().free, 1);
    }

    #[test]
    fn a_timeout_says_nothing_about_whether_redis_is_down() {
        let timeout: Result<(), _> = Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        )));
        assert_eq!(Health::of(&timeout), Health::Unknown);
        let refused: Result<(), _> = Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(Health::of(&refused), Health::Down);
        assert_eq!(Health::of(&Ok::<_, RedisError>(())), Health::Answered);
    }
}
