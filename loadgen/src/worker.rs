//! One worker process: its share of the subscribers and publishers on a
//! single-threaded runtime, driven by the coordinator through lines on stdin
//! (`PHASE`, `TOTALS`, `QUIT`) and answering with `@READY`, `@PUBLISHED` and
//! `@REPORT` lines on stdout.
//!
//! Everything runs on one thread, so the shared state is `Rc<RefCell<..>>` with
//! borrows that never cross an `.await`.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::{mpsc, watch, Semaphore},
    task::LocalSet,
};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{connect, now_ns, source_address, Ws},
    plan::Plan,
    proto::{Inbound, Probe},
    publisher::publisher,
    stats::{self, PhaseCmd, Published, Ready, Stream, Totals, WorkerReport},
};

/// State every task of the worker shares.
pub struct Shared {
    /// The run's plan.
    pub plan: Plan,
    /// The phase being measured; events of other phases are stale.
    pub phase: Cell<u32>,
    /// Latency histograms and delivery counters of the phase.
    pub recorder: RefCell<Recorder>,
    /// Subscribers subscribed to all their rooms.
    pub subscribed: Cell<u64>,
    /// Publishers connected.
    pub publishers_ready: Cell<u64>,
    /// Connections that failed to open or subscribe.
    pub failed: Cell<u64>,
    /// Connections the server closed.
    pub disconnected: Cell<u64>,
    /// What this worker's publishers published in the phase, by (room, publisher).
    pub published: RefCell<HashMap<(u32, u32), u64>>,
    /// The last scheduled publish of the phase.
    pub last_sched_ns: Cell<u64>,
    /// Publishers done with the phase.
    pub publishers_done: Cell<u64>,
    /// Publishes acknowledged.
    pub acked: Cell<u64>,
    /// Publishes refused or unsent.
    pub publish_errors: Cell<u64>,
}

/// Per-phase receive measurements.
pub struct Recorder {
    latency: Histogram<u64>,
    cross: Histogram<u64>,
    /// Actual minus scheduled send time of each publish, µs.
    pub send_lag: Histogram<u64>,
    delivered: u64,
    stale: u64,
    last_ns: u64,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            latency: stats::histogram(),
            cross: stats::histogram(),
            send_lag: stats::histogram(),
            delivered: 0,
            stale: 0,
            last_ns: 0,
        }
    }
}

/// One subscriber's view: its rooms and a sequence tracker per (room, publisher).
struct ClientState {
    rooms: Vec<u32>,
    server: u32,
    streams: HashMap<(u32, u32), Stream>,
}

fn emit(tag: &str, value: &impl serde::Serialize) {
    let json = serde_json::to_string(value).expect("reports serialize");
    // stdout is the channel to the coordinator.
    #[allow(clippy::print_stdout)]
    {
        println!("{tag} {json}");
    }
}

/// Runs worker `index` of `plan` until `QUIT` or the end of stdin.
pub fn run(plan: Plan, index: usize) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    LocalSet::new().block_on(&runtime, work(plan, index))
}

