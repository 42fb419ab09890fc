//! Durable rooms, the recovery storm: every client of a few durable rooms comes
//! back at once with `since`, each having missed events.
//!
//! First visit: `--clients` clients (alternating between the servers) subscribe to
//! one of `--rooms` durable rooms each, note the `subscribed` reply's offset and
//! epoch, and leave. `--missed` events are then published in each room. The storm:
//! at `t0` every client connects again at once (no connection limit) and subscribes
//! with `since`, while a publisher on the first server publishes a live event in
//! each room every `--live-every-ms` from `t0` on. A client is *live* when, its
//! offsets contiguous from `since`, it gets an event published after `t0` (an offset
//! past the last missed one); it then leaves. What is timed: from `t0` to the last
//! client live (`storm_s`), and each client's time to its `subscribed` reply and to
//! live.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    args::StormArgs,
    client::{now_ns, Ws},
    coordinator::write_json,
    durable::{close, connect_to, gather, publish_burst, publish_frame, Follow},
    proto::{parse_durable, subscribe_since, DurableFrame},
    stats::{self, Latency},
};

/// What the storm measured (`d4-storm.json`).
#[derive(Debug, Serialize)]
pub struct StormResult {
    /// The loadgen command.
    pub command: String,
    /// The servers.
    pub servers: Vec<String>,
    /// Clients.
    pub clients: usize,
    /// Durable rooms.
    pub rooms: usize,
    /// Events published in each room while the clients were away.
    pub missed: u64,
    /// Milliseconds between live events in each room during the storm.
    pub live_every_ms: u64,
    /// Clients that subscribed on the first visit (the rest never had a `since`).
    pub first_subscribed: u64,
    /// Clients whose storm subscribe was answered `recovered: true`.
    pub recovered: u64,
    /// Answered `recovered: false`.
    pub not_recovered: u64,
    /// Clients that could not connect or subscribe in the storm.
    pub failed: u64,
    /// Clients the server closed during the storm.
    pub disconnected: u64,
    /// Clients that got their replay and a live event.
    pub live: u64,
    /// Missed events received (offsets up to the last missed one).
    pub replayed: u64,
    /// Missed events owed: each client's last missed offset minus its `since`.
    pub expected_replayed: u64,
    /// Offsets a client skipped.
    pub missing: u64,
    /// Offsets a client got twice.
    pub duplicated: u64,
    /// `gap` frames.
    pub gaps: u64,
    /// Live events published during the storm, over all rooms.
    pub live_published: u64,
    /// From `t0` to the last client live, s.
    pub storm_s: f64,
    /// From `t0` to each client's `subscribed` reply, µs.
    pub subscribed_us: Latency,
    /// From `t0` to each client's first live event, µs.
    pub live_us: Latency,
}

/// A client's position after its first visit: its room, offset and epoch.
struct Since {
    room: usize,
    offset: u64,
    epoch: String,
}

/// One client's storm.
#[derive(Debug, Default)]
struct Outcome {
    recovered: Option<bool>,
    subscribed_ns: u64,
    live_ns: u64,
    follow: Follow,
    replayed: u64,
    owed: u64,
    gaps: u64,
    failed: bool,
    closed: bool,
}

/// Runs the `storm` subcommand; `argv` are its raw flags, for the result.
pub fn run(args: &StormArgs, argv: &[String]) -> Result<(), String> {
    if args.rooms == 0 || args.servers.is_empty() {
        return Err("storm needs --rooms >= 1 and a server".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let command = format!("switchboard-loadgen storm {}", argv.join(" "));
    let result = runtime.block_on(storm(args, command))?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "storm: {} clients, {} missed each: recovered {} (not {}), failed {}, live {} in {:.2} s; to subscribed p50 {:.0} ms p99 {:.0} ms; to live p50 {:.0} ms p99 {:.0} ms; replayed {} of {}, missing {} dup {} gaps {}",
            result.clients, result.missed, result.recovered, result.not_recovered, result.failed,
            result.live, result.storm_s, result.subscribed_us.p50 as f64 / 1e3,
            result.subscribed_us.p99 as f64 / 1e3, result.live_us.p50 as f64 / 1e3,
            result.live_us.p99 as f64 / 1e3, result.replayed, result.expected_replayed,
            result.missing, result.duplicated, result.gaps
        );
    }
    if let Some(path) = &args.out {
        write_json(path, &result)?;
    }
    Ok(())
}

