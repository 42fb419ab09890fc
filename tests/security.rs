//! PROTOCOL.md §6 from the outside: JWT authentication in both forms, expiry,
//! audience, room patterns, origins, the service token, and the per-connection limits.

mod support;

use std::time::{Duration, Instant};

use awc::ws::{Frame, Message};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{now_ms, Server, ServerBuilder, WsClient, REPLY_TIMEOUT};

const SECRET: &str = "test-secret-for-switchboard";

fn token_with(secret: &str, claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a token encodes")
}

/// A token for `sub`, valid for `seconds`, allowed the given room patterns.
fn token(sub: &str, seconds: i64, subscribe: &[&str], publish: &[&str]) -> String {
    let exp = (now_ms() / 1000) as i64 + seconds;
    token_with(
        SECRET,
        json!({"sub": sub, "exp": exp, "subscribe": subscribe, "publish": publish}),
    )
}

async fn secured(extra: &[(&str, &str)]) -> Server {
    let mut builder = ServerBuilder::new()
        .id("secured")
        .env("AUTH_JWT_SECRET", SECRET)
        .env("RUST_LOG", "debug");
    for (name, value) in extra {
        builder = builder.env(name, value);
    }
    builder.spawn().await
}

/// The upgrade's HTTP status, with `headers` on the request (101 when it succeeds).
async fn upgrade_status(server: &Server, headers: &[(&str, &str)]) -> u16 {
    let mut request = awc::Client::new().ws(server.ws_url());
    for (name, value) in headers {
        request = request.set_header(*name, *value);
    }
    match request.connect().await {
        Ok((response, _)) => response.status().as_u16(),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => status.as_u16(),
        Err(e) => panic!("upgrade failed without a status: {e}"),
    }
}

/// Authenticates with a first frame and returns the reply.
async fn auth_frame(client: &mut WsClient, token: &str) -> Value {
    client.request(json!({"op": "auth", "token": token})).await
}

#[actix_web::test]
async fn first_frame_auth_grants_the_token_rooms_and_the_own_player_room() {
    let server = secured(&[]).await;
    let mut client = WsClient::connect(&server).await;
    let reply = auth_frame(&mut client, &token("u1", 60, &["match:*"], &["chat:**"])).await;
    assert_eq!(reply["op"], "authenticated", "{reply}");
    assert_eq!(reply["sub"], "u1");
    client.subscribe("match:7").await;
    client.subscribe("player:u1").await;
    for room in ["player:u2", "leaderboard:updates", "match:7:chat"] {
        let reply = client
            .request(json!({"op": "subscribe", "room": room}))
            .await;
        assert_eq!(reply["code"], "not_allowed", "{room}: {reply}");
    }
    let refused = client.try_publish("match:7", "x", json!(1)).await;
    assert_eq!(refused["code"], "not_allowed", "{refused}");
    client.publish("chat:a:b", "said", json!("hi")).await;
}

#[actix_web::test]
async fn any_other_first_frame_or_silence_closes_with_1008() {
    let server = secured(&[("AUTH_TIMEOUT_MS", "300")]).await;
    let mut eager = WsClient::connect(&server).await;
    eager.send_json(&json!({"op": "subscribe", "room": "match:1"}));
    assert_eq!(eager.recv_close(REPLY_TIMEOUT).await, Some(1008));

    let mut silent = WsClient::connect(&server).await;
    let started = Instant::now();
    assert_eq!(silent.recv_close(REPLY_TIMEOUT).await, Some(1008));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
}

#[actix_web::test]
async fn bad_tokens_close_1008_in_a_frame_and_401_in_the_header() {
    let server = secured(&[("AUTH_JWT_AUDIENCE", "app")]).await;
    let exp = (now_ms() / 1000) as i64 + 60;
    let bad = [
        ("missing", String::new()),
        ("garbage", "not.a.jwt".to_owned()),
        (
            "expired",
            token_with(SECRET, json!({"sub": "u", "exp": exp - 120, "aud": "app"})),
        ),
        (
            "wrong signature",
            token_with("other", json!({"sub": "u", "exp": exp, "aud": "app"})),
        ),
        (
            "wrong audience",
            token_with(SECRET, json!({"sub": "u", "exp": exp, "aud": "web"})),
        ),
        (
            "no audience",
            token_with(SECRET, json!({"sub": "u", "exp": exp})),
        ),
    ];
    for (what, token) in &bad {
        let mut client = WsClient::connect(&server).await;
        client.send_json(&json!({"op": "auth", "token": token}));
        assert_eq!(
            client.recv_close(REPLY_TIMEOUT).await,
            Some(1008),
            "{what} token in a frame"
        );
        if !token.is_empty() {
            let bearer = format!("Bearer {token}");
            let status = upgrade_status(&server, &[("Authorization", &bearer)]).await;
            assert_eq!(status, 401, "{what} token in the header");
        }
    }
    let good = token_with(SECRET, json!({"sub": "u", "exp": exp, "aud": ["x", "app"]}));
    for scheme in ["Bearer", "bearer"] {
        let bearer = format!("{scheme} {good}");
        assert_eq!(
            upgrade_status(&server, &[("Authorization", &bearer)]).await,
            101,
            "scheme {scheme}"
        );
    }
}

