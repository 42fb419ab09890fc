//! The HTTP surface (§3): `POST /publish/{room}` answers, `/health`, `/health/live`,
//! `/stats` and `/stats/reset`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{u64_at, unique_prefix, wait_until, RedisServer, Server, ServerBuilder, WsClient};

const EVENT_LIMIT: usize = 1024;

/// A server whose heartbeats (which are publishes) cannot move the counters mid-test.
async fn quiet_server(redis: &RedisServer, test: &str) -> Server {
    ServerBuilder::new()
        .redis(redis, &unique_prefix(test))
        .id(&format!("A-{test}"))
        .env("PEER_HEARTBEAT_MS", "60000")
        .env("LIMIT_EVENT_BYTES", &EVENT_LIMIT.to_string())
        .spawn()
        .await
}

fn assert_refused(status: u16, body: &Value, expected: u16, what: &str) {
    assert_eq!(status, expected, "{what}: {body}");
    assert_eq!(body["ok"], false, "{what}: {body}");
    assert!(body["error"].is_string(), "{what}: {body}");
}

#[actix_web::test]
async fn publish_refuses_bad_bodies_rooms_system_rooms_and_oversized_events() {
    let redis = RedisServer::start().await;
    let a = quiet_server(&redis, "http-publish").await;

    let (status, body) = a.post_raw("/publish/room", "{not json").await;
    assert_refused(status, &body, 400, "invalid JSON");
    let (status, body) = a.post_json("/publish/room", &json!({"data": 1})).await;
    assert_refused(status, &body, 400, "missing type");
    let (status, body) = a
        .post_json("/publish/room", &json!({"type": "", "data": 1}))
        .await;
    assert_refused(status, &body, 400, "empty type");
    let (status, body) = a.post_json("/publish/room", &json!([1, 2])).await;
    assert_refused(status, &body, 400, "array body");
    let event = json!({"type": "t", "data": 1});
    for room in ["a%20b", &"r".repeat(201), "caf%C3%A9"] {
        let (status, body) = a.post_json(&format!("/publish/{room}"), &event).await;
        assert_refused(status, &body, 400, room);
    }

    let (status, body) = a.post_json("/publish/system:events", &event).await;
    assert_eq!(status, 403, "system room: {body}");
    let big = json!({"type": "big", "data": "x".repeat(EVENT_LIMIT * 2)});
    let (status, body) = a.post_json("/publish/room", &big).await;
    assert_eq!(status, 413, "oversized event: {body}");

    let (status, body) = a.post_json("/publish/room", &event).await;
    assert_eq!((status, body), (200, json!({"ok": true})));
}

#[actix_web::test]
async fn health_and_liveness_report_the_documented_fields() {
    let redis = RedisServer::start().await;
    let a = quiet_server(&redis, "health").await;
    a.wait_healthy().await;
    let (status, health) = a.health().await;
    assert_eq!(status, 200, "{health}");
    for (field, value) in [
        ("isHealthy", json!(true)),
        ("publisherReady", json!(true)),
        ("subscriberReady", json!(true)),
        ("serverId", json!("A-health")),
        ("backplane", json!("redis")),
        ("reconnectAttempts", json!(0)),
        ("peers", json!([])),
    ] {
        assert_eq!(health[field], value, "/health {field}: {health}");
    }
    assert!(health["activeSubscriptions"].is_u64(), "{health}");
    let (status, _) = a.get_json("/health/live").await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn stats_count_publishes_deliveries_and_connections_and_reset_clears_them() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("stats");
    let a = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("A-stats")
        .env("PEER_HEARTBEAT_MS", "60000")
        .spawn()
        .await;
    a.wait_healthy().await;
    // The server's own `server_started` may still be on its way (a retry, on a busy
    // machine): it must be counted before the reset, or it lands in the counts below.
    wait_until(
        Duration::from_secs(5),
        "server_started is counted",
        || async { a.stats().await["publisher"]["successfulPublishes"] == 1 },
    )
    .await;
    let mut client = WsClient::connect(&a).await;
    client.subscribe("room").await;
    a.reset_stats().await;

    let (status, _) = a
        .post_json("/publish/room", &json!({"type": "t", "data": 1}))
        .await;
    assert_eq!(status, 200);
    redis
        .publish(&format!("{prefix}room"), r#"{"type":"outside","data":2}"#)
        .await;
    for _ in 0..2 {
        client.recv_event("room", Duration::from_secs(5)).await;
    }
    wait_until(
        Duration::from_secs(3),
        "the Redis message is counted",
        || async { a.stats().await["subscriber"]["processedEvents"] == 1 },
    )
    .await;

    let stats = a.stats().await;
    assert_counts(
        &stats,
        "/publisher",
        &[("totalPublished", 1), ("successfulPublishes", 1)],
    );
    assert_counts(
        &stats,
        "/publisher",
        &[("failedPublishes", 0), ("retries", 0)],
    );
    assert_counts(
        &stats,
        "/publisher/channelStats/room",
        &[("published", 1), ("failed", 0)],
    );
    assert_counts(
        &stats,
        "/subscriber",
        &[("totalReceived", 1), ("failedEvents", 0)],
    );
    assert_counts(
        &stats,
        "/subscriber/channelStats/room",
        &[("received", 1), ("failed", 0)],
    );
    assert_counts(
        &stats,
        "/connections",
        &[("open", 1), ("slowConsumerCloses", 0)],
    );
    assert!(stats["publisher"]["lastPublishTime"].is_u64(), "{stats}");
    assert!(stats["subscriber"]["lastReceiveTime"].is_u64(), "{stats}");
    assert!(stats["subscriber"]["echoSkipped"].is_u64(), "{stats}");

    a.reset_stats().await;
    let stats = a.stats().await;
    assert_reset(&stats);
    assert_eq!(
        u64_at(&stats, "/connections/open"),
        1,
        "open connections survive a reset"
    );
}

fn assert_counts(stats: &Value, at: &str, expected: &[(&str, u64)]) {
    for (field, value) in expected {
        assert_eq!(
            u64_at(stats, &format!("{at}/{field}")),
            *value,
            "{at}/{field}: {stats}"
        );
    }
}

/// Every counter zero (per-room ones zero or gone) and every time `null`.
fn assert_reset(stats: &Value) {
    let publisher = [
        "totalPublished",
        "successfulPublishes",
        "failedPublishes",
        "retries",
    ];
    assert_counts(stats, "/publisher", &publisher.map(|f| (f, 0)));
    let subscriber = [
        "totalReceived",
        "processedEvents",
        "failedEvents",
        "echoSkipped",
    ];
    assert_counts(stats, "/subscriber", &subscriber.map(|f| (f, 0)));
    assert_counts(stats, "/connections", &[("slowConsumerCloses", 0)]);
    assert_eq!(
        stats["publisher"]["lastPublishTime"],
        Value::Null,
        "{stats}"
    );
    assert_eq!(
        stats["subscriber"]["lastReceiveTime"],
        Value::Null,
        "{stats}"
    );
    for side in ["publisher", "subscriber"] {
        let rooms = stats[side]["channelStats"]
            .as_object()
            .unwrap_or_else(|| panic!("{side}.channelStats is not an object: {stats}"));
        for (room, counts) in rooms {
            let all_zero = counts
                .as_object()
                .is_some_and(|c| c.values().all(|v| v == 0));
            assert!(all_zero, "{side}.channelStats.{room} not reset: {stats}");
        }
    }
}
