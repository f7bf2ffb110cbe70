//! Replicated acks (`COURIER_REDIS_MIN_REPLICAS` = n > 0): a send's write is
//! followed by `WAIT n <timeout>` on the connection that made it, and the send is
//! acked only if at least n replicas confirmed it; otherwise it fails as
//! `unavailable`, and the client's retry with the same `time_key` writes nothing
//! twice (the dedup record) and waits again.
//!
//! `WAIT` blocks the connection it is sent on until the replicas answer, and covers
//! every write made on that connection before it. So the send scripts run on a
//! connection of their own (one more per instance, or per node on a cluster), never
//! on the shared command connection, whose reads and acks would otherwise queue
//! behind every `WAIT`; and on a single primary they are grouped: while one group's
//! pipeline (`EVALSHA` … `EVALSHA`, `WAIT`) is out, the sends that arrive queue for
//! the next one, so one replica round trip acks many sends. On a cluster each slot's
//! write is one pipeline (`EVALSHA`, `WAIT`), routed as a whole to the slot's primary.
//!
//! A script and its `WAIT` always travel in one pipeline, so they run on the same
//! server connection: a reconnect in between (a failover) fails the pipeline instead
//! of letting a `WAIT` on a fresh connection, which covers nothing, confirm it.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, RedisResult, ScriptInvocation, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot};

use super::TimedConnection;
use super::backend::RedisBackend;
use super::gates::Gates;
use crate::metrics::Metrics;

/// The most sends one group carries.
const MAX_GROUP: usize = 256;

/// Why a replicated write failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// Redis failed the script or the pipeline.
    Redis(RedisError),
    /// The write was made, but fewer replicas than required confirmed it in time.
    NotReplicated {
        /// How many did.
        confirmed: i64,
    },
}

/// What `COURIER_REDIS_MIN_REPLICAS` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaPolicy {
    /// Replicas that must confirm a write (`WAIT`'s first argument).
    pub min_replicas: u32,
    /// How long `WAIT` waits for them.
    pub timeout: Duration,
}

/// Runs scripts followed by `WAIT` on a connection of their own.
pub(super) struct Replicated {
    policy: ReplicaPolicy,
    conn: RedisBackend,
    /// The store's gates: a write (a group, on a single primary) takes a turn in the
    /// `intake` lane like any send.
    gates: Arc<Gates>,
    /// To the grouping task (single node and Sentinel).
    jobs: Option<mpsc::UnboundedSender<Job>>,
}

struct Job {
    invocation: ScriptInvocation<'static>,
    answer: oneshot::Sender<Result<Value, Failure>>,
}

impl Replicated {
    /// Opens the dedicated connection (lazily) and, on a single primary, starts the
    /// grouping task; it ends when every [`Replicated`] handle is gone.
    pub(super) fn start(
        policy: ReplicaPolicy,
        conn: RedisBackend,
        metrics: Arc<Metrics>,
        gates: Arc<Gates>,
    ) -> Arc<Self> {
        let jobs = (!conn.is_cluster()).then(|| {
            let (jobs, queue) = mpsc::unbounded_channel();
            let timed = TimedConnection {
                inner: conn.clone(),
                operation: "send",
                metrics,
                gates: gates.clone(),
            };
            tokio::spawn(group_loop(policy, timed, queue));
            jobs
        });
        Arc::new(Self {
            policy,
            conn,
            gates,
            jobs,
        })
    }

    /// Replicas that must confirm each write.
    pub(super) fn min_replicas(&self) -> u32 {
        self.policy.min_replicas
    }

    /// Runs the script and, in the same pipeline, `WAIT`s for the replicas; returns
    /// the script's reply once they confirmed it.
    pub(super) async fn invoke(
        &self,
        invocation: ScriptInvocation<'static>,
        metrics: &Arc<Metrics>,
    ) -> Result<Value, Failure> {
        match &self.jobs {
            Some(jobs) => {
                let (answer, reply) = oneshot::channel();
                let stopped = || {
                    Failure::Redis(RedisError::from((
                        ErrorKind::Io,
                        "replicated writer stopped",
                    )))
                };
                jobs.send(Job { invocation, answer })
                    .map_err(|_| stopped())?;
                reply.await.map_err(|_| stopped())?
            }
            None => {
                let mut conn = TimedConnection {
                    inner: self.conn.clone(),
                    operation: "send",
                    metrics: metrics.clone(),
                    gates: self.gates.clone(),
                };
                let mut results = run_group(&mut conn, self.policy, &[&invocation]).await;
                results.pop().unwrap_or_else(|| {
                    Err(Failure::Redis(RedisError::from((
                        ErrorKind::Client,
                        "empty replicated write",
                    ))))
                })
            }
        }
    }
}

