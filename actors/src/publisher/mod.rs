//! The `RedisPublisher` actor: owns the publishing connection.
//!
//! Four jobs, one file each: the actor, its messages and its statistics (here); its
//! connection (`connection.rs`); its flow control, a pure type (`flow.rs`); and the
//! queue it sends to Redis in pipelines, with the retries (`pipeline.rs`).

mod connection;
mod flow;
mod pipeline;

use std::{collections::VecDeque, sync::Arc};

use actix::{dev::OneshotSender, prelude::*};
use redis::aio::MultiplexedConnection;

pub use self::flow::MAX_QUEUED;
use self::{
    flow::Flow,
    pipeline::{FlushState, Pending},
};
use crate::{
    durable::{DurableConfig, IdempotencyKey, Published},
    link::{GetLinkStatus, LinkState, LinkStatus, RedisConfig, RedisLink},
    Error, Event, PublisherStats, ResetStats, Shutdown,
};

/// Owns the connection that publishes. One multiplexed connection pipelines every
/// concurrent PUBLISH, so publishes take no lock and open no connection of their own.
///
/// Supervised: when the connection dies (redis-rs reports the disconnection, a
/// command fails on it, or a PING probe goes unanswered) the actor stops and its
/// [`Supervisor`] restarts it, which reconnects after a capped, jittered
/// [`Backoff`](crate::Backoff).
/// It never gives up.
///
/// Publish retries (PROTOCOL.md §5): an attempt made while there is no connection
/// cannot have reached Redis, so it is retried after 100, 200, 400 ms; an attempt
/// that failed on an open connection may have been applied, so it is reported, never
/// retried, and a retry never duplicates an event. Except in a durable room (§7):
/// each publish there carries a publish id into the room's history, and a retry of
/// an attempt whose answer was lost looks for it there first.
pub struct RedisPublisher {
    config: Arc<RedisConfig>,
    durable: Arc<DurableConfig>,
    /// Random per process (64 bits, so two servers' ids do not meet): with
    /// `published`, makes each durable publish's id.
    id_prefix: String,
    published: u64,
    conn: Option<MultiplexedConnection>,
    /// Bumped on every restart, so a late report about an old connection is ignored.
    generation: u64,
    link: LinkState,
    /// Publishes waiting for the next pipeline, at most [`MAX_QUEUED`].
    queue: VecDeque<Pending>,
    /// Publishes refused since the queue last had room (logged once per episode).
    refused: u64,
    /// What is out and what waits: decides when the queue may go.
    flow: Flow,
    /// Whether the queue's next pipeline is arranged: due, held, or not yet.
    next_flush: FlushState,
    stats: PublisherStats,
    closed: bool,
}

/// Where a publish's outcome goes: the publishing caller's own answer channel,
/// handed through the broker, so a publish costs no task or channel of its own here.
pub type Reply = OneshotSender<Result<Published, Error>>;

/// Publish one encoded event on its room's channel, answering `reply` (sent by the
/// broker, which passes the publishing caller's answer channel along).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PublishEvent {
    /// The event; its JSON goes to Redis as is (completed with `offset` and `epoch`
    /// in a durable room).
    pub event: Arc<Event>,
    /// A durable room's publish: numbered and kept by the publish script.
    pub durable: bool,
    /// The publish's idempotency key.
    pub key: Option<IdempotencyKey>,
    /// Gets the outcome; `None` when nobody waits for it.
    pub reply: Option<Reply>,
}

/// Ask the publisher for its connection, for a read (`None` while it has none).
#[derive(Debug, Message)]
#[rtype(result = "Option<MultiplexedConnection>")]
pub struct GetConnection;

/// Ask the publisher for its statistics.
#[derive(Debug, Message)]
#[rtype(result = "PublisherStats")]
pub struct GetPublisherStats;

impl RedisPublisher {
    /// Starts the publisher under a supervisor, on the caller's arbiter (the
    /// broker's thread). On an arbiter of its own the publish path swung between
    /// 400k and 850k events/s with the placement of three busy threads (broker,
    /// publisher, redis-server) on two cores; here it runs at 850-900k every time,
    /// and an event crosses one thread fewer on its way to Redis.
    pub fn start(config: Arc<RedisConfig>, durable: Arc<DurableConfig>) -> Addr<RedisPublisher> {
        let link = LinkState::new(&config);
        Supervisor::start(move |_| RedisPublisher {
            config,
            durable,
            id_prefix: format!("{:016x}", fastrand::u64(..)),
            published: 0,
            conn: None,
            generation: 0,
            link,
            queue: VecDeque::new(),
            refused: 0,
            flow: Flow::default(),
            next_flush: FlushState::Unscheduled,
            stats: PublisherStats::default(),
            closed: false,
        })
    }
}

impl Actor for RedisPublisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.closed {
            // Publishes that reached the mailbox behind `Shutdown`.
            self.answer_all(Error::ShuttingDown);
            return;
        }
        self.connect_when_due(ctx);
        // Publishes queued when the link was lost: without a connection now, they
        // take the retry path.
        self.schedule_flush(ctx);
    }
}

impl Supervised for RedisPublisher {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.conn = None;
        self.link.lost();
        self.generation += 1;
        // A `Flush` notified or a hold timer set before the restart is gone with the
        // old context, and the old connection's pipelines no longer hold the queue.
        self.next_flush = FlushState::Unscheduled;
        self.flow.reconnecting();
    }
}

impl Handler<PublishEvent> for RedisPublisher {
    type Result = ();

    /// Queues the publish; its answer goes straight to `msg.reply` when its pipeline
    /// ends. (Dropped unanswered only when the actor stops for good, which the
    /// caller sees as a closed mailbox: shutting down.)
    fn handle(&mut self, msg: PublishEvent, ctx: &mut Context<Self>) {
        let publish_id = msg.durable.then(|| {
            self.published += 1;
            format!("{}:{:x}", self.id_prefix, self.published).into()
        });
        let pending = Pending {
            event: msg.event,
            durable: msg.durable,
            key: msg.key,
            publish_id,
            ambiguous: false,
            retries: 0,
            reply: msg.reply,
        };
        self.accept(pending, ctx);
    }
}

impl Handler<GetConnection> for RedisPublisher {
    type Result = Option<MultiplexedConnection>;

    fn handle(&mut self, _: GetConnection, _ctx: &mut Context<Self>) -> Self::Result {
        self.conn.clone()
    }
}

impl Handler<GetLinkStatus> for RedisPublisher {
    type Result = LinkStatus;

    fn handle(&mut self, _: GetLinkStatus, _ctx: &mut Context<Self>) -> LinkStatus {
        LinkStatus {
            ready: self.conn.is_some(),
            failed_attempts: self.link.failed_attempts(),
            channels: 0,
        }
    }
}

impl Handler<GetPublisherStats> for RedisPublisher {
    type Result = MessageResult<GetPublisherStats>;

    fn handle(&mut self, _: GetPublisherStats, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(PublisherStats {
            waiting: self.flow.waiting(self.queue.len()) as u64,
            unanswered: self.flow.unanswered() as u64,
            ..self.stats.clone()
        })
    }
}

impl Handler<ResetStats> for RedisPublisher {
    type Result = ();

    fn handle(&mut self, _: ResetStats, _ctx: &mut Context<Self>) {
        self.stats = PublisherStats::default();
    }
}

impl Handler<Shutdown> for RedisPublisher {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        self.closed = true;
        self.conn = None;
        self.answer_all(Error::ShuttingDown);
        ctx.stop();
    }
}
