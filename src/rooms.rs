//! A session's rooms: which are joined, which wait for the broker, and who waits.

use std::collections::HashMap;

use prometheus::IntGauge;
use serde_json::value::RawValue;
use switchboard_actors::Room;

use crate::Error;

/// A client frame's `ref`, to repeat in the reply.
pub type Reference = Option<Box<RawValue>>;

/// Subscribe frames waiting on one room's confirmation, at most. Past it a repeated
/// subscribe is refused rather than queued.
const MAX_WAITING: usize = 16;

#[derive(Debug)]
enum Membership {
    /// Asked the broker (`attempt` tells this request from earlier ones); `waiting`
    /// are the subscribe frames to answer when it answers.
    Joining {
        attempt: u64,
        waiting: Vec<Reference>,
    },
    Joined,
}

/// The rooms of one session, at most `limit` of them (`LIMIT_SUBSCRIPTIONS`, the
/// ones still joining included). A pure state machine: the session sends the
/// broker messages and the replies it says.
#[derive(Debug)]
pub struct SessionRooms {
    rooms: HashMap<Room, Membership>,
    attempts: u64,
    limit: usize,
    /// The server's `switchboard_subscriptions`: one for each room joined here, given
    /// back when the room is left or these rooms are dropped with their session.
    joined: IntGauge,
}

/// What a subscribe frame leads to.
#[derive(Debug)]
pub enum Join {
    /// Already in the room: answer `subscribed` now.
    Joined(Reference),
    /// A request for the room is on its way: the frame is answered with it.
    Waiting,
    /// Ask the broker; report its answer with this attempt number.
    Ask(u64),
}

/// What the broker's answer to an attempt leads to.
#[derive(Debug)]
pub enum Answer {
    /// The current attempt: answer these frames (`subscribed`, or the error).
    Reply(Vec<Reference>),
    /// An attempt the client has since unsubscribed from, and the broker joined it:
    /// leave the room at the broker again. Nobody is waiting.
    Leave,
    /// Nothing to do.
    Nothing,
}

impl SessionRooms {
    /// No rooms yet.
    pub fn new(limit: usize, joined: IntGauge) -> SessionRooms {
        SessionRooms {
            rooms: HashMap::new(),
            attempts: 0,
            limit,
            joined,
        }
    }

    /// A subscribe frame for `room`.
    pub fn subscribe(&mut self, room: &Room, reference: Reference) -> Result<Join, Error> {
        let full = self.rooms.len() >= self.limit;
        match self.rooms.get_mut(room) {
            Some(Membership::Joined) => Ok(Join::Joined(reference)),
            Some(Membership::Joining { waiting, .. }) if waiting.len() < MAX_WAITING => {
                waiting.push(reference);
                Ok(Join::Waiting)
            }
            Some(Membership::Joining { .. }) => Err(Error::SubscribeFailed(format!(
                "{MAX_WAITING} subscribes to {room} are already waiting"
            ))),
            None if full => Err(Error::TooManySubscriptions(self.limit)),
            None => {
                self.attempts += 1;
                let attempt = self.attempts;
                let waiting = vec![reference];
                self.rooms
                    .insert(room.clone(), Membership::Joining { attempt, waiting });
                Ok(Join::Ask(attempt))
            }
        }
    }

    /// The broker answered `attempt` for `room`.
    pub fn answered(&mut self, room: &Room, attempt: u64, joined: bool) -> Answer {
        match self.rooms.get(room) {
            Some(Membership::Joining {
                attempt: current, ..
            }) if *current == attempt => {
                let Some(Membership::Joining { waiting, .. }) = self.rooms.remove(room) else {
                    unreachable!("checked above");
                };
                if joined {
                    self.rooms.insert(room.clone(), Membership::Joined);
                    self.joined.inc();
                }
                Answer::Reply(waiting)
            }
            // A newer attempt or a membership relies on the broker's state: leave it.
            Some(_) => Answer::Nothing,
            None if joined => Answer::Leave,
            None => Answer::Nothing,
        }
    }

    /// Whether the session is in `room` (joined, not still joining).
    pub fn is_joined(&self, room: &Room) -> bool {
        matches!(self.rooms.get(room), Some(Membership::Joined))
    }

    /// Whether the session is in `room` or asked to join it: its events are delivered.
    pub fn contains(&self, room: &Room) -> bool {
        self.rooms.contains_key(room)
    }

    /// Leaves every room `keep` refuses (a narrower grant): returns each with the
    /// subscribe frames still waiting for it.
    pub fn retain(&mut self, keep: impl Fn(&Room) -> bool) -> Vec<(Room, Vec<Reference>)> {
        let refused: Vec<Room> = self.rooms.keys().filter(|r| !keep(r)).cloned().collect();
        refused
            .into_iter()
            .map(|room| {
                let waiting = self.unsubscribe(&room);
                (room, waiting)
            })
            .collect()
    }

