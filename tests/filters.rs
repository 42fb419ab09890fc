//! Subscription filters (PROTOCOL.md §12): `subscribe` with
//! `"filter":{"types":[...],"data":{"dotted.path": value}}` lets through only the
//! room's events of a listed type whose `data` holds each path at the given value, on
//! live events from any server and on a durable room's replay; a bad filter is
//! `bad_frame`, and nothing else changes.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{unique_prefix, RedisServer, ServerBuilder, WsClient};

const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes `(type, data)` pairs into `room` in order, each answered.
async fn publish_all(publisher: &mut WsClient, room: &str, events: &[(&str, Value)]) {
    for (kind, data) in events {
        let reply = publisher
            .request(json!({"op": "publish", "room": room, "event": {"type": kind, "data": data}}))
            .await;
        assert_eq!(reply["op"], "published", "{reply}");
    }
}

/// The `(type, data.n)` of every event `client` gets in `room` up to and including
/// the one with `data.n == last`.
async fn received_until(client: &mut WsClient, room: &str, last: u64) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    loop {
        let frame = client.recv_event(room, EVENT_TIMEOUT).await;
        let event = &frame["event"];
        let n = event["data"]["n"].as_u64().expect("n");
        seen.push((event["type"].as_str().expect("type").to_owned(), n));
        if n == last {
            return seen;
        }
    }
}

fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

#[actix_web::test]
async fn each_subscriber_gets_only_what_its_filter_lets_through_from_any_server() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("filters");
    let a = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("A-filters")
        .spawn()
        .await;
    let b = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("B-filters")
        .spawn()
        .await;
    a.wait_healthy().await;
    b.wait_healthy().await;
    let room = "match:events";

    let mut eu_starts = WsClient::connect(&a).await;
    let filter = json!({"types": ["match_started"], "data": {"match.region": "eu"}});
    let reply = eu_starts
        .request(json!({"op": "subscribe", "room": room, "filter": filter}))
        .await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    let mut everything = WsClient::connect(&b).await;
    everything.subscribe(room).await;
    let mut tens = WsClient::connect(&b).await;
    let reply = tens
        .request(json!({"op": "subscribe", "room": room, "filter": {"data": {"score": 10}}}))
        .await;
    assert_eq!(reply["op"], "subscribed", "{reply}");

    let eu = |n: u64| json!({"n": n, "match": {"region": "eu"}});
    let events = [
        ("match_started", eu(1)),
        ("match_started", json!({"n": 2, "match": {"region": "us"}})),
        ("match_ended", eu(3)),
        ("score", json!({"n": 4, "score": 10})),
        ("score", json!({"n": 5, "score": 11})),
        ("score", json!({"n": 6, "score": 10.0})),
        ("match_started", json!({"n": 7, "match": "eu"})),
        (
            "match_started",
            json!({"n": 8, "score": 10, "match": {"region": "eu"}}),
        ),
    ];
    // Half from the filtered client's server, half from the other one.
    let mut on_a = WsClient::connect(&a).await;
    let mut on_b = WsClient::connect(&b).await;
    publish_all(&mut on_a, room, &events[..4]).await;
    publish_all(&mut on_b, room, &events[4..]).await;

    assert_eq!(
        received_until(&mut eu_starts, room, 8).await,
        pairs(&[("match_started", 1), ("match_started", 8)])
    );
    assert_eq!(
        received_until(&mut tens, room, 8).await,
        pairs(&[("score", 4), ("score", 6), ("match_started", 8)])
    );
    let all: Vec<(String, u64)> = events
        .iter()
        .map(|(k, d)| ((*k).to_owned(), d["n"].as_u64().expect("n")))
        .collect();
    assert_eq!(received_until(&mut everything, room, 8).await, all);

    // Subscribing again replaces the filter; without one, every event passes.
    let reply = eu_starts
        .request(json!({"op": "subscribe", "room": room, "filter": {"types": ["score"]}}))
        .await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    publish_all(
        &mut on_b,
        room,
        &[("match_started", eu(9)), ("score", json!({"n": 10}))],
    )
    .await;
    assert_eq!(
        received_until(&mut eu_starts, room, 10).await,
        pairs(&[("score", 10)])
    );
    eu_starts.subscribe(room).await;
    publish_all(&mut on_b, room, &[("match_ended", json!({"n": 11}))]).await;
    assert_eq!(
        received_until(&mut eu_starts, room, 11).await,
        pairs(&[("match_ended", 11)])
    );
}

