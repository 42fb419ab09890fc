//! Configuration from the environment (PROTOCOL.md §4), loaded once in `main`.

use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo};
use switchboard_actors::{
    durable::DurableConfig, presence::PresenceConfig, BackplaneConfig, BrokerConfig, Pattern,
    PeersConfig, RedisConfig,
};

use crate::auth::Authenticator;
use thiserror::Error;

/// A setting that cannot be used: the server stops at start with this line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("switchboard: invalid configuration: {name}: {why}")]
pub struct ConfigError {
    /// The environment variable.
    pub name: &'static str,
    /// What is wrong with its value.
    pub why: String,
}

/// Per-connection limits (PROTOCOL.md §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A WebSocket message over this closes the connection with 1009.
    pub frame_bytes: usize,
    /// An event over this is refused (`too_large`, HTTP 413).
    pub event_bytes: usize,
    /// Bytes queued for one client before it is closed with 1013.
    pub outbound_bytes: usize,
    /// Frames queued for one client before it is closed with 1013.
    pub outbound_frames: usize,
    /// Rooms one connection may hold.
    pub subscriptions: usize,
    /// Publishes per second per connection, on average; 0 turns the limit off.
    pub publish_rate: u32,
    /// Publishes per connection at once.
    pub publish_burst: u32,
    /// Publishes one connection may have waiting for their answer; past it a publish
    /// is refused (`publish_failed`), so a pipelining client cannot queue without end.
    pub connection_publishes_in_flight: usize,
    /// Publishes this server's HTTP callers and sessions together may have waiting
    /// for their answer (see `PublishGate`).
    pub publishes_in_flight: usize,
}

impl Limits {
    /// `LIMIT_FRAME_BYTES`: 64 KiB.
    pub const DEFAULT_FRAME_BYTES: usize = 64 * 1024;
    /// `LIMIT_EVENT_BYTES`: 32 KiB.
    pub const DEFAULT_EVENT_BYTES: usize = 32 * 1024;
    /// `LIMIT_OUTBOUND_BYTES`: 1 MiB.
    pub const DEFAULT_OUTBOUND_BYTES: usize = 1024 * 1024;
    /// `LIMIT_OUTBOUND_FRAMES`: 1,000.
    pub const DEFAULT_OUTBOUND_FRAMES: usize = 1000;
    /// `LIMIT_SUBSCRIPTIONS`: 128.
    pub const DEFAULT_SUBSCRIPTIONS: usize = 128;
    /// `LIMIT_PUBLISH_RATE`: 50 a second.
    pub const DEFAULT_PUBLISH_RATE: u32 = 50;
    /// `LIMIT_PUBLISH_BURST`: 100.
    pub const DEFAULT_PUBLISH_BURST: u32 = 100;
    /// `LIMIT_CONNECTION_PUBLISHES_IN_FLIGHT`: 256 (more than a burst's worth).
    pub const DEFAULT_CONNECTION_PUBLISHES_IN_FLIGHT: usize = 256;
    /// `LIMIT_PUBLISHES_IN_FLIGHT`: 4,096, well under the publisher's own queue bound
    /// (`MAX_QUEUED`), and at most 128 MiB of events of the largest size.
    pub const DEFAULT_PUBLISHES_IN_FLIGHT: usize = 4096;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes: Self::DEFAULT_FRAME_BYTES,
            event_bytes: Self::DEFAULT_EVENT_BYTES,
            outbound_bytes: Self::DEFAULT_OUTBOUND_BYTES,
            outbound_frames: Self::DEFAULT_OUTBOUND_FRAMES,
            subscriptions: Self::DEFAULT_SUBSCRIPTIONS,
            publish_rate: Self::DEFAULT_PUBLISH_RATE,
            publish_burst: Self::DEFAULT_PUBLISH_BURST,
            connection_publishes_in_flight: Self::DEFAULT_CONNECTION_PUBLISHES_IN_FLIGHT,
            publishes_in_flight: Self::DEFAULT_PUBLISHES_IN_FLIGHT,
        }
    }
}

