//! The publisher's connection: opening it (RESP3 when Redis speaks it), probing it,
//! and letting it go when it dies.

use std::{future::Future, sync::Arc};

use actix::prelude::*;
use redis::{aio::MultiplexedConnection, ErrorKind, ProtocolVersion, PushInfo, PushKind};

use super::RedisPublisher;
use crate::{
    link::{LinkState, RedisConfig, RedisLink},
    Error,
};

/// The connection of `generation` is dead.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct LinkLost {
    /// Which connection (see [`RedisPublisher::generation`]).
    pub(super) generation: u64,
    /// For the log line.
    pub(super) why: String,
}

impl RedisLink for RedisPublisher {
    type Connection = MultiplexedConnection;

    fn config(&self) -> &RedisConfig {
        &self.config
    }

    fn link_state(&mut self) -> &mut LinkState {
        &mut self.link
    }

    fn name(&self) -> String {
        "publisher".into()
    }

    /// Connects over RESP3 when Redis speaks it (6 and later), because only then does
    /// redis-rs report a closed connection at once (a `Disconnection` push), so a
    /// publish made after the link died is known not to have been sent, and is retried.
    /// On an older Redis, RESP2: failed commands and the PING probe find dead links.
    fn open(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = Result<MultiplexedConnection, Error>> + 'static {
        let (generation, addr) = (self.generation, ctx.address());
        let on_push = move |info: PushInfo| {
            if info.kind == PushKind::Disconnection {
                let why = "connection closed".into();
                addr.do_send(LinkLost { generation, why });
            }
            Ok::<(), std::convert::Infallible>(())
        };
        open_resp3_or_resp2(self.config.clone(), on_push)
    }

    fn connected(&mut self, conn: MultiplexedConnection, _ctx: &mut Context<Self>) {
        log::info!(
            "publisher: connected to redis after {} failed attempts",
            self.link.failed_attempts()
        );
        self.conn = Some(conn);
        // The handshake was a real round trip: the link is proven.
        self.link.prove();
    }

    fn ping(&self) -> Option<impl Future<Output = Result<(), Error>> + 'static> {
        let mut conn = self.conn.clone()?;
        Some(async move {
            redis::cmd("PING")
                .query_async::<redis::Value>(&mut conn)
                .await
                .map(|_pong| ())
                .map_err(|e| Error::from_redis(&e))
        })
    }

    fn drop_connection(&mut self, why: &str) {
        if self.conn.take().is_some() {
            self.stats.links_lost += 1;
            log::warn!("publisher: redis link lost ({why}); reconnecting");
        }
    }
}

/// Opens the connection: RESP3 with `on_push`, or RESP2 when Redis is older.
async fn open_resp3_or_resp2(
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
    let mut conn = match first {
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
    .map_err(|e| Error::from_redis(&e))?;
    // The scripts the pipelines call by SHA are loaded before the first publish. A
    // Redis that refuses (an ACL without SCRIPT) still serves plain rooms; durable and
    // keyed publishes then fail with the reason in the log.
    if let Err(e) = crate::durable::scripts::load(&mut conn).await {
        log::warn!("publisher: loading the publish scripts failed: {e}; durable and keyed publishes will fail");
    }
    Ok(conn)
}

impl Handler<LinkLost> for RedisPublisher {
    type Result = ();

    fn handle(&mut self, msg: LinkLost, ctx: &mut Context<Self>) {
        if msg.generation == self.generation {
            self.lose_link(&msg.why, ctx);
        }
    }
}
