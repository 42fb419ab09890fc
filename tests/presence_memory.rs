//! Presence (PROTOCOL.md §9) on the memory backplane's one server, without Redis: the
//! same frames and answers as across servers (`presence.rs`). Members come and go
//! with one `join` and one `leave` each, counts and `GET /presence` agree, a user with
//! two sessions counts once, refused requests leave the session open, and a TTL under
//! the minimum stops the server at start.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::presence::{
    assert_http_reads_need_a_reader, assert_http_refusals, assert_refused, assert_ws_refusals,
    clients, http_members, member_token, presence, presence_count, signed_in, Member,
};
use support::watcher::{
    assert_each_once, frames_to_pong, join_watched, leave_watched, Identity, Leave, Watcher,
};
use support::{Server, ServerBuilder, WsClient};

/// The presence rooms: one segment under `lobby:` or under `vip:`.
const PRESENCE_ROOMS: &str = "lobby:*,vip:*";
/// The room members come and go in.
const ROOM: &str = "lobby:memory";
/// Long enough for a duplicate `join` or `leave` to show: in one process there is no
/// refresh to wait for, only a few rounds of the scheduler.
const DUPLICATE_WINDOW: Duration = Duration::from_millis(500);
/// The smallest `PRESENCE_TTL_MS` a server accepts.
const MIN_PRESENCE_TTL_MS: u64 = 300;
/// How long a server with a bad setting may take to give up.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
const SECRET: &str = "presence-memory-secret";

/// One server on the memory backplane with presence; with authentication when
/// `secret` is given.
async fn server(test: &str, secret: Option<&str>) -> Server {
    let mut builder = ServerBuilder::new()
        .id(&format!("memory-{test}"))
        .env("PRESENCE_ROOMS", PRESENCE_ROOMS);
    if let Some(secret) = secret {
        builder = builder.env("AUTH_JWT_SECRET", secret);
    }
    builder.spawn().await
}

/// What a member is without authentication: no user, no info.
fn anonymous() -> Identity<'static> {
    Identity {
        user: None,
        info: Value::Null,
    }
}

/// `sessions` join [`ROOM`] one after the other, each watched by those before it;
/// they become watchers. Returns them with their members.
async fn watch(
    server: &Server,
    sessions: Vec<(WsClient, Identity<'_>)>,
) -> (Vec<Watcher>, Vec<Member>) {
    let (mut watchers, mut own) = (Vec::new(), Vec::new());
    for (mut session, who) in sessions {
        own.push(join_watched(server, &mut session, ROOM, &who, &mut watchers).await);
        watchers.push(Watcher::new(session));
    }
    (watchers, own)
}

/// Someone running one server without Redis checks that members come and go, by
/// `unsubscribe`, a close or a lost connection: each watcher gets one `join` and one
/// `leave` per member, with `user` and `info` null (authentication is off); each
/// member's own answer lists it; `presence_count` and `GET /presence` agree.
#[actix_web::test]
async fn members_come_and_go_with_one_join_and_one_leave_each() {
    let server = server("come-go", None).await;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        sessions.push((WsClient::connect(&server).await, anonymous()));
    }
    let (mut watchers, own) = watch(&server, sessions).await;

    let mut members = Vec::new();
    for how in Leave::ALL {
        let mut session = WsClient::connect(&server).await;
        let member = join_watched(&server, &mut session, ROOM, &anonymous(), &mut watchers).await;
        // Three clients; no user among them, so no users.
        assert_eq!(presence_count(&mut session, ROOM).await, (3, 0));
        let listed = clients(&presence(&mut session, ROOM).await);
        assert_eq!(clients(&http_members(&server, ROOM, None).await), listed);
        // One that unsubscribed and then closes is no member: no second leave.
        drop(leave_watched(session, how, ROOM, &member, &mut watchers).await);
        members.push(member);
    }
    assert_each_once(&mut watchers, &own, ROOM, &members, DUPLICATE_WINDOW).await;
    let left = presence(&mut watchers[0].client, ROOM).await;
    assert_eq!(clients(&left), clients(&own), "only the watchers remain");
    assert_eq!(presence_count(&mut watchers[1].client, ROOM).await, (2, 0));
    assert_eq!(
        clients(&http_members(&server, ROOM, None).await),
        clients(&own)
    );
}

