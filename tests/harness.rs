//! Checks of the test support itself, which need no Switchboard binary: a failing
//! test elsewhere should never be a broken helper.

mod support;

use std::time::Duration;

use support::{wait_until, RedisServer};

/// The Redis helper starts a server, sees subscriptions, and survives kill + restart
/// on the same port (what the outage tests rely on).
#[actix_web::test]
async fn redis_helper_starts_kills_and_restarts_on_the_same_port() {
    let mut redis = RedisServer::start().await;
    assert_eq!(redis.publish("nobody", "{}").await, 0);
    let client = redis::Client::open(redis.url()).expect("redis URL");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub connection");
    pubsub.subscribe("harness:room").await.expect("SUBSCRIBE");
    let channels = redis.pubsub_channels().await;
    assert_eq!(channels, vec!["harness:room".to_owned()]);
    assert_eq!(redis.numsub("harness:room").await, 1);

    let port = redis.port();
    redis.kill();
    assert!(!redis.answers_ping().await, "killed redis still answers");
    redis.restart().await;
    assert_eq!(redis.port(), port);
    assert!(redis.answers_ping().await);
    wait_until(
        Duration::from_secs(2),
        "the old subscription is gone",
        || async { redis.pubsub_channels().await.is_empty() },
    )
    .await;
}
