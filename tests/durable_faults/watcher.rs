//! [`Watcher`]: a subscriber session whose every frame is checked as it arrives, by a
//! local task, so the test kills and restarts Redis meanwhile. [`Seen`] is what it
//! received: each durable room's position (§7-8 promise that the next event continues
//! it), each test event's deliveries, the gaps, and any broken promise.
//!
//! Every test event carries a unique id in its `data` (`{"id": n}`), so a delivery can
//! be matched to the publish, and its answer, that produced it ([`crate::publisher`]).

use std::cell::{Cell, Ref, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::rt::task::JoinHandle;
use serde_json::{json, Value};

use crate::support::{Server, WsClient};
/// How long a task waits for a frame before it looks at its stop flag again.
const POLL: Duration = Duration::from_millis(50);
/// The timeout of a read that something else always cuts short (a task's [`POLL`], a
/// deadline): `recv_json` panics on its own timeout.
pub const FOREVER: Duration = Duration::from_secs(3600);
/// After its stop, a watcher reads on until the connection was quiet this long, so a
/// late duplicate is still counted.
const QUIET: Duration = Duration::from_millis(300);
/// How many violations, misplaced or missing events a check keeps word for word (all
/// are counted).
pub const KEPT: usize = 20;

/// Where a durable room stands at a client: the next event must be `offset + 1` in
/// `epoch` (PROTOCOL.md §7), unless a `gap` frame moves it first (§8).
#[derive(Clone, Debug, PartialEq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// The first delivery of one test event at one client, and how many deliveries it had.
#[derive(Debug)]
pub struct Delivery {
    pub at: Instant,
    pub count: u32,
    pub room: String,
    pub epoch: Option<String>,
    pub offset: Option<u64>,
}

/// Everything one client received, checked frame by frame.
#[derive(Default)]
pub struct Seen {
    /// Durable rooms only: where each stands after the last event or gap.
    pub positions: HashMap<String, Position>,
    /// Durable rooms only: the epochs each room left through a gap.
    left: HashMap<String, HashSet<String>>,
    /// Keyed by the event's test id.
    pub deliveries: HashMap<u64, Delivery>,
    /// Every `event` frame, with or without a test id.
    pub events: u64,
    /// Every `gap` frame, with when it came.
    pub gaps: Vec<(Instant, Value)>,
    /// Broken promises of §7-8 seen in order (the first [`KEPT`]).
    pub violations: Vec<String>,
    pub violation_count: u64,
    /// Frames that are neither events nor gaps (the first [`KEPT`]).
    pub others: Vec<Value>,
}

impl Seen {
    fn record(&mut self, at: Instant, frame: Value, durable: bool) {
        match frame["op"].as_str() {
            Some("event") => self.event(at, &frame, durable),
            Some("gap") => self.gap(at, frame, durable),
            _ if self.others.len() < KEPT => self.others.push(frame),
            _ => {}
        }
    }

    fn event(&mut self, at: Instant, frame: &Value, durable: bool) {
        self.events += 1;
        let room = frame["room"].as_str().unwrap_or_default().to_owned();
        let envelope = &frame["event"];
        let epoch = envelope["epoch"].as_str().map(str::to_owned);
        let offset = envelope["offset"].as_u64();
        if durable {
            self.advance(&room, epoch.as_deref(), offset);
        }
        let Some(id) = envelope["data"]["id"].as_u64() else {
            return;
        };
        self.deliveries
            .entry(id)
            .and_modify(|d| d.count += 1)
            .or_insert(Delivery {
                at,
                count: 1,
                room,
                epoch,
                offset,
            });
    }

    /// Checks that an event continues its room's numbering, and moves the room on.
    fn advance(&mut self, room: &str, epoch: Option<&str>, offset: Option<u64>) {
        let (Some(epoch), Some(offset)) = (epoch, offset) else {
            self.violation(format!("{room}: an event without offset and epoch"));
            return;
        };
        let Some(position) = self.positions.get_mut(room) else {
            self.violation(format!("{room}: an event of a room never subscribed"));
            return;
        };
        if position.epoch != epoch {
            let was = position.clone();
            *position = Position {
                epoch: epoch.to_owned(),
                offset,
            };
            self.violation(format!(
                "{room}: epoch {} (offset {}) changed to {epoch} (offset {offset}) with no gap frame",
                was.epoch, was.offset
            ));
        } else if offset != position.offset + 1 {
            let was = position.offset;
            position.offset = position.offset.max(offset);
            self.violation(format!("{room}: offset {offset} after {was} in {epoch}"));
        } else {
            position.offset = offset;
        }
    }

    /// A durable room's gap must be `history_lost` with the position events go on from:
    /// a new epoch, or the same one further on (a history trimmed past the missed
    /// events), never back to an epoch the room left nor back within its epoch, where
    /// offsets the client already had would come again with other events.
    fn gap(&mut self, at: Instant, frame: Value, durable: bool) {
        if durable {
            let room = frame["room"].as_str().unwrap_or_default().to_owned();
            let epoch = frame["epoch"]
                .as_str()
                .filter(|e| (1..=64).contains(&e.len()));
            match (frame["reason"].as_str(), epoch, frame["offset"].as_u64()) {
                (Some("history_lost"), Some(epoch), Some(offset)) => {
                    let position = Position {
                        epoch: epoch.to_owned(),
                        offset,
                    };
                    self.move_to(room, position, &frame);
                }
                _ => self.violation(format!("a malformed gap in a durable room: {frame}")),
            }
        }
        self.gaps.push((at, frame));
    }

    fn move_to(&mut self, room: String, to: Position, frame: &Value) {
        let left = self.left.entry(room.clone()).or_default();
        let from = self.positions.insert(room, to.clone());
        if left.contains(&to.epoch) {
            self.violation(format!(
                "a gap back to an epoch the room left before: {frame}"
            ));
        } else if let Some(from) = from {
            if from.epoch == to.epoch && to.offset < from.offset {
                self.violation(format!("a gap back from offset {}: {frame}", from.offset));
            } else if from.epoch != to.epoch {
                left.insert(from.epoch);
            }
        }
    }

    fn violation(&mut self, what: String) {
        self.violation_count += 1;
        if self.violations.len() < KEPT {
            self.violations.push(what);
        }
    }

    /// The `gap` frames of `room`.
    pub fn gaps_of(&self, room: &str) -> Vec<&Value> {
        self.gaps
            .iter()
            .map(|(_, gap)| gap)
            .filter(|gap| gap["room"] == room)
            .collect()
    }
}

/// A subscriber session read by a local task that checks every frame as it comes.
pub struct Watcher {
    pub label: String,
    seen: Rc<RefCell<Seen>>,
    stop: Rc<Cell<bool>>,
    task: JoinHandle<WsClient>,
}

impl Watcher {
    /// Connects to `server` and subscribes to `rooms`. In `durable` rooms the `subscribed`
    /// reply must carry the position the events go on from (§7).
    pub async fn start(server: &Server, rooms: &[String], durable: bool, label: &str) -> Watcher {
        let mut client = WsClient::connect(server).await;
        let mut seen = Seen::default();
        for room in rooms {
            let reply = client
                .request(json!({"op": "subscribe", "room": room}))
                .await;
            assert_eq!(
                reply["op"], "subscribed",
                "{label}: subscribe {room}: {reply}"
            );
            if durable {
                let (Some(epoch), Some(offset)) =
                    (reply["epoch"].as_str(), reply["offset"].as_u64())
                else {
                    panic!(
                        "{label}: the `subscribed` reply of durable room {room} has no offset \
                         and epoch (PROTOCOL.md §7): {reply}"
                    );
                };
                let position = Position {
                    epoch: epoch.to_owned(),
                    offset,
                };
                seen.positions.insert(room.clone(), position);
            }
        }
        let seen = Rc::new(RefCell::new(seen));
        let stop = Rc::new(Cell::new(false));
        let task = actix_web::rt::spawn(watch(client, seen.clone(), stop.clone(), durable));
        Watcher {
            label: label.to_owned(),
            seen,
            stop,
            task,
        }
    }

    /// What the session received so far. Fails the test if its reader stopped, which
    /// only a closed connection does (the reader's own panic says how it closed).
    pub fn seen(&self) -> Ref<'_, Seen> {
        assert!(
            !self.task.is_finished(),
            "{}: the session's connection ended (see the panic above)",
            self.label
        );
        self.seen.borrow()
    }

    /// Stops reading once the connection is quiet and hands back the open session.
    pub async fn finish(self) -> (WsClient, Seen) {
        self.stop.set(true);
        let client = self.task.await.unwrap_or_else(|e| {
            panic!(
                "{}: the session's connection ended (its reader: {e})",
                self.label
            )
        });
        let seen = Rc::try_unwrap(self.seen)
            .unwrap_or_else(|_| panic!("the reader is done with what it saw"))
            .into_inner();
        (client, seen)
    }
}

