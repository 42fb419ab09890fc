//! Pipelining: publishes queue up and go to Redis in pipelines, one write and one
//! round trip for many; a publish that found no connection is retried.

use std::sync::Arc;

use actix::prelude::*;
use redis::{aio::MultiplexedConnection, Value};

use super::{
    connection::LinkLost,
    flow::{Next, MAX_HOLD, MAX_QUEUED},
    RedisPublisher, Reply,
};
use crate::{
    durable::{scripts, IdempotencyKey, Published},
    stages::{Stage, STAGES},
    Error, Event, Room,
};

/// The most PUBLISH commands in one pipeline.
pub(super) const MAX_PIPELINE: usize = 512;

/// The most durable publishes of one room numbered by one script call.
const MAX_ROOM_BATCH: usize = 128;

/// A pipeline and, per command in it, the publishes it carries (by their place in
/// the batch).
struct Plan {
    pipeline: redis::Pipeline,
    commands: Vec<Command>,
}

/// The publishes of one command of a pipeline.
enum Command {
    /// One publish: its own command (a plain `PUBLISH`, a keyed or retried one).
    One(usize),
    /// A durable room's run of plain publishes, numbered by one script call.
    Run(Vec<usize>),
}

/// One publish on its way, with the caller's answer.
pub(super) struct Pending {
    pub(super) event: Arc<Event>,
    /// In a durable room: numbered by the publish script.
    pub(super) durable: bool,
    pub(super) key: Option<IdempotencyKey>,
    /// A durable publish's id, kept in the room's history with it.
    pub(super) publish_id: Option<Box<str>>,
    /// An earlier attempt may have been applied: the script looks for the publish id
    /// before publishing.
    pub(super) ambiguous: bool,
    /// Retries made so far.
    pub(super) retries: u32,
    pub(super) reply: Option<Reply>,
}

impl Pending {
    fn answer(self, outcome: Result<Published, Error>) {
        if let Some(reply) = self.reply {
            let _ = reply.send(outcome);
        }
    }

    /// Whether another attempt after `error` cannot publish the event twice: the
    /// attempt did not reach Redis, or (a durable publish) the retry looks for it.
    fn may_retry_after(&self, error: &Error) -> bool {
        error.is_retryable() || (self.durable && error.is_ambiguous())
    }

    /// Whether it may be numbered with other publishes of its room in one script
    /// call: a durable publish without a key, not a retry that must look for itself.
    fn joins_room_batch(&self) -> bool {
        self.durable && self.key.is_none() && !self.ambiguous
    }

    /// This publish's command in `pipeline`.
    fn command(&self, publisher: &RedisPublisher, pipeline: &mut redis::Pipeline) {
        let config = &publisher.config;
        match (&self.publish_id, &self.key) {
            (Some(id), key) => scripts::add_publish(
                pipeline,
                config,
                &publisher.durable,
                &self.event,
                key.as_ref(),
                id,
                self.ambiguous,
            ),
            (None, Some(key)) => {
                scripts::add_keyed(pipeline, config, &publisher.durable, &self.event, key)
            }
            (None, None) => {
                let channel = config.channel(self.event.room());
                let payload: &str = self.event.json();
                pipeline.cmd("PUBLISH").arg(channel).arg(payload);
            }
        }
    }

    /// What Redis's answer to this publish's command means.
    fn outcome(&self, answer: redis::RedisResult<Value>) -> Result<Published, Error> {
        let value = answer.map_err(|e| Error::from_redis(&e))?;
        if self.durable {
            let position = scripts::published_position(&value)?;
            return Ok(Published {
                position: Some(position),
            });
        }
        Ok(Published::default())
    }
}

/// Whether the queue's next pipeline is arranged, and how: one state, so the queue
/// is never both due and held.
#[derive(Debug, Default)]
pub(super) enum FlushState {
    /// Nothing is arranged: the next publish, or the next pipeline to end, asks
    /// [`Flow::next`](super::flow::Flow::next).
    #[default]
    Unscheduled,
    /// A [`Flush`] is in the mailbox: publishes arriving before it runs join its
    /// pipeline.
    Due,
    /// As many pipelines are out as may be, and the queue waits for one to end, or
    /// for this timer, which sends the queue after [`MAX_HOLD`] anyway.
    Held(SpawnHandle),
}

/// Send the queued publishes as one pipeline.
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

/// A publish that found no connection, back for another attempt after its delay.
#[derive(Message)]
#[rtype(result = "()")]
struct Retry(Pending);

/// A pipeline ended; the actor counts its publishes and retries those that may be.
#[derive(Message)]
#[rtype(result = "()")]
struct PipelineEnded {
    /// The connection it ran on (see [`RedisPublisher::generation`]).
    generation: u64,
    /// How many publishes it carried.
    sent: usize,
    /// Each answered publish's room, whether Redis took it, and its retries.
    outcomes: Vec<(Room, bool, u32)>,
    /// Publishes to retry, with the error of their attempt.
    again: Vec<(Pending, Error)>,
}

