//! Durable rooms (PROTOCOL.md §7, §8) as a client sees them: offsets and epochs on
//! every publish, event and `subscribed` reply; recovery with `since`; the `history` op
//! and `GET /history`; refused input; idempotent publish. Each scenario runs twice: on
//! one Redis with two servers, and on the memory backplane with its one server.
//! History bounds (trimming, TTLs, a long run's memory) are in `durable_memory.rs`.
//!
//! A [`Ledger`] keeps what the publishers were answered (offset, epoch, the event's tag)
//! so that what a subscriber receives is checked against it: in order, none twice,
//! none missing.

mod support;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ops::{Range, RangeInclusive};
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::join;
use serde_json::{json, Value};
use support::server::body_json;
use support::{
    next_ref, u64_at, unique_prefix, wait_until, RedisServer, Server, ServerBuilder, WsClient,
    REPLY_TIMEOUT,
};

/// The durable rooms of every test: one segment under `chat:`, any depth under `feed:`.
const DURABLE_ROOMS: &str = "chat:*,feed:**";
/// How long one event may take to arrive.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The events the recovering client reads before it leaves.
const READ_BEFORE_LEAVING: u64 = 5;
/// The events published while it is away (issue test 3).
const PUBLISHED_WHILE_AWAY: u64 = 500;
/// Live events it reads after the replay, while the feeder still publishes.
const LIVE_AFTER_REPLAY: u64 = 50;
/// Clients that subscribe one after the other while the feeder publishes.
const LIVE_SUBSCRIBERS: u64 = 10;
/// A bound on the feeder, should a test fail to stop it.
const FEEDER_MAX: usize = 5_000;

/// Runs `scenario` as two tests: `scenario::on_redis` (two servers on one Redis) and
/// `scenario::on_memory` (the memory backplane's one server).
macro_rules! on_both_backplanes {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[actix_web::test]
            async fn on_redis() {
                super::$scenario(super::Kind::Redis).await
            }

            #[actix_web::test]
            async fn on_memory() {
                super::$scenario(super::Kind::Memory).await
            }
        }
    )+};
}

on_both_backplanes!(
    publishes_are_numbered_and_reach_every_subscriber_once,
    subscribed_replies_carry_the_position_of_durable_rooms_only,
    a_subscribe_while_others_publish_gets_exactly_the_events_after_its_offset,
    a_client_back_after_500_events_recovers_the_missed_then_live_ones,
    a_client_back_after_the_history_was_trimmed_is_told_it_did_not_recover,
    recovery_from_the_current_offset_or_another_epoch_replays_nothing,
    history_answers_the_latest_events_or_those_after_since,
    bad_since_limit_and_keys_are_refused_and_the_session_lives_on,
    one_idempotency_key_on_two_servers_publishes_once_in_a_durable_room,
    one_idempotency_key_on_two_servers_publishes_once_in_a_plain_room,
);

/// The backplane a scenario runs on.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Redis,
    Memory,
}

/// The servers of one test, all with [`DURABLE_ROOMS`] and no publish rate limit.
struct Cluster {
    servers: Vec<Server>,
    /// `None` on the memory backplane; dropped (killed) after the servers.
    redis: Option<RedisServer>,
    /// `REDIS_CHANNEL_PREFIX` of the servers on Redis.
    prefix: String,
}

impl Cluster {
    /// Two servers on a fresh Redis, or one on the memory backplane, each with `extra`.
    async fn start(kind: Kind, test: &str, extra: &[(&str, &str)]) -> Cluster {
        let redis = match kind {
            Kind::Redis => Some(RedisServer::start().await),
            Kind::Memory => None,
        };
        let prefix = unique_prefix(test);
        let names = match kind {
            Kind::Redis => &["A", "B"][..],
            Kind::Memory => &["A"][..],
        };
        let mut servers = Vec::new();
        for name in names {
            let mut builder = ServerBuilder::new()
                .id(&format!("{name}-{test}"))
                .env("DURABLE_ROOMS", DURABLE_ROOMS)
                .env("LIMIT_PUBLISH_RATE", "0");
            if let Some(redis) = &redis {
                builder = builder.redis(redis, &prefix);
            }
            for (name, value) in extra {
                builder = builder.env(name, value);
            }
            let server = builder.spawn().await;
            server.wait_healthy().await;
            servers.push(server);
        }
        Cluster {
            servers,
            redis,
            prefix,
        }
    }

    fn a(&self) -> &Server {
        &self.servers[0]
    }

    /// The other server on Redis; on the memory backplane, the same one as [`Cluster::a`].
    fn b(&self) -> &Server {
        self.servers.last().expect("a cluster has a server")
    }
}

/// A room's position as a server states it.
#[derive(Clone, Debug, PartialEq)]
struct Position {
    offset: u64,
    epoch: String,
}