#[actix_web::test]
async fn a_header_token_authenticates_the_upgrade() {
    let server = secured(&[]).await;
    let bearer = format!("Bearer {}", token("svc", 60, &["match:**"], &["match:**"]));
    let (_, mut framed) = awc::Client::new()
        .ws(server.ws_url())
        .set_header("Authorization", bearer)
        .connect()
        .await
        .expect("upgrade with a valid token");
    let frame = json!({"op": "subscribe", "room": "match:1", "ref": 1}).to_string();
    framed
        .send(Message::Text(frame.into()))
        .await
        .expect("send");
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, framed.next()).await {
            Ok(Some(Ok(Frame::Text(text)))) => {
                let reply: Value = serde_json::from_slice(&text).expect("JSON");
                assert_eq!(reply["op"], "subscribed", "{reply}");
                break;
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no reply to subscribe: {other:?}"),
        }
    }
}

#[actix_web::test]
async fn an_expiring_token_closes_the_session_unless_renewed() {
    let server = secured(&[]).await;
    let mut lapsing = WsClient::connect(&server).await;
    let reply = auth_frame(&mut lapsing, &token("u", 2, &["match:*"], &[])).await;
    assert_eq!(reply["op"], "authenticated", "{reply}");
    let mut renewed = WsClient::connect(&server).await;
    auth_frame(&mut renewed, &token("u", 2, &["match:*"], &[])).await;
    let renewal = auth_frame(&mut renewed, &token("u", 60, &["match:*"], &[])).await;
    assert_eq!(renewal["op"], "authenticated", "{renewal}");

    let started = Instant::now();
    assert_eq!(lapsing.recv_close(Duration::from_secs(5)).await, Some(1008));
    eprintln!("expired session closed after {:?}", started.elapsed());
    renewed.assert_alive().await;
    renewed.subscribe("match:2").await;
}

