//! Durable rooms under fault (PROTOCOL.md §7-8), against real `redis-server` and real
//! server processes: Redis SIGKILLed and restarted from its append-only file under a
//! 2,000 events/s stream, the pub/sub connections killed by `CLIENT KILL`, answers lost
//! to `CLIENT PAUSE`, Redis restarted empty, and Redis rolled back to an older file.
//! Plain rooms are the control: they report `link_lost`. Each test prints what it
//! measured (`cargo test --test durable_faults -- --nocapture`).

mod support;

#[path = "durable_faults/fixture.rs"]
mod fixture;
#[path = "durable_faults/publisher.rs"]
mod publisher;
#[path = "durable_faults/watcher.rs"]
mod watcher;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{u64_at, unique_prefix, wait_until, RedisServer, WsClient};

use fixture::{
    assert_delivered, assert_history_lost, durable_server, history_length, latest, publish_all,
    publish_http, publishers, recovery_stats, settle, stop_publishers, two_servers, wait_delivered,
    wait_gaps, wait_health, wait_progress, watchers, BACK, NOTICE,
};
use publisher::{answers_summary, rooms, Outcome, Pace};
use watcher::Seen;

/// One Redis outage of the kill test.
struct Outage {
    killed: Instant,
    back: Instant,
    healthy: [Duration; 2],
}

/// The first test: Redis SIGKILLed ten times under 2,000 events/s over 20
/// durable rooms, restarted from its append-only file each time. Clients notice
/// nothing: no reconnect, no gap, offsets contiguous, every `published` event exactly
/// once, every `publish_failed` one at most once.
#[actix_web::test]
async fn redis_killed_ten_times_under_a_durable_stream_loses_nothing_and_clients_notice_nothing() {
    const KILLS: usize = 10;
    const OUTAGE: Duration = Duration::from_millis(300);
    // 8 publishers x 5 events every 20 ms = 2,000 events/s in all.
    const PACE: Pace = Pace {
        per_tick: 5,
        tick: Duration::from_millis(20),
    };
    let mut redis = RedisServer::start_persistent().await;
    let prefix = unique_prefix("dur-kill");
    let servers = two_servers(&redis, &prefix, "dur-kill").await;
    let rooms = rooms("dur", 20);
    let watchers = watchers(&servers, &rooms, 2, true).await;
    let publishers = publishers(&servers, &rooms, 4, PACE).await;
    let started = Instant::now();

    let mut outages = Vec::new();
    for round in 0..KILLS {
        wait_progress(
            &watchers,
            2000,
            Duration::from_secs(15),
            &format!("before kill {round}"),
        )
        .await;
        redis.kill();
        let killed = Instant::now();
        for server in &servers {
            wait_health(server, 503, NOTICE).await;
        }
        // Redis stays down a while, longer than a publish's retries (20 + 40 + 80 ms):
        // the length of the outage is the scenario, not a wait for a condition.
        tokio::time::sleep(OUTAGE.saturating_sub(killed.elapsed())).await;
        redis.restart().await;
        let back = Instant::now();
        let healthy = [
            wait_health(&servers[0], 200, BACK).await,
            wait_health(&servers[1], 200, BACK).await,
        ];
        outages.push(Outage {
            killed,
            back,
            healthy,
        });
    }
    wait_progress(
        &watchers,
        2000,
        Duration::from_secs(15),
        "after the last restart",
    )
    .await;
    let outcomes = stop_publishers(publishers).await;
    let streamed = started.elapsed();
    let seen = settle(watchers, &outcomes).await;

    eprintln!(
        "dur-kill: {KILLS} kills in {streamed:?}; {}",
        answers_summary(&outcomes)
    );
    report_outages(&outages, &seen, &outcomes);
    for (server, figures) in recovery_stats(&servers).await {
        eprintln!("dur-kill: {server} /stats {figures}");
    }
    assert_delivered(&seen, &outcomes, false);
}

