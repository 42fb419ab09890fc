//! The broker's durable rooms (PROTOCOL.md §7, §8): numbered events go through each
//! room's [`Track`], so this server delivers every offset once and in order; a skip
//! or a lost link makes it read what it missed (one read per room, never one per
//! recipient); what cannot be read becomes a `history_lost` gap. Recipients enter
//! with or without `since`, and read the history through [`ReadHistory`].

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::Broker;
use crate::{
    durable::{
        track::{Arrival, Caught, Entry, Out, Track, READ_PAGE},
        DurableConfig, HistoryPage, Position, Since,
    },
    link::with_deadline,
    Delivery, Error, Event, Gap, GapReason, History, Joined, ReadHistory, Room, SubscriberStats,
};

/// How long a failed read waits before it is made again.
const READ_RETRY: Duration = Duration::from_millis(200);

/// The most events a room's ring keeps (fewer when `HISTORY_SIZE` is smaller).
const RING_EVENTS: usize = 1024;

/// The most events one [`ReadHistory`] brings into memory.
const MAX_READ: usize = 1000;

/// Catch-up reads out at once; the others wait their turn.
const MAX_READS_OUT: usize = 16;

/// The durable rooms this server holds, and their counters.
pub(super) struct DurableRooms {
    config: DurableConfig,
    tracks: HashMap<Room, Track>,
    /// Subscribes waiting for a room's first read.
    waiters: HashMap<Room, Vec<oneshot::Sender<()>>>,
    /// Catch-up reads out now.
    reads_out: usize,
    /// Catch-up reads waiting for one out to come back: the rooms oldest first, and
    /// where each is to be read from (one entry per room).
    reads_queue: VecDeque<Room>,
    reads_waiting: HashMap<Room, Option<u64>>,
    pub(super) stats: DurableStats,
}

/// The `/stats` counters of PROTOCOL.md §8, kept by the broker.
#[derive(Debug, Clone, Default)]
pub(super) struct DurableStats {
    pub(super) gaps_recovered: u64,
    pub(super) events_recovered: u64,
    pub(super) gaps_unrecovered: u64,
    pub(super) duplicates_dropped: u64,
    /// Envelopes whose numbering is not Redis's: counted with the subscriber's
    /// `failedEvents`, as other invalid events are.
    pub(super) invalid_events: u64,
    pub(super) gaps_link_lost: u64,
    pub(super) gaps_overloaded: u64,
}

impl DurableStats {
    pub(super) fn add_to(&self, stats: &mut SubscriberStats) {
        stats.gaps_recovered += self.gaps_recovered;
        stats.events_recovered += self.events_recovered;
        stats.gaps_unrecovered += self.gaps_unrecovered;
        stats.duplicates_dropped += self.duplicates_dropped;
        stats.failed_events += self.invalid_events;
        stats.gaps_link_lost += self.gaps_link_lost;
        stats.gaps_overloaded += self.gaps_overloaded;
    }
}

/// Where a recipient enters a room, before it joins.
#[derive(Debug)]
pub(super) enum Joining {
    /// A plain room; `since` was given (answered `recovered: false`).
    Plain { since: bool },
    /// A durable room: recovered from `since` with these events first, not
    /// recovered, or entered without `since`.
    Durable {
        since: Option<Since>,
        recovered: Option<bool>,
        replay: Vec<Arc<Event>>,
    },
}

impl DurableRooms {
    pub(super) fn new(config: DurableConfig) -> DurableRooms {
        DurableRooms {
            config,
            tracks: HashMap::new(),
            waiters: HashMap::new(),
            reads_out: 0,
            reads_queue: VecDeque::new(),
            reads_waiting: HashMap::new(),
            stats: DurableStats::default(),
        }
    }

    pub(super) fn is_durable(&self, room: &Room) -> bool {
        self.config.is_durable(room)
    }

    /// The room is no longer held: what was kept for it goes.
    pub(super) fn release(&mut self, room: &Room) {
        self.tracks.remove(room);
        self.waiters.remove(room);
        self.reads_waiting.remove(room);
    }

