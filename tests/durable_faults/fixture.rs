//! What the durable fault tests share: durable servers, their watchers and publishers,
//! waits on what the clients saw, HTTP publishes with their positions, and the checks
//! of §7-8 over everything a client received.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::publisher::{has_all_published, tally, Outcome, Pace, Publisher};
use crate::support::{wait_until, RedisServer, Server, ServerBuilder};
use crate::watcher::{Seen, Watcher};

/// The rooms the servers keep durable; `plain:*` rooms are not.
pub const DURABLE_ROOMS: &str = "dur:*";
/// How long a server gets to notice that Redis is gone (the probe: 200 + 500 ms).
pub const NOTICE: Duration = Duration::from_secs(3);
/// How long servers get to be healthy again once Redis answers (§5 says about 1.5 s;
/// a restart that loads an append-only file of tens of MB answers PING after loading).
pub const BACK: Duration = Duration::from_secs(10);
/// How long a client gets to hold a few events published one by one.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long every client gets to hold every published event once the stream stopped.
pub const SETTLE: Duration = Duration::from_secs(20);

/// A server with durable `dur:*` rooms and no publish rate limit (the publishers are the
/// test's). A test process that falls behind its 2,000 events/s on a loaded machine must
/// not be taken for a dead or slow client: the server's pings wait behind the events
/// queued for it, so a watcher seems silent for as long as it lags. Hence a client
/// timeout of 30 s and outbound queues deep enough for any lag: neither close is what
/// these tests are about, and either would end the sessions whose survival they check.
pub fn durable_server(redis: &RedisServer, prefix: &str, id: &str) -> ServerBuilder {
    ServerBuilder::new()
        .redis(redis, prefix)
        .id(id)
        .env("DURABLE_ROOMS", DURABLE_ROOMS)
        .env("LIMIT_PUBLISH_RATE", "0")
        .env("CLIENT_TIMEOUT_MS", "30000")
        .env("LIMIT_OUTBOUND_FRAMES", "1000000")
        .env("LIMIT_OUTBOUND_BYTES", "268435456")
}

/// Two durable servers on `redis`, healthy.
pub async fn two_servers(redis: &RedisServer, prefix: &str, test: &str) -> [Server; 2] {
    let a = durable_server(redis, prefix, &format!("A-{test}"))
        .spawn()
        .await;
    let b = durable_server(redis, prefix, &format!("B-{test}"))
        .spawn()
        .await;
    a.wait_healthy().await;
    b.wait_healthy().await;
    [a, b]
}

/// Waits until `/health` answers `status`; returns how long that took.
pub async fn wait_health(server: &Server, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    let what = format!("{} answers /health {status}", server.id());
    wait_until(within, &what, || async {
        server.health().await.0 == status
    })
    .await;
    started.elapsed()
}

/// `watchers_per_server` watchers on each server, subscribed to `rooms`.
pub async fn watchers(
    servers: &[Server],
    rooms: &[String],
    per_server: usize,
    durable: bool,
) -> Vec<Watcher> {
    let mut watchers = Vec::new();
    for server in servers {
        for n in 0..per_server {
            let label = format!("{}/watcher{n}", server.id());
            watchers.push(Watcher::start(server, rooms, durable, &label).await);
        }
    }
    watchers
}

/// `per_server` publishers on each server, each at `pace`, ids apart by ten million.
pub async fn publishers(
    servers: &[Server],
    rooms: &[String],
    per_server: usize,
    pace: Pace,
) -> Vec<Publisher> {
    let mut publishers = Vec::new();
    for server in servers {
        for n in 0..per_server {
            let base = (publishers.len() as u64 + 1) * 10_000_000;
            let label = format!("{}/publisher{n}", server.id());
            publishers.push(Publisher::start(server, rooms, base, pace, &label).await);
        }
    }
    publishers
}