/// Prints, for each outage, how long the servers took to be healthy, when the first
/// event reached every client after Redis answered again, and when every client had
/// caught up: held every event sent before Redis answered and answered `published`
/// (the events Redis had by then, whose deliveries the outage held up).
fn report_outages(outages: &[Outage], seen: &[(String, Seen)], outcomes: &[Outcome]) {
    for (round, outage) in outages.iter().enumerate() {
        let mut first = Duration::ZERO;
        let mut caught_up = Duration::ZERO;
        let mut held = 0;
        for (_, watched) in seen {
            let first_here = watched
                .deliveries
                .values()
                .filter(|d| d.at >= outage.back)
                .map(|d| d.at - outage.back)
                .min()
                .unwrap_or(Duration::MAX);
            first = first.max(first_here);
            let before = outcomes
                .iter()
                .filter(|o| o.published() && o.sent < outage.back);
            for delivery in before.filter_map(|o| watched.deliveries.get(&o.id)) {
                if delivery.at > outage.back {
                    caught_up = caught_up.max(delivery.at - outage.back);
                    held += 1;
                }
            }
        }
        eprintln!(
            "dur-kill: round {round}: Redis down {:?}; servers healthy {:?} after it \
             answered; first event at every client {first:?} after; every client caught up \
             {caught_up:?} after ({held} deliveries of events sent before came after)",
            outage.back - outage.killed,
            outage.healthy
        );
    }
}

/// The control: in plain rooms a lost link cannot be made good, so after each Redis
/// outage every subscriber of every room is told `link_lost` (§8).
#[actix_web::test]
async fn plain_rooms_report_link_lost_after_each_redis_outage() {
    const KILLS: usize = 3;
    let mut redis = RedisServer::start().await;
    let prefix = unique_prefix("plain-kill");
    let servers = two_servers(&redis, &prefix, "plain-kill").await;
    let rooms = rooms("plain", 3);
    let watchers = watchers(&servers, &rooms, 2, false).await;

    for round in 0..KILLS {
        redis.kill();
        for server in &servers {
            wait_health(server, 503, NOTICE).await;
        }
        redis.restart().await;
        let back = Instant::now();
        for server in &servers {
            wait_health(server, 200, BACK).await;
        }
        let what = format!("every client has a link_lost gap in every room after outage {round}");
        wait_until(Duration::from_secs(5), &what, || async {
            watchers.iter().all(|w| {
                let seen = w.seen();
                rooms.iter().all(|room| seen.gaps_of(room).len() > round)
            })
        })
        .await;
        eprintln!(
            "plain-kill: round {round}: every gap in {:?} after Redis answered",
            back.elapsed()
        );
    }
    for watcher in watchers {
        let label = watcher.label.clone();
        let (mut client, seen) = watcher.finish().await;
        client.assert_alive().await;
        for room in &rooms {
            let gaps = seen.gaps_of(room);
            eprintln!("plain-kill: {label} {room}: {} gaps", gaps.len());
            for gap in gaps {
                assert_eq!(
                    *gap,
                    json!({"op": "gap", "room": room, "reason": "link_lost"}),
                    "{label}"
                );
            }
        }
    }
}

/// `CLIENT KILL TYPE pubsub` under a durable stream: only the servers' pub/sub links
/// die, publishes go on succeeding, and each server reads what its link missed from
/// the history (§8): no gap, nothing lost or doubled, and `gapsRecovered` says so.
#[actix_web::test]
async fn pubsub_links_killed_under_a_durable_stream_are_caught_up_by_the_servers() {
    const KILLS: usize = 5;
    // 4 publishers x 5 events every 20 ms = 1,000 events/s.
    const PACE: Pace = Pace {
        per_tick: 5,
        tick: Duration::from_millis(20),
    };
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("dur-clientkill");
    let servers = two_servers(&redis, &prefix, "dur-clientkill").await;
    let rooms = rooms("dur", 5);
    let watchers = watchers(&servers, &rooms, 2, true).await;
    let publishers = publishers(&servers, &rooms, 2, PACE).await;
    let mut killed = Vec::new();
    for round in 0..KILLS {
        wait_progress(
            &watchers,
            500,
            Duration::from_secs(10),
            &format!("before kill {round}"),
        )
        .await;
        let count: u64 = redis
            .query(redis::cmd("CLIENT").arg(&["KILL", "TYPE", "pubsub"]))
            .await;
        killed.push(count);
    }
    wait_progress(
        &watchers,
        500,
        Duration::from_secs(10),
        "after the last kill",
    )
    .await;
    let outcomes = stop_publishers(publishers).await;
    let seen = settle(watchers, &outcomes).await;
    let stats = recovery_stats(&servers).await;
    eprintln!(
        "dur-clientkill: {KILLS} kills, pub/sub connections killed each time {killed:?}; {}",
        answers_summary(&outcomes)
    );
    for (server, figures) in &stats {
        eprintln!("dur-clientkill: {server} /stats {figures}");
    }
    assert!(
        killed.iter().all(|k| *k >= 2),
        "both servers' links killed each time: {killed:?}"
    );
    assert!(
        outcomes.iter().all(Outcome::published),
        "the publishers' connections were not killed: every publish succeeds ({})",
        answers_summary(&outcomes)
    );
    assert_delivered(&seen, &outcomes, false);
    for (server, figures) in &stats {
        assert!(
            u64_at(figures, "/gapsRecovered") > 0,
            "{server}: the missed events were not read back from the history: {figures}"
        );
    }
}

