//! The console and the browser client (PROTOCOL.md §10): the routes from the outside,
//! `CONSOLE=off`, `/health`'s `auth`, the page in a real browser, and `switchboard.js`'s
//! unit tests under Node (`tests/browser/client.unit.test.js`).
//!
//! The browser test starts the servers (two on one Redis with durable rooms, one with
//! authentication on) and runs `tests/browser/console.test.js` under Node, which drives
//! Debian's headless `chromium` with puppeteer-core. The script asks for a restart of
//! server A over a line protocol (`@@{"cmd":"stop"|"start","server":"a"}` on its
//! stdout, the answer as one JSON line on its stdin). `scripts/test.sh` installs
//! chromium and the Node packages (`npm ci` in `tests/browser`).

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use support::{server::mint_token, RedisServer, Server, ServerBuilder};

const SECRET: &str = "console-test-secret";
/// The browser script's own steps wait 15 s at most each; the whole run is bounded too.
const BROWSER_RUN_LIMIT: Duration = Duration::from_secs(150);

/// Status, content type and body of `GET path`.
async fn fetch(server: &Server, path: &str) -> (u16, String, String, Option<String>) {
    let mut response = awc::Client::new()
        .get(format!("{}{path}", server.http_url()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };
    let content_type = header("content-type").unwrap_or_default();
    let policy = header("content-security-policy");
    let body = response.body().await.expect("a body");
    (
        response.status().as_u16(),
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
        policy,
    )
}

#[actix_web::test]
async fn the_console_routes_and_console_off() {
    let server = ServerBuilder::new().id("console-on").spawn().await;
    let (status, kind, page, policy) = fetch(&server, "/").await;
    assert_eq!(status, 200, "{page}");
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(page.contains("<script src=\"/switchboard.js\">"), "{page}");
    let policy = policy.expect("the page has a Content-Security-Policy");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    for script in ["/switchboard.js", "/console.js"] {
        let (status, kind, body, _) = fetch(&server, script).await;
        assert_eq!(status, 200, "{script}");
        assert!(kind.starts_with("text/javascript"), "{script}: {kind}");
        assert!(body.len() > 1000, "{script}: {body}");
    }
    let (_, health) = server.health().await;
    assert_eq!(health["auth"], false, "{health}");

    let off = ServerBuilder::new()
        .id("console-off")
        .env("CONSOLE", "off")
        .env("AUTH_JWT_SECRET", SECRET)
        .spawn()
        .await;
    for path in ["/", "/switchboard.js", "/console.js"] {
        assert_eq!(fetch(&off, path).await.0, 404, "{path} with CONSOLE=off");
    }
    let (status, health) = off.health().await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["auth"], true, "{health}");
    assert_eq!(fetch(&off, "/health/live").await.0, 200);
}

/// `switchboard.js` without a browser: `node --test` over a scripted WebSocket (the
/// backoff policy, ref matching, resubscribe with `since`, duplicates, gaps, 1008).
#[actix_web::test]
async fn the_browser_client_unit_tests() {
    let mut node = Command::new("node")
        .args(["--test", "client.unit.test.js"])
        .current_dir(browser_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (scripts/test.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = node.try_wait().expect("wait for node") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = node.kill();
            panic!("node --test client.unit.test.js ran over a minute");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = node.wait_with_output().expect("node's output");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        status.success() && report.contains("# fail 0"),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Two servers on `redis` with `chat:*` durable and `lobby:*` presence rooms; A
/// restartable on its port.
fn durable_builder(redis: &RedisServer, prefix: &str, id: &str) -> ServerBuilder {
    ServerBuilder::new()
        .redis(redis, prefix)
        .id(id)
        .env("DURABLE_ROOMS", "chat:*")
        .env("PRESENCE_ROOMS", "lobby:*")
}

/// The Node process running the browser script, with its control channel.
struct BrowserRun {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl BrowserRun {
    fn start(env: &[(&str, String)]) -> BrowserRun {
        let dir = browser_dir();
        assert!(
            dir.join("node_modules/puppeteer-core").is_dir(),
            "no Node packages in {}: run scripts/test.sh, or `npm ci` there",
            dir.display()
        );
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            Path::new(&chromium).exists(),
            "no browser at {chromium}: run scripts/test.sh (it installs Debian's chromium)"
        );
        let mut child = Command::new("node")
            .arg("console.test.js")
            .current_dir(&dir)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("CHROMIUM", &chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run node (scripts/test.sh installs it with chromium's packages)");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        BrowserRun {
            child,
            stdin,
            lines,
        }
    }

    fn answer(&mut self, answer: Value) {
        writeln!(self.stdin, "{answer}").expect("write to the browser script");
        self.stdin.flush().expect("flush to the browser script");
    }
}

impl Drop for BrowserRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Where the screenshots go: `target/console-artifacts` of this build.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("console-artifacts");
    std::fs::create_dir_all(&dir).expect("create the artifacts folder");
    dir
}

#[actix_web::test]
async fn the_console_in_a_real_browser() {
    let redis = RedisServer::start().await;
    let prefix = support::unique_prefix("console");
    let mut a = durable_builder(&redis, &prefix, "console-a").spawn().await;
    let b = durable_builder(&redis, &prefix, "console-b").spawn().await;
    let secured = ServerBuilder::new()
        .id("console-auth")
        .env("AUTH_JWT_SECRET", SECRET)
        .spawn()
        .await;
    a.wait_healthy().await;
    b.wait_healthy().await;
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
    let artifacts = artifacts_dir();
    let port_a = a.port();
    let mut run = BrowserRun::start(&[
        ("SB_A_URL", a.http_url()),
        ("SB_B_URL", b.http_url()),
        ("SB_AUTH_URL", secured.http_url()),
        ("SB_TOKEN", token),
        ("SB_ARTIFACTS", artifacts.display().to_string()),
    ]);
    let deadline = Instant::now() + BROWSER_RUN_LIMIT;
    let mut output = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match tokio::time::timeout(left, run.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(_) => panic!(
                "the browser run took over {BROWSER_RUN_LIMIT:?}:\n{}",
                output.join("\n")
            ),
        };
        let Some(command) = line.strip_prefix("@@") else {
            eprintln!("browser: {line}");
            output.push(line);
            continue;
        };
        let command: Value = serde_json::from_str(command).expect("a control line is JSON");
        assert_eq!(command["server"], "a", "only A restarts: {command}");
        match command["cmd"].as_str() {
            Some("stop") => {
                a.sigterm();
                a.wait_exit(Duration::from_secs(10)).await;
            }
            Some("start") => {
                a = durable_builder(&redis, &prefix, "console-a")
                    .env("PORT", &port_a.to_string())
                    .spawn()
                    .await;
                a.wait_healthy().await;
            }
            other => panic!("unknown control command {other:?}"),
        }
        run.answer(json!({"ok": true}));
    }
    let status = run.child.wait().expect("wait for node");
    assert!(
        status.success(),
        "the browser steps failed ({status}); screenshots in {}:\n{}",
        artifacts.display(),
        output.join("\n")
    );
    assert!(
        artifacts.join("console.png").is_file(),
        "no screenshot in {}",
        artifacts.display()
    );
}
