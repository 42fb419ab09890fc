//! [`PubSub`]: a small cloneable handle whose async methods mirror the seed's API.

use std::sync::{Arc, OnceLock};

use actix::{dev::ToEnvelope, Actor, Addr, Handler, Recipient};
use serde::Serialize;

use crate::{
    durable::{IdempotencyKey, Published, Since},
    events::{self, Channel},
    presence::{CountPresence, Member, PresenceCount, ReadPresence},
    Broker, BrokerConfig, Delivery, Error, Evicted, Gap, GetHealth, GetStats, HealthStatus, Joined,
    NewEvent, Publish, PublisherStats, ResetStats, Room, Shutdown, Subscribe, SubscriberStats,
    Unsubscribe, UnsubscribeAll,
};

/// The seed's `RedisPubSubManager`, the actix way: every method is a message to the
/// broker. Cheap to clone; hand one to each service.
#[derive(Debug, Clone)]
pub struct PubSub {
    broker: Addr<Broker>,
}

static DEFAULT: OnceLock<PubSub> = OnceLock::new();

impl PubSub {
    /// A handle on a running broker.
    pub fn new(broker: Addr<Broker>) -> PubSub {
        PubSub { broker }
    }

    /// Starts a broker with `config` and returns its handle: for apps and tests that
    /// run several servers in one process.
    pub fn start(config: BrokerConfig) -> PubSub {
        PubSub::new(Broker::start(config))
    }

    /// The process-wide handle (the seed's `getPubSubManager()`): the first call
    /// starts a broker with `config()` (so a custom server id goes there), later calls
    /// return the same handle. Call it inside the actix system that should run it.
    pub fn global(config: impl FnOnce() -> BrokerConfig) -> PubSub {
        DEFAULT.get_or_init(|| PubSub::start(config())).clone()
    }

    /// The broker's address, for sending it messages directly.
    pub fn broker(&self) -> &Addr<Broker> {
        &self.broker
    }

    /// Publishes a typed event on its channel: delivered here at once, then through
    /// Redis to every server; `Err` means Redis did not take it after every retry. In
    /// a durable room (`DURABLE_ROOMS`) it reaches this server through Redis too, and
    /// the answer carries its offset and epoch.
    pub async fn publish<C: Channel>(&self, event: &C::Event) -> Result<Published, Error> {
        self.publish_event(C::room(), events::new_event(event)?)
            .await
    }

    /// Publishes an event of any type in any room.
    pub async fn publish_to(
        &self,
        room: &str,
        kind: &str,
        data: &impl Serialize,
    ) -> Result<Published, Error> {
        self.publish_event(Room::new(room)?, NewEvent::new(kind, data)?)
            .await
    }

    /// Publishes an event with an idempotency key: a key used in the room within
    /// `IDEMPOTENCY_TTL_MS` is answered like its first publish and not published
    /// again (PROTOCOL.md §7).
    pub async fn publish_once(
        &self,
        room: &str,
        kind: &str,
        data: &impl Serialize,
        key: &str,
    ) -> Result<Published, Error> {
        let publish = Publish {
            room: Room::new(room)?,
            event: NewEvent::new(kind, data)?,
            key: Some(IdempotencyKey::new(key)?),
        };
        self.broker.send(publish).await?
    }

    async fn publish_event(&self, room: Room, event: NewEvent) -> Result<Published, Error> {
        let key = None;
        self.broker.send(Publish { room, event, key }).await?
    }

    /// Subscribes `recipient` to `room`; returns once Redis confirmed the room.
    ///
    /// The broker never waits for a recipient: one whose mailbox is full when an event
    /// comes is dropped from every room, and with this method nobody is told but the
    /// log. Prefer [`PubSub::subscribe_actor`], which tells the actor, and give the
    /// actor a mailbox sized for the bursts it must absorb (actix's default holds 16;
    /// `ctx.set_mailbox_capacity(n)` in `started`).
    pub async fn subscribe(&self, room: &str, recipient: Recipient<Delivery>) -> Result<(), Error> {
        self.subscribe_with(room, recipient, None, None).await
    }