/// The fourth test: Redis restarted empty loses every room's numbering. Each
/// server's sessions are told `history_lost` with a new epoch and offset P, then the
/// events go on at P+1, P+2... in that epoch: in a room published to at once (the
/// publish finds no numbering) and in a quiet one (the server's read after its link
/// came back finds none).
#[actix_web::test]
async fn redis_restarted_empty_reports_history_lost_with_a_new_epoch() {
    let mut redis = RedisServer::start_persistent().await;
    let prefix = unique_prefix("dur-empty");
    let servers = two_servers(&redis, &prefix, "dur-empty").await;
    let busy = "dur:busy".to_owned();
    let quiet = "dur:quiet".to_owned();
    let watchers = watchers(&servers, &[busy.clone(), quiet.clone()], 2, true).await;
    let before = [
        publish_all(&servers[0], &busy, 1..6).await,
        publish_all(&servers[0], &quiet, 11..16).await,
    ];
    let old_epochs = [before[0][0].2.clone(), before[1][0].2.clone()];
    for positions in &before {
        let offsets: Vec<u64> = positions.iter().map(|p| p.1).collect();
        assert_eq!(
            offsets,
            (1..6).collect::<Vec<_>>(),
            "a new room numbers from 1"
        );
    }
    let ids = [1, 2, 3, 4, 5, 11, 12, 13, 14, 15];
    wait_delivered(&watchers, &ids, "the first events arrive").await;

    redis.restart_empty().await;
    let back = Instant::now();
    for server in &servers {
        wait_health(server, 200, BACK).await;
    }
    let mut after = publish_all(&servers[1], &busy, 21..26).await;
    let busy_gaps = wait_gaps(&watchers, &busy, "every client has a gap in the busy room").await;
    let busy_epoch = assert_history_lost(&busy_gaps, &busy, &old_epochs[0]);
    let (offset, epoch) = publish_http(&servers[0], &busy, 26).await;
    after.push((26, offset, epoch));
    for (id, _, epoch) in &after {
        assert_eq!(
            *epoch, busy_epoch,
            "publish {id} answered in the gap's epoch"
        );
    }
    wait_delivered(&watchers, &[26], "an event published after the gap arrives").await;
    let quiet_gaps = wait_gaps(
        &watchers,
        &quiet,
        "every client has a gap in the quiet room, with nothing published there",
    )
    .await;
    let quiet_epoch = assert_history_lost(&quiet_gaps, &quiet, &old_epochs[1]);
    let (offset, epoch) = publish_http(&servers[0], &quiet, 31).await;
    assert_eq!(
        epoch, quiet_epoch,
        "the quiet room goes on in the gap's epoch"
    );
    wait_delivered(&watchers, &[31], "the quiet room's event arrives").await;

    eprintln!(
        "dur-empty: old epochs {old_epochs:?}; busy room: gaps {:?} at every client {:?} \
         after Redis answered, publishes at offsets {:?} (the last after the gap); quiet \
         room: gap {} at every client {:?} after Redis answered, the next publish at \
         offset {offset}",
        busy_gaps
            .iter()
            .map(|(_, g)| &g["offset"])
            .collect::<Vec<_>>(),
        latest(&busy_gaps) - back,
        after.iter().map(|p| p.1).collect::<Vec<_>>(),
        quiet_gaps[0].1,
        latest(&quiet_gaps) - back,
    );
    for watcher in watchers {
        let label = watcher.label.clone();
        let (_, seen) = watcher.finish().await;
        assert!(
            seen.violations.is_empty(),
            "{label}: {:#?}",
            seen.violations
        );
        // The gap's P may cover events published before the server read the room
        // again (§7: P is where the events go on); every event after P comes, once.
        let from = seen.gaps_of(&busy)[0]["offset"].as_u64().expect("checked");
        for (id, offset, _) in &after {
            let count = seen.deliveries.get(id).map_or(0, |d| d.count);
            let expected = u32::from(*offset > from);
            assert_eq!(
                count, expected,
                "{label}: event {id} at {offset}, gap at {from}"
            );
        }
        let delivery = &seen.deliveries[&31];
        assert_eq!(delivery.count, 1, "{label}: event 31");
        assert_eq!(
            delivery.epoch.as_ref(),
            Some(&quiet_epoch),
            "{label}: event 31"
        );
        assert_eq!(
            seen.gaps.len(),
            2,
            "{label}: one gap per room: {:?}",
            seen.gaps
        );
    }
}

