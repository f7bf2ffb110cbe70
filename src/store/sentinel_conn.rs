//! A connection to a Sentinel-managed primary that follows failovers.
//!
//! The sentinels are asked where the primary is (`SENTINEL MASTER <name>` of every
//! sentinel; the newest configuration epoch among those that do not flag it down
//! wins, and `ROLE` on that address must say `master`), on short-lived connections. Commands run on one
//! auto-reconnecting [`ConnectionManager`] to that address. A command that fails in a
//! way that says the primary may have moved — the connection broke or was refused,
//! timed out, or the server answers `READONLY`/`MASTERDOWN` (a demoted primary) —
//! makes the sentinels be asked again, and no command uses the connection until they
//! named a primary; when they name another address, the connection is replaced by
//! one to it. Meanwhile commands fail, and the store answers them `unavailable`. The number of connections stays one per
//! [`SentinelPrimary`]: a replaced connection is dropped.
//!
//! A pub/sub connection loses its subscriptions with a replacement: its push channel
//! then gets a `Disconnection` push, exactly as when a connection drops, so the
//! notifier subscribes again and wakes every connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, IntoConnectionInfo, Pipeline, ProtocolVersion,
    PushInfo, PushKind, RedisError, RedisFuture, RedisResult, ServerErrorKind, TlsCertificates,
    Value,
};
use tokio::sync::{Mutex, mpsc};

use super::topology::SentinelTopology;

/// The shortest time between two lookups of the primary.
const LOOKUP_INTERVAL: Duration = Duration::from_millis(200);

/// A connection to whichever server the sentinels name as the primary. Cheap to
/// clone: clones share the connection.
#[derive(Clone)]
pub struct SentinelPrimary {
    shared: Arc<Shared>,
}

/// How to build a connection to a primary once it is found.
pub(super) struct NodeConfig {
    /// RESP2, or RESP3 for a connection that carries pub/sub pushes.
    pub protocol: ProtocolVersion,
    /// The CA to trust for TLS, if not the system roots.
    pub certificates: Option<TlsCertificates>,
    /// The connection manager's settings (timeouts, retries, push sender).
    pub config: ConnectionManagerConfig,
    /// Where pushes go (a synthetic `Disconnection` when the primary is replaced).
    pub pushes: Option<mpsc::UnboundedSender<PushInfo>>,
    /// The longest a lookup of the primary may take.
    pub timeout: Duration,
}

struct Shared {
    topology: SentinelTopology,
    node: NodeConfig,
    /// The primary's address (`host:port`) and the connection to it.
    current: RwLock<Option<(String, ConnectionManager)>>,
    /// Held during a lookup, with the time of the last one: lookups run one at a time.
    lookup: Mutex<Option<Instant>>,
    /// Set while a background lookup is queued or running.
    background: AtomicBool,
    /// Set by a failure that says the primary may have moved, cleared by the next
    /// lookup that finds one: meanwhile no command uses the connection, which would
    /// otherwise reconnect by itself to whatever answers at the old address (the old
    /// primary restarted, empty, still calling itself primary until the sentinels
    /// demote it) and write there.
    suspect: AtomicBool,
}

