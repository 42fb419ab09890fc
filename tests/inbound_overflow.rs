//! Events from Redis wait for a server's broker in a bounded queue
//! (`LIMIT_INBOUND_EVENTS`); past it they are dropped and counted. None is lost
//! silently: each subscriber of a plain room that lost events gets `gap` `overloaded`
//! before the room's next event, and a durable room reads the dropped events back, so
//! its subscribers get every offset once, in order, and no gap. The queue here holds
//! one event, so bursts of events overflow it. A link back after a lost one is told
//! (`gap` `link_lost`) before any later event of the room, however full the queue.

mod support;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::{json, Value};
use support::{u64_at, unique_prefix, wait_until, RedisServer, Server, ServerBuilder, WsClient};

/// Subscribers on the server whose queue overflows.
const SUBSCRIBERS: usize = 20;
/// Events per burst, in each room.
const BURST: u64 = 2_000;
/// Bursts at most, until the server has dropped some events.
const MOST_BURSTS: u64 = 5;
/// How long the frames of a burst may take to arrive once it was published.
const FRAMES_TIMEOUT: Duration = Duration::from_secs(20);
const PLAIN: &str = "plain:burst";
const DURABLE: &str = "dur:burst";

#[actix_web::test]
async fn events_dropped_by_a_full_inbound_queue_are_told_as_a_gap_or_read_back() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("inbound");
    let builder = |id: &str| {
        ServerBuilder::new()
            .redis(&redis, &prefix)
            .id(id)
            .env("DURABLE_ROOMS", "dur:*")
            // Every event of the run stays in the history: a server far behind can
            // read back all it dropped.
            .env("HISTORY_SIZE", "100000")
            .env("LIMIT_PUBLISH_RATE", "0")
            .env("LIMIT_CONNECTION_PUBLISHES_IN_FLIGHT", "4096")
    };
    // Deep outbound queues: the test's clients share the machine with the rest of the
    // suite, and this test is about the inbound queue, not about slow consumers.
    let small = builder("small-queue")
        .env("LIMIT_INBOUND_EVENTS", "1")
        .env("LIMIT_OUTBOUND_FRAMES", "50000")
        .env("LIMIT_OUTBOUND_BYTES", "16777216")
        .spawn()
        .await;
    let publishing = builder("publishing").spawn().await;
    small.wait_healthy().await;
    publishing.wait_healthy().await;

    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut client = WsClient::connect(&small).await;
        client.subscribe(PLAIN).await;
        client.subscribe(DURABLE).await;
        subscribers.push(client);
    }
    let mut publisher = WsClient::connect(&publishing).await;
    let mut redis_client = redis.client().await;

    let mut sent = 0;
    for _ in 0..MOST_BURSTS {
        // Plain: a foreign publisher's pipelined PUBLISHes; durable: pipelined publishes
        // through the other server, numbered by its scripts.
        let mut pipe = redis::pipe();
        for n in sent..sent + BURST {
            let envelope = json!({"type": "n", "data": {"n": n}}).to_string();
            pipe.cmd("PUBLISH")
                .arg(format!("{prefix}{PLAIN}"))
                .arg(envelope);
        }
        let _: Vec<u64> = pipe.query_async(&mut redis_client).await.expect("PUBLISH");
        for n in sent..sent + BURST {
            let event = json!({"type": "n", "data": {"n": n}});
            publisher.send_json(&json!({"op": "publish", "room": DURABLE, "event": event}));
        }
        for _ in 0..BURST {
            let reply = publisher.recv_json(FRAMES_TIMEOUT).await;
            assert_eq!(reply["op"], "published", "{reply}");
        }
        sent += BURST;
        if dropped(&small).await > 0 {
            break;
        }
    }
    assert!(
        dropped(&small).await > 0,
        "{MOST_BURSTS} bursts of {BURST} events never overflowed a queue of one"
    );
    // A last event in each room once the small queue is empty again (so the last is
    // not dropped itself): a loss at the end of the last burst is told before it.
    wait_until(FRAMES_TIMEOUT, "the small queue drained", || async {
        u64_at(&small.stats().await, "/subscriber/inboundQueued") == 0
    })
    .await;
    let last = json!({"type": "last", "data": {"n": sent}}).to_string();
    let _: u64 = redis::cmd("PUBLISH")
        .arg(format!("{prefix}{PLAIN}"))
        .arg(&last)
        .query_async(&mut redis_client)
        .await
        .expect("PUBLISH");
    let reply = publisher
        .request(json!({"op": "publish", "room": DURABLE, "event": {"type": "last", "data": {"n": sent}}}))
        .await;
    assert_eq!(reply["op"], "published", "{reply}");

    let mut gaps_told = 0;
    for (i, client) in subscribers.iter_mut().enumerate() {
        let frames = frames_until_both_last(client, sent).await;
        gaps_told += check_plain(i, &frames, sent);
        check_durable(i, &frames, sent);
    }
    let stats = small.stats().await;
    eprintln!(
        "inbound overflow: {sent} events a room, {} dropped at the small queue; {gaps_told} of \
         {SUBSCRIBERS} subscribers told a gap in the plain room; durable events read back: {}",
        u64_at(&stats, "/subscriber/droppedEvents"),
        u64_at(&stats, "/subscriber/eventsRecovered"),
    );
}

