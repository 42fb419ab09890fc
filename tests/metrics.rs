//! `GET /metrics` (PROTOCOL.md §10): a live scrape passes `promtool check metrics`,
//! every family is in the first scrape, the counters move as a scripted workload says
//! (and never back, across `POST /stats/reset`), a lost pub/sub link and a slow
//! consumer are counted, `SERVICE_TOKEN` guards it, and the memory backplane serves
//! it too.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{
    unique_prefix, wait_until, RawWs, RedisServer, Server, ServerBuilder, WsClient, REPLY_TIMEOUT,
};

/// What PROTOCOL.md §10 asks for, with each known label value.
const REQUIRED_SERIES: &[&str] = &[
    "switchboard_connections",
    "switchboard_subscriptions",
    "switchboard_rooms",
    r#"switchboard_events_published_total{result="ok"}"#,
    r#"switchboard_events_published_total{result="failed"}"#,
    "switchboard_events_received_total",
    "switchboard_deliveries_total",
    r#"switchboard_redis_reconnects_total{link="publisher"}"#,
    r#"switchboard_redis_reconnects_total{link="subscriber"}"#,
    r#"switchboard_gaps_total{reason="link_lost"}"#,
    r#"switchboard_gaps_total{reason="history_lost"}"#,
    r#"switchboard_gaps_total{reason="overloaded"}"#,
    "switchboard_slow_consumer_closes_total",
    r#"switchboard_redis_link_up{link="publisher"}"#,
    r#"switchboard_redis_link_up{link="subscriber"}"#,
    "switchboard_publish_duration_seconds_count",
    "switchboard_publish_duration_seconds_sum",
    r#"switchboard_publish_duration_seconds_bucket{le="+Inf"}"#,
];

const PUBLISHED_OK: &str = r#"switchboard_events_published_total{result="ok"}"#;
const DELIVERIES: &str = "switchboard_deliveries_total";
const PUBLISH_CALLS: &str = "switchboard_publish_duration_seconds_count";

/// One scrape, parsed: each series (name and labels, as written) and its value, and
/// each family's type.
struct Scrape {
    text: String,
    series: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let (mut series, mut types) = (HashMap::new(), HashMap::new());
        for line in text.lines() {
            if let Some(declared) = line.strip_prefix("# TYPE ") {
                let (name, kind) = declared.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (name, value) = line.rsplit_once(' ').expect("a sample line");
                let value = value
                    .parse()
                    .unwrap_or_else(|_| panic!("value in {line:?}"));
                series.insert(name.to_owned(), value);
            }
        }
        Scrape {
            text,
            series,
            types,
        }
    }

    fn value(&self, series: &str) -> f64 {
        *self
            .series
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in the scrape:\n{}", self.text))
    }
}

/// `GET /metrics` (200, in the Prometheus text format), parsed.
async fn scrape(server: &Server, token: Option<&str>) -> Scrape {
    let (status, content_type, text) = server.get_text("/metrics", token).await;
    assert_eq!(status, 200, "GET /metrics: {text}");
    assert_eq!(content_type, "text/plain; version=0.0.4");
    Scrape::parse(text)
}

/// Runs the real `promtool check metrics` on a scrape's text.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian's `prometheus` package; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("write the scrape to promtool");
    let output = child.wait_with_output().expect("promtool's answer");
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n---- the scrape ----\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn assert_every_family(first: &Scrape) {
    for series in REQUIRED_SERIES {
        first.value(series);
    }
    for (family, kind) in [
        ("switchboard_connections", "gauge"),
        ("switchboard_redis_link_up", "gauge"),
        ("switchboard_events_published_total", "counter"),
        ("switchboard_gaps_total", "counter"),
        ("switchboard_publish_duration_seconds", "histogram"),
    ] {
        assert_eq!(first.types[family], kind, "{family}");
    }
}

/// A Redis-backed server whose heartbeats (publishes too) cannot move the counters.
async fn quiet_server(redis: &RedisServer, test: &str) -> Server {
    ServerBuilder::new()
        .redis(redis, &unique_prefix(test))
        .id(&format!("A-{test}"))
        .env("PEER_HEARTBEAT_MS", "60000")
        .env("LIMIT_PUBLISH_RATE", "0")
        .spawn()
        .await
}

async fn publish_over_http(server: &Server, room: &str, count: u64, tag: &str) {
    for n in 0..count {
        let event = json!({"type": "counted", "data": {"tag": tag, "n": n}});
        let (status, body) = server.post_json(&format!("/publish/{room}"), &event).await;
        assert_eq!(status, 200, "publish {n}: {body}");
    }
}

