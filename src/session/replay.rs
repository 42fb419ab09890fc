//! A session's entries into durable rooms (PROTOCOL.md §7): the reply first, then the
//! events after a client's `since`, then live events. A numbered event that reaches
//! the session before the broker's answer (the answer and the deliveries take
//! different ways) waits in the history and is read in its turn; a recovery is fed
//! into the bounded outbound queue as it drains. A pure type: the session asks it what
//! to do next.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use switchboard_actors::{
    durable::{Epoch, Position, Since},
    Event, Gap, Room,
};

/// The rooms being recovered, each with what is still to send.
#[derive(Debug, Default)]
pub struct Replays {
    rooms: HashMap<Room, Replay>,
}

#[derive(Debug)]
struct Replay {
    /// The next offset to send (with `since`, until the broker answers).
    next: u64,
    /// The numbering's epoch (with `since`, until the broker answers).
    epoch: Option<Epoch>,
    /// Replay up to here; `None` until the broker answered the subscribe.
    to: Option<u64>,
    /// The highest live offset dropped while replaying: replayed too.
    seen: u64,
    /// Read and not sent yet.
    pending: VecDeque<Arc<Event>>,
    fetching: bool,
    /// A gap the broker told before its answer: told after the reply.
    gap: Option<Gap>,
}

/// What to do next for a room being recovered.
#[derive(Debug)]
pub enum Step {
    /// Send this event.
    Send(Arc<Event>),
    /// Read the events after `after` (the room's history).
    Fetch(Since),
    /// Events between were trimmed away while replaying: tell the client of the gap
    /// (the events after `position` follow).
    Lost(Position),
    /// Nothing now: a read is out, or the subscribe is not answered yet.
    Wait,
    /// The recovery is over; the room is live.
    Done,
}

impl Replays {
    /// A subscribe went to the broker: the room's numbered events wait until it
    /// answers.
    pub fn start(&mut self, room: Room, since: Option<&Since>) {
        let replay = Replay {
            next: since.map_or(0, |s| s.offset.saturating_add(1)),
            epoch: since.map(|s| s.epoch.clone()),
            to: None,
            seen: 0,
            pending: VecDeque::new(),
            fetching: false,
            gap: None,
        };
        self.rooms.insert(room, replay);
    }

