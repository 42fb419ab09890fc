//! Redis Cluster (PROTOCOL.md §11), the part built so far: the hash slot of a room's
//! channel and of its keys, and which master serves it, checked against a real
//! cluster of six nodes. No server runs on a cluster yet.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::{cluster::MASTERS, RedisCluster};
use switchboard_actors::cluster::{key_slot, read_slot_map, NodeAddr};

#[actix_web::test]
async fn slots_and_their_masters_agree_with_a_real_cluster() {
    let cluster = RedisCluster::start().await;
    let first = &cluster.nodes()[0];
    let asked = NodeAddr {
        host: "127.0.0.1".into(),
        port: first.port(),
    };
    let mut conn = first.client().await;
    let map = read_slot_map(&mut conn, &asked, Duration::from_secs(2))
        .await
        .expect("the slot map");
    assert!(map.covers_all(), "{map:?}");
    assert_eq!(map.masters().len(), MASTERS, "{map:?}");

    let rooms: Vec<String> = (0..300)
        .map(|i| format!("chat:{i}"))
        .chain(["leaderboard:updates", "match:events", "system:events"].map(String::from))
        .collect();
    let mut rooms_per_master: HashMap<u16, usize> = HashMap::new();
    for room in &rooms {
        for name in [
            room.clone(),
            format!("{{{room}}}:log"),
            format!("{{{room}}}:meta"),
        ] {
            let slot: u16 = first
                .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(&name))
                .await;
            assert_eq!(key_slot(name.as_bytes()), slot, "the slot of {name}");
        }
        // The master the map names takes the room's sharded publish.
        let master = map.master(key_slot(room.as_bytes())).expect("a master");
        let receivers: u64 = cluster
            .node(master.port)
            .query(redis::cmd("SPUBLISH").arg(room).arg("{}"))
            .await;
        assert_eq!(receivers, 0, "nobody subscribed to {room}");
        *rooms_per_master.entry(master.port).or_default() += 1;
    }
    assert_eq!(
        rooms_per_master.len(),
        MASTERS,
        "the rooms spread over every master: {rooms_per_master:?}"
    );

    // Another master refuses it: the map is what makes a publish land.
    let room = "chat:0";
    let owner = map.master(key_slot(room.as_bytes())).expect("a master");
    let other = map
        .masters()
        .into_iter()
        .find(|m| m != owner)
        .expect("another master");
    let mut conn = cluster.node(other.port).client().await;
    let refused = redis::cmd("SPUBLISH")
        .arg(room)
        .arg("{}")
        .query_async::<u64>(&mut conn)
        .await
        .expect_err("a master that does not own the slot");
    assert_eq!(refused.code(), Some("MOVED"), "{refused}");
}