    /// The recipient joined: its reply's position, and what it replays up to. Taken
    /// in the same step as the join, so the events after it reach the recipient live.
    pub(super) fn joined(&self, room: &Room, joining: Joining) -> Joined {
        let (since, recovered, replay) = match joining {
            Joining::Plain { since } => {
                return Joined {
                    recovered: since.then_some(false),
                    ..Joined::default()
                }
            }
            Joining::Durable {
                since,
                recovered,
                replay,
            } => (since, recovered, replay),
        };
        let Some(now) = self.tracks.get(room).and_then(Track::position).cloned() else {
            return Joined::default();
        };
        let replay_to = now.offset;
        match (since, recovered) {
            // Recovered, and the room is still in that epoch (it may have changed
            // while the history was read): the events after `since` follow. A `since`
            // ahead of this server (its track lags Redis) replays nothing; the events
            // up to it arrive live, and the session drops them as already had.
            (Some(since), Some(true)) if since.epoch == now.epoch => Joined {
                position: Some(Position {
                    offset: since.offset,
                    epoch: now.epoch,
                }),
                recovered,
                replay: replay
                    .into_iter()
                    .filter(|e| e.offset().is_some_and(|o| o <= replay_to))
                    .collect(),
                replay_to,
            },
            (since, recovered) => Joined {
                position: Some(now),
                recovered: since.and(recovered).map(|_| false),
                replay: Vec::new(),
                replay_to,
            },
        }
    }
}

impl DurableRooms {
    /// Replays what `joined` recovered to an in-process recipient, before any live
    /// event (it joined in this same step): the events it carries, then what the
    /// ring holds up to `joined.replay_to`. What neither holds ends the replay with a
    /// `history_lost` gap.
    pub(super) fn replay(
        &self,
        room: &Room,
        joined: &Joined,
        recipient: &Recipient<Delivery>,
        on_gap: &Option<Recipient<Gap>>,
    ) {
        let (Some(true), Some(position)) = (joined.recovered, &joined.position) else {
            return;
        };
        let mut last = position.offset;
        for event in &joined.replay {
            last = event.offset().unwrap_or(last);
            recipient.do_send(Delivery {
                event: event.clone(),
            });
        }
        if last >= joined.replay_to {
            return;
        }
        let rest = self
            .tracks
            .get(room)
            .and_then(|t| t.ring_after(last, usize::MAX));
        match rest {
            Some(events) => {
                for event in events
                    .into_iter()
                    .filter(|e| e.offset().is_some_and(|o| o <= joined.replay_to))
                {
                    recipient.do_send(Delivery { event });
                }
            }
            None => {
                if let Some(on_gap) = on_gap {
                    on_gap.do_send(Gap {
                        room: room.clone(),
                        reason: GapReason::HistoryLost,
                        position: Some(Position {
                            offset: joined.replay_to,
                            epoch: position.epoch.clone(),
                        }),
                    });
                }
            }
        }
    }
}

impl Broker {
    /// An event from the backplane: through its room's track when it is numbered in
    /// a durable room this server holds.
    pub(super) fn arrive(&mut self, event: Arc<Event>, ctx: &mut Context<Self>) {
        if event.position().is_none() {
            return self.deliver(event);
        }
        let Some(track) = self.durable.tracks.get_mut(event.room()) else {
            return self.deliver(event);
        };
        let room = event.room().clone();
        match track.arrive(event) {
            Arrival::Deliver(event) => self.deliver(event),
            Arrival::Duplicate => self.durable.stats.duplicates_dropped += 1,
            Arrival::Waiting => {}
            Arrival::Read { from } => self.read(room, from, ctx),
        }
    }

    /// The pub/sub link came back: read what the room missed meanwhile.
    pub(super) fn relinked(&mut self, room: Room, ctx: &mut Context<Self>) {
        if let Some(from) = self.durable.tracks.get_mut(&room).and_then(Track::relinked) {
            self.read(room, from, ctx);
        }
    }

    /// Reads the room from offset `from` (its latest events, to fill the ring, when
    /// `None`), and hands the answer to its track.
    ///
    /// At most [`MAX_READS_OUT`] of these are out at once (after a lost link every
    /// durable room is read); the others wait in turn, at most one per room held.
    fn read(&mut self, room: Room, from: Option<u64>, ctx: &mut Context<Self>) {
        let Some(track) = self.durable.tracks.get(&room) else {
            return;
        };
        if self.durable.reads_out >= MAX_READS_OUT {
            if self
                .durable
                .reads_waiting
                .insert(room.clone(), from)
                .is_none()
            {
                self.durable.reads_queue.push_back(room);
            }
            return;
        }
        let limit = if from.is_some() {
            READ_PAGE
        } else {
            track.ring_limit()
        };
        self.durable.reads_out += 1;
        self.backplane
            .read(room.clone(), from, limit)
            .into_actor(self)
            .map(move |result, act, ctx| {
                act.durable.reads_out -= 1;
                act.read_answered(room, result, ctx);
                act.next_waiting_read(ctx);
            })
            .spawn(ctx);
    }

