//! The `switchboard` binary as a child process, configured only through its environment.

use std::collections::BTreeMap;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;

use super::output::Output;
use super::redis::RedisServer;

/// How long the server gets to print its `listening` line.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// Every variable the server reads. All are removed from the inherited environment
/// before the builder's own are set, so the developer's shell cannot leak into a test.
const SERVER_VARS: &[&str] = &[
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "REDIS_DB",
    "REDIS_CHANNEL_PREFIX",
    "SERVER_ID",
    "HOST",
    "PORT",
    "RUST_LOG",
    "PUBLISH_RETRIES",
    "PUBLISH_RETRY_BASE_MS",
    "RECONNECT_BASE_MS",
    "RECONNECT_MAX_MS",
    "PROBE_INTERVAL_MS",
    "PROBE_TIMEOUT_MS",
    "REDIS_RESPONSE_TIMEOUT_MS",
    "SUBSCRIBE_TIMEOUT_MS",
    "HEARTBEAT_INTERVAL_MS",
    "CLIENT_TIMEOUT_MS",
    "PEER_HEARTBEAT_MS",
    "SHUTDOWN_TIMEOUT_MS",
    "HTTP_WORKERS",
    "CONSOLE",
    "AUTH_TIMEOUT_MS",
    "AUTH_JWT_SECRET",
    "AUTH_JWT_AUDIENCE",
    "ALLOWED_ORIGINS",
    "SERVICE_TOKEN",
    "LIMIT_SUBSCRIPTIONS",
    "LIMIT_PUBLISH_RATE",
    "LIMIT_PUBLISH_BURST",
    "LIMIT_FRAME_BYTES",
    "LIMIT_EVENT_BYTES",
    "LIMIT_OUTBOUND_BYTES",
    "LIMIT_OUTBOUND_FRAMES",
    "LIMIT_CONNECTION_PUBLISHES_IN_FLIGHT",
    "LIMIT_PUBLISHES_IN_FLIGHT",
    "PRESENCE_ROOMS",
    "PRESENCE_TTL_MS",
];

/// Short tunables so that outages, heartbeats and retries play out in well under a
/// second. A test overrides any of them with [`ServerBuilder::env`].
const FAST_TUNABLES: &[(&str, &str)] = &[
    ("PEER_HEARTBEAT_MS", "200"),
    ("PROBE_INTERVAL_MS", "200"),
    ("PROBE_TIMEOUT_MS", "500"),
    ("RECONNECT_BASE_MS", "50"),
    ("RECONNECT_MAX_MS", "500"),
    ("PUBLISH_RETRY_BASE_MS", "20"),
    ("REDIS_RESPONSE_TIMEOUT_MS", "1000"),
    ("HEARTBEAT_INTERVAL_MS", "500"),
    ("CLIENT_TIMEOUT_MS", "2000"),
    ("SUBSCRIBE_TIMEOUT_MS", "1000"),
    ("SHUTDOWN_TIMEOUT_MS", "5000"),
];

/// The path of the binary under test: Cargo's, or `SWITCHBOARD_BIN` outside the crate.
pub fn binary() -> String {
    option_env!("CARGO_BIN_EXE_switchboard")
        .map(str::to_owned)
        .or_else(|| std::env::var("SWITCHBOARD_BIN").ok())
        .expect("no server binary: run inside the crate or set SWITCHBOARD_BIN")
}

/// Runs `switchboard token ARGS` with `AUTH_JWT_SECRET=secret` (and nothing else of
/// the server's environment): its exit status, stdout and stderr.
pub fn token_command(secret: Option<&str>, args: &[&str]) -> (ExitStatus, String, String) {
    let mut command = Command::new(binary());
    for name in SERVER_VARS {
        command.env_remove(name);
    }
    if let Some(secret) = secret {
        command.env("AUTH_JWT_SECRET", secret);
    }
    let output = command
        .arg("token")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run switchboard token");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status, text(&output.stdout), text(&output.stderr))
}

/// A token from `switchboard token ARGS` signed with `secret` (the command must succeed).
pub fn mint_token(secret: &str, args: &[&str]) -> String {
    let (status, stdout, stderr) = token_command(Some(secret), args);
    assert!(
        status.success(),
        "switchboard token {args:?}: {status}\n{stderr}"
    );
    let token = stdout.trim();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {stdout:?}");
    token.to_owned()
}

