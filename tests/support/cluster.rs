//! A real Redis Cluster per test: six `redis-server` nodes on free ports, three
//! masters with a replica each, made into a cluster by `redis-cli --cluster create`
//! and killed on drop.

use std::process::Command;
use std::time::Duration;

use super::{wait_until, RedisServer};

/// Masters in the cluster; each has one replica.
pub const MASTERS: usize = 3;

/// How long a node may be unreachable before the others count it failed and a
/// replica takes over (`cluster-node-timeout`): short, so a failover test is quick.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long a fresh cluster gets to agree that it is whole.
const FORM_TIMEOUT: Duration = Duration::from_secs(20);

/// Six nodes: three masters with a replica each, every slot served.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes, makes them a cluster and waits until every node reports it
    /// whole (`cluster_state:ok`, every slot served, every master with a replica).
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::with_capacity(2 * MASTERS);
        for _ in 0..2 * MASTERS {
            nodes.push(RedisServer::start_cluster_node(NODE_TIMEOUT).await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli (it comes with redis-server)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let cluster = RedisCluster { nodes };
        wait_until(
            FORM_TIMEOUT,
            "the cluster is whole at every node",
            || async { cluster.is_whole().await },
        )
        .await;
        cluster
    }

    /// `REDIS_CLUSTER_NODES` for a server: every node's address.
    pub fn nodes_env(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes, in the order they were started.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node listening on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// Kills the node on `port` (SIGKILL, like a crash).
    pub fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
            .kill();
    }

    /// Whether every running node says the cluster is ok, and sees every master with
    /// a replica.
    async fn is_whole(&self) -> bool {
        for node in &self.nodes {
            if !node.answers_ping().await {
                return false;
            }
            let info: String = node.query(redis::cmd("CLUSTER").arg("INFO")).await;
            if !info.contains("cluster_state:ok") {
                return false;
            }
            let slots: Vec<redis::Value> = node.query(redis::cmd("CLUSTER").arg("SLOTS")).await;
            let replicated = slots.iter().all(|range| match range {
                // [start, end, master, replica...]
                redis::Value::Array(fields) => fields.len() >= 4,
                _ => false,
            });
            if slots.len() < MASTERS || !replicated {
                return false;
            }
        }
        true
    }
}
