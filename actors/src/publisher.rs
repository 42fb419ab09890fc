//! The `RedisPublisher` actor: owns the publishing connection.

use std::{sync::Arc, time::Duration};

use actix::{dev::OneshotSender, prelude::*};
use redis::{aio::MultiplexedConnection, ErrorKind, ProtocolVersion, PushInfo, PushKind};

use crate::{
    link::{with_deadline, GetLinkStatus, LinkState, LinkStatus, RedisConfig},
    Error, Event, PublisherStats, ResetStats, Room, Shutdown,
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
/// retried, and a retry never duplicates an event.
pub struct RedisPublisher {
    config: Arc<RedisConfig>,
    conn: Option<MultiplexedConnection>,
    /// Bumped on every restart, so a late report about an old connection is ignored.
    generation: u64,
    link: LinkState,
    /// Publishes waiting for the next pipeline, at most [`MAX_QUEUED`].
    queue: Vec<Pending>,
    /// Publishes refused since the queue last had room (logged once per episode).
    refused: u64,
    /// A [`Flush`] is on its way: publishes arriving meanwhile join its pipeline.
    flush_scheduled: bool,
    /// Pipelines of this connection sent and not yet answered.
    in_flight: usize,
    /// Publishes in those pipelines (and in older connections' unanswered ones).
    in_flight_publishes: usize,
    /// The timer that sends a held queue after [`MAX_HOLD`].
    hold: Option<SpawnHandle>,
    stats: PublisherStats,
    closed: bool,
}

/// Where a publish's outcome goes: the publishing caller's own answer channel,
/// handed through the broker, so a publish costs no task or channel of its own here.
pub type Reply = OneshotSender<Result<(), Error>>;

/// One publish on its way, with the caller's answer.
struct Pending {
    event: Arc<Event>,
    /// Retries made so far (attempts that found no connection).
    retries: u32,
    reply: Option<Reply>,
}

impl Pending {
    fn answer(self, outcome: Result<(), Error>) {
        if let Some(reply) = self.reply {
            let _ = reply.send(outcome);
        }
    }
}

/// The most PUBLISH commands in one pipeline.
const MAX_PIPELINE: usize = 512;

/// Pipelines out at once before the queue waits for one to end. A publish that
/// finds nothing in flight goes at once; under load the queue grows during one
/// round trip into the next pipeline, so the fixed cost of a pipeline (a task, a
/// write, a read, waking the connection) is shared by hundreds of publishes. With
/// no limit pipelines averaged 128 publishes and the publish path ran at 750k
/// events/s; with one in flight they average about 490 and it runs at 850-900k
/// (`switchboard-loadgen publish-path --concurrency 1024`).
const MAX_IN_FLIGHT: usize = 1;

/// The longest a queued publish waits for a pipeline to end before it is sent
/// anyway (while fewer than [`MAX_QUEUED`] are unanswered): a stalled Redis delays
/// the queue by this, not by the response deadline, so every publish still gets its
/// own full deadline.
const MAX_HOLD: Duration = Duration::from_millis(1);

/// The most publishes waiting for a pipeline (or for a retry), and the most sent
/// and unanswered. Past it a publish is refused at once with [`Error::Overloaded`]:
/// a stalled Redis costs at most twice this many events in memory. In practice the
/// callers bound the queue first (each waits for its answer); this is the guard
/// against a flood from in-process services.
pub const MAX_QUEUED: usize = 65_536;

/// Publish one encoded event on its room's channel, answering `reply` (sent by the
/// broker, which passes the publishing caller's answer channel along).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PublishEvent {
    /// The event; its JSON goes to Redis as is.
    pub event: Arc<Event>,
    /// Gets the outcome; `None` when nobody waits for it.
    pub reply: Option<Reply>,
}

/// Ask the publisher for its statistics.
#[derive(Debug, Message)]
#[rtype(result = "PublisherStats")]
pub struct GetPublisherStats;

/// Send the queued publishes as one pipeline.
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

/// A publish that found no connection, back for another attempt after its delay.
#[derive(Message)]
#[rtype(result = "()")]
struct Retry(Pending);

