//! What carries events between servers: Redis pub/sub through the two link actors,
//! or nothing at all (the memory backplane, one server).

use std::{collections::HashSet, sync::Arc, time::Duration};

use actix::{
    dev::{MessageResponse, OneshotSender},
    Actor, Addr, Handler, Message, ResponseFuture,
};
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use crate::{
    durable::{
        memory::MemoryStore, scripts, DurableConfig, Epoch, HistoryPage, IdempotencyKey, Position,
        Published,
    },
    link::{GetLinkStatus, LinkStatus, RedisConfig},
    presence::{
        memory::MemoryPresence,
        scripts::{self as presence_scripts, Announcer},
        Applied, Member, Op, PresenceCount,
    },
    publisher::{GetConnection, GetPublisherStats, PublishEvent},
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
        config: Arc<RedisConfig>,
        durable: Arc<DurableConfig>,
    },
    /// One server: rooms need no confirmation and a publish is done once delivered
    /// here. The broker's backplane keeps the publisher statistics itself, the
    /// durable rooms' histories and the idempotency keys, and the presence rooms'
    /// members.
    Memory {
        stats: PublisherStats,
        watched: HashSet<Room>,
        store: Box<MemoryStore>,
        presence: MemoryPresence,
    },
}

impl Backplane {
    /// Starts the backplane; on Redis, the two supervised link actors, the subscriber
    /// sending what it receives to `inbound`.
    pub(crate) fn start(
        config: BackplaneConfig,
        durable: DurableConfig,
        identity: SubscriberIdentity,
        inbound: mpsc::Sender<Inbound>,
    ) -> Self {
        match config {
            BackplaneConfig::Redis(redis) => {
                RedisConfig::install_tls_provider();
                let redis: Arc<RedisConfig> = Arc::from(redis);
                let durable = Arc::new(durable);
                Backplane::Redis {
                    publisher: RedisPublisher::start(redis.clone(), durable.clone()),
                    subscriber: RedisSubscriber::start(redis.clone(), identity, inbound),
                    config: redis,
                    durable,
                }
            }
            BackplaneConfig::Memory => Backplane::Memory {
                stats: PublisherStats::default(),
                watched: HashSet::new(),
                store: Box::new(MemoryStore::new(durable)),
                presence: MemoryPresence::default(),
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

    /// Sends an event, delivered here already, to the other servers.
    pub(crate) fn publish(&mut self, event: Arc<Event>) -> Publishing {
        match self {
            Backplane::Redis { publisher, .. } => Publishing::Forward(
                publisher.clone(),
                Forwarded {
                    event,
                    durable: false,
                    key: None,
                },
            ),
            Backplane::Memory { stats, .. } => {
                stats.record(event.room().as_str(), true, 0);
                Publishing::Done(Ok(Published::default()))
            }
        }
    }

    /// Sends an event of a durable room, or one with a key, to every server, this
    /// one included: numbered in a durable room, and not at all when its key was
    /// used before. On the memory backplane the event to deliver here comes back.
    pub(crate) fn publish_ordered(
        &mut self,
        event: Arc<Event>,
        durable: bool,
        key: Option<IdempotencyKey>,
    ) -> (Publishing, Option<Arc<Event>>) {
        match self {
            Backplane::Redis { publisher, .. } => {
                let forwarded = Forwarded {
                    event,
                    durable,
                    key,
                };
                (Publishing::Forward(publisher.clone(), forwarded), None)
            }
            Backplane::Memory { stats, store, .. } => {
                stats.record(event.room().as_str(), true, 0);
                let stored = store.publish(&event, durable, key.as_ref());
                (Publishing::Done(Ok(stored.published)), stored.deliver)
            }
        }
    }

    /// Runs `command` on the Redis publisher's connection (a script call of durable
    /// rooms); fails at once when there is none.
    fn on_connection<T, F, Fut>(&self, command: F) -> ResponseFuture<Result<T, Error>>
    where
        F: FnOnce(MultiplexedConnection, Arc<RedisConfig>, Arc<DurableConfig>) -> Fut + 'static,
        Fut: std::future::Future<Output = Result<T, Error>> + 'static,
        T: 'static,
    {
        let Backplane::Redis {
            publisher,
            config,
            durable,
            ..
        } = self
        else {
            return Box::pin(async { Err(Error::NotConnected("no Redis backplane".into())) });
        };
        let (connection, config, durable) = (
            publisher.send(GetConnection),
            config.clone(),
            durable.clone(),
        );
        Box::pin(async move {
            let conn = connection
                .await?
                .ok_or_else(|| Error::NotConnected("no connection to redis".into()))?;
            command(conn, config, durable).await
        })
    }

    /// Reads a durable room's position and up to `limit` events from offset `from`
    /// on (the latest ones without `from`).
    pub(crate) fn read(
        &mut self,
        room: Room,
        from: Option<u64>,
        limit: usize,
    ) -> ResponseFuture<Result<HistoryPage, Error>> {
        match self {
            Backplane::Redis { .. } => {
                self.on_connection(move |mut conn, config, durable| async move {
                    scripts::read(&mut conn, &config, &durable, &room, from, limit).await
                })
            }
            Backplane::Memory { store, .. } => {
                let page = store.read(&room, from, limit);
                Box::pin(async move { Ok(page) })
            }
        }
    }

    /// Replaces a durable room's epoch `lost`, whose numbering was rolled back;
    /// answers the room's position after it (`None`: the room has no numbering now).
    pub(crate) fn rotate(
        &mut self,
        room: Room,
        lost: Epoch,
    ) -> ResponseFuture<Result<Option<Position>, Error>> {
        match self {
            Backplane::Redis { .. } => {
                self.on_connection(move |mut conn, config, durable| async move {
                    scripts::rotate(&mut conn, &config, &durable, &room, &lost).await
                })
            }
            // The process's own numbering never goes back.
            Backplane::Memory { store, .. } => {
                let current = store.read(&room, None, 0).current;
                Box::pin(async move { Ok(Some(current)) })
            }
        }
    }

    /// Writes this server's `ops` in a presence room and refreshes its deadline there
    /// (`resync`: `ops` are all its members, the others leave). On the memory
    /// backplane the changes to deliver here come back.
    pub(crate) fn presence_write(
        &mut self,
        room: Room,
        announcer: Announcer,
        ttl: Duration,
        ops: Vec<Op>,
        resync: bool,
    ) -> ResponseFuture<Result<Applied, Error>> {
        match self {
            Backplane::Redis { .. } => self.on_connection(move |mut conn, config, _| async move {
                let written = presence_scripts::apply(
                    &mut conn, &config, ttl, &announcer, &room, &ops, resync,
                )
                .await?;
                Ok(Applied {
                    lost: written.lost,
                    members: written.members,
                    here: Vec::new(),
                })
            }),
            Backplane::Memory { presence, .. } => {
                let applied = presence.apply(&room, &ops);
                Box::pin(async move { Ok(applied) })
            }
        }
    }

    /// A presence room's members, on every server.
    pub(crate) fn presence_read(
        &mut self,
        room: Room,
        announcer: Announcer,
    ) -> ResponseFuture<Result<Vec<Arc<Member>>, Error>> {
        match self {
            Backplane::Redis { .. } => self.on_connection(move |mut conn, config, _| async move {
                presence_scripts::read(&mut conn, &config, &announcer, &room).await
            }),
            Backplane::Memory { presence, .. } => {
                let members = presence.read(&room);
                Box::pin(async move { Ok(members) })
            }
        }
    }

    /// A presence room's counts, on every server.
    pub(crate) fn presence_count(
        &mut self,
        room: Room,
        announcer: Announcer,
    ) -> ResponseFuture<Result<PresenceCount, Error>> {
        match self {
            Backplane::Redis { .. } => self.on_connection(move |mut conn, config, _| async move {
                presence_scripts::count(&mut conn, &config, &announcer, &room).await
            }),
            Backplane::Memory { presence, .. } => {
                let count = presence.count(&room);
                Box::pin(async move { Ok(count) })
            }
        }
    }

    /// The publisher's and the subscriber's status.
    pub(crate) fn link_status(&self) -> ResponseFuture<(LinkStatus, LinkStatus)> {
        match self {
            Backplane::Redis {
                publisher,
                subscriber,
                ..
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
                ..
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
                ..
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
                ..
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
    Done(Result<Published, Error>),
    /// Hand the event and the caller's answer channel to the Redis publisher.
    Forward(Addr<RedisPublisher>, Forwarded),
}

/// A publish for the Redis publisher.
pub struct Forwarded {
    event: Arc<Event>,
    durable: bool,
    key: Option<IdempotencyKey>,
}

impl<A, M> MessageResponse<A, M> for Publishing
where
    A: Actor,
    M: Message<Result = Result<Published, Error>>,
{
    fn handle(self, _ctx: &mut A::Context, tx: Option<OneshotSender<Result<Published, Error>>>) {
        match self {
            Publishing::Done(outcome) => {
                if let Some(tx) = tx {
                    let _ = tx.send(outcome);
                }
            }
            // A publisher that is gone drops `tx`: the caller sees a closed mailbox,
            // which is shutting down.
            Publishing::Forward(publisher, forwarded) => publisher.do_send(PublishEvent {
                event: forwarded.event,
                durable: forwarded.durable,
                key: forwarded.key,
                reply: tx,
            }),
        }
    }
}
