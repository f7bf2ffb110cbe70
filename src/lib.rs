//! # courier
//!
//! A WebSocket gateway that delivers chat messages through Redis Streams consumer
//! groups. The contract (wire protocol, Redis layout, configuration) is DESIGN.md;
//! this crate is its implementation.
//!
//! ## How a message flows
//!
//! 1. **Connect** ([`server`] → [`session::upgrade()`], [`auth`]): `GET /ws` with a
//!    JWT; the token and the `device` parameter are checked before the upgrade. The
//!    session subscribes the user's wake-up channel ([`store::notify`]) and joins the
//!    device's consumer group ([`store::inbox`]), claiming what earlier connections
//!    of the device left pending.
//! 2. **Send** ([`protocol`], [`publish`], [`store::send`]): a client batch (or an
//!    HTTP API batch, [`api`]) is decoded, then the node's [`publish::Publisher`]
//!    validates it whole; the store reads the chats' members from `chat:<id>`, then
//!    one Lua script allocates ids and, for every recipient, XADDs the inbox entries
//!    ([`store::entry`] encodes them), RPUSHes the legacy list items and PUBLISHes the
//!    wake-up — atomically, deduplicated by the batch's `time_key`. On a Redis Cluster
//!    the same writes run as one atomic script per recipient slot ([`store::backend`]
//!    decides). The sender gets its ack after Redis confirmed.
//! 3. **Fan-out** ([`store::notify`]): the instance's one pub/sub subscription per
//!    connected user wakes every local connection of each recipient.
//! 4. **Deliver** ([`session`], [`store::inbox`]): each connection is one consumer.
//!    Its join reads the first batch; after that a wake-up makes it read
//!    (XREADGROUP, never blocking) its own pending entries, then new ones, and push them as batches (the store's
//!    [`store::StoredMessage`] becomes the wire's [`protocol::DeliveredMessage`] in the
//!    session), with a bounded number of batches unacked.
//! 5. **Ack** ([`session`]): the client's ack of a batch's `time_key` XACKs exactly its
//!    entries.
//!
//! ## Modules, by layer
//!
//! Layers import downward only; [`server`] is a leaf that only `main` imports.
//!
//! - [`server`]: the accept loop, the routes, graceful shutdown of every connection.
//! - Edges that speak to clients: [`session`] (one WebSocket connection: the upgrade,
//!   the reader loop, sends, deliveries and acks, in-flight batches, abuse limits, the
//!   writer) and [`api`] (the HTTP API for backends and operators, `/api/v1/`).
//! - [`node`]: the shared state of the instance — store, notifier, publisher,
//!   metrics, authenticator, the edges' settings (their leaf `settings` modules),
//!   connections per user, the shutdown token and the session tracker.
//! - Services: [`publish`] (the one send path), [`store`] (the Redis layout: keys,
//!   entry schema, scripts, send, inbox, notifications, ops; single node or cluster
//!   behind one connection type), [`auth`] (token extraction and JWT validation),
//!   [`metrics`] (the Prometheus registry), [`telemetry`] (logs, OTLP traces).
//! - Foundations: [`config`] (every setting, parsed once into typed values),
//!   [`protocol`] (frames, error and close codes, wire limits; pure), [`http`] (the
//!   HTTP replies).

pub mod api;
pub mod auth;
pub mod config;
pub mod http;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod publish;
pub mod server;
pub mod session;
pub mod store;
pub mod telemetry;
