//! [`Publisher`]: a WebSocket publisher at a steady pace, run by a local task, that
//! records each publish's answer; then [`tally`] compares what a [`Watcher`] received
//! with those answers.
//!
//! [`Watcher`]: crate::watcher::Watcher

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::rt::task::JoinHandle;
use serde_json::{json, Value};

use crate::support::{Server, WsClient};
use crate::watcher::{Seen, FOREVER, KEPT};

/// How a publish was answered.
#[derive(Clone, Debug)]
pub enum Answer {
    /// `published`, with the position it names in a durable room.
    Published {
        offset: Option<u64>,
        epoch: Option<String>,
    },
    /// An `error` frame (its code and message) or anything else (the whole frame).
    Failed { code: String, message: String },
}

/// One publish: its test id, room, when it was sent, and its answer once it came.
#[derive(Debug)]
pub struct Outcome {
    pub id: u64,
    pub room: String,
    pub sent: Instant,
    pub answer: Option<(Instant, Answer)>,
}

impl Outcome {
    pub fn published(&self) -> bool {
        matches!(self.answer, Some((_, Answer::Published { .. })))
    }
}

/// A WebSocket session publishing `per_tick` events every `tick` (the server must run
/// with `LIMIT_PUBLISH_RATE=0`), round robin over its rooms, without waiting for answers.
pub struct Publisher {
    label: String,
    base: u64,
    outcomes: Rc<RefCell<Vec<Outcome>>>,
    stop: Rc<Cell<bool>>,
    task: JoinHandle<WsClient>,
}

/// The pace of one [`Publisher`].
#[derive(Clone, Copy)]
pub struct Pace {
    pub per_tick: u64,
    pub tick: Duration,
}

impl Publisher {
    /// Starts publishing on `server`; ids are `base`, `base + 1`... (`ref` is the id).
    pub async fn start(
        server: &Server,
        rooms: &[String],
        base: u64,
        pace: Pace,
        label: &str,
    ) -> Publisher {
        let client = WsClient::connect(server).await;
        let outcomes = Rc::new(RefCell::new(Vec::new()));
        let stop = Rc::new(Cell::new(false));
        let stream = Stream {
            rooms: rooms.to_vec(),
            base,
            pace,
            outcomes: outcomes.clone(),
        };
        let task = actix_web::rt::spawn(stream.run(client, stop.clone()));
        Publisher {
            label: label.to_owned(),
            base,
            outcomes,
            stop,
            task,
        }
    }

    /// Stops publishing and waits, at most `within`, for the answers still due; every
    /// publish must be answered (§5: no Redis call can hang).
    pub async fn finish(self, within: Duration) -> Vec<Outcome> {
        self.stop.set(true);
        let mut client = self
            .task
            .await
            .unwrap_or_else(|e| panic!("{}: the publisher's connection ended: {e}", self.label));
        let deadline = Instant::now() + within;
        while self.outcomes.borrow().iter().any(|o| o.answer.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let unanswered: Vec<u64> = self
                .outcomes
                .borrow()
                .iter()
                .filter(|o| o.answer.is_none())
                .map(|o| o.id)
                .take(10)
                .collect();
            assert!(
                !left.is_zero(),
                "{}: publishes unanswered {within:?} after the stream stopped: {unanswered:?}...",
                self.label
            );
            if let Ok(frame) = tokio::time::timeout(left, client.recv_json(FOREVER)).await {
                answer(&self.outcomes, self.base, frame);
            }
        }
        Rc::try_unwrap(self.outcomes)
            .unwrap_or_else(|_| panic!("the publishing task is done with the outcomes"))
            .into_inner()
    }
}

/// What a publishing task needs besides its connection and its stop flag.
struct Stream {
    rooms: Vec<String>,
    base: u64,
    pace: Pace,
    outcomes: Rc<RefCell<Vec<Outcome>>>,
}

impl Stream {
    async fn run(self, mut client: WsClient, stop: Rc<Cell<bool>>) -> WsClient {
        let mut next = Instant::now();
        let mut seq = 0;
        while !stop.get() {
            for _ in 0..self.pace.per_tick {
                let id = self.base + seq;
                let room = &self.rooms[seq as usize % self.rooms.len()];
                let event = json!({"type": "tick", "data": {"id": id}});
                client
                    .send_json(&json!({"op": "publish", "room": room, "ref": id, "event": event}));
                self.outcomes.borrow_mut().push(Outcome {
                    id,
                    room: room.clone(),
                    sent: Instant::now(),
                    answer: None,
                });
                seq += 1;
            }
            // The pace of the stream; a late tick does not make up for lost time in a burst.
            next = (next + self.pace.tick).max(Instant::now() - self.pace.tick);
            while let Some(left) = next.checked_duration_since(Instant::now()) {
                match tokio::time::timeout(left, client.recv_json(FOREVER)).await {
                    Ok(frame) => answer(&self.outcomes, self.base, frame),
                    Err(_) => break,
                }
            }
        }
        client
    }
}

/// Files the answer `frame` under the publish its `ref` names.
fn answer(outcomes: &RefCell<Vec<Outcome>>, base: u64, frame: Value) {
    let at = Instant::now();
    let index = frame["ref"]
        .as_u64()
        .and_then(|id| id.checked_sub(base))
        .unwrap_or_else(|| panic!("a frame that answers no publish of this stream: {frame}"));
    let mut outcomes = outcomes.borrow_mut();
    let outcome = usize::try_from(index)
        .ok()
        .and_then(|i| outcomes.get_mut(i))
        .unwrap_or_else(|| panic!("an answer to a publish never sent: {frame}"));
    assert!(
        outcome.answer.is_none(),
        "publish {} answered twice: {:?} then {frame}",
        outcome.id,
        outcome.answer
    );
    let answer = match frame["op"].as_str() {
        Some("published") => Answer::Published {
            offset: frame["offset"].as_u64(),
            epoch: frame["epoch"].as_str().map(str::to_owned),
        },
        Some("error") => Answer::Failed {
            code: frame["code"].as_str().unwrap_or("?").to_owned(),
            message: frame["message"].as_str().unwrap_or_default().to_owned(),
        },
        _ => Answer::Failed {
            code: "unexpected".to_owned(),
            message: frame.to_string(),
        },
    };
    outcome.answer = Some((at, answer));
}