impl SentinelPrimary {
    /// A connection that looks the primary up with its first command.
    pub(super) fn new(topology: SentinelTopology, node: NodeConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                topology,
                node,
                current: RwLock::new(None),
                lookup: Mutex::new(None),
                background: AtomicBool::new(false),
                suspect: AtomicBool::new(false),
            }),
        }
    }

    fn current(&self) -> Option<ConnectionManager> {
        let current = self
            .shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|(_, conn)| conn.clone())
    }

    /// The connection to the primary, looking the primary up first if there is none.
    pub async fn connection(&self) -> RedisResult<ConnectionManager> {
        match self.current() {
            Some(conn) if !self.shared.suspect.load(Ordering::Acquire) => Ok(conn),
            _ => self.look_up().await,
        }
    }

    /// Asks the sentinels for the primary and, if it moved, replaces the connection.
    /// A lookup that ran less than [`LOOKUP_INTERVAL`] ago (by another caller) is not
    /// repeated: its outcome stands.
    async fn look_up(&self) -> RedisResult<ConnectionManager> {
        let mut last = self.shared.lookup.lock().await;
        if let Some(at) = *last
            && at.elapsed() < LOOKUP_INTERVAL
        {
            return self
                .current()
                .filter(|_| !self.shared.suspect.load(Ordering::Acquire))
                .ok_or_else(|| {
                    RedisError::from((ErrorKind::Io, "no primary found through the sentinels"))
                });
        }
        *last = Some(Instant::now());
        let found = tokio::time::timeout(self.shared.node.timeout, self.find_primary()).await;
        let (host, port) = match found {
            Ok(found) => found?,
            Err(_) => {
                return Err(RedisError::from((
                    ErrorKind::Io,
                    "no sentinel named a primary in time",
                )));
            }
        };
        let address = format!("{host}:{port}");
        if let Some(conn) = self.current_at(&address) {
            self.shared.suspect.store(false, Ordering::Release);
            return Ok(conn);
        }
        let conn = self.open_node(&host, port)?;
        let replaced = {
            let mut current = self
                .shared
                .current
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let replaced = current.replace((address.clone(), conn.clone())).is_some();
            self.shared.suspect.store(false, Ordering::Release);
            replaced
        };
        if replaced {
            tracing::warn!(primary = %address, master = %self.shared.topology.master_name,
                "the sentinels name a new primary; reconnected to it");
            if let Some(pushes) = &self.shared.node.pushes {
                let _ = pushes.send(PushInfo {
                    kind: PushKind::Disconnection,
                    data: Vec::new(),
                });
            }
        } else {
            tracing::info!(primary = %address, master = %self.shared.topology.master_name,
                "primary found through the sentinels");
        }
        Ok(conn)
    }

    /// The current connection if it goes to `address`.
    fn current_at(&self, address: &str) -> Option<ConnectionManager> {
        let current = self
            .shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .filter(|(at, _)| at == address)
            .map(|(_, conn)| conn.clone())
    }

    /// The primary's host and port, as the sentinels name it and `ROLE` confirms.
    /// Every sentinel is asked (`SENTINEL MASTER <name>`, at once); of the answers
    /// that do not flag the primary down, the one with the newest configuration epoch
    /// wins: a sentinel that has not yet learnt of a failover names the old primary,
    /// which may be back already, empty and about to become a replica. (The redis
    /// crate's `sentinel` module takes the first sentinel's answer instead.)
    async fn find_primary(&self) -> RedisResult<(String, u16)> {
        let answers = futures_util::future::join_all(
            self.shared
                .topology
                .sentinels
                .iter()
                .map(|url| self.ask_sentinel(url)),
        )
        .await;
        let mut last_error = None;
        let mut best: Option<(u64, String, u16)> = None;
        for answer in answers {
            match answer {
                Ok(Some(named)) if best.as_ref().is_none_or(|b| named.0 > b.0) => {
                    best = Some(named);
                }
                Ok(_) => {}
                Err(e) => last_error = Some(e),
            }
        }
        let Some((_, host, port)) = best else {
            return Err(last_error.unwrap_or_else(|| {
                RedisError::from((ErrorKind::Io, "no sentinel names a primary that is up"))
            }));
        };
        let client = self.node_client(&host, port, ProtocolVersion::RESP2)?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.short_lived())
            .await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        match role.first() {
            Some(Value::BulkString(role)) if role == b"master" => Ok((host, port)),
            _ => Err(RedisError::from((
                ErrorKind::Io,
                "the server the sentinels name is not (yet) a primary",
            ))),
        }
    }

    /// What one sentinel says: the primary's configuration epoch, host and port, or
    /// `None` if it flags the primary down.
    async fn ask_sentinel(&self, url: &str) -> RedisResult<Option<(u64, String, u16)>> {
        let info = url.into_connection_info()?;
        let client = match &self.shared.node.certificates {
            Some(certificates) if self.shared.topology.node_scheme == "rediss" => {
                Client::build_with_tls(info, certificates.clone())?
            }
            _ => Client::open(info)?,
        };
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.short_lived())
            .await?;
        let master: HashMap<String, String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(&self.shared.topology.master_name)
            .query_async(&mut conn)
            .await?;
        let flags = master.get("flags").map(String::as_str).unwrap_or_default();
        if !flags.split(',').any(|f| f == "master")
            || flags.split(',').any(|f| f == "s_down" || f == "o_down")
        {
            return Ok(None);
        }
        let field = |name: &str| master.get(name).cloned().unwrap_or_default();
        let (Ok(port), Ok(epoch)) = (field("port").parse(), field("config-epoch").parse()) else {
            return Ok(None);
        };
        Ok(Some((epoch, field("ip"), port)))
    }

    /// Settings of a connection that only asks one question.
    fn short_lived(&self) -> AsyncConnectionConfig {
        let timeout = Some(self.shared.node.timeout);
        AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
    }

    /// A client of the data node at `host:port` speaking `protocol`.
    fn node_client(&self, host: &str, port: u16, protocol: ProtocolVersion) -> RedisResult<Client> {
        let info = self
            .shared
            .topology
            .node_url(host, port)
            .into_connection_info()?;
        let settings = info.redis_settings().clone().set_protocol(protocol);
        let info = info.set_redis_settings(settings);
        match &self.shared.node.certificates {
            None => Client::open(info),
            Some(certificates) => Client::build_with_tls(info, certificates.clone()),
        }
    }

    /// A lazy connection to the data node at `host:port`.
    fn open_node(&self, host: &str, port: u16) -> RedisResult<ConnectionManager> {
        let client = self.node_client(host, port, self.shared.node.protocol)?;
        ConnectionManager::new_lazy_with_config(client, self.shared.node.config.clone())
    }

    /// After a failed command: if the error says the primary may have moved, asks the
    /// sentinels again in the background (once at a time).
    fn observe<T>(&self, result: &RedisResult<T>) {
        let Err(error) = result else { return };
        if !may_have_moved(error) {
            return;
        }
        self.shared.suspect.store(true, Ordering::Release);
        if self.shared.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.look_up().await {
                tracing::debug!(error = %e, "primary lookup through the sentinels failed");
            }
            this.shared.background.store(false, Ordering::Release);
        });
    }

    /// Checks that the connected server is still the primary (`ROLE`), and looks the
    /// primary up again if not. For a connection that may sit idle on a demoted
    /// primary (the pub/sub connection).
    pub async fn verify(&self) -> RedisResult<()> {
        let mut conn = self.connection().await?;
        let role: RedisResult<Vec<Value>> = redis::cmd("ROLE").query_async(&mut conn).await;
        let result = match role {
            Ok(role) if matches!(role.first(), Some(Value::BulkString(b)) if b == b"master") => {
                Ok(())
            }
            Ok(_) => Err(RedisError::from((
                ErrorKind::Server(ServerErrorKind::ReadOnly),
                "the connected server is no longer the primary",
            ))),
            Err(e) => Err(e),
        };
        self.observe(&result);
        result
    }
}

/// Whether a command's error says the primary may be elsewhere now.
fn may_have_moved(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

impl ConnectionLike for SentinelPrimary {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = match self.connection().await {
                Ok(mut conn) => conn.req_packed_command(cmd).await,
                Err(e) => Err(e),
            };
            self.observe(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = match self.connection().await {
                Ok(mut conn) => conn.req_packed_commands(pipeline, offset, count).await,
                Err(e) => Err(e),
            };
            self.observe(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