async fn watch(
    mut client: WsClient,
    seen: Rc<RefCell<Seen>>,
    stop: Rc<Cell<bool>>,
    durable: bool,
) -> WsClient {
    let mut last = Instant::now();
    while !stop.get() || last.elapsed() < QUIET {
        if let Ok(frame) = tokio::time::timeout(POLL, client.recv_json(FOREVER)).await {
            last = Instant::now();
            seen.borrow_mut().record(last, frame, durable);
        }
    }
    client
}

/// The checks of [`Seen`] themselves: each broken promise is caught, each kept one passes.
mod checks {
    use super::*;

    fn seen_at(epoch: &str, offset: u64) -> Seen {
        let mut seen = Seen::default();
        let position = Position {
            epoch: epoch.to_owned(),
            offset,
        };
        seen.positions.insert("r".to_owned(), position);
        seen
    }

    fn event(seen: &mut Seen, id: u64, epoch: &str, offset: u64) {
        let envelope = json!({"type": "t", "data": {"id": id}, "epoch": epoch, "offset": offset});
        let frame = json!({"op": "event", "room": "r", "event": envelope});
        seen.record(Instant::now(), frame, true);
    }

    fn gap(seen: &mut Seen, epoch: &str, offset: u64) {
        let frame = json!({"op": "gap", "room": "r", "reason": "history_lost", "epoch": epoch, "offset": offset});
        seen.record(Instant::now(), frame, true);
    }