/// The server's count of events dropped at its inbound queue.
async fn dropped(server: &Server) -> u64 {
    u64_at(&server.stats().await, "/subscriber/droppedEvents")
}

/// Every frame up to the `last` event of both rooms.
async fn frames_until_both_last(client: &mut WsClient, last: u64) -> Vec<Value> {
    let mut frames: Vec<Value> = Vec::new();
    let mut seen_last = 0;
    while seen_last < 2 {
        let Some(frame) = client.try_recv_json(FRAMES_TIMEOUT).await else {
            let count = |room: &str, op: &str| {
                frames
                    .iter()
                    .filter(|f| f["room"] == room && f["op"] == op)
                    .count()
            };
            panic!(
                "no `last` event in both rooms within {FRAMES_TIMEOUT:?}: {seen_last} came; \
                 {PLAIN}: {} events, {} gaps; {DURABLE}: {} events, {} gaps; last frame {:?}",
                count(PLAIN, "event"),
                count(PLAIN, "gap"),
                count(DURABLE, "event"),
                count(DURABLE, "gap"),
                frames.last()
            );
        };
        if frame["op"] == "event" && frame["event"]["type"] == "last" {
            assert_eq!(frame["event"]["data"]["n"], last, "{frame}");
            seen_last += 1;
        }
        frames.push(frame);
    }
    frames
}

/// In the plain room: events in order, each at most once, and every event missing
/// before a later one is preceded by a `gap` `overloaded` between them. Answers
/// whether this subscriber was told a gap.
fn check_plain(subscriber: usize, frames: &[Value], sent: u64) -> usize {
    let mut next = 0;
    let mut gap_since_loss = false;
    let mut told = false;
    for frame in frames.iter().filter(|f| f["room"] == PLAIN) {
        if frame["op"] == "gap" {
            assert_eq!(frame["reason"], "overloaded", "{frame}");
            gap_since_loss = true;
            told = true;
            continue;
        }
        let n = frame["event"]["data"]["n"].as_u64().expect("n");
        assert!(
            n >= next,
            "subscriber {subscriber}: {n} after {next}: repeated or reordered"
        );
        assert!(
            n == next || gap_since_loss,
            "subscriber {subscriber}: events {next} to {} lost without a gap",
            n - 1
        );
        next = n + 1;
        gap_since_loss = false;
    }
    assert_eq!(
        next,
        sent + 1,
        "subscriber {subscriber}: the last event came"
    );
    usize::from(told)
}

/// In the durable room: every offset once, in order, and no gap.
fn check_durable(subscriber: usize, frames: &[Value], sent: u64) {
    let mut offsets = Vec::new();
    for frame in frames.iter().filter(|f| f["room"] == DURABLE) {
        assert_eq!(frame["op"], "event", "subscriber {subscriber}: {frame}");
        offsets.push(frame["event"]["offset"].as_u64().expect("offset"));
    }
    let expected: Vec<u64> = (1..=sent + 1).collect();
    assert!(
        offsets == expected,
        "subscriber {subscriber}: durable offsets are not 1..={}: {} of them, first {:?}",
        sent + 1,
        offsets.len(),
        offsets.iter().take(5).collect::<Vec<_>>()
    );
}