/// Waits until every watcher got at least `n` more events than it had when called.
pub async fn wait_progress(watchers: &[Watcher], n: u64, within: Duration, what: &str) {
    let from: Vec<u64> = watchers.iter().map(|w| w.seen().events).collect();
    let what = format!("every client gets {n} more events ({what})");
    wait_until(within, &what, || async {
        watchers
            .iter()
            .zip(&from)
            .all(|(w, from)| w.seen().events >= from + n)
    })
    .await;
}

/// Stops the publishers and returns every publish with its answer.
pub async fn stop_publishers(publishers: Vec<Publisher>) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for publisher in publishers {
        outcomes.extend(publisher.finish(Duration::from_secs(15)).await);
    }
    outcomes
}

/// Waits until every watcher holds every published event, at most [`SETTLE`] (what is
/// still missing then is for [`assert_delivered`] to name), then stops them and proves
/// each session still open (a `ping` answered: nobody reconnected).
pub async fn settle(watchers: Vec<Watcher>, outcomes: &[Outcome]) -> Vec<(String, Seen)> {
    let settling = Instant::now();
    let complete = || {
        watchers
            .iter()
            .all(|w| has_all_published(&w.seen(), outcomes))
    };
    while !complete() && settling.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "  every client held every published event: {} ({:?} after the stream stopped)",
        complete(),
        settling.elapsed()
    );
    let mut seen = Vec::new();
    for watcher in watchers {
        let label = watcher.label.clone();
        let (mut client, watched) = watcher.finish().await;
        client.assert_alive().await;
        seen.push((label, watched));
    }
    seen
}

/// The §7-8 promises at every client: no gap (when `gaps_allowed` is false), offsets
/// contiguous in one epoch per room, every `published` event exactly once where its
/// answer said, every other at most once.
pub fn assert_delivered(seen: &[(String, Seen)], outcomes: &[Outcome], gaps_allowed: bool) {
    for (label, watched) in seen {
        let tally = tally(watched, outcomes);
        eprintln!(
            "  {label}: {} events, {} gaps, {} numbering violations, {} failed publishes \
             delivered once",
            watched.events,
            watched.gaps.len(),
            watched.violation_count,
            tally.failed_delivered
        );
        if !gaps_allowed {
            let gaps: Vec<&Value> = watched.gaps.iter().map(|(_, g)| g).take(5).collect();
            assert!(
                gaps.is_empty(),
                "{label}: gap frames in durable rooms: {gaps:?}"
            );
        }
        assert!(
            watched.violations.is_empty(),
            "{label}: {} numbering violations (§7-8), the first: {:#?}",
            watched.violation_count,
            watched.violations
        );
        assert!(tally.is_clean(), "{label}: {tally:#?}");
        assert!(
            watched.others.is_empty(),
            "{label}: unexpected frames {:?}",
            watched.others
        );
    }
}

/// `/stats` subscriber recovery counters of each server.
pub async fn recovery_stats(servers: &[Server]) -> Vec<(String, Value)> {
    let mut all = Vec::new();
    for server in servers {
        let stats = server.stats().await;
        let subscriber = &stats["subscriber"];
        let figures = json!({
            "gapsRecovered": subscriber["gapsRecovered"],
            "eventsRecovered": subscriber["eventsRecovered"],
            "gapsUnrecovered": subscriber["gapsUnrecovered"],
            "duplicatesDropped": subscriber["duplicatesDropped"],
            "linksLost": subscriber["linksLost"],
            "retries": stats["publisher"]["retries"],
            "failedPublishes": stats["publisher"]["failedPublishes"],
        });
        all.push((server.id().to_owned(), figures));
    }
    all
}

/// One HTTP publish into a durable room, which must be answered 200 with its position.
pub async fn publish_http(server: &Server, room: &str, id: u64) -> (u64, String) {
    let body = json!({"type": "tick", "data": {"id": id}});
    let (status, reply) = server.post_json(&format!("/publish/{room}"), &body).await;
    assert_eq!(
        status,
        200,
        "publish {id} to {room} on {}: {reply}",
        server.id()
    );
    match (reply["offset"].as_u64(), reply["epoch"].as_str()) {
        (Some(offset), Some(epoch)) => (offset, epoch.to_owned()),
        _ => panic!("a durable publish answered without offset and epoch (§7): {reply}"),
    }
}