/// A pipeline ended; the actor counts its publishes.
#[derive(Message)]
#[rtype(result = "()")]
struct PipelineEnded {
    /// The connection it ran on (see [`RedisPublisher::generation`]).
    generation: u64,
    /// Each publish's room, whether Redis took it, and its retries.
    outcomes: Vec<(Room, bool, u32)>,
}

/// The connection of `generation` is dead.
#[derive(Message)]
#[rtype(result = "()")]
struct LinkLost {
    /// Which connection (see [`RedisPublisher::generation`]).
    generation: u64,
    /// For the log line.
    why: String,
}

impl RedisPublisher {
    /// Starts the publisher under a supervisor, on the caller's arbiter (the
    /// broker's thread). On an arbiter of its own the publish path swung between
    /// 400k and 850k events/s with the placement of three busy threads (broker,
    /// publisher, redis-server) on two cores; here it runs at 850-900k every time,
    /// and an event crosses one thread fewer on its way to Redis.
    pub fn start(config: Arc<RedisConfig>) -> Addr<RedisPublisher> {
        let link = LinkState::new(&config);
        Supervisor::start(move |_| RedisPublisher {
            config,
            conn: None,
            generation: 0,
            link,
            queue: Vec::new(),
            refused: 0,
            flush_scheduled: false,
            in_flight: 0,
            in_flight_publishes: 0,
            hold: None,
            stats: PublisherStats::default(),
            closed: false,
        })
    }

