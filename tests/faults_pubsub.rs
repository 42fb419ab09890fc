//! Faults Redis itself inflicts on a healthy server (PROTOCOL.md §5): its pub/sub
//! connection killed by `CLIENT KILL`, writes paused by `CLIENT PAUSE`, and the
//! subscriber cut off for overrunning Redis's pub/sub output buffer limit. Each test
//! prints what it measured.

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use support::{
    percentile, u64_at, unique_prefix, wait_until, RedisServer, Server, ServerBuilder, WsClient,
    REPLY_TIMEOUT,
};

async fn numsub(conn: &mut MultiplexedConnection, channel: &str) -> u64 {
    let reply: (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .expect("PUBSUB NUMSUB");
    reply.1
}

/// `CLIENT KILL TYPE pubsub` fifty times: the subscriber is back each time, quickly,
/// and each time the room's subscriber is told of the gap (PROTOCOL.md §8).
#[actix_web::test]
async fn pubsub_connection_killed_fifty_times_is_resubscribed_each_time_p99_under_200ms() {
    const KILLS: u64 = 50;
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("client-kill");
    let a = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("A-client-kill")
        .spawn()
        .await;
    let mut client = WsClient::connect(&a).await;
    client.subscribe("room").await;
    a.wait_healthy().await;
    let channel = format!("{prefix}room");
    let mut conn = redis.client().await;
    assert_eq!(numsub(&mut conn, &channel).await, 1);
    let links_lost_before = u64_at(&a.stats().await, "/subscriber/linksLost");

    let mut times = Vec::new();
    for round in 0..KILLS {
        let killed: u64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "pubsub"])
            .query_async(&mut conn)
            .await
            .expect("CLIENT KILL");
        assert_eq!(killed, 1, "round {round}: one pub/sub connection to kill");
        let started = Instant::now();
        // Polled every 2 ms on one connection: the figure is the point of the test.
        loop {
            if numsub(&mut conn, &channel).await == 1 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "round {round}: not resubscribed"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        times.push(started.elapsed());
        let marker = json!({"type": "marker", "data": round});
        let _: u64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(marker.to_string())
            .query_async(&mut conn)
            .await
            .expect("PUBLISH");
        let frame = client.recv_event("room", REPLY_TIMEOUT).await;
        assert_eq!(frame["event"], marker, "round {round}");
        // The gap may come just before or just after the first event on the new
        // link (the confirmation and the event race inside the server); it comes.
        let gap = client
            .recv_matching(REPLY_TIMEOUT, "gap", |f| f["op"] == "gap")
            .await;
        assert_eq!(
            gap,
            json!({"op": "gap", "room": "room", "reason": "link_lost"}),
            "round {round}"
        );
    }
    let links_lost = u64_at(&a.stats().await, "/subscriber/linksLost") - links_lost_before;
    // One per room held on each lost link: `room` and `system:events`.
    assert_eq!(
        u64_at(&a.stats().await, "/subscriber/gapsUnrecovered"),
        2 * KILLS
    );
    let p99 = percentile(&times, 99.0);
    eprintln!(
        "client-kill: {KILLS} kills, resubscribed in p50 {:?}, p99 {p99:?}, max {:?}; \
         linksLost +{links_lost}",
        percentile(&times, 50.0),
        percentile(&times, 100.0)
    );
    assert!(p99 < Duration::from_millis(200), "p99 {p99:?}");
    assert_eq!(links_lost, KILLS, "every kill counted in linksLost");
    wait_until(Duration::from_secs(2), "healthy", || async {
        a.health().await.0 == 200
    })
    .await;
}

/// One HTTP publish: its status and how long the call took.
async fn timed_publish(server: &Server, n: u64) -> (u16, Duration) {
    let started = Instant::now();
    let body = json!({"type": "paused", "data": {"from": server.id(), "n": n}});
    let (status, _) = server.post_json("/publish/room", &body).await;
    (status, started.elapsed())
}

