//! A presence room (PROTOCOL.md §9) as a client reads it: the members a `presence`
//! answer or `GET /presence` lists, `presence_count`, tokens with an `info` claim, and
//! the refusals every setup shares. The `join` and `leave` frames are in [`super::watcher`].

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::server::{body_json, mint_token, Server};
use super::{u64_at, WsClient, REPLY_TIMEOUT};

/// How far a member's `joinedAt` may lie outside the moments its `subscribe` was sent
/// and answered: the server shares the test's clock, so only rounding and scheduling.
pub const JOINED_AT_SLACK_MS: u64 = 1_000;

/// One member of a presence room, as a `presence` answer or a `join` / `leave` frame
/// states it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The connection id, unique across servers.
    pub client: String,
    /// The token's `sub`; `None` with authentication off.
    pub user: Option<String>,
    /// The token's `info` claim, `null` without one.
    pub info: Value,
    /// The server the member's session is connected to.
    pub server_id: String,
    /// When it joined, in ms since the Unix epoch.
    pub joined_at: u64,
}

impl Member {
    /// Reads a member object; a missing or mistyped field fails the test. `user` and
    /// `info` must be present, `null` when there is nothing to say.
    pub fn from_json(value: &Value) -> Member {
        let text = |field: &str| {
            value[field]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| panic!("a member has a non-empty string {field}: {value}"))
                .to_owned()
        };
        let user = match value.get("user") {
            Some(Value::Null) => None,
            Some(Value::String(user)) => Some(user.clone()),
            _ => panic!("a member's user is a string or null: {value}"),
        };
        let info = value
            .get("info")
            .unwrap_or_else(|| panic!("a member has an info field: {value}"));
        Member {
            client: text("client"),
            user,
            info: info.clone(),
            server_id: text("serverId"),
            joined_at: u64_at(value, "/joinedAt"),
        }
    }

    /// `joinedAt` lies between `before` and `after` (ms since the epoch, taken around
    /// the `subscribe`), give or take [`JOINED_AT_SLACK_MS`].
    pub fn assert_joined_between(&self, before: u64, after: u64) {
        let plausible = before - JOINED_AT_SLACK_MS..=after + JOINED_AT_SLACK_MS;
        assert!(
            plausible.contains(&self.joined_at),
            "joinedAt {} not in {plausible:?}: {self:?}",
            self.joined_at
        );
    }
}

/// The members of a `presence` answer or a `GET /presence` body, which must name `room`
/// and list no client twice.
pub fn members_of(answer: &Value, room: &str) -> Vec<Member> {
    assert_eq!(answer["room"], room, "presence answer: {answer}");
    let members: Vec<Member> = answer["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members list: {answer}"))
        .iter()
        .map(Member::from_json)
        .collect();
    assert_eq!(
        clients(&members).len(),
        members.len(),
        "a client listed twice: {answer}"
    );
    members
}

/// The `client`s of `members`.
pub fn clients(members: &[Member]) -> BTreeSet<String> {
    members.iter().map(|m| m.client.clone()).collect()
}

/// The one member of `user` in `members`.
pub fn by_user<'a>(members: &'a [Member], user: &str) -> &'a Member {
    let mut found = members.iter().filter(|m| m.user.as_deref() == Some(user));
    let member = found
        .next()
        .unwrap_or_else(|| panic!("no member of {user} in {members:#?}"));
    assert!(found.next().is_none(), "{user} twice in {members:#?}");
    member
}

/// `{"op":"presence","room":room}` over WebSocket: the members it answers.
pub async fn presence(client: &mut WsClient, room: &str) -> Vec<Member> {
    let reply = client
        .request(json!({"op": "presence", "room": room}))
        .await;
    assert_eq!(reply["op"], "presence", "presence in {room}: {reply}");
    members_of(&reply, room)
}

/// `{"op":"presence_count","room":room}`: its `clients` and `users`.
pub async fn presence_count(client: &mut WsClient, room: &str) -> (u64, u64) {
    let frame = json!({"op": "presence_count", "room": room});
    let reply = client.request(frame).await;
    assert_eq!(reply["op"], "presence_count", "in {room}: {reply}");
    assert_eq!(reply["room"], room, "{reply}");
    (u64_at(&reply, "/clients"), u64_at(&reply, "/users"))
}

/// `GET /presence/{room}`, with `Authorization: Bearer <bearer>` when given: the status
/// and the body as JSON.
pub async fn http_presence(server: &Server, room: &str, bearer: Option<&str>) -> (u16, Value) {
    let (status, _, text) = server.get_text(&format!("/presence/{room}"), bearer).await;
    (status, body_json(text.as_bytes()))
}