async fn work(plan: Plan, index: usize) -> Result<(), String> {
    let started = Instant::now();
    let shared = Rc::new(Shared {
        plan: plan.clone(),
        phase: Cell::new(0),
        recorder: RefCell::new(Recorder::new()),
        subscribed: Cell::new(0),
        publishers_ready: Cell::new(0),
        failed: Cell::new(0),
        disconnected: Cell::new(0),
        published: RefCell::new(HashMap::new()),
        last_sched_ns: Cell::new(0),
        publishers_done: Cell::new(0),
        acked: Cell::new(0),
        publish_errors: Cell::new(0),
    });
    let permits = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut clients = Vec::new();
    for client in plan.worker_clients(index) {
        let state = Rc::new(RefCell::new(ClientState {
            rooms: plan.client_rooms(client),
            server: plan.client_server(client) as u32,
            streams: HashMap::new(),
        }));
        clients.push(state.clone());
        let task = subscriber(
            shared.clone(),
            state,
            client,
            permits.clone(),
            stop_rx.clone(),
        );
        tokio::task::spawn_local(task);
    }
    let mut commands = Vec::new();
    for p in plan.worker_publishers(index) {
        let (tx, rx) = mpsc::unbounded_channel();
        commands.push(tx);
        tokio::task::spawn_local(publisher(shared.clone(), p, permits.clone(), rx));
    }
    let expected = (clients.len() + commands.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(180);
    while shared.subscribed.get() + shared.publishers_ready.get() + shared.failed.get() < expected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    emit(
        "@READY",
        &Ready {
            subscribed: shared.subscribed.get(),
            publishers: shared.publishers_ready.get(),
            failed: shared.failed.get() + expected
                - (shared.subscribed.get() + shared.publishers_ready.get() + shared.failed.get()),
            seconds: started.elapsed().as_secs_f64(),
        },
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut phase: Option<PhaseCmd> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let (verb, body) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match verb {
            "PHASE" => {
                let cmd: PhaseCmd = serde_json::from_str(body).map_err(|e| e.to_string())?;
                phase = Some(cmd);
                for client in &clients {
                    client.borrow_mut().streams.clear();
                }
                let published = run_phase(&shared, &commands, cmd).await;
                emit("@PUBLISHED", &published);
            }
            "TOTALS" => {
                let totals: Totals = serde_json::from_str(body).map_err(|e| e.to_string())?;
                let drain = phase.map_or(0, |p| p.drain_ns);
                emit("@REPORT", &report(&shared, &clients, &totals, drain).await);
            }
            _ => break,
        }
    }
    let _ = stop_tx.send(true);
    Ok(())
}

async fn run_phase(
    shared: &Shared,
    commands: &[mpsc::UnboundedSender<PhaseCmd>],
    cmd: PhaseCmd,
) -> Published {
    shared.phase.set(cmd.id);
    *shared.recorder.borrow_mut() = Recorder::new();
    shared.published.borrow_mut().clear();
    shared.publishers_done.set(0);
    shared.last_sched_ns.set(0);
    shared.acked.set(0);
    shared.publish_errors.set(0);
    for command in commands {
        let _ = command.send(cmd);
    }
    let deadline = Instant::now() + Duration::from_nanos(cmd.duration_ns) + Duration::from_secs(60);
    while shared.publishers_done.get() < commands.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Published {
        counts: shared
            .published
            .borrow()
            .iter()
            .map(|(&(room, publisher), &count)| (room, publisher, count))
            .collect(),
        last_sched_ns: shared.last_sched_ns.get(),
    }
}

/// Events each client still misses: (lost, duplicated, reordered).
fn client_tally(state: &ClientState, totals: &HashMap<u32, Vec<(u32, u64)>>) -> (u64, u64, u64) {
    let (mut lost, mut duplicated, mut reordered) = (0, 0, 0);
    for room in &state.rooms {
        for &(publisher, count) in totals.get(room).map(Vec::as_slice).unwrap_or(&[]) {
            match state.streams.get(&(*room, publisher)) {
                Some(stream) => {
                    lost += count.saturating_sub(stream.unique);
                    duplicated += stream.duplicated;
                    reordered += stream.reordered;
                }
                None => lost += count,
            }
        }
    }
    (lost, duplicated, reordered)
}

async fn report(
    shared: &Shared,
    clients: &[Rc<RefCell<ClientState>>],
    totals: &Totals,
    drain_ns: u64,
) -> WorkerReport {
    let mut by_room: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
    for &(room, publisher, count) in &totals.counts {
        by_room.entry(room).or_default().push((publisher, count));
    }
    let deadline = Instant::now() + Duration::from_nanos(drain_ns);
    while Instant::now() < deadline
        && clients
            .iter()
            .any(|c| client_tally(&c.borrow(), &by_room).0 > 0)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recorder = shared.recorder.borrow();
    let mut report = WorkerReport {
        clients: clients.len() as u64,
        disconnected: shared.disconnected.get() + shared.failed.get(),
        delivered: recorder.delivered,
        stale: recorder.stale,
        acked: shared.acked.get(),
        publish_errors: shared.publish_errors.get(),
        last_delivery_ns: recorder.last_ns,
        latency: stats::to_pairs(&recorder.latency),
        cross_latency: stats::to_pairs(&recorder.cross),
        send_lag: stats::to_pairs(&recorder.send_lag),
        ..WorkerReport::default()
    };
    for client in clients {
        let client = client.borrow();
        let (lost, duplicated, reordered) = client_tally(&client, &by_room);
        report.unique += client.streams.values().map(|s| s.unique).sum::<u64>();
        report.lost += lost;
        report.duplicated += duplicated;
        report.reordered += reordered;
        report.clients_with_loss += u64::from(lost > 0);
        report.max_lost_per_client = report.max_lost_per_client.max(lost);
        report.max_duplicated_per_client = report.max_duplicated_per_client.max(duplicated);
        report.max_reordered_per_client = report.max_reordered_per_client.max(reordered);
    }
    report
}

fn record(shared: &Shared, state: &RefCell<ClientState>, room: &str, probe: Probe) {
    let mut recorder = shared.recorder.borrow_mut();
    if probe.h != shared.phase.get() {
        recorder.stale += 1;
        return;
    }
    let now = now_ns();
    let micros = (now.saturating_sub(probe.t) / 1000).max(1);
    let mut state = state.borrow_mut();
    recorder.latency.saturating_record(micros);
    if probe.n != state.server {
        recorder.cross.saturating_record(micros);
    }
    recorder.delivered += 1;
    recorder.last_ns = recorder.last_ns.max(now);
    let room = room
        .rsplit('-')
        .next()
        .and_then(|index| index.parse().ok())
        .unwrap_or(u32::MAX);
    state
        .streams
        .entry((room, probe.p))
        .or_default()
        .observe(probe.s);
}

/// One subscriber: connect, subscribe to its rooms, then record every event until
/// told to stop or closed by the server.
async fn subscriber(
    shared: Rc<Shared>,
    state: Rc<RefCell<ClientState>>,
    client: usize,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let plan = &shared.plan;
    let Ok(permit) = permits.acquire_owned().await else {
        return;
    };
    let server = plan.servers[plan.client_server(client)];
    let mut ws = match connect_retrying(server, client, plan).await {
        Ok(ws) => ws,
        Err(e) => {
            if shared.failed.get() == 0 {
                eprintln!("loadgen: client {client}: {e}");
            }
            shared.failed.set(shared.failed.get() + 1);
            return;
        }
    };
    let rooms = state.borrow().rooms.clone();
    for room in &rooms {
        let frame = plan.protocol.subscribe(&plan.room_name(*room));
        if ws.feed(Message::text(frame)).await.is_err() {
            break;
        }
    }
    let _ = ws.flush().await;
    let mut pending = rooms.len();
    let mut permit = Some(permit);
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            message = ws.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                shared.disconnected.set(shared.disconnected.get() + 1);
                break;
            }
            Some(Ok(_)) => continue,
        };
        match plan.protocol.parse_frame(&text) {
            Inbound::Event {
                room,
                probe: Some(probe),
            } => record(&shared, &state, room, probe),
            Inbound::Subscribed if pending > 0 => {
                pending -= 1;
                if pending == 0 {
                    shared.subscribed.set(shared.subscribed.get() + 1);
                    permit = None;
                }
            }
            Inbound::Error if pending > 0 => {
                eprintln!("loadgen: client {client}: refused: {}", text.as_str());
                shared.failed.set(shared.failed.get() + 1);
                break;
            }
            Inbound::Ping if ws.send(Message::text(plan.protocol.pong())).await.is_err() => {
                break;
            }
            _ => {}
        }
    }
    drop(permit);
}

/// Connects connection number `index` (subscribers first, then publishers), with a
/// few retries: a burst of connects can overflow a listen backlog.
pub async fn connect_retrying(
    server: std::net::SocketAddr,
    index: usize,
    plan: &Plan,
) -> Result<Ws, String> {
    let mut attempt = 0;
    loop {
        match connect(server, source_address(index), plan.protocol).await {
            Ok(ws) => return Ok(ws),
            Err(e) if attempt >= 3 => return Err(e),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    }
}
