//! Durable rooms, the catch-up after a blip: how fast a server delivers the events
//! its subscribers missed while its Redis link was down.
//!
//! `--clients` subscribers in one durable room, all on the subscribing server,
//! whose Redis link goes through a [`crate::proxy`]. The proxy is cut; `PUBSUB
//! NUMSUB` shows nobody subscribed to the room before and after `--events` events
//! are published through the other server, so every one of them was missed. Then
//! the proxy lets the link back: the server reconnects after its backoff, reads the
//! room's history from the last offset it delivered (PROTOCOL.md §8) and delivers
//! the missed events to every subscriber.
//!
//! What is timed: from the first delivery of a missed event at any subscriber to
//! the last delivery at any subscriber (`first_to_last_ms`): the catch-up's
//! fan-out, without the reconnect delay before it, which is reported apart
//! (`restored_to_first_ms`, from the proxy's restore to the first delivery).
//! `deliveries_per_s` is the distinct deliveries over that window.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    args::CatchUpArgs,
    client::now_ns,
    coordinator::write_json,
    durable::{close, connect_to, gather, publish_burst, Follow},
    proto::{parse_durable, subscribe_since, DurableFrame},
    stats::{self, Latency},
};

/// Subscribers connecting at once.
const CONNECT_CONCURRENCY: usize = 200;

/// What the catch-up run measured (`d3-catch-up.json`).
#[derive(Debug, Serialize)]
pub struct CatchUpResult {
    /// The loadgen command.
    pub command: String,
    /// The durable room.
    pub room: String,
    /// Subscribers asked for.
    pub clients: usize,
    /// Subscribers subscribed before the cut.
    pub subscribed: u64,
    /// Events published while the link was cut.
    pub events: u64,
    /// Seconds publishing them took (through the other server).
    pub publish_s: f64,
    /// `subscribed × events`.
    pub expected_deliveries: u64,
    /// Distinct deliveries of missed events.
    pub deliveries: u64,
    /// Offsets a subscriber skipped.
    pub missing: u64,
    /// Offsets a subscriber got twice.
    pub duplicated: u64,
    /// `gap` frames received (none is expected: the history holds every event).
    pub gaps: u64,
    /// Subscribers the server closed (a slow-consumer close, say).
    pub disconnected: u64,
    /// Subscribers that got every missed event.
    pub clients_complete: u64,
    /// From the proxy's restore to the first delivery, ms: the server's reconnect
    /// backoff and its history read.
    pub restored_to_first_ms: f64,
    /// From the first delivery to the last, at any subscriber, ms: what is timed.
    pub first_to_last_ms: f64,
    /// From the proxy's restore to the last delivery, ms.
    pub restored_to_last_ms: f64,
    /// `deliveries / first_to_last`.
    pub deliveries_per_s: f64,
    /// From the restore to each subscriber's last missed event, µs.
    pub client_caught_up_us: Latency,
}

/// One subscriber's outcome.
#[derive(Debug, Default)]
struct Outcome {
    subscribed: bool,
    follow: Follow,
    gaps: u64,
    closed: bool,
}

/// Runs the `catch-up` subcommand; `argv` are its raw flags, for the result.
pub fn run(args: &CatchUpArgs, argv: &[String]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let command = format!("switchboard-loadgen catch-up {}", argv.join(" "));
    let result = runtime.block_on(catch_up(args, command));
    // Whatever happened, the link goes back.
    let _ = signal_proxy(args.proxy_pid, Signal::SIGUSR2);
    let result = result?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "catch-up: {} subscribers, {} events missed: {} of {} deliveries in {:.1} ms from the first to the last ({:.0}/s); first {:.1} ms after the restore; missing {} dup {} gaps {} closed {}",
            result.subscribed, result.events, result.deliveries, result.expected_deliveries,
            result.first_to_last_ms, result.deliveries_per_s, result.restored_to_first_ms,
            result.missing, result.duplicated, result.gaps, result.disconnected
        );
    }
    if let Some(path) = &args.out {
        write_json(path, &result)?;
    }
    Ok(())
}

fn signal_proxy(pid: i32, signal: Signal) -> Result<(), String> {
    kill(Pid::from_raw(pid), signal).map_err(|e| format!("signal the proxy ({pid}): {e}"))
}

async fn catch_up(args: &CatchUpArgs, command: String) -> Result<CatchUpResult, String> {
    let redis = redis::Client::open(args.redis_url.as_str()).map_err(|e| format!("redis: {e}"))?;
    let mut redis = redis
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("redis: {e}"))?;
    let (target_tx, target) = watch::channel(0u64);
    let (stop_tx, stop) = watch::channel(false);
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let tasks: Vec<_> = (0..args.clients)
        .map(|index| {
            let client = Subscriber {
                server: args.subscribe_server,
                room: args.room.clone(),
                index,
                ready: ready_tx.clone(),
            };
            tokio::spawn(client.run(permits.clone(), target.clone(), stop.clone()))
        })
        .collect();
    let mut subscribed = 0u64;
    for _ in 0..args.clients {
        match tokio::time::timeout(Duration::from_secs(120), ready.recv()).await {
            Ok(Some(true)) => subscribed += 1,
            Ok(Some(false)) => {}
            _ => return Err("subscribers did not all answer within 120 s".into()),
        }
    }
    eprintln!("catch-up: {subscribed} subscribed; cutting the link");
    let mut publisher = connect_to(args.publish_server, args.clients).await?;
    signal_proxy(args.proxy_pid, Signal::SIGUSR1)?;
    wait_unsubscribed(&mut redis, &args.room).await?;
    let started = Instant::now();
    let rooms = [args.room.clone()];
    let last = publish_burst(&mut publisher, &rooms, args.events).await?;
    let publish_s = started.elapsed().as_secs_f64();
    if numsub(&mut redis, &args.room).await? != 0 {
        return Err("the room was subscribed again before every event was published".into());
    }
    target_tx.send_replace(last.get(&args.room).copied().unwrap_or(0));
    let restored_ns = now_ns();
    signal_proxy(args.proxy_pid, Signal::SIGUSR2)?;
    // Subscribers still short of the target when the time is up stop where they are.
    let timeout = Duration::from_secs_f64(args.timeout);
    let outcomes = gather(tasks, stop_tx, timeout, "subscriber task").await?;
    close(publisher).await;
    Ok(summarize(
        args,
        command,
        subscribed,
        publish_s,
        restored_ns,
        &outcomes,
    ))
}

