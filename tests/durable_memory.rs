//! What a durable room keeps (PROTOCOL.md §7): a history trimmed to about `HISTORY_SIZE`,
//! expiring `HISTORY_TTL_MS` after the last publish while the room's offset and epoch
//! stay (nobody is told of a gap that is not one), and a long run into one room that
//! leaves the memory flat. Each scenario runs on Redis (where the room's keys are
//! looked at directly) and on the memory backplane.

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join;
use serde_json::{json, Value};
use support::{
    next_ref, u64_at, unique_prefix, wait_until, RedisServer, Server, ServerBuilder, WsClient,
    REPLY_TIMEOUT,
};

/// The durable rooms of these tests.
const DURABLE_ROOMS: &str = "chat:*";
/// How long one event may take to arrive.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Unanswered publishes a pipelining client keeps in flight (the server allows 256).
const WINDOW: u64 = 128;
/// The long run on Redis: the million publishes into one room (about a minute
/// and a half with the server's debug build here).
const LONG_RUN_REDIS: u64 = 1_000_000;
/// The long run on the memory backplane, where no Redis memory is at stake: enough for
/// the server's RSS to show a leak.
const LONG_RUN_MEMORY: u64 = 100_000;
/// What the room's history in Redis may take at the end of the long run, against what
/// it took after the warm-up: it holds `HISTORY_SIZE` entries either way, so only how
/// its list nodes happen to be filled may differ.
const MOST_HISTORY_GROWTH: i64 = 2;
/// Publishes before the memory baseline is taken: buffers and the history fill up.
const WARM_UP: u64 = 10_000;
/// What the publishes after the warm-up may add to the server's RSS: a leak of 48 bytes
/// an event would pass it over the shorter run.
const RSS_GROWTH_LIMIT_KIB: u64 = 4 * 1024;

/// Runs `scenario` on Redis (`scenario::on_redis`) and in memory (`scenario::on_memory`).
macro_rules! on_both_backplanes {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[actix_web::test]
            async fn on_redis() {
                let redis = crate::support::RedisServer::start().await;
                super::$scenario(Some(&redis)).await
            }

            #[actix_web::test]
            async fn on_memory() {
                super::$scenario(None).await
            }
        }
    )+};
}

on_both_backplanes!(
    the_history_holds_exactly_history_size,
    the_history_expires_after_its_ttl_while_offset_and_epoch_stay,
    a_long_run_into_one_room_keeps_the_memory_flat,
);

/// One server with [`DURABLE_ROOMS`], no publish rate limit, and `extra`; on `redis`
/// when given. Returns it with its channel prefix.
async fn server(
    redis: Option<&RedisServer>,
    test: &str,
    extra: &[(&str, &str)],
) -> (Server, String) {
    let prefix = unique_prefix(test);
    let mut builder = ServerBuilder::new()
        .id(&format!("A-{test}"))
        .env("DURABLE_ROOMS", DURABLE_ROOMS)
        .env("LIMIT_PUBLISH_RATE", "0");
    if let Some(redis) = redis {
        builder = builder.redis(redis, &prefix);
    }
    for (name, value) in extra {
        builder = builder.env(name, value);
    }
    let server = builder.spawn().await;
    server.wait_healthy().await;
    (server, prefix)
}

/// The room's keys for its channel C (the braces are literal, a Redis Cluster hash
/// tag): the history lists `{C}:log` (the envelopes) and `{C}:ids` (their publish ids),
/// and the meta hash `{C}:meta`.
fn keys(prefix: &str, room: &str) -> [String; 3] {
    ["log", "ids", "meta"].map(|key| format!("{{{prefix}{room}}}:{key}"))
}

/// `MEMORY USAGE` of the room's two history lists together.
async fn history_bytes(redis: &RedisServer, prefix: &str, room: &str) -> i64 {
    let [log, ids, _] = keys(prefix, room);
    query_int(redis, &["MEMORY", "USAGE", &log]).await
        + query_int(redis, &["MEMORY", "USAGE", &ids]).await
}

