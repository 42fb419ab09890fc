//! The session actor: one per WebSocket client (PROTOCOL.md §2).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use actix_http::ws::{CloseCode, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use serde_json::value::RawValue;
use switchboard_actors::{
    durable::Position,
    stages::{Stage, STAGES},
    Delivery, Event, Evicted, Gap, GapReason, Leave, Room,
};

use crate::{
    filter::Filter,
    outbound::{Outbound, Overflow},
    rate::PublishBudget,
    rooms::SessionRooms,
    wire::{self, ClientOp, Reply},
    Error, Grant, State,
};

mod durable;
mod ops;
mod presence;
mod replay;

/// Reads (`history`, `presence`, `presence_count`) of one session waiting for their
/// answer, at most; past it a read is refused, so a client cannot pile reads up in
/// the server.
const MAX_READS: usize = 8;

/// Close codes this server sends (RFC 6455 §7.4).
mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// How long a closed session's client gets to read its close frame before its
/// connection is reset, at most (less when the heartbeat interval is shorter). A
/// connection the server failed is ended sooner, by `failing::end`.
const MAX_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the session may do (PROTOCOL.md §6).
#[derive(Debug)]
pub enum Access {
    /// Authentication is off: anything the contract allows.
    Open,
    /// Authentication is on and no token came yet: only `auth` is accepted.
    Pending,
    /// A valid token: what it grants, until it expires.
    Granted(Grant),
}

/// A message being reassembled from fragments.
struct Fragments {
    text: bool,
    buf: BytesMut,
}

/// One WebSocket client. Parses its frames, subscribes and publishes through the
/// broker, and writes events to the bounded `Outbound` queue. A client that does
/// not keep up is closed with 1013 and counted; one silent for the client timeout is
/// dropped; on shutdown every session closes with 1001. Leaves the broker in
/// `stopping()`, whatever the reason.
pub struct Session {
    state: Arc<State>,
    /// This connection's id, unique across servers (a presence member's `client`).
    client: Arc<str>,
    out: Outbound,
    access: Access,
    /// The timer that closes the session when its token expires.
    expiry: Option<SpawnHandle>,
    budget: PublishBudget,
    /// Publishes sent to the broker and not answered yet (bounded by
    /// `LIMIT_CONNECTION_PUBLISHES_IN_FLIGHT`).
    publishing: usize,
    rooms: SessionRooms,
    /// Durable rooms being recovered from a client's `since`.
    replays: replay::Replays,
    /// Per durable room joined, where this client stands: the offset of the last
    /// event sent (or of the `subscribed` reply), for a repeated `subscribe`'s reply.
    positions: HashMap<Room, Position>,
    /// Per room joined with a filter, what it lets through (PROTOCOL.md §12); a room
    /// without one lets every event through. Set by each subscribe, dropped on leaving.
    filters: HashMap<Room, Filter>,
    /// A timer will feed the replays again once the outbound queue has drained.
    replay_scheduled: bool,
    /// `history` and presence reads waiting for the broker's answer.
    reads: usize,
    fragments: Option<Fragments>,
    last_heard: Instant,
}

impl Session {
    /// A session writing to `out`, with the access its upgrade request established.
    pub fn new(state: Arc<State>, out: Outbound, access: Access) -> Session {
        let limits = &state.session.limits;
        let budget = PublishBudget::new(limits.publish_rate, limits.publish_burst);
        let rooms = SessionRooms::new(limits.subscriptions, state.metrics.subscriptions());
        Session {
            client: state.client_ids.next(),
            state,
            out,
            access,
            expiry: None,
            budget,
            publishing: 0,
            rooms,
            replays: replay::Replays::default(),
            positions: HashMap::new(),
            filters: HashMap::new(),
            replay_scheduled: false,
            reads: 0,
            fragments: None,
            last_heard: Instant::now(),
        }
    }

    fn send(&mut self, text: ByteString, ctx: &mut Context<Self>) {
        let queued = self.out.text(text);
        self.sent(queued, ctx);
    }

    /// What queuing a frame led to.
    fn sent(&mut self, queued: Result<(), Overflow>, ctx: &mut Context<Self>) {
        match queued {
            Ok(()) => {}
            Err(Overflow::Backlog) => self.slow_consumer(ctx),
            // Only an event from Redis can be this large (client events are held to
            // LIMIT_EVENT_BYTES): it is skipped, and the client stays. Logged once per
            // event where it is encoded (`wire::event_frame`), not once per client.
            Err(Overflow::FrameTooLarge) => log::debug!(
                "session on {}: skipped a frame over LIMIT_OUTBOUND_BYTES",
                self.state.server_id
            ),
        }
    }

    /// What queuing an event frame led to; a frame queued is a delivery.
    fn sent_event(&mut self, queued: Result<(), Overflow>, ctx: &mut Context<Self>) {
        if queued.is_ok() {
            self.state.metrics.delivered();
        }
        self.sent(queued, ctx);
    }