impl RedisPublisher {
    /// Takes a new publish: queued, or refused when [`MAX_QUEUED`] are waiting.
    pub(super) fn accept(&mut self, pending: Pending, ctx: &mut Context<Self>) {
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

    /// Arranges for the queue to be sent, as [`Flow::next`](super::flow::Flow::next)
    /// says: at once; when one of the pipelines out ends or after [`MAX_HOLD`],
    /// whichever comes first; or, with [`MAX_QUEUED`] unanswered, when a pipeline ends.
    pub(super) fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.queue.is_empty() || matches!(self.next_flush, FlushState::Due) {
            return;
        }
        match (self.flow.next(self.conn.is_some()), &self.next_flush) {
            (Next::Now, _) => {
                // A held queue now goes with the `Flush`: its timer must not send it
                // a second time.
                let was = std::mem::replace(&mut self.next_flush, FlushState::Due);
                if let FlushState::Held(timer) = was {
                    ctx.cancel_future(timer);
                }
                ctx.notify(Flush);
            }
            (Next::Hold, FlushState::Unscheduled) => {
                let timer = ctx.run_later(MAX_HOLD, |act, ctx| {
                    act.next_flush = FlushState::Unscheduled;
                    act.flush(ctx);
                });
                self.next_flush = FlushState::Held(timer);
            }
            // Held already, or waiting: `PipelineEnded` calls again.
            (Next::Hold | Next::Wait, _) => {}
        }
    }

