//! loadgen's side of Redis, one server or a cluster: a connection named `loadgen` to
//! every node (the probes sample each and sum them), and the chats of the run.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::{AsyncConnectionConfig, Client as RedisClient, Pipeline};

use crate::args::{RedisTarget, loopback_addr};
use crate::probes;
use crate::tracker::Layout;

const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A named connection to every node: the server, or every node CLUSTER NODES lists on
/// the first seed (each of which must be on loopback too).
pub async fn connect(target: &RedisTarget) -> Result<Vec<MultiplexedConnection>, String> {
    let mut first = connect_named(&target.urls[0]).await?;
    if !target.cluster {
        return Ok(vec![first]);
    }
    let listing: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut first)
        .await
        .map_err(|e| format!("Redis CLUSTER NODES: {e}"))?;
    let mut nodes = Vec::new();
    for hostport in cluster_node_addrs(&listing) {
        loopback_addr(hostport, 6379).map_err(|e| format!("cluster node: {e}"))?;
        nodes.push(connect_named(&target.node_url(hostport)).await?);
    }
    if nodes.is_empty() {
        return Err("CLUSTER NODES lists no node with an address".into());
    }
    Ok(nodes)
}

async fn connect_named(url: &str) -> Result<MultiplexedConnection, String> {
    let client = RedisClient::open(url).map_err(|e| format!("--redis: {e}"))?;
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECTION_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("cannot connect to Redis: {e}"))?;
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(probes::CLIENT_NAME)
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| format!("Redis CLIENT SETNAME: {e}"))?;
    Ok(conn)
}

/// The `host:port` of every node of a CLUSTER NODES reply
/// (`<id> <host:port@bus[,hostname]> <flags> …`), but those without an address.
fn cluster_node_addrs(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            if flags.split(',').any(|flag| flag == "noaddr") {
                return None;
            }
            addr.split(['@', ',']).next()
        })
        .collect()
}

/// `chat:<id base + c_k>` = [sender, its fanout recipients], replacing any old list.
/// On a cluster through a cluster connection of its own, which is dropped before the
/// run (its connections carry no name, so CLIENT LIST would count them as courier's).
pub async fn create_chats(
    target: &RedisTarget,
    nodes: &[MultiplexedConnection],
    layout: &Layout,
    id_base: u64,
) -> Result<(), String> {
    let result = if target.cluster {
        write_chats(cluster_connection(target).await?, layout, id_base).await
    } else {
        write_chats(nodes[0].clone(), layout, id_base).await
    };
    result.map_err(|e| format!("cannot create chats in Redis: {e}"))
}

/// Entries pending in the `default` group of every one of these users' inboxes,
/// summed (users without a group count 0): after a drain in which every delivery was
/// acked, what is left waits for the ack timeout.
pub async fn pending_total(
    target: &RedisTarget,
    nodes: &[MultiplexedConnection],
    users: impl Iterator<Item = u64>,
) -> Result<u64, String> {
    let users: Vec<u64> = users.collect();
    let result = if target.cluster {
        count_pending(cluster_connection(target).await?, &users).await
    } else {
        count_pending(nodes[0].clone(), &users).await
    };
    result.map_err(|e| format!("cannot read XPENDING: {e}"))
}

async fn count_pending<C>(conn: C, users: &[u64]) -> redis::RedisResult<u64>
where
    C: ConnectionLike + Clone + Send,
{
    let mut total = 0;
    for chunk in users.chunks(500) {
        let replies = futures_util::future::join_all(chunk.iter().map(|user| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("XPENDING")
                    .arg(format!("inbox:{{user:{user}}}"))
                    .arg("default")
                    .query_async::<redis::Value>(&mut conn)
                    .await
            }
        }))
        .await;
        for reply in replies {
            // A user without an inbox or group has nothing pending.
            if let Ok(redis::Value::Array(summary)) = reply
                && let Some(redis::Value::Int(count)) = summary.first()
            {
                total += *count as u64;
            }
        }
    }
    Ok(total)
}

/// A cluster connection of its own (unnamed: used only outside measured windows).
async fn cluster_connection(
    target: &RedisTarget,
) -> Result<redis::cluster_async::ClusterConnection, String> {
    ClusterClient::builder(target.urls.clone())
        .connection_timeout(CONNECTION_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .build()
        .map_err(|e| format!("--redis: {e}"))?
        .get_async_connection()
        .await
        .map_err(|e| format!("cannot connect to the Redis cluster: {e}"))
}

/// One DEL + RPUSH pipeline per chat (one key, so one slot on a cluster), 500 chats
/// in flight at a time.
async fn write_chats<C>(conn: C, layout: &Layout, id_base: u64) -> redis::RedisResult<()>
where
    C: ConnectionLike + Clone + Send,
{
    let chats: Vec<Pipeline> = (0..layout.sender_conn.len())
        .map(|k| {
            let c = layout.sender_conn[k];
            let key = format!("chat:{}", id_base + c as u64);
            let members: Vec<u64> = std::iter::once(c)
                .chain(layout.recipients(k))
                .map(|m| id_base + m as u64)
                .collect();
            let mut pipe = redis::pipe();
            pipe.cmd("DEL").arg(&key).ignore();
            pipe.cmd("RPUSH").arg(&key).arg(members).ignore();
            pipe
        })
        .collect();
    for chunk in chats.chunks(500) {
        futures_util::future::try_join_all(chunk.iter().map(|pipe| {
            let mut conn = conn.clone();
            async move { pipe.query_async::<()>(&mut conn).await }
        }))
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_read_with_their_client_port() {
        let listing = "\
07c3 127.0.0.1:30004@31004,node-a master - 0 1 1 connected 0-5460
67ed 127.0.0.1:30002@31002 myself,master - 0 0 2 connected 5461-10922
292f :0@0 master,noaddr - 0 0 3 disconnected
";
        assert_eq!(
            cluster_node_addrs(listing),
            ["127.0.0.1:30004", "127.0.0.1:30002"]
        );
    }
}
