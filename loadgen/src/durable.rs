//! What the durable-room scenarios ([`crate::catchup`], [`crate::storm`]) share: a
//! client's view of one room's offsets, connecting with retries, and publishing
//! numbered events through a server while learning their offsets from the replies.
//!
//! These scenarios run in one process on a multi-threaded runtime, one task per
//! client, each task owning its own counts until it returns them: nothing is shared
//! on the delivery path.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{connect, source_address, Ws},
    proto::{parse_durable, DurableFrame, Protocol},
};

/// Waits for every client task, telling the ones still short of their target to stop
/// (through `stop_tx`) once `timeout` has passed; `what` names a task in an error.
pub async fn gather<T>(
    tasks: Vec<tokio::task::JoinHandle<T>>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    timeout: Duration,
    what: &str,
) -> Result<Vec<T>, String> {
    let stop_tx = std::sync::Arc::new(stop_tx);
    let timer = tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            tokio::time::sleep(timeout).await;
            stop_tx.send_replace(true);
        }
    });
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.map_err(|e| format!("{what}: {e}"))?);
    }
    timer.abort();
    stop_tx.send_replace(true);
    Ok(outcomes)
}

/// Publishes one connection keeps waiting for their answer: under the server's
/// `LIMIT_CONNECTION_PUBLISHES_IN_FLIGHT` (256), past which it refuses them.
pub const PUBLISH_WINDOW: usize = 128;

/// One client's view of one durable room: the offsets it received after the one it
/// started from.
#[derive(Debug, Clone, Default)]
pub struct Follow {
    /// The next offset owed.
    pub next: u64,
    /// Distinct offsets received.
    pub unique: u64,
    /// Offsets received that it already had (or that came after a later one).
    pub duplicated: u64,
    /// Offsets skipped: owed, never received before a later one.
    pub missing: u64,
    /// When the first event arrived, ns since the epoch (0: none).
    pub first_ns: u64,
    /// When the last event arrived.
    pub last_ns: u64,
}

impl Follow {
    /// A client whose next owed event is the one after `offset`.
    pub fn after(offset: u64) -> Follow {
        Follow {
            next: offset + 1,
            ..Follow::default()
        }
    }

    /// Records the arrival of `offset` at `now_ns`.
    pub fn observe(&mut self, offset: u64, now_ns: u64) {
        if offset < self.next {
            self.duplicated += 1;
            return;
        }
        self.missing += offset - self.next;
        self.next = offset + 1;
        self.unique += 1;
        if self.first_ns == 0 {
            self.first_ns = now_ns;
        }
        self.last_ns = now_ns;
    }
}

/// Connects client `index` to `server` (from its own loopback source address),
/// retrying a few times: a burst of connects can overflow a listen backlog.
pub async fn connect_to(server: SocketAddr, index: usize) -> Result<Ws, String> {
    let mut attempt = 0;
    loop {
        match connect(server, source_address(index), Protocol::Switchboard).await {
            Ok(ws) => return Ok(ws),
            Err(e) if attempt >= 5 => return Err(e),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
        }
    }
}

/// A publish in `room` of a small numbered event (`k` tells them apart).
pub fn publish_frame(room: &str, k: u64) -> String {
    format!(r#"{{"op":"publish","room":"{room}","event":{{"type":"bench","data":{{"k":{k}}}}}}}"#)
}

/// Publishes `per_room` events in each of `rooms` (round-robin) with up to
/// [`PUBLISH_WINDOW`] unanswered, and waits for every answer: the highest offset
/// each room's replies gave. Any refusal fails it.
pub async fn publish_burst(
    ws: &mut Ws,
    rooms: &[String],
    per_room: u64,
) -> Result<HashMap<String, u64>, String> {
    let total = per_room * rooms.len() as u64;
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut last: HashMap<String, u64> = HashMap::new();
    while answered < total {
        while sent < total && sent - answered < PUBLISH_WINDOW as u64 {
            let room = &rooms[(sent % rooms.len() as u64) as usize];
            ws.feed(Message::text(publish_frame(room, sent)))
                .await
                .map_err(|e| format!("publish: {e}"))?;
            sent += 1;
        }
        ws.flush().await.map_err(|e| format!("publish: {e}"))?;
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("publisher: {e}")),
            None => return Err("publisher: closed by the server".into()),
        };
        match parse_durable(&text) {
            DurableFrame::Published {
                room: Some(room),
                offset: Some(offset),
            } => {
                answered += 1;
                let at = last.entry(room.to_string()).or_default();
                *at = (*at).max(offset);
            }
            DurableFrame::Published { .. } => {
                return Err(format!(
                    "a publish was answered without an offset (is the room durable?): {}",
                    text.as_str()
                ));
            }
            DurableFrame::Error => return Err(format!("publish refused: {}", text.as_str())),
            _ => {}
        }
    }
    Ok(last)
}

/// Sends a close frame and waits briefly for the server's, so the server has seen
/// the client leave before the scenario goes on.
pub async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_counts_skips_and_repeats() {
        let mut follow = Follow::after(10);
        for (offset, now) in [(11, 5), (12, 6), (12, 7), (15, 8), (14, 9), (16, 10)] {
            follow.observe(offset, now);
        }
        assert_eq!(follow.unique, 4);
        assert_eq!(follow.duplicated, 2);
        assert_eq!(follow.missing, 2);
        assert_eq!((follow.first_ns, follow.last_ns, follow.next), (5, 10, 17));
    }

    #[test]
    fn publish_frames_are_json() {
        let frame: serde_json::Value = serde_json::from_str(&publish_frame("dur:a", 3)).unwrap();
        assert_eq!(frame["room"], "dur:a");
        assert_eq!(frame["event"]["data"]["k"], 3);
    }
}
