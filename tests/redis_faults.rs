//! Redis going away: publishes that fail after their retries (local subscribers still
//! served), subscriptions that cannot be confirmed, readiness, and recovery after
//! short and long outages (§2, §3, §5).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    u64_at, unique_prefix, wait_for, wait_until, RedisServer, Server, ServerBuilder, WsClient,
    REPLY_TIMEOUT,
};

const PUBLISH_RETRIES: u64 = 2;
/// How long the servers get to notice that Redis is gone (probe timeout 500 ms).
const NOTICE: Duration = Duration::from_secs(5);
/// §5: delivery resumes within about 1.5 s of Redis answering again; asserted with margin.
const RECOVERY_LIMIT: Duration = Duration::from_secs(3);

/// A server whose own heartbeats cannot disturb the publish counters under test.
async fn quiet_server(redis: &RedisServer, prefix: &str, id: &str) -> Server {
    ServerBuilder::new()
        .redis(redis, prefix)
        .id(id)
        .env("PUBLISH_RETRIES", &PUBLISH_RETRIES.to_string())
        .env("PEER_HEARTBEAT_MS", "60000")
        .spawn()
        .await
}

/// Waits until `server` reports its publisher down (and so 503 on `/health`).
async fn wait_publisher_down(server: &Server) {
    wait_until(NOTICE, "the publisher is reported down", || async {
        let (status, health) = server.health().await;
        status == 503 && health["publisherReady"] == false && health["isHealthy"] == false
    })
    .await;
}

#[actix_web::test]
async fn an_http_publish_with_redis_down_fails_after_its_retries_but_reaches_local_subscribers() {
    let mut redis = RedisServer::start().await;
    let a = quiet_server(&redis, &unique_prefix("retries"), "A-retries").await;
    let mut local = WsClient::connect(&a).await;
    local.subscribe("room").await;
    redis.kill();
    wait_publisher_down(&a).await;
    a.reset_stats().await;

    let body = json!({"type": "lost", "data": 1});
    let (status, reply) = a.post_json("/publish/room", &body).await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(reply["error"].is_string(), "{reply}");
    let event = local.recv_event("room", REPLY_TIMEOUT).await;
    assert_eq!(event["event"]["type"], "lost");

    let stats = a.stats().await;
    assert_eq!(u64_at(&stats, "/publisher/totalPublished"), 1, "{stats}");
    assert_eq!(u64_at(&stats, "/publisher/failedPublishes"), 1, "{stats}");
    assert_eq!(
        u64_at(&stats, "/publisher/successfulPublishes"),
        0,
        "{stats}"
    );
    assert_eq!(
        u64_at(&stats, "/publisher/retries"),
        PUBLISH_RETRIES,
        "{stats}"
    );
    assert_eq!(
        u64_at(&stats, "/publisher/channelStats/room/failed"),
        1,
        "{stats}"
    );
}

#[actix_web::test]
async fn a_ws_publish_with_redis_down_answers_publish_failed_and_reaches_local_subscribers() {
    let mut redis = RedisServer::start().await;
    let a = quiet_server(&redis, &unique_prefix("ws-fail"), "A-ws-fail").await;
    let mut local = WsClient::connect(&a).await;
    local.subscribe("room").await;
    let mut publisher = WsClient::connect(&a).await;
    redis.kill();
    wait_publisher_down(&a).await;

    let reply = publisher.try_publish("room", "lost", json!(2)).await;
    assert_eq!(
        (&reply["op"], &reply["code"]),
        (&json!("error"), &json!("publish_failed")),
        "{reply}"
    );
    assert_eq!(
        local.recv_event("room", REPLY_TIMEOUT).await["event"]["type"],
        "lost"
    );
    publisher.assert_alive().await;
}

