//! loadgen: a bounded load run against one courier instance on loopback.
//!
//! 1. Creates one chat per sender directly in Redis (`chat:<id>`: the sender and the
//!    `fanout` connections after it), a single server or a cluster.
//! 2. Opens `--connections` WebSocket connections (`courier-client`'s `Connection`,
//!    with small buffers), one user each, bound to source addresses 127.0.0.1..N in
//!    turn (each has its own ephemeral ports), with its own fd limit raised to the hard
//!    limit.
//! 3. Senders send at `--rate` or as fast as `--window` allows for warm-up + duration;
//!    every delivery batch is acked at once.
//! 4. After sending stops, waits (at most `--drain` s) until every acked message has
//!    reached every recipient, then reconciles: loss, duplicates, latency.
//! 5. Prints a human summary and, as the last line, a one-line JSON summary.
//!
//! `--idle` only opens the connections and holds them (memory per connection, Redis
//! commands per idle connection). `--storm` opens them, waits while courier is killed
//! or restarted, and has them all reconnect at once (joins/s, errors, Redis commands
//! per join).

mod args;
mod client;
mod probes;
mod redis_nodes;
mod report;
mod run;
mod storm;
mod tracker;

use std::process::ExitCode;

use clap::Parser;

use args::{Args, Plan};

fn main() -> ExitCode {
    let plan = match Plan::from_args(Args::parse()) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if plan.args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(plan.args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let limit = plan.max_runtime();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("loadgen: run exceeded --max-runtime ({limit:?}); exiting");
        std::process::exit(3);
    });
    match runtime.block_on(run::run(plan)) {
        Ok(report) => {
            report.print();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