#[actix_web::test]
async fn a_bad_filter_is_bad_frame_and_the_session_lives_on() {
    let redis = RedisServer::start().await;
    let server = ServerBuilder::new()
        .redis(&redis, &unique_prefix("bad-filter"))
        .id("A-bad-filter")
        .spawn()
        .await;
    server.wait_healthy().await;
    let mut client = WsClient::connect(&server).await;
    let mut bystander = WsClient::connect(&server).await;
    bystander.subscribe("lobby").await;
    for filter in [
        json!("match_started"),
        json!({}),
        json!({"types": []}),
        json!({"types": ["ok", 3]}),
        json!({"data": {"a..b": 1}}),
        json!({"data": ["region"]}),
        json!({"kinds": ["a"]}),
    ] {
        let reply = client
            .request(json!({"op": "subscribe", "room": "lobby", "filter": filter}))
            .await;
        assert_eq!(
            (reply["op"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("bad_frame")),
            "{filter}: {reply}"
        );
    }
    // A joined room subscribed again with a bad filter stays as it was.
    let reply = bystander
        .request(json!({"op": "subscribe", "room": "lobby", "filter": {"types": []}}))
        .await;
    assert_eq!(reply["code"], "bad_frame", "{reply}");
    // Not joined by any of them; the session and the other client carry on.
    client.assert_alive().await;
    let mut publisher = WsClient::connect(&server).await;
    publish_all(&mut publisher, "lobby", &[("hello", json!({"n": 1}))]).await;
    assert_eq!(
        bystander.recv_event("lobby", EVENT_TIMEOUT).await["event"]["type"],
        "hello"
    );
    client.expect_no_frame(Duration::from_millis(300)).await;
}

#[actix_web::test]
async fn a_recovery_replays_only_what_the_filter_lets_through() {
    let redis = RedisServer::start().await;
    let server = ServerBuilder::new()
        .redis(&redis, &unique_prefix("filter-replay"))
        .id("A-filter-replay")
        .env("DURABLE_ROOMS", "dur:*")
        .spawn()
        .await;
    server.wait_healthy().await;
    let room = "dur:feed";
    let mut client = WsClient::connect(&server).await;
    let reply = client
        .request(json!({"op": "subscribe", "room": room}))
        .await;
    let epoch = reply["epoch"].as_str().expect("an epoch").to_owned();
    client.unsubscribe(room).await;

    let mut publisher = WsClient::connect(&server).await;
    let events: Vec<(&str, Value)> = (1..=6)
        .map(|n| (if n % 2 == 1 { "odd" } else { "even" }, json!({"n": n})))
        .collect();
    publish_all(&mut publisher, room, &events).await;

    let since = json!({"offset": 0, "epoch": epoch});
    let reply = client
        .request(
            json!({"op": "subscribe", "room": room, "since": since, "filter": {"types": ["even"]}}),
        )
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let mut offsets = Vec::new();
    for _ in 0..3 {
        let frame = client.recv_event(room, EVENT_TIMEOUT).await;
        let event = &frame["event"];
        assert_eq!(event["type"], "even", "{event}");
        offsets.push(event["offset"].as_u64().expect("offset"));
    }
    assert_eq!(offsets, [2, 4, 6], "the replay, filtered");
    // Live events after the replay go through the same filter.
    publish_all(
        &mut publisher,
        room,
        &[("odd", json!({"n": 7})), ("even", json!({"n": 8}))],
    )
    .await;
    let frame = client.recv_event(room, EVENT_TIMEOUT).await;
    let event = &frame["event"];
    assert_eq!(
        (event["type"].as_str(), event["offset"].as_u64()),
        (Some("even"), Some(8))
    );
}
