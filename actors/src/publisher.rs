//! The `RedisPublisher` actor: owns the publishing connection.

use std::{sync::Arc, time::Duration};

use actix::prelude::*;
use redis::{aio::MultiplexedConnection, ErrorKind, ProtocolVersion, PushInfo, PushKind};

use crate::{
    link::{with_deadline, GetLinkStatus, LinkState, LinkStatus, RedisConfig},
    Backoff, Error, Event, PublisherStats, ResetStats, Room, Shutdown,
};

/// Owns the connection that publishes. One multiplexed connection pipelines every
/// concurrent PUBLISH, so publishes take no lock and open no connection of their own.
///
/// Supervised: when the connection dies (redis-rs reports the disconnection, a
/// command fails on it, or a PING probe goes unanswered) the actor stops and its
/// [`Supervisor`] restarts it, which reconnects after a capped, jittered [`Backoff`].
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
    stats: PublisherStats,
    closed: bool,
}

/// Publish one encoded event on its room's channel (sent by the broker).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), Error>")]
pub struct PublishEvent {
    /// The event; its JSON goes to Redis as is.
    pub event: Arc<Event>,
}

/// Ask the publisher for its statistics.
#[derive(Debug, Message)]
#[rtype(result = "PublisherStats")]
pub struct GetPublisherStats;

/// The connection to publish on now, if there is one (asked before each attempt).
#[derive(Message)]
#[rtype(result = "Option<(MultiplexedConnection, u64)>")]
struct CurrentConnection;

/// A publish call ended; the actor counts it.
#[derive(Message)]
#[rtype(result = "()")]
struct PublishEnded {
    /// Its room.
    room: Room,
    /// Whether Redis took it.
    succeeded: bool,
    /// Retries it took.
    retries: u32,
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
    /// Starts the publisher under a supervisor.
    pub fn start(config: Arc<RedisConfig>) -> Addr<RedisPublisher> {
        let link = LinkState::new(&config);
        Supervisor::start(move |_| RedisPublisher {
            config,
            conn: None,
            generation: 0,
            link,
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
                    let attempts = act.link.connect_failed();
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

    /// One PUBLISH attempt on `conn`, or a not-sent error without a connection.
    async fn publish_once(
        conn: Option<MultiplexedConnection>,
        channel: &str,
        payload: &[u8],
        deadline: Duration,
    ) -> Result<(), Error> {
        let Some(mut conn) = conn else {
            return Err(Error::NotConnected("no connection to redis".into()));
        };
        let mut command = redis::cmd("PUBLISH");
        command.arg(channel).arg(payload);
        let attempt = async move {
            command
                .query_async::<i64>(&mut conn)
                .await
                .map(|_receivers| ())
                .map_err(|e| Error::from_redis(&e))
        };
        with_deadline(deadline, "PUBLISH", attempt).await
    }
}

impl Actor for RedisPublisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.closed {
            return;
        }
        match self.link.connect_delay() {
            None => self.connect(ctx),
            Some(delay) => {
                ctx.run_later(delay, Self::connect);
            }
        }
    }
}

impl Supervised for RedisPublisher {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.conn = None;
        self.link.lost();
        self.generation += 1;
    }
}

impl Handler<PublishEvent> for RedisPublisher {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(&mut self, msg: PublishEvent, ctx: &mut Context<Self>) -> Self::Result {
        let addr = ctx.address();
        let channel = self.config.channel(msg.event.room());
        let max_retries = self.config.publish_retries;
        let base = self.config.publish_retry_base;
        let deadline = self.config.response_timeout;
        Box::pin(async move {
            let mut delays = Backoff::new(base, Duration::MAX).without_jitter();
            let mut retries = 0;
            let payload = msg.event.json().as_bytes();
            let result = loop {
                let current = addr.send(CurrentConnection).await?;
                let (conn, generation) = current.unzip();
                match Self::publish_once(conn, &channel, payload, deadline).await {
                    Err(e) if e.is_retryable() && retries < max_retries => {
                        retries += 1;
                        tokio::time::sleep(delays.next_delay()).await;
                    }
                    Err(e) if e.is_link_failure() => {
                        // Failed on an open connection: reported, not retried, and the
                        // connection is replaced (RESP2 has no disconnection push).
                        let generation = generation.unwrap_or_default();
                        addr.do_send(LinkLost {
                            generation,
                            why: e.to_string(),
                        });
                        break Err(e);
                    }
                    result => break result,
                }
            };
            if let Err(e) = &result {
                log::warn!("publisher: publish to {channel} failed after {retries} retries: {e}");
            }
            let room = msg.event.room().clone();
            addr.do_send(PublishEnded {
                room,
                succeeded: result.is_ok(),
                retries,
            });
            result
        })
    }
}

impl Handler<CurrentConnection> for RedisPublisher {
    type Result = Option<(MultiplexedConnection, u64)>;

    fn handle(&mut self, _: CurrentConnection, _ctx: &mut Context<Self>) -> Self::Result {
        self.conn.clone().map(|conn| (conn, self.generation))
    }
}

impl Handler<PublishEnded> for RedisPublisher {
    type Result = ();

    fn handle(&mut self, msg: PublishEnded, _ctx: &mut Context<Self>) {
        self.stats
            .record(msg.room.as_str(), msg.succeeded, msg.retries);
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
        ctx.stop();
    }
}
