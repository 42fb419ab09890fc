//! The `RedisPublisher` actor: owns the publishing connection.

use std::{collections::VecDeque, sync::Arc, time::Duration};

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
    queue: VecDeque<Pending>,
    /// Publishes refused since the queue last had room (logged once per episode).
    refused: u64,
    /// A [`Flush`] is on its way: publishes arriving meanwhile join its pipeline.
    flush_scheduled: bool,
    /// What is out and what waits: decides when the queue may go.
    flow: Flow,
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

/// Pipelines out at once before the queue is held (for one to end, or for
/// [`MAX_HOLD`]). A publish that finds nothing in flight goes at once; under load
/// the queue grows during one round trip into the next pipeline, so the fixed cost
/// of a pipeline (a task, a write, a read, waking the connection) is shared by
/// hundreds of publishes. With no limit pipelines averaged 128 publishes and the
/// publish path ran at 750k events/s; with one in flight they average about 490 and
/// it runs at 850-900k (`switchboard-loadgen publish-path --concurrency 1024`).
const MAX_IN_FLIGHT: usize = 1;

/// The longest a held queue waits for a pipeline to end before it is sent anyway
/// (while fewer than [`MAX_QUEUED`] are unanswered): a stalled Redis delays the
/// queue by this, not by the response deadline, so every publish still gets its own
/// full deadline.
const MAX_HOLD: Duration = Duration::from_millis(1);

/// The most publishes waiting (queued, or between retries): past it a new publish
/// is refused at once with [`Error::Overloaded`]. Also the most sent and unanswered
/// before another pipeline goes (so at most one pipeline more than this). A stalled
/// Redis thus holds about twice this many events in memory, plus what the publisher's
/// mailbox got since it last ran (it shares the broker's thread, and the broker's
/// bounded mailbox is what pushes back on callers). In practice the callers bound
/// the queue first (each waits for its answer); this is the guard against a flood
/// from in-process services.
pub const MAX_QUEUED: usize = 65_536;

/// The publisher's flow control: what is out and what waits, and so whether the
/// queue may go now. Kept apart from the actor so its rules have unit tests.
#[derive(Debug, Default)]
struct Flow {
    /// Pipelines sent on the current connection and not answered.
    pipelines: usize,
    /// Publishes sent and not answered, on any connection.
    unanswered: usize,
    /// Publishes between retries (in a timer, not in the queue).
    retrying: usize,
}

/// What to do with a queue that is not empty.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Send a pipeline now (or, without a connection, start the retries).
    Now,
    /// Wait for the pipeline out to end, or for [`MAX_HOLD`].
    Hold,
    /// [`MAX_QUEUED`] are unanswered: wait for a pipeline to end.
    Wait,
}

impl Flow {
    /// Publishes waiting: the `queued` ones and those between retries.
    fn waiting(&self, queued: usize) -> usize {
        queued + self.retrying
    }

    /// Whether a new publish finds room among them.
    fn has_room(&self, queued: usize) -> bool {
        self.waiting(queued) < MAX_QUEUED
    }

    /// Whether a pipeline may go at all (the hold timer's question).
    fn may_send(&self) -> bool {
        self.unanswered < MAX_QUEUED
    }

    fn next(&self, connected: bool) -> Next {
        if !connected {
            Next::Now
        } else if !self.may_send() {
            Next::Wait
        } else if self.pipelines < MAX_IN_FLIGHT {
            Next::Now
        } else {
            Next::Hold
        }
    }

    fn sent(&mut self, publishes: usize) {
        self.pipelines += 1;
        self.unanswered += publishes;
    }

    /// A pipeline of `publishes` ended, on the current connection or an old one.
    fn ended(&mut self, publishes: usize, current_connection: bool) {
        debug_assert!(self.unanswered >= publishes, "{self:?} less {publishes}");
        self.unanswered = self.unanswered.saturating_sub(publishes);
        if current_connection {
            debug_assert!(self.pipelines > 0, "{self:?}");
            self.pipelines = self.pipelines.saturating_sub(1);
        }
    }

    /// A publish goes to wait out its retry delay.
    fn retry_started(&mut self) {
        self.retrying += 1;
    }

    /// A publish is back from its retry delay, for the queue.
    fn retry_due(&mut self) {
        debug_assert!(self.retrying > 0, "{self:?}");
        self.retrying = self.retrying.saturating_sub(1);
    }

