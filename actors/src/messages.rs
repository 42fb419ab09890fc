//! The messages on the broker's address: one struct per intent.
//!
//! Commands are verbs ([`Publish`], [`Subscribe`], ...); what is delivered to a
//! recipient is a noun ([`Delivery`], [`Evicted`]).

use std::sync::Arc;

use actix::{Message, Recipient};
use serde::Serialize;

use crate::{
    durable::{IdempotencyKey, Position, Published, Since},
    presence::Membership,
    Error, Event, NewEvent, PublisherStats, Room, SubscriberStats,
};

/// Publish an event in a room. In a plain room without a key the broker delivers it
/// to this server's recipients at once, then hands it to the backplane; the result
/// says whether Redis took it (`Err` means only this server's recipients got it). In
/// a durable room, or with a key, it goes to the backplane first and reaches every
/// server, this one included, from there (PROTOCOL.md §2, §7).
#[derive(Debug, Message)]
#[rtype(result = "Result<Published, Error>")]
pub struct Publish {
    /// Where to publish.
    pub room: Room,
    /// What to publish; the broker adds `serverId` and `timestamp`.
    pub event: NewEvent,
    /// A publish with a key already used in the room within `IDEMPOTENCY_TTL_MS` is
    /// answered like the first one and not published again.
    pub key: Option<IdempotencyKey>,
}

/// Add a recipient to a room. Answers once the backplane confirmed the room's
/// subscription, so every event published after the answer reaches the recipient.
#[derive(Debug, Message)]
#[rtype(result = "Result<Joined, Error>")]
pub struct Subscribe {
    /// The room to join.
    pub room: Room,
    /// In a durable room: the last event the recipient has, to recover what followed.
    pub since: Option<Since>,
    /// Who replays what `since` recovers: `true`, the broker, which sends the missed
    /// events to the recipient before any live one (in-process recipients); `false`,
    /// the recipient itself, from [`Joined::replay`] and [`ReadHistory`] at its own
    /// pace (WebSocket sessions, whose outbound queue is bounded).
    pub deliver_replay: bool,
    /// Who gets the room's events.
    pub recipient: Recipient<Delivery>,
    /// Told when the broker drops the recipient because its mailbox is full, so it
    /// can close itself instead of silently missing events. Sessions pass theirs;
    /// in-process services usually pass `None`.
    pub on_evicted: Option<Recipient<Evicted>>,
    /// Told when events of the room may have been lost (a [`Gap`], PROTOCOL.md §8).
    pub on_gap: Option<Recipient<Gap>>,
    /// In a presence room (PROTOCOL.md §9): the recipient is a member, and is told of
    /// the others' joins and leaves. The answer comes once every server can see it.
    /// Ignored in other rooms; in-process services pass `None`.
    pub membership: Option<Membership>,
}

/// How a recipient entered a room.
#[derive(Debug, Clone, Default)]
pub struct Joined {
    /// In a durable room, the reply's position: the events after it reach the
    /// recipient, replayed ones first.
    pub position: Option<Position>,
    /// With `since`: whether every event after it could be recovered.
    pub recovered: Option<bool>,
    /// The first events to replay, in order (the rest are read with [`ReadHistory`]).
    pub replay: Vec<Arc<Event>>,
    /// Replay up to this offset; live events follow from the next one.
    pub replay_to: u64,
}

/// Read a durable room's history (PROTOCOL.md §7 `history`).
#[derive(Debug, Message)]
#[rtype(result = "Result<History, Error>")]
pub struct ReadHistory {
    /// The room.
    pub room: Room,
    /// The events after this one; without it, the latest `limit`.
    pub since: Option<Since>,
    /// At most this many events.
    pub limit: usize,
}

/// A durable room's history, as read.
#[derive(Debug, Clone)]
pub struct History {
    /// The room's current position.
    pub current: Position,
    /// Whether the events after `since` could all be had (true without `since`).
    pub recovered: bool,
    /// The events, ascending.
    pub events: Vec<Arc<Event>>,
    /// Whether more events follow the last one returned.
    pub more: bool,
}

