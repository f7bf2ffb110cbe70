//! Logging: `tracing` with a `RUST_LOG` filter (default `info`), human-readable or
//! JSON (`COURIER_LOG_FORMAT=json`). Tokens and message texts are never logged.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, from `main`.
pub fn init(log_format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log_format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