/// Asserts that both history lists hold exactly `size` entries.
async fn assert_history_length(redis: &RedisServer, prefix: &str, room: &str, size: i64) {
    let [log, ids, _] = keys(prefix, room);
    let logged = query_int(redis, &["LLEN", &log]).await;
    let identified = query_int(redis, &["LLEN", &ids]).await;
    assert_eq!(
        (logged, identified),
        (size, size),
        "LLEN {log} and LLEN {ids}"
    );
}

/// Runs one Redis command whose answer is an integer.
async fn query_int(redis: &RedisServer, args: &[&str]) -> i64 {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    redis.query(&command).await
}

/// Publishes `count` events into `room`, up to [`WINDOW`] at a time; returns the
/// offsets answered, sorted. The client must not be subscribed to anything.
async fn publish_pipelined(client: &mut WsClient, room: &str, count: u64) -> (Vec<u64>, String) {
    let (mut sent, mut offsets, mut epoch) = (0, Vec::new(), String::new());
    while (offsets.len() as u64) < count {
        while sent < count && sent - (offsets.len() as u64) < WINDOW {
            let event = json!({"type": "bulk", "data": sent});
            let frame = json!({"op": "publish", "room": room, "event": event, "ref": next_ref()});
            client.send_json(&frame);
            sent += 1;
        }
        let reply = client.recv_json(REPLY_TIMEOUT).await;
        assert_eq!(reply["op"], "published", "{reply}");
        offsets.push(u64_at(&reply, "/offset"));
        epoch = reply["epoch"].as_str().expect("an epoch").to_owned();
    }
    offsets.sort_unstable();
    (offsets, epoch)
}

/// `GET /history/{room}?{query}`, which must answer 200.
async fn history(server: &Server, room: &str, query: &str) -> Value {
    let path = format!("/history/{room}?{query}");
    let (status, body) = server.get_json(path.trim_end_matches('?')).await;
    assert_eq!(status, 200, "GET ?{query}: {body}");
    body
}

/// The offsets of a history answer's events.
fn offsets_of(answer: &Value) -> Vec<u64> {
    let events = answer["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events list: {answer}"));
    events.iter().map(|e| u64_at(e, "/offset")).collect()
}

async fn the_history_holds_exactly_history_size(redis: Option<&RedisServer>) {
    let (a, prefix) = server(redis, "bounded", &[("HISTORY_SIZE", "100")]).await;
    let room = "chat:bounded";
    let mut publisher = WsClient::connect(&a).await;
    let mut all = Vec::new();
    let mut epoch = String::new();
    for round in 1..=4 {
        let (offsets, answered) = publish_pipelined(&mut publisher, room, 250).await;
        all.extend(offsets);
        epoch = answered;
        if let Some(redis) = redis {
            assert_history_length(redis, &prefix, room, 100).await;
        }
        let latest = history(&a, room, "limit=100").await;
        assert_eq!(
            offsets_of(&latest),
            (round * 250 - 99..=round * 250).collect::<Vec<_>>()
        );
    }
    all.sort_unstable();
    assert_eq!(all, (1..=1000).collect::<Vec<_>>(), "offsets answered");

    let latest = history(&a, room, "limit=50").await;
    assert_eq!(offsets_of(&latest), (951..=1000).collect::<Vec<_>>());
    let e = query_escape(&epoch);
    let recent = history(&a, room, &format!("since=950&epoch={e}")).await;
    assert_eq!(recent["recovered"], true, "{recent}");
    assert_eq!(offsets_of(&recent), (951..=1000).collect::<Vec<_>>());
    let gone = history(&a, room, &format!("since=0&epoch={e}&limit=100")).await;
    assert_eq!(
        gone["recovered"], false,
        "the history no longer reaches offset 1"
    );
    assert_eq!(u64_at(&gone, "/offset"), 1000, "{gone}");
}