/// `CLIENT PAUSE 2000 WRITE` holds every PUBLISH. A server whose response deadline
/// (1 s) is shorter than the pause reports the failure (503, not retried: it was sent);
/// one whose deadline (5 s) is longer succeeds once the pause ends. Nothing hangs, and
/// nothing answered 200 is lost.
#[actix_web::test]
async fn publishes_during_client_pause_write_succeed_or_fail_loudly_never_silently() {
    const PER_SERVER: u64 = 5;
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("pause");
    let short = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("A-short")
        .env("REDIS_RESPONSE_TIMEOUT_MS", "1000")
        .env("PEER_HEARTBEAT_MS", "60000")
        .spawn()
        .await;
    let long = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("B-long")
        .env("REDIS_RESPONSE_TIMEOUT_MS", "5000")
        .env("PEER_HEARTBEAT_MS", "60000")
        .spawn()
        .await;
    // Each watcher is on the other server: it sees only what went through Redis.
    let mut watch_short = WsClient::connect(&long).await;
    watch_short.subscribe("room").await;
    let mut watch_long = WsClient::connect(&short).await;
    watch_long.subscribe("room").await;
    short.wait_healthy().await;
    long.wait_healthy().await;
    short.reset_stats().await;
    long.reset_stats().await;

    let paused = Instant::now();
    let _: () = redis
        .query(redis::cmd("CLIENT").arg(&["PAUSE", "2000", "WRITE"]))
        .await;
    let calls = (0..PER_SERVER).flat_map(|n| [timed_publish(&short, n), timed_publish(&long, n)]);
    let results = join_all(calls).await;
    let took = paused.elapsed();
    let (short_results, long_results): (Vec<_>, Vec<_>) =
        results.chunks(2).map(|pair| (pair[0], pair[1])).unzip();
    eprintln!(
        "pause: all answered {took:?} after CLIENT PAUSE; 1 s deadline: {short_results:?}; \
         5 s deadline: {long_results:?}"
    );
    for (status, call) in &short_results {
        assert_eq!(*status, 503, "a publish held past its deadline must fail");
        assert!(*call < Duration::from_millis(2500), "took {call:?}");
    }
    for (status, call) in &long_results {
        assert_eq!(
            *status, 200,
            "a publish held less than its deadline succeeds"
        );
        assert!(*call < Duration::from_secs(5), "took {call:?}");
    }
    let stats = short.stats().await;
    eprintln!("pause: 1 s server publisher stats {}", stats["publisher"]);
    assert_eq!(u64_at(&stats, "/publisher/failedPublishes"), PER_SERVER);
    assert_eq!(
        u64_at(&stats, "/publisher/retries"),
        0,
        "a publish that timed out after it was sent must not be retried (§5)"
    );

    // Every 200 reached the other server, once. The 503s were sent before the
    // deadline, so Redis runs them when the pause ends: delivered, never twice.
    let got_long = drain_numbers(&mut watch_long, "B-long").await;
    let got_short = drain_numbers(&mut watch_short, "A-short").await;
    eprintln!("pause: via Redis, B's (200) events seen {got_long:?}; A's (503) {got_short:?}");
    assert_eq!(got_long, (0..PER_SERVER).collect::<Vec<_>>());
    assert!(
        got_short.windows(2).all(|w| w[0] < w[1]),
        "an event failed by timeout was delivered twice: {got_short:?}"
    );
}

/// The `n` of every `paused` event from `from` that arrives within a short window.
async fn drain_numbers(client: &mut WsClient, from: &str) -> Vec<u64> {
    let mut numbers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Ok(frame) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        client.recv_matching(Duration::from_secs(3), "a paused event", |f| {
            f["event"]["data"]["from"] == from
        }),
    )
    .await
    {
        numbers.push(u64_at(&frame, "/event/data/n"));
    }
    numbers.sort();
    numbers
}