    /// The broker answered: the client stands at `position`; when it `recovered`,
    /// replay `replay` first; then read up to `to` (and any live event held back).
    pub fn joined(
        &mut self,
        room: &Room,
        position: &Position,
        recovered: bool,
        replay: Vec<Arc<Event>>,
        to: u64,
    ) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        state.next = position.offset + 1;
        state.epoch = Some(position.epoch.clone());
        state.to = Some(to.max(state.seen));
        if recovered {
            state.pending.extend(replay);
        }
    }

    /// A gap for a room whose subscribe is not answered yet: kept, to follow the
    /// reply. `false` when the room is not waiting for its answer.
    pub fn hold_gap(&mut self, gap: &Gap) -> bool {
        match self.rooms.get_mut(&gap.room) {
            Some(state) if state.to.is_none() => {
                state.gap = Some(gap.clone());
                true
            }
            _ => false,
        }
    }

    /// The gap held for the room, if any, to tell now that the reply went out. In a
    /// durable room what follows the gap's position is read after it.
    pub fn take_gap(&mut self, room: &Room) -> Option<Gap> {
        let state = self.rooms.get_mut(room)?;
        let gap = state.gap.take()?;
        if let (Some(position), Some(to)) = (&gap.position, state.to) {
            state.next = position.offset.saturating_add(1);
            state.epoch = Some(position.epoch.clone());
            state.to = Some(to.max(position.offset));
            state.pending.clear();
        }
        Some(gap)
    }

    /// The room is not recovered (or not any more); where the replay was to end,
    /// when it knew: the live events after it follow.
    pub fn cancel(&mut self, room: &Room) -> Option<Position> {
        let state = self.rooms.remove(room)?;
        Some(Position {
            offset: state.to?,
            epoch: state.epoch?,
        })
    }

    /// Whether a live event goes out now: not while its room is replayed (it is in
    /// the history, and is replayed in its turn). Events without an offset go.
    pub fn live(&mut self, event: &Event) -> bool {
        let (Some(state), Some(offset)) = (self.rooms.get_mut(event.room()), event.offset()) else {
            return true;
        };
        state.seen = state.seen.max(offset);
        if let Some(to) = state.to.as_mut() {
            *to = (*to).max(offset);
        }
        false
    }

    /// The rooms being replayed.
    pub fn rooms(&self) -> Vec<Room> {
        self.rooms.keys().cloned().collect()
    }

    /// What to do next in `room`.
    pub fn step(&mut self, room: &Room) -> Step {
        let Some(state) = self.rooms.get_mut(room) else {
            return Step::Done;
        };
        let (Some(to), Some(epoch)) = (state.to, state.epoch.clone()) else {
            return Step::Wait;
        };
        while let Some(event) = state.pending.pop_front() {
            let Some(offset) = event.offset() else {
                continue;
            };
            if offset < state.next || offset > to {
                continue;
            }
            if offset > state.next {
                state.pending.push_front(event);
                let lost = Position {
                    offset: offset - 1,
                    epoch,
                };
                state.next = offset;
                return Step::Lost(lost);
            }
            state.next = offset + 1;
            return Step::Send(event);
        }
        if state.next > to {
            self.rooms.remove(room);
            return Step::Done;
        }
        if state.fetching {
            return Step::Wait;
        }
        state.fetching = true;
        Step::Fetch(Since {
            offset: state.next - 1,
            epoch,
        })
    }

    /// A read answered with `events`; `false` when it brought nothing (the history no
    /// longer holds what is missing: the replay ends there).
    pub fn fetched(&mut self, room: &Room, events: Vec<Arc<Event>>) -> bool {
        let Some(state) = self.rooms.get_mut(room) else {
            return true;
        };
        state.fetching = false;
        if events.is_empty() {
            return false;
        }
        state.pending.extend(events);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn room() -> Room {
        Room::new("d:1").unwrap()
    }

    fn event(offset: u64) -> Arc<Event> {
        let json = format!(r#"{{"type":"t","offset":{offset},"epoch":"e"}}"#);
        Arc::new(Event::parse(room(), Bytes::from(json)).unwrap())
    }

    fn since(offset: u64) -> Since {
        Since {
            offset,
            epoch: Epoch::new("e").unwrap(),
        }
    }

    fn at(offset: u64) -> Position {
        Position {
            offset,
            epoch: Epoch::new("e").unwrap(),
        }
    }

    fn sent(replays: &mut Replays) -> Vec<u64> {
        let mut out = Vec::new();
        while let Step::Send(e) = replays.step(&room()) {
            out.push(e.offset().unwrap());
        }
        out
    }

    #[test]
    fn replays_then_reads_up_to_the_live_events_it_held_back() {
        let mut replays = Replays::default();
        replays.start(room(), Some(&since(2)));
        // A live event before the answer: held back, and replayed in its turn.
        assert!(!replays.live(&event(6)));
        assert!(matches!(replays.step(&room()), Step::Wait));
        replays.joined(&room(), &at(2), true, vec![event(3), event(4)], 5);
        assert_eq!(sent(&mut replays), vec![3, 4]);
        let mut replays2 = Replays::default();
        replays2.start(room(), Some(&since(2)));
        replays2.joined(&room(), &at(2), true, vec![event(3), event(4)], 5);
        assert!(!replays2.live(&event(6)));
        let mut out = Vec::new();
        loop {
            match replays2.step(&room()) {
                Step::Send(e) => out.push(e.offset().unwrap()),
                Step::Fetch(since) => {
                    let events = ((since.offset + 1)..=6).map(event).collect();
                    assert!(replays2.fetched(&room(), events));
                }
                Step::Done => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(out, vec![3, 4, 5, 6]);
        assert!(replays2.live(&event(7)), "live once the replay is done");
    }

    #[test]
    fn events_that_beat_the_reply_wait_for_it() {
        let mut replays = Replays::default();
        replays.start(room(), None);
        assert!(!replays.live(&event(8)));
        assert!(!replays.live(&event(9)));
        // The reply says 7: 8 and 9 are read from the history after it.
        replays.joined(&room(), &at(7), false, Vec::new(), 7);
        let Step::Fetch(from) = replays.step(&room()) else {
            panic!("8 and 9 are read");
        };
        assert_eq!(from.offset, 7);
        assert!(replays.fetched(&room(), vec![event(8), event(9)]));
        assert_eq!(sent(&mut replays), vec![8, 9]);
        assert!(matches!(replays.step(&room()), Step::Done));
        // Nothing raced: done at once.
        replays.start(room(), None);
        replays.joined(&room(), &at(9), false, Vec::new(), 9);
        assert!(matches!(replays.step(&room()), Step::Done));
    }

    #[test]
    fn a_gap_before_the_answer_follows_the_reply() {
        let mut replays = Replays::default();
        replays.start(room(), None);
        let gap = Gap {
            room: room(),
            reason: switchboard_actors::GapReason::HistoryLost,
            position: Some(at(4)),
        };
        assert!(replays.hold_gap(&gap));
        assert!(!replays.live(&event(5)));
        replays.joined(&room(), &at(2), false, Vec::new(), 2);
        assert_eq!(replays.take_gap(&room()), Some(gap));
        let Step::Fetch(from) = replays.step(&room()) else {
            panic!("5 is read after the gap");
        };
        assert_eq!(from.offset, 4);
    }

    #[test]
    fn a_hole_in_the_history_is_reported() {
        let mut replays = Replays::default();
        replays.start(room(), Some(&since(0)));
        replays.joined(&room(), &at(0), true, vec![event(1), event(4)], 4);
        assert!(matches!(replays.step(&room()), Step::Send(_)));
        assert!(matches!(replays.step(&room()), Step::Lost(p) if p.offset == 3));
        assert!(matches!(replays.step(&room()), Step::Send(e) if e.offset() == Some(4)));
        assert!(matches!(replays.step(&room()), Step::Done));
    }
}