async fn the_history_expires_after_its_ttl_while_offset_and_epoch_stay(
    redis: Option<&RedisServer>,
) {
    let ttls = [
        ("HISTORY_TTL_MS", "1000"),
        ("HISTORY_META_TTL_MS", "600000"),
        ("IDEMPOTENCY_TTL_MS", "1000"),
    ];
    let (a, prefix) = server(redis, "ttl", &ttls).await;
    let room = "chat:ttl";
    let [log, ids, meta] = keys(&prefix, room);
    let mut watcher = WsClient::connect(&a).await;
    let reply = watcher
        .request(json!({"op": "subscribe", "room": room}))
        .await;
    assert_eq!(u64_at(&reply, "/offset"), 0, "{reply}");
    let epoch = reply["epoch"].as_str().expect("an epoch").to_owned();
    for n in 1..=5 {
        let (status, body) = a
            .post_json(
                &format!("/publish/{room}"),
                &json!({"type": "t", "data": n}),
            )
            .await;
        assert_eq!((status, u64_at(&body, "/offset")), (200, n), "{body}");
    }
    for n in 1..=5 {
        let frame = watcher.recv_json(EVENT_TIMEOUT).await;
        assert_eq!(
            (frame["op"].as_str(), u64_at(&frame, "/event/offset")),
            (Some("event"), n)
        );
    }
    let published = Instant::now();
    assert_eq!(offsets_of(&history(&a, room, "").await), [1, 2, 3, 4, 5]);
    if let Some(redis) = redis {
        for list in [&log, &ids] {
            let ttl = query_int(redis, &["PTTL", list]).await;
            assert!((1..=1000).contains(&ttl), "PTTL {list} = {ttl}");
        }
        let ttl = query_int(redis, &["PTTL", &meta]).await;
        assert!(
            ttl > 1000,
            "the meta outlives the history: PTTL {meta} = {ttl}"
        );
    }

    wait_until(Duration::from_secs(5), "the history expires", || async {
        history(&a, room, "").await["events"] == json!([])
    })
    .await;
    eprintln!(
        "ttl: history empty {:?} after the last publish",
        published.elapsed()
    );
    if let Some(redis) = redis {
        wait_until(
            Duration::from_secs(5),
            "the history keys expire",
            || async { query_int(redis, &["EXISTS", &log, &ids]).await == 0 },
        )
        .await;
        assert_eq!(
            query_int(redis, &["EXISTS", &meta]).await,
            1,
            "{meta} expired"
        );
    }
    let after = history(&a, room, "").await;
    assert_eq!(
        (u64_at(&after, "/offset"), &after["epoch"]),
        (5, &json!(epoch)),
        "{after}"
    );

    // A newcomer sees the same numbering; `since` the last offset is still a recovery,
    // `since` an earlier one is not: those events expired with the history (§7: a room's
    // events expire once nothing was published in it for `HISTORY_TTL_MS`).
    for (from, recovered) in [(5, true), (3, false)] {
        let mut client = WsClient::connect(&a).await;
        let since = json!({"offset": from, "epoch": epoch});
        let reply = client
            .request(json!({"op": "subscribe", "room": room, "since": since}))
            .await;
        assert_eq!(reply["recovered"], recovered, "since {from}: {reply}");
        assert_eq!(
            (u64_at(&reply, "/offset"), &reply["epoch"]),
            (5, &json!(epoch)),
            "{reply}"
        );
    }
    // History agrees: from 3 it cannot answer; the events after 3 expired.
    let e = query_escape(&epoch);
    let from_3 = history(&a, room, &format!("since=3&epoch={e}")).await;
    assert_eq!(from_3["recovered"], false, "{from_3}");
    // The watcher, subscribed all along, is told of no gap: offset 6 follows 5.
    let (status, body) = a
        .post_json(
            &format!("/publish/{room}"),
            &json!({"type": "t", "data": 6}),
        )
        .await;
    assert_eq!(
        (status, u64_at(&body, "/offset"), &body["epoch"]),
        (200, 6, &json!(epoch))
    );
    let frame = watcher.recv_json(EVENT_TIMEOUT).await;
    assert_eq!(
        frame["op"], "event",
        "no gap after an idle room's history expired: {frame}"
    );
    assert_eq!(
        (u64_at(&frame, "/event/offset"), &frame["event"]["epoch"]),
        (6, &json!(epoch))
    );
}