/// A secret from the environment; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Compares with `candidate` in time independent of where they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Who may connect and change things (PROTOCOL.md §6). All off by default.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Checks client tokens; `None` when `AUTH_JWT_SECRET` is unset (anyone may connect).
    pub jwt: Option<Authenticator>,
    /// A session must authenticate within this.
    pub auth_timeout: Duration,
    /// Browser origins allowed to open a WebSocket; `None` allows any.
    pub allowed_origins: Option<Vec<String>>,
    /// Required as a bearer token by the HTTP endpoints that change things.
    pub service_token: Option<Secret>,
}

impl SecurityConfig {
    /// `AUTH_TIMEOUT_MS`.
    pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_millis(10_000);
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            jwt: None,
            auth_timeout: Self::DEFAULT_AUTH_TIMEOUT,
            allowed_origins: None,
            service_token: None,
        }
    }
}

/// Settings of the WebSocket sessions.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// A WebSocket ping this often.
    pub heartbeat_interval: Duration,
    /// A client silent this long (not even a pong) is dropped.
    pub client_timeout: Duration,
    /// The limits.
    pub limits: Limits,
    /// Authentication, origins, service token.
    pub security: SecurityConfig,
    /// `HISTORY_SIZE`: the largest `limit` of a history read.
    pub history_size: usize,
}

impl SessionConfig {
    /// `HEARTBEAT_INTERVAL_MS`.
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(5000);
    /// `CLIENT_TIMEOUT_MS`.
    pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_millis(10_000);
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            heartbeat_interval: Self::DEFAULT_HEARTBEAT_INTERVAL,
            client_timeout: Self::DEFAULT_CLIENT_TIMEOUT,
            limits: Limits::default(),
            security: SecurityConfig::default(),
            history_size: DurableConfig::DEFAULT_HISTORY_SIZE,
        }
    }
}

/// Everything the server reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub host: String,
    /// The port; 0 picks a free one.
    pub port: u16,
    /// The broker, with its backplane.
    pub broker: BrokerConfig,
    /// The peer announcements.
    pub peers: PeersConfig,
    /// The sessions.
    pub session: SessionConfig,
    /// How long a graceful shutdown may take.
    pub shutdown_timeout: Duration,
    /// HTTP worker threads (`HTTP_WORKERS`; default: one per core).
    pub http_workers: usize,
    /// Whether `GET /` serves the console and `GET /switchboard.js` the browser client
    /// (`CONSOLE`, `on` or `off`). An application that mounts Switchboard next to its
    /// own `/` turns it off.
    pub console: bool,
}

impl Config {
    /// `HOST`.
    pub const DEFAULT_HOST: &'static str = "127.0.0.1";
    /// `PORT`.
    pub const DEFAULT_PORT: u16 = 8080;
    /// `SHUTDOWN_TIMEOUT_MS`.
    pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(10_000);
    /// `CONSOLE`: on.
    pub const DEFAULT_CONSOLE: bool = true;

    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let env = Env(&lookup);
        let server_id = match env.text("SERVER_ID")? {
            Some(id) => id,
            None => default_server_id(),
        };
        // The Redis tunables are read (and checked) even on the memory backplane, so a
        // bad value is reported whatever else is set. The links are built around the
        // real client: `RedisConfig::new` sets its connection options (TCP_NODELAY).
        let client = redis_client(&env)?;
        let links = redis_config(
            &env,
            client
                .clone()
                .unwrap_or_else(|| redis::Client::open("redis://127.0.0.1").expect("a valid URL")),
        )?;
        let backplane = match client {
            Some(_) => BackplaneConfig::Redis(Box::new(links)),
            None => BackplaneConfig::Memory,
        };
        let mut broker = BrokerConfig::new(server_id.clone(), backplane);
        broker.durable = durable(&env)?;
        broker.presence = presence(&env)?;
        broker.inbound_capacity = env.number(
            "LIMIT_INBOUND_EVENTS",
            switchboard_actors::INBOUND_CAPACITY as u64,
            1,
            1_000_000,
        )? as usize;
        broker.subscribe_timeout = env.millis(
            "SUBSCRIBE_TIMEOUT_MS",
            BrokerConfig::DEFAULT_SUBSCRIBE_TIMEOUT,
        )?;
        let peers = PeersConfig {
            server_id,
            instance_id: broker.instance_id.clone(),
            heartbeat: env.millis("PEER_HEARTBEAT_MS", PeersConfig::DEFAULT_HEARTBEAT)?,
        };
        let session = SessionConfig {
            heartbeat_interval: env.millis(
                "HEARTBEAT_INTERVAL_MS",
                SessionConfig::DEFAULT_HEARTBEAT_INTERVAL,
            )?,
            client_timeout: env
                .millis("CLIENT_TIMEOUT_MS", SessionConfig::DEFAULT_CLIENT_TIMEOUT)?,
            limits: limits(&env)?,
            security: security(&env)?,
            history_size: broker.durable.history_size,
        };
        if session.client_timeout <= session.heartbeat_interval {
            return Err(ConfigError {
                name: "CLIENT_TIMEOUT_MS",
                why: "must be longer than HEARTBEAT_INTERVAL_MS, or every client is dropped".into(),
            });
        }
        Ok(Config {
            host: env
                .text("HOST")?
                .unwrap_or_else(|| Self::DEFAULT_HOST.into()),
            port: env.number("PORT", Self::DEFAULT_PORT as u64, 0, u16::MAX as u64)? as u16,
            broker,
            peers,
            session,
            shutdown_timeout: env.millis("SHUTDOWN_TIMEOUT_MS", Self::DEFAULT_SHUTDOWN_TIMEOUT)?,
            http_workers: env.number("HTTP_WORKERS", default_workers() as u64, 1, 256)? as usize,
            console: env.switch("CONSOLE", Self::DEFAULT_CONSOLE)?,
        })
    }
}

