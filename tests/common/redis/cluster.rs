//! A real Redis Cluster for a test: three `redis-server --cluster-enabled yes` masters on free
//! loopback ports (the bus on a free port too), nothing saved, the node table in each one's
//! temporary directory. The test assigns the slots itself (CLUSTER ADDSLOTSRANGE, then CLUSTER
//! MEET; no `redis-cli` needed) and waits until every node says `cluster_state:ok`.

use super::{free_port, installed, RedisServer};
use std::time::{Duration, Instant};

/// How long the three nodes may take to agree on the slots.
const FORMED_TIMEOUT: Duration = Duration::from_secs(20);
/// The slots of a Redis Cluster.
const SLOTS: u16 = 16384;
/// How many masters.
const MASTERS: usize = 3;

/// Three masters of one Cluster; node `i` starts with slots `[i * 16384 / 3, (i + 1) * 16384 /
/// 3)`.
pub struct RedisCluster {
    /// Its nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts one, or `None` (after one skip line) where `redis-server` is missing.
    pub fn start() -> Option<Self> {
        if !installed() {
            return None;
        }
        let nodes: Vec<RedisServer> = (0..MASTERS)
            .map(|_| {
                RedisServer::start_with(|_| {
                    let bus = free_port().expect("a free port for the cluster bus");
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-port",
                        &bus.to_string(),
                        "--cluster-node-timeout",
                        "2000",
                    ]
                    .map(String::from)
                    .to_vec()
                })
            })
            .collect();
        let cluster = RedisCluster { nodes };
        for i in 0..MASTERS {
            let (first, last) = cluster.range(i);
            cluster.command(i, &["CLUSTER", "ADDSLOTSRANGE", &first, &last]);
        }
        for i in 1..MASTERS {
            let port = cluster.nodes[i].port.to_string();
            let bus = cluster.bus_port(i).to_string();
            cluster.command(0, &["CLUSTER", "MEET", "127.0.0.1", &port, &bus]);
        }
        cluster.wait_formed();
        Some(cluster)
    }

    /// The first and last slot node `i` started with, as arguments.
    fn range(&self, i: usize) -> (String, String) {
        let share = |i: usize| (i * SLOTS as usize / MASTERS) as u16;
        (share(i).to_string(), (share(i + 1) - 1).to_string())
    }

    /// The bus port of node `i` (from its options).
    fn bus_port(&self, i: usize) -> u16 {
        let extra = &self.nodes[i].extra;
        let at = extra.iter().position(|o| o == "--cluster-port").unwrap();
        extra[at + 1].parse().unwrap()
    }

    /// Waits until every node has the three masters and every slot served.
    fn wait_formed(&self) {
        let deadline = Instant::now() + FORMED_TIMEOUT;
        loop {
            let infos: Vec<String> = (0..MASTERS)
                .map(|i| text(self.command(i, &["CLUSTER", "INFO"])))
                .collect();
            let formed = infos.iter().all(|info| {
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{MASTERS}"))
            });
            if formed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not form within {FORMED_TIMEOUT:?}: {infos:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis+cluster://` and the nodes `seeds` (indexes into [`Self::nodes`]).
    pub fn url(&self, seeds: &[usize]) -> String {
        let hosts: Vec<String> = seeds
            .iter()
            .map(|&i| format!("127.0.0.1:{}", self.nodes[i].port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Runs `args` on node `i` (a plain connection: no redirection), its reply.
    pub fn command(&self, i: usize, args: &[&str]) -> redis::Value {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.nodes[i].connection())
            .unwrap_or_else(|e| panic!("{args:?} on node {i}: {e}"))
    }

    /// The slot of `key`.
    pub fn slot(&self, key: &str) -> u16 {
        match self.command(0, &["CLUSTER", "KEYSLOT", key]) {
            redis::Value::Int(slot) => slot as u16,
            other => panic!("CLUSTER KEYSLOT: {other:?}"),
        }
    }

    /// The node that owns `slot` now, as node 0 sees it.
    pub fn owner(&self, slot: u16) -> usize {
        // CLUSTER SLOTS: [[first, last, [host, port, id], ...], ...].
        let redis::Value::Array(ranges) = self.command(0, &["CLUSTER", "SLOTS"]) else {
            panic!("CLUSTER SLOTS is not a list");
        };
        for range in ranges {
            let redis::Value::Array(range) = range else {
                continue;
            };
            let (Some(redis::Value::Int(first)), Some(redis::Value::Int(last))) =
                (range.first(), range.get(1))
            else {
                continue;
            };
            if !(*first..=*last).contains(&i64::from(slot)) {
                continue;
            }
            let Some(redis::Value::Array(master)) = range.get(2) else {
                continue;
            };
            let Some(redis::Value::Int(port)) = master.get(1) else {
                continue;
            };
            return self
                .nodes
                .iter()
                .position(|n| i64::from(n.port) == *port)
                .expect("the owner is one of ours");
        }
        panic!("nobody owns slot {slot}");
    }

    /// Moves `slot` (and its keys) from node `from` to node `to`, as an operator resharding
    /// would: clients that still send there get MOVED.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize) {
        let slot_arg = slot.to_string();
        let id = |i: usize| text(self.command(i, &["CLUSTER", "MYID"]));
        let (from_id, to_id) = (id(from), id(to));
        self.command(
            to,
            &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id],
        );
        self.command(
            from,
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id],
        );
        let port = self.nodes[to].port.to_string();
        for _ in 0..1000 {
            let redis::Value::Array(keys) =
                self.command(from, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"])
            else {
                panic!("CLUSTER GETKEYSINSLOT is not a list");
            };
            if keys.is_empty() {
                for i in 0..MASTERS {
                    self.command(i, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
                }
                return;
            }
            let keys: Vec<String> = keys.into_iter().map(text).collect();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            self.command(from, &args);
        }
        panic!("slot {slot} still has keys after 1000 batches");
    }
}

/// A reply as text.
fn text(value: redis::Value) -> String {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        redis::Value::SimpleString(s) | redis::Value::VerbatimString { text: s, .. } => s,
        other => panic!("not text: {other:?}"),
    }
}
