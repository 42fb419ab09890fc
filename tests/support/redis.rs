//! A real `redis-server` per test, on a free port, killed on drop.
//!
//! Modelled on redis-rs's `redis-test` server: the tests need a Redis they can kill and
//! bring back on the same port, which a shared instance cannot offer. A persistent one
//! ([`RedisServer::start_persistent`]) keeps an append-only file in a directory of its
//! own, so a restart after SIGKILL loads what Redis had acknowledged; copies of that
//! directory ([`AofSnapshot`]) let a test roll Redis back to an older state.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a freshly spawned `redis-server` gets to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How many free ports to try before giving up (another test may grab the same one).
const START_ATTEMPTS: usize = 5;

/// A `redis-server` child process bound to `127.0.0.1:port`, without persistence unless
/// started with [`RedisServer::start_persistent`].
pub struct RedisServer {
    port: u16,
    /// `None` while the server is killed (between [`RedisServer::kill`] and `restart`).
    child: Option<Child>,
    /// The data directory of a persistent server or a cluster node; kept across
    /// restarts.
    data: Option<TempDir>,
    /// The arguments it was started with (besides the port), again on a restart.
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub async fn start() -> Self {
        Self::start_with(None, persistence_args(None)).await
    }

    /// Starts a server that logs every write to an append-only file before answering it
    /// (`--appendonly yes --appendfsync always`), in a directory removed on drop. A
    /// [`RedisServer::restart`] after [`RedisServer::kill`] loads that file: what Redis
    /// acknowledged survives the crash.
    pub async fn start_persistent() -> Self {
        let data = TempDir::new("redis-aof");
        let args = persistence_args(Some(&data));
        Self::start_with(Some(data), args).await
    }

    /// Starts a node for a Redis Cluster ([`super::cluster::RedisCluster`]): cluster
    /// mode, no persistence, its cluster state (`nodes.conf`) in a directory of its
    /// own, kept across restarts, and `node_timeout` before the others count it failed.
    pub async fn start_cluster_node(node_timeout: Duration) -> Self {
        let data = TempDir::new("redis-cluster");
        let dir = data.path().to_str().expect("a UTF-8 temporary directory");
        let mut args = persistence_args(None);
        args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &node_timeout.as_millis().to_string(),
                "--dir",
                dir,
            ]
            .map(str::to_owned),
        );
        Self::start_with(Some(data), args).await
    }

    async fn start_with(data: Option<TempDir>, args: Vec<String>) -> Self {
        let cluster = args.iter().any(|a| a == "--cluster-enabled");
        for _ in 0..START_ATTEMPTS {
            let port = if cluster {
                free_cluster_port()
            } else {
                free_port()
            };
            if let Some(child) = spawn_ready(port, &args).await {
                return RedisServer {
                    port,
                    child: Some(child),
                    data,
                    args,
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

    /// Starts the server again on the same port, once it has been killed. A persistent
    /// server loads its append-only file; any other starts empty.
    ///
    /// Retries for a while: the old listening socket may linger for a moment.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = spawn_ready(self.port, &self.args).await {
                self.child = Some(child);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Kills the server, deletes its data (a disk lost with the machine) and starts it
    /// again, empty, on the same port.
    pub async fn restart_empty(&mut self) {
        self.kill();
        if let Some(data) = &self.data {
            data.clear();
        }
        self.restart().await;
    }

    /// A copy of a persistent server's data directory as it is now. Copy it once the
    /// writes it should hold were acknowledged: with `--appendfsync always` they are then
    /// on disk.
    pub fn snapshot(&self) -> AofSnapshot {
        let data = self
            .data
            .as_ref()
            .expect("only a persistent RedisServer has data to snapshot");
        let copy = TempDir::new("redis-aof-snapshot");
        copy_dir(data.path(), copy.path());
        AofSnapshot { dir: copy }
    }

    /// Kills the server and starts it again from `snapshot`, an older state of its data:
    /// every write acknowledged since the snapshot is lost, as after a restart from an
    /// old backup or a failover to a replica that missed them.
    pub async fn restart_from(&mut self, snapshot: &AofSnapshot) {
        self.kill();
        let data = self
            .data
            .as_ref()
            .expect("only a persistent RedisServer restarts from a snapshot");
        data.clear();
        copy_dir(snapshot.dir.path(), data.path());
        self.restart().await;
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

/// A free port for a cluster node: its cluster bus listens 10,000 above it, so that
/// port must exist and be free too.
fn free_cluster_port() -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if port <= u16::MAX - 10_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port with a free cluster bus port in 100 tries")
}

/// A copy of a persistent server's data directory ([`RedisServer::snapshot`]), removed
/// on drop.
pub struct AofSnapshot {
    dir: TempDir,
}

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sbt-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Empties the directory, keeping it.
    fn clear(&self) {
        std::fs::remove_dir_all(&self.0)
            .unwrap_or_else(|e| panic!("remove {}: {e}", self.0.display()));
        std::fs::create_dir_all(&self.0)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.0.display()));
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the files of `from` into `to`, subdirectories included (Redis 7 keeps its
/// append-only file as several files in `appendonlydir/`).
fn copy_dir(from: &Path, to: &Path) {
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&target).expect("create a directory of the copy");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// The arguments that make `redis-server` persist to `data` (none: no persistence at all).
fn persistence_args(data: Option<&TempDir>) -> Vec<String> {
    let args: Vec<&str> = match data {
        None => vec!["--save", "", "--appendonly", "no"],
        Some(dir) => {
            let dir = dir.path().to_str().expect("a UTF-8 temporary directory");
            vec![
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                dir,
            ]
        }
    };
    args.into_iter().map(str::to_owned).collect()
}

/// Spawns `redis-server` on `port` and waits for PING; `None` if it exits (port taken).
async fn spawn_ready(port: u16, args: &[String]) -> Option<Child> {
    let mut child = spawn(port, args);
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

fn spawn(port: u16, args: &[String]) -> Child {
    let result = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(args)
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