/// Plain rooms of the link test, each with the one subscriber on the small server.
const RELINK_ROOMS: usize = 50;
/// Times the small server's pub/sub link is killed, each once every room was told.
const KILLS: u64 = 5;
/// How long the storm kills the link, each time 300 µs after the last (relink notices
/// still waiting for places).
const STORM: Duration = Duration::from_secs(2);
/// How long the server may take to be back and to have told every room.
const BACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Rounds (one event in every room) the publisher sends at most, a bound on the loop.
const MOST_ROUNDS: u64 = 20_000;

/// A server whose inbound queue holds one event, a client of it in [`RELINK_ROOMS`]
/// plain rooms, and a foreign publisher into them all.
struct RelinkFixture {
    redis: RedisServer,
    prefix: String,
    small: Server,
    client: WsClient,
    rooms: Vec<String>,
    /// Every frame the client got so far.
    frames: Vec<Value>,
}

impl RelinkFixture {
    async fn start(name: &str) -> RelinkFixture {
        let redis = RedisServer::start().await;
        let prefix = unique_prefix(name);
        let small = ServerBuilder::new()
            .redis(&redis, &prefix)
            .id(&format!("small-{name}"))
            .env("LIMIT_INBOUND_EVENTS", "1")
            .env("LIMIT_OUTBOUND_FRAMES", "200000")
            .env("LIMIT_OUTBOUND_BYTES", "67108864")
            .spawn()
            .await;
        small.wait_healthy().await;
        let rooms: Vec<String> = (0..RELINK_ROOMS)
            .map(|i| format!("plain:{name}:{i}"))
            .collect();
        let mut client = WsClient::connect(&small).await;
        for room in &rooms {
            client.subscribe(room).await;
        }
        RelinkFixture {
            redis,
            prefix,
            small,
            client,
            rooms,
            frames: Vec::new(),
        }
    }

    /// A foreign publisher on a thread of its own (so the test's reading cannot
    /// starve it): one event in every room per round, a round every 5 ms, until
    /// `stop`; it answers the rounds sent.
    fn publish_until(&self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
        let mut conn = redis::Client::open(self.redis.url())
            .and_then(|c| c.get_connection())
            .expect("a Redis connection");
        let channels: Vec<String> = self
            .rooms
            .iter()
            .map(|r| format!("{}{r}", self.prefix))
            .collect();
        std::thread::spawn(move || {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) && round < MOST_ROUNDS {
                let envelope = json!({"type": "n", "data": {"n": round}}).to_string();
                let mut pipe = redis::pipe();
                for channel in &channels {
                    pipe.cmd("PUBLISH").arg(channel).arg(&envelope).ignore();
                }
                let () = pipe.query(&mut conn).expect("PUBLISH");
                round += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            round
        })
    }

    /// The next frame, kept; panics with the server's statistics after `timeout`.
    async fn next_frame(&mut self, timeout: Duration, waiting_for: &str) -> &Value {
        let Some(frame) = self.client.try_recv_json(timeout).await else {
            panic!(
                "{waiting_for}: nothing within {timeout:?} ({} frames; the last {:?}); /stats {}",
                self.frames.len(),
                self.frames.last(),
                self.small.stats().await["subscriber"]
            );
        };
        self.frames.push(frame);
        self.frames.last().expect("just pushed")
    }

    /// A `last` event in each room, one at a time once the queue is empty (so that
    /// none is dropped itself), each awaited; then every room's frames checked with
    /// [`check_told_before_next`]. Answers the `link_lost` gaps told.
    async fn finish(mut self, rounds: u64) -> usize {
        let last = json!({"type": "last", "data": {"n": rounds}}).to_string();
        for room in self.rooms.clone() {
            wait_until(BACK_TIMEOUT, "the small queue drained", || async {
                u64_at(&self.small.stats().await, "/subscriber/inboundQueued") == 0
            })
            .await;
            self.redis
                .publish(&format!("{}{room}", self.prefix), &last)
                .await;
            let waiting_for = format!("the last event in {room}");
            loop {
                let frame = self.next_frame(FRAMES_TIMEOUT, &waiting_for).await;
                if frame["room"] == room.as_str() && frame["event"]["type"] == "last" {
                    break;
                }
            }
        }
        let told = self
            .rooms
            .iter()
            .map(|room| check_told_before_next(room, &self.frames, rounds))
            .sum();
        eprintln!(
            "{}: {rounds} rounds over {RELINK_ROOMS} rooms; {told} link_lost gaps told; {} \
             events dropped at the small queue",
            self.prefix,
            u64_at(&self.small.stats().await, "/subscriber/droppedEvents"),
        );
        told
    }
}

