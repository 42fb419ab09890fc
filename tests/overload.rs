//! Publishes in flight are bounded per connection and per server (src/state.rs
//! `PublishGate`): a flood through HTTP and WebSocket at once, while Redis holds every
//! write, is answered call by call, the accepted ones once Redis is back and the rest
//! at once with `publish_failed` / 503, and the server's memory stays flat.

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};
use support::{u64_at, wait_until, RedisServer, ServerBuilder, WsClient};

/// Per connection and per server, small enough that the flood passes them many times.
const PER_CONNECTION: u64 = 100;
const PER_SERVER: u64 = 300;
const WS_CLIENTS: usize = 4;
const WS_PUBLISHES: usize = 4_000;
const HTTP_PUBLISHES: usize = 1_000;
/// Each event carries this much data: the flood offers about 34 MB of events.
const DATA_BYTES: usize = 2_048;
/// The server's RSS may grow this much while the flood waits on Redis. Queued without
/// a bound, the events alone would take more.
const MOST_GROWTH_KIB: u64 = 24 * 1024;

fn event(n: usize) -> Value {
    json!({"type": "flood", "data": {"n": n, "pad": "x".repeat(DATA_BYTES)}})
}

/// Whether a reply is a refusal at a bound (and not another failure).
fn is_overloaded(code: &str, message: &str) -> bool {
    code == "publish_failed" && message.contains("overloaded")
}

/// Reads the replies to `count` publishes until `until(published, refused)` holds;
/// returns (published, refused). Any other reply fails the test.
async fn read_replies(
    client: &mut WsClient,
    count: usize,
    until: impl Fn(u64, u64) -> bool,
    deadline: Duration,
) -> (u64, u64) {
    let (mut published, mut refused) = (0, 0);
    let end = Instant::now() + deadline;
    while !until(published, refused) {
        let left = end.saturating_duration_since(Instant::now());
        let reply = client.recv_json(left).await;
        match reply["op"].as_str() {
            Some("published") => published += 1,
            Some("error") => {
                let (code, message) = (reply["code"].as_str(), reply["message"].as_str());
                assert!(
                    is_overloaded(code.unwrap_or(""), message.unwrap_or("")),
                    "{reply}"
                );
                refused += 1;
            }
            _ => panic!("unexpected frame {reply}"),
        }
        assert!(
            published + refused <= count as u64,
            "more replies than calls"
        );
    }
    (published, refused)
}

/// `HTTP_PUBLISHES` POSTs at once; each answer's status and JSON body.
async fn http_flood(url: String) -> Vec<(u16, Value)> {
    let client = awc::Client::builder()
        .connector(
            awc::Connector::new()
                .conn_keep_alive(Duration::from_secs(1))
                // Every POST on its own connection, at once (awc's default is 100):
                // admitted ones hold theirs until Redis is back.
                .limit(0),
        )
        .timeout(Duration::from_secs(120))
        .finish();
    join_all((0..HTTP_PUBLISHES).map(|n| {
        let request = client.post(&url).send_json(&event(n));
        async move {
            let mut response = request.await.expect("every POST is answered");
            let body = response.body().await.expect("a body");
            let body = serde_json::from_slice(&body).expect("a JSON body");
            (response.status().as_u16(), body)
        }
    }))
    .await
}