/// The environment of one server to start; defaults to the memory backplane.
pub struct ServerBuilder {
    env: BTreeMap<String, String>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        let mut env = BTreeMap::new();
        for (name, value) in [("HOST", "127.0.0.1"), ("PORT", "0"), ("RUST_LOG", "info")] {
            env.insert(name.to_owned(), value.to_owned());
        }
        for (name, value) in FAST_TUNABLES {
            env.insert((*name).to_owned(), (*value).to_owned());
        }
        ServerBuilder { env }
    }
}

impl ServerBuilder {
    /// A builder with the fast tunables, listening on a free port of 127.0.0.1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `redis` as the backplane, with channel prefix `prefix`.
    pub fn redis(self, redis: &RedisServer, prefix: &str) -> Self {
        self.env("REDIS_URL", &redis.url())
            .env("REDIS_CHANNEL_PREFIX", prefix)
    }

    /// Sets `SERVER_ID`.
    pub fn id(self, id: &str) -> Self {
        self.env("SERVER_ID", id)
    }

    /// Sets (or overrides) one environment variable.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Removes one variable, default tunables included.
    pub fn without(mut self, name: &str) -> Self {
        self.env.remove(name);
        self
    }

    /// Starts the server and waits for its `listening` line.
    pub async fn spawn(self) -> Server {
        let (mut server, port) = self.start();
        server.port = match tokio::time::timeout(LISTEN_TIMEOUT, port).await {
            Ok(Ok(port)) => port,
            Ok(Err(_)) => panic!(
                "server {} exited before listening ({:?})\n{}",
                server.id,
                server.child.try_wait(),
                server.stderr_tail()
            ),
            Err(_) => panic!(
                "server {} did not listen within {LISTEN_TIMEOUT:?}",
                server.id
            ),
        };
        server
    }

    /// Runs a server expected to refuse its configuration: its exit status and output.
    /// The status is `None` when it started listening instead, or still ran after
    /// `timeout` (it is then killed).
    pub async fn run_to_exit(self, timeout: Duration) -> (Option<ExitStatus>, String) {
        let (mut server, mut port) = self.start();
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = server.child.try_wait().expect("try_wait on the server") {
                break Some(status);
            }
            if port.try_recv().is_ok() || Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if status.is_none() {
            server.kill();
        }
        // The process is gone: its pipes are closed once the reader threads took
        // their last lines.
        server.output.finish();
        (status, server.stderr_tail())
    }

    /// Spawns the process; the receiver gets the port once it prints `listening`.
    fn start(self) -> (Server, oneshot::Receiver<u16>) {
        let id = self.env.get("SERVER_ID").cloned().unwrap_or_default();
        let mut child = self
            .command()
            .spawn()
            .expect("spawn the switchboard binary");
        let output = Output::default();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let port = output.watch(stdout, stderr);
        let server = Server {
            child,
            id,
            port: 0,
            output,
            http: http_client(),
        };
        (server, port)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(binary());
        for name in SERVER_VARS {
            command.env_remove(name);
        }
        command
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }
}

/// The tests' HTTP client. It keeps an idle connection for 1 s, well under the
/// server's keep-alive (actix's default, 5 s): reusing a connection the server is
/// closing at that moment fails with "connector has been disconnected" (seen once
/// on a loaded machine).
fn http_client() -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().conn_keep_alive(Duration::from_secs(1)))
        .timeout(Duration::from_secs(15))
        .finish()
}

/// A running server; killed (SIGKILL) on drop, printing its output if the test failed.
pub struct Server {
    child: Child,
    id: String,
    port: u16,
    output: Output,
    http: awc::Client,
}

impl Server {
    /// Its `SERVER_ID` as configured by the test (empty when the test left it unset).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its process id, for `/proc` and signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// The last lines the server printed (stderr, and stdout marked as such).
    pub fn stderr_tail(&self) -> String {
        self.output.tail()
    }

