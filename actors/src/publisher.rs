//! The `RedisPublisher` actor: owns the publishing connection.

use std::{sync::Arc, time::Duration};

use actix::prelude::*;
use redis::{aio::MultiplexedConnection, ErrorKind, ProtocolVersion, PushInfo, PushKind};

use crate::{
    link::{with_deadline, GetLinkStatus, LinkStatus, RedisConfig},
    Backoff, Error, Event, PublisherStats, ResetStats, Shutdown,
};

/// Owns the connection that publishes. One multiplexed connection pipelines every
/// concurrent PUBLISH, so publishes take no lock and open no connection of their own.
///
/// Supervised: when the connection dies (redis-rs reports the disconnection, or a PING
/// probe goes unanswered) the actor stops and its [`Supervisor`] restarts it, which
/// reconnects after a capped, jittered [`Backoff`]. It never gives up.
///
/// Publish retries (PROTOCOL.md §5): an attempt made while there is no connection
/// cannot have reached Redis, so it is retried after 100, 200, 400 ms; an attempt
/// that failed on an open connection may have been applied, so it is reported, never
/// retried, and a retry never duplicates an event.
pub struct RedisPublisher {
    config: Arc<RedisConfig>,
    conn: Option<MultiplexedConnection>,
    /// Bumped on every connection, so a late report about an old one is ignored.
    generation: u64,
    backoff: Backoff,
    failed_attempts: u32,
    probing: bool,
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

#[derive(Message)]
#[rtype(result = "Option<MultiplexedConnection>")]
struct CurrentConnection;

#[derive(Message)]
#[rtype(result = "()")]
struct PublishEnded {
    room: String,
    succeeded: bool,
    retries: u32,
}

#[derive(Message)]
#[rtype(result = "()")]
struct LinkLost {
    generation: u64,
    why: String,
}

impl RedisPublisher {
    /// Starts the publisher under a supervisor.
    pub fn start(config: Arc<RedisConfig>) -> Addr<RedisPublisher> {
        let backoff = Backoff::new(config.reconnect_base, config.reconnect_max);
        Supervisor::start(move |_| RedisPublisher {
            config,
            conn: None,
            generation: 0,
            backoff,
            failed_attempts: 0,
            probing: false,
            stats: PublisherStats::default(),
            closed: false,
        })
    }

