//! What a session does for durable rooms (PROTOCOL.md §7): the `history` op, and
//! the replay of a recovery, fed into the outbound queue as it drains.

use std::time::Duration;

use actix::prelude::*;
use serde_json::value::RawValue;
use switchboard_actors::{
    durable::{Position, Since},
    Error as ActorError, Gap, GapReason, History, ReadHistory, Room,
};

use super::{replay::Step, Session};
use crate::{rooms::Reference, wire, Error};

/// Events asked for per read while replaying.
const REPLAY_PAGE: usize = 200;

/// How long a replay waits for the outbound queue to drain before it looks again.
const REPLAY_WAIT: Duration = Duration::from_millis(5);

/// `history`'s default `limit`.
const DEFAULT_LIMIT: usize = 100;

impl Session {
    pub(super) fn history(
        &mut self,
        name: &str,
        since: Option<Since>,
        limit: Option<u64>,
        reference: Reference,
        ctx: &mut Context<Self>,
    ) -> Result<(), Error> {
        let room = wire::room(name)?;
        self.check_may_subscribe(&room, "read the history of")?;
        self.check_reads()?;
        let size = self.state.session.history_size;
        let limit = match limit {
            None => DEFAULT_LIMIT.min(size),
            limit => wire::history_limit(limit, size)?,
        };
        self.state.metrics.history_read();
        let read = ReadHistory {
            room: room.clone(),
            since,
            limit,
        };
        self.reads += 1;
        self.state
            .broker
            .send(read)
            .into_actor(self)
            .map(move |answer, act, ctx| {
                act.reads -= 1;
                let answer = answer.unwrap_or(Err(ActorError::ShuttingDown));
                act.history_read(&room, answer, reference.as_deref(), ctx);
            })
            .spawn(ctx);
        Ok(())
    }

    fn history_read(
        &mut self,
        room: &Room,
        answer: Result<History, ActorError>,
        reference: Option<&RawValue>,
        ctx: &mut Context<Self>,
    ) {
        match answer {
            Ok(history) => {
                let answer = wire::HistoryAnswer::new(
                    room.as_str(),
                    &history,
                    self.state.session.limits.outbound_bytes / 2,
                );
                self.send(wire::history_frame(&answer, reference), ctx);
            }
            Err(e) => self.refuse(&Error::from_read(room, e, "history read"), reference, ctx),
        }
    }

    /// Whether the outbound queue has room for replayed events: under half its
    /// bounds, so live traffic and replies keep room of their own.
    fn may_replay(&self) -> bool {
        let (bytes, frames) = self.out.backlog();
        let limits = &self.state.session.limits;
        bytes < limits.outbound_bytes / 2 && frames < limits.outbound_frames / 2
    }

    /// Feeds every room being recovered.
    fn pump_all(&mut self, ctx: &mut Context<Self>) {
        for room in self.replays.rooms() {
            self.pump_room(room, ctx);
        }
    }

    /// Feeds one room's replay into the outbound queue while it has room.
    pub(super) fn pump_room(&mut self, room: Room, ctx: &mut Context<Self>) {
        loop {
            if !self.may_replay() {
                if !self.replay_scheduled {
                    self.replay_scheduled = true;
                    ctx.run_later(REPLAY_WAIT, |act, ctx| {
                        act.replay_scheduled = false;
                        act.pump_all(ctx);
                    });
                }
                return;
            }
            match self.replays.step(&room) {
                Step::Send(event) => {
                    if !self.advance(&event) || !self.admits(&event) {
                        continue;
                    }
                    let frame = wire::event_frame(&event, self.state.session.limits.outbound_bytes);
                    let queued = self.out.text(frame);
                    self.sent_event(queued, ctx);
                }
                Step::Lost(position) => self.tell_lost(&room, position, ctx),
                Step::Fetch(since) => return self.fetch(room, since, ctx),
                Step::Wait | Step::Done => return,
            }
        }
    }

    /// Reads the next page of a replay from the broker (its ring, or the history).
    fn fetch(&mut self, room: Room, since: Since, ctx: &mut Context<Self>) {
        self.state.metrics.history_read();
        let read = ReadHistory {
            room: room.clone(),
            since: Some(since),
            limit: REPLAY_PAGE,
        };
        self.state
            .broker
            .send(read)
            .into_actor(self)
            .map(move |answer, act, ctx| match answer {
                Ok(Ok(history)) if history.recovered => {
                    if act.replays.fetched(&room, history.events) {
                        act.pump_room(room, ctx);
                    } else if let Some(end) = act.replays.cancel(&room) {
                        act.tell_lost(&room, end, ctx);
                    }
                }
                Ok(Ok(history)) => {
                    act.replays.cancel(&room);
                    act.tell_lost(&room, history.current, ctx);
                }
                Ok(Err(e)) => {
                    log::info!("session: a replay read in {room} failed: {e}");
                    if let Some(end) = act.replays.cancel(&room) {
                        act.tell_lost(&room, end, ctx);
                    }
                }
                Err(_) => {
                    act.replays.cancel(&room);
                }
            })
            .spawn(ctx);
    }

    /// Events of a replay cannot be had: the client is told, and the events after
    /// `position` follow.
    fn tell_lost(&mut self, room: &Room, position: Position, ctx: &mut Context<Self>) {
        self.positions.insert(room.clone(), position.clone());
        let gap = Gap {
            room: room.clone(),
            reason: GapReason::HistoryLost,
            position: Some(position),
        };
        self.send(wire::gap_frame(&gap), ctx);
    }
}