    /// Subscribes an actor that handles [`Delivery`], [`Evicted`] and [`Gap`], so it
    /// is never left unaware of a loss:
    /// - if its mailbox is ever full when an event comes, the broker drops it from
    ///   every room and sends it [`Evicted`] (which does not count against the
    ///   mailbox's capacity), so it can catch up and subscribe again;
    /// - when events of the room may have been lost on the way to this server (a lost
    ///   link to Redis), it gets a [`Gap`] before the events that follow.
    pub async fn subscribe_actor<A>(&self, room: &str, actor: &Addr<A>) -> Result<(), Error>
    where
        A: Actor + Handler<Delivery> + Handler<Evicted> + Handler<Gap>,
        A::Context: ToEnvelope<A, Delivery> + ToEnvelope<A, Evicted> + ToEnvelope<A, Gap>,
    {
        let recipient = actor.clone().recipient();
        let on_evicted = actor.clone().recipient();
        let on_gap = actor.clone().recipient();
        self.subscribe_with(room, recipient, Some(on_evicted), Some(on_gap))
            .await
    }

    /// Subscribes an actor like [`PubSub::subscribe_actor`], recovering what followed
    /// `since` in a durable room (PROTOCOL.md §7): when [`Joined::recovered`] is
    /// true, the missed events reach the actor as [`Delivery`]s before any live one;
    /// when false, nothing is replayed and the actor should reload its state. The
    /// broker replays what its ring and one history read hold (up to 1,024 events
    /// back, or 500 past the ring); a recovery reaching further back ends with a
    /// [`Gap`] where the replay stops.
    pub async fn subscribe_actor_since<A>(
        &self,
        room: &str,
        actor: &Addr<A>,
        since: Since,
    ) -> Result<Joined, Error>
    where
        A: Actor + Handler<Delivery> + Handler<Evicted> + Handler<Gap>,
        A::Context: ToEnvelope<A, Delivery> + ToEnvelope<A, Evicted> + ToEnvelope<A, Gap>,
    {
        let subscribe = Subscribe {
            room: Room::new(room)?,
            since: Some(since),
            deliver_replay: true,
            recipient: actor.clone().recipient(),
            on_evicted: Some(actor.clone().recipient()),
            on_gap: Some(actor.clone().recipient()),
            membership: None,
        };
        self.broker.send(subscribe).await?
    }

    /// Subscribes `recipient` to `room`; `on_evicted`, when given, is told if the
    /// broker drops the recipient because its mailbox was full, and `on_gap` when
    /// events of the room may have been lost.
    pub async fn subscribe_with(
        &self,
        room: &str,
        recipient: Recipient<Delivery>,
        on_evicted: Option<Recipient<Evicted>>,
        on_gap: Option<Recipient<Gap>>,
    ) -> Result<(), Error> {
        let subscribe = Subscribe {
            room: Room::new(room)?,
            since: None,
            deliver_replay: false,
            recipient,
            on_evicted,
            on_gap,
            membership: None,
        };
        self.broker.send(subscribe).await?.map(|_joined| ())
    }

    /// Unsubscribes one recipient from `room`, or every recipient with `None` (the
    /// seed's `unsubscribe(channel)`).
    pub async fn unsubscribe(
        &self,
        room: &str,
        recipient: Option<Recipient<Delivery>>,
    ) -> Result<(), Error> {
        let room = Room::new(room)?;
        match recipient {
            Some(recipient) => self.broker.send(Unsubscribe { room, recipient }).await?,
            None => self.broker.send(UnsubscribeAll { room }).await?,
        }
        Ok(())
    }

    /// The members of a presence room on every server (PROTOCOL.md §9);
    /// [`Error::NotPresence`] in another room.
    pub async fn presence(&self, room: &str) -> Result<Vec<Arc<Member>>, Error> {
        let room = Room::new(room)?;
        self.broker.send(ReadPresence { room }).await?
    }

    /// A presence room's members and distinct users on every server, without listing them.
    pub async fn presence_count(&self, room: &str) -> Result<PresenceCount, Error> {
        let room = Room::new(room)?;
        self.broker.send(CountPresence { room }).await?
    }