/// The `offset` and `epoch` of a reply or an envelope; the epoch must be 1-64 characters.
fn position(value: &Value) -> Position {
    let offset = u64_at(value, "/offset");
    let epoch = value["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no string epoch in {value}"));
    assert!(
        (1..=64).contains(&epoch.chars().count()),
        "an epoch has 1 to 64 characters: {value}"
    );
    Position {
        offset,
        epoch: epoch.to_owned(),
    }
}

/// `{"offset":..,"epoch":..}`, the `since` of a frame.
fn since(at: &Position) -> Value {
    json!({"offset": at.offset, "epoch": at.epoch})
}

/// What the publishers were answered: each offset with the tag (the event's `data`) and
/// the server that published it, all in one epoch.
#[derive(Default)]
struct Ledger {
    epoch: Option<String>,
    tags: BTreeMap<u64, (String, String)>,
}

impl Ledger {
    fn record(&mut self, at: Position, tag: &str, server: &Server) {
        let epoch = self.epoch.get_or_insert_with(|| at.epoch.clone());
        assert_eq!(*epoch, at.epoch, "the epoch changed at {tag}");
        let entry = (tag.to_owned(), server.id().to_owned());
        if let Some(before) = self.tags.insert(at.offset, entry) {
            panic!("offset {} answered twice: {before:?} and {tag}", at.offset);
        }
    }

    /// The highest offset answered.
    fn top(&self) -> u64 {
        self.tags.keys().next_back().copied().unwrap_or(0)
    }

    /// Every offset answered, in order.
    fn offsets(&self) -> Vec<u64> {
        self.tags.keys().copied().collect()
    }

    /// `events` are exactly the events answered at `offsets`, in order, each once.
    fn assert_delivered(&self, events: &[Value], offsets: RangeInclusive<u64>, who: &str) {
        let got: Vec<u64> = events.iter().map(|e| u64_at(e, "/offset")).collect();
        let expected: Vec<u64> = offsets.collect();
        assert_eq!(got, expected, "{who}: offsets delivered");
        let epoch = self.epoch.as_deref().expect("something was published");
        for event in events {
            let offset = u64_at(event, "/offset");
            let (tag, server) = self
                .tags
                .get(&offset)
                .unwrap_or_else(|| panic!("{who}: no publish was answered {offset}: {event}"));
            assert_eq!(event["epoch"], epoch, "{who}: {event}");
            assert_eq!(event["type"], "tagged", "{who}: {event}");
            assert_eq!(
                event["data"],
                tag.as_str(),
                "{who}: wrong event at {offset}"
            );
            assert_eq!(event["serverId"], server.as_str(), "{who}: {event}");
            assert!(event["timestamp"].is_u64(), "{who}: {event}");
        }
    }
}

/// The event every test publishes: its `data` is a tag that tells it apart.
fn tagged(tag: &str) -> Value {
    json!({"type": "tagged", "data": tag})
}

/// A WebSocket publish frame, with an idempotency key when given.
fn publish_frame(room: &str, tag: &str, key: Option<&Value>) -> Value {
    let mut frame = json!({"op": "publish", "room": room, "event": tagged(tag)});
    if let Some(key) = key {
        frame["idempotencyKey"] = key.clone();
    }
    frame
}

/// Publishes over WebSocket; the reply must be `published` with a position.
async fn ws_publish(client: &mut WsClient, room: &str, tag: &str) -> Position {
    let reply = client.request(publish_frame(room, tag, None)).await;
    assert_eq!(reply["op"], "published", "publish {tag}: {reply}");
    assert_eq!(reply["room"], room, "{reply}");
    position(&reply)
}

/// `POST /publish/{room}` with `Idempotency-Key` when given: the status and body.
async fn http_publish(server: &Server, room: &str, tag: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = awc::Client::default()
        .post(format!("{}/publish/{room}", server.http_url()))
        .insert_header(("content-type", "application/json"));
    if let Some(key) = key {
        request = request.insert_header(("Idempotency-Key", key));
    }
    let mut response = request
        .send_body(tagged(tag).to_string())
        .await
        .unwrap_or_else(|e| panic!("POST /publish/{room}: {e}"));
    let body = response.body().await.expect("publish response body");
    (response.status().as_u16(), body_json(&body))
}

/// An HTTP publish that must answer 200 `{"ok":true,"offset":..,"epoch":..}`.
async fn http_publish_durable(server: &Server, room: &str, tag: &str) -> Position {
    let (status, body) = http_publish(server, room, tag, None).await;
    assert_eq!((status, &body["ok"]), (200, &json!(true)), "{tag}: {body}");
    position(&body)
}

/// Publishes `tags` one by one over HTTP on `server`, recording the answers.
async fn http_publish_all(ledger: &mut Ledger, server: &Server, room: &str, tags: &[String]) {
    for tag in tags {
        ledger.record(http_publish_durable(server, room, tag).await, tag, server);
    }
}