fn summarize(
    args: &CatchUpArgs,
    command: String,
    subscribed: u64,
    publish_s: f64,
    restored_ns: u64,
    outcomes: &[Outcome],
) -> CatchUpResult {
    let received = || outcomes.iter().filter(|o| o.follow.first_ns > 0);
    let first = received().map(|o| o.follow.first_ns).min().unwrap_or(0);
    let last = received().map(|o| o.follow.last_ns).max().unwrap_or(0);
    let deliveries: u64 = outcomes.iter().map(|o| o.follow.unique).sum();
    let mut caught_up = stats::histogram();
    for o in received().filter(|o| o.follow.unique == args.events) {
        caught_up.saturating_record((o.follow.last_ns.saturating_sub(restored_ns) / 1000).max(1));
    }
    let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
    let window_ms = ms(first, last);
    CatchUpResult {
        command,
        room: args.room.clone(),
        clients: args.clients,
        subscribed,
        events: args.events,
        publish_s,
        expected_deliveries: subscribed * args.events,
        deliveries,
        missing: outcomes.iter().map(|o| o.follow.missing).sum(),
        duplicated: outcomes.iter().map(|o| o.follow.duplicated).sum(),
        gaps: outcomes.iter().map(|o| o.gaps).sum(),
        disconnected: outcomes.iter().filter(|o| o.closed).count() as u64,
        clients_complete: caught_up.len(),
        restored_to_first_ms: ms(restored_ns, first),
        first_to_last_ms: window_ms,
        restored_to_last_ms: ms(restored_ns, last),
        deliveries_per_s: if window_ms > 0.0 {
            deliveries as f64 / (window_ms / 1e3)
        } else {
            f64::NAN
        },
        client_caught_up_us: Latency::of(&caught_up),
    }
}

/// Subscribers of `room` on Redis (every server's link counts).
async fn numsub(redis: &mut redis::aio::MultiplexedConnection, room: &str) -> Result<u64, String> {
    let (_, count): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(room)
        .query_async(redis)
        .await
        .map_err(|e| format!("PUBSUB NUMSUB: {e}"))?;
    Ok(count)
}

/// Waits until nobody is subscribed to `room`: the cut link is seen as gone.
async fn wait_unsubscribed(
    redis: &mut redis::aio::MultiplexedConnection,
    room: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while numsub(redis, room).await? != 0 {
        if Instant::now() > deadline {
            return Err(format!("{room} is still subscribed 10 s after the cut"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// One subscriber of the room.
struct Subscriber {
    server: std::net::SocketAddr,
    room: String,
    index: usize,
    /// Told once whether it subscribed.
    ready: mpsc::UnboundedSender<bool>,
}

impl Subscriber {
    /// Connects and subscribes, then follows the room's offsets until it has the
    /// target offset (once known) or is told to stop.
    async fn run(
        self,
        permits: Arc<Semaphore>,
        mut target: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let permit = permits.acquire_owned().await;
        let (mut ws, after) = match self.subscribe().await {
            Ok(subscribed) => subscribed,
            Err(e) => {
                eprintln!("catch-up: client {}: {e}", self.index);
                let _ = self.ready.send(false);
                return outcome;
            }
        };
        drop(permit);
        outcome.subscribed = true;
        outcome.follow = Follow::after(after);
        let _ = self.ready.send(true);
        loop {
            let goal = *target.borrow_and_update();
            if goal > 0 && outcome.follow.next > goal {
                break;
            }
            let message = tokio::select! {
                _ = stop.changed() => break,
                changed = target.changed() => {
                    if changed.is_err() { break }
                    continue;
                }
                message = ws.next() => message,
            };
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    outcome.closed = true;
                    return outcome;
                }
                Some(Ok(_)) => continue,
            };
            match parse_durable(&text) {
                DurableFrame::Event {
                    offset: Some(offset),
                    ..
                } => outcome.follow.observe(offset, now_ns()),
                DurableFrame::Gap => outcome.gaps += 1,
                _ => {}
            }
        }
        close(ws).await;
        outcome
    }

    /// Connects, subscribes and returns the offset the reply gave.
    async fn subscribe(&self) -> Result<(crate::client::Ws, u64), String> {
        let mut ws = connect_to(self.server, self.index).await?;
        ws.send(Message::text(subscribe_since(&self.room, None)))
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        while let Some(message) = ws.next().await {
            let Ok(Message::Text(text)) = message else {
                continue;
            };
            match parse_durable(&text) {
                DurableFrame::Subscribed {
                    offset: Some(offset),
                    ..
                } => return Ok((ws, offset)),
                DurableFrame::Subscribed { .. } => {
                    return Err(format!("{} is not durable on the server", self.room))
                }
                DurableFrame::Error => return Err(format!("refused: {}", text.as_str())),
                _ => {}
            }
        }
        Err("closed before subscribed".into())
    }
}
