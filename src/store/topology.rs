//! What `COURIER_REDIS_URL` names: one Redis server, or a Redis Cluster by its seed
//! nodes. Parsed once, when the store's settings are built; [`super::backend`] opens
//! the connection of the kind it says.

use redis::IntoConnectionInfo;

/// What `COURIER_REDIS_URL` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One Redis server (`redis://…` or `rediss://…`, as the redis crate reads it).
    Single(String),
    /// A Redis Cluster, reached through these seed nodes (each a `redis://` or
    /// `rediss://` URL with the credentials of the cluster URL). The client discovers
    /// the other nodes and the slot map from them.
    Cluster(Vec<String>),
}

impl Topology {
    /// Parses a Redis URL. `redis+cluster://[user:password@]host:port,host:port[/]`
    /// (or `rediss+cluster://` for TLS) names a cluster by its seed nodes; anything
    /// else is handed to the redis crate as a single-node URL. The error text carries
    /// no password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let cluster_scheme = ["redis+cluster", "rediss+cluster"]
            .into_iter()
            .find(|scheme| {
                url.get(..scheme.len() + 3)
                    .is_some_and(|s| s.eq_ignore_ascii_case(&format!("{scheme}://")))
            });
        let Some(scheme) = cluster_scheme else {
            return match url.into_connection_info() {
                Ok(_) => Ok(Self::Single(url.to_string())),
                Err(e) => Err(super::redact_error(&e, url)),
            };
        };
        let node_scheme = scheme.trim_end_matches("+cluster");
        let rest = &url[scheme.len() + 3..];
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, rest),
        };
        let hosts = hosts
            .strip_suffix("/0")
            .or_else(|| hosts.strip_suffix('/'))
            .unwrap_or(hosts);
        if hosts.contains(['/', '?', '#']) {
            return Err(format!(
                "a cluster URL is {scheme}://[user:password@]host:port,host:port \
                 (no database, path or query): {}",
                super::redact(url, url)
            ));
        }
        let mut nodes = Vec::new();
        for host in hosts.split(',').map(str::trim) {
            let port = host.rsplit_once(':').map(|(_, port)| port);
            if host.is_empty() || port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return Err(format!(
                    "cluster node {host:?} is not host:port in {}",
                    super::redact(url, url)
                ));
            }
            let node = match userinfo {
                Some(userinfo) => format!("{node_scheme}://{userinfo}@{host}"),
                None => format!("{node_scheme}://{host}"),
            };
            if let Err(e) = node.as_str().into_connection_info() {
                return Err(super::redact_error(&e, url));
            }
            nodes.push(node);
        }
        Ok(Self::Cluster(nodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_urls_stay_as_they_are() {
        assert_eq!(
            Topology::parse("redis://127.0.0.1:6379"),
            Ok(Topology::Single("redis://127.0.0.1:6379".into()))
        );
        assert_eq!(
            Topology::parse("rediss://u:p@h:1/2"),
            Ok(Topology::Single("rediss://u:p@h:1/2".into()))
        );
        assert!(Topology::parse("http://x").is_err());
    }

    #[test]
    fn cluster_urls_list_their_seed_nodes_with_the_credentials() {
        assert_eq!(
            Topology::parse("redis+cluster://a:7000,b:7001/"),
            Ok(Topology::Cluster(vec![
                "redis://a:7000".into(),
                "redis://b:7001".into()
            ]))
        );
        assert_eq!(
            Topology::parse("rediss+cluster://user:p%40ss@10.0.0.1:7000"),
            Ok(Topology::Cluster(vec![
                "rediss://user:p%40ss@10.0.0.1:7000".into()
            ]))
        );
    }

    #[test]
    fn malformed_cluster_urls_are_refused_without_the_password() {
        for url in [
            "redis+cluster://u:secret@a:7000,b",
            "redis+cluster://u:secret@a:7000,,b:1",
            "redis+cluster://u:secret@a:7000/3",
            "redis+cluster://u:secret@a:7000?protocol=resp3",
            "redis+cluster://",
        ] {
            let error = Topology::parse(url).expect_err(url);
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