/// A fresh token replaces the grant at once (PROTOCOL.md §6): rooms the new token
/// does not allow are left, each with `unsubscribed` and reason `not_allowed`, and no
/// event of them follows; another user's token closes the session with 1008.
#[actix_web::test]
async fn a_narrower_token_leaves_the_rooms_it_refuses_and_another_users_token_closes_1008() {
    let server = secured(&[]).await;
    let mut client = WsClient::connect(&server).await;
    auth_frame(&mut client, &token("u1", 60, &["match:*", "chat:*"], &[])).await;
    for room in ["match:1", "chat:1", "player:u1"] {
        client.subscribe(room).await;
    }
    let narrower = auth_frame(&mut client, &token("u1", 60, &["match:*"], &[])).await;
    assert_eq!(narrower["op"], "authenticated", "{narrower}");
    let left = client
        .recv_matching(REPLY_TIMEOUT, "unsubscribed from chat:1", |f| {
            f["op"] == "unsubscribed"
        })
        .await;
    assert_eq!(
        left,
        json!({"op": "unsubscribed", "room": "chat:1", "reason": "not_allowed"})
    );
    // Published in this order on one server: once the last one arrives, an event of
    // chat:1 would have arrived before it.
    for room in ["chat:1", "player:u1", "match:1"] {
        let (status, body) = server
            .post_json(
                &format!("/publish/{room}"),
                &json!({"type": "t", "data": room}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut seen = Vec::new();
    while seen.last() != Some(&json!("match:1")) {
        let frame = client.recv_json(REPLY_TIMEOUT).await;
        assert_ne!(frame["room"], "chat:1", "an event of a room left: {frame}");
        if frame["op"] == "event" {
            seen.push(frame["room"].clone());
        }
    }
    assert_eq!(seen, [json!("player:u1"), json!("match:1")]);
    let refused = client
        .request(json!({"op": "subscribe", "room": "chat:2"}))
        .await;
    assert_eq!(refused["code"], "not_allowed", "{refused}");

    let mut other = WsClient::connect(&server).await;
    auth_frame(&mut other, &token("u1", 60, &["match:*"], &[])).await;
    other.send_json(&json!({"op": "auth", "token": token("u2", 60, &["match:*"], &[])}));
    assert_eq!(other.recv_close(REPLY_TIMEOUT).await, Some(1008));
    client.assert_alive().await;
}

#[actix_web::test]
async fn tokens_never_reach_the_log() {
    let server = secured(&[]).await;
    let good = token("logged-user", 60, &["match:*"], &[]);
    let bad = token_with("wrong-secret", json!({"sub": "x", "exp": 4_000_000_000u64}));
    let mut client = WsClient::connect(&server).await;
    auth_frame(&mut client, &good).await;
    client.subscribe("match:1").await;
    let mut refused = WsClient::connect(&server).await;
    refused.send_json(&json!({"op": "auth", "token": bad}));
    assert_eq!(refused.recv_close(REPLY_TIMEOUT).await, Some(1008));
    let bearer = format!("Bearer {bad}");
    assert_eq!(
        upgrade_status(&server, &[("Authorization", &bearer)]).await,
        401
    );
    let log = server.stderr_tail();
    assert!(
        log.contains("authentication refused"),
        "the refusal is logged: {log}"
    );
    for secret in [&good, &bad, &SECRET.to_owned()] {
        let signature = secret.rsplit('.').next().expect("a part");
        assert!(!log.contains(signature), "a token leaked: {log}");
    }
}

#[actix_web::test]
async fn a_foreign_origin_is_refused() {
    let server = ServerBuilder::new()
        .id("origins")
        .env(
            "ALLOWED_ORIGINS",
            "https://game.example, http://localhost:3000",
        )
        .spawn()
        .await;
    let foreign = upgrade_status(&server, &[("Origin", "https://evil.example")]).await;
    assert_eq!(foreign, 403);
    let listed = upgrade_status(&server, &[("Origin", "https://game.example")]).await;
    assert_eq!(listed, 101);
    assert_eq!(
        upgrade_status(&server, &[]).await,
        101,
        "no Origin: not a browser"
    );
}

#[actix_web::test]
async fn the_service_token_guards_the_http_endpoints_that_change_things() {
    let server = ServerBuilder::new()
        .id("service")
        .env("SERVICE_TOKEN", "svc-token-1")
        .spawn()
        .await;
    let event = json!({"type": "x", "data": 1}).to_string();
    let (status, body) = server.post_raw("/publish/match:1", &event).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = server.post_raw("/stats/reset", "").await;
    assert_eq!(status, 401);
    let client = awc::Client::new();
    let url = format!("{}/publish/match:1", server.http_url());
    let wrong = client
        .post(&url)
        .bearer_auth("svc-token-2")
        .send_body(event.clone())
        .await
        .expect("POST");
    assert_eq!(wrong.status().as_u16(), 401);
    // The scheme is case-insensitive (RFC 7235 §2.1).
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let right = client
            .post(&url)
            .insert_header(("Authorization", format!("{scheme} svc-token-1")))
            .send_body(event.clone())
            .await
            .expect("POST");
        assert_eq!(right.status().as_u16(), 200, "scheme {scheme}");
    }
    let (status, _) = server.get_json("/stats").await;
    assert_eq!(status, 200, "reading stays open");
}

#[actix_web::test]
async fn subscriptions_per_connection_are_limited_with_or_without_auth() {
    for auth in [false, true] {
        let mut builder = ServerBuilder::new()
            .id("subs")
            .env("LIMIT_SUBSCRIPTIONS", "3");
        if auth {
            builder = builder.env("AUTH_JWT_SECRET", SECRET);
        }
        let server = builder.spawn().await;
        let mut client = WsClient::connect(&server).await;
        if auth {
            auth_frame(&mut client, &token("u", 60, &["r:*"], &[])).await;
        }
        for n in 0..3 {
            client.subscribe(&format!("r:{n}")).await;
        }
        client.subscribe("r:0").await;
        let reply = client
            .request(json!({"op": "subscribe", "room": "r:3"}))
            .await;
        assert_eq!(
            reply["code"], "too_many_subscriptions",
            "auth {auth}: {reply}"
        );
        client.unsubscribe("r:0").await;
        client.subscribe("r:3").await;
    }
}

#[actix_web::test]
async fn publishing_is_rate_limited_and_a_flood_is_closed() {
    let server = ServerBuilder::new()
        .id("rate")
        .env("LIMIT_PUBLISH_RATE", "1")
        .env("LIMIT_PUBLISH_BURST", "5")
        .spawn()
        .await;
    let mut client = WsClient::connect(&server).await;
    for n in 0..5 {
        client.publish("r:1", "x", json!(n)).await;
    }
    let refused = client.try_publish("r:1", "x", json!(5)).await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    for n in 0..120 {
        client
            .send_json(&json!({"op": "publish", "room": "r:1", "event": {"type": "x", "data": n}}));
    }
    assert_eq!(client.recv_close(REPLY_TIMEOUT).await, Some(1008));

    let unlimited = ServerBuilder::new()
        .id("unlimited")
        .env("LIMIT_PUBLISH_RATE", "0")
        .spawn()
        .await;
    let mut client = WsClient::connect(&unlimited).await;
    for n in 0..300 {
        client.publish("r:1", "x", json!(n)).await;
    }
}