/// PROTOCOL.md §7's settings: which rooms are durable, and their keys' bounds.
fn durable(env: &Env<'_>) -> Result<DurableConfig, ConfigError> {
    let rooms = room_patterns(env, "DURABLE_ROOMS")?;
    // A room's keys may live for weeks: these three go up to 365 days.
    const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
    let history_ttl = env.millis_up_to(
        "HISTORY_TTL_MS",
        DurableConfig::DEFAULT_HISTORY_TTL,
        YEAR_MS,
    )?;
    // Unset, the key's TTL is its default or the history's, whichever is shorter.
    let idempotency_ttl = env.millis_up_to(
        "IDEMPOTENCY_TTL_MS",
        DurableConfig::DEFAULT_IDEMPOTENCY_TTL.min(history_ttl),
        YEAR_MS,
    )?;
    let durable = DurableConfig {
        rooms,
        history_size: env.number(
            "HISTORY_SIZE",
            DurableConfig::DEFAULT_HISTORY_SIZE as u64,
            1,
            1_000_000,
        )? as usize,
        history_ttl,
        meta_ttl: env.millis_up_to(
            "HISTORY_META_TTL_MS",
            DurableConfig::DEFAULT_META_TTL,
            YEAR_MS,
        )?,
        idempotency_ttl,
    };

    if durable.meta_ttl < durable.history_ttl {
        return Err(ConfigError {
            name: "HISTORY_META_TTL_MS",
            why: "must be at least HISTORY_TTL_MS: a room's numbering outlives its events".into(),
        });
    }
    if durable.idempotency_ttl > durable.history_ttl {
        return Err(ConfigError {
            name: "IDEMPOTENCY_TTL_MS",
            why: "must be at most HISTORY_TTL_MS".into(),
        });
    }
    Ok(durable)
}

/// PROTOCOL.md §9's settings: which rooms have presence, and how long a silent
/// server's members stay.
fn presence(env: &Env<'_>) -> Result<PresenceConfig, ConfigError> {
    const DAY_MS: u64 = 24 * 3600 * 1000;
    let ttl = env.millis_up_to("PRESENCE_TTL_MS", PresenceConfig::DEFAULT_TTL, DAY_MS)?;
    if ttl < PresenceConfig::MIN_TTL {
        return Err(ConfigError {
            name: "PRESENCE_TTL_MS",
            why: format!(
                "must be at least {} (servers refresh every third of it)",
                PresenceConfig::MIN_TTL.as_millis()
            ),
        });
    }
    Ok(PresenceConfig {
        rooms: room_patterns(env, "PRESENCE_ROOMS")?,
        ttl,
    })
}

