//! Refused frames: every error code of §2 that needs no Redis fault, each echoing the
//! frame's `ref` and leaving the connection open; and the frame size limit (close 1009).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{
    unique_prefix, wait_until, RawWs, RedisServer, Server, ServerBuilder, WsClient, REPLY_TIMEOUT,
};

/// Small enough that a test event can exceed it while its frame stays under the frame limit.
const EVENT_LIMIT: usize = 1024;
/// The default `LIMIT_FRAME_BYTES`.
const FRAME_LIMIT: usize = 64 * 1024;

async fn server(redis: &RedisServer, test: &str) -> Server {
    ServerBuilder::new()
        .redis(redis, &unique_prefix(test))
        .id(&format!("A-{test}"))
        .env("LIMIT_EVENT_BYTES", &EVENT_LIMIT.to_string())
        .spawn()
        .await
}

/// Sends `frame` (a `ref` is added) and checks the reply is `error` `code` with that
/// `ref` and a message, then that the session still answers `ping`.
async fn assert_refused(client: &mut WsClient, frame: Value, code: &str) {
    let reply = client.request(frame.clone()).await;
    assert_eq!(reply["op"], "error", "{frame} answered {reply}");
    assert_eq!(reply["code"], code, "{frame} answered {reply}");
    assert!(
        reply["message"].is_string(),
        "error without a message: {reply}"
    );
    client.assert_alive().await;
}

/// Sends raw text that cannot carry a `ref`; the next frame must be error `code`.
async fn assert_text_refused(client: &mut WsClient, text: &str, code: &str) {
    client.send_text(text);
    let reply = client.recv_json(REPLY_TIMEOUT).await;
    assert_eq!(
        (&reply["op"], &reply["code"]),
        (&json!("error"), &json!(code)),
        "{text:?}: {reply}"
    );
    client.assert_alive().await;
}

#[actix_web::test]
async fn malformed_frames_get_bad_frame_and_the_connection_stays_open() {
    let redis = RedisServer::start().await;
    let a = server(&redis, "bad-frame").await;
    let mut client = WsClient::connect(&a).await;

    assert_text_refused(&mut client, "not json", "bad_frame").await;
    assert_text_refused(&mut client, "[1,2]", "bad_frame").await;
    assert_text_refused(&mut client, "\"subscribe\"", "bad_frame").await;
    client.send_binary(br#"{"op":"ping"}"#);
    let reply = client.recv_json(REPLY_TIMEOUT).await;
    assert_eq!(reply["code"], "bad_frame", "binary frame answered {reply}");
    client.assert_alive().await;

    let bad = [
        json!({"room": "no-op"}),
        json!({"op": "subscribe"}),
        json!({"op": "subscribe", "room": 5}),
        json!({"op": "unsubscribe", "room": ["a"]}),
        json!({"op": "publish", "room": "r"}),
        json!({"op": "publish", "room": "r", "event": "not an object"}),
    ];
    for frame in bad {
        assert_refused(&mut client, frame, "bad_frame").await;
    }
    assert_refused(&mut client, json!({"op": "dance"}), "unknown_op").await;
}

#[actix_web::test]
async fn bad_rooms_are_refused_and_the_longest_valid_room_is_not() {
    let redis = RedisServer::start().await;
    let a = server(&redis, "bad-room").await;
    let mut client = WsClient::connect(&a).await;
    let too_long = "r".repeat(201);
    for room in ["", too_long.as_str(), "a b", "room/1", "caf\u{e9}", "x*"] {
        assert_refused(
            &mut client,
            json!({"op": "subscribe", "room": room}),
            "bad_room",
        )
        .await;
        let event = json!({"type": "t", "data": null});
        let publish = json!({"op": "publish", "room": room, "event": event});
        assert_refused(&mut client, publish, "bad_room").await;
    }
    let longest = format!("A-z_0.9:-{}", "r".repeat(191));
    assert_eq!(longest.len(), 200);
    client.subscribe(&longest).await;
}

#[actix_web::test]
async fn oversized_events_and_system_rooms_are_refused() {
    let redis = RedisServer::start().await;
    let a = server(&redis, "refused").await;
    let mut client = WsClient::connect(&a).await;

    let big = json!({"type": "big", "data": "x".repeat(EVENT_LIMIT * 2)});
    let frame = json!({"op": "publish", "room": "r", "event": big});
    assert_refused(&mut client, frame, "too_large").await;
    client
        .publish("r", "small", json!("x".repeat(EVENT_LIMIT / 2)))
        .await;

    for room in ["system:events", "system:anything"] {
        let event = json!({"type": "server_stopped", "data": {"serverId": "B"}});
        let frame = json!({"op": "publish", "room": room, "event": event});
        assert_refused(&mut client, frame, "not_allowed").await;
    }
    // Listening to the servers' own room is allowed.
    client.subscribe("system:events").await;
}

#[actix_web::test]
async fn unsubscribe_and_repeated_subscribe_answer_and_count_once() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("twice");
    let a = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("A-twice")
        .spawn()
        .await;
    let mut client = WsClient::connect(&a).await;

    client.unsubscribe("never:joined").await;
    client.subscribe("dup").await;
    client.subscribe("dup").await;
    let channel = format!("{prefix}dup");
    assert!(redis.pubsub_channels().await.contains(&channel));
    // Counted once: one unsubscribe releases the room.
    client.unsubscribe("dup").await;
    wait_until(
        Duration::from_secs(3),
        "the room is released in Redis",
        || async { !redis.pubsub_channels().await.contains(&channel) },
    )
    .await;
    client.assert_alive().await;
}

#[actix_web::test]
async fn a_message_over_the_frame_limit_closes_with_1009_and_only_that_client() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("frame");
    let a = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("A-frame")
        .spawn()
        .await;
    let mut bystander = WsClient::connect(&a).await;
    bystander.subscribe("room").await;

    // Just under the limit: an ordinary refusal (the event is over LIMIT_EVENT_BYTES).
    let mut client = WsClient::connect(&a).await;
    client.send_text(&publish_frame_of_len(FRAME_LIMIT - 64));
    let reply = client.recv_json(REPLY_TIMEOUT).await;
    assert_eq!(reply["code"], "too_large", "{reply}");
    client.assert_alive().await;

    client.send_text(&publish_frame_of_len(FRAME_LIMIT + 64));
    assert_eq!(client.recv_close(REPLY_TIMEOUT).await, Some(1009));

    // Fragments of one message count together.
    let mut raw = RawWs::connect(&a, None).await;
    let text = publish_frame_of_len(FRAME_LIMIT + 64);
    let (first, rest) = text.split_at(FRAME_LIMIT / 2);
    raw.send_fragmented_text(&[first, rest]).await;
    let close = raw.read_frame(REPLY_TIMEOUT).await;
    assert_eq!(
        close.close_code(),
        Some(1009),
        "fragmented message answered {close:?}"
    );

    bystander.assert_alive().await;
    let mut publisher = WsClient::connect(&a).await;
    publisher.publish("room", "after", json!(null)).await;
    assert_eq!(
        bystander.recv_event("room", REPLY_TIMEOUT).await["event"]["type"],
        "after"
    );
}

/// A `publish` frame of exactly `len` bytes (the padding is in the event's data).
fn publish_frame_of_len(len: usize) -> String {
    let empty = json!({"op": "publish", "room": "r", "event": {"type": "big", "data": ""}});
    let padding = len - empty.to_string().len();
    let frame = json!({"op": "publish", "room": "r", "event": {"type": "big", "data": "x".repeat(padding)}});
    let text = frame.to_string();
    assert_eq!(text.len(), len);
    text
}