/// Redis cuts off a subscriber whose pending output passes the pub/sub hard limit.
/// The server reconnects and resubscribes, counts the lost link and logs the loss.
#[actix_web::test]
async fn a_subscriber_cut_off_by_the_output_buffer_limit_reconnects_and_logs_the_loss() {
    const BURST: u64 = 8;
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("obuf");
    let a = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("A-obuf")
        .spawn()
        .await;
    let mut client = WsClient::connect(&a).await;
    client.subscribe("room").await;
    a.wait_healthy().await;
    let _: () = redis
        .query(redis::cmd("CONFIG").arg(&[
            "SET",
            "client-output-buffer-limit",
            "pubsub 64kb 32kb 1",
        ]))
        .await;
    let channel = format!("{prefix}room");

    // Each message alone is over the 64 KiB hard limit: Redis queues it for the
    // subscriber and cuts it off before writing (a stream of small messages would be
    // written out as fast as the server reads them, never passing the limit).
    let padding = "x".repeat(100 * 1024);
    let mut pipe = redis::pipe();
    for n in 0..BURST {
        let event = json!({"type": "bulk", "data": {"n": n, "pad": padding}});
        pipe.cmd("PUBLISH")
            .arg(&channel)
            .arg(event.to_string())
            .ignore();
    }
    let mut conn = redis.client().await;
    let burst = Instant::now();
    let _: () = pipe.query_async(&mut conn).await.expect("PUBLISH burst");
    wait_until(
        Duration::from_secs(3),
        "linksLost counts the cut",
        || async { u64_at(&a.stats().await, "/subscriber/linksLost") >= 1 },
    )
    .await;
    let counted = burst.elapsed();
    wait_until(
        Duration::from_secs(3),
        "resubscribed and healthy",
        || async { redis.numsub(&channel).await == 1 && a.health().await.0 == 200 },
    )
    .await;
    let resubscribed = burst.elapsed();
    let marker = json!({"type": "marker", "data": null});
    redis.publish(&channel, &marker.to_string()).await;
    let mut bulk = 0;
    loop {
        let frame = client.recv_event("room", REPLY_TIMEOUT).await;
        if frame["event"] == marker {
            break;
        }
        bulk += 1;
    }
    let logged = a
        .stderr_tail()
        .contains("messages published until it is back are lost");
    eprintln!(
        "obuf: cut counted {counted:?} after the burst, resubscribed {resubscribed:?}; \
         {bulk} of {BURST} burst events delivered; loss logged: {logged}"
    );
    assert!(bulk < BURST, "the burst should have overrun the limit");
    assert!(logged, "no loss warning in the log:\n{}", a.stderr_tail());
}