/// A comma-separated list of room patterns (PROTOCOL.md §6 syntax).
fn room_patterns(env: &Env<'_>, name: &'static str) -> Result<Vec<Pattern>, ConfigError> {
    let mut rooms = Vec::new();
    for pattern in env.text(name)?.unwrap_or_default().split(',') {
        let pattern = pattern.trim();
        if pattern.is_empty() {
            continue;
        }
        rooms.push(Pattern::parse(pattern).ok_or_else(|| ConfigError {
            name,
            why: format!(
                "{pattern:?} is not a room pattern (segments of A-Z a-z 0-9 _ . -, `*` for \
                 one segment, a trailing `**` for one or more)"
            ),
        })?);
    }
    Ok(rooms)
}

fn limits(env: &Env<'_>) -> Result<Limits, ConfigError> {
    let size = |name, default: usize| {
        env.number(name, default as u64, 1, u32::MAX as u64)
            .map(|n| n as usize)
    };
    let limits = Limits {
        frame_bytes: size("LIMIT_FRAME_BYTES", Limits::DEFAULT_FRAME_BYTES)?,
        event_bytes: size("LIMIT_EVENT_BYTES", Limits::DEFAULT_EVENT_BYTES)?,
        outbound_bytes: size("LIMIT_OUTBOUND_BYTES", Limits::DEFAULT_OUTBOUND_BYTES)?,
        outbound_frames: size("LIMIT_OUTBOUND_FRAMES", Limits::DEFAULT_OUTBOUND_FRAMES)?,
        subscriptions: size("LIMIT_SUBSCRIPTIONS", Limits::DEFAULT_SUBSCRIPTIONS)?,
        publish_rate: env.number(
            "LIMIT_PUBLISH_RATE",
            Limits::DEFAULT_PUBLISH_RATE.into(),
            0,
            1_000_000,
        )? as u32,
        publish_burst: env.number(
            "LIMIT_PUBLISH_BURST",
            Limits::DEFAULT_PUBLISH_BURST.into(),
            1,
            1_000_000,
        )? as u32,
        connection_publishes_in_flight: size(
            "LIMIT_CONNECTION_PUBLISHES_IN_FLIGHT",
            Limits::DEFAULT_CONNECTION_PUBLISHES_IN_FLIGHT,
        )?,
        publishes_in_flight: env.number(
            "LIMIT_PUBLISHES_IN_FLIGHT",
            Limits::DEFAULT_PUBLISHES_IN_FLIGHT as u64,
            1,
            switchboard_actors::MAX_QUEUED as u64,
        )? as usize,
    };
    Ok(limits)
}

fn security(env: &Env<'_>) -> Result<SecurityConfig, ConfigError> {
    let audience = env.text("AUTH_JWT_AUDIENCE")?;
    let jwt = env
        .text("AUTH_JWT_SECRET")?
        .map(|secret| Authenticator::new(secret.as_bytes(), audience.clone()));
    if jwt.is_none() && audience.is_some() {
        return Err(ConfigError {
            name: "AUTH_JWT_AUDIENCE",
            why: "is set but AUTH_JWT_SECRET is not".into(),
        });
    }
    let allowed_origins = match env.text("ALLOWED_ORIGINS")? {
        None => None,
        Some(list) => {
            let origins: Vec<String> = list
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .collect();
            if let Some(bad) = origins
                .iter()
                .find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
            {
                return Err(ConfigError {
                    name: "ALLOWED_ORIGINS",
                    why: format!("{bad:?} is not an http:// or https:// origin"),
                });
            }
            Some(origins)
        }
    };
    Ok(SecurityConfig {
        jwt,
        auth_timeout: env.millis("AUTH_TIMEOUT_MS", SecurityConfig::DEFAULT_AUTH_TIMEOUT)?,
        allowed_origins,
        service_token: env.text("SERVICE_TOKEN")?.map(Secret),
    })
}