    fn reply(&mut self, reply: Reply<'_>, reference: Option<&RawValue>, ctx: &mut Context<Self>) {
        self.send(wire::reply(reply, reference), ctx);
    }

    fn refuse(&mut self, error: &Error, reference: Option<&RawValue>, ctx: &mut Context<Self>) {
        log::debug!("session: refused a frame: {error}");
        self.send(wire::error_frame(error, reference), ctx);
    }

    /// Closes the connection with `code`; the client gets a grace period to read the
    /// close frame, then its TCP connection is reset.
    fn close(&mut self, code: u16, reason: &str, drop_backlog: bool, ctx: &mut Context<Self>) {
        self.out.close(code, reason, drop_backlog);
        ctx.stop();
    }

    /// Fails the connection with `code` (1002, 1007, 1008 or 1009): nothing more of
    /// the client is read, and its TCP connection ends within a second (PROTOCOL.md §2).
    fn fail(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        self.out.fail(code, reason);
        ctx.stop();
    }

    fn slow_consumer(&mut self, ctx: &mut Context<Self>) {
        let (bytes, frames) = self.out.backlog();
        self.state.counters.slow_consumer_close();
        log::warn!(
            "session on {}: client does not keep up ({bytes} bytes, {frames} frames queued); closing with 1013",
            self.state.server_id
        );
        self.close(close::TRY_AGAIN_LATER, "slow consumer", true, ctx);
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.last_heard.elapsed() > self.state.session.client_timeout {
            log::info!(
                "session on {}: client silent past its timeout; dropping it",
                self.state.server_id
            );
            self.close(close::GOING_AWAY, "timeout", true, ctx);
            return;
        }
        if self.out.ping().is_err() {
            self.slow_consumer(ctx);
        }
    }

    fn on_text(&mut self, bytes: Bytes, ctx: &mut Context<Self>) {
        let Ok(text) = ByteString::try_from(bytes) else {
            self.fail(close::INVALID_DATA, "text frame is not UTF-8", ctx);
            return;
        };
        match wire::parse_frame(&text) {
            Ok(frame)
                if matches!(self.access, Access::Pending)
                    && !matches!(frame.op, ClientOp::Auth { .. }) =>
            {
                self.fail(close::POLICY, "authenticate first", ctx)
            }
            Ok(frame) => self.dispatch(frame.op, frame.reference, ctx),
            Err(_) if matches!(self.access, Access::Pending) => {
                self.fail(close::POLICY, "authenticate first", ctx)
            }
            Err((reference, error)) => self.refuse(&error, reference.as_deref(), ctx),
        }
    }

    fn on_fragment(&mut self, item: Item, ctx: &mut Context<Self>) {
        let limit = self.state.session.limits.frame_bytes;
        let (start, chunk, last) = match item {
            Item::FirstText(b) => (Some(true), b, false),
            Item::FirstBinary(b) => (Some(false), b, false),
            Item::Continue(b) => (None, b, false),
            Item::Last(b) => (None, b, true),
        };
        let fragments = match (start, self.fragments.as_mut()) {
            (Some(text), None) => self.fragments.insert(Fragments {
                text,
                buf: BytesMut::new(),
            }),
            (None, Some(fragments)) => fragments,
            _ => return self.fail(close::PROTOCOL, "unexpected continuation frame", ctx),
        };
        if fragments.buf.len() + chunk.len() > limit {
            return self.fail(close::TOO_BIG, "message too big", ctx);
        }
        fragments.buf.extend_from_slice(&chunk);
        if last {
            let Fragments { text, buf } = self.fragments.take().expect("fragments in progress");
            if text {
                self.on_text(buf.freeze(), ctx);
            } else {
                self.refuse(
                    &Error::BadFrame("binary frames are not supported".into()),
                    None,
                    ctx,
                );
            }
        }
    }
}

impl Session {
    /// Whether an event goes to the client; in a durable room it then stands at the
    /// event's offset. An offset it has already (it recovered from a `since` ahead of
    /// this server, whose live events catch up with it) does not go twice.
    fn advance(&mut self, event: &Event) -> bool {
        let Some(position) = event.position() else {
            return true;
        };
        match self.positions.get_mut(event.room()) {
            Some(at) if at.epoch == position.epoch && position.offset <= at.offset => false,
            Some(at) => {
                *at = position.clone();
                true
            }
            None => {
                self.positions
                    .insert(event.room().clone(), position.clone());
                true
            }
        }
    }