/// The fifth test, second half: Redis holds every write (`CLIENT PAUSE ...
/// WRITE`) longer than the servers' response deadline, so answers to durable publishes
/// are lost. The servers retry under their own idempotency key (§7): every publish is
/// answered `published`, and delivered exactly once, in order.
#[actix_web::test]
async fn durable_publishes_whose_answers_are_lost_are_retried_never_doubled() {
    const RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);
    const PAUSE_MS: u64 = 1000;
    // 2 publishers x 1 event every 20 ms = 100 events/s: a pause leaves each connection
    // far below its 256 publishes in flight.
    const PACE: Pace = Pace {
        per_tick: 1,
        tick: Duration::from_millis(20),
    };
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("dur-pause");
    let mut servers = Vec::new();
    for id in ["A-dur-pause", "B-dur-pause"] {
        let server = durable_server(&redis, &prefix, id)
            .env(
                "REDIS_RESPONSE_TIMEOUT_MS",
                &RESPONSE_TIMEOUT.as_millis().to_string(),
            )
            // Eight retries (20 ms doubling: 5.1 s of backoff) and nine 300 ms deadlines
            // outlast the pause by far, even on a loaded machine where a deadline may
            // also pass outside it: a failure can then only be a lost answer not retried.
            .env("PUBLISH_RETRIES", "8")
            .env("PEER_HEARTBEAT_MS", "60000")
            .spawn()
            .await;
        server.wait_healthy().await;
        servers.push(server);
    }
    let rooms = rooms("dur", 2);
    let watchers = watchers(&servers, &rooms, 1, true).await;
    let publishers = publishers(&servers, &rooms, 1, PACE).await;
    wait_progress(&watchers, 100, Duration::from_secs(10), "before the pause").await;
    for server in &servers {
        server.reset_stats().await;
    }
    let _: () = redis
        .query(redis::cmd("CLIENT").arg(&["PAUSE", &PAUSE_MS.to_string(), "WRITE"]))
        .await;
    // The stream runs on through the pause and for a while after it: the pause is the
    // scenario, not a wait for a condition.
    tokio::time::sleep(Duration::from_millis(PAUSE_MS)).await;
    wait_progress(&watchers, 150, Duration::from_secs(10), "after the pause").await;
    let outcomes = stop_publishers(publishers).await;
    let seen = settle(watchers, &outcomes).await;
    let stats = recovery_stats(&servers).await;

    let held: Vec<Duration> = outcomes
        .iter()
        .filter_map(|o| o.answer.as_ref().map(|(at, _)| *at - o.sent))
        .filter(|took| *took > RESPONSE_TIMEOUT)
        .collect();
    eprintln!(
        "dur-pause: {}; {} answered after more than {RESPONSE_TIMEOUT:?}, the slowest in {:?}",
        answers_summary(&outcomes),
        held.len(),
        held.iter().max()
    );
    for (server, figures) in &stats {
        eprintln!("dur-pause: {server} /stats {figures}");
    }
    assert!(
        !held.is_empty(),
        "no publish was held by the pause: the scenario did not happen"
    );
    for (server, figures) in &stats {
        assert!(
            u64_at(figures, "/retries") > 0,
            "{server}: publishes whose answer was lost are retried (§7): {figures}"
        );
    }
    assert!(
        outcomes.iter().all(Outcome::published),
        "never reported failed only because an answer was lost (§7): {}",
        answers_summary(&outcomes)
    );
    assert_delivered(&seen, &outcomes, false);
}

