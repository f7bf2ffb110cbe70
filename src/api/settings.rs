//! The HTTP API's settings, built once from the configuration. A leaf: it imports
//! only the configuration, so the node can hold it without importing the API.

use crate::config::Config;

/// What the API checks before it serves a request.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// The key backends present as a bearer credential (`COURIER_API_KEY`); `None`:
    /// only service tokens are accepted.
    pub api_key: Option<String>,
    /// Largest request body, in bytes: the WebSocket frame limit
    /// (`COURIER_MAX_FRAME_BYTES`), since a body is a batch as a frame carries it.
    pub max_body_bytes: usize,
}

impl From<&Config> for ApiSettings {
    fn from(config: &Config) -> Self {
        Self {
            api_key: config.api_key.clone(),
            max_body_bytes: config.max_frame_bytes,
        }
    }
}
