//! Presence (PROTOCOL.md §9): how long a read of a big presence room takes.
//!
//! `--members` sessions, alternating between the servers with at most
//! `--connect-concurrency` connecting at once, subscribe to one presence room and
//! keep reading their sockets: each is sent a `join` for every member that joins
//! after it, so the first ones get thousands. The join phase ends when
//! `presence_count` on every server counts every member (`join_s`, from the first
//! connect); then the loadgen waits until no member has received a frame for a
//! second, so that the join frames are not in the way of what is timed.
//!
//! What is timed: `--reads` rounds, one read at a time, each round on the next
//! server: a WebSocket `presence` read, a `presence_count` and an HTTP
//! `GET /presence/{room}`, each from the request to its whole answer. The WebSocket
//! reads go through one connection per server that is not a member; the HTTP read
//! opens a connection of its own. Every answer must list (or count) every member,
//! or the scenario fails. Last, every member leaves at once (close frames), and
//! `leave_s` is the time until `presence_count` is 0 on every server.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    args::PresenceArgs,
    client::Ws,
    coordinator::{slow_consumer_closes, write_json},
    durable::{close, connect_to, gather},
    proto::{Inbound, Protocol},
};

mod reader;

use reader::{poll_counts, time_reads, wait_empty, Reader, TimedReads};

/// How often the member count is read while waiting for it.
const POLL: Duration = Duration::from_millis(20);
/// The join frames are over when no member has received one for this long.
const QUIET: Duration = Duration::from_secs(1);

/// What the presence scenario measured (`p1-presence.json`).
#[derive(Debug, Serialize)]
pub struct PresenceResult {
    /// The loadgen command.
    pub command: String,
    /// The servers.
    pub servers: Vec<String>,
    /// The presence room.
    pub room: String,
    /// Members asked for.
    pub members: usize,
    /// Connection attempts in flight while they connected.
    pub connect_concurrency: usize,
    /// Rounds of timed reads (each: one read of each kind).
    pub rounds: usize,
    /// Seconds each wait could take.
    pub timeout_s: f64,
    /// From the first connect to the last `subscribed` reply, s.
    pub subscribed_s: f64,
    /// From the first connect until `presence_count` on every server counted every
    /// member, s.
    pub join_s: f64,
    /// From then to the last frame a member received before the reads, s: the
    /// join frames still on their way.
    pub settle_s: f64,
    /// `join` (and `leave`) frames the members received before leaving; at most
    /// `members × (members - 1) / 2`, each member hearing of those after it.
    pub join_frames: u64,
    /// Members the server closed before they left (a slow-consumer close, say).
    pub closed_by_server: u64,
    /// Growth of the servers' `slowConsumerCloses` from the start to the end of
    /// the reads.
    pub slow_consumer_closes: u64,
    /// Its growth while the members left.
    pub slow_consumer_closes_leaving: u64,
    /// The timed reads.
    #[serde(flatten)]
    pub reads: TimedReads,
    /// From telling every member to leave until `presence_count` on every server
    /// was 0, s.
    pub leave_s: f64,
}

/// Runs the `presence` subcommand; `argv` are its raw flags, for the result.
pub fn run(args: &PresenceArgs, argv: &[String]) -> Result<(), String> {
    if args.servers.is_empty() || args.members == 0 {
        return Err("presence needs a server and --members >= 1".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let command = format!("switchboard-loadgen presence {}", argv.join(" "));
    let result = runtime.block_on(presence(args, command))?;
    let ms = |us: u64| us as f64 / 1e3;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "presence: {} members joined in {:.2} s (subscribed {:.2} s, join frames {} over {:.2} s more), left in {:.2} s; closed by the server {} (slow-consumer closes {} joining, {} leaving)",
            result.members, result.join_s, result.subscribed_s, result.join_frames,
            result.settle_s, result.leave_s, result.closed_by_server,
            result.slow_consumer_closes, result.slow_consumer_closes_leaving
        );
        for (name, reads) in [
            ("ws presence", &result.reads.ws_presence),
            ("ws presence_count", &result.reads.ws_presence_count),
            ("http GET /presence", &result.reads.http_presence),
        ] {
            let l = &reads.latency_us;
            println!(
                "  {name:<20} {} reads: p50 {:.2} ms p99 {:.2} ms max {:.2} ms; {} bytes, {} members",
                l.count, ms(l.p50), ms(l.p99), ms(l.max), reads.bytes, reads.members
            );
        }
    }
    if let Some(path) = &args.out {
        write_json(path, &result)?;
    }
    if result.reads.wrong_answers > 0 {
        return Err(format!(
            "{} answers did not list every one of the {} members",
            result.reads.wrong_answers, result.members
        ));
    }
    Ok(())
}

