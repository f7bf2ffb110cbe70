//! What `COURIER_REDIS_URL` names: one Redis server, a Redis Cluster by its seed
//! nodes, or a Sentinel-managed primary by its sentinels. Parsed once, when the
//! store's settings are built; [`super::backend`] opens the connection of the kind it
//! says.

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
    /// A primary whose address the sentinels know (and change on a failover).
    Sentinel(SentinelTopology),
}

/// A Sentinel-managed primary: `redis+sentinel://[user:password@]host:port,…/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelTopology {
    /// The sentinels, each a `redis://host:port` (or `rediss://`) URL without
    /// credentials: the URL's credentials are the data nodes', not the sentinels'.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub master_name: String,
    /// `redis` or `rediss` (TLS to the sentinels and to the data nodes).
    pub node_scheme: &'static str,
    /// `user:password` (as written in the URL, percent-encoded) for the data nodes.
    pub userinfo: Option<String>,
}

impl SentinelTopology {
    /// The URL of a data node at `host:port` as the sentinels report it, with the
    /// topology's scheme and credentials.
    pub fn node_url(&self, host: &str, port: u16) -> String {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        match &self.userinfo {
            Some(userinfo) => format!("{}://{userinfo}@{host}:{port}", self.node_scheme),
            None => format!("{}://{host}:{port}", self.node_scheme),
        }
    }
}

/// A multi-host URL taken apart: `<scheme>://[userinfo@]host:port,…[/path]`.
struct MultiHost<'a> {
    node_scheme: &'static str,
    userinfo: Option<&'a str>,
    hosts: Vec<&'a str>,
    path: &'a str,
}

impl<'a> MultiHost<'a> {
    /// Splits `url` if its scheme is `redis+<kind>` or `rediss+<kind>`.
    fn parse(url: &'a str, kind: &str) -> Option<Result<Self, String>> {
        let (node_scheme, rest) = ["redis", "rediss"].into_iter().find_map(|node_scheme| {
            let prefix = format!("{node_scheme}+{kind}://");
            url.get(..prefix.len())
                .filter(|s| s.eq_ignore_ascii_case(&prefix))
                .map(|_| (node_scheme, &url[prefix.len()..]))
        })?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let mut list = Vec::new();
        for host in hosts.split(',').map(str::trim) {
            let port = host.rsplit_once(':').map(|(_, port)| port);
            if host.is_empty() || port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return Some(Err(format!(
                    "{kind} node {host:?} is not host:port in {}",
                    super::redact(url, url)
                )));
            }
            list.push(host);
        }
        Some(Ok(Self {
            node_scheme,
            userinfo,
            hosts: list,
            path,
        }))
    }

    /// The URL of one of the hosts, with `userinfo` if given; checked by the redis
    /// crate (the error is redacted with `url`'s password).
    fn node(&self, host: &str, userinfo: Option<&str>, url: &str) -> Result<String, String> {
        let node = match userinfo {
            Some(userinfo) => format!("{}://{userinfo}@{host}", self.node_scheme),
            None => format!("{}://{host}", self.node_scheme),
        };
        match node.as_str().into_connection_info() {
            Ok(_) => Ok(node),
            Err(e) => Err(super::redact_error(&e, url)),
        }
    }
}

impl Topology {
    /// Parses a Redis URL. `redis+cluster://[user:password@]host:port,host:port[/]`
    /// (or `rediss+cluster://` for TLS) names a cluster by its seed nodes;
    /// `redis+sentinel://[user:password@]host:port,host:port/<master-name>` (or
    /// `rediss+sentinel://`) a Sentinel-managed primary; anything else is handed to
    /// the redis crate as a single-node URL. The error text carries no password.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(parts) = MultiHost::parse(url, "cluster") {
            let parts = parts?;
            if !matches!(parts.path, "" | "0") {
                return Err(format!(
                    "a cluster URL is {}+cluster://[user:password@]host:port,host:port \
                     (no database, path or query): {}",
                    parts.node_scheme,
                    super::redact(url, url)
                ));
            }
            let nodes = parts
                .hosts
                .iter()
                .map(|host| parts.node(host, parts.userinfo, url))
                .collect::<Result<_, _>>()?;
            return Ok(Self::Cluster(nodes));
        }
        if let Some(parts) = MultiHost::parse(url, "sentinel") {
            let parts = parts?;
            let master_name = parts.path.trim_end_matches('/');
            if master_name.is_empty() || master_name.contains(['/', '?', '#']) {
                return Err(format!(
                    "a Sentinel URL is {}+sentinel://[user:password@]host:port,host:port/<master-name> \
                     (no database or query): {}",
                    parts.node_scheme,
                    super::redact(url, url)
                ));
            }
            let sentinels = parts
                .hosts
                .iter()
                .map(|host| parts.node(host, None, url))
                .collect::<Result<_, _>>()?;
            // The credentials are checked in a data node's URL.
            parts.node("localhost:6379", parts.userinfo, url)?;
            return Ok(Self::Sentinel(SentinelTopology {
                sentinels,
                master_name: master_name.to_string(),
                node_scheme: parts.node_scheme,
                userinfo: parts.userinfo.map(str::to_string),
            }));
        }
        match url.into_connection_info() {
            Ok(_) => Ok(Self::Single(url.to_string())),
            Err(e) => Err(super::redact_error(&e, url)),
        }
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
            "redis+sentinel://u:secret@a:26379",
            "redis+sentinel://u:secret@a:26379/",
            "redis+sentinel://u:secret@a:26379,b/mymaster",
            "redis+sentinel://u:secret@a:26379/mymaster/0",
            "redis+sentinel://u:secret@a:26379/mymaster?x=1",
        ] {
            let error = Topology::parse(url).expect_err(url);
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn sentinel_urls_list_their_sentinels_and_keep_the_credentials_for_the_primary() {
        let Ok(Topology::Sentinel(sentinel)) =
            Topology::parse("rediss+sentinel://user:p%40ss@10.0.0.1:26379, s2:26380/mymaster")
        else {
            panic!("not a Sentinel topology");
        };
        assert_eq!(
            sentinel.sentinels,
            vec!["rediss://10.0.0.1:26379", "rediss://s2:26380"]
        );
        assert_eq!(sentinel.master_name, "mymaster");
        assert_eq!(
            sentinel.node_url("10.0.0.7", 6380),
            "rediss://user:p%40ss@10.0.0.7:6380"
        );
        assert_eq!(
            sentinel.node_url("::1", 6380),
            "rediss://user:p%40ss@[::1]:6380"
        );
        assert_eq!(
            Topology::parse("redis+sentinel://a:1/m"),
            Ok(Topology::Sentinel(SentinelTopology {
                sentinels: vec!["redis://a:1".into()],
                master_name: "m".into(),
                node_scheme: "redis",
                userinfo: None,
            }))
        );
    }
}
