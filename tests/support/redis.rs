//! A real `redis-server` per test, on a free port, killed on drop.
//!
//! Modelled on redis-rs's `redis-test` server: the tests need a Redis they can kill and
//! bring back on the same port, which a shared instance cannot offer.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a freshly spawned `redis-server` gets to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How many free ports to try before giving up (another test may grab the same one).
const START_ATTEMPTS: usize = 5;

/// A `redis-server` child process bound to `127.0.0.1:port`, without persistence.
pub struct RedisServer {
    port: u16,
    /// `None` while the server is killed (between [`RedisServer::kill`] and `restart`).
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub async fn start() -> Self {
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            if let Some(child) = spawn_ready(port).await {
                return RedisServer {
                    port,
                    child: Some(child),
                };
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts");
    }

    /// The URL to give the server under test as `REDIS_URL`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port this Redis listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with SIGKILL (no shutdown courtesy, like a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, once it has been killed.
    ///
    /// Retries for a while: the old listening socket may linger for a moment.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = spawn_ready(self.port).await {
                self.child = Some(child);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// A fresh multiplexed connection, as another service publishing to Redis would hold.
    pub async fn client(&self) -> MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("valid redis URL");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }

    /// `PUBSUB CHANNELS`: the channels at least one client is subscribed to.
    pub async fn pubsub_channels(&self) -> Vec<String> {
        let mut conn = self.client().await;
        redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut conn)
            .await
            .expect("PUBSUB CHANNELS")
    }

    /// `PUBSUB NUMSUB channel`: how many connections are subscribed to `channel`.
    pub async fn numsub(&self, channel: &str) -> u64 {
        let mut conn = self.client().await;
        let reply: (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut conn)
            .await
            .expect("PUBSUB NUMSUB");
        reply.1
    }

    /// `PUBLISH channel payload` as a plain Redis client; returns the receiver count.
    pub async fn publish(&self, channel: &str, payload: &str) -> u64 {
        let mut conn = self.client().await;
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .expect("PUBLISH")
    }

    /// The `redis-server` process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (`"STOP"`, `"CONT"`...) to the `redis-server` process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("redis-server is running");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Runs one command on a fresh connection and returns its reply.
    pub async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let mut conn = self.client().await;
        command
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("redis command failed: {e}"))
    }

    /// Whether the server answers PING right now.
    pub async fn answers_ping(&self) -> bool {
        ping(self.port).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago (the OS picks it for a throwaway listener).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a throwaway listener");
    listener.local_addr().expect("listener address").port()
}

/// Spawns `redis-server` on `port` and waits for PING; `None` if it exits (port taken).
async fn spawn_ready(port: u16) -> Option<Child> {
    let mut child = spawn(port);
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if ping(port).await {
            return Some(child);
        }
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn spawn(port: u16) -> Child {
    let result = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match result {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "redis-server is not on PATH: install it (scripts/test.sh does, \
             or `apt-get install redis-server`)"
        ),
        Err(e) => panic!("could not spawn redis-server: {e}"),
    }
}

/// Sends an inline PING and checks for `+PONG`, with a short deadline.
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(true))
    )
}
