//! courier's entry point: configuration, logging, the server, signals.

use std::process::ExitCode;

use courier::config::Config;
use courier::server::Server;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc malloc: allocation was ~20 % of courier's CPU under load
/// in the profile (BENCHMARKS.md), and a faster allocator cut CPU per delivered message
/// by ~30 % in the bench's A/B run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("courier: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match courier::telemetry::init(&config.log_format) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("courier: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    let server = match Server::bind(config, shutdown.clone()).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("courier: {e}");
            return ExitCode::from(2);
        }
    };
    tokio::spawn(async move {
        courier::server::shutdown_signal().await;
        shutdown.cancel();
    });
    server.run().await;
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    ExitCode::SUCCESS
}