/// The sixth test: Redis restarted from an older copy of its append-only file
/// forgets events the clients already have. Redis's numbering is behind what the
/// servers delivered, so each server treats it as lost (§7): `history_lost` with a new
/// epoch, never the old epoch's offsets handed out again.
#[actix_web::test]
async fn redis_rolled_back_to_an_older_file_reports_history_lost_never_repeats_offsets() {
    let mut redis = RedisServer::start_persistent().await;
    let prefix = unique_prefix("dur-rollback");
    let servers = two_servers(&redis, &prefix, "dur-rollback").await;
    let room = "dur:roll".to_owned();
    let watchers = watchers(&servers, std::slice::from_ref(&room), 2, true).await;
    let kept = publish_all(&servers[0], &room, 1..11).await;
    let old_epoch = kept[0].2.clone();
    let snapshot = redis.snapshot();
    let forgotten = publish_all(&servers[1], &room, 11..21).await;
    let ids: Vec<u64> = (1..21).collect();
    wait_delivered(&watchers, &ids, "the first twenty events arrive").await;
    let offsets: Vec<u64> = kept.iter().chain(&forgotten).map(|p| p.1).collect();
    assert_eq!(offsets, ids, "offsets 1 to 20 before the rollback");

    let history = format!("{{{prefix}{room}}}:log");
    let before = history_length(&redis, &history).await;
    redis.restart_from(&snapshot).await;
    let back = Instant::now();
    let restored = history_length(&redis, &history).await;
    for server in &servers {
        wait_health(server, 200, BACK).await;
    }
    let gaps = wait_gaps(
        &watchers,
        &room,
        "every client has a gap after the rollback",
    )
    .await;
    let noticed = latest(&gaps) - back;
    let new_epoch = assert_history_lost(&gaps, &room, &old_epoch);
    let after = publish_all(&servers[0], &room, 21..26).await;
    for (id, offset, epoch) in &after {
        assert_eq!(
            *epoch, new_epoch,
            "publish {id} (offset {offset}) must be in the new epoch, not a repeat of the old"
        );
    }
    wait_delivered(
        &watchers,
        &[21, 22, 23, 24, 25],
        "the events after the rollback arrive",
    )
    .await;
    eprintln!(
        "dur-rollback: old epoch {old_epoch} at offset 20, rolled back to 10 (LLEN \
         {history} {before:?} before, {restored:?} once restarted); gap {} at every client \
         {noticed:?} after Redis answered; published after: {:?}",
        gaps[0].1,
        after.iter().map(|p| (p.1, &p.2)).collect::<Vec<_>>()
    );
    for watcher in watchers {
        let label = watcher.label.clone();
        let (_, seen) = watcher.finish().await;
        assert!(
            seen.violations.is_empty(),
            "{label}: {:#?}",
            seen.violations
        );
        // One loss, one gap: a second one means the first named an offset P whose
        // following events never came (§8: "P: the events after it follow").
        let gaps: Vec<&Value> = seen.gaps.iter().map(|(_, g)| g).collect();
        assert_eq!(gaps.len(), 1, "{label}: one rollback, one gap: {gaps:?}");
        for id in 21..26 {
            let delivery = &seen.deliveries[&id];
            assert_eq!(delivery.count, 1, "{label}: event {id}");
            assert_eq!(
                delivery.epoch.as_deref(),
                Some(new_epoch.as_str()),
                "{label}: {id}"
            );
        }
    }
}

