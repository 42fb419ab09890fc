//! Peers on `system:events` (§3) and graceful shutdown (§2: close 1001; §4: exit 0).

mod support;

use std::time::{Duration, Instant};

use support::{unique_prefix, wait_until, RedisServer, Server, ServerBuilder, WsClient};

/// The fast peer heartbeat every server in these tests uses unless said otherwise.
const PEER_HEARTBEAT: Duration = Duration::from_millis(200);
/// Generous time for a few heartbeats to cross Redis.
const DISCOVERY: Duration = Duration::from_secs(3);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

async fn server(redis: &RedisServer, prefix: &str, id: &str) -> Server {
    support::server::on_redis(redis, prefix, id).await
}

async fn wait_lists(server: &Server, peer: &str) {
    let what = format!("{} lists peer {peer}", server.id());
    wait_until(DISCOVERY, &what, || async {
        server.peer_ids().await.iter().any(|p| p == peer)
    })
    .await;
}

#[actix_web::test]
async fn servers_list_each_other_and_forget_stopped_and_crashed_peers() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("peers");
    let a = server(&redis, &prefix, "A-peers").await;
    // B's own heartbeat is slow, so only its `server_stopped` can make A forget it fast.
    let mut b = ServerBuilder::new()
        .redis(&redis, &prefix)
        .id("B-peers")
        .env("PEER_HEARTBEAT_MS", "5000")
        .spawn()
        .await;
    let mut c = server(&redis, &prefix, "C-peers").await;
    wait_lists(&a, "B-peers").await;
    wait_lists(&a, "C-peers").await;
    wait_lists(&b, "A-peers").await;
    wait_lists(&c, "A-peers").await;
    assert!(
        !a.peer_ids().await.contains(&"A-peers".to_owned()),
        "a server lists itself"
    );

    b.sigterm();
    let stopped = Instant::now();
    assert!(b.wait_exit(SHUTDOWN_TIMEOUT).await.success());
    wait_until(
        Duration::from_secs(2),
        "A forgets B on server_stopped",
        || async { !a.peer_ids().await.contains(&"B-peers".to_owned()) },
    )
    .await;
    eprintln!("A forgot stopped B after {:?}", stopped.elapsed());

    c.kill();
    let killed = Instant::now();
    let window = PEER_HEARTBEAT * 3 + Duration::from_millis(1500);
    wait_until(
        window,
        "A forgets crashed C after three heartbeats",
        || async { !a.peer_ids().await.contains(&"C-peers".to_owned()) },
    )
    .await;
    eprintln!("A forgot killed C after {:?}", killed.elapsed());
    assert!(a.peer_ids().await.is_empty());
}

#[actix_web::test]
async fn two_live_servers_with_one_id_both_report_unhealthy() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("dup-id");
    let first = server(&redis, &prefix, "same-id").await;
    let second = server(&redis, &prefix, "same-id").await;
    for server in [&first, &second] {
        wait_until(
            DISCOVERY,
            "the duplicate id is reported unhealthy",
            || async {
                let (status, health) = server.health().await;
                status == 503 && health["isHealthy"] == false
            },
        )
        .await;
    }
}

#[actix_web::test]
async fn sigterm_closes_sessions_with_1001_announces_the_stop_and_exits_0() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("shutdown");
    let mut a = server(&redis, &prefix, "A-shutdown").await;
    let b = server(&redis, &prefix, "B-shutdown").await;
    let mut watcher = WsClient::connect(&b).await;
    watcher.subscribe("system:events").await;
    let mut subscribed = WsClient::connect(&a).await;
    subscribed.subscribe("room").await;
    let mut idle = WsClient::connect(&a).await;
    wait_lists(&b, "A-shutdown").await;

    a.sigterm();
    let started = Instant::now();
    assert_eq!(subscribed.recv_close(SHUTDOWN_TIMEOUT).await, Some(1001));
    assert_eq!(idle.recv_close(SHUTDOWN_TIMEOUT).await, Some(1001));
    let status = a.wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(1)).await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    eprintln!("A exited {:?} after SIGTERM", started.elapsed());

    let stopped = watcher
        .skip_to_event("system:events", Duration::from_secs(5), |event| {
            event["type"] == "server_stopped"
        })
        .await;
    assert_eq!(stopped["data"]["serverId"], "A-shutdown", "{stopped}");
    assert_eq!(stopped["serverId"], "A-shutdown", "{stopped}");
}

#[actix_web::test]
async fn sigint_also_shuts_down_gracefully() {
    let mut a = ServerBuilder::new().id("A-sigint").spawn().await;
    let mut client = WsClient::connect(&a).await;
    client.assert_alive().await;
    a.sigint();
    assert_eq!(client.recv_close(SHUTDOWN_TIMEOUT).await, Some(1001));
    assert_eq!(a.wait_exit(SHUTDOWN_TIMEOUT).await.code(), Some(0));
}