    /// Connects over RESP3 when Redis speaks it (6 and later), because only then does
    /// redis-rs report a closed connection at once (a `Disconnection` push), so a
    /// publish made after the link died is known not to have been sent, and is retried.
    /// On an older Redis, RESP2: failed commands and the PING probe find dead links.
    fn connect(&mut self, ctx: &mut Context<Self>) {
        let (generation, addr) = (self.generation, ctx.address());
        let on_push = move |info: PushInfo| {
            if info.kind == PushKind::Disconnection {
                let why = "connection closed".into();
                addr.do_send(LinkLost { generation, why });
            }
            Ok::<(), std::convert::Infallible>(())
        };
        let connect = Self::open(self.config.clone(), on_push);
        with_deadline(self.config.response_timeout, "connect", connect)
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(conn) => act.connected(conn, ctx),
                Err(e) => {
                    let attempts = act.link.attempt();
                    log::warn!("publisher: cannot connect to redis (attempt {attempts}): {e}");
                    ctx.stop();
                }
            })
            .spawn(ctx);
    }

    /// Opens the connection: RESP3 with `on_push`, or RESP2 when Redis is older.
    async fn open(
        config: Arc<RedisConfig>,
        on_push: impl Fn(PushInfo) -> Result<(), std::convert::Infallible> + Send + Sync + 'static,
    ) -> Result<MultiplexedConnection, Error> {
        let info = config.client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let pushing = config.connection_config().set_push_sender(on_push);
        let first = match redis::Client::open(info.set_redis_settings(settings)) {
            Ok(resp3) => {
                resp3
                    .get_multiplexed_async_connection_with_config(&pushing)
                    .await
            }
            Err(e) => Err(e),
        };
        match first {
            Err(e) if e.kind() == ErrorKind::RESP3NotSupported => {
                log::info!("publisher: redis does not speak RESP3; using RESP2");
                let plain = config.connection_config();
                config
                    .client
                    .get_multiplexed_async_connection_with_config(&plain)
                    .await
            }
            other => other,
        }
        .map_err(|e| Error::from_redis(&e))
    }

    fn connected(&mut self, conn: MultiplexedConnection, ctx: &mut Context<Self>) {
        log::info!(
            "publisher: connected to redis after {} failed attempts",
            self.link.failed_attempts()
        );
        self.conn = Some(conn);
        // The handshake was a real round trip: the link is proven.
        self.link.prove();
        ctx.run_interval(self.config.probe_interval, Self::probe);
    }

    /// PINGs Redis; no answer within the probe timeout means the link is dead.
    fn probe(&mut self, ctx: &mut Context<Self>) {
        let Some(mut conn) = self.conn.clone().filter(|_| !self.link.probing) else {
            return;
        };
        self.link.probing = true;
        let ping = async move {
            redis::cmd("PING")
                .query_async::<redis::Value>(&mut conn)
                .await
                .map_err(|e| Error::from_redis(&e))
        };
        with_deadline(self.config.probe_timeout, "PING", ping)
            .into_actor(self)
            .map(|result, act, ctx| {
                act.link.probing = false;
                if let Err(e) = result {
                    act.lose_link(&format!("probe failed: {e}"), ctx);
                }
            })
            .spawn(ctx);
    }

    fn lose_link(&mut self, why: &str, ctx: &mut Context<Self>) {
        if self.conn.take().is_some() {
            log::warn!("publisher: redis link lost ({why}); reconnecting");
        }
        ctx.stop();
    }

    fn enqueue(&mut self, pending: Pending, ctx: &mut Context<Self>) {
        if self.closed {
            pending.answer(Err(Error::ShuttingDown));
            return;
        }
        if self.queue.len() >= MAX_QUEUED {
            self.refuse(pending);
            return;
        }
        if self.refused > 0 && self.queue.len() < MAX_QUEUED / 2 {
            log::warn!("publisher: queue has room again; refused {}", self.refused);
            self.refused = 0;
        }
        self.queue.push(pending);
        self.schedule_flush(ctx);
    }

    /// Arranges for the queue to be sent: at once while fewer than [`MAX_IN_FLIGHT`]
    /// pipelines are out (or there is no connection, for the retry path), else when
    /// one of them ends or after [`MAX_HOLD`], whichever comes first.
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.queue.is_empty() || self.flush_scheduled {
            return;
        }
        if self.in_flight < MAX_IN_FLIGHT || self.conn.is_none() {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        } else if self.hold.is_none() {
            self.hold = Some(ctx.run_later(MAX_HOLD, |act, ctx| {
                act.hold = None;
                // Past the bound the queue waits for a pipeline to end (each has
                // its deadline) and then fills up to its own limit.
                if act.in_flight_publishes < MAX_QUEUED {
                    act.flush(ctx);
                }
            }));
        }
    }

    /// Sends up to [`MAX_PIPELINE`] queued publishes as one pipeline on the current
    /// connection: one write, one round trip, one answer for all of them. Without a
    /// connection each publish is retried after its delay, or fails.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(hold) = self.hold.take() {
            ctx.cancel_future(hold);
        }
        let take = self.queue.len().min(MAX_PIPELINE);
        let batch: Vec<Pending> = self.queue.drain(..take).collect();
        match self.conn.clone() {
            Some(conn) if !batch.is_empty() => {
                let pipeline = self.pipeline(&batch);
                let (addr, generation) = (ctx.address(), self.generation);
                self.in_flight += 1;
                self.in_flight_publishes += batch.len();
                actix::spawn(Self::send_pipeline(conn, pipeline, batch, addr, generation));
            }
            _ => batch
                .into_iter()
                .for_each(|pending| self.not_sent(pending, ctx)),
        }
        self.schedule_flush(ctx);
    }

    /// Refuses a publish because the queue is full: counted as failed, logged once
    /// per episode.
    fn refuse(&mut self, pending: Pending) {
        if self.refused == 0 {
            log::warn!("publisher: {MAX_QUEUED} publishes queued; refusing more until it drains");
        }
        self.refused += 1;
        self.stats
            .record(pending.event.room().as_str(), false, pending.retries);
        pending.answer(Err(Error::Overloaded));
    }

    /// Answers every queued publish with `error`.
    fn answer_all(&mut self, error: Error) {
        for pending in self.queue.drain(..) {
            pending.answer(Err(error.clone()));
        }
    }

    fn pipeline(&self, batch: &[Pending]) -> redis::Pipeline {
        let mut pipeline = redis::pipe();
        for pending in batch {
            let channel = self.config.channel(pending.event.room());
            let payload: &str = pending.event.json();
            pipeline.cmd("PUBLISH").arg(channel).arg(payload);
        }
        pipeline
    }

    /// A publish that found no connection cannot have reached Redis: it is retried
    /// after 100, 200, 400 ms (from an independent timer, so the actor's restarts
    /// while it reconnects do not lose it), then fails.
    fn not_sent(&mut self, mut pending: Pending, ctx: &mut Context<Self>) {
        if pending.retries >= self.config.publish_retries {
            let error = Error::NotConnected("no connection to redis".into());
            log::warn!(
                "publisher: publish to {} failed after {} retries: {error}",
                pending.event.room(),
                pending.retries
            );
            self.stats
                .record(pending.event.room().as_str(), false, pending.retries);
            pending.answer(Err(error));
            return;
        }
        let delay = self
            .config
            .publish_retry_base
            .saturating_mul(1 << pending.retries.min(16));
        pending.retries += 1;
        let addr = ctx.address();
        actix::spawn(async move {
            tokio::time::sleep(delay).await;
            addr.do_send(Retry(pending));
        });
    }

    /// Runs one pipeline and answers every publish in it. Spawned on its own: the
    /// answers do not depend on the actor surviving a restart meanwhile.
    async fn send_pipeline(
        mut conn: MultiplexedConnection,
        pipeline: redis::Pipeline,
        batch: Vec<Pending>,
        addr: Addr<Self>,
        generation: u64,
    ) {
        // The connection's response timeout (`REDIS_RESPONSE_TIMEOUT_MS`) is the
        // deadline; a failure on an open connection may have reached Redis, so it is
        // reported, never retried.
        let result = pipeline
            .query_async::<Vec<i64>>(&mut conn)
            .await
            .map(|_receivers| ())
            .map_err(|e| Error::from_redis(&e));
        if let Err(e) = &result {
            log::warn!(
                "publisher: a pipeline of {} publishes failed: {e}",
                batch.len()
            );
            if e.is_link_failure() {
                let why = e.to_string();
                addr.do_send(LinkLost { generation, why });
            }
        }
        // Counted before anyone is answered, so a caller that reads `/stats` right
        // after its answer sees its publish.
        let outcomes = batch
            .iter()
            .map(|p| (p.event.room().clone(), result.is_ok(), p.retries))
            .collect();
        addr.do_send(PipelineEnded {
            generation,
            outcomes,
        });
        for pending in batch {
            pending.answer(result.clone());
        }
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
        match self.link.connect_delay() {
            None => self.connect(ctx),
            Some(delay) => {
                ctx.run_later(delay, Self::connect);
            }
        }
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
        self.flush_scheduled = false;
        self.hold = None;
        self.in_flight = 0;
    }
}