/// The sixth test again, with publishes going on as soon as the servers are healthy,
/// before they may have read the room again: Redis hands out the old epoch's offsets
/// 11, 12... a second time unless a server noticed the rollback first. No client may
/// take such an event for a continuation of what it has: it is told `history_lost`,
/// every event it gets after the restart is in a new epoch, and the stream goes on.
#[actix_web::test]
async fn redis_rolled_back_under_publishes_never_hands_clients_an_old_offset_again() {
    let mut redis = RedisServer::start_persistent().await;
    let prefix = unique_prefix("dur-rollback-busy");
    let servers = two_servers(&redis, &prefix, "dur-rollback-busy").await;
    let room = "dur:roll".to_owned();
    let watchers = watchers(&servers, std::slice::from_ref(&room), 2, true).await;
    let old_epoch = publish_all(&servers[0], &room, 1..11).await[0].2.clone();
    let snapshot = redis.snapshot();
    publish_all(&servers[1], &room, 11..21).await;
    let ids: Vec<u64> = (1..21).collect();
    wait_delivered(&watchers, &ids, "the first twenty events arrive").await;

    redis.restart_from(&snapshot).await;
    for server in &servers {
        wait_health(server, 200, BACK).await;
    }
    let racing = publish_all(&servers[1], &room, 21..26).await;
    wait_gaps(
        &watchers,
        &room,
        "every client has a gap after the rollback",
    )
    .await;
    let (offset, epoch) = publish_http(&servers[0], &room, 26).await;
    assert_ne!(
        epoch, old_epoch,
        "once every client was told, the epoch is new"
    );
    wait_delivered(
        &watchers,
        &[26],
        "an event published after the gaps arrives",
    )
    .await;
    eprintln!(
        "dur-rollback-busy: old epoch {old_epoch} at offset 20, rolled back to 10; \
         published at once after: {:?}; after the gaps: ({offset}, {epoch})",
        racing.iter().map(|p| (p.1, &p.2)).collect::<Vec<_>>()
    );
    for watcher in watchers {
        let label = watcher.label.clone();
        let (_, seen) = watcher.finish().await;
        let gaps: Vec<&Value> = seen.gaps.iter().map(|(_, g)| g).collect();
        eprintln!("dur-rollback-busy: {label}: gaps {gaps:?}");
        assert!(
            seen.violations.is_empty(),
            "{label}: {:#?}",
            seen.violations
        );
        for id in 21..27 {
            let Some(delivery) = seen.deliveries.get(&id) else {
                continue;
            };
            assert_eq!(delivery.count, 1, "{label}: event {id}");
            assert_ne!(
                delivery.epoch.as_deref(),
                Some(old_epoch.as_str()),
                "{label}: event {id} delivered in the old epoch, at {:?}",
                delivery.offset
            );
        }
        assert_eq!(
            seen.deliveries[&26].epoch.as_ref(),
            Some(&epoch),
            "{label}: event 26"
        );
    }
}

/// The WebSocket replies the tests rely on besides events: `subscribed` carries the
/// position in a durable room (checked by [`Watcher::start`]), and a client's own
/// `ping` is answered while the stream runs. Kept here so a failure of the basics
/// shows before the fault tests' longer ones.
#[actix_web::test]
async fn a_durable_room_numbers_its_events_from_the_subscribed_position() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("dur-basics");
    let servers = two_servers(&redis, &prefix, "dur-basics").await;
    let room = "dur:basics".to_owned();
    let watchers = watchers(&servers, std::slice::from_ref(&room), 1, true).await;
    let positions = publish_all(&servers[0], &room, 1..4).await;
    wait_delivered(&watchers, &[1, 2, 3], "three events arrive").await;
    let mut client = WsClient::connect(&servers[1]).await;
    let reply = client
        .request(json!({"op": "subscribe", "room": room}))
        .await;
    assert_eq!(reply["offset"], 3, "{reply}");
    assert_eq!(reply["epoch"], positions[0].2.as_str(), "{reply}");
    client.assert_alive().await;
    for watcher in watchers {
        let (_, seen) = watcher.finish().await;
        assert!(seen.violations.is_empty(), "{:#?}", seen.violations);
    }
}

/// The premise of the kill and rollback tests, checked on Redis alone: a persistent test
/// Redis keeps every acknowledged write across SIGKILL, goes back to a snapshot's state,
/// and starts empty when asked.
#[actix_web::test]
async fn the_persistent_test_redis_survives_sigkill_and_rolls_back_to_a_snapshot() {
    async fn get(redis: &RedisServer) -> Option<String> {
        redis.query(redis::cmd("GET").arg("premise")).await
    }
    async fn set(redis: &RedisServer, value: &str) {
        let _: () = redis
            .query(redis::cmd("SET").arg("premise").arg(value))
            .await;
    }
    let mut redis = RedisServer::start_persistent().await;
    set(&redis, "one").await;
    redis.kill();
    redis.restart().await;
    assert_eq!(
        get(&redis).await.as_deref(),
        Some("one"),
        "kept across SIGKILL"
    );
    let snapshot = redis.snapshot();
    set(&redis, "two").await;
    redis.kill();
    redis.restart().await;
    assert_eq!(
        get(&redis).await.as_deref(),
        Some("two"),
        "kept across SIGKILL"
    );
    redis.restart_from(&snapshot).await;
    assert_eq!(get(&redis).await.as_deref(), Some("one"), "rolled back");
    redis.restart_empty().await;
    assert_eq!(get(&redis).await, None, "restarted empty");
}
