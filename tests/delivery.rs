//! Delivery of events: across servers, once per subscriber, per room, from any
//! publisher, and the Redis subscriptions that follow the local subscribers (§1, §2).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{now_ms, u64_at, unique_prefix, wait_until, RedisServer, Server, WsClient};

const EVENT_TIMEOUT: Duration = Duration::from_secs(5);
const SETTLE: Duration = Duration::from_secs(3);

async fn server(redis: &RedisServer, prefix: &str, id: &str) -> Server {
    support::server::on_redis(redis, prefix, id).await
}

/// Checks an envelope published by a Switchboard server: `type`, `data`, the
/// publisher's `serverId` and a `timestamp` taken between `after` and now.
fn assert_envelope(event: &Value, kind: &str, data: &Value, server_id: &str, after: u64) {
    assert_eq!(event["type"], kind, "{event}");
    assert_eq!(&event["data"], data, "{event}");
    assert_eq!(event["serverId"], server_id, "{event}");
    let timestamp = u64_at(event, "/timestamp");
    assert!(
        (after..=now_ms()).contains(&timestamp),
        "timestamp {timestamp} not taken during the publish: {event}"
    );
}

#[actix_web::test]
async fn ws_and_http_publishes_on_one_server_reach_a_subscriber_on_another() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("delivery");
    let a = server(&redis, &prefix, "A-delivery").await;
    let b = server(&redis, &prefix, "B-delivery").await;
    let mut subscriber = WsClient::connect(&b).await;
    subscriber.subscribe("match:42").await;
    let mut publisher = WsClient::connect(&a).await;

    let before = now_ms();
    publisher
        .publish("match:42", "match_started", json!({"id": 42}))
        .await;
    let frame = subscriber.recv_event("match:42", EVENT_TIMEOUT).await;
    assert_eq!(frame["op"], "event");
    assert_envelope(
        &frame["event"],
        "match_started",
        &json!({"id": 42}),
        a.id(),
        before,
    );

    let before = now_ms();
    let body = json!({"type": "match_updated", "data": {"score": [1, 0]}});
    let (status, reply) = a.post_json("/publish/match:42", &body).await;
    assert_eq!((status, &reply), (200, &json!({"ok": true})));
    let frame = subscriber.recv_event("match:42", EVENT_TIMEOUT).await;
    let data = json!({"score": [1, 0]});
    assert_envelope(&frame["event"], "match_updated", &data, a.id(), before);
}

/// Local delivery plus echo suppression: one copy for every subscriber on the
/// publishing server, the publisher's own session included. The marker goes through
/// Redis after the event, so an unsuppressed echo would arrive before it.
#[actix_web::test]
async fn subscribers_on_the_publishing_server_get_exactly_one_copy() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("once");
    let a = server(&redis, &prefix, "A-once").await;
    let mut subscriber = WsClient::connect(&a).await;
    subscriber.subscribe("room").await;
    let mut publisher = WsClient::connect(&a).await;
    publisher.subscribe("room").await;
    let skipped_before = u64_at(&a.stats().await, "/subscriber/echoSkipped");

    publisher.publish("room", "first", json!(1)).await;
    let marker = json!({"type": "marker", "data": null});
    redis
        .publish(&format!("{prefix}room"), &marker.to_string())
        .await;

    for client in [&mut subscriber, &mut publisher] {
        let first = client.recv_event("room", EVENT_TIMEOUT).await;
        assert_eq!(first["event"]["type"], "first", "{first}");
        let next = client.recv_event("room", EVENT_TIMEOUT).await;
        assert_eq!(
            next["event"], marker,
            "a second copy arrived before the marker"
        );
    }
    wait_until(SETTLE, "echoSkipped grows", || async {
        u64_at(&a.stats().await, "/subscriber/echoSkipped") > skipped_before
    })
    .await;
}

/// Nothing from room Y reaches a client of room X, whether published locally or
/// arriving from Redis; the marker in X proves nothing came before it.
#[actix_web::test]
async fn a_subscriber_gets_nothing_from_other_rooms() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("isolation");
    let a = server(&redis, &prefix, "A-isolation").await;
    let mut x = WsClient::connect(&a).await;
    x.subscribe("room:x").await;
    let mut y = WsClient::connect(&a).await;
    y.subscribe("room:y").await;

    let other = json!({"type": "other", "data": 1});
    let (status, _) = a.post_json("/publish/room:y", &other).await;
    assert_eq!(status, 200);
    redis
        .publish(&format!("{prefix}room:y"), &other.to_string())
        .await;
    let marker = json!({"type": "marker", "data": 2});
    redis
        .publish(&format!("{prefix}room:x"), &marker.to_string())
        .await;

    let next = x.recv_json(EVENT_TIMEOUT).await;
    assert_eq!(
        next,
        json!({"op": "event", "room": "room:x", "event": marker})
    );
    // Y did get both of its events: the room exists, it is just not X's.
    for _ in 0..2 {
        let event = y.recv_event("room:y", EVENT_TIMEOUT).await;
        assert_eq!(event["event"]["type"], "other");
    }
}

/// `activeSubscriptions` as a number (the seed's form).
async fn active_subscriptions(server: &Server) -> u64 {
    u64_at(&server.health().await.1, "/activeSubscriptions")
}