/// Remove one recipient from a room; the last one leaving releases the room's
/// Redis subscription.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    /// The room to leave.
    pub room: Room,
    /// The recipient that leaves.
    pub recipient: Recipient<Delivery>,
}

/// Remove every recipient from a room (the seed's `unsubscribe(channel)`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UnsubscribeAll {
    /// The room to empty.
    pub room: Room,
}

/// Remove a recipient from every room it is in (a session that stops).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The recipient that leaves.
    pub recipient: Recipient<Delivery>,
}

/// One event for a recipient. The event is shared: every recipient of a room
/// gets the same `Arc`, encoded once.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Delivery {
    /// The event, with its room.
    pub event: Arc<Event>,
}

/// Why the broker dropped a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    /// Its mailbox was full: it could not keep up with its rooms.
    MailboxFull,
}

/// Told to a recipient the broker dropped from all its rooms.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Evicted {
    /// Why.
    pub reason: EvictReason,
}

/// What the subscriber hands the broker, in order, on its channel.
#[derive(Debug)]
pub enum Inbound {
    /// An event from Redis, checked.
    Event(Arc<Event>),
    /// The room is subscribed again after the pub/sub link was lost: what was
    /// published meanwhile did not come.
    Relinked(Room),
    /// An event from Redis, checked, of a room that lost events before it because
    /// this channel was full (the broker fell behind); `unnumbered`: an event without
    /// an offset was among them, which a durable room's history cannot give back.
    AfterDrop {
        /// The event.
        event: Arc<Event>,
        /// An event without an offset was lost.
        unnumbered: bool,
    },
    /// Events of the room were dropped because this channel was full, and no later
    /// event of the room has come to say so (a second passed).
    Dropped {
        /// The room.
        room: Room,
        /// An event without an offset was lost.
        unnumbered: bool,
    },
}

/// Events of a room may have been lost before the events that follow (PROTOCOL.md
/// §8): told to each of the room's recipients that asked (`Subscribe::on_gap`).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct Gap {
    /// The room.
    pub room: Room,
    /// Why.
    pub reason: GapReason,
    /// In a durable room, where the numbering stands: the events after it follow.
    pub position: Option<Position>,
}

/// Why events may have been lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The server's pub/sub link to Redis was lost and the room subscribed again:
    /// what was published meanwhile did not reach this server.
    LinkLost,
    /// A durable room's missed events cannot be had: another epoch, a rollback, or
    /// a history trimmed past them.
    HistoryLost,
    /// This server fell behind: events of the room from Redis were dropped before
    /// its broker took them (its inbound queue, `LIMIT_INBOUND_EVENTS`, was full).
    /// Durable rooms read them back instead.
    Overloaded,
}

/// Which backplane carries events between servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackplaneKind {
    /// Redis pub/sub: any number of servers.
    Redis,
    /// In-process only: one server, no Redis.
    Memory,
}

/// The seed's health status, plus the backplane in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthStatus {
    /// `publisherReady && subscriberReady`.
    pub is_healthy: bool,
    /// The publishing connection is up.
    pub publisher_ready: bool,
    /// The pub/sub connection is up and its subscriptions are confirmed.
    pub subscriber_ready: bool,
    /// This server's id.
    pub server_id: String,
    /// Rooms this server holds a subscription for.
    pub active_subscriptions: usize,
    /// Failed connection attempts since the last success, both links added.
    pub reconnect_attempts: u32,
    /// The backplane in use.
    pub backplane: BackplaneKind,
}

/// Ask the broker for its [`HealthStatus`].
#[derive(Debug, Message)]
#[rtype(result = "HealthStatus")]
pub struct GetHealth;

/// Both links' statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// The publisher's counters.
    pub publisher: PublisherStats,
    /// The subscriber's counters.
    pub subscriber: SubscriberStats,
}

/// Ask for the [`Stats`] (the broker), or one link's part of them.
#[derive(Debug, Message)]
#[rtype(result = "Stats")]
pub struct GetStats;

/// Set every counter back to zero and every time back to `None`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct ResetStats;

/// Stop for good: release every subscription and close the Redis links. Sent by
/// the server on SIGTERM after its `server_stopped` went out.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;