/// A user with two tabs open checks that both are members carrying the `info` of the
/// token, counted as two clients but one user; that a user whose token does not allow
/// the room may not read it (WebSocket `not_allowed`, HTTP 403, 401 without a token);
/// and that counts follow as the tabs go.
#[actix_web::test]
async fn a_user_with_two_sessions_counts_once_and_members_carry_their_token_info() {
    let server = server("users", Some(SECRET)).await;
    let alice = json!({"name": "Alice"});
    let bob = json!({"name": "Bob", "team": 7});
    let people = [("alice", &alice), ("alice", &alice), ("bob", &bob)];
    let mut sessions = Vec::new();
    for (user, info) in people {
        let token = member_token(SECRET, user, "lobby:*", Some(info));
        let who = Identity {
            user: Some(user),
            info: info.clone(),
        };
        sessions.push((signed_in(&server, &token).await, who));
    }
    let (mut watchers, own) = watch(&server, sessions).await;
    assert_ne!(own[0].client, own[1].client, "two sessions, two clients");
    assert_eq!(presence_count(&mut watchers[2].client, ROOM).await, (3, 2));

    let reader = member_token(SECRET, "bob", "lobby:*", None);
    let mallory = member_token(SECRET, "mallory", "vip:*", None);
    let listed = assert_http_reads_need_a_reader(&server, ROOM, &reader, &mallory).await;
    assert_eq!(listed.len(), 3, "{listed:#?}");
    for member in &own {
        let same = listed.iter().find(|m| m.client == member.client);
        assert_eq!(same, Some(member), "GET /presence lists {member:?}");
    }
    let mut stranger = signed_in(&server, &mallory).await;
    for op in ["presence", "presence_count"] {
        let frame = json!({"op": op, "room": ROOM});
        assert_refused(&mut stranger, frame, "not_allowed").await;
    }

    // Alice closes one tab, then leaves from the other.
    let tab = watchers.remove(1);
    leave_watched(tab.client, Leave::Close, ROOM, &own[1], &mut watchers).await;
    assert_eq!(presence_count(&mut watchers[1].client, ROOM).await, (2, 2));
    let tab = watchers.remove(0);
    let tab = leave_watched(tab.client, Leave::Unsubscribe, ROOM, &own[0], &mut watchers).await;
    assert_eq!(presence_count(&mut watchers[0].client, ROOM).await, (1, 1));
    let mut tab = tab.expect("unsubscribing keeps the session");
    assert_eq!(presence_count(&mut tab, ROOM).await, (1, 1));
}

/// A user checks that a presence room nobody joined lists nobody; that `presence` and
/// `presence_count` answer `not_presence`, `bad_room` and `bad_frame` where they
/// should, and `GET /presence` 404 and 400, each leaving the session open; and that
/// subscribers of a room that is not a presence room are told of nobody.
#[actix_web::test]
async fn refused_requests_leave_the_session_open_and_plain_rooms_have_no_members() {
    let server = server("refused", None).await;
    let mut client = WsClient::connect(&server).await;
    assert_eq!(presence(&mut client, "lobby:empty").await, []);
    assert_eq!(presence_count(&mut client, "lobby:empty").await, (0, 0));
    assert_eq!(http_members(&server, "lobby:empty", None).await, []);
    assert_ws_refusals(&mut client, "plain:1").await;
    assert_http_refusals(&server, "plain:1", None).await;

    client.subscribe("plain:1").await;
    let mut other = WsClient::connect(&server).await;
    other.subscribe("plain:1").await;
    // In a presence room, the `join` would come before the `pong` that follows.
    let told = frames_to_pong(&mut client).await;
    assert_eq!(
        told,
        Vec::<Value>::new(),
        "a plain room has no presence frames"
    );
}

/// An operator checks that `PRESENCE_TTL_MS` under its minimum stops the server at
/// start (status 2, the one-line diagnosis naming it), and that the minimum runs.
#[actix_web::test]
async fn a_presence_ttl_under_the_minimum_stops_the_server() {
    for ttl in ["0", &(MIN_PRESENCE_TTL_MS - 1).to_string(), "soon"] {
        let builder = ServerBuilder::new()
            .id("bad-presence-ttl")
            .env("PRESENCE_ROOMS", PRESENCE_ROOMS)
            .env("PRESENCE_TTL_MS", ttl);
        let (status, output) = builder.run_to_exit(EXIT_TIMEOUT).await;
        let line = "switchboard: invalid configuration: PRESENCE_TTL_MS:";
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{ttl}: {output}");
        assert!(output.contains(line), "{ttl}: {output}");
    }
    let server = ServerBuilder::new()
        .id("min-presence-ttl")
        .env("PRESENCE_ROOMS", PRESENCE_ROOMS)
        .env("PRESENCE_TTL_MS", &MIN_PRESENCE_TTL_MS.to_string())
        .spawn()
        .await;
    let mut client = WsClient::connect(&server).await;
    client.subscribe("lobby:min").await;
    assert_eq!(presence_count(&mut client, "lobby:min").await, (1, 0));
}
