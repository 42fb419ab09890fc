//! The `RedisSubscriber` actor: owns the server's one pub/sub connection; `owed.rs`
//! keeps what it owes the broker besides events (news of dropped events, relink
//! notices waiting for a place).

mod owed;

use std::{future::Future, sync::Arc, time::Instant};

use actix::prelude::*;
use bytes::Bytes;
use redis::{
    aio::{PubSub, PubSubSink},
    Msg,
};
use tokio::sync::mpsc::{self, error::TrySendError};

use self::owed::Owed;
use crate::{
    link::{with_deadline, GetLinkStatus, LinkState, LinkStatus, RedisConfig, RedisLink},
    subscriptions::{Batch, Subscriptions, Want},
    Error, Event, Inbound, ResetStats, Room, Shutdown, SubscriberStats, SYSTEM_EVENTS,
};

/// Owns the pub/sub connection: SUBSCRIBE and UNSUBSCRIBE as the broker asks, and
/// every message from Redis, checked, counted and handed to the broker.
///
/// The broker tells it which rooms are wanted ([`WatchRoom`], [`UnwatchRoom`]); the
/// subscriber makes Redis agree, batching the channels that changed while a command
/// was in flight into one SUBSCRIBE, and answers a `WatchRoom` only once a SUBSCRIBE
/// sent after it was confirmed (see `Subscriptions`).
///
/// Supervised: when the stream of messages ends, a command fails or a PING probe goes
/// unanswered, the actor stops; its [`Supervisor`] restarts it, it reconnects (at once
/// after losing a proven link, else after a capped, jittered backoff) and subscribes
/// every room still wanted. The wanted set, the owed confirmations (those of a batch
/// cut off in flight included) and the statistics live in the actor, so they survive.
pub struct RedisSubscriber {
    config: Arc<RedisConfig>,
    identity: SubscriberIdentity,
    /// Valid events for the broker: a bounded channel of its own, so the broker's
    /// control traffic cannot crowd out delivery, and a full one sheds load visibly.
    inbound: mpsc::Sender<Inbound>,
    sink: Option<PubSubSink>,
    rooms: Subscriptions,
    /// The batch whose commands are in flight; kept here (not in the future) so a
    /// restart can hand its owed confirmations back.
    in_flight: Option<Batch>,
    /// Connected, and the rooms wanted at connect time confirmed since.
    ready: bool,
    connected_at: Option<Instant>,
    link: LinkState,
    stats: SubscriberStats,
    /// Notices the broker is owed: of dropped events, and of rooms back after a lost
    /// link whose notice waits for a place in its channel.
    owed: Owed,
    closed: bool,
}

/// Make sure the room's channel is subscribed; answers once Redis confirmed it.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), Error>")]
pub struct WatchRoom {
    /// The room.
    pub room: Room,
}

/// The room is no longer wanted: unsubscribe its channel.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UnwatchRoom {
    /// The room.
    pub room: Room,
}

/// Ask the subscriber for its statistics.
#[derive(Debug, Message)]
#[rtype(result = "SubscriberStats")]
pub struct GetSubscriberStats;

/// Who the subscriber works for.
#[derive(Debug, Clone)]
pub struct SubscriberIdentity {
    /// Messages carrying this `serverId` are this server's own echoes.
    pub server_id: Arc<str>,
    /// This process's random instance id: a `system:events` message with our
    /// `serverId` but another instance id comes from a duplicate, not from us.
    pub instance_id: Arc<str>,
}

impl RedisSubscriber {
    /// Starts the subscriber under a supervisor; it sends valid events to `inbound`.
    pub fn start(
        config: Arc<RedisConfig>,
        identity: SubscriberIdentity,
        inbound: mpsc::Sender<Inbound>,
    ) -> Addr<RedisSubscriber> {
        let link = LinkState::new(&config);
        Supervisor::start(move |_| RedisSubscriber {
            config,
            identity,
            inbound,
            sink: None,
            rooms: Subscriptions::default(),
            in_flight: None,
            ready: false,
            connected_at: None,
            link,
            stats: SubscriberStats::default(),
            owed: Owed::default(),
            closed: false,
        })
    }

