//! `switchboard token` from the outside: the printed token is accepted by a server with
//! the same `AUTH_JWT_SECRET` and grants exactly the patterns it was given (PROTOCOL.md
//! §6); bad flags and a missing secret stop it with status 2.

mod support;

use serde_json::{json, Value};
use support::{
    server::{mint_token, token_command},
    ServerBuilder, WsClient,
};

const SECRET: &str = "token-test-secret";

async fn try_subscribe(client: &mut WsClient, room: &str) -> Value {
    client
        .request(json!({"op": "subscribe", "room": room}))
        .await
}

async fn try_publish(client: &mut WsClient, room: &str) -> Value {
    client
        .request(json!({"op": "publish", "room": room, "event": {"type": "t", "data": 1}}))
        .await
}

#[actix_web::test]
async fn the_printed_token_grants_exactly_its_patterns() {
    let token = mint_token(
        SECRET,
        &[
            "--sub",
            "alice",
            "--subscribe",
            "match:*",
            "--publish",
            "chat:**",
            "--ttl",
            "1h",
        ],
    );
    let server = ServerBuilder::new()
        .id("token")
        .env("AUTH_JWT_SECRET", SECRET)
        .spawn()
        .await;
    let mut client = WsClient::connect(&server).await;
    let reply = client.request(json!({"op": "auth", "token": token})).await;
    assert_eq!(reply["op"], "authenticated", "{reply}");
    assert_eq!(reply["sub"], "alice", "{reply}");

    for allowed in ["match:1", "match:final", "player:alice"] {
        let reply = try_subscribe(&mut client, allowed).await;
        assert_eq!(reply["op"], "subscribed", "{allowed}: {reply}");
    }
    for refused in [
        "match:1:chat",
        "chat:lobby",
        "player:bob",
        "leaderboard:updates",
    ] {
        let reply = try_subscribe(&mut client, refused).await;
        assert_eq!(reply["code"], "not_allowed", "{refused}: {reply}");
    }
    for allowed in ["chat:lobby", "chat:eu:lobby"] {
        let reply = try_publish(&mut client, allowed).await;
        assert_eq!(reply["op"], "published", "{allowed}: {reply}");
    }
    for refused in ["chat", "match:1", "player:alice"] {
        let reply = try_publish(&mut client, refused).await;
        assert_eq!(reply["code"], "not_allowed", "{refused}: {reply}");
    }

    // Another server's secret does not accept it: the close is 1008.
    let other = ServerBuilder::new()
        .id("token-other")
        .env("AUTH_JWT_SECRET", "another-secret")
        .spawn()
        .await;
    let mut stranger = WsClient::connect(&other).await;
    stranger.send_json(&json!({"op": "auth", "token": token}));
    assert_eq!(
        stranger.recv_close(support::REPLY_TIMEOUT).await,
        Some(1008)
    );
}

#[test]
fn bad_flags_and_a_missing_secret_exit_2() {
    let (status, stdout, stderr) = token_command(None, &["--sub", "alice"]);
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("AUTH_JWT_SECRET"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    for args in [
        &["--sub", "alice", "--subscribe", "chat:**:x"][..],
        &["--sub", "alice", "--ttl", "1w"][..],
        &["--subscribe", "chat:*"][..],
        &["--sub", "alice", "--wat"][..],
    ] {
        let (status, stdout, stderr) = token_command(Some(SECRET), args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
}