    /// The seed's `getHealthStatus()`.
    pub async fn health_status(&self) -> Result<HealthStatus, Error> {
        Ok(self.broker.send(GetHealth).await?)
    }

    /// The seed's `getPublisherStats()`.
    pub async fn publisher_stats(&self) -> Result<PublisherStats, Error> {
        Ok(self.broker.send(GetStats).await?.publisher)
    }

    /// The seed's `getSubscriberStats()`.
    pub async fn subscriber_stats(&self) -> Result<SubscriberStats, Error> {
        Ok(self.broker.send(GetStats).await?.subscriber)
    }

    /// The seed's `resetStats()`.
    pub async fn reset_stats(&self) -> Result<(), Error> {
        Ok(self.broker.send(ResetStats).await?)
    }

    /// The seed's `shutdown()`: releases every subscription and closes the Redis links.
    pub async fn shutdown(&self) -> Result<(), Error> {
        Ok(self.broker.send(Shutdown).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{MatchData, MatchEvent, MatchEvents},
        BackplaneConfig,
    };
    use actix::prelude::*;

    /// An in-process service that keeps what it receives.
    struct Collector(tokio::sync::mpsc::UnboundedSender<MatchEvent>);

    impl Actor for Collector {
        type Context = Context<Self>;
    }

    impl Handler<Delivery> for Collector {
        type Result = ();

        fn handle(&mut self, msg: Delivery, _ctx: &mut Context<Self>) {
            let _ = self
                .0
                .send(msg.event.decode::<MatchEvent>().expect("a match event"));
        }
    }

    /// A recipient that cannot keep up: its first delivery blocks its thread until
    /// the test lets it go, so its small mailbox fills.
    struct Stalled {
        release: std::sync::mpsc::Receiver<()>,
        seen: tokio::sync::mpsc::UnboundedSender<Option<crate::EvictReason>>,
    }

    impl Actor for Stalled {
        type Context = Context<Self>;

        fn started(&mut self, ctx: &mut Context<Self>) {
            ctx.set_mailbox_capacity(4);
        }
    }

    impl Handler<Delivery> for Stalled {
        type Result = ();

        fn handle(&mut self, _: Delivery, _ctx: &mut Context<Self>) {
            // Only the first delivery waits (the channel stays open until released).
            let _ = self.release.recv();
            let _ = self.seen.send(None);
        }
    }

    impl Handler<Evicted> for Stalled {
        type Result = ();

        fn handle(&mut self, msg: Evicted, _ctx: &mut Context<Self>) {
            let _ = self.seen.send(Some(msg.reason));
        }
    }

    impl Handler<Gap> for Stalled {
        type Result = ();

        fn handle(&mut self, _: Gap, _ctx: &mut Context<Self>) {}
    }

    /// Item 6 of the hardening issue: an in-process recipient dropped for a full
    /// mailbox is told so, through the handle.
    #[actix_rt::test]
    async fn an_actor_dropped_for_a_full_mailbox_is_told_through_subscribe_actor() {
        let pubsub = PubSub::start(BrokerConfig::new("evict", BackplaneConfig::Memory));
        let (release_tx, release) = std::sync::mpsc::channel();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let arbiter = actix::Arbiter::new();
        let stalled = Stalled::start_in_arbiter(&arbiter.handle(), move |_| Stalled {
            release,
            seen: seen_tx,
        });
        pubsub.subscribe_actor("burst", &stalled).await.unwrap();
        for n in 0..20 {
            pubsub.publish_to("burst", "n", &n).await.unwrap();
        }
        drop(release_tx);
        let mut evicted = None;
        while evicted.is_none() {
            evicted = seen.recv().await.expect("the recipient lives");
        }
        assert_eq!(evicted, Some(crate::EvictReason::MailboxFull));
        assert_eq!(
            pubsub.health_status().await.unwrap().active_subscriptions,
            1,
            "burst released; system:events stays"
        );
        arbiter.stop();
    }

    #[actix_rt::test]
    async fn typed_publish_reaches_an_in_process_subscriber_on_the_memory_backplane() {
        let pubsub = PubSub::start(BrokerConfig::new("test_server", BackplaneConfig::Memory));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let collector = Collector(tx).start();
        pubsub
            .subscribe(MatchEvents::ROOM, collector.recipient())
            .await
            .unwrap();
        let event = MatchEvent::MatchStarted(MatchData {
            match_id: "m42".into(),
            players: vec!["a".into(), "b".into()],
            details: Default::default(),
        });
        pubsub.publish::<MatchEvents>(&event).await.unwrap();
        assert_eq!(rx.recv().await, Some(event));
        let stats = pubsub.publisher_stats().await.unwrap();
        assert_eq!(stats.channel_stats["match:events"].published, 1);
        let health = pubsub.health_status().await.unwrap();
        assert!(health.is_healthy);
        assert_eq!(
            health.active_subscriptions, 2,
            "match:events and system:events"
        );
        pubsub.unsubscribe(MatchEvents::ROOM, None).await.unwrap();
        assert_eq!(
            pubsub.health_status().await.unwrap().active_subscriptions,
            1
        );
    }

    /// Keeps the offsets it receives, and the gaps.
    struct Offsets(tokio::sync::mpsc::UnboundedSender<Result<u64, Gap>>);

    impl Actor for Offsets {
        type Context = Context<Self>;
    }

    impl Handler<Delivery> for Offsets {
        type Result = ();

        fn handle(&mut self, msg: Delivery, _ctx: &mut Context<Self>) {
            let _ = self.0.send(Ok(msg.event.offset().expect("numbered")));
        }
    }

    impl Handler<Evicted> for Offsets {
        type Result = ();

        fn handle(&mut self, _: Evicted, _ctx: &mut Context<Self>) {}
    }

    impl Handler<Gap> for Offsets {
        type Result = ();

        fn handle(&mut self, gap: Gap, _ctx: &mut Context<Self>) {
            let _ = self.0.send(Err(gap));
        }
    }

    /// PROTOCOL.md §7 in process: publishes in a durable room answer their offset, and
    /// an actor subscribing with `since` gets the missed events, then live ones.
    #[actix_rt::test]
    async fn an_actor_subscribing_with_since_gets_the_missed_events_then_live_ones() {
        let mut config = BrokerConfig::new("since", BackplaneConfig::Memory);
        config.durable.rooms = vec![crate::Pattern::parse("d:*").unwrap()];
        let pubsub = PubSub::start(config);
        let mut epoch = None;
        for n in 1..=5u64 {
            let published = pubsub.publish_to("d:1", "n", &n).await.unwrap();
            let position = published
                .position
                .expect("a durable room answers its position");
            assert_eq!(position.offset, n);
            epoch = Some(position.epoch);
        }
        let epoch = epoch.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let actor = Offsets(tx).start();
        let since = Since {
            offset: 2,
            epoch: epoch.clone(),
        };
        let joined = pubsub
            .subscribe_actor_since("d:1", &actor, since)
            .await
            .unwrap();
        assert_eq!(joined.recovered, Some(true));
        pubsub.publish_to("d:1", "n", &6).await.unwrap();
        for want in 3..=6u64 {
            assert_eq!(rx.recv().await.unwrap().unwrap(), want);
        }
        // Another epoch: nothing replayed, the actor must reload.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let other = Offsets(tx).start();
        let stale = Since {
            offset: 1,
            epoch: crate::durable::Epoch::new("another").unwrap(),
        };
        let joined = pubsub
            .subscribe_actor_since("d:1", &other, stale)
            .await
            .unwrap();
        assert_eq!(joined.recovered, Some(false));
        assert_eq!(joined.position.map(|p| p.offset), Some(6));
        pubsub.publish_to("d:1", "n", &7).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().unwrap(), 7);
        // The same key twice: one event, the same answer.
        let first = pubsub.publish_once("d:1", "n", &8, "k-8").await.unwrap();
        let again = pubsub.publish_once("d:1", "n", &8, "k-8").await.unwrap();
        assert_eq!(first, again);
        pubsub.publish_to("d:1", "n", &9).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().unwrap(), 8);
        assert_eq!(
            rx.recv().await.unwrap().unwrap(),
            9,
            "the repeated key published nothing"
        );
    }
}