    /// Sends what changed: one UNSUBSCRIBE and one SUBSCRIBE with every channel queued
    /// since the last command. One command at a time, so Redis sees them in order.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(mut sink) = self.sink.clone() else {
            return;
        };
        let Some(batch) = self.rooms.next_batch() else {
            return;
        };
        let unsubscribe: Vec<String> = batch
            .unsubscribe
            .iter()
            .map(|r| self.config.channel(r))
            .collect();
        let subscribe: Vec<String> = batch
            .subscribe
            .iter()
            .map(|r| self.config.channel(r))
            .collect();
        self.in_flight = Some(batch);
        let command = async move {
            if !unsubscribe.is_empty() {
                sink.unsubscribe(&unsubscribe)
                    .await
                    .map_err(|e| Error::from_redis(&e))?;
            }
            if !subscribe.is_empty() {
                sink.subscribe(&subscribe)
                    .await
                    .map_err(|e| Error::from_redis(&e))?;
            }
            Ok(())
        };
        with_deadline(self.config.response_timeout, "SUBSCRIBE", command)
            .into_actor(self)
            .map(|result, act, ctx| {
                let Some(batch) = act.in_flight.take() else {
                    return;
                };
                match result {
                    Ok(()) => {
                        for room in act.rooms.confirmed(batch) {
                            act.report_relinked(room, ctx);
                        }
                        act.link.prove();
                        act.mark_ready();
                        act.flush(ctx);
                    }
                    Err(e) => {
                        act.rooms.failed(batch);
                        act.lose_link(&format!("subscribe failed: {e}"), ctx);
                    }
                }
            })
            .spawn(ctx);
    }

    /// The first batch after a connect carries every room wanted then: once it is
    /// confirmed the link is ready, whatever churn follows.
    fn mark_ready(&mut self) {
        if !self.ready {
            self.ready = true;
            let took = self
                .connected_at
                .map(|t| t.elapsed().as_millis())
                .unwrap_or(0);
            log::info!(
                "subscriber {}: {} rooms subscribed, {took} ms after connecting",
                self.identity.server_id,
                self.rooms.held()
            );
        }
    }

    /// Whether a message with our own `serverId` is really ours: on `system:events`
    /// a different `instanceId` means a duplicate server id, which the peers must see.
    /// Events numbered in Redis (durable rooms), keyed publishes and the presence
    /// scripts' joins and leaves are not echoes: they reach their own server only
    /// through Redis (PROTOCOL.md §2, §9).
    fn is_own_echo(&self, event: &Event) -> bool {
        if event.server_id() != Some(&*self.identity.server_id)
            || event.position().is_some()
            || event.is_keyed()
            || event.presence().is_some()
        {
            return false;
        }
        if event.room().as_str() != SYSTEM_EVENTS {
            return true;
        }
        #[derive(serde::Deserialize)]
        struct Announce {
            #[serde(rename = "instanceId")]
            instance_id: Option<String>,
        }
        match event.data::<Announce>() {
            Ok(Announce {
                instance_id: Some(id),
            }) => *id == *self.identity.instance_id,
            _ => true,
        }
    }

    /// `room` is held again after a lost link: the broker decides what that means
    /// for it (a catch-up read in a durable room, a `link_lost` gap in a plain one).
    /// Never dropped: when the broker's channel is full, the notice waits (in
    /// [`Owed`]) for the next place in it (senders get places in the order
    /// they asked), and the room's events are dropped until it is in, so that none
    /// overtakes it (they are told as dropped after it).
    fn report_relinked(&mut self, room: Room, ctx: &mut Context<Self>) {
        log::info!(
            "subscriber {}: {room} subscribed again after a lost link",
            self.identity.server_id
        );
        if !self.owed.may_forward(&room) {
            return; // The notice still waiting covers this lost link too.
        }
        let notice = match self.inbound.try_send(Inbound::Relinked(room)) {
            Ok(()) => return,
            Err(TrySendError::Full(Inbound::Relinked(room))) => room,
            Err(_) => {
                log::debug!(
                    "subscriber {}: the broker is gone; a relink was not told",
                    self.identity.server_id
                );
                return;
            }
        };
        self.owed.relink_waits(notice.clone());
        self.inbound
            .clone()
            .reserve_owned()
            .into_actor(self)
            .map(move |place, act, _| match place {
                Ok(place) if act.owed.relink_placed(&notice) => {
                    place.send(Inbound::Relinked(notice));
                }
                Ok(_) => {} // The room was let go meanwhile.
                Err(_) => {
                    act.owed.relink_placed(&notice);
                    log::debug!(
                        "subscriber {}: the broker is gone; a relink was not told",
                        act.identity.server_id
                    );
                }
            })
            .spawn(ctx);
    }

    /// Tells the broker, as room in its channel allows, which rooms lost events to it
    /// and had no event since to carry the news (on the subscriber's timer), once any
    /// relink notice of theirs is in.
    fn tell_dropped(&mut self) {
        for (room, unnumbered) in self.owed.drops_to_tell() {
            let notice = Inbound::Dropped {
                room: room.clone(),
                unnumbered,
            };
            match self.inbound.try_send(notice) {
                Ok(()) => self.owed.drop_told(&room),
                Err(TrySendError::Full(_)) => return,
                Err(TrySendError::Closed(_)) => {
                    self.owed.forget_drops();
                    return;
                }
            }
        }
    }

    /// Hands a valid event to the broker, or drops and counts it when the broker is
    /// too far behind. The room's next event that gets through says so
    /// ([`Inbound::AfterDrop`]), or, when none comes, the subscriber's timer does
    /// ([`Inbound::Dropped`]): its recipients learn of the loss before any later event.
    /// A room that lost events goes on losing them until the channel is half empty
    /// again, so an overload costs each room one notice, not one per event that slips
    /// through.
    fn forward(&mut self, event: Event) {
        let room = event.room().clone();
        let unnumbered = event.position().is_none();
        if !self.owed.may_forward(&room) {
            self.drop_event(room, unnumbered);
            return;
        }
        let pending = self.owed.dropped_untold(&room);
        let refilling = self.inbound.capacity() < self.inbound.max_capacity() / 2;
        let inbound = match pending {
            Some(_) if refilling => {
                self.drop_event(room, unnumbered);
                return;
            }
            Some(lost_unnumbered) => Inbound::AfterDrop {
                event: Arc::new(event),
                unnumbered: lost_unnumbered,
            },
            None => Inbound::Event(Arc::new(event)),
        };
        match self.inbound.try_send(inbound) {
            Ok(()) => {
                if pending.is_some() {
                    self.owed.drop_told(&room);
                }
            }
            Err(TrySendError::Full(_)) => self.drop_event(room, unnumbered),
            Err(TrySendError::Closed(_)) => {
                log::debug!("subscriber {}: the broker is gone", self.identity.server_id);
            }
        }
    }

    /// Counts and logs an event dropped for a full channel, and remembers its room.
    fn drop_event(&mut self, room: Room, unnumbered: bool) {
        self.stats.dropped_events += 1;
        let dropped = self.stats.dropped_events;
        if dropped <= 10 || dropped.is_power_of_two() {
            log::error!(
                "subscriber {}: the broker is overloaded; dropped an event in {room} ({dropped} so far)",
                self.identity.server_id
            );
        }
        self.owed.dropped(room, unnumbered);
    }
}

