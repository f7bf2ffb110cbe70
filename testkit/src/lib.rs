//! courier's test kit: one copy of every tool that starts or talks to courier outside
//! `src/`, shared by the integration tests (`tests/`), the benchmark driver
//! (`loadgen`'s `courier-bench`), the load generator and `courier-testenv` (the kit as a
//! process, for tests written in other languages).
//!
//! - [`RedisNode`]: one private `redis-server` (plain, TLS, cluster node, or any extra
//!   arguments such as `--replicaof` or a Sentinel configuration) on a free loopback
//!   port, in its own directory; killed with SIGKILL and started again on its port.
//! - [`RedisCluster`]: three primaries (optionally a replica each, TLS, AOF) joined with
//!   `redis-cli --cluster create`.
//! - [`RedisServer`]: the Redis a test runs against, one node or a cluster as
//!   `COURIER_TEST_REDIS` says, with [`TestConnection`] for fixtures and assertions;
//!   [`Fixtures`] (`cmd`, `create_chat`, `xlen`, `pending`) works on all three.
//! - [`Courier`]: a courier process on a free port, with its log file; stopped,
//!   killed and started again on the same port.
//! - [`token`], [`sign`]: HS256 tokens; [`WsClient`]: the protocol-speaking test
//!   client over `courier-client`'s `Connection`, the one WebSocket transport and
//!   frame codec of the kit, the load generator and the SDK.
//! - [`wait_for`]: awaiting what no frame announces, always with a timeout and a
//!   message saying what did not happen.
//!
//! Every process the kit starts is killed and reaped when its owner is dropped. Ports
//! are chosen outside the kernel's ephemeral range ([`free_port`]), and a server whose
//! port was taken anyway is started again on another one.

mod client;
mod courier;
mod http;
mod ports;
pub mod process;
mod redis;
mod token;
mod wait;

use std::time::Duration;

pub use client::{Delivery, Refusal, WsClient, ids, texts};
pub use courier::{Courier, CourierOptions, find_courier_bin};
pub use http::{answers_healthz, http_get, http_request, try_http_request};
pub use ports::free_port;
pub use redis::{
    Certificates, ClusterOptions, Fixtures, MODE_VARIABLE, NodeOptions, RedisCluster, RedisNode,
    RedisServer, TestConnection, append_to_aof_in, cluster_mode, command, consumers,
    create_chat_in, key_slot, pending_in, wait_for_pending,
};
pub use token::{SECRET, expiry, sign, token, token_with};
pub use wait::{Wait, wait_for};

/// How long any single awaited event may take.
pub const WAIT: Duration = Duration::from_secs(10);
