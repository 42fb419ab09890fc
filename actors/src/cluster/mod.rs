//! Redis Cluster (PROTOCOL.md §11): what a cluster backplane needs to know before it
//! sends anything, the hash slot of a room's channel ([`key_slot`]) and which master
//! serves it ([`SlotMap`], read with [`read_slot_map`]); and a sharded pub/sub
//! connection to one node ([`ShardLink`]).
//!
//! # Not wired yet
//!
//! No backplane uses this module yet: `REDIS_CLUSTER_NODES` is not read. The plan,
//! from probes of redis-rs 1.8.1 against a real cluster
//! (`docs/research/redis-cluster-2026-11-26/`):
//! - one link pair per master, each the existing actors on a single-node connection:
//!   the publisher with `SPUBLISH` (and the scripts' `SPUBLISH`, legal because a
//!   room's keys share its channel's slot); the subscriber on a [`ShardLink`] (built
//!   and tested against a real cluster: `tests/cluster.rs`). redis-rs's own cluster
//!   connection re-sends a whole
//!   pipeline on `MOVED` (publishes twice), falls back to replicas for `SPUBLISH`, and
//!   did not follow a failover or a migration for sharded subscriptions on its own;
//! - the backplane polls `CLUSTER SLOTS` and moves a room whose slot changed master
//!   to that master's pair: a relink for the room, so the broker's gap and catch-up
//!   rules (§8) apply unchanged;
//! - an unsolicited `sunsubscribe` (the slot moved) ends the subscriber's connection:
//!   redis-rs would take it for the answer to a request in flight.

mod shard;
mod slot;
mod topology;

use std::time::Duration;

use redis::aio::MultiplexedConnection;

pub use shard::{ShardLink, ShardPush};
pub use slot::{key_slot, SLOTS};
pub use topology::{NodeAddr, SlotMap};

use crate::{link::with_deadline, Error};

/// Reads the slot map from the node `asked` (on `conn`), within `timeout`.
pub async fn read_slot_map(
    conn: &mut MultiplexedConnection,
    asked: &NodeAddr,
    timeout: Duration,
) -> Result<SlotMap, Error> {
    let answer: redis::Value = with_deadline(timeout, "CLUSTER SLOTS", async {
        redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(conn)
            .await
            .map_err(|e| Error::from_redis(&e))
    })
    .await?;
    SlotMap::from_cluster_slots(&answer, asked)
}