/// Tags `prefix-1` to `prefix-count`.
fn tags(prefix: &str, count: u64) -> Vec<String> {
    (1..=count).map(|n| format!("{prefix}-{n}")).collect()
}

/// Subscribes, with `since` when given, and returns the reply, which must be the very
/// next frame: the reply comes before any replayed event. Only for a client that
/// expects nothing else.
async fn subscribe_from(client: &mut WsClient, room: &str, from: Option<&Position>) -> Value {
    let reference = next_ref();
    let mut frame = json!({"op": "subscribe", "room": room, "ref": reference});
    if let Some(at) = from {
        frame["since"] = since(at);
    }
    client.send_json(&frame);
    let reply = client.recv_json(REPLY_TIMEOUT).await;
    if reply["ref"] != reference.as_str() {
        // Read on to the reply, so that the failure shows what overtook it.
        let mut before = vec![reply];
        while before.len() < 100 && before.last().unwrap()["ref"] != reference.as_str() {
            before.push(client.recv_json(REPLY_TIMEOUT).await);
        }
        panic!("the reply must come first; {frame} got, in this order: {before:#?}");
    }
    assert_eq!(reply["op"], "subscribed", "{frame}: {reply}");
    assert_eq!(reply["room"], room, "{reply}");
    reply
}

/// The envelopes of the next `count` frames, each of which must be an event of `room`
/// (a `gap` or anything else fails the test).
async fn events(client: &mut WsClient, room: &str, count: u64) -> Vec<Value> {
    let mut envelopes = Vec::new();
    for _ in 0..count {
        let frame = client.recv_json(EVENT_TIMEOUT).await;
        assert_eq!(
            (&frame["op"], &frame["room"]),
            (&json!("event"), &json!(room)),
            "after {} events: {frame}",
            envelopes.len()
        );
        envelopes.push(frame["event"].clone());
    }
    envelopes
}

/// A session on `server` that keeps publishing into `room` until stopped: the live
/// traffic while another client recovers.
struct Feeder {
    stop: Rc<Cell<bool>>,
    sent: Rc<Cell<usize>>,
    task: tokio::task::JoinHandle<Vec<(Position, String)>>,
}

impl Feeder {
    async fn start(server: &Server, room: &str) -> Feeder {
        let mut client = WsClient::connect(server).await;
        let (stop, sent) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(0)));
        let (stopped, count, room) = (stop.clone(), sent.clone(), room.to_owned());
        let task = actix_web::rt::spawn(async move {
            let mut answered = Vec::new();
            while !stopped.get() && answered.len() < FEEDER_MAX {
                let tag = format!("live-{}", answered.len() + 1);
                answered.push((ws_publish(&mut client, &room, &tag).await, tag));
                count.set(answered.len());
            }
            answered
        });
        Feeder { stop, sent, task }
    }

    /// Waits until it has had `count` publishes answered.
    async fn wait_for(&self, count: usize) {
        wait_until(EVENT_TIMEOUT, "the feeder publishes", || async {
            self.sent.get() >= count
        })
        .await;
    }

    /// Stops it and returns what it was answered.
    async fn stop(self) -> Vec<(Position, String)> {
        self.stop.set(true);
        self.task.await.expect("the feeder failed")
    }
}

/// A client of A reads the first events of `room` and leaves; then
/// [`PUBLISHED_WHILE_AWAY`] events are published on B. Returns the position it last saw.
async fn leave_while_published(cluster: &Cluster, room: &str, ledger: &mut Ledger) -> Position {
    let mut client = WsClient::connect(cluster.a()).await;
    subscribe_from(&mut client, room, None).await;
    let before = tags("before", READ_BEFORE_LEAVING);
    http_publish_all(ledger, cluster.b(), room, &before).await;
    let seen = events(&mut client, room, READ_BEFORE_LEAVING).await;
    ledger.assert_delivered(&seen, 1..=READ_BEFORE_LEAVING, "before leaving");
    client.close();
    let away = tags("away", PUBLISHED_WHILE_AWAY);
    http_publish_all(ledger, cluster.b(), room, &away).await;
    position(seen.last().expect("events were read"))
}

