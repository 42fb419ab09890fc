//! `rediss://`: Switchboard talks to a Redis that only speaks TLS, trusting the CA the
//! way an operator would (the system store, or `SSL_CERT_FILE`).

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::json;
use support::{ServerBuilder, WsClient, REPLY_TIMEOUT};

/// A throwaway CA and a server certificate for 127.0.0.1, made with the `openssl` CLI.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs (scripts/test.sh installs it)");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
    ]
    .iter()
    .chain(&[
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=switchboard-test-ca",
    ])
    .copied()
    .collect::<Vec<_>>());
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
}

/// `redis-server` with only a TLS port; killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_redis(dir: &Path) -> TlsRedis {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.pem"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    TlsRedis { child, port }
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[actix_web::test]
async fn events_flow_over_a_tls_only_redis() {
    let dir = scratch_dir();
    make_certificates(&dir);
    let redis = start_tls_redis(&dir);
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let ca = dir.join("ca.pem").display().to_string();
    let spawn = |id: &'static str| {
        ServerBuilder::new()
            .id(id)
            .env("REDIS_URL", &url)
            .env("SSL_CERT_FILE", &ca)
            .spawn()
    };
    let (a, b) = (spawn("tls-a").await, spawn("tls-b").await);
    a.wait_healthy().await;
    b.wait_healthy().await;
    let mut client = WsClient::connect(&b).await;
    client.subscribe("match:tls").await;
    let (status, body) = a
        .post_json(
            "/publish/match:tls",
            &json!({"type": "over_tls", "data": 7}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let event = client.recv_event("match:tls", REPLY_TIMEOUT).await;
    assert_eq!(event["event"]["type"], "over_tls");
    assert_eq!(event["event"]["serverId"], "tls-a");
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
