//! # courier
//!
//! A WebSocket gateway that delivers chat messages through Redis Streams consumer
//! groups. The contract (wire protocol, Redis layout, configuration) is DESIGN.md;
//! this crate is its implementation.
//!
//! ## The path of a message
//!
//! 1. **Connect** ([`server`], [`auth`]): `GET /ws` with a JWT; the token and the
//!    `device` parameter are checked before the upgrade. [`session::prepare`]
//!    subscribes the user's wake-up channel and joins the device's consumer group,
//!    claiming what earlier connections of the device left pending.
//! 2. **Send** ([`protocol`], [`store::send`]): a client batch is decoded and
//!    validated whole, membership is read from `chat:<id>`, then one Lua script
//!    allocates ids and, for every recipient, XADDs the inbox entry, RPUSHes the
//!    legacy list item and PUBLISHes the wake-up — atomically, deduplicated by the
//!    batch's `time_key`. On a Redis Cluster the same writes run as one atomic
//!    script per recipient slot ([`store::backend`] decides). The client gets its
//!    ack after Redis confirmed.
//! 3. **Deliver** ([`session`], [`store::inbox`], [`store::notify`]): each
//!    connection is one consumer. A wake-up (one pub/sub subscription per instance)
//!    or the periodic safety poll makes it read (XREADGROUP, never blocking) its own
//!    pending entries, then new ones, and push them as batches, with a bounded
//!    number of batches unacked.
//! 4. **Ack**: the client's ack of a batch's `time_key` XACKs exactly its entries.
//!
//! ## Modules
//! - [`config`]: every setting (env var, flag, default).
//! - [`server`]: listener, routes, pre-upgrade checks, shutdown.
//! - [`api`]: the HTTP API for backends and operators (`/api/v1/`): publish, pending
//!   summary, dead-letter replay.
//! - [`auth`]: token extraction and JWT validation.
//! - [`protocol`]: frames, error codes, close codes (pure).
//! - [`publish`]: the send path shared by WebSocket clients and the HTTP API.
//! - [`session`]: one connection: reader loop, sends, deliveries and acks, in-flight
//!   batches, abuse limits, writer.
//! - [`store`]: the Redis layout: keys, scripts, send, inbox, notifications, ops;
//!   single node or cluster behind one connection type.
//! - [`metrics`]: the Prometheus registry served at `/metrics`.
//! - [`telemetry`]: logs, OTLP traces, trace context in stream entries.

pub mod api;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod protocol;
pub mod publish;
pub mod server;
pub mod session;
pub mod store;
pub mod telemetry;
