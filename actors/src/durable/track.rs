//! What a server keeps for each durable room it holds (PROTOCOL.md §8): the epoch and
//! the last offset it delivered, and a ring of the room's recent events. A pure type:
//! the broker feeds it what arrives and what its reads return, and does what it says.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Epoch, HistoryPage, Position, Since};
use crate::Event;

/// The most events one read asks for (a catch-up reads page after page).
pub(crate) const READ_PAGE: usize = 500;

/// The most events kept waiting while a read is out; past it they are not kept, and
/// the room is read again once the read ends, which finds them in the history.
const MAX_WAITING: usize = 8192;

/// The most bytes of envelopes a room's ring keeps (besides its count bound): the
/// rings of a server take at most this times the durable rooms it holds.
const RING_BYTES: usize = 256 << 10;

/// One durable room at this server.
#[derive(Debug)]
pub(crate) struct Track {
    /// The last offset delivered here, in its epoch; `None` until the first read.
    position: Option<Position>,
    /// The room's latest events, contiguous, the last one at `position`.
    ring: VecDeque<Arc<Event>>,
    ring_bytes: usize,
    ring_limit: usize,
    /// `HISTORY_TTL_MS`: the ring's events expire with the history, once nothing
    /// arrived for this long, so this server recovers no more than the history holds.
    ttl: Duration,
    /// When the ring's last event arrived.
    touched: Instant,
    /// A read is out: events arriving meanwhile wait here, in order.
    waiting: Option<VecDeque<Arc<Event>>>,
    /// Events arrived past [`MAX_WAITING`] and were not kept: read again after.
    overflowed: bool,
    /// The pub/sub link came back while a read was out: read again after it (the
    /// read may have been answered before the outage).
    relink_pending: bool,
    /// Where Redis stood at the last read: no real event is past it in its epoch.
    known: Option<Position>,
    /// Epochs this server replaced (a rollback): their late events are dropped.
    retired: Vec<Epoch>,
}

/// What an arriving numbered event means.
#[derive(Debug)]
pub(crate) enum Arrival {
    /// The next one: deliver it (it is in the ring now).
    Deliver(Arc<Event>),
    /// Delivered already (or of a retired epoch): drop it.
    Duplicate,
    /// It waits for the read that is out.
    Waiting,
    /// Offsets skipped before it, or another epoch: it waits, and a read from `from`
    /// must go out (the read tells a real skip or a new epoch from a foreign envelope
    /// that merely looks numbered).
    Read { from: Option<u64> },
}

/// What a read's answer means.
#[derive(Debug, Default)]
pub(crate) struct Caught {
    /// Do these, in order: missed events first, then those that waited; a gap where
    /// missed events cannot be had.
    pub(crate) out: Vec<Out>,
    /// Events recovered from the history.
    pub(crate) recovered: usize,
    /// Events dropped as already delivered.
    pub(crate) duplicates: usize,
    /// Events dropped because their numbering is not Redis's: an offset past the
    /// room's current one, or an epoch it does not have (a foreign envelope that
    /// looks numbered).
    pub(crate) invalid: usize,
    /// The read found the numbering rolled back: replace this epoch in the backplane,
    /// then read again.
    pub(crate) rotate: Option<Epoch>,
    /// Read again from this offset (more missed events, or another skip).
    pub(crate) read_again: Option<u64>,
}

/// One thing to hand the room's recipients.
#[derive(Debug)]
pub(crate) enum Out {
    /// Deliver the event.
    Event(Arc<Event>),
    /// Events before the ones that follow cannot be had: a `history_lost` gap; the
    /// events after this position follow.
    Gap(Position),
}

impl Caught {
    /// Whether the answer holds a gap.
    pub(crate) fn has_gap(&self) -> bool {
        self.out.iter().any(|o| matches!(o, Out::Gap(_)))
    }
}

/// A recipient's way into the room (`Subscribe` with or without `since`).
#[derive(Debug)]
pub(crate) enum Entry {
    /// Whether it recovered, and the events to replay first (from the ring). Its
    /// position is taken when it joins.
    Ready {
        recovered: Option<bool>,
        replay: Vec<Arc<Event>>,
    },
    /// The ring does not reach back far enough: read from `from` first.
    Read { from: u64 },
}

impl Track {
    /// A room not read yet: a read of its latest `ring_limit` events must go out.
    pub(crate) fn new(ring_limit: usize, ttl: Duration) -> Track {
        Track {
            position: None,
            ring: VecDeque::new(),
            ring_bytes: 0,
            ring_limit: ring_limit.max(1),
            ttl,
            touched: Instant::now(),
            waiting: Some(VecDeque::new()),
            overflowed: false,
            relink_pending: false,
            known: None,
            retired: Vec::new(),
        }
    }

