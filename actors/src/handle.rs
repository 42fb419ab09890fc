//! [`PubSub`]: a small cloneable handle whose async methods mirror the seed's API.

use std::sync::OnceLock;

use actix::{Addr, Recipient};
use serde::Serialize;

use crate::{
    events::{self, Channel},
    Broker, BrokerConfig, Delivery, Error, GetHealth, GetStats, HealthStatus, NewEvent, Publish,
    PublisherStats, ResetStats, Room, Shutdown, Subscribe, SubscriberStats, Unsubscribe,
    UnsubscribeAll,
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
    /// Redis to every server; `Err` means Redis did not take it after every retry.
    pub async fn publish<C: Channel>(&self, event: &C::Event) -> Result<(), Error> {
        self.publish_event(C::room(), events::new_event(event)?)
            .await
    }

    /// Publishes an event of any type in any room.
    pub async fn publish_to(
        &self,
        room: &str,
        kind: &str,
        data: &impl Serialize,
    ) -> Result<(), Error> {
        self.publish_event(Room::new(room)?, NewEvent::new(kind, data)?)
            .await
    }

    async fn publish_event(&self, room: Room, event: NewEvent) -> Result<(), Error> {
        self.broker.send(Publish { room, event }).await?
    }

    /// Subscribes `recipient` to `room`; returns once Redis confirmed the room.
    pub async fn subscribe(&self, room: &str, recipient: Recipient<Delivery>) -> Result<(), Error> {
        let subscribe = Subscribe {
            room: Room::new(room)?,
            recipient,
            on_evicted: None,
        };
        self.broker.send(subscribe).await?
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
}