/// A subscription that cannot be confirmed is refused within `SUBSCRIBE_TIMEOUT_MS`
/// and not kept: after Redis returns, the room is neither resubscribed nor delivered.
#[actix_web::test]
async fn a_subscribe_with_redis_down_answers_subscribe_failed_and_is_not_kept() {
    let mut redis = RedisServer::start().await;
    let prefix = unique_prefix("sub-fail");
    let a = quiet_server(&redis, &prefix, "A-sub-fail").await;
    let mut client = WsClient::connect(&a).await;
    client.subscribe("joined").await;
    redis.kill();
    wait_until(NOTICE, "the subscriber is reported down", || async {
        a.health().await.1["subscriberReady"] == false
    })
    .await;

    let started = Instant::now();
    let reply = client
        .request(json!({"op": "subscribe", "room": "refused"}))
        .await;
    assert_eq!(reply["code"], "subscribe_failed", "{reply}");
    assert!(
        started.elapsed() < Duration::from_millis(1000 + 1500),
        "answered late"
    );
    client.assert_alive().await;

    redis.restart().await;
    let joined = format!("{prefix}joined");
    wait_until(
        RECOVERY_LIMIT,
        "the joined room is subscribed again",
        || async { redis.pubsub_channels().await.contains(&joined) },
    )
    .await;
    assert!(!redis
        .pubsub_channels()
        .await
        .contains(&format!("{prefix}refused")));
    let refused = json!({"type": "refused", "data": null});
    redis
        .publish(&format!("{prefix}refused"), &refused.to_string())
        .await;
    let marker = json!({"type": "marker", "data": null});
    redis.publish(&joined, &marker.to_string()).await;
    // The next frame is the marker (nothing of the refused room came), after the
    // joined room's gap if that came first (PROTOCOL.md §8).
    let mut next = client.recv_json(REPLY_TIMEOUT).await;
    if next["op"] == "gap" {
        assert_eq!(next["room"], "joined", "{next}");
        next = client.recv_json(REPLY_TIMEOUT).await;
    }
    assert_eq!(next["event"], marker, "{next}");
}

#[actix_web::test]
async fn delivery_resumes_after_a_short_outage() {
    outage_and_recovery("short-outage", Duration::from_secs(1)).await;
}

#[actix_web::test]
async fn delivery_resumes_after_a_long_outage() {
    outage_and_recovery("long-outage", Duration::from_secs(20)).await;
}

/// Kills Redis for `outage`: both servers go unhealthy, count reconnect attempts, and
/// once Redis answers again resubscribe within [`RECOVERY_LIMIT`] and deliver.
async fn outage_and_recovery(test: &str, outage: Duration) {
    let mut redis = RedisServer::start().await;
    let prefix = unique_prefix(test);
    let a = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("A")
        .spawn()
        .await;
    let b = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("B")
        .spawn()
        .await;
    let mut client = WsClient::connect(&b).await;
    client.subscribe("room").await;

    redis.kill();
    let outage_started = Instant::now();
    for server in [&a, &b] {
        wait_until(NOTICE, "/health answers 503", || async {
            server.health().await.0 == 503
        })
        .await;
    }
    let attempts = u64_at(&b.health().await.1, "/reconnectAttempts");
    // Waiting out the rest of the outage is the scenario itself, not a condition.
    tokio::time::sleep(outage.saturating_sub(outage_started.elapsed())).await;
    let during = b.health().await;
    assert_eq!(during.0, 503, "{}", during.1);
    assert!(
        u64_at(&during.1, "/reconnectAttempts") >= attempts.max(1),
        "{}",
        during.1
    );

    redis.restart().await;
    let back = Instant::now();
    let channel = format!("{prefix}room");
    wait_until(RECOVERY_LIMIT, "the room is subscribed again", || async {
        redis.pubsub_channels().await.contains(&channel)
    })
    .await;
    eprintln!(
        "{test}: subscription back {:?} after Redis answered",
        back.elapsed()
    );
    for server in [&a, &b] {
        let healthy = wait_for(RECOVERY_LIMIT, "/health answers 200 again", || async {
            let (status, health) = server.health().await;
            (status == 200).then_some(health)
        })
        .await;
        assert_eq!(healthy["isHealthy"], true, "{healthy}");
    }
    eprintln!(
        "{test}: both servers healthy {:?} after Redis answered",
        back.elapsed()
    );
    wait_until(RECOVERY_LIMIT, "reconnectAttempts is back to 0", || async {
        u64_at(&b.health().await.1, "/reconnectAttempts") == 0
    })
    .await;

    let (status, reply) = a
        .post_json("/publish/room", &json!({"type": "after", "data": 1}))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        client.recv_event("room", REPLY_TIMEOUT).await["event"]["type"],
        "after"
    );
}