async fn receive(clients: &mut [WsClient], room: &str, count: u64) {
    for client in clients.iter_mut() {
        for _ in 0..count {
            client.recv_event(room, REPLY_TIMEOUT).await;
        }
    }
}

#[actix_web::test]
async fn the_first_scrape_has_every_family_and_passes_promtool() {
    let redis = RedisServer::start().await;
    let a = quiet_server(&redis, "metrics-first").await;
    let first = scrape(&a, None).await;
    assert_every_family(&first);
    promtool_check(&first.text);

    a.wait_healthy().await;
    let mut client = WsClient::connect(&a).await;
    client.subscribe("room").await;
    publish_over_http(&a, "room", 3, "promtool").await;
    receive(std::slice::from_mut(&mut client), "room", 3).await;
    let busy = scrape(&a, None).await;
    promtool_check(&busy.text);
    assert_eq!(
        busy.value(r#"switchboard_redis_link_up{link="publisher"}"#),
        1.0
    );
    assert_eq!(
        busy.value(r#"switchboard_redis_link_up{link="subscriber"}"#),
        1.0
    );
}

/// Ten publishes to a room with two subscribers, three from a plain Redis client, a
/// reset of `/stats`, five more: each counter moves by exactly that, and none back.
#[actix_web::test]
async fn counters_follow_a_scripted_workload_and_never_go_back() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("metrics-workload");
    let a = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("A-metrics-workload")
        .env("PEER_HEARTBEAT_MS", "60000")
        .spawn()
        .await;
    a.wait_healthy().await;
    // The server's own `server_started` is a publish too: counted before the workload.
    wait_for_scrape(&a, "server_started published", |s| {
        s.value(PUBLISHED_OK) == 1.0
    })
    .await;
    let mut clients = [WsClient::connect(&a).await, WsClient::connect(&a).await];
    for client in &mut clients {
        client.subscribe("feed").await;
    }
    let before = scrape(&a, None).await;
    assert_eq!(before.value("switchboard_connections"), 2.0);
    assert_eq!(before.value("switchboard_subscriptions"), 2.0);
    assert_eq!(
        before.value("switchboard_rooms"),
        2.0,
        "feed and system:events"
    );

    publish_over_http(&a, "feed", 10, "http").await;
    receive(&mut clients, "feed", 10).await;
    for n in 0..3 {
        let event = json!({"type": "foreign", "data": n}).to_string();
        redis.publish(&format!("{prefix}feed"), &event).await;
    }
    receive(&mut clients, "feed", 3).await;
    let after = scrape(&a, None).await;
    let grew = |series: &str| after.value(series) - before.value(series);
    assert_eq!(grew(PUBLISHED_OK), 10.0);
    assert_eq!(
        grew(r#"switchboard_events_published_total{result="failed"}"#),
        0.0
    );
    assert_eq!(grew(PUBLISH_CALLS), 10.0);
    assert_eq!(grew(DELIVERIES), 2.0 * 13.0, "13 events, 2 subscribers");
    assert_eq!(
        grew("switchboard_events_received_total"),
        3.0,
        "the foreign ones (own echoes are skipped)"
    );

    a.reset_stats().await;
    assert_eq!(a.stats().await["publisher"]["successfulPublishes"], 0);
    let reset = scrape(&a, None).await;
    for (series, value) in &after.series {
        if after.types.get(series.as_str()) == Some(&"counter".to_owned()) {
            assert!(reset.value(series) >= *value, "{series} went down");
        }
    }
    assert_eq!(reset.value(PUBLISHED_OK), after.value(PUBLISHED_OK));

    publish_over_http(&a, "feed", 5, "after-reset").await;
    receive(&mut clients, "feed", 5).await;
    let last = scrape(&a, None).await;
    assert_eq!(last.value(PUBLISHED_OK) - before.value(PUBLISHED_OK), 15.0);
    assert_eq!(
        last.value(DELIVERIES) - before.value(DELIVERIES),
        2.0 * 18.0
    );

    drop(clients);
    wait_until(Duration::from_secs(5), "the sessions are gone", || async {
        let now = scrape(&a, None).await;
        now.value("switchboard_connections") == 0.0 && now.value("switchboard_subscriptions") == 0.0
    })
    .await;
}

/// `CLIENT KILL TYPE pubsub`: the subscriber link's reconnect and the `link_lost`
/// gaps of the rooms it held (the test's room and `system:events`) are counted.
#[actix_web::test]
async fn a_killed_pubsub_link_counts_a_reconnect_and_link_lost_gaps() {
    let redis = RedisServer::start().await;
    let a = quiet_server(&redis, "metrics-kill").await;
    a.wait_healthy().await;
    let mut client = WsClient::connect(&a).await;
    client.subscribe("room").await;
    let before = scrape(&a, None).await;

    let killed: u64 = redis
        .query(redis::cmd("CLIENT").arg(&["KILL", "TYPE", "pubsub"]))
        .await;
    assert_eq!(killed, 1, "one pub/sub connection to kill");
    let gap = client
        .recv_matching(REPLY_TIMEOUT, "gap", |f| f["op"] == "gap")
        .await;
    assert_eq!(gap["reason"], "link_lost");
    let reconnects = r#"switchboard_redis_reconnects_total{link="subscriber"}"#;
    let link_lost = r#"switchboard_gaps_total{reason="link_lost"}"#;
    let after = wait_for_scrape(&a, "the reconnect and both gaps counted", |s| {
        s.value(link_lost) - before.value(link_lost) == 2.0
            && s.value(r#"switchboard_redis_link_up{link="subscriber"}"#) == 1.0
    })
    .await;
    assert_eq!(after.value(reconnects) - before.value(reconnects), 1.0);
    assert_eq!(
        after.value(r#"switchboard_gaps_total{reason="history_lost"}"#),
        before.value(r#"switchboard_gaps_total{reason="history_lost"}"#)
    );
    promtool_check(&after.text);
}

async fn wait_for_scrape(server: &Server, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    support::wait_for(Duration::from_secs(10), what, || async {
        let now = scrape(server, None).await;
        done(&now).then_some(now)
    })
    .await
}

/// A client that stops reading is closed with 1013 and counted.
#[actix_web::test]
async fn a_slow_consumer_close_is_counted() {
    const MAX_EVENTS: u64 = 20_000;
    let a = ServerBuilder::new()
        .id("A-metrics-slow")
        .env("LIMIT_OUTBOUND_FRAMES", "20")
        .env("LIMIT_PUBLISH_RATE", "0")
        .env("CLIENT_TIMEOUT_MS", "120000")
        .spawn()
        .await;
    let mut slow = RawWs::connect(&a, Some(4096)).await;
    slow.send_text(r#"{"op":"subscribe","room":"feed","ref":"s"}"#)
        .await;
    slow.read_json_matching(REPLY_TIMEOUT, |f| f["op"] == "subscribed")
        .await;
    let closes = "switchboard_slow_consumer_closes_total";
    assert_eq!(scrape(&a, None).await.value(closes), 0.0);
    let mut publisher = WsClient::connect(&a).await;
    let padding = "x".repeat(1024);
    for seq in 0..MAX_EVENTS {
        publisher
            .publish("feed", "bulk", json!({"seq": seq, "pad": padding}))
            .await;
        if seq % 50 == 49 && scrape(&a, None).await.value(closes) == 1.0 {
            assert_eq!(
                slow.read_until_close(Duration::from_secs(10)).await,
                Some(1013)
            );
            return;
        }
    }
    panic!("no slow-consumer close counted after {MAX_EVENTS} events");
}

#[actix_web::test]
async fn metrics_need_the_service_token_when_it_is_set() {
    let a = ServerBuilder::new()
        .id("A-metrics-token")
        .env("SERVICE_TOKEN", "s3cret")
        .spawn()
        .await;
    let (status, _, body) = a.get_text("/metrics", None).await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, _, body) = a.get_text("/metrics", Some("wrong")).await;
    assert_eq!(status, 401, "a wrong token: {body}");
    assert_every_family(&scrape(&a, Some("s3cret")).await);
}

/// The memory backplane (no Redis): the same families, the links always up, and
/// publishes and deliveries counted the same way.
#[actix_web::test]
async fn the_memory_backplane_serves_the_same_metrics() {
    let a = ServerBuilder::new()
        .id("A-metrics-memory")
        .env("PEER_HEARTBEAT_MS", "60000")
        .spawn()
        .await;
    let first = scrape(&a, None).await;
    assert_every_family(&first);
    promtool_check(&first.text);
    assert_eq!(
        first.value(r#"switchboard_redis_link_up{link="publisher"}"#),
        1.0
    );
    let mut clients = [WsClient::connect(&a).await];
    clients[0].subscribe("feed").await;
    let before = scrape(&a, None).await;
    publish_over_http(&a, "feed", 10, "memory").await;
    receive(&mut clients, "feed", 10).await;
    let after = scrape(&a, None).await;
    assert_eq!(after.value(PUBLISHED_OK) - before.value(PUBLISHED_OK), 10.0);
    assert_eq!(after.value(DELIVERIES) - before.value(DELIVERIES), 10.0);
    assert_eq!(
        after.value(PUBLISH_CALLS) - before.value(PUBLISH_CALLS),
        10.0
    );
    assert!(
        after.text.contains(r#"backplane="memory""#),
        "{}",
        after.text
    );
}
