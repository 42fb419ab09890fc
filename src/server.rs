//! Starting, mounting and stopping Switchboard.

use std::{
    any::Any,
    future::Future,
    net::TcpListener,
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::Addr;
use actix_web::{dev::Extensions, web, App, HttpServer};
use switchboard_actors::{
    AnnounceStop, BackplaneConfig, BackplaneKind, Broker, GetHealth, Peers, Shutdown,
};
use tokio::sync::watch;

use crate::{ClientIds, Config, ConnectionCounters, ConnectionSocket, Metrics, PublishGate, State};

/// A running Switchboard: its broker, its peers, and what its routes share.
#[derive(Clone)]
pub struct Switchboard {
    state: Arc<State>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl Switchboard {
    /// Starts the broker (with its Redis links, or on the memory backplane) and the
    /// peer tracker. Call it inside a running actix system.
    pub fn start(config: &Config) -> Switchboard {
        if matches!(config.broker.backplane, BackplaneConfig::Memory) {
            log::info!(
                "{}: no REDIS_URL or REDIS_HOST set: running on the in-process memory backplane (this server only)",
                config.broker.server_id
            );
        }
        let security = &config.session.security;
        if security.jwt.is_none() {
            log::warn!("authentication is off (AUTH_JWT_SECRET unset): anyone may connect, subscribe and publish");
        }
        if security.allowed_origins.is_none() {
            log::warn!(
                "ALLOWED_ORIGINS unset: a browser page from any origin may open a WebSocket"
            );
        }
        if security.service_token.is_none() {
            log::warn!("SERVICE_TOKEN unset: anyone may POST /publish and /stats/reset");
        }
        let presence = &config.broker.presence;
        if let BackplaneConfig::Redis(redis) = &config.broker.backplane {
            if !presence.rooms.is_empty() && presence.refresh_interval() < redis.response_timeout {
                log::warn!(
                    "PRESENCE_TTL_MS/3 ({} ms) is shorter than REDIS_RESPONSE_TIMEOUT_MS ({} ms): \
                     one slow presence write can make this server's members leave and join again",
                    presence.refresh_interval().as_millis(),
                    redis.response_timeout.as_millis()
                );
            }
        }
        crate::memory::start_trimming();
        let backplane = match config.broker.backplane {
            BackplaneConfig::Redis(_) => BackplaneKind::Redis,
            BackplaneConfig::Memory => BackplaneKind::Memory,
        };
        let metrics = Metrics::new(&config.broker.server_id, backplane);
        let broker = Broker::start(config.broker.clone());
        let counters = ConnectionCounters::default();
        let peers = Peers::start(config.peers.clone(), broker.clone(), counters.gauge());
        let (shutdown, stopping) = watch::channel(false);
        let state = State {
            server_id: config.broker.server_id.clone(),
            broker,
            peers,
            session: config.session.clone(),
            counters,
            publishes: Arc::new(PublishGate::new(config.session.limits.publishes_in_flight)),
            shutdown: stopping,
            console: config.console,
            metrics,
            client_ids: ClientIds::new(&config.broker.instance_id),
        };
        Switchboard {
            state: Arc::new(state),
            shutdown: Arc::new(shutdown),
        }
    }

    /// The broker's address, for in-process services.
    pub fn broker(&self) -> Addr<Broker> {
        self.state.broker.clone()
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Mounts the WebSocket and HTTP endpoints: `App::new().configure(sb.configure())`.
    pub fn configure(&self) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + 'static {
        let state = self.state.clone();
        move |cfg| crate::http::routes(cfg, state.clone())
    }

    /// For `HttpServer::on_connect`: records each connection's socket, so sessions can
    /// reset clients that stop reading (without it, such a client keeps its connection
    /// until the operating system gives up on it; its queue stays bounded either way),
    /// and turns on `TCP_NODELAY`, so a small event frame is not held back by Nagle's
    /// algorithm waiting for the client's delayed ACK (a 40 ms tail otherwise).
    pub fn on_connect(connection: &dyn Any, extensions: &mut Extensions) {
        if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
            if let Err(e) = tcp.set_nodelay(true) {
                log::debug!("cannot set TCP_NODELAY on a connection: {e}");
            }
            extensions.insert(ConnectionSocket(tcp.as_raw_fd()));
        }
    }

    /// Waits until both Redis links are ready, or `limit` passed (the server then
    /// starts anyway and reports 503 on `/health` until Redis is back). Returns
    /// whether it is ready.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            let ready = matches!(self.state.broker.send(GetHealth).await, Ok(h) if h.is_healthy);
            if ready || Instant::now() >= until {
                if !ready {
                    log::warn!(
                        "{}: redis is not ready; serving anyway",
                        self.state.server_id
                    );
                }
                return ready;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The drain: announce `server_stopped`, close every session with 1001 and wait
    /// for them (until `deadline`), then release the Redis subscriptions.
    pub async fn shutdown(&self, deadline: Instant) {
        let state = &self.state;
        let budget = |share: u32| deadline.saturating_duration_since(Instant::now()) / share;
        match tokio::time::timeout(budget(4), state.peers.send(AnnounceStop)).await {
            Ok(Ok(Ok(()))) => log::info!("{}: announced server_stopped", state.server_id),
            other => log::warn!(
                "{}: server_stopped not announced: {other:?}",
                state.server_id
            ),
        }
        let _ = self.shutdown.send(true);
        let sessions_gone = deadline - budget(4);
        while state.counters.open_now() > 0 && Instant::now() < sessions_gone {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        log::info!(
            "{}: {} sessions still open after the drain",
            state.server_id,
            state.counters.open_now()
        );
        if tokio::time::timeout(budget(2), state.broker.send(Shutdown))
            .await
            .is_err()
        {
            log::warn!("{}: the backplane did not close in time", state.server_id);
        }
    }
}

/// What a graceful stop keeps back from `SHUTDOWN_TIMEOUT_MS` for the HTTP layer.
const FLUSH_MARGIN: Duration = Duration::from_millis(1500);

/// Runs the whole server on `listener` until `shutdown` resolves (see [`serve`]),
/// after waiting up to `ready_within` for the backplane to be ready.
pub async fn run(
    listener: TcpListener,
    config: Config,
    ready_within: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let switchboard = Switchboard::start(&config);
    switchboard.wait_ready(ready_within).await;
    serve(listener, switchboard, config, shutdown).await
}

/// Serves a started [`Switchboard`] on `listener` until `shutdown` resolves, then
/// drains: stops accepting, announces `server_stopped`, closes every session with
/// 1001, releases Redis, and returns within `config.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    switchboard: Switchboard,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let configure = switchboard.configure();
    let server = HttpServer::new(move || App::new().configure(configure.clone()))
        .on_connect(Switchboard::on_connect)
        .workers(config.http_workers)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
    let handle = server.handle();
    let serving = actix_web::rt::spawn(server);
    shutdown.await;
    // The drain gets the budget but the last 1.5 s: the HTTP server's own graceful
    // stop (up to 1 s, to flush the close frames) and a margin.
    let deadline = Instant::now() + config.shutdown_timeout.saturating_sub(FLUSH_MARGIN);
    log::info!("{}: shutting down", config.broker.server_id);
    handle.pause().await;
    switchboard.shutdown(deadline).await;
    handle.stop(true).await;
    if let Err(e) = serving.await {
        log::warn!(
            "{}: the HTTP server task failed: {e}",
            config.broker.server_id
        );
    }
    log::info!("{}: stopped", config.broker.server_id);
    Ok(())
}