fn redis_config(env: &Env<'_>, client: redis::Client) -> Result<RedisConfig, ConfigError> {
    let mut redis = RedisConfig::new(client);
    redis.channel_prefix = env.text("REDIS_CHANNEL_PREFIX")?.unwrap_or_default();
    if let Some(bad) = redis
        .channel_prefix
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ConfigError {
            name: "REDIS_CHANNEL_PREFIX",
            why: format!("must not contain {bad:?}"),
        });
    }
    redis.publish_retries = env.number(
        "PUBLISH_RETRIES",
        RedisConfig::DEFAULT_PUBLISH_RETRIES.into(),
        0,
        100,
    )? as u32;
    redis.publish_retry_base = env.millis(
        "PUBLISH_RETRY_BASE_MS",
        RedisConfig::DEFAULT_PUBLISH_RETRY_BASE,
    )?;
    redis.reconnect_base = env.millis("RECONNECT_BASE_MS", RedisConfig::DEFAULT_RECONNECT_BASE)?;
    redis.reconnect_max = env.millis("RECONNECT_MAX_MS", RedisConfig::DEFAULT_RECONNECT_MAX)?;
    redis.probe_interval = env.millis("PROBE_INTERVAL_MS", RedisConfig::DEFAULT_PROBE_INTERVAL)?;
    redis.probe_timeout = env.millis("PROBE_TIMEOUT_MS", RedisConfig::DEFAULT_PROBE_TIMEOUT)?;
    redis.response_timeout = env.millis(
        "REDIS_RESPONSE_TIMEOUT_MS",
        RedisConfig::DEFAULT_RESPONSE_TIMEOUT,
    )?;
    if redis.reconnect_max < redis.reconnect_base {
        return Err(ConfigError {
            name: "RECONNECT_MAX_MS",
            why: "must not be below RECONNECT_BASE_MS".into(),
        });
    }
    Ok(redis)
}

/// `REDIS_URL` wins; else `REDIS_HOST` and friends; none set means the memory backplane.
/// `REDIS_CLUSTER_NODES` is refused: a server that quietly ran on one Redis (or on
/// none) when asked for a cluster would keep its servers apart.
fn redis_client(env: &Env<'_>) -> Result<Option<redis::Client>, ConfigError> {
    if env.text("REDIS_CLUSTER_NODES")?.is_some() {
        return Err(ConfigError {
            name: "REDIS_CLUSTER_NODES",
            why: "Redis Cluster is not supported yet (PROTOCOL.md §11); use REDIS_URL".into(),
        });
    }
    if let Some(url) = env.text("REDIS_URL")? {
        let scheme = url.split("://").next().unwrap_or_default();
        if !matches!(scheme, "redis" | "rediss" | "unix" | "redis+unix") || !url.contains("://") {
            return Err(ConfigError {
                name: "REDIS_URL",
                why: "use redis://, rediss:// or unix://".into(),
            });
        }
        let client = redis::Client::open(url.as_str()).map_err(|e| ConfigError {
            name: "REDIS_URL",
            why: e.to_string(),
        })?;
        return Ok(Some(client));
    }
    let (host, port) = (env.text("REDIS_HOST")?, env.text("REDIS_PORT")?);
    let (password, db) = (env.text("REDIS_PASSWORD")?, env.text("REDIS_DB")?);
    if host.is_none() && port.is_none() && password.is_none() && db.is_none() {
        return Ok(None);
    }
    let port = env.number("REDIS_PORT", 6379, 1, u16::MAX as u64)? as u16;
    let db = env.number("REDIS_DB", 0, 0, 1 << 20)? as i64;
    let host = host.unwrap_or_else(|| "127.0.0.1".into());
    let info = ConnectionAddr::Tcp(host, port)
        .into_connection_info()
        .map_err(|e| ConfigError {
            name: "REDIS_HOST",
            why: e.to_string(),
        })?;
    let mut settings = info.redis_settings().clone().set_db(db);
    if let Some(password) = password {
        settings = settings.set_password(password);
    }
    let client =
        redis::Client::open(info.set_redis_settings(settings)).map_err(|e| ConfigError {
            name: "REDIS_HOST",
            why: e.to_string(),
        })?;
    Ok(Some(client))
}

fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn default_server_id() -> String {
    let secs = switchboard_actors::now_ms() / 1000;
    format!("server_{}_{secs}", std::process::id())
}