    /// Connects over RESP3 when Redis speaks it (6 and later), because only then does
    /// redis-rs report a closed connection at once (a `Disconnection` push), so a
    /// publish made after the link died is known not to have been sent, and is retried.
    /// On an older Redis, RESP2, and the PING probe finds dead links.
    fn connect(&mut self, ctx: &mut Context<Self>) {
        let generation = self.generation;
        let addr = ctx.address();
        let on_push = move |info: PushInfo| {
            if info.kind == PushKind::Disconnection {
                addr.do_send(LinkLost {
                    generation,
                    why: "connection closed".into(),
                });
            }
            Ok::<(), std::convert::Infallible>(())
        };
        let resp2 = self.config.client.clone();
        let info = resp2.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let resp3 = redis::Client::open(info.set_redis_settings(settings));
        let conn_config = self.config.connection_config();
        let connect = async move {
            let pushing = conn_config.clone().set_push_sender(on_push);
            let first = match resp3 {
                Ok(client) => {
                    client
                        .get_multiplexed_async_connection_with_config(&pushing)
                        .await
                }
                Err(e) => Err(e),
            };
            match first {
                Err(e) if e.kind() == ErrorKind::RESP3NotSupported => {
                    log::info!("publisher: redis does not speak RESP3; using RESP2");
                    resp2
                        .get_multiplexed_async_connection_with_config(&conn_config)
                        .await
                }
                other => other,
            }
            .map_err(|e| Error::from_redis(&e))
        };
        with_deadline(self.config.response_timeout, "connect", connect)
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(conn) => act.connected(conn, ctx),
                Err(e) => {
                    act.failed_attempts += 1;
                    log::warn!(
                        "publisher: cannot connect to redis (attempt {}): {e}",
                        act.failed_attempts
                    );
                    ctx.stop();
                }
            })
            .spawn(ctx);
    }

    fn connected(&mut self, conn: MultiplexedConnection, ctx: &mut Context<Self>) {
        if self.failed_attempts > 0 {
            log::info!(
                "publisher: connected to redis after {} failed attempts",
                self.failed_attempts
            );
        } else {
            log::info!("publisher: connected to redis");
        }
        self.conn = Some(conn);
        self.failed_attempts = 0;
        self.backoff.reset();
        ctx.run_interval(self.config.probe_interval, Self::probe);
    }

    /// PINGs Redis; no answer within the probe timeout means the link is dead.
    fn probe(&mut self, ctx: &mut Context<Self>) {
        let Some(mut conn) = self.conn.clone().filter(|_| !self.probing) else {
            return;
        };
        self.probing = true;
        let ping = async move {
            redis::cmd("PING")
                .query_async::<redis::Value>(&mut conn)
                .await
                .map_err(|e| Error::from_redis(&e))
        };
        with_deadline(self.config.probe_timeout, "PING", ping)
            .into_actor(self)
            .map(|result, act, ctx| {
                act.probing = false;
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

    fn publish_once(
        conn: Option<MultiplexedConnection>,
        channel: &str,
        payload: &[u8],
        deadline: Duration,
    ) -> impl std::future::Future<Output = Result<(), Error>> + 'static {
        let command = redis::cmd("PUBLISH").arg(channel).arg(payload).clone();
        let attempt = async move {
            let Some(mut conn) = conn else {
                return Err(Error::NotConnected("no connection to redis".into()));
            };
            command
                .query_async::<i64>(&mut conn)
                .await
                .map(|_receivers| ())
                .map_err(|e| Error::from_redis(&e))
        };
        with_deadline(deadline, "PUBLISH", attempt)
    }
}

impl Actor for RedisPublisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.closed {
            return;
        }
        if self.failed_attempts == 0 {
            self.connect(ctx);
        } else {
            let delay = self.backoff.next_delay();
            ctx.run_later(delay, Self::connect);
        }
    }
}

impl Supervised for RedisPublisher {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.conn = None;
        self.probing = false;
        self.generation += 1;
    }
}

impl Handler<PublishEvent> for RedisPublisher {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(&mut self, msg: PublishEvent, ctx: &mut Context<Self>) -> Self::Result {
        let addr = ctx.address();
        let channel = self.config.channel(msg.event.room());
        let max_retries = self.config.publish_retries;
        let mut delays =
            Backoff::new(self.config.publish_retry_base, Duration::MAX).without_jitter();
        let deadline = self.config.response_timeout;
        Box::pin(async move {
            let payload = msg.event.json().as_bytes();
            let mut retries = 0;
            let result = loop {
                let conn = addr.send(CurrentConnection).await.map_err(Error::from)?;
                match Self::publish_once(conn, &channel, payload, deadline).await {
                    Err(e) if e.is_retryable() && retries < max_retries => {
                        retries += 1;
                        tokio::time::sleep(delays.next_delay()).await;
                    }
                    result => break result,
                }
            };
            if let Err(e) = &result {
                log::warn!("publisher: publish to {channel} failed after {retries} retries: {e}");
            }
            addr.do_send(PublishEnded {
                room: msg.event.room().to_string(),
                succeeded: result.is_ok(),
                retries,
            });
            result
        })
    }
}

impl Handler<CurrentConnection> for RedisPublisher {
    type Result = Option<MultiplexedConnection>;

    fn handle(&mut self, _: CurrentConnection, _ctx: &mut Context<Self>) -> Self::Result {
        self.conn.clone()
    }
}

impl Handler<PublishEnded> for RedisPublisher {
    type Result = ();

    fn handle(&mut self, msg: PublishEnded, _ctx: &mut Context<Self>) {
        self.stats.record(&msg.room, msg.succeeded, msg.retries);
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
            failed_attempts: self.failed_attempts,
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