async fn publishes_are_numbered_and_reach_every_subscriber_once(kind: Kind) {
    let cluster = Cluster::start(kind, "numbered", &[]).await;
    let (a, b) = (cluster.a(), cluster.b());
    let room = "chat:numbered";
    let mut on_a = WsClient::connect(a).await;
    let mut on_b = WsClient::connect(b).await;
    let created = position(&subscribe_from(&mut on_a, room, None).await);
    assert_eq!(created.offset, 0, "a room is created at offset 0");
    let joined = position(&subscribe_from(&mut on_b, room, None).await);
    assert_eq!(joined, created, "both servers see the same new room");

    // The publishing session is subscribed itself: its own events reach it once.
    let mut ledger = Ledger::default();
    for tag in tags("ws", 3) {
        ledger.record(ws_publish(&mut on_a, room, &tag).await, &tag, a);
    }
    http_publish_all(&mut ledger, a, room, &tags("http", 2)).await;
    ledger.record(ws_publish(&mut on_b, room, "last").await, "last", b);
    assert_eq!(ledger.offsets(), (1..=6).collect::<Vec<_>>());
    assert_eq!(ledger.epoch.as_deref(), Some(created.epoch.as_str()));
    for (client, who) in [(&mut on_a, "on A"), (&mut on_b, "on B")] {
        // A second copy of an event would come before the last one.
        let got = events(client, room, 6).await;
        ledger.assert_delivered(&got, 1..=6, who);
    }

    // Publishers on both servers at once: every subscriber sees one order.
    let (from_a, from_b) = join(
        async {
            let mut answered = Vec::new();
            for tag in tags("a", 40) {
                answered.push((ws_publish(&mut on_a, room, &tag).await, tag));
            }
            answered
        },
        async {
            let mut answered = Vec::new();
            for tag in tags("b", 40) {
                answered.push((http_publish_durable(b, room, &tag).await, tag));
            }
            answered
        },
    )
    .await;
    for (at, tag) in from_a {
        ledger.record(at, &tag, a);
    }
    for (at, tag) in from_b {
        ledger.record(at, &tag, b);
    }
    assert_eq!(ledger.offsets(), (1..=86).collect::<Vec<_>>());
    for (client, who) in [(&mut on_a, "on A"), (&mut on_b, "on B")] {
        let got = events(client, room, 80).await;
        ledger.assert_delivered(&got, 7..=86, who);
    }

    if cluster.redis.is_some() {
        foreign_publish_is_delivered_without_an_offset(&cluster, room, &mut on_b).await;
    }
}

/// §7: a plain `PUBLISH` on a durable room's channel is delivered as received, without
/// an offset, and takes no place in the numbering.
async fn foreign_publish_is_delivered_without_an_offset(
    cluster: &Cluster,
    room: &str,
    client: &mut WsClient,
) {
    let redis = cluster.redis.as_ref().expect("a cluster on Redis");
    let foreign = json!({"type": "foreign", "data": {"from": "redis-cli"}});
    let channel = format!("{}{room}", cluster.prefix);
    redis.publish(&channel, &foreign.to_string()).await;
    assert_eq!(events(client, room, 1).await, vec![foreign]);
    let next = http_publish_durable(cluster.a(), room, "after-foreign").await;
    assert_eq!(next.offset, 87, "a foreign publish takes no offset");
    assert_eq!(u64_at(&events(client, room, 1).await[0], "/offset"), 87);
}

async fn subscribed_replies_carry_the_position_of_durable_rooms_only(kind: Kind) {
    let cluster = Cluster::start(kind, "position", &[]).await;
    let (a, b) = (cluster.a(), cluster.b());
    let room = "chat:position";
    let mut first = WsClient::connect(a).await;
    let created = position(&subscribe_from(&mut first, room, None).await);
    assert_eq!(created.offset, 0, "a room is created at offset 0");
    let mut ledger = Ledger::default();
    http_publish_all(&mut ledger, b, room, &tags("p", 2)).await;
    assert_eq!(ledger.epoch.as_deref(), Some(created.epoch.as_str()));

    let mut second = WsClient::connect(b).await;
    let later = position(&subscribe_from(&mut second, room, None).await);
    assert_eq!(
        later,
        Position {
            offset: 2,
            ..created.clone()
        }
    );
    // The two events were published after `first` subscribed: exactly they follow.
    ledger.assert_delivered(&events(&mut first, room, 2).await, 1..=2, "first");
    let again = first
        .request(json!({"op": "subscribe", "room": room}))
        .await;
    assert_eq!(again["op"], "subscribed", "{again}");
    assert_eq!(
        position(&again),
        later,
        "subscribed again: the current position"
    );

    // `**` matches any depth; `*` one segment only.
    let mut deep = WsClient::connect(a).await;
    let reply = subscribe_from(&mut deep, "feed:x:y", None).await;
    assert_eq!(position(&reply).offset, 0, "{reply}");

    let mut plain = WsClient::connect(a).await;
    let cases = [
        ("plain:position", None),
        ("plain:position", Some(&created)),
        ("chat:too:deep", Some(&created)),
    ];
    for (room, from) in cases {
        let reply = subscribe_from(&mut plain, room, from).await;
        assert!(reply.get("offset").is_none(), "not durable: {reply}");
        assert!(reply.get("epoch").is_none(), "not durable: {reply}");
        if from.is_some() {
            assert_eq!(
                reply["recovered"], false,
                "`since` in a plain room: {reply}"
            );
        }
    }
    let (status, body) = http_publish(b, "plain:position", "plain", None).await;
    assert_eq!(
        (status, body),
        (200, json!({"ok": true})),
        "a plain publish"
    );
    let event = &events(&mut plain, "plain:position", 1).await[0];
    assert_eq!(event["data"], "plain", "{event}");
    assert!(
        event.get("offset").is_none(),
        "a plain room's event: {event}"
    );
    assert!(
        event.get("epoch").is_none(),
        "a plain room's event: {event}"
    );
}

