//! One publisher connection: publishes on a fixed timetable and counts acknowledgements.
//!
//! The k-th publish of a phase is scheduled at `start + k / rate`. When the loop is
//! behind it sends every due publish at once (one flush for the batch) and never
//! skips one; each carries its *scheduled* time, so a stall in the publisher, the
//! server or the network shows up as latency instead of as fewer samples
//! (no coordinated omission).

use std::{rc::Rc, sync::Arc};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::{
    client::{now_ns, Ws},
    proto::{Inbound, Probe},
    stats::PhaseCmd,
    timer::PreciseTimer,
    worker::{connect_retrying, Shared},
};

/// Most publishes written before one flush.
const MAX_BATCH: u64 = 512;

/// Publisher `index` (global): connects, then runs each phase it is sent.
pub async fn publisher(
    shared: Rc<Shared>,
    index: usize,
    permits: Arc<Semaphore>,
    mut commands: mpsc::UnboundedReceiver<PhaseCmd>,
) {
    let plan = &shared.plan;
    let server = plan.publisher_server(index);
    let connected = {
        let _permit = permits.acquire_owned().await;
        connect_retrying(plan.servers[server], plan.clients + index, plan).await
    };
    let mut ws = match connected {
        Ok(ws) => {
            shared
                .publishers_ready
                .set(shared.publishers_ready.get() + 1);
            Some(ws)
        }
        Err(e) => {
            eprintln!("loadgen: publisher {index}: {e}");
            shared.failed.set(shared.failed.get() + 1);
            None
        }
    };
    loop {
        let command = match ws.as_mut() {
            Some(socket) => tokio::select! {
                command = commands.recv() => command,
                message = socket.next() => {
                    if !on_message(&shared, socket, message).await {
                        ws = None;
                    }
                    continue;
                }
            },
            None => commands.recv().await,
        };
        let Some(command) = command else { break };
        if let Some(socket) = ws.as_mut() {
            if run_phase(&shared, socket, index, server as u32, command)
                .await
                .is_err()
            {
                shared.disconnected.set(shared.disconnected.get() + 1);
                ws = None;
            }
        }
        shared.publishers_done.set(shared.publishers_done.get() + 1);
    }
}

/// Handles one frame on a publisher connection; false when the connection is gone.
async fn on_message(
    shared: &Shared,
    ws: &mut Ws,
    message: Option<Result<Message, WsError>>,
) -> bool {
    let text = match message {
        Some(Ok(Message::Text(text))) => text,
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return false,
        Some(Ok(_)) => return true,
    };
    match shared.plan.protocol.parse_frame(&text) {
        Inbound::Published => shared.acked.set(shared.acked.get() + 1),
        Inbound::Error => {
            if shared.publish_errors.get() == 0 {
                eprintln!("loadgen: publish refused: {}", text.as_str());
            }
            shared.publish_errors.set(shared.publish_errors.get() + 1);
        }
        Inbound::Ping => {
            return ws
                .send(Message::text(shared.plan.protocol.pong()))
                .await
                .is_ok()
        }
        _ => {}
    }
    true
}

async fn run_phase(
    shared: &Shared,
    ws: &mut Ws,
    index: usize,
    server: u32,
    cmd: PhaseCmd,
) -> Result<(), WsError> {
    let plan = &shared.plan;
    let rate = cmd.rate / plan.publishers as f64;
    if rate <= 0.0 {
        return Ok(());
    }
    let interval = 1e9 / rate;
    let end = cmd.start_ns + cmd.duration_ns;
    let padding = "x".repeat(plan.padding);
    let mut sequences = vec![0u64; plan.rooms];
    let mut cursor = index % plan.rooms;
    let mut k: u64 = 0;
    let scheduled = |k: u64| cmd.start_ns + (k as f64 * interval) as u64;
    let mut result = Ok(());
    let mut timer = match PreciseTimer::new() {
        Ok(timer) => timer,
        Err(e) => {
            eprintln!("loadgen: publisher {index}: no timer: {e}");
            shared.publish_errors.set(shared.publish_errors.get() + 1);
            return Err(WsError::Io(e));
        }
    };
    while scheduled(k) < end {
        let now = now_ns();
        let next = scheduled(k);
        if next > now {
            tokio::select! {
                slept = timer.sleep_until_ns(next) => {
                    if let Err(e) = slept {
                        result = Err(WsError::Io(e));
                        break;
                    }
                }
                message = ws.next() => {
                    if !on_message(shared, ws, message).await {
                        result = Err(WsError::ConnectionClosed);
                        break;
                    }
                }
            }
            continue;
        }
        let mut batch = 0;
        while batch < MAX_BATCH && scheduled(k) <= now && scheduled(k) < end {
            // Each send's own lateness: a batch's later frames wait for the earlier.
            let late = now_ns().saturating_sub(scheduled(k));
            shared
                .recorder
                .borrow_mut()
                .send_lag
                .saturating_record((late / 1000).max(1));
            sequences[cursor] += 1;
            let probe = Probe {
                p: index as u32,
                s: sequences[cursor],
                t: scheduled(k),
                h: cmd.id,
                n: server,
            };
            let frame = plan
                .protocol
                .publish(&plan.room_name(cursor as u32), &probe, &padding);
            shared
                .last_sched_ns
                .set(shared.last_sched_ns.get().max(probe.t));
            cursor = (cursor + 1) % plan.rooms;
            k += 1;
            batch += 1;
            if let Err(e) = ws.feed(Message::text(frame)).await {
                result = Err(e);
                break;
            }
        }
        if result.is_err() {
            break;
        }
        if let Err(e) = ws.flush().await {
            result = Err(e);
            break;
        }
    }
    let mut published = shared.published.borrow_mut();
    for (room, &count) in sequences.iter().enumerate() {
        if count > 0 {
            published.insert((room as u32, index as u32), count);
        }
    }
    if result.is_err() {
        shared.publish_errors.set(shared.publish_errors.get() + 1);
    }
    result
}
