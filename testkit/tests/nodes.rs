//! The kit's Redis processes do what the fault tests need: a node killed with SIGKILL
//! comes back on its port (with its data when persistent), and a primary with a
//! replica watched by three Sentinels can be put together from node options.

use courier_testkit::{Fixtures, RedisNode, Wait};

#[test]
fn a_killed_node_comes_back_on_its_port_with_its_data() {
    let mut node = RedisNode::start_persistent();
    let (port, pid) = (node.port, node.pid());
    node.cmd::<()>(&["SET", "kept", "yes"]);

    node.kill();
    assert!(!node.is_running());
    assert_eq!(node.try_cmd::<String>(&["PING"]), None, "nothing answers");
    node.restart();

    assert_eq!(node.port, port, "the same port");
    assert_ne!(node.pid(), pid, "a new process");
    assert_eq!(node.cmd::<String>(&["GET", "kept"]), "yes", "AOF replayed");
}

#[test]
fn a_primary_with_a_replica_and_three_sentinels_starts_from_node_options() {
    let primary = RedisNode::start();
    let port = primary.port.to_string();
    let replica = RedisNode::options()
        .args(["--replicaof", "127.0.0.1", &port])
        .start();
    replica.wait_for_primary_link();
    let config = format!(
        "sentinel monitor main 127.0.0.1 {port} 2\nsentinel down-after-milliseconds main 1000\n"
    );
    let sentinels: Vec<RedisNode> = (0..3)
        .map(|_| RedisNode::options().sentinel(&config).start())
        .collect();

    for sentinel in &sentinels {
        let (host, at): (String, String) =
            sentinel.cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main"]);
        assert_eq!((host.as_str(), at.as_str()), ("127.0.0.1", port.as_str()));
        Wait::new("the sentinel to find the replica").until_blocking(|| {
            sentinel
                .try_cmd::<Vec<redis::Value>>(&["SENTINEL", "REPLICAS", "main"])
                .is_some_and(|replicas| replicas.len() == 1)
        });
    }
    primary.cmd::<()>(&["SET", "k", "v"]);
    Wait::new("the write to reach the replica").until_blocking(|| {
        replica.try_cmd::<Option<String>>(&["GET", "k"]).flatten() == Some("v".into())
    });
}