/// §7: "exactly the events after P follow", whatever is published while the subscribe
/// is in progress; on Redis the first subscriber makes B subscribe the room, the others
/// join a room B holds.
async fn a_subscribe_while_others_publish_gets_exactly_the_events_after_its_offset(kind: Kind) {
    let cluster = Cluster::start(kind, "live-subscribe", &[]).await;
    let room = "chat:live-subscribe";
    let mut ledger = Ledger::default();
    http_publish_all(&mut ledger, cluster.a(), room, &tags("early", 3)).await;
    let feeder = Feeder::start(cluster.a(), room).await;
    feeder.wait_for(10).await;
    let mut subscribers = Vec::new();
    for _ in 0..LIVE_SUBSCRIBERS {
        let mut client = WsClient::connect(cluster.b()).await;
        let reply = subscribe_from(&mut client, room, None).await;
        subscribers.push((client, reply));
    }
    let mut got = Vec::new();
    for (client, _) in &mut subscribers {
        got.push(events(client, room, LIVE_SUBSCRIBERS).await);
    }
    for (at, tag) in feeder.stop().await {
        ledger.record(at, &tag, cluster.a());
    }
    for ((_, reply), events) in subscribers.iter().zip(&got) {
        let start = position(reply);
        assert_eq!(
            ledger.epoch.as_deref(),
            Some(start.epoch.as_str()),
            "{reply}"
        );
        let who = format!("subscribed with {reply}");
        let offsets = start.offset + 1..=start.offset + LIVE_SUBSCRIBERS;
        ledger.assert_delivered(events, offsets, &who);
    }
}

async fn a_client_back_after_500_events_recovers_the_missed_then_live_ones(kind: Kind) {
    let cluster = Cluster::start(kind, "recover", &[]).await;
    let room = "chat:recover";
    let mut ledger = Ledger::default();
    let last = leave_while_published(&cluster, room, &mut ledger).await;

    // Live publishes go on while the client comes back (to B, on Redis).
    let feeder = Feeder::start(cluster.a(), room).await;
    feeder.wait_for(10).await;
    let mut back = WsClient::connect(cluster.b()).await;
    let reply = subscribe_from(&mut back, room, Some(&last)).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(
        position(&reply),
        last,
        "exactly the events after `since` follow"
    );
    let mut got = events(&mut back, room, PUBLISHED_WHILE_AWAY + LIVE_AFTER_REPLAY).await;
    for (at, tag) in feeder.stop().await {
        ledger.record(at, &tag, cluster.a());
    }
    let top = ledger.top();
    assert_eq!(ledger.offsets(), (1..=top).collect::<Vec<_>>());
    let received = last.offset + got.len() as u64;
    assert!(
        received <= top,
        "more events than publishes: {received} > {top}"
    );
    got.extend(events(&mut back, room, top - received).await);
    ledger.assert_delivered(&got, last.offset + 1..=top, "back");
    eprintln!(
        "recovery: back at {}, {} events replayed or live up to {top}",
        last.offset,
        got.len()
    );
}

async fn a_client_back_after_the_history_was_trimmed_is_told_it_did_not_recover(kind: Kind) {
    let cluster = Cluster::start(kind, "trimmed", &[("HISTORY_SIZE", "100")]).await;
    let room = "chat:trimmed";
    let mut ledger = Ledger::default();
    let last = leave_while_published(&cluster, room, &mut ledger).await;

    let feeder = Feeder::start(cluster.a(), room).await;
    feeder.wait_for(10).await;
    let mut back = WsClient::connect(cluster.b()).await;
    let reply = subscribe_from(&mut back, room, Some(&last)).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    let now = position(&reply);
    assert_eq!(now.epoch, last.epoch, "the numbering was not lost: {reply}");
    assert!(
        now.offset >= last.offset + PUBLISHED_WHILE_AWAY + 10,
        "not recovered: the reply states the current offset: {reply}"
    );
    // Nothing replayed: the events after the current offset, live ones, follow.
    let got = events(&mut back, room, 20).await;
    for (at, tag) in feeder.stop().await {
        ledger.record(at, &tag, cluster.a());
    }
    let who = format!("back, after {reply}");
    ledger.assert_delivered(&got, now.offset + 1..=now.offset + 20, &who);
}

