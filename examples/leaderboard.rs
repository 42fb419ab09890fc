//! An Actix application with Switchboard as its real-time tier.
//!
//! In-process services publish typed events through a [`PubSub`] handle; an
//! in-process actor subscribes to match events; the WebSocket and HTTP endpoints are
//! mounted in the app with one call. Run two servers on one Redis and a WebSocket
//! client on the *other* one sees this one's events:
//!
//! ```sh
//! redis-server --port 6379 &
//! REDIS_URL=redis://127.0.0.1:6379 PORT=8081 SERVER_ID=app cargo run --example leaderboard &
//! REDIS_URL=redis://127.0.0.1:6379 PORT=8082 SERVER_ID=edge cargo run --release &
//! # then, on 8082: {"op":"subscribe","room":"leaderboard:updates"}
//! ```

use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{App, HttpServer};
use switchboard::{
    actors::{
        events::{
            Channel, LeaderboardEvent, LeaderboardUpdate, LeaderboardUpdates, MatchData,
            MatchEvent, MatchEvents, RankChange,
        },
        Delivery, Evicted, Gap, PubSub,
    },
    Config, Switchboard,
};

/// Publishes a leaderboard change every interval, as a ranking service would after
/// a database update.
struct LeaderboardService {
    pubsub: PubSub,
    interval: Duration,
    round: u32,
}

impl Actor for LeaderboardService {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.interval, |act, ctx| {
            act.round += 1;
            let event = LeaderboardEvent::LeaderboardUpdate(LeaderboardUpdate {
                player_id: format!("player-{}", act.round % 7),
                rank_changes: vec![RankChange {
                    player_id: format!("player-{}", act.round % 7),
                    old_rank: Some(act.round % 10 + 2),
                    new_rank: act.round % 10 + 1,
                    rating: Some(1500.0 + f64::from(act.round)),
                }],
            });
            let pubsub = act.pubsub.clone();
            ctx.spawn(
                async move {
                    if let Err(e) = pubsub.publish::<LeaderboardUpdates>(&event).await {
                        log::warn!("leaderboard update not published beyond this server: {e}");
                    }
                }
                .into_actor(act),
            );
        });
    }
}

/// Starts, plays and ends a match every few intervals.
struct MatchService {
    pubsub: PubSub,
    interval: Duration,
    round: u32,
}

impl Actor for MatchService {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.interval, |act, ctx| {
            act.round += 1;
            let data = MatchData {
                match_id: format!("match-{}", act.round / 3),
                players: vec!["player-1".into(), "player-2".into()],
                details: Default::default(),
            };
            let event = match act.round % 3 {
                0 => MatchEvent::MatchCreated(data),
                1 => MatchEvent::MatchStarted(data),
                _ => MatchEvent::MatchCompleted(data),
            };
            let pubsub = act.pubsub.clone();
            ctx.spawn(
                async move { drop(pubsub.publish::<MatchEvents>(&event).await) }.into_actor(act),
            );
        });
    }
}

/// An in-process subscriber: gets every match event, from any server, typed.
struct MatchLog {
    pubsub: PubSub,
}

impl Actor for MatchLog {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The broker never waits for a recipient: the mailbox is how far it may lag
        // (actix's default is 16). Past it the broker drops the actor and says so.
        ctx.set_mailbox_capacity(1024);
    }
}

/// Events of the room may have been lost on their way to this server (its link to
/// Redis was lost for a moment): a real service would reload its state here.
impl Handler<Gap> for MatchLog {
    type Result = ();

    fn handle(&mut self, gap: Gap, _ctx: &mut Context<Self>) {
        log::warn!(
            "match log: events of {} may have been lost ({:?})",
            gap.room,
            gap.reason
        );
    }
}

/// The broker dropped this actor from its rooms: its mailbox was full, so it missed
/// events. It says so and joins again (a real service would also reload its state).
impl Handler<Evicted> for MatchLog {
    type Result = ();

    fn handle(&mut self, msg: Evicted, ctx: &mut Context<Self>) {
        log::error!(
            "match log: dropped by the broker ({:?}); events were missed",
            msg.reason
        );
        let (pubsub, me) = (self.pubsub.clone(), ctx.address());
        ctx.spawn(
            async move {
                if let Err(e) = pubsub.subscribe_actor(MatchEvents::ROOM, &me).await {
                    log::error!("match log: cannot subscribe again: {e}");
                }
            }
            .into_actor(self),
        );
    }
}

impl Handler<Delivery> for MatchLog {
    type Result = ();

    fn handle(&mut self, msg: Delivery, _ctx: &mut Context<Self>) {
        match msg.event.decode::<MatchEvent>() {
            Ok(event) => log::info!("match log: {event:?} from {:?}", msg.event.server_id()),
            Err(e) => log::warn!("match log: not a match event: {e}"),
        }
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = Config::from_env().map_err(std::io::Error::other)?;
    let switchboard = Switchboard::start(&config);
    switchboard.wait_ready(Duration::from_secs(3)).await;
    let pubsub = PubSub::new(switchboard.broker());

    let interval = Duration::from_millis(1000);
    LeaderboardService {
        pubsub: pubsub.clone(),
        interval,
        round: 0,
    }
    .start();
    MatchService {
        pubsub: pubsub.clone(),
        interval: interval * 2,
        round: 0,
    }
    .start();
    let log = MatchLog {
        pubsub: pubsub.clone(),
    }
    .start();
    pubsub
        .subscribe_actor(MatchEvents::ROOM, &log)
        .await
        .map_err(std::io::Error::other)?;

    // The app's own routes would go in this App beside Switchboard's.
    let configure = switchboard.configure();
    let server = HttpServer::new(move || App::new().configure(configure.clone()))
        .on_connect(Switchboard::on_connect)
        .disable_signals()
        .shutdown_timeout(1)
        .bind((config.host.as_str(), config.port))?
        .run();
    log::info!("example app on http://{}:{}", config.host, config.port);
    let handle = server.handle();
    let serving = actix_web::rt::spawn(server);

    // Ctrl-C: the drain (server_stopped, every session closed with 1001, Redis
    // released), then the HTTP server flushes and stops.
    tokio::signal::ctrl_c().await?;
    handle.pause().await;
    switchboard
        .shutdown(Instant::now() + config.shutdown_timeout / 2)
        .await;
    handle.stop(true).await;
    serving.await.map_err(std::io::Error::other)?
}