/// An in-process service floods the publisher while Redis holds every write. The
/// publisher keeps at most `MAX_QUEUED` publishes waiting and sends pipelines only
/// while fewer than `MAX_QUEUED` are unanswered; past that a publish is refused at
/// once (`Overloaded`, counted as failed) instead of piling up in memory. The first
/// wave fills the queue, which then drains into pipelines that Redis holds; the
/// second finds both bounds reached. Every call is answered, and every one accepted
/// succeeds once the pause ends.
#[actix_web::test]
async fn a_publish_flood_while_redis_is_paused_is_refused_past_the_queue_bounds() {
    use switchboard_actors::{
        BackplaneConfig, BrokerConfig, Error, PubSub, RedisConfig, MAX_QUEUED,
    };
    const EXTRA: usize = 20_000;
    let redis = RedisServer::start().await;
    let mut config = RedisConfig::new(redis::Client::open(redis.url()).unwrap());
    config.channel_prefix = unique_prefix("flood");
    // The probe's PING queues behind the held publishes, and the held pipelines
    // must outlive the pause: the link is not dead.
    config.probe_timeout = Duration::from_secs(120);
    config.response_timeout = Duration::from_secs(120);
    let pubsub = PubSub::start(BrokerConfig::new(
        "flood",
        BackplaneConfig::Redis(Box::new(config)),
    ));
    wait_until(REPLY_TIMEOUT, "the publisher is ready", || async {
        pubsub
            .health_status()
            .await
            .is_ok_and(|h| h.publisher_ready)
    })
    .await;
    pubsub.reset_stats().await.unwrap();
    let flood = |from: usize, count: usize| {
        let pubsub = pubsub.clone();
        async move {
            let results = join_all((from..from + count).map(|n| {
                let pubsub = pubsub.clone();
                async move { pubsub.publish_to("flood", "n", &n).await }
            }));
            // Tokio's cooperative budget would make `join_all` re-poll its tens of
            // thousands of futures for every few answers (see the loadgen's
            // publish-path); this test is about the publisher's bounds.
            let results = tokio::task::unconstrained(results).await;
            let accepted = results.iter().filter(|r| r.is_ok()).count();
            let refused = results
                .iter()
                .filter(|r| matches!(r, Err(Error::Overloaded)))
                .count();
            assert_eq!(accepted + refused, count, "every other outcome is a bug");
            (accepted, refused)
        }
    };

    // Held until the test has seen both bounds, however slow the machine: the pause
    // is ended by CLIENT UNPAUSE, not by its timeout.
    let _: () = redis
        .query(redis::cmd("CLIENT").arg(&["PAUSE", "100000", "WRITE"]))
        .await;
    let started = Instant::now();
    let first = actix_web::rt::spawn(flood(0, MAX_QUEUED));
    // The whole first wave waits, then goes out in pipelines that Redis holds.
    wait_until(
        Duration::from_secs(60),
        "the first wave is sent",
        || async {
            let stats = pubsub.publisher_stats().await.unwrap();
            stats.unanswered == MAX_QUEUED as u64 && stats.waiting == 0
        },
    )
    .await;
    let sent_after = started.elapsed();
    let second = actix_web::rt::spawn(flood(MAX_QUEUED, MAX_QUEUED + EXTRA));
    // Refusals are answered at once; the accepted wait for the pause to end.
    wait_until(
        Duration::from_secs(60),
        "the second wave is taken",
        || async {
            let stats = pubsub.publisher_stats().await.unwrap();
            stats.waiting == MAX_QUEUED as u64 && stats.failed_publishes == EXTRA as u64
        },
    )
    .await;
    let stats = pubsub.publisher_stats().await.unwrap();
    eprintln!(
        "flood: first wave sent {sent_after:?} after the pause; second wave taken after \
         {:?}: waiting {}, unanswered {}, refused {}",
        started.elapsed(),
        stats.waiting,
        stats.unanswered,
        stats.failed_publishes
    );
    assert_eq!(
        stats.unanswered, MAX_QUEUED as u64,
        "nothing more is sent while MAX_QUEUED are unanswered"
    );
    let _: () = redis.query(redis::cmd("CLIENT").arg("UNPAUSE")).await;

    let (accepted2, refused2) = second.await.unwrap();
    assert_eq!((accepted2, refused2), (MAX_QUEUED, EXTRA));
    let (accepted1, refused1) = first.await.unwrap();
    let took = started.elapsed();
    let stats = pubsub.publisher_stats().await.unwrap();
    eprintln!(
        "flood: all answered {took:?} after the pause; stats: {} succeeded, {} failed",
        stats.successful_publishes, stats.failed_publishes
    );
    assert_eq!((accepted1, refused1), (MAX_QUEUED, 0));
    assert_eq!(stats.successful_publishes, 2 * MAX_QUEUED as u64);
    assert_eq!(stats.failed_publishes, EXTRA as u64);
    assert_eq!((stats.waiting, stats.unanswered), (0, 0));
    pubsub.shutdown().await.unwrap();
}