async fn recovery_from_the_current_offset_or_another_epoch_replays_nothing(kind: Kind) {
    let cluster = Cluster::start(kind, "edges", &[]).await;
    let (a, b) = (cluster.a(), cluster.b());
    let room = "chat:edges";
    let mut ledger = Ledger::default();
    http_publish_all(&mut ledger, a, room, &tags("e", 3)).await;
    let epoch = ledger.epoch.clone().expect("published");
    let current = Position {
        offset: 3,
        epoch: epoch.clone(),
    };

    let mut at_current = WsClient::connect(b).await;
    let reply = subscribe_from(&mut at_current, room, Some(&current)).await;
    assert_eq!(
        reply["recovered"], true,
        "since the current offset: {reply}"
    );
    assert_eq!(position(&reply), current, "{reply}");
    http_publish_all(&mut ledger, a, room, &tags("after-current", 1)).await;
    let got = events(&mut at_current, room, 1).await;
    ledger.assert_delivered(&got, 4..=4, "since the current offset");

    let cases = [
        ("another epoch", 2, another_epoch(&epoch)),
        ("an offset ahead", 99, epoch.clone()),
    ];
    for (n, (what, offset, since_epoch)) in cases.into_iter().enumerate() {
        let now = Position {
            offset: ledger.top(),
            epoch: epoch.clone(),
        };
        let mut client = WsClient::connect(b).await;
        let from = Position {
            offset,
            epoch: since_epoch,
        };
        let reply = subscribe_from(&mut client, room, Some(&from)).await;
        assert_eq!(reply["recovered"], false, "{what}: {reply}");
        assert_eq!(position(&reply), now, "{what}: the current position");
        let tag = format!("after-{n}");
        ledger.record(http_publish_durable(a, room, &tag).await, &tag, a);
        let got = events(&mut client, room, 1).await;
        ledger.assert_delivered(&got, now.offset + 1..=now.offset + 1, what);
    }
}

/// A valid epoch that is not `epoch`.
fn another_epoch(epoch: &str) -> String {
    let other = if epoch == "another-epoch" {
        "another-epoch-2"
    } else {
        "another-epoch"
    };
    other.to_owned()
}

