//! courier's entry point: configuration, logging, the node, the server, signals.

use std::process::ExitCode;
use std::sync::Arc;

use courier::config::Config;
use courier::node::Node;
use courier::server;

/// mimalloc instead of glibc malloc: allocation was ~20 % of courier's CPU under load
/// in the profile (BENCHMARKS.md), and a faster allocator cut CPU per delivered message
/// by ~30 % in the bench's A/B run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => return refuse(e),
    };
    let telemetry = match courier::telemetry::init(config.log_format) {
        Ok(telemetry) => telemetry,
        Err(e) => return refuse(e),
    };
    let node = match Node::open(&config) {
        Ok(node) => node,
        Err(e) => return refuse(e),
    };
    let listener = match server::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => return refuse(e),
    };
    server::run(listener, Arc::new(node), server::shutdown_signal()).await;
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    ExitCode::SUCCESS
}

/// A setting that cannot be used: one line on stderr, exit code 2.
fn refuse(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("courier: {e}");
    ExitCode::from(2)
}
