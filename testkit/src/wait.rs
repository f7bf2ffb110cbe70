//! Waiting for what no frame announces (an XACK landing, a log line, a replica
//! promoted, a retried send finally acked): a check is run until it holds, every wait
//! is bounded, and a wait that runs out fails with what did not happen.
//!
//! ```ignore
//! wait_for("the ack to land", async || redis.pending(2, "default") == 0).await;
//! Wait::new("the retry to be acked")
//!     .every(Duration::from_millis(100))
//!     .until(async || { client.send_batch(2, 1, &batch).await; client.recv_json().await["type"] == "ack" })
//!     .await;
//! ```

use std::time::{Duration, Instant};

use crate::WAIT;

/// How often a check runs unless told otherwise.
pub const EVERY: Duration = Duration::from_millis(10);

/// Runs `check` every 10 ms until it returns true, failing with `what` after
/// [`WAIT`].
pub async fn wait_for(what: &str, check: impl AsyncFnMut() -> bool) {
    Wait::new(what).until(check).await;
}

/// A wait: what it waits for, for how long at most, how often it checks.
#[derive(Debug, Clone)]
pub struct Wait<'a> {
    what: &'a str,
    timeout: Duration,
    every: Duration,
}

impl<'a> Wait<'a> {
    /// A wait for `what` (said in the failure: "timed out waiting for {what}"), at most
    /// [`WAIT`], checking every 10 ms.
    pub fn new(what: &'a str) -> Self {
        Self {
            what,
            timeout: WAIT,
            every: EVERY,
        }
    }

    /// Gives up after `timeout` instead.
    pub fn within(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// Runs the check every `every` instead (a check that sends something, such as a
    /// retried batch, is paced like a client would pace its retries).
    pub fn every(self, every: Duration) -> Self {
        Self { every, ..self }
    }

    /// Runs `check` until it returns true; panics with `what` when the time is up,
    /// including while a check is still running.
    pub async fn until(self, mut check: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, check()).await {
                Ok(true) => return,
                Ok(false) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(self.every).await;
                }
                _ => panic!("timed out waiting for {} ({:?})", self.what, self.timeout),
            }
        }
    }

    /// [`Self::until`] for synchronous code (starting servers, outside any runtime):
    /// the thread sleeps between checks.
    pub fn until_blocking(self, check: impl FnMut() -> bool) {
        if let Err(e) = self.try_until_blocking(check) {
            panic!("{e}");
        }
    }

    /// [`Self::until_blocking`] that returns the failure ("timed out waiting for
    /// ...") instead of panicking, for programs that report it (`courier-testenv`).
    pub fn try_until_blocking(self, mut check: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        while !check() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out waiting for {} ({:?})",
                    self.what, self.timeout
                ));
            }
            std::thread::sleep(self.every);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_that_holds_ends_the_wait() {
        let mut calls = 0;
        wait_for("the third call", async || {
            calls += 1;
            calls == 3
        })
        .await;
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out waiting for nothing at all")]
    async fn a_wait_that_runs_out_says_what_did_not_happen() {
        Wait::new("nothing at all")
            .within(Duration::from_millis(50))
            .until(async || false)
            .await;
    }

    #[tokio::test]
    #[should_panic(expected = "timed out waiting for a hung check")]
    async fn a_hung_check_is_bounded_too() {
        Wait::new("a hung check")
            .within(Duration::from_millis(50))
            .until(async || std::future::pending().await)
            .await;
    }
}
