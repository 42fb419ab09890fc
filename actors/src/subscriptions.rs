//! The subscriber's bookkeeping of rooms, apart from any I/O so it can be tested alone.

use std::collections::{HashMap, HashSet};

use tokio::sync::oneshot;

use crate::Room;

/// Which rooms the broker wants, which Redis has confirmed, and what must be sent to
/// make the two agree.
///
/// A [`WatchRoom`](crate::WatchRoom) is answered only by a SUBSCRIBE sent after it
/// arrived: its confirmation is owed until a batch that carries its room succeeds.
/// Batches go one at a time, so Redis applies them in order.
#[derive(Debug, Default)]
pub struct Subscriptions {
    wanted: HashSet<Room>,
    confirmed: HashSet<Room>,
    to_subscribe: HashSet<Room>,
    to_unsubscribe: HashSet<Room>,
    /// Confirmations owed for rooms not yet in a sent batch. Bounded by the broker's
    /// pending subscribes; abandoned ones are dropped by [`Subscriptions::prune`].
    owed: HashMap<Room, Vec<oneshot::Sender<()>>>,
    /// Rooms held on a link that was lost and not yet held again: when one is, its
    /// subscribers are told that events may have been lost meanwhile.
    lost: HashSet<Room>,
}

/// One round of commands: UNSUBSCRIBE these, then SUBSCRIBE those.
#[derive(Debug, Default)]
pub struct Batch {
    /// Rooms to unsubscribe.
    pub unsubscribe: Vec<Room>,
    /// Rooms to subscribe.
    pub subscribe: Vec<Room>,
    owed: Vec<(Room, Vec<oneshot::Sender<()>>)>,
}

/// The answer to a [`Subscriptions::want`].
#[derive(Debug)]
pub enum Want {
    /// Redis holds the room already.
    Confirmed,
    /// Resolves once a batch with the room succeeded.
    Owed(oneshot::Receiver<()>),
}

impl Subscriptions {
    /// The broker wants `room`.
    pub fn want(&mut self, room: Room) -> Want {
        if let Some(owed) = self.owed.get_mut(&room) {
            owed.retain(|tx| !tx.is_closed());
        }
        self.wanted.insert(room.clone());
        self.to_unsubscribe.remove(&room);
        if self.confirmed.contains(&room) {
            return Want::Confirmed;
        }
        let (tx, rx) = oneshot::channel();
        self.owed.entry(room.clone()).or_default().push(tx);
        self.to_subscribe.insert(room);
        Want::Owed(rx)
    }

    /// The broker no longer wants `room`; `connected` says whether Redis holds
    /// anything to unsubscribe.
    pub fn unwant(&mut self, room: &Room, connected: bool) {
        self.wanted.remove(room);
        self.confirmed.remove(room);
        self.lost.remove(room);
        self.to_subscribe.remove(room);
        if connected {
            self.to_unsubscribe.insert(room.clone());
        }
    }

    /// A new connection holds nothing: every wanted room is to be subscribed, and the
    /// rooms the lost link held have a gap to report once they are held again.
    pub fn reconnected(&mut self) {
        self.lost.extend(self.confirmed.drain());
        self.to_unsubscribe.clear();
        self.to_subscribe = self.wanted.clone();
    }

    /// What to send next, if anything.
    pub fn next_batch(&mut self) -> Option<Batch> {
        if self.to_subscribe.is_empty() && self.to_unsubscribe.is_empty() {
            return None;
        }
        let subscribe: Vec<Room> = self.to_subscribe.drain().collect();
        let owed = subscribe
            .iter()
            .filter_map(|room| self.owed.remove(room).map(|owed| (room.clone(), owed)))
            .collect();
        Some(Batch {
            unsubscribe: self.to_unsubscribe.drain().collect(),
            subscribe,
            owed,
        })
    }

    /// Redis confirmed `batch`: its rooms are held, its confirmations paid. Returns
    /// the rooms held again after a lost link: each has a gap to report.
    pub fn confirmed(&mut self, batch: Batch) -> Vec<Room> {
        let mut regained = Vec::new();
        for room in batch.subscribe {
            if self.wanted.contains(&room) {
                if self.lost.remove(&room) {
                    regained.push(room.clone());
                }
                self.confirmed.insert(room);
            }
        }
        for tx in batch.owed.into_iter().flat_map(|(_, owed)| owed) {
            let _ = tx.send(());
        }
        regained
    }

    /// `batch` failed (the link is lost): its confirmations stay owed until the
    /// resubscribe after the reconnect.
    pub fn failed(&mut self, batch: Batch) {
        for (room, owed) in batch.owed {
            self.owed.entry(room).or_default().extend(owed);
        }
    }