#[actix_web::test]
async fn a_flood_through_http_and_websocket_is_bounded_and_every_call_answered() {
    let redis = RedisServer::start().await;
    let server = ServerBuilder::new()
        .redis(&redis, &support::unique_prefix("overload"))
        .id("overload")
        .env("LIMIT_PUBLISH_RATE", "0")
        .env(
            "LIMIT_CONNECTION_PUBLISHES_IN_FLIGHT",
            &PER_CONNECTION.to_string(),
        )
        .env("LIMIT_PUBLISHES_IN_FLIGHT", &PER_SERVER.to_string())
        // Replies to a whole flood may queue for a moment; that is not this test.
        .env("LIMIT_OUTBOUND_FRAMES", "20000")
        .env("LIMIT_OUTBOUND_BYTES", "16777216")
        // The held publishes must outlive the pause: the link is not dead.
        .env("REDIS_RESPONSE_TIMEOUT_MS", "300000")
        .env("PROBE_TIMEOUT_MS", "300000")
        // The test's one thread sends the whole flood before it reads: its clients
        // may not answer a ping in time.
        .env("CLIENT_TIMEOUT_MS", "60000")
        .spawn()
        .await;
    server.wait_healthy().await;
    let mut clients = Vec::new();
    for _ in 0..WS_CLIENTS {
        clients.push(WsClient::connect(&server).await);
    }
    let rss_before = server.rss_kib();
    // Ended by CLIENT UNPAUSE below, never by its own timeout, however slow the
    // machine.
    let _: () = redis
        .query(redis::cmd("CLIENT").arg(&["PAUSE", "300000", "WRITE"]))
        .await;

    let started = Instant::now();
    for client in &clients {
        for n in 0..WS_PUBLISHES {
            let frame = json!({"op": "publish", "room": "flood", "event": event(n)});
            client.send_json(&frame);
        }
    }
    let http = actix_web::rt::spawn(http_flood(format!("{}/publish/flood", server.http_url())));
    // While Redis holds every write, each connection gets at most PER_CONNECTION
    // through and the server at most PER_SERVER; the rest is refused at once.
    let total = (WS_CLIENTS * WS_PUBLISHES + HTTP_PUBLISHES) as u64;
    wait_until(
        Duration::from_secs(60),
        "every refusal answered",
        || async {
            let stats = server.stats().await;
            let refused = u64_at(&stats, "/connections/publishesRefused");
            let in_flight = u64_at(&stats, "/connections/publishesInFlight");
            refused + in_flight == total
        },
    )
    .await;
    let stats = server.stats().await;
    let in_flight = u64_at(&stats, "/connections/publishesInFlight");
    let rss_peak = server.rss_kib();
    eprintln!(
        "overload: {total} calls taken {:?} after the pause; {in_flight} in flight; RSS \
         {rss_before} -> {rss_peak} KiB",
        started.elapsed()
    );
    let published = stats.pointer("/publisher/channelStats/flood/published");
    assert!(
        published.is_none_or(|n| n == 0),
        "nothing is published while Redis is paused: {published:?}"
    );
    assert!(in_flight <= PER_SERVER, "{in_flight} in flight");
    assert!(
        rss_peak < rss_before + MOST_GROWTH_KIB,
        "RSS {rss_before} -> {rss_peak} KiB"
    );

    let _: () = redis.query(redis::cmd("CLIENT").arg("UNPAUSE")).await;
    let mut accepted = 0;
    for client in &mut clients {
        let all = |published, refused| published + refused == WS_PUBLISHES as u64;
        let (published, _) = read_replies(client, WS_PUBLISHES, all, Duration::from_secs(30)).await;
        assert!(
            published <= PER_CONNECTION,
            "{published} through one connection"
        );
        accepted += published;
    }
    let http = http.await.expect("the HTTP flood ends");
    for (status, body) in &http {
        match status {
            200 => accepted += 1,
            503 => assert!(
                is_overloaded("publish_failed", body["error"].as_str().unwrap_or("")),
                "{body}"
            ),
            other => panic!("HTTP {other}: {body}"),
        }
    }
    assert_eq!(http.len(), HTTP_PUBLISHES, "every HTTP call answered");
    let stats = server.stats().await;
    assert_eq!(u64_at(&stats, "/connections/publishesInFlight"), 0);
    assert_eq!(
        u64_at(&stats, "/publisher/channelStats/flood/published"),
        accepted,
        "every accepted call was published"
    );
    for client in &mut clients {
        client.assert_alive().await;
    }
}