    /// Sends the read that has waited longest, now that one came back.
    fn next_waiting_read(&mut self, ctx: &mut Context<Self>) {
        while self.durable.reads_out < MAX_READS_OUT {
            let Some(room) = self.durable.reads_queue.pop_front() else {
                return;
            };
            // A room released meanwhile has no entry any more.
            if let Some(from) = self.durable.reads_waiting.remove(&room) {
                self.read(room, from, ctx);
            }
        }
    }

    fn read_answered(
        &mut self,
        room: Room,
        result: Result<HistoryPage, Error>,
        ctx: &mut Context<Self>,
    ) {
        let Some(track) = self.durable.tracks.get_mut(&room) else {
            return;
        };
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                log::warn!(
                    "broker {}: reading {room}'s history failed ({e}); trying again",
                    self.server_id
                );
                ctx.run_later(READ_RETRY, move |act, ctx| {
                    if let Some(track) = act.durable.tracks.get(&room) {
                        let from = track.read_from();
                        act.read(room, from, ctx);
                    }
                });
                return;
            }
        };
        let first = track.position().is_none();
        let caught = track.caught_up(page);
        if first {
            for waiter in self.durable.waiters.remove(&room).unwrap_or_default() {
                let _ = waiter.send(());
            }
        } else if !caught.has_gap() && caught.recovered > 0 {
            self.durable.stats.gaps_recovered += 1;
        }
        self.apply(room, caught, ctx);
    }

    /// Does what a read's answer means for the room.
    fn apply(&mut self, room: Room, caught: Caught, ctx: &mut Context<Self>) {
        if let Some(lost) = caught.rotate {
            log::warn!(
                "broker {}: {room}'s numbering went back in epoch {lost} (a rollback); starting a new epoch",
                self.server_id
            );
            self.backplane
                .rotate(room.clone(), lost.clone())
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(Some(position)) => {
                        if let Some(track) = act.durable.tracks.get_mut(&room) {
                            let caught = track.rotated(lost, position);
                            act.apply(room, caught, ctx);
                        }
                    }
                    // No numbering at all, or no answer: read again, which settles it.
                    _ => {
                        ctx.run_later(READ_RETRY, move |act, ctx| {
                            let from = act.durable.tracks.get(&room).and_then(Track::read_from);
                            act.read(room, from, ctx);
                        });
                    }
                })
                .spawn(ctx);
            return;
        }
        self.durable.stats.events_recovered += caught.recovered as u64;
        self.durable.stats.duplicates_dropped += caught.duplicates as u64;
        if caught.invalid > 0 {
            self.durable.stats.invalid_events += caught.invalid as u64;
            log::warn!(
                "broker {}: dropped {} events in {room} whose offset or epoch is not Redis's \
                 (a foreign envelope that looks numbered?); {} so far",
                self.server_id,
                caught.invalid,
                self.durable.stats.invalid_events
            );
        }
        for out in caught.out {
            match out {
                Out::Event(event) => self.deliver(event),
                Out::Gap(position) => self.report_gap(Gap {
                    room: room.clone(),
                    reason: GapReason::HistoryLost,
                    position: Some(position),
                }),
            }
        }
        if let Some(from) = caught.read_again {
            self.read(room, Some(from), ctx);
        }
    }

    /// Where a confirmed subscriber enters `room` (PROTOCOL.md §7): in a durable room,
    /// once the room's first read answered, from the ring or, when `since` is older
    /// than the ring, from a read of the history.
    pub(super) fn enter(
        &mut self,
        room: Room,
        since: Option<Since>,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<Joining, Error>> {
        if !self.durable.is_durable(&room) {
            let since = since.is_some();
            return Box::pin(fut::ready(Ok(Joining::Plain { since })));
        }
        if !self.durable.tracks.contains_key(&room) {
            let ring = self.durable.config.history_size.min(RING_EVENTS);
            let ttl = self.durable.config.history_ttl;
            self.durable
                .tracks
                .insert(room.clone(), Track::new(ring, ttl));
            self.read(room.clone(), None, ctx);
        }
        let ready = self
            .durable
            .tracks
            .get(&room)
            .and_then(Track::position)
            .is_some();
        let first_read = if ready {
            None
        } else {
            let (tx, rx) = oneshot::channel();
            self.durable
                .waiters
                .entry(room.clone())
                .or_default()
                .push(tx);
            Some(rx)
        };
        let deadline = self.subscribe_timeout;
        let waited = async move {
            if let Some(rx) = first_read {
                with_deadline(deadline, "history read", async {
                    rx.await.map_err(|_| Error::ShuttingDown)
                })
                .await?;
            }
            Ok::<(), Error>(())
        };
        Box::pin(waited.into_actor(self).then(move |waited, act, _ctx| {
            let entry = waited.and_then(|()| {
                act.durable
                    .tracks
                    .get(&room)
                    .and_then(|t| t.enter(since.as_ref()))
                    .ok_or(Error::ShuttingDown)
            });
            act.entered(room, since, entry)
        }))
    }

    fn entered(
        &mut self,
        room: Room,
        since: Option<Since>,
        entry: Result<Entry, Error>,
    ) -> ResponseActFuture<Self, Result<Joining, Error>> {
        match entry {
            Err(e) => Box::pin(fut::ready(Err(e))),
            Ok(Entry::Ready {
                recovered, replay, ..
            }) => Box::pin(fut::ready(Ok(Joining::Durable {
                since,
                recovered,
                replay,
            }))),
            Ok(Entry::Read { from }) => {
                let read = self.backplane.read(room, Some(from), READ_PAGE);
                Box::pin(read.into_actor(self).map(move |page, _act, _ctx| {
                    let page = page?;
                    let since = since.expect("a read only for a `since`");
                    let recovered = page.current.epoch == since.epoch
                        && since.offset <= page.current.offset
                        && page.continues(since.offset);
                    let replay = if recovered {
                        page.events
                            .into_iter()
                            .filter(|e| e.offset().is_some_and(|o| o > since.offset))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    Ok(Joining::Durable {
                        since: Some(since),
                        recovered: Some(recovered),
                        replay,
                    })
                }))
            }
        }
    }
}

impl Handler<ReadHistory> for Broker {
    type Result = ResponseFuture<Result<History, Error>>;

    /// From the room's ring when it reaches back to `since`, else from the backplane.
    fn handle(&mut self, msg: ReadHistory, _ctx: &mut Context<Self>) -> Self::Result {
        if !self.durable.is_durable(&msg.room) {
            return Box::pin(async move { Err(Error::NotDurable(msg.room.to_string())) });
        }
        // One read holds at most MAX_READ events in memory; a larger `limit` answers
        // `more` and the reader asks again.
        let limit = msg.limit.clamp(1, MAX_READ);
        let track = self.durable.tracks.get(&msg.room);
        if let (Some(track), Some(since)) = (track, &msg.since) {
            if let Some(current) = track.position().filter(|p| {
                !track.is_reading() && p.epoch == since.epoch && since.offset <= p.offset
            }) {
                if let Some(events) = track.ring_after(since.offset, limit) {
                    let history = history_of(current.clone(), true, events, limit);
                    return Box::pin(async move { Ok(history) });
                }
            }
        }
        let from = msg.since.as_ref().map(|s| s.offset.saturating_add(1));
        let read = self.backplane.read(msg.room, from, limit);
        let since = msg.since;
        Box::pin(async move {
            let page = read.await?;
            let recovered = since.as_ref().map_or(true, |s| {
                s.epoch == page.current.epoch
                    && s.offset <= page.current.offset
                    && page.continues(s.offset)
            });
            let events = if recovered { page.events } else { Vec::new() };
            Ok(history_of(page.current, recovered, events, limit))
        })
    }
}

/// A history answer: `more` when it stopped at `limit` before the current offset.
fn history_of(
    current: Position,
    recovered: bool,
    events: Vec<Arc<Event>>,
    limit: usize,
) -> History {
    let last = events.last().and_then(|e| e.offset()).unwrap_or(0);
    let more = events.len() >= limit && last < current.offset;
    History {
        current,
        recovered,
        events,
        more,
    }
}