    /// A new connection: the old one's pipelines no longer hold the queue (their
    /// publishes still count as unanswered until they end).
    fn reconnecting(&mut self) {
        self.pipelines = 0;
    }
}

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
            queue: VecDeque::new(),
            refused: 0,
            flush_scheduled: false,
            flow: Flow::default(),
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

    /// Takes a new publish: queued, or refused when [`MAX_QUEUED`] are waiting.
    fn accept(&mut self, pending: Pending, ctx: &mut Context<Self>) {
        if !self.closed && !self.flow.has_room(self.queue.len()) {
            self.refuse(pending);
            return;
        }
        if self.refused > 0 && self.flow.waiting(self.queue.len()) < MAX_QUEUED / 2 {
            log::warn!("publisher: queue has room again; refused {}", self.refused);
            self.refused = 0;
        }
        self.enqueue(pending, ctx);
    }

    fn enqueue(&mut self, pending: Pending, ctx: &mut Context<Self>) {
        if self.closed {
            pending.answer(Err(Error::ShuttingDown));
            return;
        }
        self.queue.push_back(pending);
        self.schedule_flush(ctx);
    }

    /// Arranges for the queue to be sent, as [`Flow::next`] says: at once; when the
    /// pipeline out ends or after [`MAX_HOLD`], whichever comes first; or, with
    /// [`MAX_QUEUED`] unanswered, when a pipeline ends.
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.queue.is_empty() || self.flush_scheduled {
            return;
        }
        match self.flow.next(self.conn.is_some()) {
            Next::Now => {
                self.flush_scheduled = true;
                ctx.notify(Flush);
            }
            Next::Hold if self.hold.is_none() => {
                self.hold = Some(ctx.run_later(MAX_HOLD, |act, ctx| {
                    act.hold = None;
                    act.flush(ctx);
                }));
            }
            // `PipelineEnded` calls again.
            Next::Hold | Next::Wait => {}
        }
    }

    /// Sends up to [`MAX_PIPELINE`] queued publishes as one pipeline on the current
    /// connection: one write, one round trip, one answer for all of them. Without a
    /// connection each publish is retried after its delay, or fails.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(hold) = self.hold.take() {
            ctx.cancel_future(hold);
        }
        match self.conn.clone() {
            Some(conn) if self.flow.may_send() && !self.queue.is_empty() => {
                let take = self.queue.len().min(MAX_PIPELINE);
                let batch: Vec<Pending> = self.queue.drain(..take).collect();
                let pipeline = self.pipeline(&batch);
                let (addr, generation) = (ctx.address(), self.generation);
                self.flow.sent(batch.len());
                actix::spawn(Self::send_pipeline(conn, pipeline, batch, addr, generation));
            }
            Some(_) => {}
            None => {
                for pending in std::mem::take(&mut self.queue) {
                    self.not_sent(pending, ctx);
                }
            }
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
        self.flow.retry_started();
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
        self.flow.reconnecting();
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
        self.accept(pending, ctx);
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
        // Already accepted: it moves from the retrying to the queue.
        self.flow.retry_due();
        self.enqueue(msg.0, ctx);
    }
}

impl Handler<PipelineEnded> for RedisPublisher {
    type Result = ();

    fn handle(&mut self, msg: PipelineEnded, ctx: &mut Context<Self>) {
        self.flow
            .ended(msg.outcomes.len(), msg.generation == self.generation);
        for (room, succeeded, retries) in msg.outcomes {
            self.stats.record(room.as_str(), succeeded, retries);
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
        MessageResult(PublisherStats {
            waiting: self.flow.waiting(self.queue.len()) as u64,
            unanswered: self.flow.unanswered as u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_goes_at_once_when_nothing_is_out_and_is_held_behind_a_pipeline() {
        let mut flow = Flow::default();
        assert_eq!(flow.next(true), Next::Now);
        flow.sent(10);
        assert_eq!(flow.next(true), Next::Hold);
        flow.ended(10, true);
        assert_eq!(flow.next(true), Next::Now);
        assert_eq!(flow.unanswered, 0);
    }

    #[test]
    fn without_a_connection_the_queue_takes_the_retry_path_at_once() {
        let mut flow = Flow::default();
        flow.sent(MAX_QUEUED);
        assert_eq!(flow.next(false), Next::Now);
    }

    #[test]
    fn with_max_queued_unanswered_nothing_is_sent_until_a_pipeline_ends() {
        let mut flow = Flow::default();
        for _ in 0..MAX_QUEUED / MAX_PIPELINE {
            flow.sent(MAX_PIPELINE);
        }
        assert!(!flow.may_send(), "not even when the hold timer fires");
        assert_eq!(flow.next(true), Next::Wait);
        flow.ended(MAX_PIPELINE, true);
        assert!(flow.may_send());
        assert_eq!(flow.next(true), Next::Hold, "other pipelines are still out");
    }

    #[test]
    fn an_old_connections_pipeline_frees_its_publishes_but_not_the_new_slot() {
        let mut flow = Flow::default();
        flow.sent(100);
        flow.reconnecting();
        assert_eq!(
            flow.next(true),
            Next::Now,
            "the old connection's pipeline does not hold the new one's queue"
        );
        flow.sent(5);
        flow.ended(100, false);
        assert_eq!(flow.unanswered, 5);
        assert_eq!(flow.next(true), Next::Hold, "the new pipeline is still out");
    }

    #[test]
    fn publishes_between_retries_count_against_the_queue_bound() {
        let mut flow = Flow::default();
        assert!(flow.has_room(MAX_QUEUED - 1));
        flow.retry_started();
        assert!(!flow.has_room(MAX_QUEUED - 1));
        flow.retry_due();
        assert!(flow.has_room(MAX_QUEUED - 1));
    }
}
