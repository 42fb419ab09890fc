//! PROTOCOL.md §6 limits at their edges, with authentication off and on: the
//! outbound queue in bytes, the frame and event sizes, the publish rate.

mod support;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::Duration;
use support::{now_ms, u64_at, RawWs, Server, ServerBuilder, WsClient, REPLY_TIMEOUT};

const SECRET: &str = "limits-test-secret";

/// A token allowed every room, for the runs with authentication on.
fn token() -> String {
    let claims =
        json!({"sub": "u", "exp": now_ms() / 1000 + 600, "subscribe": ["**"], "publish": ["**"]});
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("a token encodes")
}

async fn server(auth: bool, limits: &[(&str, &str)]) -> Server {
    let mut builder = ServerBuilder::new().id(if auth { "limits-auth" } else { "limits-open" });
    if auth {
        builder = builder.env("AUTH_JWT_SECRET", SECRET);
    }
    for (name, value) in limits {
        builder = builder.env(name, value);
    }
    builder.spawn().await
}

/// A client, authenticated first when `auth` is on.
async fn client(server: &Server, auth: bool) -> WsClient {
    let mut client = WsClient::connect(server).await;
    if auth {
        let reply = client
            .request(json!({"op": "auth", "token": token()}))
            .await;
        assert_eq!(reply["op"], "authenticated", "{reply}");
    }
    client
}

#[actix_web::test]
async fn frame_and_event_sizes_at_their_edges() {
    for auth in [false, true] {
        let server = server(
            auth,
            &[("LIMIT_FRAME_BYTES", "4096"), ("LIMIT_EVENT_BYTES", "1024")],
        )
        .await;
        let mut c = client(&server, auth).await;
        // An event of exactly LIMIT_EVENT_BYTES passes, one byte more does not.
        let event_of = |size: usize| {
            let skeleton = json!({"type": "t", "data": ""}).to_string().len();
            json!({"type": "t", "data": "x".repeat(size - skeleton)})
        };
        let at_limit = c
            .request(json!({"op": "publish", "room": "r", "event": event_of(1024)}))
            .await;
        assert_eq!(at_limit["op"], "published", "auth {auth}: {at_limit}");
        let over = c
            .request(json!({"op": "publish", "room": "r", "event": event_of(1025)}))
            .await;
        assert_eq!(over["code"], "too_large", "auth {auth}: {over}");
        // A message of exactly LIMIT_FRAME_BYTES is read (and refused as an event);
        // one byte more closes the connection with 1009.
        let frame_of = |size: usize| {
            let skeleton = json!({"op": "ping", "pad": ""}).to_string().len();
            json!({"op": "ping", "pad": "x".repeat(size - skeleton)}).to_string()
        };
        c.send_text(&frame_of(4096));
        let pong = c.recv_json(REPLY_TIMEOUT).await;
        assert_eq!(pong["op"], "pong", "auth {auth}: {pong}");
        c.send_text(&frame_of(4097));
        assert_eq!(c.recv_close(REPLY_TIMEOUT).await, Some(1009), "auth {auth}");
    }
}

#[actix_web::test]
async fn the_publish_rate_at_its_edge() {
    for auth in [false, true] {
        let limits = [("LIMIT_PUBLISH_RATE", "1"), ("LIMIT_PUBLISH_BURST", "3")];
        let server = server(auth, &limits).await;
        let mut c = client(&server, auth).await;
        for n in 0..3 {
            c.publish("r", "t", json!(n)).await;
        }
        let refused = c.try_publish("r", "t", json!(3)).await;
        assert_eq!(refused["code"], "rate_limited", "auth {auth}: {refused}");
    }
}

/// Publishes ~1 KiB events until the server counts one slow-consumer close.
async fn flood_until_slow_close(server: &Server, publisher: &mut WsClient) -> u64 {
    let padding = "x".repeat(1024);
    for seq in 0..20_000u64 {
        publisher
            .publish("feed", "bulk", json!({"seq": seq, "pad": padding}))
            .await;
        if seq % 25 == 24 {
            let stats = server.stats().await;
            if u64_at(&stats, "/connections/slowConsumerCloses") == 1 {
                return seq + 1;
            }
        }
    }
    panic!("no slow-consumer close after 20,000 events");
}

#[actix_web::test]
async fn the_outbound_byte_limit_closes_a_slow_client_with_1013() {
    for auth in [false, true] {
        let limits = [
            ("LIMIT_OUTBOUND_BYTES", "32768"),
            ("LIMIT_OUTBOUND_FRAMES", "100000"),
            ("LIMIT_PUBLISH_RATE", "0"),
            ("CLIENT_TIMEOUT_MS", "120000"),
        ];
        let server = server(auth, &limits).await;
        let mut slow = RawWs::connect(&server, Some(4096)).await;
        if auth {
            let frame = json!({"op": "auth", "token": token()}).to_string();
            slow.send_text(&frame).await;
            slow.read_json_matching(REPLY_TIMEOUT, |f: &Value| f["op"] == "authenticated")
                .await;
        }
        slow.send_text(r#"{"op":"subscribe","room":"feed","ref":"s"}"#)
            .await;
        slow.read_json_matching(REPLY_TIMEOUT, |f: &Value| f["op"] == "subscribed")
            .await;
        let mut publisher = client(&server, auth).await;
        let published = flood_until_slow_close(&server, &mut publisher).await;
        eprintln!("auth {auth}: byte limit reached after {published} events");
        let code = slow.read_until_close(Duration::from_secs(10)).await;
        assert_eq!(code, Some(1013), "auth {auth}");
        publisher.assert_alive().await;
    }
}

/// An event from Redis larger than a client's whole outbound budget cannot be sent
/// to anyone: it is skipped, nobody is closed for it, and it is logged once, not once
/// per subscriber.
#[actix_web::test]
async fn an_event_larger_than_the_outbound_limit_is_skipped_not_fatal() {
    let redis = support::RedisServer::start().await;
    let prefix = support::unique_prefix("huge");
    let server = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("limits-huge")
        .env("LIMIT_OUTBOUND_BYTES", "16384")
        .spawn()
        .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = WsClient::connect(&server).await;
        c.subscribe("feed").await;
        clients.push(c);
    }
    let huge = json!({"type": "huge", "data": "x".repeat(40_000)}).to_string();
    redis.publish(&format!("{prefix}feed"), &huge).await;
    let small = json!({"type": "small", "data": 1}).to_string();
    redis.publish(&format!("{prefix}feed"), &small).await;
    for c in &mut clients {
        let next = c.recv_event("feed", REPLY_TIMEOUT).await;
        assert_eq!(next["event"]["type"], "small", "{next}");
        c.assert_alive().await;
    }
    let stats = server.stats().await;
    assert_eq!(u64_at(&stats, "/connections/slowConsumerCloses"), 0);
    // The warning is written before the small event is handled; the reader thread
    // may take it a moment later.
    support::wait_until(REPLY_TIMEOUT, "the warning in the log", || async {
        server.stderr_tail().contains("over LIMIT_OUTBOUND_BYTES")
    })
    .await;
    let log = server.stderr_tail();
    let warnings = log.matches("over LIMIT_OUTBOUND_BYTES").count();
    assert_eq!(
        warnings, 1,
        "one warning for one event, not one per subscriber:\n{log}"
    );
}