/// How one client's deliveries compare with the publishes' answers.
#[derive(Debug, Default)]
pub struct Tally {
    /// Published events that never arrived, and how many (the first few ids).
    pub missing: Vec<u64>,
    pub missing_count: usize,
    /// Events that arrived more than once: (id, deliveries).
    pub duplicated: Vec<(u64, u32)>,
    /// Published events whose delivery names another offset or epoch than the answer.
    pub misplaced: Vec<String>,
    /// Events answered `publish_failed` (or anything but `published`) that arrived once.
    pub failed_delivered: usize,
}

impl Tally {
    pub fn is_clean(&self) -> bool {
        self.missing_count == 0 && self.duplicated.is_empty() && self.misplaced.is_empty()
    }
}

/// Every event answered `published` must have arrived exactly once, where its answer
/// said (offset and epoch, in a durable room); any other at most once.
pub fn tally<'a>(seen: &Seen, outcomes: impl IntoIterator<Item = &'a Outcome>) -> Tally {
    let mut tally = Tally::default();
    for outcome in outcomes {
        let delivery = seen.deliveries.get(&outcome.id);
        if let Some(d) = delivery.filter(|d| d.count > 1) {
            tally.duplicated.push((outcome.id, d.count));
        }
        match (&outcome.answer, delivery) {
            (Some((_, Answer::Published { offset, epoch })), Some(d)) => {
                let answered = (outcome.room.as_str(), offset, epoch);
                if answered != (d.room.as_str(), &d.offset, &d.epoch)
                    && tally.misplaced.len() < KEPT
                {
                    tally.misplaced.push(format!(
                        "{}: answered {answered:?}, delivered in {} at {:?} {:?}",
                        outcome.id, d.room, d.offset, d.epoch
                    ));
                }
            }
            (Some((_, Answer::Published { .. })), None) => {
                tally.missing_count += 1;
                if tally.missing.len() < KEPT {
                    tally.missing.push(outcome.id);
                }
            }
            (_, Some(_)) => tally.failed_delivered += 1,
            (_, None) => {}
        }
    }
    tally
}

/// Whether `seen` holds every event of `outcomes` answered `published`.
pub fn has_all_published(seen: &Seen, outcomes: &[Outcome]) -> bool {
    outcomes
        .iter()
        .filter(|o| o.published())
        .all(|o| seen.deliveries.contains_key(&o.id))
}

/// `n` rooms named `{stem}:0`, `{stem}:1`...
pub fn rooms(stem: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{stem}:{i}")).collect()
}

/// A report line for a set of answers: how many were published, how many failed by
/// code, with the first message of each code.
pub fn answers_summary(outcomes: &[Outcome]) -> String {
    let mut failed: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    let mut published = 0;
    for outcome in outcomes {
        match &outcome.answer {
            Some((_, Answer::Published { .. })) => published += 1,
            Some((_, Answer::Failed { code, message })) => {
                failed
                    .entry(code.as_str())
                    .or_insert((0, message.as_str()))
                    .0 += 1;
            }
            None => failed.entry("unanswered").or_insert((0, "")).0 += 1,
        }
    }
    format!(
        "{} publishes: {published} published, failed (count, first message) {failed:?}",
        outcomes.len()
    )
}

/// The comparison itself: a missing, a doubled and a misplaced event are each caught.
mod checks {
    use super::*;
    use crate::watcher::Delivery;

    fn outcome(id: u64, answer: Answer) -> Outcome {
        let now = Instant::now();
        Outcome {
            id,
            room: "r".to_owned(),
            sent: now,
            answer: Some((now, answer)),
        }
    }

    fn published(offset: u64) -> Answer {
        Answer::Published {
            offset: Some(offset),
            epoch: Some("e".to_owned()),
        }
    }

    fn failed() -> Answer {
        Answer::Failed {
            code: "publish_failed".to_owned(),
            message: String::new(),
        }
    }

    fn delivered(seen: &mut Seen, id: u64, offset: u64, count: u32) {
        let delivery = Delivery {
            at: Instant::now(),
            count,
            room: "r".to_owned(),
            epoch: Some("e".to_owned()),
            offset: Some(offset),
        };
        seen.deliveries.insert(id, delivery);
    }

    #[test]
    fn missing_doubled_and_misplaced_events_are_each_caught() {
        let mut seen = Seen::default();
        delivered(&mut seen, 1, 1, 1);
        delivered(&mut seen, 2, 2, 2);
        delivered(&mut seen, 3, 7, 1);
        delivered(&mut seen, 5, 5, 1);
        let outcomes = [
            outcome(1, published(1)),
            outcome(2, published(2)),
            outcome(3, published(3)),
            outcome(4, published(4)),
            outcome(5, failed()),
            outcome(6, failed()),
        ];
        let tally = tally(&seen, &outcomes);
        assert_eq!(tally.missing, [4]);
        assert_eq!(tally.duplicated, [(2, 2)]);
        assert_eq!(tally.misplaced.len(), 1, "{:?}", tally.misplaced);
        assert_eq!(tally.failed_delivered, 1);
        assert!(!tally.is_clean());
    }
}