/// Typed reads of the environment; every failure names its variable.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    /// A set, non-empty value.
    fn text(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match (self.0)(name) {
            Some(value) if value.trim().is_empty() => Err(ConfigError {
                name,
                why: "is empty".into(),
            }),
            other => Ok(other),
        }
    }

    fn number(
        &self,
        name: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Some(text) = self.text(name)? else {
            return Ok(default);
        };
        let value: u64 = text.trim().parse().map_err(|_| ConfigError {
            name,
            why: format!("{text:?} is not a whole number"),
        })?;
        if value < min || value > max {
            return Err(ConfigError {
                name,
                why: format!("{value} is not between {min} and {max}"),
            });
        }
        Ok(value)
    }

    /// `on` or `off` (any case).
    fn switch(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.text(name)? {
            None => Ok(default),
            Some(text) if text.trim().eq_ignore_ascii_case("on") => Ok(true),
            Some(text) if text.trim().eq_ignore_ascii_case("off") => Ok(false),
            Some(text) => Err(ConfigError {
                name,
                why: format!("{text:?} is neither on nor off"),
            }),
        }
    }

    /// A duration in milliseconds, at least 1.
    fn millis(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        self.millis_up_to(name, default, 24 * 3600 * 1000)
    }

    /// A duration in milliseconds, 1 to `max`.
    fn millis_up_to(
        &self,
        name: &'static str,
        default: Duration,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        let ms = self.number(name, default.as_millis() as u64, 1, max)?;
        Ok(Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn nothing_set_means_memory_and_the_defaults() {
        let config = load(&[]).unwrap();
        assert!(matches!(config.broker.backplane, BackplaneConfig::Memory));
        assert_eq!((config.host.as_str(), config.port), ("127.0.0.1", 8080));
        assert_eq!(config.session.limits, Limits::default());
        assert!(config.session.security.jwt.is_none());
        assert!(config.broker.server_id.starts_with("server_"));
    }

    #[test]
    fn redis_url_wins_and_tunables_apply() {
        let config = load(&[
            ("REDIS_URL", "redis://127.0.0.1:7777"),
            ("REDIS_HOST", "ignored"),
            ("PUBLISH_RETRIES", "1"),
            ("REDIS_CHANNEL_PREFIX", "t1:"),
        ])
        .unwrap();
        let BackplaneConfig::Redis(redis) = config.broker.backplane else {
            panic!("expected redis");
        };
        assert_eq!(redis.publish_retries, 1);
        assert_eq!(redis.channel_prefix, "t1:");
    }

    /// The links' client is the configured one, with the options `RedisConfig::new`
    /// sets: TCP_NODELAY (without it a publish waits on Nagle against delayed ACKs).
    #[test]
    fn the_redis_client_keeps_its_connection_settings() {
        for vars in [
            &[("REDIS_URL", "redis://10.1.2.3:7777/2")][..],
            &[
                ("REDIS_HOST", "10.1.2.3"),
                ("REDIS_PORT", "7777"),
                ("REDIS_DB", "2"),
            ][..],
        ] {
            let config = load(vars).unwrap();
            let BackplaneConfig::Redis(redis) = config.broker.backplane else {
                panic!("expected redis for {vars:?}");
            };
            let info = redis.client.get_connection_info();
            assert!(info.tcp_settings().nodelay(), "TCP_NODELAY for {vars:?}");
            assert_eq!(info.redis_settings().db(), 2, "{vars:?}");
            assert!(
                info.addr().to_string().contains("10.1.2.3:7777"),
                "{vars:?}: {}",
                info.addr()
            );
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let config = load(&[
            ("AUTH_JWT_SECRET", "s3cr3t-value"),
            ("SERVICE_TOKEN", "t0ken-value"),
        ])
        .unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cr3t-value") && !shown.contains("t0ken-value"),
            "{shown}"
        );
        assert!(config
            .session
            .security
            .service_token
            .unwrap()
            .matches("t0ken-value"));
    }

    #[test]
    fn redis_host_alone_selects_redis() {
        let config = load(&[("REDIS_HOST", "127.0.0.1"), ("REDIS_DB", "2")]).unwrap();
        assert!(matches!(config.broker.backplane, BackplaneConfig::Redis(_)));
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            ("PORT", "abc"),
            ("PORT", "70000"),
            ("PUBLISH_RETRIES", "-1"),
            ("HEARTBEAT_INTERVAL_MS", "0"),
            ("CLIENT_TIMEOUT_MS", "x"),
            ("REDIS_URL", "ftp://x"),
            ("LIMIT_FRAME_BYTES", "abc"),
            ("SERVER_ID", " "),
            ("LIMIT_PUBLISH_RATE", "fast"),
            ("LIMIT_PUBLISH_BURST", "0"),
            ("ALLOWED_ORIGINS", "example.com"),
            ("AUTH_JWT_AUDIENCE", "app"),
            ("AUTH_TIMEOUT_MS", "0"),
            ("CLIENT_TIMEOUT_MS", "5000"),
            ("HTTP_WORKERS", "0"),
            ("REDIS_CLUSTER_NODES", "127.0.0.1:7000"),
        ] {
            let mut vars = vec![(name, value)];
            if name == "PUBLISH_RETRIES" {
                vars.push(("REDIS_URL", "redis://127.0.0.1"));
            }
            let err = load(&vars).expect_err(name);
            assert_eq!(err.name, name, "{err}");
            assert!(err
                .to_string()
                .starts_with(&format!("switchboard: invalid configuration: {name}: ")));
        }
    }

    #[test]
    fn console_is_on_unless_turned_off() {
        assert!(load(&[]).unwrap().console);
        assert!(load(&[("CONSOLE", "on")]).unwrap().console);
        assert!(!load(&[("CONSOLE", "off")]).unwrap().console);
        assert!(!load(&[("CONSOLE", "OFF")]).unwrap().console);
        for bad in ["no", "0", "false", "of"] {
            let error = load(&[("CONSOLE", bad)]).expect_err(bad);
            assert_eq!(error.name, "CONSOLE", "{bad}: {error}");
        }
        assert_eq!(load(&[("CONSOLE", "")]).unwrap_err().name, "CONSOLE");
    }

    #[test]
    fn durable_settings_are_read_and_checked() {
        let config = load(&[
            ("DURABLE_ROOMS", "chat:*, orders:**"),
            ("HISTORY_SIZE", "50"),
            ("HISTORY_TTL_MS", "1000"),
            ("HISTORY_META_TTL_MS", "604800000"),
        ])
        .unwrap();
        let durable = &config.broker.durable;
        let room = |name| switchboard_actors::Room::new(name).unwrap();
        assert!(durable.is_durable(&room("chat:1")));
        assert!(durable.is_durable(&room("orders:eu:7")));
        assert!(!durable.is_durable(&room("chat:1:x")));
        assert_eq!(durable.history_size, 50);
        assert_eq!(config.session.history_size, 50);
        assert_eq!(
            durable.idempotency_ttl,
            Duration::from_millis(1000),
            "unset, the keys live no longer than the history"
        );
        assert!(load(&[]).unwrap().broker.durable.rooms.is_empty());
        for (name, value, names) in [
            ("DURABLE_ROOMS", "chat:**:x", "DURABLE_ROOMS"),
            ("DURABLE_ROOMS", "a b", "DURABLE_ROOMS"),
            ("HISTORY_SIZE", "0", "HISTORY_SIZE"),
            ("HISTORY_META_TTL_MS", "1000", "HISTORY_META_TTL_MS"),
            ("IDEMPOTENCY_TTL_MS", "400000", "IDEMPOTENCY_TTL_MS"),
        ] {
            let error = load(&[(name, value)]).expect_err(value);
            assert_eq!(error.name, names, "{value}: {error}");
        }
    }

    #[test]
    fn presence_settings_are_read_and_checked() {
        let config = load(&[("PRESENCE_ROOMS", "lobby:*"), ("PRESENCE_TTL_MS", "1500")]).unwrap();
        let presence = &config.broker.presence;
        let room = |name| switchboard_actors::Room::new(name).unwrap();
        assert!(presence.is_presence(&room("lobby:1")));
        assert!(!presence.is_presence(&room("chat:1")));
        assert_eq!(presence.refresh_interval(), Duration::from_millis(500));
        let defaults = load(&[]).unwrap().broker.presence;
        assert!(defaults.rooms.is_empty());
        assert_eq!(defaults.ttl, Duration::from_millis(30_000));
        for (name, value) in [
            ("PRESENCE_ROOMS", "lobby:**:x"),
            ("PRESENCE_TTL_MS", "299"),
            ("PRESENCE_TTL_MS", "x"),
        ] {
            let error = load(&[(name, value)]).expect_err(value);
            assert_eq!(error.name, name, "{value}: {error}");
        }
    }
}
