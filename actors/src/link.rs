//! What the two Redis link actors share: their configuration, their status, the
//! mapping between rooms and Redis channels, and their lifecycle ([`RedisLink`]).

use std::{future::Future, time::Duration};

use actix::{prelude::*, Message};

use crate::{Backoff, Error, Room};

/// Settings of the Redis links (PROTOCOL.md §4, §5). The defaults are the seed's numbers.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where Redis is.
    pub client: redis::Client,
    /// Prepended to a room to make its Redis channel; keeps deployments that share
    /// a Redis apart (pub/sub ignores the database number).
    pub channel_prefix: String,
    /// Retries after a publish attempt that could not reach Redis.
    pub publish_retries: u32,
    /// The first retry delay; each next one doubles (100, 200, 400 ms).
    pub publish_retry_base: Duration,
    /// The first reconnect delay.
    pub reconnect_base: Duration,
    /// The reconnect delay never grows past this.
    pub reconnect_max: Duration,
    /// How often each link PINGs Redis to find a link that is open but dead.
    pub probe_interval: Duration,
    /// A PING unanswered for this long means the link is dead.
    pub probe_timeout: Duration,
    /// The deadline of every other Redis call (connect, PUBLISH, SUBSCRIBE).
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// PROTOCOL.md §4 `PUBLISH_RETRIES`.
    pub const DEFAULT_PUBLISH_RETRIES: u32 = 3;
    /// `PUBLISH_RETRY_BASE_MS`.
    pub const DEFAULT_PUBLISH_RETRY_BASE: Duration = Duration::from_millis(100);
    /// `RECONNECT_BASE_MS`.
    pub const DEFAULT_RECONNECT_BASE: Duration = Duration::from_millis(100);
    /// `RECONNECT_MAX_MS`.
    pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_millis(1000);
    /// `PROBE_INTERVAL_MS`.
    pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(1000);
    /// `PROBE_TIMEOUT_MS`.
    pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(2000);
    /// `REDIS_RESPONSE_TIMEOUT_MS`.
    pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(5000);

    /// The defaults, for the Redis at `client`. TCP connections to it get
    /// `TCP_NODELAY`: a small PUBLISH must not wait for the previous one's ACK
    /// (Nagle's algorithm against delayed ACKs costs up to 40 ms).
    pub fn new(client: redis::Client) -> RedisConfig {
        let info = client.get_connection_info().clone();
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let client = redis::Client::open(info.set_tcp_settings(tcp)).unwrap_or(client);
        RedisConfig {
            client,
            channel_prefix: String::new(),
            publish_retries: Self::DEFAULT_PUBLISH_RETRIES,
            publish_retry_base: Self::DEFAULT_PUBLISH_RETRY_BASE,
            reconnect_base: Self::DEFAULT_RECONNECT_BASE,
            reconnect_max: Self::DEFAULT_RECONNECT_MAX,
            probe_interval: Self::DEFAULT_PROBE_INTERVAL,
            probe_timeout: Self::DEFAULT_PROBE_TIMEOUT,
            response_timeout: Self::DEFAULT_RESPONSE_TIMEOUT,
        }
    }

    /// The Redis channel of `room`.
    pub fn channel(&self, room: &Room) -> String {
        format!("{}{}", self.channel_prefix, room)
    }

    /// The room of a Redis channel, when the channel is one of ours.
    pub fn room(&self, channel: &str) -> Option<Room> {
        channel
            .strip_prefix(&self.channel_prefix)
            .and_then(|name| Room::new(name).ok())
    }

    /// Makes `rediss://` work: rustls needs a process-wide crypto provider, and this
    /// crate picks *ring* (pure Rust and C, no cmake). Harmless when one is installed.
    pub(crate) fn install_tls_provider() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    pub(crate) fn connection_config(&self) -> redis::AsyncConnectionConfig {
        redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.response_timeout))
            .set_response_timeout(Some(self.response_timeout))
    }
}

/// The state of one link, for `GET /health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, actix::MessageResponse)]
pub struct LinkStatus {
    /// Connected (and, for the subscriber, every wanted room confirmed once).
    pub ready: bool,
    /// Failed connection attempts since the last success.
    pub failed_attempts: u32,
    /// Redis channels this link holds, confirmed (the subscriber; 0 for the publisher).
    pub channels: usize,
}

/// Ask a link actor for its [`LinkStatus`].
#[derive(Debug, Message)]
#[rtype(result = "LinkStatus")]
pub struct GetLinkStatus;

/// The reconnect bookkeeping both link actors share.
///
/// A link counts as proven once it did real work (the publisher's handshake, the
/// subscriber's first confirmed SUBSCRIBE). Losing a proven link reconnects at once;
/// a failed connect, or a link lost before it was proven, counts as a failed attempt
/// and waits the next [`Backoff`] delay, so a Redis that accepts connections but
/// refuses work cannot make the actor spin.
#[derive(Debug)]
pub(crate) struct LinkState {
    backoff: Backoff,
    failed_attempts: u32,
    proven: bool,
    /// A PING is in flight; the next probe tick skips.
    probing: bool,
}

impl LinkState {
    pub(crate) fn new(config: &RedisConfig) -> LinkState {
        LinkState {
            backoff: Backoff::new(config.reconnect_base, config.reconnect_max),
            failed_attempts: 0,
            proven: false,
            probing: false,
        }
    }

    /// How long to wait before the next connect: `None` for at once.
    pub(crate) fn connect_delay(&mut self) -> Option<Duration> {
        (self.failed_attempts > 0).then(|| self.backoff.next_delay())
    }