impl Actor for RedisSubscriber {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.closed {
            return;
        }
        // Abandoned confirmations (their subscribe timed out at the broker) are
        // dropped on a timer that runs connected or not.
        ctx.run_interval(self.config.probe_interval, |act, _| {
            act.rooms.prune();
            act.tell_dropped();
        });
        self.connect_when_due(ctx);
    }
}

impl RedisLink for RedisSubscriber {
    type Connection = PubSub;

    fn config(&self) -> &RedisConfig {
        &self.config
    }

    fn link_state(&mut self) -> &mut LinkState {
        &mut self.link
    }

    fn name(&self) -> String {
        format!("subscriber {}", self.identity.server_id)
    }

    fn open(
        &mut self,
        _ctx: &mut Context<Self>,
    ) -> impl Future<Output = Result<PubSub, Error>> + 'static {
        let client = self.config.client.clone();
        async move {
            client
                .get_async_pubsub()
                .await
                .map_err(|e| Error::from_redis(&e))
        }
    }

    /// Subscribes every room wanted; the link is proven by the first confirmed
    /// SUBSCRIBE, not by the handshake.
    fn connected(&mut self, pubsub: PubSub, ctx: &mut Context<Self>) {
        let (sink, stream) = pubsub.split();
        log::info!(
            "subscriber {}: connected to redis after {} failed attempts; subscribing {} rooms",
            self.identity.server_id,
            self.link.failed_attempts(),
            self.rooms.wanted()
        );
        self.sink = Some(sink);
        self.connected_at = Some(Instant::now());
        self.rooms.reconnected();
        self.flush(ctx);
        ctx.add_stream(stream);
    }

    fn ping(&self) -> Option<impl Future<Output = Result<(), Error>> + 'static> {
        let mut sink = self.sink.clone()?;
        Some(async move {
            sink.ping::<redis::Value>()
                .await
                .map(|_pong| ())
                .map_err(|e| Error::from_redis(&e))
        })
    }

    fn drop_connection(&mut self, why: &str) {
        if self.sink.take().is_some() {
            self.stats.links_lost += 1;
            log::warn!(
                "subscriber {}: redis link lost ({why}); messages published until it is back are lost; reconnecting",
                self.identity.server_id
            );
        }
    }
}