    /// Sends up to [`MAX_PIPELINE`] queued publishes as one pipeline on the current
    /// connection: one write, one round trip, one answer for all of them. Without a
    /// connection each publish is retried after its delay, or fails.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        // Whatever was arranged happens now.
        if let FlushState::Held(timer) = std::mem::take(&mut self.next_flush) {
            ctx.cancel_future(timer);
        }
        match self.conn.clone() {
            Some(conn) if self.flow.may_send() && !self.queue.is_empty() => {
                let take = self.queue.len().min(MAX_PIPELINE);
                let batch: Vec<Pending> = self.queue.drain(..take).collect();
                let plan = self.plan(&batch);
                let (addr, generation) = (ctx.address(), self.generation);
                self.flow.sent(batch.len());
                actix::spawn(Self::send_pipeline(conn, plan, batch, addr, generation));
            }
            Some(_) => {}
            None => {
                let error = Error::NotConnected("no connection to redis".into());
                for pending in std::mem::take(&mut self.queue) {
                    self.retry_or_fail(pending, &error, ctx);
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
    pub(super) fn answer_all(&mut self, error: Error) {
        for pending in self.queue.drain(..) {
            pending.answer(Err(error.clone()));
        }
    }

    /// One pipeline for the batch; each command's answer comes back on its own
    /// (`ignore_errors`), so one refused command does not fail the others. A durable
    /// room's plain publishes go as one script call per room (up to
    /// [`MAX_ROOM_BATCH`]): Redis spends most of a durable publish on the call itself,
    /// so numbering a run of them at once multiplies what one Redis thread can take.
    fn plan(&self, batch: &[Pending]) -> Plan {
        let mut commands: Vec<Command> = Vec::with_capacity(batch.len());
        // Built only when the batch has a durable publish: plain publishes cost no map.
        let mut open_runs: Option<std::collections::HashMap<&crate::Room, usize>> = None;
        for (i, pending) in batch.iter().enumerate() {
            if !pending.joins_room_batch() {
                commands.push(Command::One(i));
                continue;
            }
            let runs = open_runs.get_or_insert_with(Default::default);
            let room = pending.event.room();
            match runs.get(room).map(|&c| &mut commands[c]) {
                Some(Command::Run(run)) if run.len() < MAX_ROOM_BATCH => run.push(i),
                _ => {
                    runs.insert(room, commands.len());
                    commands.push(Command::Run(vec![i]));
                }
            }
        }
        let mut pipeline = redis::pipe();
        pipeline.ignore_errors();
        for command in &commands {
            match command {
                Command::One(i) => batch[*i].command(self, &mut pipeline),
                Command::Run(run) => {
                    let members: Vec<(&Event, &str)> = run
                        .iter()
                        .map(|&i| {
                            let pending = &batch[i];
                            let id = pending.publish_id.as_deref().unwrap_or_default();
                            (&*pending.event, id)
                        })
                        .collect();
                    scripts::add_publish_run(&mut pipeline, &self.config, &self.durable, &members);
                }
            }
        }
        Plan { pipeline, commands }
    }

    /// A publish whose attempt failed with `error`. When another attempt cannot
    /// duplicate it (`Pending::may_retry_after`: the attempt found no connection, or
    /// Redis lacked the script; or, in a durable room, its answer was lost and the
    /// retry looks for it first), it is retried after 100, 200, 400 ms (from an
    /// independent timer, so the actor's restarts while it reconnects do not lose
    /// it); otherwise, or once its retries are spent, it fails with `error`.
    fn retry_or_fail(&mut self, mut pending: Pending, error: &Error, ctx: &mut Context<Self>) {
        if !pending.may_retry_after(error) || pending.retries >= self.config.publish_retries {
            log::warn!(
                "publisher: publish to {} failed after {} retries: {error}",
                pending.event.room(),
                pending.retries
            );
            self.stats
                .record(pending.event.room().as_str(), false, pending.retries);
            pending.answer(Err(error.clone()));
            return;
        }
        let delay = self
            .config
            .publish_retry_base
            .saturating_mul(1 << pending.retries.min(16));
        pending.retries += 1;
        pending.ambiguous |= error.is_ambiguous();
        if matches!(error, Error::NoScript) {
            self.reload_scripts();
        }
        self.flow.retry_started();
        let addr = ctx.address();
        actix::spawn(async move {
            tokio::time::sleep(delay).await;
            addr.do_send(Retry(pending));
        });
    }

    /// Loads the scripts again on the current connection (Redis answered `NOSCRIPT`:
    /// it restarted under the connection, or someone ran `SCRIPT FLUSH`).
    fn reload_scripts(&self) {
        let Some(mut conn) = self.conn.clone() else {
            return;
        };
        actix::spawn(async move {
            if let Err(e) = scripts::load(&mut conn).await {
                log::warn!("publisher: loading the scripts failed: {e}");
            }
        });
    }

    /// Runs one pipeline and answers every publish in it. Spawned on its own: the
    /// answers do not depend on the actor surviving a restart meanwhile.
    async fn send_pipeline(
        mut conn: MultiplexedConnection,
        plan: Plan,
        batch: Vec<Pending>,
        addr: Addr<Self>,
        generation: u64,
    ) {
        // The connection's response timeout (`REDIS_RESPONSE_TIMEOUT_MS`) is the
        // deadline; a failure on an open connection may have reached Redis, so it is
        // reported, and retried only where the retry cannot duplicate (a durable room).
        let sent = std::time::Instant::now();
        let result = plan
            .pipeline
            .query_async::<Vec<redis::RedisResult<Value>>>(&mut conn)
            .await
            .map_err(|e| Error::from_redis(&e));
        let answers: Vec<Result<Published, Error>> = match result {
            Ok(answers) => {
                STAGES.record(Stage::PublishRoundTrip, sent.elapsed());
                let mut outcomes: Vec<Option<Result<Published, Error>>> =
                    (0..batch.len()).map(|_| None).collect();
                for (command, answer) in plan.commands.iter().zip(answers) {
                    match command {
                        Command::One(i) => outcomes[*i] = Some(batch[*i].outcome(answer)),
                        Command::Run(run) => {
                            let numbered = answer
                                .map_err(|e| Error::from_redis(&e))
                                .and_then(|v| scripts::run_positions(&v, run.len()));
                            for (j, &i) in run.iter().enumerate() {
                                let outcome = match &numbered {
                                    Ok(positions) => Ok(Published {
                                        position: Some(positions[j].clone()),
                                    }),
                                    Err(e) => Err(e.clone()),
                                };
                                outcomes[i] = Some(outcome);
                            }
                        }
                    }
                }
                let missing = || Err(Error::Redis("no answer for a publish".into()));
                outcomes
                    .into_iter()
                    .map(|o| o.unwrap_or_else(missing))
                    .collect()
            }
            Err(e) => {
                log::warn!(
                    "publisher: a pipeline of {} publishes failed: {e}",
                    batch.len()
                );
                if e.is_link_failure() {
                    let why = e.to_string();
                    addr.do_send(LinkLost { generation, why });
                }
                vec![Err(e); batch.len()]
            }
        };
        let size = batch.len();
        let mut done = Vec::with_capacity(size);
        let mut again = Vec::new();
        for (pending, outcome) in batch.into_iter().zip(answers) {
            match outcome {
                Err(e) if pending.may_retry_after(&e) => again.push((pending, e)),
                outcome => done.push((pending, outcome)),
            }
        }
        // Counted before anyone is answered, so a caller that reads `/stats` right
        // after its answer sees its publish.
        let outcomes = done
            .iter()
            .map(|(p, outcome)| (p.event.room().clone(), outcome.is_ok(), p.retries))
            .collect();
        addr.do_send(PipelineEnded {
            generation,
            sent: size,
            outcomes,
            again,
        });
        for (pending, outcome) in done {
            pending.answer(outcome);
        }
    }
}

impl Handler<Flush> for RedisPublisher {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
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
        self.flow.ended(msg.sent, msg.generation == self.generation);
        for (room, succeeded, retries) in msg.outcomes {
            self.stats.record(room.as_str(), succeeded, retries);
        }
        for (pending, error) in msg.again {
            self.retry_or_fail(pending, &error, ctx);
        }
        self.schedule_flush(ctx);
    }
}