    /// The size of the first read, which fills the ring.
    pub(crate) fn ring_limit(&self) -> usize {
        self.ring_limit
    }

    /// The last offset delivered here; `None` before the first read answered.
    pub(crate) fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// Whether a read is out.
    pub(crate) fn is_reading(&self) -> bool {
        self.waiting.is_some()
    }

    /// A numbered event from the backplane.
    pub(crate) fn arrive(&mut self, event: Arc<Event>) -> Arrival {
        if let Some(waiting) = &mut self.waiting {
            if waiting.len() < MAX_WAITING {
                waiting.push_back(event);
            } else if !self.overflowed {
                self.overflowed = true;
                log::warn!(
                    "{}: {MAX_WAITING} events wait for a history read; the next ones are read again after it",
                    event.room()
                );
            }
            return Arrival::Waiting;
        }
        let (Some(at), Some(ours)) = (event.position(), &self.position) else {
            return Arrival::Duplicate;
        };
        if at.epoch != ours.epoch && self.retired.contains(&at.epoch) {
            return Arrival::Duplicate;
        }
        if at.epoch == ours.epoch && at.offset <= ours.offset {
            return Arrival::Duplicate;
        }
        if at.epoch != ours.epoch || at.offset > ours.offset + 1 {
            let from = self.start_read();
            self.waiting.as_mut().expect("reading").push_back(event);
            return Arrival::Read { from };
        }
        self.push(event.clone());
        Arrival::Deliver(event)
    }

    /// The pub/sub link came back: what was published meanwhile must be read. `None`
    /// when a read is out already: the room is read again once it answers.
    pub(crate) fn relinked(&mut self) -> Option<Option<u64>> {
        if self.is_reading() {
            self.relink_pending = true;
            return None;
        }
        Some(self.start_read())
    }

    /// Enters the reading state; the offset to read from: the last one delivered,
    /// included, so the read can tell a rollback that reused it.
    fn start_read(&mut self) -> Option<u64> {
        self.waiting.get_or_insert_with(VecDeque::new);
        self.position.as_ref().map(|p| p.offset.max(1))
    }

    /// A read could not be made: the next attempt reads from the same place.
    pub(crate) fn read_from(&self) -> Option<u64> {
        self.position.as_ref().map(|p| p.offset.max(1))
    }

    /// A read answered.
    pub(crate) fn caught_up(&mut self, page: HistoryPage) -> Caught {
        let mut caught = Caught::default();
        self.known = Some(page.current.clone());
        let Some(ours) = self.position.clone() else {
            // The first read: the ring starts with the latest events.
            self.reset(page.current.clone());
            let ring: Vec<_> = page.events;
            self.ring_bytes = 0;
            for event in ring {
                if event
                    .position()
                    .is_some_and(|p| p.epoch == page.current.epoch)
                {
                    self.ring_push(event);
                }
            }
            self.release(&mut caught);
            return caught;
        };
        if page.current.epoch != ours.epoch {
            // The numbering was lost (Redis restarted without it, or it expired): what
            // this server missed of the old epoch is gone; the new epoch's events are
            // read from its start. Late events of the old epoch are dropped.
            self.retire(ours.epoch);
            let start = Position {
                offset: 0,
                epoch: page.current.epoch.clone(),
            };
            if ours.offset > 0 {
                caught.out.push(Out::Gap(start.clone()));
            }
            self.reset(start);
            if page.current.offset > 0 {
                caught.read_again = self.start_read();
                return caught;
            }
            self.release(&mut caught);
            return caught;
        }
        if page.current.offset < ours.offset || self.reused(&page, ours.offset) {
            caught.rotate = Some(ours.epoch);
            return caught;
        }
        let full = page.events.len() >= READ_PAGE;
        let mut missed = page
            .events
            .into_iter()
            .filter(|e| e.offset().is_some_and(|o| o > ours.offset))
            .peekable();
        if let Some(first) = missed.peek().and_then(|e| e.offset()) {
            if first > ours.offset + 1 {
                let position = Position {
                    offset: first - 1,
                    epoch: ours.epoch.clone(),
                };
                caught.out.push(Out::Gap(position.clone()));
                self.reset(position);
            }
        } else if page.current.offset > ours.offset {
            // Nothing of what was missed is left in the history.
            caught.out.push(Out::Gap(page.current.clone()));
            self.reset(page.current.clone());
        }
        for event in missed {
            caught.recovered += 1;
            self.push(event.clone());
            caught.out.push(Out::Event(event));
        }
        let now = self.position.as_ref().map_or(0, |p| p.offset);
        if full && now < page.current.offset {
            caught.read_again = Some(now);
            return caught;
        }
        self.release(&mut caught);
        caught
    }