    /// The number of this connect attempt, for a log line when it fails. (The
    /// failure is counted by [`LinkState::lost`], when the actor restarts.)
    pub(crate) fn attempt(&self) -> u32 {
        self.failed_attempts + 1
    }

    /// The link did real work: the next loss reconnects at once.
    pub(crate) fn prove(&mut self) {
        self.proven = true;
        self.failed_attempts = 0;
        self.backoff.reset();
    }

    /// The link is gone (the actor restarts).
    pub(crate) fn lost(&mut self) {
        if !self.proven {
            self.failed_attempts += 1;
        }
        self.proven = false;
        self.probing = false;
    }

    /// Failed connection attempts since the link was last proven.
    pub(crate) fn failed_attempts(&self) -> u32 {
        self.failed_attempts
    }
}

/// A Redis link actor (the publisher, the subscriber): it owns one connection and
/// replaces it by stopping, so that its [`Supervisor`] restarts it. Each link says how
/// it opens, pings and lets go of its connection; the lifecycle around those is the
/// same for both and lives here: when to connect (the [`LinkState`]), the deadlines,
/// the probe, and that a dead link stops the actor.
pub(crate) trait RedisLink: Actor<Context = Context<Self>> {
    /// What a successful connect yields.
    type Connection: 'static;

    /// The link's settings.
    fn config(&self) -> &RedisConfig;

    /// The link's reconnect bookkeeping, kept in the actor so it survives restarts.
    fn link_state(&mut self) -> &mut LinkState;

    /// Names the link in log lines.
    fn name(&self) -> String;

    /// Opens a connection; [`RedisLink::connect`] adds the deadline.
    fn open(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = Result<Self::Connection, Error>> + 'static;

    /// Takes a new connection into use (it is probed from now on).
    fn connected(&mut self, conn: Self::Connection, ctx: &mut Context<Self>);

    /// A PING on the current connection; `None` without one.
    fn ping(&self) -> Option<impl Future<Output = Result<(), Error>> + 'static>;

    /// Lets go of the connection, lost for `why`; logs (and counts) the loss when
    /// there was a connection to lose.
    fn drop_connection(&mut self, why: &str);

    /// Connects at once, or after the backoff delay when the link failed before it
    /// was proven (see [`LinkState`]). Called from `started`, so on every restart.
    fn connect_when_due(&mut self, ctx: &mut Context<Self>) {
        match self.link_state().connect_delay() {
            None => self.connect(ctx),
            Some(delay) => {
                ctx.run_later(delay, Self::connect);
            }
        }
    }

    /// One connect attempt, within the response deadline. A failed attempt stops the
    /// actor: the restart counts it and tries again after the next delay.
    fn connect(&mut self, ctx: &mut Context<Self>) {
        let open = self.open(ctx);
        with_deadline(self.config().response_timeout, "connect", open)
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(conn) => {
                    ctx.run_interval(act.config().probe_interval, Self::probe);
                    act.connected(conn, ctx);
                }
                Err(e) => {
                    let attempts = act.link_state().attempt();
                    let name = act.name();
                    log::warn!("{name}: cannot connect to redis (attempt {attempts}): {e}");
                    ctx.stop();
                }
            })
            .spawn(ctx);
    }

    /// PINGs Redis: a paused or wedged Redis keeps the socket open but never answers,
    /// and only a probe tells. No answer within the probe timeout loses the link.
    fn probe(&mut self, ctx: &mut Context<Self>) {
        if self.link_state().probing {
            return;
        }
        let Some(ping) = self.ping() else {
            return;
        };
        self.link_state().probing = true;
        with_deadline(self.config().probe_timeout, "PING", ping)
            .into_actor(self)
            .map(|result, act, ctx| {
                act.link_state().probing = false;
                if let Err(e) = result {
                    act.lose_link(&format!("probe failed: {e}"), ctx);
                }
            })
            .spawn(ctx);
    }

    /// The link is dead: the actor stops, and its supervisor restarts it to reconnect.
    fn lose_link(&mut self, why: &str, ctx: &mut Context<Self>) {
        self.drop_connection(why);
        ctx.stop();
    }
}

/// Runs `fut` with a deadline, turning a missed one into [`Error::Timeout`].
pub(crate) async fn with_deadline<T>(
    deadline: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(deadline, fut)
        .await
        .unwrap_or(Err(Error::Timeout(deadline.as_millis() as u64, what)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failed_attempt_counts_once_and_a_proven_link_reconnects_at_once() {
        let config = RedisConfig::new(redis::Client::open("redis://127.0.0.1:1").unwrap());
        let mut link = LinkState::new(&config);
        assert_eq!(link.connect_delay(), None, "the first connect is immediate");
        assert_eq!(link.attempt(), 1);
        link.lost(); // the connect failed, the actor restarts
        assert_eq!(link.failed_attempts(), 1);
        assert!(link.connect_delay().is_some(), "a failed attempt backs off");
        link.lost(); // connected, but lost before doing any work
        assert_eq!(link.failed_attempts(), 2);
        link.prove();
        assert_eq!(link.failed_attempts(), 0);
        link.lost(); // a proven link is lost
        assert_eq!(link.failed_attempts(), 0);
        assert_eq!(
            link.connect_delay(),
            None,
            "reconnect at once after a proven link"
        );
    }

    #[test]
    fn prefix_maps_rooms_to_channels_and_back() {
        let mut config = RedisConfig::new(redis::Client::open("redis://127.0.0.1:1").unwrap());
        config.channel_prefix = "test1:".into();
        let room = Room::new("match:42").unwrap();
        assert_eq!(config.channel(&room), "test1:match:42");
        assert_eq!(config.room("test1:match:42"), Some(room));
        assert_eq!(config.room("other:match:42"), None);
    }
}
