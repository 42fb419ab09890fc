//! A sharded pub/sub connection to one cluster node (`SSUBSCRIBE`, `SUNSUBSCRIBE`),
//! what a cluster backplane's subscriber will hold per master.
//!
//! redis-rs 1.8 has no `ssubscribe` outside its own cluster connection, which does not
//! follow a failover or a migration on its own (the research notes in
//! `docs/research/redis-cluster-2026-11-26/`). On a RESP3 connection with a push
//! sender, a plain command works: each `SSUBSCRIBE` is answered by its confirmation,
//! and the node's `smessage`s arrive as pushes. One channel per command, since a
//! command expects one answer and each channel is confirmed apart.
//!
//! What arrives is handed on through a bounded channel; a push that finds it full is
//! dropped and counted ([`ShardLink::dropped`]), and its owner must treat any drop as
//! a loss in every channel of the link.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Msg, PushInfo, PushKind};
use tokio::sync::mpsc;

use super::NodeAddr;
use crate::{link::with_deadline, Error};

/// What a node pushes on a sharded pub/sub connection.
#[derive(Debug)]
pub enum ShardPush {
    /// A message on a subscribed channel.
    Message(Msg),
    /// The node no longer sends this channel: an answer to `SUNSUBSCRIBE`, or, when
    /// not asked for, the channel's slot moved to another node.
    Unsubscribed(String),
    /// The connection ended: every channel may have missed messages.
    Disconnected,
}

/// A push dropped: the receiver was full (or gone). redis-rs ignores it; the drop
/// is counted.
struct ReceiverFull;

/// A RESP3 connection to one node, for sharded subscriptions.
pub struct ShardLink {
    node: NodeAddr,
    conn: MultiplexedConnection,
    dropped: Arc<AtomicU64>,
}

impl ShardLink {
    /// Connects to `node` within `timeout`; its pushes go to the receiver, which
    /// holds at most `capacity`.
    pub async fn open(
        node: &NodeAddr,
        timeout: Duration,
        capacity: usize,
    ) -> Result<(ShardLink, mpsc::Receiver<ShardPush>), Error> {
        let url = format!("redis://{}:{}/?protocol=resp3", node.host, node.port);
        let client = redis::Client::open(url).map_err(|e| Error::from_redis(&e))?;
        let (tx, rx) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        let sender = move |push: PushInfo| -> Result<(), ReceiverFull> {
            let Some(push) = ShardPush::from_push(push) else {
                return Ok(());
            };
            tx.try_send(push).map_err(|_| {
                counted.fetch_add(1, Ordering::Relaxed);
                ReceiverFull
            })
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_push_sender(sender);
        let conn = with_deadline(timeout, "connect to a cluster node", async {
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| Error::from_redis(&e))
        })
        .await?;
        let link = ShardLink {
            node: node.clone(),
            conn,
            dropped,
        };
        Ok((link, rx))
    }

    /// The node this link is connected to.
    pub fn node(&self) -> &NodeAddr {
        &self.node
    }

    /// Pushes dropped because the receiver was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Subscribes `channel`; answers once the node confirmed it. A node that does not
    /// serve the channel's slot refuses (`MOVED`).
    pub async fn ssubscribe(&mut self, channel: &str) -> Result<(), Error> {
        self.command("SSUBSCRIBE", channel).await
    }

    /// Unsubscribes `channel`; its confirmation also arrives as
    /// [`ShardPush::Unsubscribed`].
    pub async fn sunsubscribe(&mut self, channel: &str) -> Result<(), Error> {
        self.command("SUNSUBSCRIBE", channel).await
    }

    async fn command(&mut self, name: &'static str, channel: &str) -> Result<(), Error> {
        redis::cmd(name)
            .arg(channel)
            .query_async::<redis::Value>(&mut self.conn)
            .await
            .map(|_confirmed| ())
            .map_err(|e| Error::from_redis(&e))
    }
}

impl ShardPush {
    /// What a push means to the link's owner; `None` for confirmations of its own
    /// subscribes and for pushes of other kinds.
    fn from_push(push: PushInfo) -> Option<ShardPush> {
        match push.kind {
            PushKind::Disconnection => Some(ShardPush::Disconnected),
            PushKind::SUnsubscribe => {
                let channel = push.data.first()?;
                let channel: String = redis::from_redis_value_ref(channel).ok()?;
                Some(ShardPush::Unsubscribed(channel))
            }
            PushKind::SMessage => Msg::from_push_info(push).map(ShardPush::Message),
            _ => None,
        }
    }
}