async fn presence(args: &PresenceArgs, command: String) -> Result<PresenceResult, String> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut readers = Vec::with_capacity(args.servers.len());
    for (i, &server) in args.servers.iter().enumerate() {
        readers.push(Reader::open(server, &args.room, args.members + i).await?);
    }
    // The room must be empty, and a presence room, on every server.
    wait_empty(&mut readers, Instant::now()).await?;
    let slow_before = slow_closes(&args.servers).await;
    let joined = join(args, &mut readers).await?;
    eprintln!(
        "presence: counted on every server after {:.2} s; timing reads",
        joined.join_s
    );
    let reads = time_reads(args, &mut readers).await?;
    let join_frames = joined.frames.load(Ordering::Relaxed);
    let slow_after_reads = slow_closes(&args.servers).await;

    let (subscribed_s, join_s, settle_s) = (joined.subscribed_s, joined.join_s, joined.settle_s);
    let (leave_s, closed_by_server) = joined.leave(&mut readers, timeout).await?;
    for reader in readers {
        close(reader.ws).await;
    }
    let slow_after = slow_closes(&args.servers).await;
    Ok(PresenceResult {
        command,
        servers: args.servers.iter().map(ToString::to_string).collect(),
        room: args.room.clone(),
        members: args.members,
        connect_concurrency: args.connect_concurrency,
        rounds: args.reads,
        timeout_s: args.timeout,
        subscribed_s,
        join_s,
        settle_s,
        join_frames,
        closed_by_server,
        slow_consumer_closes: slow_after_reads.saturating_sub(slow_before),
        slow_consumer_closes_leaving: slow_after.saturating_sub(slow_after_reads),
        reads,
        leave_s,
    })
}

/// The members, joined and counted: their tasks and how to tell them to leave.
struct Joined {
    /// Each says whether the server closed its member before it was told to leave.
    tasks: Vec<tokio::task::JoinHandle<bool>>,
    leave: watch::Sender<bool>,
    /// Frames received by every member.
    frames: Arc<AtomicU64>,
    subscribed_s: f64,
    join_s: f64,
    settle_s: f64,
}

impl Joined {
    /// Tells every member to leave at once and waits until every server counts
    /// none: how long that took, s, and how many members the server had closed
    /// before.
    async fn leave(self, readers: &mut [Reader], timeout: Duration) -> Result<(f64, u64), String> {
        eprintln!("presence: every member leaves");
        let leaving = Instant::now();
        self.leave.send_replace(true);
        wait_empty(readers, leaving + timeout).await?;
        let leave_s = leaving.elapsed().as_secs_f64();
        let closed = gather(self.tasks, self.leave, timeout, "member task").await?;
        Ok((leave_s, closed.into_iter().filter(|&c| c).count() as u64))
    }
}