#[actix_web::test]
async fn the_redis_subscription_lives_while_any_local_subscriber_wants_the_room() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("refcount");
    let a = server(&redis, &prefix, "A-refcount").await;
    let channel = format!("{prefix}scores");
    let system = format!("{prefix}system:events");
    a.wait_healthy().await;
    let baseline = active_subscriptions(&a).await;
    assert!(redis.pubsub_channels().await.contains(&system));

    let mut first = WsClient::connect(&a).await;
    let mut second = WsClient::connect(&a).await;
    first.subscribe("scores").await;
    second.subscribe("scores").await;
    let channels = redis.pubsub_channels().await;
    assert!(channels.contains(&channel), "{channels:?}");
    assert_eq!(active_subscriptions(&a).await, baseline + 1);

    first.unsubscribe("scores").await;
    // Still held: an event through Redis still reaches the remaining subscriber.
    let still = json!({"type": "still_here", "data": null});
    redis.publish(&channel, &still.to_string()).await;
    assert_eq!(
        second.recv_event("scores", EVENT_TIMEOUT).await["event"],
        still
    );
    assert!(redis.pubsub_channels().await.contains(&channel));
    assert_eq!(active_subscriptions(&a).await, baseline + 1);

    second.close();
    wait_until(SETTLE, "the channel is unsubscribed in Redis", || async {
        !redis.pubsub_channels().await.contains(&channel)
    })
    .await;
    assert_eq!(active_subscriptions(&a).await, baseline);
    assert!(
        redis.pubsub_channels().await.contains(&system),
        "system:events dropped"
    );
}

#[actix_web::test]
async fn a_plain_redis_publish_is_delivered_verbatim() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("verbatim");
    let a = server(&redis, &prefix, "A-verbatim").await;
    let mut client = WsClient::connect(&a).await;
    client.subscribe("match:events").await;

    let envelope = json!({"type": "match_started", "data": {"id": 1}, "extra": "kept"});
    let receivers = redis
        .publish(&format!("{prefix}match:events"), &envelope.to_string())
        .await;
    assert_eq!(
        receivers, 1,
        "the server's subscription should be the only receiver"
    );
    let frame = client.recv_json(EVENT_TIMEOUT).await;
    assert_eq!(
        frame,
        json!({"op": "event", "room": "match:events", "event": envelope})
    );
}

#[actix_web::test]
async fn invalid_events_are_skipped_and_counted() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("invalid");
    let a = server(&redis, &prefix, "A-invalid").await;
    let mut client = WsClient::connect(&a).await;
    client.subscribe("feed").await;
    a.reset_stats().await;

    let channel = format!("{prefix}feed");
    for bad in ["not json", "[1,2]", r#"{"type":""}"#, r#"{"data":1}"#] {
        redis.publish(&channel, bad).await;
    }
    let good = json!({"type": "ok", "data": "after the bad ones"});
    redis.publish(&channel, &good.to_string()).await;

    let next = client.recv_json(EVENT_TIMEOUT).await;
    assert_eq!(next, json!({"op": "event", "room": "feed", "event": good}));
    wait_until(SETTLE, "four failed events are counted", || async {
        let stats = a.stats().await;
        stats["subscriber"]["failedEvents"] == 4
            && stats["subscriber"]["channelStats"]["feed"]["failed"] == 4
    })
    .await;
    client.assert_alive().await;
}

/// `/stats` `stages` (issue 8, item 14): a sample of the events from Redis is timed at
/// each stage of its way to the socket, and every publish pipeline's round trip.
#[actix_web::test]
async fn the_stages_of_a_delivery_are_timed_for_a_sample_of_the_events() {
    const EVENTS: u64 = 64;
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("stages");
    let a = server(&redis, &prefix, "A-stages").await;
    let b = server(&redis, &prefix, "B-stages").await;
    let mut subscriber = WsClient::connect(&b).await;
    subscriber.subscribe("timed").await;
    for n in 0..EVENTS {
        let (status, reply) = a
            .post_json("/publish/timed", &json!({"type": "n", "data": n}))
            .await;
        assert_eq!(status, 200, "{reply}");
    }
    for _ in 0..EVENTS {
        subscriber.recv_event("timed", EVENT_TIMEOUT).await;
    }
    let stages = wait_until_stages(&b, "sessionToSocket").await;
    eprintln!("stages on B: {stages}");
    for stage in ["redisToBroker", "brokerToSession", "sessionToSocket"] {
        let count = u64_at(&stages, &format!("/{stage}/count"));
        assert!((1..=EVENTS).contains(&count), "{stage}: {stages}");
        let (p50, p99) = (
            u64_at(&stages, &format!("/{stage}/p50Us")),
            u64_at(&stages, &format!("/{stage}/p99Us")),
        );
        assert!(0 < p50 && p50 <= p99, "{stage}: {stages}");
    }
    let on_a = a.stats().await;
    assert!(
        u64_at(&on_a, "/stages/publishRoundTrip/count") >= 1,
        "{on_a}"
    );
    b.reset_stats().await;
    let reset = b.stats().await;
    assert_eq!(u64_at(&reset, "/stages/redisToBroker/count"), 0, "{reset}");
}

/// B's `stages` once `stage` has a sample (the socket stage is recorded as the
/// frame is handed to the socket, which may follow the client's read by a moment).
async fn wait_until_stages(server: &Server, stage: &str) -> Value {
    let pointer = format!("/stages/{stage}/count");
    wait_until(EVENT_TIMEOUT, "a timed sample", || async {
        u64_at(&server.stats().await, &pointer) > 0
    })
    .await;
    server.stats().await["stages"].clone()
}