    /// An unsubscribe frame: returns the subscribe frames that were still waiting
    /// for the room (they get `subscribe_failed`).
    pub fn unsubscribe(&mut self, room: &Room) -> Vec<Reference> {
        match self.rooms.remove(room) {
            Some(Membership::Joining { waiting, .. }) => waiting,
            Some(Membership::Joined) => {
                self.joined.dec();
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    fn joined_count(&self) -> usize {
        self.rooms
            .values()
            .filter(|m| matches!(m, Membership::Joined))
            .count()
    }
}

impl Drop for SessionRooms {
    fn drop(&mut self) {
        self.joined.sub(self.joined_count() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> Room {
        Room::new(name).unwrap()
    }

    fn gauge() -> IntGauge {
        IntGauge::new("joined", "rooms joined").unwrap()
    }

    fn reference(n: u32) -> Reference {
        Some(RawValue::from_string(n.to_string()).unwrap())
    }

    fn ask(rooms: &mut SessionRooms, name: &str) -> u64 {
        match rooms.subscribe(&room(name), reference(0)).unwrap() {
            Join::Ask(attempt) => attempt,
            other => panic!("expected to ask the broker, got {other:?}"),
        }
    }

    #[test]
    fn one_request_per_room_and_every_frame_answered() {
        let mut rooms = SessionRooms::new(10, gauge());
        let attempt = ask(&mut rooms, "a");
        assert!(matches!(
            rooms.subscribe(&room("a"), reference(1)).unwrap(),
            Join::Waiting
        ));
        let Answer::Reply(waiting) = rooms.answered(&room("a"), attempt, true) else {
            panic!("expected replies");
        };
        assert_eq!(waiting.len(), 2);
        assert!(matches!(
            rooms.subscribe(&room("a"), reference(2)).unwrap(),
            Join::Joined(_)
        ));
    }

    #[test]
    fn a_stale_answer_does_not_undo_a_newer_subscribe() {
        let mut rooms = SessionRooms::new(10, gauge());
        let first = ask(&mut rooms, "a");
        assert_eq!(rooms.unsubscribe(&room("a")).len(), 1);
        let second = ask(&mut rooms, "a");
        assert!(matches!(
            rooms.answered(&room("a"), first, true),
            Answer::Nothing
        ));
        assert!(matches!(
            rooms.answered(&room("a"), second, true),
            Answer::Reply(_)
        ));
        assert!(matches!(
            rooms.subscribe(&room("a"), None).unwrap(),
            Join::Joined(_)
        ));
    }

    #[test]
    fn a_join_after_unsubscribing_is_left_again() {
        let mut rooms = SessionRooms::new(10, gauge());
        let attempt = ask(&mut rooms, "a");
        rooms.unsubscribe(&room("a"));
        assert!(matches!(
            rooms.answered(&room("a"), attempt, true),
            Answer::Leave
        ));
        assert!(matches!(
            rooms.answered(&room("a"), attempt, false),
            Answer::Nothing
        ));
    }

    #[test]
    fn a_failed_join_frees_the_slot() {
        let mut rooms = SessionRooms::new(1, gauge());
        let attempt = ask(&mut rooms, "a");
        assert!(matches!(
            rooms.subscribe(&room("b"), None),
            Err(Error::TooManySubscriptions(1))
        ));
        assert!(matches!(
            rooms.answered(&room("a"), attempt, false),
            Answer::Reply(_)
        ));
        ask(&mut rooms, "b");
    }

    #[test]
    fn retain_leaves_refused_rooms_joined_or_joining() {
        let mut rooms = SessionRooms::new(10, gauge());
        let joined = ask(&mut rooms, "a:1");
        rooms.answered(&room("a:1"), joined, true);
        ask(&mut rooms, "b:1");
        ask(&mut rooms, "b:2");
        let mut left = rooms.retain(|r| r.as_str().starts_with("a:"));
        left.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
        let names: Vec<&str> = left.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(names, ["b:1", "b:2"]);
        assert!(left.iter().all(|(_, waiting)| waiting.len() == 1));
        assert!(rooms.contains(&room("a:1")));
        assert!(!rooms.contains(&room("b:1")));
    }

    #[test]
    fn waiting_frames_are_bounded() {
        let mut rooms = SessionRooms::new(10, gauge());
        ask(&mut rooms, "a");
        for n in 1..MAX_WAITING as u32 {
            assert!(matches!(
                rooms.subscribe(&room("a"), reference(n)).unwrap(),
                Join::Waiting
            ));
        }
        assert!(matches!(
            rooms.subscribe(&room("a"), None),
            Err(Error::SubscribeFailed(_))
        ));
    }

    #[test]
    fn the_gauge_counts_joined_rooms_until_they_are_left_or_dropped() {
        let joined = gauge();
        let mut rooms = SessionRooms::new(10, joined.clone());
        for name in ["a", "b", "c"] {
            let attempt = ask(&mut rooms, name);
            rooms.answered(&room(name), attempt, name != "c");
        }
        ask(&mut rooms, "d");
        assert_eq!(joined.get(), 2, "a failed and a pending join do not count");
        rooms.unsubscribe(&room("a"));
        rooms.unsubscribe(&room("d"));
        assert_eq!(joined.get(), 1);
        drop(rooms);
        assert_eq!(joined.get(), 0);
    }
}