/// Connects and subscribes every member, waits until every server counts them
/// all, then until their join frames are over. Any member that could not
/// subscribe fails it.
async fn join(args: &PresenceArgs, readers: &mut [Reader]) -> Result<Joined, String> {
    let (members, expected) = (args.members, args.members as u64);
    let timeout = Duration::from_secs_f64(args.timeout);
    let (leave, leave_rx) = watch::channel(false);
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let frames = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let started = Instant::now();
    let tasks = (0..members)
        .map(|index| {
            let member = Member {
                server: args.servers[index % args.servers.len()],
                room: args.room.clone(),
                index,
                ready: ready_tx.clone(),
                frames: frames.clone(),
            };
            tokio::spawn(member.run(permits.clone(), leave_rx.clone()))
        })
        .collect();
    drop(ready_tx);
    // Polling the counts all along also keeps the readers answering the servers'
    // pings (a silent client is dropped after CLIENT_TIMEOUT_MS).
    let (mut subscribed, mut last_subscribed) = (0u64, started);
    poll_counts(readers, started + timeout, "every member", |counts| {
        while let Ok(ready) = ready.try_recv() {
            let at =
                ready.ok_or_else(|| format!("a member could not subscribe ({subscribed} did)"))?;
            (subscribed, last_subscribed) = (subscribed + 1, last_subscribed.max(at));
        }
        Ok(subscribed == expected && counts.iter().all(|&c| c == expected))
    })
    .await?;
    let join_s = started.elapsed().as_secs_f64();
    let subscribed_s = last_subscribed.duration_since(started).as_secs_f64();
    eprintln!("presence: {subscribed} members subscribed in {subscribed_s:.2} s");
    let counted = Instant::now();
    let settled = join_frames_over(readers, &frames, expected, counted + timeout).await?;
    Ok(Joined {
        tasks,
        leave,
        frames,
        subscribed_s,
        join_s,
        settle_s: settled.duration_since(counted).as_secs_f64(),
    })
}

/// Waits for the join frames still on their way to the members: over once none
/// came for [`QUIET`] (while every server still counts every member). When the
/// last one came.
async fn join_frames_over(
    readers: &mut [Reader],
    frames: &AtomicU64,
    expected: u64,
    deadline: Instant,
) -> Result<Instant, String> {
    let (mut seen, mut moved) = (frames.load(Ordering::Relaxed), Instant::now());
    poll_counts(readers, deadline, "the join frames to end", |counts| {
        if counts.iter().any(|&c| c != expected) {
            return Err(format!("a member left while joined: counts {counts:?}"));
        }
        let now = frames.load(Ordering::Relaxed);
        if now != seen {
            (seen, moved) = (now, Instant::now());
        }
        Ok(moved.elapsed() >= QUIET)
    })
    .await?;
    Ok(moved)
}

/// The servers' slow-consumer closes so far (their `GET /stats`).
async fn slow_closes(servers: &[SocketAddr]) -> u64 {
    let servers = servers.to_vec();
    tokio::task::spawn_blocking(move || slow_consumer_closes(&servers))
        .await
        .unwrap_or(0)
}

/// One member of the room.
struct Member {
    server: SocketAddr,
    room: String,
    index: usize,
    /// Told once when it subscribed (`None`: it could not).
    ready: mpsc::UnboundedSender<Option<Instant>>,
    /// Frames received by every member.
    frames: Arc<AtomicU64>,
}

impl Member {
    /// Connects and subscribes, then reads (and counts) frames until told to leave:
    /// whether the server closed it before.
    async fn run(self, permits: Arc<Semaphore>, mut leave: watch::Receiver<bool>) -> bool {
        let permit = permits.acquire_owned().await;
        let mut ws = match self.join().await {
            Ok(ws) => ws,
            Err(e) => {
                eprintln!("presence: member {}: {e}", self.index);
                let _ = self.ready.send(None);
                return false;
            }
        };
        drop(permit);
        let _ = self.ready.send(Some(Instant::now()));
        loop {
            let message = tokio::select! {
                _ = leave.changed() => break,
                message = ws.next() => message,
            };
            match message {
                Some(Ok(Message::Text(_))) => {
                    self.frames.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return true,
                Some(Ok(_)) => {}
            }
        }
        close(ws).await;
        false
    }

    /// Connects and subscribes to the room.
    async fn join(&self) -> Result<Ws, String> {
        let protocol = Protocol::Switchboard;
        let mut ws = connect_to(self.server, self.index).await?;
        ws.send(Message::text(protocol.subscribe(&self.room)))
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        while let Some(message) = ws.next().await {
            let Ok(Message::Text(text)) = message else {
                continue;
            };
            match protocol.parse_frame(&text) {
                Inbound::Subscribed => return Ok(ws),
                Inbound::Error => return Err(format!("refused: {}", text.as_str())),
                _ => {}
            }
        }
        Err("closed before subscribed".into())
    }
}
