//! Redis Cluster (PROTOCOL.md §11), the part built so far: the hash slot of a room's
//! channel and of its keys, and which master serves it, checked against a real
//! cluster of six nodes; and a sharded pub/sub link to one node. No server runs on a
//! cluster yet.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::{cluster::MASTERS, RedisCluster};
use switchboard_actors::cluster::{
    key_slot, read_slot_map, NodeAddr, ShardLink, ShardPush, SlotMap,
};

/// How long a push from a node may take to arrive.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The slot map as the cluster's first node answers it.
async fn slot_map(cluster: &RedisCluster) -> SlotMap {
    let first = &cluster.nodes()[0];
    let asked = NodeAddr {
        host: "127.0.0.1".into(),
        port: first.port(),
    };
    let mut conn = first.client().await;
    read_slot_map(&mut conn, &asked, Duration::from_secs(2))
        .await
        .expect("the slot map")
}

#[actix_web::test]
async fn slots_and_their_masters_agree_with_a_real_cluster() {
    let cluster = RedisCluster::start().await;
    let map = slot_map(&cluster).await;
    let first = &cluster.nodes()[0];
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

/// A sharded pub/sub link to the master of a room's slot gets the room's `SPUBLISH`es;
/// another master refuses the room; killing the master is seen as the link's end.
#[actix_web::test]
async fn a_shard_link_gets_its_channels_messages_and_sees_its_master_die() {
    let mut cluster = RedisCluster::start().await;
    let map = slot_map(&cluster).await;
    let room = "chat:7";
    let owner = map
        .master(key_slot(room.as_bytes()))
        .expect("a master")
        .clone();
    let (mut link, mut pushes) = ShardLink::open(&owner, Duration::from_secs(2), 64)
        .await
        .expect("a link to the master");
    link.ssubscribe(room).await.expect("SSUBSCRIBE");

    let other = map
        .masters()
        .into_iter()
        .find(|m| *m != owner)
        .expect("another master");
    let (mut elsewhere, _) = ShardLink::open(&other, Duration::from_secs(2), 64)
        .await
        .expect("a link to another master");
    let refused = elsewhere.ssubscribe(room).await.expect_err("not its slot");
    assert!(
        refused.to_string().to_lowercase().contains("moved"),
        "{refused}"
    );

    let receivers: u64 = cluster
        .node(owner.port)
        .query(redis::cmd("SPUBLISH").arg(room).arg("hello"))
        .await;
    assert_eq!(receivers, 1, "the link is the one subscriber");
    match tokio::time::timeout(PUSH_TIMEOUT, pushes.recv()).await {
        Ok(Some(ShardPush::Message(msg))) => {
            assert_eq!(msg.get_channel_name(), room);
            assert_eq!(msg.get_payload_bytes(), b"hello");
        }
        other => panic!("expected the message, got {other:?}"),
    }

    link.sunsubscribe(room).await.expect("SUNSUBSCRIBE");
    match tokio::time::timeout(PUSH_TIMEOUT, pushes.recv()).await {
        Ok(Some(ShardPush::Unsubscribed(channel))) => assert_eq!(channel, room),
        other => panic!("expected the unsubscribe, got {other:?}"),
    }

    cluster.kill(owner.port);
    match tokio::time::timeout(PUSH_TIMEOUT, pushes.recv()).await {
        Ok(Some(ShardPush::Disconnected)) => {}
        other => panic!("expected the link's end, got {other:?}"),
    }
    assert_eq!(link.dropped(), 0);
}