    /// Whether the room's filter, if it has one, lets `event` through. Checked after
    /// [`Self::advance`]: a durable room's client stands past the events it filters out.
    fn admits(&self, event: &Event) -> bool {
        // Most sessions filter nothing: no hashing of the room for them.
        self.filters.is_empty()
            || self
                .filters
                .get(event.room())
                .map_or(true, |filter| filter.admits(event))
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.state.counters.open();
        match std::mem::replace(&mut self.access, Access::Pending) {
            Access::Granted(grant) => self.grant(grant, ctx),
            Access::Pending => {
                ctx.run_later(self.state.session.security.auth_timeout, |act, ctx| {
                    if matches!(act.access, Access::Pending) {
                        act.fail(close::POLICY, "authentication timeout", ctx);
                    }
                });
            }
            Access::Open => self.access = Access::Open,
        }
        // The broker's `try_send` fails once this many deliveries wait here: a
        // session that cannot even take them from its mailbox is evicted.
        ctx.set_mailbox_capacity(self.state.session.limits.outbound_frames);
        ctx.run_interval(self.state.session.heartbeat_interval, Self::heartbeat);
        let mut shutdown = self.state.shutdown.clone();
        async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        }
        .into_actor(self)
        .map(|_, act, ctx| act.close(close::GOING_AWAY, "server shutting down", false, ctx))
        .spawn(ctx);
    }

    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        self.state.broker.do_send(Leave {
            recipient: ctx.address().recipient(),
        });
        Running::Stop
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.state.counters.close();
        // A client that never reads its close frame would hold its connection open
        // forever: after a grace period the connection is reset.
        self.out.close(close::GOING_AWAY, "", false);
        let out = std::mem::replace(&mut self.out, Outbound::new(0, 0, None).0);
        let grace = self.state.session.heartbeat_interval.min(MAX_CLOSE_GRACE);
        actix::spawn(async move {
            actix::clock::sleep(grace).await;
            out.abort();
        });
    }
}

impl Handler<Delivery> for Session {
    type Result = ();

    fn handle(&mut self, msg: Delivery, ctx: &mut Context<Self>) {
        // A delivery sent before the broker took our leave may still arrive: a room
        // the session left gets no event after its `unsubscribed`.
        if !self.rooms.contains(msg.event.room()) || !self.replays.live(&msg.event) {
            return;
        }
        if !self.advance(&msg.event) || !self.admits(&msg.event) {
            return;
        }
        let frame = wire::event_frame(&msg.event, self.state.session.limits.outbound_bytes);
        let queued = match msg.event.dispatched_at() {
            Some(dispatched) => {
                let now = std::time::Instant::now();
                STAGES.record(Stage::BrokerToSession, now - dispatched);
                self.out.timed_text(frame, now.into())
            }
            None => self.out.text(frame),
        };
        self.sent_event(queued, ctx);
    }
}

/// Events of a room may have been lost: the client is told (PROTOCOL.md §8), in
/// order with the room's events.
impl Handler<Gap> for Session {
    type Result = ();

    fn handle(&mut self, gap: Gap, ctx: &mut Context<Self>) {
        if self.rooms.contains(&gap.room) {
            // Before the broker's answer, the gap waits to follow the reply.
            if self.replays.hold_gap(&gap) {
                return;
            }
            // A replay in the room ends at a lost history: the events after the gap
            // follow live. Other gaps (a foreign event lost in an overload) leave the
            // numbered events, and a replay of them, as they are.
            if gap.reason == GapReason::HistoryLost {
                self.replays.cancel(&gap.room);
            }
            if let Some(position) = &gap.position {
                self.positions.insert(gap.room.clone(), position.clone());
            }
            self.send(wire::gap_frame(&gap), ctx);
        }
    }
}

impl Handler<Evicted> for Session {
    type Result = ();

    fn handle(&mut self, _: Evicted, ctx: &mut Context<Self>) {
        self.slow_consumer(ctx);
    }
}

impl StreamHandler<Result<Frame, ProtocolError>> for Session {
    fn handle(&mut self, frame: Result<Frame, ProtocolError>, ctx: &mut Context<Self>) {
        self.last_heard = Instant::now();
        let frame = match frame {
            Ok(frame) => frame,
            Err(ProtocolError::Overflow) => {
                return self.fail(close::TOO_BIG, "message too big", ctx)
            }
            Err(e) => {
                log::debug!("session on {}: protocol error: {e}", self.state.server_id);
                return self.fail(close::PROTOCOL, "protocol error", ctx);
            }
        };
        match frame {
            Frame::Text(bytes) if self.fragments.is_none() => self.on_text(bytes, ctx),
            Frame::Binary(_) if matches!(self.access, Access::Pending) => {
                self.fail(close::POLICY, "authenticate first", ctx)
            }
            Frame::Binary(_) if self.fragments.is_none() => self.refuse(
                &Error::BadFrame("binary frames are not supported".into()),
                None,
                ctx,
            ),
            Frame::Text(_) | Frame::Binary(_) => {
                self.fail(close::PROTOCOL, "expected a continuation frame", ctx)
            }
            Frame::Continuation(item) => self.on_fragment(item, ctx),
            Frame::Ping(payload) => {
                if self.out.pong(payload).is_err() {
                    self.slow_consumer(ctx);
                }
            }
            Frame::Pong(_) => {}
            Frame::Close(reason) => {
                let code = reason
                    .map(|r| u16::from(r.code))
                    .unwrap_or(u16::from(CloseCode::Normal));
                self.close(code, "", false, ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
