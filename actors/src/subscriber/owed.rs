//! What the subscriber owes the broker besides events: news of events it dropped for
//! a full channel, and notices of rooms back after a lost link that wait for a place
//! in that channel. A pure type, so its rules have unit tests.

use std::collections::{HashMap, HashSet};

use crate::Room;

/// The notices the broker is owed.
#[derive(Debug, Default)]
pub(super) struct Owed {
    /// Rooms that lost an event to a full broker channel, not told to the broker yet
    /// (a subset of the rooms held), each with whether an event without an offset was
    /// among the lost (a durable room's history cannot give that one back).
    dropped_in: HashMap<Room, bool>,
    /// Rooms subscribed again after a lost link whose notice waits for a place in the
    /// channel. Until it is in, the room's events are dropped (and told as dropped
    /// after it), so that none overtakes it.
    relinked: HashSet<Room>,
}

impl Owed {
    /// Whether an event of `room` may go to the broker now: no relink notice of the
    /// room is waiting.
    pub(super) fn may_forward(&self, room: &Room) -> bool {
        !self.relinked.contains(room)
    }

    /// `room`'s relink notice must wait for a place. `false` when one already waits:
    /// it covers this lost link too.
    pub(super) fn relink_waits(&mut self, room: Room) -> bool {
        self.relinked.insert(room)
    }

    /// `room`'s waiting notice got its place (or the broker is gone): whether it was
    /// still owed (the room may have been let go meanwhile).
    pub(super) fn relink_placed(&mut self, room: &Room) -> bool {
        self.relinked.remove(room)
    }

    /// An event of `room` was dropped; `unnumbered`: it had no offset.
    pub(super) fn dropped(&mut self, room: Room, unnumbered: bool) {
        *self.dropped_in.entry(room).or_default() |= unnumbered;
    }

    /// Whether `room` has dropped events not told yet, and if so whether one of them
    /// had no offset.
    pub(super) fn dropped_untold(&self, room: &Room) -> Option<bool> {
        self.dropped_in.get(room).copied()
    }

    /// The broker was told of `room`'s dropped events.
    pub(super) fn drop_told(&mut self, room: &Room) {
        self.dropped_in.remove(room);
    }

    /// The rooms whose dropped events may be told now: not those whose relink notice
    /// still waits (it goes first).
    pub(super) fn drops_to_tell(&self) -> Vec<(Room, bool)> {
        self.dropped_in
            .iter()
            .filter(|(room, _)| self.may_forward(room))
            .map(|(room, unnumbered)| (room.clone(), *unnumbered))
            .collect()
    }

    /// The broker is gone: nobody is left to tell.
    pub(super) fn forget_drops(&mut self) {
        self.dropped_in.clear();
    }

    /// `room` is no longer held: nobody here is left to tell of a loss in it.
    pub(super) fn let_go(&mut self, room: &Room) {
        self.dropped_in.remove(room);
        self.relinked.remove(room);
    }

    /// The subscriber restarts: the futures that waited to place relink notices died
    /// with its context. Their rooms are lost again and reported after the
    /// resubscribe, one notice for both losses; kept here, their events would be
    /// dropped for good.
    pub(super) fn restarted(&mut self) {
        self.relinked.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> Room {
        Room::new(name).expect("a room")
    }

    #[test]
    fn a_waiting_relink_holds_the_rooms_events_and_its_drops_until_placed() {
        let mut owed = Owed::default();
        assert!(owed.relink_waits(room("a")));
        assert!(
            !owed.relink_waits(room("a")),
            "one notice covers both losses"
        );
        assert!(!owed.may_forward(&room("a")));
        assert!(owed.may_forward(&room("b")));
        owed.dropped(room("a"), false);
        owed.dropped(room("b"), true);
        assert_eq!(owed.drops_to_tell(), [(room("b"), true)]);
        assert!(owed.relink_placed(&room("a")));
        assert!(owed.may_forward(&room("a")));
        let mut drops = owed.drops_to_tell();
        drops.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
        assert_eq!(drops, [(room("a"), false), (room("b"), true)]);
        owed.drop_told(&room("a"));
        assert_eq!(owed.dropped_untold(&room("a")), None);
        assert_eq!(owed.dropped_untold(&room("b")), Some(true));
    }

    #[test]
    fn a_restart_forgets_waiting_relinks_and_letting_go_forgets_everything() {
        let mut owed = Owed::default();
        owed.relink_waits(room("a"));
        owed.restarted();
        assert!(owed.may_forward(&room("a")), "no notice can come any more");
        assert!(owed.relink_waits(room("a")), "the next relink waits again");

        owed.dropped(room("a"), true);
        owed.let_go(&room("a"));
        assert!(owed.may_forward(&room("a")));
        assert!(
            !owed.relink_placed(&room("a")),
            "a late place finds nothing owed"
        );
        assert_eq!(owed.dropped_untold(&room("a")), None);
    }
}