/// The grouping task: takes what is queued (up to [`MAX_GROUP`]), runs it as one
/// pipeline with one `WAIT`, answers each send, and starts over.
async fn group_loop(
    policy: ReplicaPolicy,
    mut conn: TimedConnection,
    mut queue: mpsc::UnboundedReceiver<Job>,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let invocations: Vec<&ScriptInvocation<'static>> =
            group.iter().map(|job| &job.invocation).collect();
        let results = run_group(&mut conn, policy, &invocations).await;
        for (job, result) in group.into_iter().zip(results) {
            let _ = job.answer.send(result);
        }
    }
}

/// One pipeline: the scripts, then `WAIT`. The scripts not loaded on the server
/// (`NOSCRIPT`, e.g. on a promoted replica) are loaded and run again, with their own
/// `WAIT`. Returns one result per script.
async fn run_group(
    conn: &mut impl ConnectionLike,
    policy: ReplicaPolicy,
    invocations: &[&ScriptInvocation<'static>],
) -> Vec<Result<Value, Failure>> {
    let mut results = pipeline(conn, policy, invocations).await;
    let missing: Vec<usize> = (0..results.len())
        .filter(|&i| {
            matches!(&results[i], Err(Failure::Redis(e))
                if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript))
        })
        .collect();
    if missing.is_empty() {
        return results;
    }
    // Rare (once per script after a failover): each is loaded, even if twice.
    for &i in &missing {
        if let Err(e) = invocations[i].load_async(conn).await {
            for &i in &missing {
                results[i] = Err(Failure::Redis(e.clone()));
            }
            return results;
        }
    }
    let again: Vec<&ScriptInvocation<'static>> = missing.iter().map(|&i| invocations[i]).collect();
    for (i, result) in missing
        .into_iter()
        .zip(pipeline(conn, policy, &again).await)
    {
        results[i] = result;
    }
    results
}

async fn pipeline(
    conn: &mut impl ConnectionLike,
    policy: ReplicaPolicy,
    invocations: &[&ScriptInvocation<'static>],
) -> Vec<Result<Value, Failure>> {
    let mut pipe = redis::pipe();
    for invocation in invocations {
        pipe.invoke_script(invocation);
    }
    pipe.cmd("WAIT")
        .arg(policy.min_replicas)
        .arg(policy.timeout.as_millis().max(1) as u64);
    let replies: RedisResult<Vec<RedisResult<Value>>> =
        pipe.ignore_errors().query_async(conn).await;
    let mut replies = match replies {
        Ok(replies) if replies.len() == invocations.len() + 1 => replies,
        Ok(_) => {
            let e = RedisError::from((ErrorKind::Client, "short pipeline reply"));
            return invocations
                .iter()
                .map(|_| Err(Failure::Redis(e.clone())))
                .collect();
        }
        Err(e) => {
            return invocations
                .iter()
                .map(|_| Err(Failure::Redis(e.clone())))
                .collect();
        }
    };
    let confirmed = match replies.pop() {
        Some(Ok(Value::Int(confirmed))) => Ok(confirmed),
        Some(Err(e)) => Err(e),
        _ => Err(RedisError::from((
            ErrorKind::Client,
            "unexpected WAIT reply",
        ))),
    };
    replies
        .into_iter()
        .map(|reply| {
            let value = reply.map_err(Failure::Redis)?;
            match &confirmed {
                Ok(confirmed) if *confirmed >= i64::from(policy.min_replicas) => Ok(value),
                Ok(confirmed) => Err(Failure::NotReplicated {
                    confirmed: *confirmed,
                }),
                Err(e) => Err(Failure::Redis(e.clone())),
            }
        })
        .collect()
}