    /// `GET path`: the status and the body as JSON (see [`body_json`]).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let request = self.http.get(format!("{}{path}", self.http_url()));
        self.send(path, request.send()).await
    }

    /// `GET path` as text, with `Authorization: Bearer <bearer>` when given: the
    /// status, the `Content-Type` and the body.
    pub async fn get_text(&self, path: &str, bearer: Option<&str>) -> (u16, String, String) {
        let mut request = self.http.get(format!("{}{path}", self.http_url()));
        if let Some(token) = bearer {
            request = request.insert_header(("authorization", format!("Bearer {token}")));
        }
        let mut response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTP {path} on {}: {e}\n{}", self.id, self.stderr_tail()));
        let body = response
            .body()
            .limit(16 << 20)
            .await
            .unwrap_or_else(|e| panic!("HTTP {path} body: {e}"));
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = String::from_utf8_lossy(&body).into_owned();
        (response.status().as_u16(), content_type, text)
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string()).await
    }

    /// `POST path` with `body` sent verbatim as `application/json` (it may be invalid).
    pub async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let request = self
            .http
            .post(format!("{}{path}", self.http_url()))
            .insert_header(("content-type", "application/json"));
        self.send(path, request.send_body(body.to_owned())).await
    }

    /// `GET /health`.
    pub async fn health(&self) -> (u16, Value) {
        self.get_json("/health").await
    }

    /// Waits until `/health` answers 200: the server may print its `listening` line
    /// before its Redis links are up, and readiness is what tells when they are.
    pub async fn wait_healthy(&self) {
        let what = format!("server {} reports healthy", self.id);
        super::wait_until(Duration::from_secs(10), &what, || async {
            self.health().await.0 == 200
        })
        .await;
    }

    /// `GET /stats` (must answer 200).
    pub async fn stats(&self) -> Value {
        let (status, body) = self.get_json("/stats").await;
        assert_eq!(status, 200, "GET /stats: {body}");
        body
    }

    /// `POST /stats/reset` (must answer 204).
    pub async fn reset_stats(&self) {
        let (status, body) = self.post_raw("/stats/reset", "").await;
        assert_eq!(status, 204, "POST /stats/reset: {body}");
    }

    /// The `serverId`s in `/health` `peers`.
    pub async fn peer_ids(&self) -> Vec<String> {
        let (_, health) = self.health().await;
        let peers = health["peers"]
            .as_array()
            .unwrap_or_else(|| panic!("/health peers is not a list: {health}"));
        peers
            .iter()
            .map(|peer| {
                peer["serverId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("peer without a string serverId: {peer}"))
                    .to_owned()
            })
            .collect()
    }

    async fn send<F>(&self, path: &str, request: F) -> (u16, Value)
    where
        F: std::future::Future<Output = Result<awc::ClientResponse, awc::error::SendRequestError>>,
    {
        let mut response = request
            .await
            .unwrap_or_else(|e| panic!("HTTP {path} on {}: {e}\n{}", self.id, self.stderr_tail()));
        let body = response
            .body()
            .limit(16 << 20)
            .await
            .unwrap_or_else(|e| panic!("HTTP {path} body: {e}"));
        (response.status().as_u16(), body_json(&body))
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Sends SIGINT (graceful shutdown, as Ctrl-C).
    pub fn sigint(&self) {
        self.signal("-INT");
    }

    fn signal(&self, which: &str) {
        let status = Command::new("kill")
            .args([which, &self.pid().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill {which} {} failed", self.pid());
    }

    /// Waits for the process to exit, panicking (with its output) after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.try_wait_exit(timeout).await {
            Some(status) => status,
            None => panic!(
                "server {} did not exit within {timeout:?}\n{}",
                self.id,
                self.stderr_tail()
            ),
        }
    }

    /// Waits for the process to exit; `None` if it still runs after `timeout`.
    pub async fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on the server") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process with SIGKILL (a crash: no `server_stopped`) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident memory in KiB, from `/proc/PID/status`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line in /proc/PID/status")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- output of server {:?} (port {}) ----\n{}\n---- end ----",
                self.id,
                self.port,
                self.stderr_tail()
            );
        }
        self.kill();
    }
}

/// A response body as JSON: `Null` when empty, a JSON string holding the raw text when
/// it is not JSON (so an assertion on it prints what the server said).
pub fn body_json(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// A server on `redis` with the channel prefix `prefix`: the setup most tests share.
pub async fn on_redis(redis: &RedisServer, prefix: &str, id: &str) -> Server {
    ServerBuilder::new()
        .redis(redis, prefix)
        .id(id)
        .spawn()
        .await
}