    #[test]
    fn contiguous_offsets_and_a_gap_before_a_new_epoch_pass() {
        let mut seen = seen_at("e1", 4);
        event(&mut seen, 1, "e1", 5);
        event(&mut seen, 2, "e1", 6);
        gap(&mut seen, "e2", 9);
        event(&mut seen, 3, "e2", 10);
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        assert_eq!(seen.deliveries[&3].offset, Some(10));
    }

    #[test]
    fn a_skip_a_repeat_and_a_silent_epoch_change_are_each_caught() {
        let mut seen = seen_at("e1", 4);
        event(&mut seen, 1, "e1", 6);
        event(&mut seen, 2, "e1", 6);
        event(&mut seen, 2, "e2", 1);
        assert_eq!(seen.violation_count, 3, "{:?}", seen.violations);
        assert_eq!(seen.deliveries[&2].count, 2);
    }

    #[test]
    fn a_gap_back_to_a_left_epoch_or_back_within_the_epoch_is_caught() {
        let mut seen = seen_at("e1", 20);
        gap(&mut seen, "e2", 11);
        gap(&mut seen, "e1", 10);
        assert_eq!(seen.violation_count, 1, "{:?}", seen.violations);
        let mut seen = seen_at("e1", 20);
        gap(&mut seen, "e1", 25);
        gap(&mut seen, "e1", 10);
        assert_eq!(seen.violation_count, 1, "{:?}", seen.violations);
    }

    #[test]
    fn an_event_without_a_position_or_a_malformed_gap_is_caught() {
        let mut seen = seen_at("e1", 0);
        let frame = json!({"op": "event", "room": "r", "event": {"type": "t", "data": {"id": 1}}});
        seen.record(Instant::now(), frame, true);
        let frame = json!({"op": "gap", "room": "r", "reason": "link_lost"});
        seen.record(Instant::now(), frame, true);
        assert_eq!(seen.violation_count, 2, "{:?}", seen.violations);
    }
}
