//! What carries events between servers: Redis pub/sub through the two link actors,
//! or nothing at all (the memory backplane, one server).

use std::{collections::HashSet, sync::Arc};

use actix::{
    dev::{MessageResponse, OneshotSender},
    Actor, Addr, Handler, Message, ResponseFuture,
};
use tokio::sync::mpsc;

use crate::{
    link::{GetLinkStatus, LinkStatus, RedisConfig},
    publisher::{GetPublisherStats, PublishEvent},
    subscriber::{GetSubscriberStats, SubscriberIdentity, UnwatchRoom, WatchRoom},
    BackplaneKind, Error, Event, Inbound, PublisherStats, RedisPublisher, RedisSubscriber,
    ResetStats, Room, Shutdown, Stats, SubscriberStats,
};

/// Which backplane to run.
#[derive(Debug, Clone)]
pub enum BackplaneConfig {
    /// Redis pub/sub, through a [`RedisPublisher`] and a [`RedisSubscriber`].
    Redis(Box<RedisConfig>),
    /// Nothing: this process is the only server.
    Memory,
}

/// The broker's view of its backplane: one interface, two implementations.
pub(crate) enum Backplane {
    Redis {
        publisher: Addr<RedisPublisher>,
        subscriber: Addr<RedisSubscriber>,
    },
    /// One server: rooms need no confirmation and a publish is done once delivered
    /// here. The broker's backplane keeps the publisher statistics itself.
    Memory {
        stats: PublisherStats,
        watched: HashSet<Room>,
    },
}

impl Backplane {
    /// Starts the backplane; on Redis, the two supervised link actors, the subscriber
    /// sending what it receives to `inbound`.
    pub(crate) fn start(
        config: BackplaneConfig,
        identity: SubscriberIdentity,
        inbound: mpsc::Sender<Inbound>,
    ) -> Self {
        match config {
            BackplaneConfig::Redis(redis) => {
                RedisConfig::install_tls_provider();
                let redis: Arc<RedisConfig> = Arc::from(redis);
                Backplane::Redis {
                    publisher: RedisPublisher::start(redis.clone()),
                    subscriber: RedisSubscriber::start(redis, identity, inbound),
                }
            }
            BackplaneConfig::Memory => Backplane::Memory {
                stats: PublisherStats::default(),
                watched: HashSet::new(),
            },
        }
    }

    pub(crate) fn kind(&self) -> BackplaneKind {
        match self {
            Backplane::Redis { .. } => BackplaneKind::Redis,
            Backplane::Memory { .. } => BackplaneKind::Memory,
        }
    }

    /// Holds the room's subscription; resolves once it is confirmed.
    pub(crate) fn watch(&mut self, room: Room) -> ResponseFuture<Result<(), Error>> {
        match self {
            Backplane::Redis { subscriber, .. } => {
                let confirmed = subscriber.send(WatchRoom { room });
                Box::pin(async move { confirmed.await? })
            }
            Backplane::Memory { watched, .. } => {
                watched.insert(room);
                Box::pin(async { Ok(()) })
            }
        }
    }

    /// Releases the room's subscription.
    pub(crate) fn unwatch(&mut self, room: Room) {
        match self {
            Backplane::Redis { subscriber, .. } => subscriber.do_send(UnwatchRoom { room }),
            Backplane::Memory { watched, .. } => {
                watched.remove(&room);
            }
        }
    }

    /// Sends an event to the other servers.
    pub(crate) fn publish(&mut self, event: Arc<Event>) -> Publishing {
        match self {
            Backplane::Redis { publisher, .. } => Publishing::Forward(publisher.clone(), event),
            Backplane::Memory { stats, .. } => {
                stats.record(event.room().as_str(), true, 0);
                Publishing::Done(Ok(()))
            }
        }
    }

    /// The publisher's and the subscriber's status.
    pub(crate) fn link_status(&self) -> ResponseFuture<(LinkStatus, LinkStatus)> {
        match self {
            Backplane::Redis {
                publisher,
                subscriber,
            } => {
                let (p, s) = (
                    publisher.send(GetLinkStatus),
                    subscriber.send(GetLinkStatus),
                );
                Box::pin(async move { (p.await.unwrap_or_default(), s.await.unwrap_or_default()) })
            }
            Backplane::Memory { watched, .. } => {
                let up = LinkStatus {
                    ready: true,
                    failed_attempts: 0,
                    channels: watched.len(),
                };
                Box::pin(async move { (up, up) })
            }
        }
    }

    pub(crate) fn stats(&self) -> ResponseFuture<Stats> {
        match self {
            Backplane::Redis {
                publisher,
                subscriber,
            } => {
                let (p, s) = (
                    publisher.send(GetPublisherStats),
                    subscriber.send(GetSubscriberStats),
                );
                Box::pin(async move {
                    Stats {
                        publisher: p.await.unwrap_or_default(),
                        subscriber: s.await.unwrap_or_default(),
                    }
                })
            }
            Backplane::Memory { stats, .. } => {
                let stats = Stats {
                    publisher: stats.clone(),
                    subscriber: SubscriberStats::default(),
                };
                Box::pin(async move { stats })
            }
        }
    }

    pub(crate) fn reset_stats(&mut self) -> ResponseFuture<()> {
        match self {
            Backplane::Redis {
                publisher,
                subscriber,
            } => tell_both(publisher, subscriber, ResetStats),
            Backplane::Memory { stats, .. } => {
                *stats = PublisherStats::default();
                Box::pin(async {})
            }
        }
    }

    /// Unsubscribes everything and closes the links.
    pub(crate) fn shutdown(&self) -> ResponseFuture<()> {
        match self {
            Backplane::Redis {
                publisher,
                subscriber,
            } => tell_both(publisher, subscriber, Shutdown),
            Backplane::Memory { .. } => Box::pin(async {}),
        }
    }
}

/// Sends `msg` to both links and waits for both; a link that is gone is logged.
fn tell_both<M>(
    publisher: &Addr<RedisPublisher>,
    subscriber: &Addr<RedisSubscriber>,
    msg: M,
) -> ResponseFuture<()>
where
    M: Message<Result = ()> + Clone + Send + std::fmt::Debug + 'static,
    RedisPublisher: Handler<M>,
    RedisSubscriber: Handler<M>,
{
    let what = format!("{msg:?}");
    let (p, s) = (publisher.send(msg.clone()), subscriber.send(msg));
    Box::pin(async move {
        if let (Err(e), _) | (_, Err(e)) = (s.await, p.await) {
            log::warn!("backplane: {what} did not reach a Redis link: {e}");
        }
    })
}

/// The broker's answer to a publish: known now, or the publisher's to give. The
/// publisher gets the caller's own answer channel, so a publish through the broker
/// spawns no task and waits on no channel of the broker's.
pub enum Publishing {
    /// The outcome, already known.
    Done(Result<(), Error>),
    /// Hand the event and the caller's answer channel to the Redis publisher.
    Forward(Addr<RedisPublisher>, Arc<Event>),
}

impl<A, M> MessageResponse<A, M> for Publishing
where
    A: Actor,
    M: Message<Result = Result<(), Error>>,
{
    fn handle(self, _ctx: &mut A::Context, tx: Option<OneshotSender<Result<(), Error>>>) {
        match self {
            Publishing::Done(outcome) => {
                if let Some(tx) = tx {
                    let _ = tx.send(outcome);
                }
            }
            // A publisher that is gone drops `tx`: the caller sees a closed mailbox,
            // which is shutting down.
            Publishing::Forward(publisher, event) => {
                publisher.do_send(PublishEvent { event, reply: tx })
            }
        }
    }
}