/// Publishes `ids` into `room` over HTTP, one after the other, with their positions.
pub async fn publish_all(
    server: &Server,
    room: &str,
    ids: std::ops::Range<u64>,
) -> Vec<(u64, u64, String)> {
    let mut positions = Vec::new();
    for id in ids {
        let (offset, epoch) = publish_http(server, room, id).await;
        positions.push((id, offset, epoch));
    }
    positions
}

/// Waits until every watcher holds each of `ids`; failing that, names what each
/// watcher lacks and what it was told instead (its gaps and where its rooms stand).
pub async fn wait_delivered(watchers: &[Watcher], ids: &[u64], what: &str) {
    let started = Instant::now();
    let missing = |w: &Watcher| -> Vec<u64> {
        let seen = w.seen();
        ids.iter()
            .copied()
            .filter(|id| !seen.deliveries.contains_key(id))
            .collect()
    };
    while watchers.iter().any(|w| !missing(w).is_empty()) {
        if started.elapsed() > DELIVERY_TIMEOUT {
            let report: Vec<String> = watchers
                .iter()
                .map(|w| {
                    let seen = w.seen();
                    let gaps: Vec<&Value> = seen.gaps.iter().map(|(_, g)| g).collect();
                    format!(
                        "{}: lacks {:?}; gaps {gaps:?}; positions {:?}",
                        w.label,
                        missing(w),
                        seen.positions
                    )
                })
                .collect();
            panic!("timed out after {DELIVERY_TIMEOUT:?}: {what}\n{report:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every watcher has a gap in `room`; returns the first gap of each, with
/// when it came.
pub async fn wait_gaps(watchers: &[Watcher], room: &str, what: &str) -> Vec<(Instant, Value)> {
    wait_until(Duration::from_secs(5), what, || async {
        watchers.iter().all(|w| !w.seen().gaps_of(room).is_empty())
    })
    .await;
    let first = |w: &Watcher| {
        let seen = w.seen();
        let (at, gap) = seen
            .gaps
            .iter()
            .find(|(_, g)| g["room"] == room)
            .expect("waited for");
        (*at, gap.clone())
    };
    watchers.iter().map(first).collect()
}

/// When the last of `gaps` came.
pub fn latest(gaps: &[(Instant, Value)]) -> Instant {
    gaps.iter()
        .map(|(at, _)| *at)
        .max()
        .expect("one gap or more")
}

/// Checks the first gap of each client: `history_lost` in a new epoch, the same at
/// every client (the epoch is the room's, not the server's); returns that epoch.
pub fn assert_history_lost(gaps: &[(Instant, Value)], room: &str, old_epoch: &str) -> String {
    let epoch = gaps[0].1["epoch"].as_str().unwrap_or_default().to_owned();
    for (_, gap) in gaps {
        assert_eq!(gap["op"], "gap", "{gap}");
        assert_eq!(gap["room"], room, "{gap}");
        assert_eq!(gap["reason"], "history_lost", "{gap}");
        assert!(
            gap["offset"].is_u64(),
            "a history_lost gap names its offset: {gap}"
        );
        assert_ne!(
            gap["epoch"], old_epoch,
            "the gap must name a new epoch: {gap}"
        );
        assert_eq!(
            gap["epoch"],
            epoch.as_str(),
            "every server agrees on the new epoch: {gaps:?}"
        );
    }
    epoch
}

/// `LLEN` of a room's history list, for the report (`None`: not a list there).
pub async fn history_length(redis: &RedisServer, key: &str) -> Option<u64> {
    let mut conn = redis.client().await;
    redis::cmd("LLEN")
        .arg(key)
        .query_async(&mut conn)
        .await
        .ok()
}