impl Supervised for RedisSubscriber {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // A batch cut off in flight keeps its confirmations owed, and nothing is held
        // while the link is down: a subscribe now waits for the resubscribe instead of
        // being answered from a stale confirmation.
        if let Some(batch) = self.in_flight.take() {
            self.rooms.failed(batch);
        }
        self.owed.restarted();
        self.rooms.reconnected();
        self.sink = None;
        self.ready = false;
        self.connected_at = None;
        self.link.lost();
    }
}

impl StreamHandler<Msg> for RedisSubscriber {
    fn handle(&mut self, msg: Msg, _ctx: &mut Context<Self>) {
        let Some(room) = self.config.room(msg.get_channel_name()) else {
            log::debug!(
                "subscriber {}: message on foreign channel {}",
                self.identity.server_id,
                msg.get_channel_name()
            );
            return;
        };
        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
        match Event::parse(room.clone(), payload) {
            Ok(event) if self.is_own_echo(&event) => self.stats.record_echo(),
            Ok(event) => {
                self.stats.record_received(room.as_str(), true);
                self.forward(event);
            }
            Err(e) => {
                self.stats.record_received(room.as_str(), false);
                let failed = self.stats.failed_events;
                // Logged, but not once per message: a flood of bad payloads must not
                // become a flood of log lines.
                if failed <= 10 || failed.is_power_of_two() {
                    log::warn!(
                        "subscriber {}: skipped an invalid event in {room} ({failed} so far): {e}",
                        self.identity.server_id
                    );
                }
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.lose_link("connection closed", ctx);
    }
}

impl Handler<WatchRoom> for RedisSubscriber {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(&mut self, msg: WatchRoom, ctx: &mut Context<Self>) -> Self::Result {
        match self.rooms.want(msg.room) {
            Want::Confirmed => Box::pin(async { Ok(()) }),
            Want::Owed(confirmation) => {
                self.flush(ctx);
                Box::pin(async move { confirmation.await.map_err(|_| Error::ShuttingDown) })
            }
        }
    }
}

impl Handler<UnwatchRoom> for RedisSubscriber {
    type Result = ();

    fn handle(&mut self, msg: UnwatchRoom, ctx: &mut Context<Self>) {
        // Nobody here is left to tell of a loss in it.
        self.owed.let_go(&msg.room);
        self.rooms.unwant(&msg.room, self.sink.is_some());
        self.flush(ctx);
    }
}

impl Handler<GetLinkStatus> for RedisSubscriber {
    type Result = LinkStatus;

    fn handle(&mut self, _: GetLinkStatus, _ctx: &mut Context<Self>) -> LinkStatus {
        LinkStatus {
            ready: self.ready && self.sink.is_some(),
            failed_attempts: self.link.failed_attempts(),
            channels: self.rooms.held(),
        }
    }
}

impl Handler<GetSubscriberStats> for RedisSubscriber {
    type Result = MessageResult<GetSubscriberStats>;

    fn handle(&mut self, _: GetSubscriberStats, _ctx: &mut Context<Self>) -> Self::Result {
        let queued = self.inbound.max_capacity() - self.inbound.capacity();
        MessageResult(SubscriberStats {
            inbound_queued: queued as u64,
            ..self.stats.clone()
        })
    }
}

impl Handler<ResetStats> for RedisSubscriber {
    type Result = ();

    fn handle(&mut self, _: ResetStats, _ctx: &mut Context<Self>) {
        self.stats = SubscriberStats::default();
    }
}

impl Handler<Shutdown> for RedisSubscriber {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, _ctx: &mut Context<Self>) -> Self::Result {
        self.closed = true;
        self.rooms.clear();
        let sink = self.sink.take();
        let unsubscribe = async move {
            if let Some(mut sink) = sink {
                let all: &[&str] = &[];
                sink.unsubscribe(all)
                    .await
                    .map_err(|e| Error::from_redis(&e))?;
            }
            Ok(())
        };
        Box::pin(
            with_deadline(self.config.response_timeout, "UNSUBSCRIBE", unsubscribe)
                .into_actor(self)
                .map(|result, act, ctx| {
                    if let Err(e) = result {
                        log::warn!(
                            "subscriber {}: unsubscribe at shutdown failed: {e}",
                            act.identity.server_id
                        );
                    }
                    ctx.stop();
                }),
        )
    }
}