impl Handler<PublishEvent> for RedisPublisher {
    type Result = ();

    /// Queues the publish; its answer goes straight to `msg.reply` when its pipeline
    /// ends. (Dropped unanswered only when the actor stops for good, which the
    /// caller sees as a closed mailbox: shutting down.)
    fn handle(&mut self, msg: PublishEvent, ctx: &mut Context<Self>) {
        let pending = Pending {
            event: msg.event,
            retries: 0,
            reply: msg.reply,
        };
        self.enqueue(pending, ctx);
    }
}

impl Handler<Flush> for RedisPublisher {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        self.flush(ctx);
    }
}

impl Handler<Retry> for RedisPublisher {
    type Result = ();

    fn handle(&mut self, msg: Retry, ctx: &mut Context<Self>) {
        self.enqueue(msg.0, ctx);
    }
}

impl Handler<PipelineEnded> for RedisPublisher {
    type Result = ();

    fn handle(&mut self, msg: PipelineEnded, ctx: &mut Context<Self>) {
        self.in_flight_publishes = self.in_flight_publishes.saturating_sub(msg.outcomes.len());
        for (room, succeeded, retries) in msg.outcomes {
            self.stats.record(room.as_str(), succeeded, retries);
        }
        if msg.generation == self.generation {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        self.schedule_flush(ctx);
    }
}

impl Handler<LinkLost> for RedisPublisher {
    type Result = ();

    fn handle(&mut self, msg: LinkLost, ctx: &mut Context<Self>) {
        if msg.generation == self.generation {
            self.lose_link(&msg.why, ctx);
        }
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
        MessageResult(self.stats.clone())
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