/// The fields a history answer is checked on (WebSocket and HTTP alike).
fn history_fields(reply: &Value) -> Value {
    let fields = ["room", "offset", "epoch", "recovered", "events", "more"];
    fields
        .iter()
        .map(|&field| (field.to_owned(), reply[field].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `value` percent-encoded for a URL query: an epoch is opaque.
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn history_answers_the_latest_events_or_those_after_since(kind: Kind) {
    let cluster = Cluster::start(kind, "history", &[]).await;
    let (a, b) = (cluster.a(), cluster.b());
    let room = "feed:history:1";
    let mut watcher = WsClient::connect(a).await;
    subscribe_from(&mut watcher, room, None).await;
    let mut ledger = Ledger::default();
    http_publish_all(&mut ledger, b, room, &tags("h", 10)).await;
    let delivered = events(&mut watcher, room, 10).await;
    ledger.assert_delivered(&delivered, 1..=10, "watcher");
    let epoch = ledger.epoch.clone().expect("published");
    // The answer expected: the very envelopes the watcher got at `offsets`, ascending.
    let answer = |offsets: Range<u64>, more: bool| {
        let events: Vec<Value> = offsets.map(|o| delivered[o as usize - 1].clone()).collect();
        json!({"room": room, "offset": 10, "epoch": epoch, "recovered": true,
               "events": events, "more": more})
    };
    let cases = [
        (None, Some(3), answer(8..11, false)),
        (None, None, answer(1..11, false)),
        (Some(2), Some(3), answer(3..6, true)),
        (Some(5), None, answer(6..11, false)),
        (Some(7), Some(3), answer(8..11, false)),
        (Some(10), None, answer(11..11, false)),
    ];
    let mut reader = WsClient::connect(a).await;
    for (from, limit, expected) in cases {
        let mut frame = json!({"op": "history", "room": room});
        let mut query = Vec::new();
        if let Some(offset) = from {
            frame["since"] = json!({"offset": offset, "epoch": epoch});
            query.push(format!("since={offset}&epoch={}", query_escape(&epoch)));
        }
        if let Some(limit) = limit {
            frame["limit"] = json!(limit);
            query.push(format!("limit={limit}"));
        }
        let reply = reader.request(frame.clone()).await;
        assert_eq!(reply["op"], "history", "{frame}: {reply}");
        assert_eq!(history_fields(&reply), expected, "{frame}");
        let path = format!("/history/{room}?{}", query.join("&"));
        let (status, body) = b.get_json(path.trim_end_matches('?')).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        assert_eq!(history_fields(&body), expected, "GET {path}");
    }

    let other = json!({"offset": 5, "epoch": another_epoch(&epoch)});
    let reply = reader
        .request(json!({"op": "history", "room": room, "since": other}))
        .await;
    assert_eq!(reply["recovered"], false, "another epoch: {reply}");
    assert_eq!(
        position(&reply),
        Position {
            offset: 10,
            epoch: epoch.clone()
        }
    );
    let path = format!("/history/{room}?since=5&epoch={}", another_epoch(&epoch));
    let (status, body) = a.get_json(&path).await;
    assert_eq!(
        (status, &body["recovered"]),
        (200, &json!(false)),
        "{path}: {body}"
    );

    // A numeric `ref` comes back as it was sent.
    reader.send_json(&json!({"op": "history", "room": room, "limit": 1, "ref": 7}));
    let reply = reader.recv_json(REPLY_TIMEOUT).await;
    assert_eq!(
        (&reply["ref"], &reply["events"]),
        (&json!(7), &json!([delivered[9]]))
    );

    let reply = reader
        .request(json!({"op": "history", "room": "chat:unused"}))
        .await;
    assert_eq!(reply["op"], "history", "{reply}");
    assert_eq!(
        (u64_at(&reply, "/offset"), &reply["events"]),
        (0, &json!([]))
    );

    for plain in ["plain:history", "chat:too:deep"] {
        let reply = reader
            .request(json!({"op": "history", "room": plain}))
            .await;
        assert_eq!(
            (&reply["op"], &reply["code"]),
            (&json!("error"), &json!("not_durable"))
        );
        assert!(
            reply["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{reply}"
        );
        let (status, body) = a.get_json(&format!("/history/{plain}")).await;
        assert_eq!(status, 404, "GET /history/{plain}: {body}");
    }
}

/// Sends `frame`: the reply must be `error` `bad_frame` with a message and its `ref`,
/// and the session must still answer `ping`.
async fn refused(client: &mut WsClient, frame: Value) {
    let reply = client.request(frame.clone()).await;
    assert_eq!(
        (&reply["op"], &reply["code"]),
        (&json!("error"), &json!("bad_frame")),
        "{frame}: {reply}"
    );
    assert!(
        reply["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{reply}"
    );
    client.assert_alive().await;
}

/// An HTTP answer of 400 with an error text.
fn assert_bad_request(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 400, "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

async fn bad_since_limit_and_keys_are_refused_and_the_session_lives_on(kind: Kind) {
    let cluster = Cluster::start(kind, "refused", &[("HISTORY_SIZE", "100")]).await;
    let a = cluster.a();
    let room = "chat:refused";
    let mut client = WsClient::connect(a).await;
    subscribe_from(&mut client, room, None).await;
    let mut ledger = Ledger::default();
    http_publish_all(&mut ledger, a, room, &tags("ok", 1)).await;
    ledger.assert_delivered(&events(&mut client, room, 1).await, 1..=1, "subscribed");
    let epoch = ledger.epoch.clone().expect("published");
    let long = "e".repeat(65);

    let bad_sinces = [
        json!({"offset": -1, "epoch": epoch}),
        json!({"offset": 1.5, "epoch": epoch}),
        json!({"offset": "1", "epoch": epoch}),
        json!({"offset": 1, "epoch": 1}),
        json!({"offset": 1, "epoch": ""}),
        json!({"offset": 1, "epoch": long}),
        json!({"offset": 1}),
        json!(1),
    ];
    for bad in bad_sinces {
        let elsewhere = json!({"op": "subscribe", "room": "chat:elsewhere", "since": bad});
        refused(&mut client, elsewhere).await;
        refused(
            &mut client,
            json!({"op": "history", "room": room, "since": bad}),
        )
        .await;
    }
    for limit in [json!(0), json!(101), json!(-1), json!("10"), json!(1.5)] {
        refused(
            &mut client,
            json!({"op": "history", "room": room, "limit": limit}),
        )
        .await;
    }
    let keys = [
        json!(""),
        json!("k".repeat(65)),
        json!("a b"),
        json!("a/b"),
        json!(7),
    ];
    for key in keys {
        refused(&mut client, publish_frame(room, "refused", Some(&key))).await;
    }
    // Not subscribed elsewhere, still here, and no refused publish went out.
    http_publish_durable(a, "chat:elsewhere", "elsewhere").await;
    http_publish_all(&mut ledger, a, room, &tags("still", 1)).await;
    let got = events(&mut client, room, 1).await;
    ledger.assert_delivered(&got, 2..=2, "after the refused frames");

    let e = query_escape(&epoch);
    let queries = [
        format!("since=-1&epoch={e}"),
        format!("since=abc&epoch={e}"),
        format!("since=1.5&epoch={e}"),
        "since=1".to_owned(),
        format!("epoch={e}"),
        "since=1&epoch=".to_owned(),
        format!("since=1&epoch={long}"),
        "limit=0".to_owned(),
        "limit=101".to_owned(),
        "limit=-1".to_owned(),
        "limit=abc".to_owned(),
    ];
    for query in queries {
        let (status, body) = a.get_json(&format!("/history/{room}?{query}")).await;
        assert_bad_request(status, &body, &format!("GET ?{query}"));
    }
    for key in ["", &"k".repeat(65), "a b", "a/b"] {
        let (status, body) = http_publish(a, room, "refused", Some(key)).await;
        assert_bad_request(status, &body, &format!("Idempotency-Key {key:?}"));
    }
    http_publish_all(&mut ledger, a, room, &tags("last", 1)).await;
    let got = events(&mut client, room, 1).await;
    ledger.assert_delivered(&got, 3..=3, "after the refused requests");
    client.assert_alive().await;
}

async fn one_idempotency_key_on_two_servers_publishes_once_in_a_durable_room(kind: Kind) {
    let cluster = Cluster::start(kind, "idem-durable", &[]).await;
    let (a, b) = (cluster.a(), cluster.b());
    let room = "chat:idempotent";
    let mut on_a = WsClient::connect(a).await;
    subscribe_from(&mut on_a, room, None).await;
    let mut on_b = WsClient::connect(b).await;
    subscribe_from(&mut on_b, room, None).await;

    let (status, body) = http_publish(a, room, "first", Some("order-1")).await;
    assert_eq!((status, &body["ok"]), (200, &json!(true)), "{body}");
    let first = position(&body);
    assert_eq!(first.offset, 1, "{body}");
    let key = json!("order-1");
    let reply = on_b
        .request(publish_frame(room, "second", Some(&key)))
        .await;
    assert_eq!(reply["op"], "published", "{reply}");
    assert_eq!(
        position(&reply),
        first,
        "a repeated key is answered like the first"
    );

    // The same key on both servers at once.
    let key = json!("order-2");
    let ((status, body), reply) = join(
        http_publish(a, room, "third", Some("order-2")),
        on_b.request(publish_frame(room, "fourth", Some(&key))),
    )
    .await;
    assert_eq!(
        (status, &reply["op"]),
        (200, &json!("published")),
        "{body} {reply}"
    );
    assert_eq!(position(&body), position(&reply), "one key, one position");
    assert_eq!(position(&body).offset, 2, "{body}");

    let last = ws_publish(&mut on_a, room, "last").await;
    assert_eq!(last.offset, 3, "duplicates take no offset");
    let mut raced = Vec::new();
    for (client, who) in [(&mut on_a, "on A"), (&mut on_b, "on B")] {
        let got = events(client, room, 3).await;
        let offsets: Vec<u64> = got.iter().map(|e| u64_at(e, "/offset")).collect();
        assert_eq!(offsets, [1, 2, 3], "{who}");
        assert_eq!(
            (&got[0]["data"], &got[2]["data"]),
            (&json!("first"), &json!("last"))
        );
        raced.push(got[1]["data"].clone());
    }
    assert!(raced[0] == "third" || raced[0] == "fourth", "{raced:?}");
    assert_eq!(raced[0], raced[1], "one event for the key");
}

async fn one_idempotency_key_on_two_servers_publishes_once_in_a_plain_room(kind: Kind) {
    let cluster = Cluster::start(kind, "idem-plain", &[]).await;
    let (a, b) = (cluster.a(), cluster.b());
    let room = "plain:idempotent";
    let mut on_a = WsClient::connect(a).await;
    subscribe_from(&mut on_a, room, None).await;
    let mut on_b = WsClient::connect(b).await;
    subscribe_from(&mut on_b, room, None).await;

    let (status, body) = http_publish(a, room, "first", Some("order-1")).await;
    assert_eq!((status, body), (200, json!({"ok": true})));
    let key = json!("order-1");
    let reply = on_b
        .request(publish_frame(room, "second", Some(&key)))
        .await;
    assert_eq!(reply["op"], "published", "{reply}");
    assert!(reply.get("offset").is_none(), "a plain room: {reply}");

    let key = json!("order-2");
    let ((status, body), reply) = join(
        http_publish(a, room, "third", Some("order-2")),
        on_b.request(publish_frame(room, "fourth", Some(&key))),
    )
    .await;
    assert_eq!(
        (status, &reply["op"]),
        (200, &json!("published")),
        "{body} {reply}"
    );

    // Keyed like the others, the last one takes the same path through the backplane:
    // a duplicate of the earlier ones would arrive before it.
    let (status, body) = http_publish(a, room, "last", Some("order-3")).await;
    assert_eq!(status, 200, "{body}");
    let mut raced = Vec::new();
    for (client, who) in [(&mut on_a, "on A"), (&mut on_b, "on B")] {
        let got = events(client, room, 3).await;
        assert_eq!(
            (&got[0]["data"], &got[2]["data"]),
            (&json!("first"), &json!("last"))
        );
        assert!(
            got.iter().all(|e| e.get("offset").is_none()),
            "{who}: {got:?}"
        );
        raced.push(got[1]["data"].clone());
    }
    assert!(raced[0] == "third" || raced[0] == "fourth", "{raced:?}");
    assert_eq!(raced[0], raced[1], "one event for the key");
}
