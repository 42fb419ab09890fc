//! Clients that misbehave: one that stops reading is closed with 1013 once its queue
//! is full, without harming the others or the server's memory (§6); one that never
//! answers pings is dropped after `CLIENT_TIMEOUT_MS`, one that does is kept (§2).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::raw_ws::{OP_CLOSE, OP_PING};
use support::{
    u64_at, unique_prefix, RawFrame, RawWs, RedisServer, Server, ServerBuilder, WsClient,
    REPLY_TIMEOUT,
};

const OUTBOUND_FRAMES: u64 = 100;
/// Events published at most before the test gives up on seeing the slow client closed.
const MAX_EVENTS: u64 = 20_000;
/// How much the server's memory may grow while one client is not reading.
const RSS_GROWTH_LIMIT_KIB: u64 = 50 * 1024;

async fn slow_consumer_closes(server: &Server) -> u64 {
    u64_at(&server.stats().await, "/connections/slowConsumerCloses")
}

/// Publishes numbered ~1 KiB events until the server reports one slow-consumer close;
/// returns how many it published and the largest RSS seen meanwhile.
async fn flood_until_slow_close(server: &Server, publisher: &mut WsClient) -> (u64, u64) {
    let padding = "x".repeat(1024);
    let mut peak_rss = server.rss_kib();
    for seq in 0..MAX_EVENTS {
        publisher
            .publish("feed", "bulk", json!({"seq": seq, "pad": padding}))
            .await;
        if seq % 50 == 49 {
            peak_rss = peak_rss.max(server.rss_kib());
            if slow_consumer_closes(server).await == 1 {
                return (seq + 1, peak_rss);
            }
        }
    }
    panic!("no slow-consumer close after {MAX_EVENTS} events");
}

#[actix_web::test]
async fn a_client_that_stops_reading_is_closed_with_1013_and_others_get_everything() {
    let redis = RedisServer::start().await;
    let a = ServerBuilder::new()
        .redis(&redis, &unique_prefix("slow"))
        .id("A-slow")
        .env("LIMIT_OUTBOUND_FRAMES", &OUTBOUND_FRAMES.to_string())
        .env("LIMIT_PUBLISH_RATE", "0")
        // The slow client never answers pings; only its queue may get it closed.
        .env("CLIENT_TIMEOUT_MS", "120000")
        .spawn()
        .await;
    let mut slow = RawWs::connect(&a, Some(4096)).await;
    slow.send_text(r#"{"op":"subscribe","room":"feed","ref":"s"}"#)
        .await;
    slow.read_json_matching(REPLY_TIMEOUT, |f| f["op"] == "subscribed")
        .await;
    let mut steady = WsClient::connect(&a).await;
    steady.subscribe("feed").await;
    let mut publisher = WsClient::connect(&a).await;
    let rss_before = a.rss_kib();

    let (published, peak_rss) = flood_until_slow_close(&a, &mut publisher).await;
    eprintln!("slow client closed after {published} events; RSS {rss_before} -> {peak_rss} KiB");
    assert!(
        peak_rss < rss_before + RSS_GROWTH_LIMIT_KIB,
        "RSS grew to {peak_rss} KiB"
    );

    for seq in 0..published {
        let frame = steady.recv_event("feed", REPLY_TIMEOUT).await;
        assert_eq!(
            frame["event"]["data"]["seq"], seq,
            "steady client lost or reordered"
        );
    }
    steady.assert_alive().await;
    assert_eq!(slow_consumer_closes(&a).await, 1);

    let code = slow.read_until_close(Duration::from_secs(10)).await;
    assert_eq!(
        code,
        Some(1013),
        "the slow client's connection ended without close 1013"
    );
}

const HEARTBEAT: Duration = Duration::from_millis(300);
const CLIENT_TIMEOUT: Duration = Duration::from_millis(1500);

/// The raw client reads (so it sees the pings) but never answers them.
#[actix_web::test]
async fn a_client_that_never_answers_pings_is_dropped_and_one_that_does_is_kept() {
    let a = ServerBuilder::new()
        .id("A-heartbeat")
        .env("HEARTBEAT_INTERVAL_MS", &HEARTBEAT.as_millis().to_string())
        .env("CLIENT_TIMEOUT_MS", &CLIENT_TIMEOUT.as_millis().to_string())
        .spawn()
        .await;
    let mut polite = WsClient::connect(&a).await;
    let connected = Instant::now();
    let mut mute = RawWs::connect(&a, None).await;

    let mut pings = 0;
    let limit = CLIENT_TIMEOUT + HEARTBEAT + Duration::from_secs(2);
    loop {
        let left = limit.saturating_sub(connected.elapsed());
        assert!(
            !left.is_zero(),
            "a client that never answers pings was not dropped"
        );
        match mute.read_frame(left).await {
            RawFrame::Frame {
                opcode: OP_PING, ..
            } => pings += 1,
            RawFrame::Frame {
                opcode: OP_CLOSE, ..
            }
            | RawFrame::Eof => break,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    let dropped_after = connected.elapsed();
    eprintln!("mute client dropped after {dropped_after:?}, {pings} pings seen");
    assert!(
        pings >= 1,
        "the server sent no ping before dropping the client"
    );
    assert!(
        dropped_after >= CLIENT_TIMEOUT - Duration::from_millis(100),
        "dropped early"
    );

    // Idle past twice the timeout: the elapsed time is the scenario, not a condition.
    tokio::time::sleep((CLIENT_TIMEOUT * 2).saturating_sub(connected.elapsed())).await;
    polite.assert_alive().await;
    assert!(polite.pings_seen() >= 1, "the polite client saw no ping");
}
