//! Configuration from the environment (§4): the memory backplane when no Redis is
//! configured, the `REDIS_HOST`/`REDIS_PORT` form, and bad values refused at start.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{unique_prefix, RedisServer, ServerBuilder, WsClient, REPLY_TIMEOUT};

#[actix_web::test]
async fn without_redis_settings_one_server_runs_on_the_memory_backplane() {
    let a = ServerBuilder::new().id("A-memory").spawn().await;
    let (status, health) = a.health().await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["backplane"], "memory", "{health}");
    assert_eq!(health["isHealthy"], true, "{health}");
    assert_eq!(health["peers"], json!([]), "{health}");

    let mut subscriber = WsClient::connect(&a).await;
    subscriber.subscribe("room").await;
    let mut publisher = WsClient::connect(&a).await;
    publisher.publish("room", "hello", json!({"n": 1})).await;
    let event = subscriber.recv_event("room", REPLY_TIMEOUT).await;
    assert_eq!(event["event"]["type"], "hello");
    assert_eq!(event["event"]["serverId"], "A-memory");

    let (status, reply) = a
        .post_json("/publish/room", &json!({"type": "http", "data": 2}))
        .await;
    assert_eq!((status, reply), (200, json!({"ok": true})));
    let event = subscriber.recv_event("room", REPLY_TIMEOUT).await;
    assert_eq!(event["event"]["data"], 2);
    // Exactly once: nothing echoes back on the memory backplane either.
    publisher.publish("room", "marker", json!(null)).await;
    let next = subscriber.recv_event("room", REPLY_TIMEOUT).await;
    assert_eq!(next["event"]["type"], "marker", "{next}");
}

#[actix_web::test]
async fn redis_host_and_port_select_the_redis_backplane() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("host-port");
    let a = ServerBuilder::new()
        .id("A-host-port")
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PORT", &redis.port().to_string())
        .env("REDIS_CHANNEL_PREFIX", &prefix)
        .spawn()
        .await;
    a.wait_healthy().await;
    let (status, health) = a.health().await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["backplane"], "redis", "{health}");
    assert!(redis
        .pubsub_channels()
        .await
        .contains(&format!("{prefix}system:events")));
}

/// Each bad value stops the server with status 2 and the one-line diagnosis.
#[actix_web::test]
async fn bad_settings_stop_the_server_with_status_2_naming_the_variable() {
    let cases = [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PUBLISH_RETRIES", "-1"),
        ("HEARTBEAT_INTERVAL_MS", "0"),
        ("HEARTBEAT_INTERVAL_MS", "x"),
        ("CLIENT_TIMEOUT_MS", "soon"),
        ("REDIS_URL", "ftp://x"),
        ("REDIS_PORT", "six"),
        ("LIMIT_FRAME_BYTES", "abc"),
        ("LIMIT_OUTBOUND_FRAMES", "-5"),
    ];
    let mut failures = Vec::new();
    for (name, value) in cases {
        let builder = ServerBuilder::new().id("bad-config").env(name, value);
        let (status, output) = builder.run_to_exit(Duration::from_secs(5)).await;
        let line = format!("switchboard: invalid configuration: {name}:");
        if status.and_then(|s| s.code()) != Some(2) || !output.contains(&line) {
            failures.push(format!("{name}={value}: {status:?}, output:\n{output}"));
        }
    }
    assert!(
        failures.is_empty(),
        "bad settings not refused as §4 says:\n{}",
        failures.join("\n")
    );
}