    /// Drops confirmations nobody waits for any more (the broker's deadline passed).
    pub fn prune(&mut self) {
        self.owed.retain(|_, owed| {
            owed.retain(|tx| !tx.is_closed());
            !owed.is_empty()
        });
    }

    /// Rooms wanted.
    pub fn wanted(&self) -> usize {
        self.wanted.len()
    }

    /// Rooms Redis confirmed on this connection.
    pub fn held(&self) -> usize {
        self.confirmed.len()
    }

    /// Forgets everything (shutdown).
    pub fn clear(&mut self) {
        *self = Subscriptions::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> Room {
        Room::new(name).unwrap()
    }

    fn owed(want: Want) -> oneshot::Receiver<()> {
        match want {
            Want::Owed(rx) => rx,
            Want::Confirmed => panic!("expected an owed confirmation"),
        }
    }

    #[test]
    fn a_want_is_confirmed_by_the_batch_that_carries_it() {
        let mut subs = Subscriptions::default();
        let mut rx = owed(subs.want(room("a")));
        let batch = subs.next_batch().unwrap();
        assert_eq!(batch.subscribe, vec![room("a")]);
        assert!(rx.try_recv().is_err());
        subs.confirmed(batch);
        assert!(rx.try_recv().is_ok());
        assert!(matches!(subs.want(room("a")), Want::Confirmed));
        assert!(subs.next_batch().is_none());
    }

    #[test]
    fn wants_made_while_a_batch_is_in_flight_wait_for_the_next() {
        let mut subs = Subscriptions::default();
        let _first = owed(subs.want(room("a")));
        let batch = subs.next_batch().unwrap();
        let mut second = owed(subs.want(room("b")));
        subs.confirmed(batch);
        assert!(second.try_recv().is_err());
        let next = subs.next_batch().unwrap();
        assert_eq!(next.subscribe, vec![room("b")]);
        subs.confirmed(next);
        assert!(second.try_recv().is_ok());
    }

    #[test]
    fn changes_batch_together() {
        let mut subs = Subscriptions::default();
        for name in ["a", "b", "c"] {
            let _ = subs.want(room(name));
        }
        let batch = subs.next_batch().unwrap();
        assert_eq!(batch.subscribe.len(), 3);
        subs.confirmed(batch);
        subs.unwant(&room("a"), true);
        subs.unwant(&room("b"), true);
        let batch = subs.next_batch().unwrap();
        assert_eq!(batch.unsubscribe.len(), 2);
        assert!(batch.subscribe.is_empty());
        assert_eq!((subs.wanted(), subs.held()), (1, 1));
    }

    #[test]
    fn rooms_held_again_after_a_lost_link_report_a_gap_once() {
        let mut subs = Subscriptions::default();
        let _held = owed(subs.want(room("a")));
        let _lost_early = owed(subs.want(room("b")));
        let batch = subs.next_batch().unwrap();
        assert!(
            subs.confirmed(batch).is_empty(),
            "a first subscribe is no gap"
        );
        let _new = owed(subs.want(room("c")));
        subs.unwant(&room("b"), true);
        subs.reconnected();
        let batch = subs.next_batch().unwrap();
        let mut regained = subs.confirmed(batch);
        regained.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(
            regained,
            vec![room("a")],
            "b is not wanted, c was never held"
        );
        subs.reconnected();
        let batch = subs.next_batch().unwrap();
        assert_eq!(
            subs.confirmed(batch).len(),
            2,
            "a and c, held on the lost link"
        );
    }

    #[test]
    fn a_reconnect_resubscribes_everything_wanted() {
        let mut subs = Subscriptions::default();
        let _ = subs.want(room("a"));
        let _ = subs.want(room("b"));
        let batch = subs.next_batch().unwrap();
        subs.confirmed(batch);
        subs.unwant(&room("b"), true);
        subs.reconnected();
        let batch = subs.next_batch().unwrap();
        assert_eq!(batch.subscribe, vec![room("a")]);
        assert!(batch.unsubscribe.is_empty());
    }

    #[test]
    fn a_failed_batch_keeps_its_confirmations_owed() {
        let mut subs = Subscriptions::default();
        let mut rx = owed(subs.want(room("a")));
        let batch = subs.next_batch().unwrap();
        subs.failed(batch);
        subs.reconnected();
        let batch = subs.next_batch().unwrap();
        subs.confirmed(batch);
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn abandoned_confirmations_are_pruned() {
        let mut subs = Subscriptions::default();
        drop(owed(subs.want(room("a"))));
        subs.prune();
        let batch = subs.next_batch().unwrap();
        assert!(batch.owed.is_empty());
    }

    #[test]
    fn unwant_before_sending_cancels_the_subscribe() {
        let mut subs = Subscriptions::default();
        let _ = subs.want(room("a"));
        subs.unwant(&room("a"), false);
        assert!(subs.next_batch().is_none());
    }
}