async fn storm(args: &StormArgs, command: String) -> Result<StormResult, String> {
    let rooms: Vec<String> = (0..args.rooms)
        .map(|r| format!("{}-{r}", args.room_prefix))
        .collect();
    let server = |client: usize| args.servers[client % args.servers.len()];
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let visits: Vec<_> = (0..args.clients)
        .map(|client| {
            let (room, permits, addr) = (client % rooms.len(), permits.clone(), server(client));
            let name = rooms[room].clone();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let (offset, epoch) = first_visit(addr, &name, client).await?;
                Ok::<_, String>((
                    client,
                    Since {
                        room,
                        offset,
                        epoch,
                    },
                ))
            })
        })
        .collect();
    let mut sinces = Vec::with_capacity(args.clients);
    for visit in visits {
        match visit.await.map_err(|e| format!("first visit: {e}"))? {
            Ok(since) => sinces.push(since),
            Err(e) => eprintln!("storm: first visit: {e}"),
        }
    }
    let first_subscribed = sinces.len() as u64;
    let mut publisher = connect_to(args.servers[0], 2 * args.clients).await?;
    let last_missed = publish_burst(&mut publisher, &rooms, args.missed).await?;
    eprintln!(
        "storm: {first_subscribed} clients away, {} missed in each of {} rooms; reconnecting all",
        args.missed,
        rooms.len()
    );
    let (stop_tx, stop) = watch::channel(false);
    let t0 = now_ns();
    let every = Duration::from_millis(args.live_every_ms.max(1));
    let live = tokio::spawn(publish_live(publisher, rooms.clone(), every, stop.clone()));
    let storm: Vec<_> = sinces
        .into_iter()
        .map(|(client, since)| {
            let live_after = last_missed.get(&rooms[since.room]).copied().unwrap_or(0);
            let room = rooms[since.room].clone();
            let stop = stop.clone();
            tokio::spawn(reconnect(
                server(client),
                room,
                client,
                since,
                live_after,
                stop,
            ))
        })
        .collect();
    let timeout = Duration::from_secs_f64(args.timeout);
    let outcomes = gather(storm, stop_tx, timeout, "storm client").await?;
    let live_published = live.await.map_err(|e| format!("live publisher: {e}"))?;
    Ok(summarize(
        args,
        command,
        first_subscribed,
        live_published,
        t0,
        &outcomes,
    ))
}

fn summarize(
    args: &StormArgs,
    command: String,
    first_subscribed: u64,
    live_published: u64,
    t0: u64,
    outcomes: &[Outcome],
) -> StormResult {
    let (mut subscribed, mut live) = (stats::histogram(), stats::histogram());
    for o in outcomes {
        if o.subscribed_ns > 0 {
            subscribed.saturating_record((o.subscribed_ns.saturating_sub(t0) / 1000).max(1));
        }
        if o.live_ns > 0 {
            live.saturating_record((o.live_ns.saturating_sub(t0) / 1000).max(1));
        }
    }
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count() as u64;
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let last_live = outcomes.iter().map(|o| o.live_ns).max().unwrap_or(0);
    StormResult {
        command,
        servers: args.servers.iter().map(ToString::to_string).collect(),
        clients: args.clients,
        rooms: args.rooms,
        missed: args.missed,
        live_every_ms: args.live_every_ms,
        first_subscribed,
        recovered: count(|o| o.recovered == Some(true)),
        not_recovered: count(|o| o.recovered == Some(false)),
        failed: count(|o| o.failed),
        disconnected: count(|o| o.closed),
        live: count(|o| o.live_ns > 0),
        replayed: sum(|o| o.replayed),
        expected_replayed: sum(|o| o.owed),
        missing: sum(|o| o.follow.missing),
        duplicated: sum(|o| o.follow.duplicated),
        gaps: sum(|o| o.gaps),
        live_published,
        storm_s: last_live.saturating_sub(t0) as f64 / 1e9,
        subscribed_us: Latency::of(&subscribed),
        live_us: Latency::of(&live),
    }
}