/// `GET /presence/{room}`, which must answer 200: the members it lists.
pub async fn http_members(server: &Server, room: &str, bearer: Option<&str>) -> Vec<Member> {
    let (status, body) = http_presence(server, room, bearer).await;
    assert_eq!(
        status,
        200,
        "GET /presence/{room} on {}: {body}",
        server.id()
    );
    members_of(&body, room)
}

/// An HTTP refusal: `expected` and `{"ok":false,"error":"..."}`.
pub fn assert_http_refused(status: u16, body: &Value, expected: u16, what: &str) {
    assert_eq!(status, expected, "{what}: {body}");
    assert_eq!(body["ok"], false, "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {body}"
    );
}

/// Sends `frame`: the reply (matched by its `ref`) must be `error` `code` with a
/// message, and the session must still answer `ping`.
pub async fn assert_refused(client: &mut WsClient, frame: Value, code: &str) {
    let reply = client.request(frame.clone()).await;
    assert_eq!(
        (&reply["op"], &reply["code"]),
        (&json!("error"), &json!(code)),
        "{frame}: {reply}"
    );
    assert!(
        reply["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{frame}: {reply}"
    );
    client.assert_alive().await;
}

/// The refusals of both ops every setup shares, on a session that may subscribe to
/// `plain`, a room that is not a presence room: `not_presence` there, `bad_room` for
/// names no room has, `bad_frame` for a missing or mistyped room.
pub async fn assert_ws_refusals(client: &mut WsClient, plain: &str) {
    let too_long = "r".repeat(201);
    for op in ["presence", "presence_count"] {
        assert_refused(client, json!({"op": op, "room": plain}), "not_presence").await;
        for bad in ["", "a b", "caf\u{e9}", "x*", too_long.as_str()] {
            assert_refused(client, json!({"op": op, "room": bad}), "bad_room").await;
        }
        assert_refused(client, json!({"op": op}), "bad_frame").await;
        assert_refused(client, json!({"op": op, "room": 7}), "bad_frame").await;
    }
    // A numeric `ref` comes back as it was sent, on an error as on an answer.
    client.send_json(&json!({"op": "presence", "room": plain, "ref": 7}));
    let reply = client
        .recv_matching(REPLY_TIMEOUT, "with ref 7", |f| f["ref"] == 7)
        .await;
    assert_eq!(reply["code"], "not_presence", "{reply}");
}

/// `GET /presence` refusals, as `bearer` (who may read any room it names): 404 for
/// `plain`, not a presence room; 400 for names no room has.
pub async fn assert_http_refusals(server: &Server, plain: &str, bearer: Option<&str>) {
    let (status, body) = http_presence(server, plain, bearer).await;
    assert_http_refused(status, &body, 404, &format!("GET /presence/{plain}"));
    for bad in ["a%20b", "caf%C3%A9", "x*", &"r".repeat(201)] {
        let (status, body) = http_presence(server, bad, bearer).await;
        assert_http_refused(status, &body, 400, &format!("GET /presence/{bad}"));
    }
}

/// A token from `switchboard token` for `sub`, valid for an hour, allowed to subscribe
/// to `subscribe` (comma-separated patterns), with `info` as its `info` claim.
pub fn member_token(secret: &str, sub: &str, subscribe: &str, info: Option<&Value>) -> String {
    let info = info.map(Value::to_string);
    let mut args = vec!["--sub", sub, "--subscribe", subscribe, "--ttl", "1h"];
    if let Some(info) = &info {
        args.extend(["--info", info.as_str()]);
    }
    mint_token(secret, &args)
}

/// A session on `server` that presented `token` as its first frame.
pub async fn signed_in(server: &Server, token: &str) -> WsClient {
    let mut client = WsClient::connect(server).await;
    let reply = client.request(json!({"op": "auth", "token": token})).await;
    assert_eq!(reply["op"], "authenticated", "on {}: {reply}", server.id());
    client
}

/// With authentication on, `GET /presence/{room}` needs a reader (PROTOCOL.md §7): no
/// bearer, or one that is no valid token, gets 401; the JWT of a user who may not
/// subscribe to the room (`stranger`) 403; that of one who may (`reader`) an answer,
/// whose members are returned.
pub async fn assert_http_reads_need_a_reader(
    server: &Server,
    room: &str,
    reader: &str,
    stranger: &str,
) -> Vec<Member> {
    for (bearer, status) in [(None, 401), (Some("not-a-jwt"), 401), (Some(stranger), 403)] {
        let (got, body) = http_presence(server, room, bearer).await;
        let what = format!("GET /presence/{room} with bearer {bearer:?}");
        assert_http_refused(got, &body, status, &what);
    }
    http_members(server, room, Some(reader)).await
}