/// A link back after `CLIENT KILL TYPE pubsub` while events keep coming into a full
/// inbound queue: the `gap` `link_lost` of each room reaches its subscriber before
/// any event that came after the link, so no event ever follows a loss untold. A
/// notice that finds the queue full waits for it, and the room's events are dropped
/// (and told) until the notice is in.
#[actix_web::test]
async fn a_link_back_is_told_before_the_rooms_next_event_even_with_a_full_queue() {
    let mut fixture = RelinkFixture::start("relink").await;
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = fixture.publish_until(stop.clone());
    let mut admin = fixture.redis.client().await;
    let mut told: HashMap<String, u64> = fixture.rooms.iter().map(|r| (r.clone(), 0)).collect();
    for kill in 1..=KILLS {
        let _: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .expect("CLIENT KILL");
        // Every room is told of this lost link before the next one is cut.
        let waiting_for = format!("every room told of kill {kill}");
        while told.values().any(|&gaps| gaps < kill) {
            let frame = fixture.next_frame(BACK_TIMEOUT, &waiting_for).await;
            if frame["reason"] == "link_lost" {
                if let Some(gaps) = frame["room"].as_str().and_then(|r| told.get_mut(r)) {
                    *gaps += 1;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = publishing.join().expect("the publisher");
    let link_lost = fixture.finish(rounds).await;
    assert_eq!(
        link_lost,
        KILLS as usize * RELINK_ROOMS,
        "one link_lost per room and kill"
    );
}

/// The link killed again and again, each time as soon as the last, while relink
/// notices still wait for places in the full queue (and the subscriber restarts
/// under them): every room still gets its later events, and every loss is told
/// before the room's next event. A notice lost with a restart would silence its room
/// for good.
#[actix_web::test]
async fn a_storm_of_lost_links_over_waiting_notices_silences_no_room() {
    let mut fixture = RelinkFixture::start("relink-storm").await;
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = fixture.publish_until(stop.clone());
    // The killer on a thread of its own, for STORM seconds: a kill, 300 µs, a kill...
    let killing = {
        let mut conn = redis::Client::open(fixture.redis.url())
            .and_then(|c| c.get_connection())
            .expect("a Redis connection");
        std::thread::spawn(move || {
            let end = std::time::Instant::now() + STORM;
            let mut killed = 0;
            while std::time::Instant::now() < end {
                let n: u64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query(&mut conn)
                    .expect("CLIENT KILL");
                killed += n;
                std::thread::sleep(Duration::from_micros(300));
            }
            killed
        })
    };
    while !killing.is_finished() {
        if let Some(frame) = fixture
            .client
            .try_recv_json(Duration::from_millis(50))
            .await
        {
            fixture.frames.push(frame);
        }
    }
    let killed = killing.join().expect("the killer");
    assert!(killed >= 10, "only {killed} links were killed");
    stop.store(true, Ordering::Relaxed);
    let rounds = publishing.join().expect("the publisher");
    fixture.small.wait_healthy().await;
    let link_lost = fixture.finish(rounds).await;
    assert!(
        link_lost >= RELINK_ROOMS,
        "every room was told of a lost link"
    );
}

/// In `room`: events in order, each at most once, every event missing before a later
/// one told by a `gap` between them, and the `last` event at the end. Answers the
/// number of `link_lost` gaps.
fn check_told_before_next(room: &str, frames: &[Value], rounds: u64) -> usize {
    let mut next = 0;
    let mut told = false;
    let mut link_lost = 0;
    for frame in frames.iter().filter(|f| f["room"] == room) {
        if frame["op"] == "gap" {
            link_lost += usize::from(frame["reason"] == "link_lost");
            told = true;
            continue;
        }
        let n = frame["event"]["data"]["n"].as_u64().expect("n");
        assert!(n >= next, "{room}: {n} after {next}: repeated or reordered");
        assert!(
            n == next || told,
            "{room}: events {next} to {} lost without a gap before {n}",
            n - 1
        );
        next = n + 1;
        told = false;
    }
    assert_eq!(next, rounds + 1, "{room}: the last event came");
    link_lost
}
