//! A Rust client for courier, the WebSocket gateway that delivers chat messages
//! through Redis Streams consumer groups. Written from the contract
//! (`docs/DESIGN.md`) only: it does not depend on the server crate. The crate's
//! README has the whole API on one page, with what each error and close code makes
//! the client do and what exactly-once into the app costs.
//!
//! Two layers:
//!
//! - [`Connection`] ([`connection`]): one WebSocket connection, frame by frame, with
//!   typed frames ([`protocol`]). No protocol state: what a test harness or a load
//!   generator drives directly.
//! - [`Client`] ([`client`]): the SDK. courier promises at-least-once delivery up to
//!   the socket; the client carries it into the app as *exactly once*: each
//!   [`send`](Client::send) resolves when courier has durably written the message (it
//!   is batched, resent after reconnects with the same `time_key`, retried on
//!   `unavailable`), and each delivered message reaches the app once (redeliveries
//!   are dropped by message id) and is acked only after the app acks it. An optional
//!   outbox file keeps both promises across restarts of the app.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut deliveries) = courier_client::Client::builder("ws://127.0.0.1:8080/ws")
//!     .token(std::env::var("COURIER_TOKEN")?)
//!     .device("laptop")
//!     .connect()?;
//! client.send(1, "hello").await?; // written for every member of chat 1
//! while let Some(delivery) = deliveries.recv().await {
//!     for message in &delivery.messages {
//!         println!("{}: {}", message.sender_id, message.content_text);
//!     }
//!     delivery.ack(); // only now does courier hear that they arrived
//! }
//! # Ok(()) }
//! ```

pub mod client;
pub mod connection;
pub mod protocol;

pub use client::{
    Acked, Backoff, Client, ClientBuilder, ClientError, ConnectionState, Deliveries, Delivery,
    Disconnect, Event, SendError,
};
pub use connection::{ConnectError, ConnectOptions, Connection, Incoming, Refusal, TokenPlacement};
pub use protocol::{ClientFrame, CloseCode, CloseInfo, ErrorCode, Message, ServerFrame, TimeKey};
/// The WebSocket library underneath (for [`WebSocketConfig`](tungstenite::protocol::WebSocketConfig)
/// and the errors [`SocketError`](connection::SocketError) wraps).
pub use tokio_tungstenite::tungstenite;