    /// The epoch was replaced (`Caught::rotate`) and the room now stands at
    /// `position`: the events after it follow.
    pub(crate) fn rotated(&mut self, lost: Epoch, position: Position) -> Caught {
        self.retire(lost);
        self.known = Some(position.clone());
        let mut caught = Caught {
            out: vec![Out::Gap(position.clone())],
            ..Caught::default()
        };
        self.reset(position);
        self.release(&mut caught);
        caught
    }

    /// Drops the late events of `epoch` from now on (the last few epochs are kept).
    fn retire(&mut self, epoch: Epoch) {
        if !self.retired.contains(&epoch) {
            self.retired.push(epoch);
        }
        if self.retired.len() > 4 {
            self.retired.remove(0);
        }
    }

    /// Whether an event's numbering is not Redis's as the last read found it: past its
    /// current offset in its epoch, or in an epoch that is neither it nor retired.
    fn is_foreign(&self, event: &Event) -> bool {
        let (Some(at), Some(known)) = (event.position(), &self.known) else {
            return false;
        };
        if at.epoch == known.epoch {
            return at.offset > known.offset;
        }
        !self.retired.contains(&at.epoch)
    }

    /// Whether the history's event at `offset` is not the one delivered here: the
    /// numbering went back and forward again (a rollback followed by new publishes).
    fn reused(&self, page: &HistoryPage, offset: u64) -> bool {
        let Some(ours) = self.ring.back().filter(|e| e.offset() == Some(offset)) else {
            return false;
        };
        page.events
            .iter()
            .find(|e| e.offset() == Some(offset))
            .is_some_and(|theirs| theirs.json() != ours.json())
    }

    /// Ends the read: the events that waited go through `arrive` again, but for those
    /// the read shows are not Redis's numbering (they would skip forever).
    fn release(&mut self, caught: &mut Caught) {
        let waiting = self.waiting.take().unwrap_or_default();
        let mut waiting = waiting.into_iter();
        for event in waiting.by_ref() {
            if self.is_foreign(&event) {
                caught.invalid += 1;
                continue;
            }
            match self.arrive(event) {
                Arrival::Deliver(event) => caught.out.push(Out::Event(event)),
                Arrival::Duplicate => caught.duplicates += 1,
                Arrival::Read { from } => {
                    caught.read_again = from;
                    break;
                }
                Arrival::Waiting => unreachable!("not reading"),
            }
        }
        if let Some(rest) = self.waiting.as_mut() {
            rest.extend(waiting);
        } else if std::mem::take(&mut self.overflowed) | std::mem::take(&mut self.relink_pending) {
            // Events were not kept while the read was out, or the link was lost after
            // the read was answered: what is missing is in the history.
            caught.read_again = self.start_read();
        }
    }

    /// Starts over at `position`: the ring no longer continues.
    fn reset(&mut self, position: Position) {
        self.ring.clear();
        self.ring_bytes = 0;
        self.position = Some(position);
    }

    /// Appends the next event.
    fn push(&mut self, event: Arc<Event>) {
        if let (Some(ours), Some(at)) = (self.position.as_mut(), event.position()) {
            ours.offset = at.offset;
        }
        self.ring_push(event);
    }

    fn ring_push(&mut self, event: Arc<Event>) {
        self.touched = Instant::now();
        self.ring_bytes += event.json().len();
        self.ring.push_back(event);
        while self.ring.len() > self.ring_limit || self.ring_bytes > RING_BYTES {
            let Some(old) = self.ring.pop_front() else {
                break;
            };
            self.ring_bytes -= old.json().len();
        }
    }

    /// The offset of the ring's first event, unless the ring expired with the history.
    fn ring_first(&self) -> Option<u64> {
        if self.touched.elapsed() >= self.ttl {
            return None;
        }
        self.ring.front().and_then(|e| e.offset())
    }