async fn a_long_run_into_one_room_keeps_the_memory_flat(redis: Option<&RedisServer>) {
    // The watcher shares the machine with the publisher and the other tests: a deeper
    // outbound queue keeps a moment's starvation from closing it as a slow consumer
    // (this test is about memory, not about slow consumers).
    let (a, prefix) = server(redis, "long-run", &[("LIMIT_OUTBOUND_FRAMES", "20000")]).await;
    let room = "chat:long-run";
    let mut watcher = WsClient::connect(&a).await;
    let reply = watcher
        .request(json!({"op": "subscribe", "room": room}))
        .await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    let mut publisher = WsClient::connect(&a).await;
    let started = Instant::now();

    let long_run = if redis.is_some() {
        LONG_RUN_REDIS
    } else {
        LONG_RUN_MEMORY
    };
    let (offsets, _) = publish_and_watch(&mut publisher, &mut watcher, room, 1, WARM_UP).await;
    assert_eq!(offsets, (1..=WARM_UP).collect::<Vec<_>>());
    let baseline = a.rss_kib();
    let mut redis_at_warm_up = None;
    if let Some(redis) = redis {
        let used = history_bytes(redis, &prefix, room).await;
        let keys = query_int(redis, &["DBSIZE"]).await;
        redis_at_warm_up = Some((used, keys));
    }
    let rest = long_run - WARM_UP;
    let (offsets, _) =
        publish_and_watch(&mut publisher, &mut watcher, room, WARM_UP + 1, rest).await;
    assert_eq!(offsets, (WARM_UP + 1..=long_run).collect::<Vec<_>>());
    let grown = a.rss_kib().saturating_sub(baseline);
    eprintln!(
        "long run: {long_run} publishes in {:?}; RSS {baseline} KiB after {WARM_UP}, +{grown} KiB after",
        started.elapsed()
    );
    assert!(grown < RSS_GROWTH_LIMIT_KIB, "RSS grew {grown} KiB");
    let latest = history(&a, room, "limit=1000").await;
    assert_eq!(
        offsets_of(&latest),
        (long_run - 999..=long_run).collect::<Vec<_>>()
    );
    if let (Some(redis), Some((used_then, keys_then))) = (redis, redis_at_warm_up) {
        assert_history_length(redis, &prefix, room, 1000).await;
        let used = history_bytes(redis, &prefix, room).await;
        let keys = query_int(redis, &["DBSIZE"]).await;
        eprintln!(
            "long run: the history took {used_then} bytes after {WARM_UP} publishes and \
             {used} after {long_run}; Redis holds {keys} keys (then {keys_then})"
        );
        assert!(
            used <= MOST_HISTORY_GROWTH * used_then,
            "the history grew from {used_then} to {used} bytes"
        );
        assert_eq!(keys, keys_then, "keys were added by the run");
    }
}

/// Publishes `count` events while `watcher` reads them: its offsets must run on from
/// `first`, in order. Returns the offsets answered to the publisher, sorted.
async fn publish_and_watch(
    publisher: &mut WsClient,
    watcher: &mut WsClient,
    room: &str,
    first: u64,
    count: u64,
) -> (Vec<u64>, String) {
    let watch = async {
        for expected in first..first + count {
            let frame = watcher.recv_json(EVENT_TIMEOUT).await;
            assert_eq!(frame["op"], "event", "{frame}");
            assert_eq!(u64_at(&frame, "/event/offset"), expected, "{frame}");
        }
    };
    let (answered, ()) = join(publish_pipelined(publisher, room, count), watch).await;
    answered
}

/// `value` percent-encoded for a URL query: an epoch is opaque.
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