/// The first visit: subscribe, note the position the reply gives, leave.
async fn first_visit(
    server: SocketAddr,
    room: &str,
    index: usize,
) -> Result<(u64, String), String> {
    let mut ws = connect_to(server, index).await?;
    ws.send(Message::text(subscribe_since(room, None)))
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    while let Some(message) = ws.next().await {
        let Ok(Message::Text(text)) = message else {
            continue;
        };
        match parse_durable(&text) {
            DurableFrame::Subscribed {
                offset: Some(offset),
                epoch: Some(epoch),
                ..
            } => {
                close(ws).await;
                return Ok((offset, epoch));
            }
            DurableFrame::Subscribed { .. } => {
                return Err(format!("{room} is not durable on {server}"))
            }
            DurableFrame::Error => return Err(format!("refused: {}", text.as_str())),
            _ => {}
        }
    }
    Err("closed before subscribed".into())
}

/// One client in the storm: connect, subscribe with `since`, follow the offsets
/// until one past `live_after` arrives (live), then leave.
async fn reconnect(
    server: SocketAddr,
    room: String,
    index: usize,
    since: Since,
    live_after: u64,
    mut stop: watch::Receiver<bool>,
) -> Outcome {
    let mut outcome = Outcome {
        follow: Follow::after(since.offset),
        owed: live_after.saturating_sub(since.offset),
        ..Outcome::default()
    };
    let frame = subscribe_since(&room, Some((since.offset, &since.epoch)));
    let mut ws = match connect_to(server, index).await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("storm: client {index}: {e}");
            outcome.failed = true;
            return outcome;
        }
    };
    if ws.send(Message::text(frame)).await.is_err() {
        outcome.failed = true;
        return outcome;
    }
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
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
        let now = now_ns();
        match parse_durable(&text) {
            DurableFrame::Subscribed { recovered, .. } => {
                outcome.recovered = recovered;
                outcome.subscribed_ns = now;
            }
            DurableFrame::Event {
                offset: Some(offset),
                ..
            } => {
                outcome.follow.observe(offset, now);
                if offset <= live_after {
                    outcome.replayed += 1;
                } else if outcome.follow.missing == 0 {
                    outcome.live_ns = now;
                    break;
                }
            }
            DurableFrame::Gap => outcome.gaps += 1,
            DurableFrame::Error => {
                eprintln!("storm: client {index}: refused: {}", text.as_str());
                outcome.failed = true;
                break;
            }
            _ => {}
        }
    }
    close(ws).await;
    outcome
}

/// Publishes one event in each room every `every` until told to stop: the number
/// published.
async fn publish_live(
    mut ws: Ws,
    rooms: Vec<String>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let mut tick = tokio::time::interval(every);
    let mut published = 0u64;
    let mut refused: HashMap<String, u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                for room in &rooms {
                    if ws.feed(Message::text(publish_frame(room, published))).await.is_err() {
                        return published;
                    }
                    published += 1;
                }
                if ws.flush().await.is_err() {
                    return published;
                }
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if let DurableFrame::Error = parse_durable(&text) {
                        *refused.entry(text.as_str().to_string()).or_default() += 1;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return published,
            }
        }
    }
    for (frame, times) in refused {
        eprintln!("storm: live publish refused {times} times: {frame}");
    }
    close(ws).await;
    published
}