    /// How a recipient enters the room; `None` before the first read answered.
    pub(crate) fn enter(&self, since: Option<&Since>) -> Option<Entry> {
        let position = self.position.as_ref()?;
        let ready = |recovered, replay| Entry::Ready { recovered, replay };
        let Some(since) = since else {
            return Some(ready(None, Vec::new()));
        };
        if since.epoch != position.epoch {
            return Some(ready(Some(false), Vec::new()));
        }
        if since.offset > position.offset {
            // Ahead of this server, which may lag Redis: Redis decides.
            return Some(Entry::Read {
                from: since.offset.saturating_add(1),
            });
        }
        if since.offset == position.offset {
            return Some(ready(Some(true), Vec::new()));
        }
        match self.ring_first() {
            Some(first) if first <= since.offset.saturating_add(1) => {
                let replay = self
                    .ring
                    .iter()
                    .filter(|e| e.offset().is_some_and(|o| o > since.offset))
                    .cloned()
                    .collect();
                Some(ready(Some(true), replay))
            }
            _ => Some(Entry::Read {
                from: since.offset.saturating_add(1),
            }),
        }
    }

    /// The events after `after` the ring still holds, when it reaches back to them.
    pub(crate) fn ring_after(&self, after: u64, limit: usize) -> Option<Vec<Arc<Event>>> {
        let first = self.ring_first()?;
        if first > after + 1 {
            return None;
        }
        Some(
            self.ring
                .iter()
                .filter(|e| e.offset().is_some_and(|o| o > after))
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Room;
    use bytes::Bytes;

    fn event(offset: u64, epoch: &str, body: &str) -> Arc<Event> {
        let json = format!(r#"{{"type":"{body}","offset":{offset},"epoch":"{epoch}"}}"#);
        Arc::new(Event::parse(Room::new("d:1").unwrap(), Bytes::from(json)).unwrap())
    }

    fn page(offset: u64, epoch: &str, events: Vec<Arc<Event>>) -> HistoryPage {
        HistoryPage {
            current: Position {
                offset,
                epoch: Epoch::new(epoch).unwrap(),
            },
            events,
        }
    }

    /// A track that read the room at offset 3 in epoch `e`, with 1-3 in its ring.
    fn synced() -> Track {
        let mut track = Track::new(8, Duration::from_secs(60));
        let first = page(3, "e", (1..=3).map(|o| event(o, "e", "t")).collect());
        let caught = track.caught_up(first);
        assert!(caught.out.is_empty());
        track
    }

    fn offsets(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().filter_map(|e| e.offset()).collect()
    }

    fn delivered(caught: &Caught) -> Vec<u64> {
        caught
            .out
            .iter()
            .filter_map(|o| match o {
                Out::Event(e) => e.offset(),
                Out::Gap(_) => None,
            })
            .collect()
    }

    fn gap(caught: &Caught) -> Option<Position> {
        caught.out.iter().find_map(|o| match o {
            Out::Gap(p) => Some(p.clone()),
            Out::Event(_) => None,
        })
    }

    #[test]
    fn delivers_in_order_and_drops_what_it_delivered() {
        let mut track = synced();
        assert!(matches!(
            track.arrive(event(4, "e", "t")),
            Arrival::Deliver(_)
        ));
        assert!(matches!(
            track.arrive(event(4, "e", "t")),
            Arrival::Duplicate
        ));
        assert!(matches!(
            track.arrive(event(2, "e", "t")),
            Arrival::Duplicate
        ));
        assert_eq!(track.position().unwrap().offset, 4);
    }

    #[test]
    fn a_skip_reads_the_missed_events_and_delivers_them_first() {
        let mut track = synced();
        let Arrival::Read { from } = track.arrive(event(6, "e", "t")) else {
            panic!("a skip reads");
        };
        assert_eq!(from, Some(3), "from the last delivered, to check it");
        assert!(matches!(track.arrive(event(7, "e", "t")), Arrival::Waiting));
        let read = page(7, "e", (3..=7).map(|o| event(o, "e", "t")).collect());
        let caught = track.caught_up(read);
        assert!(!caught.has_gap());
        assert_eq!(caught.recovered, 4);
        assert_eq!(delivered(&caught), vec![4, 5, 6, 7]);
        assert_eq!(caught.duplicates, 2, "6 and 7 waited and were read too");
    }

    #[test]
    fn a_trimmed_history_is_a_gap_then_the_rest() {
        let mut track = synced();
        assert!(track.relinked().is_some());
        let read = page(9, "e", (7..=9).map(|o| event(o, "e", "t")).collect());
        let caught = track.caught_up(read);
        assert_eq!(gap(&caught).map(|p| p.offset), Some(6));
        assert_eq!(delivered(&caught), vec![7, 8, 9]);
    }

    #[test]
    fn another_epoch_is_a_gap_at_its_position() {
        let mut track = synced();
        assert!(track.relinked().is_some());
        let caught = track.caught_up(page(0, "f", Vec::new()));
        assert_eq!(
            gap(&caught).map(|p| (p.offset, p.epoch)),
            Some((0, Epoch::new("f").unwrap()))
        );
        assert!(matches!(
            track.arrive(event(3, "e", "late")),
            Arrival::Duplicate
        ));
        // An event of yet another epoch is read about first: Redis says which is real.
        let Arrival::Read { .. } = track.arrive(event(1, "g", "t")) else {
            panic!("another epoch reads");
        };
        let caught = track.caught_up(page(1, "g", vec![event(1, "g", "t")]));
        assert_eq!(
            gap(&caught),
            None,
            "nothing of epoch f was delivered: nothing lost"
        );
        assert_eq!(
            caught.read_again,
            Some(1),
            "the new epoch is read from its start"
        );
        let caught = track.caught_up(page(1, "g", vec![event(1, "g", "t")]));
        assert_eq!(delivered(&caught), vec![1]);
        assert_eq!(caught.duplicates, 1, "the event that waited was read too");
    }

    #[test]
    fn a_rollback_rotates_the_epoch_and_old_events_are_dropped() {
        // Redis went back to offset 2.
        let mut track = synced();
        assert!(track.relinked().is_some());
        let caught = track.caught_up(page(2, "e", vec![]));
        assert_eq!(caught.rotate, Some(Epoch::new("e").unwrap()));
        let rotated = Position {
            offset: 2,
            epoch: Epoch::new("e2").unwrap(),
        };
        let caught = track.rotated(Epoch::new("e").unwrap(), rotated);
        assert_eq!(gap(&caught).map(|p| p.offset), Some(2));
        assert!(matches!(
            track.arrive(event(3, "e", "late")),
            Arrival::Duplicate
        ));
        assert!(matches!(
            track.arrive(event(3, "e2", "t")),
            Arrival::Deliver(_)
        ));
        // Redis went back and forward again: offset 3 holds another event.
        let mut track = synced();
        assert!(track.relinked().is_some());
        let reused = page(4, "e", vec![event(3, "e", "other"), event(4, "e", "t")]);
        assert!(track.caught_up(reused).rotate.is_some());
    }

    #[test]
    fn entering_with_since_replays_from_the_ring_or_asks_for_a_read() {
        let mut track = Track::new(2, Duration::from_secs(60));
        track.caught_up(page(5, "e", (4..=5).map(|o| event(o, "e", "t")).collect()));
        let since = |offset, epoch: &str| Since {
            offset,
            epoch: Epoch::new(epoch).unwrap(),
        };
        let Some(Entry::Ready { recovered, replay }) = track.enter(Some(&since(3, "e"))) else {
            panic!("the ring reaches back to 4");
        };
        assert_eq!((recovered, offsets(&replay)), (Some(true), vec![4, 5]));
        assert!(matches!(
            track.enter(Some(&since(1, "e"))),
            Some(Entry::Read { from: 2 })
        ));
        assert!(
            matches!(
                track.enter(Some(&since(6, "e"))),
                Some(Entry::Read { from: 7 })
            ),
            "ahead of this server: Redis decides"
        );
        assert!(matches!(
            track.enter(Some(&since(5, "x"))),
            Some(Entry::Ready {
                recovered: Some(false),
                ..
            })
        ));
    }

    #[test]
    fn an_envelope_that_only_looks_numbered_is_dropped_after_one_read() {
        let mut track = synced();
        // Far ahead in the room's epoch, and in an epoch Redis does not have.
        assert!(matches!(
            track.arrive(event(1003, "e", "forged")),
            Arrival::Read { .. }
        ));
        assert!(matches!(track.arrive(event(4, "e", "t")), Arrival::Waiting));
        assert!(matches!(
            track.arrive(event(7, "zz", "forged")),
            Arrival::Waiting
        ));
        let caught = track.caught_up(page(4, "e", vec![event(3, "e", "t"), event(4, "e", "t")]));
        assert_eq!(delivered(&caught), vec![4]);
        assert_eq!(caught.invalid, 2);
        assert_eq!(caught.read_again, None, "no read loop");
        assert!(!track.is_reading());
    }

    #[test]
    fn a_relink_during_a_read_reads_again_after_it() {
        let mut track = synced();
        assert!(matches!(
            track.arrive(event(6, "e", "t")),
            Arrival::Read { .. }
        ));
        assert_eq!(track.relinked(), None, "a read is out");
        let caught = track.caught_up(page(6, "e", (3..=6).map(|o| event(o, "e", "t")).collect()));
        assert_eq!(delivered(&caught), vec![4, 5, 6]);
        assert_eq!(
            caught.read_again,
            Some(6),
            "read again: the outage came after"
        );
    }
}
