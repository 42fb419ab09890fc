//! Durable rooms (PROTOCOL.md §7): numbered events, a bounded history in the
//! backplane, recovery, and idempotent publish.
//!
//! - here: the settings ([`DurableConfig`]) and the values that cross the broker's
//!   address ([`Position`], [`Since`], [`IdempotencyKey`], [`Published`], [`HistoryPage`]);
//! - `track.rs`: what the broker keeps per durable room it holds: the last offset it
//!   delivered, a ring of recent events, and what an arriving event means (in order,
//!   a duplicate, a skip, another epoch);
//! - `scripts.rs`: the Redis side: the Lua scripts and how they are called;
//! - `memory.rs`: the same store in the process, for the memory backplane.

pub(crate) mod memory;
pub(crate) mod scripts;
pub(crate) mod track;

use std::{fmt, sync::Arc, time::Duration};

use crate::{Error, Event, Pattern, Room};

/// Which rooms are durable, and their history's bounds (PROTOCOL.md §7).
#[derive(Debug, Clone)]
pub struct DurableConfig {
    /// `DURABLE_ROOMS`: a room matching one of these is durable.
    pub rooms: Vec<Pattern>,
    /// `HISTORY_SIZE`: events kept per room.
    pub history_size: usize,
    /// `HISTORY_TTL_MS`: a room's events expire once nothing was published in it for this long.
    pub history_ttl: Duration,
    /// `HISTORY_META_TTL_MS`: how long a room's offset and epoch outlive its last publish.
    pub meta_ttl: Duration,
    /// `IDEMPOTENCY_TTL_MS`: how long a publish's idempotency key is remembered.
    pub idempotency_ttl: Duration,
}

impl DurableConfig {
    /// PROTOCOL.md §7's defaults.
    pub const DEFAULT_HISTORY_SIZE: usize = 1000;
    /// `HISTORY_TTL_MS`'s default: 5 minutes.
    pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_millis(300_000);
    /// `HISTORY_META_TTL_MS`'s default: 7 days.
    pub const DEFAULT_META_TTL: Duration = Duration::from_millis(604_800_000);
    /// `IDEMPOTENCY_TTL_MS`'s default: 2 minutes.
    pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_millis(120_000);

    /// Whether `room` is durable. `system:` rooms never are.
    pub fn is_durable(&self, room: &Room) -> bool {
        !room.is_system() && self.rooms.iter().any(|p| p.matches(room.as_str()))
    }
}

impl Default for DurableConfig {
    /// No durable room; the default bounds for the keys of idempotent publishes.
    fn default() -> Self {
        DurableConfig {
            rooms: Vec::new(),
            history_size: Self::DEFAULT_HISTORY_SIZE,
            history_ttl: Self::DEFAULT_HISTORY_TTL,
            meta_ttl: Self::DEFAULT_META_TTL,
            idempotency_ttl: Self::DEFAULT_IDEMPOTENCY_TTL,
        }
    }
}

/// Where a durable room's numbering stands: the offset of its last event, in an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The last event's offset (0 before the first).
    pub offset: u64,
    /// The numbering's epoch: changes whenever the numbering was lost.
    pub epoch: Epoch,
}

/// An epoch: an opaque string of 1 to 64 characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// The longest epoch the contract allows.
    pub const MAX_LEN: usize = 64;

    /// Validates an epoch from a client or from Redis.
    pub fn new(text: &str) -> Result<Epoch, Error> {
        if text.is_empty() || text.len() > Self::MAX_LEN {
            return Err(Error::InvalidEvent(format!(
                "an epoch has 1 to {} characters, got {}",
                Self::MAX_LEN,
                text.len()
            )));
        }
        Ok(Epoch(text.into()))
    }

    /// A fresh random epoch, for a room that has none (16 hex digits).
    pub fn fresh() -> Epoch {
        Epoch(format!("{:016x}", fastrand::u64(..)).into())
    }

    /// The epoch as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({})", &self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subscriber's or a reader's claim: it has every event up to `offset` of `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The last offset it has.
    pub offset: u64,
    /// The epoch of that offset.
    pub epoch: Epoch,
}

/// A publish's idempotency key: 1 to 64 characters of `A-Z a-z 0-9 _ - . :`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    /// The longest key the contract allows.
    pub const MAX_LEN: usize = 64;

    /// Validates a key from a client.
    pub fn new(text: &str) -> Result<IdempotencyKey, Error> {
        if text.is_empty() || text.len() > Self::MAX_LEN {
            return Err(Error::InvalidEvent(format!(
                "an idempotency key has 1 to {} characters, got {}",
                Self::MAX_LEN,
                text.len()
            )));
        }
        if let Some(bad) = text.chars().find(|c| !Room::is_room_char(*c)) {
            return Err(Error::InvalidEvent(format!(
                "an idempotency key uses only A-Z a-z 0-9 _ - . :, got {bad:?}"
            )));
        }
        Ok(IdempotencyKey(text.into()))
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a successful publish answers: in a durable room, the event's position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// The event's offset and epoch; `None` in a room that is not durable.
    pub position: Option<Position>,
}

/// A read of a durable room's history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The room's current position (created when the room had none).
    pub current: Position,
    /// Events in ascending order of offset: those after the read's `after`, or the
    /// latest ones when it had none.
    pub events: Vec<Arc<Event>>,
}

impl HistoryPage {
    /// Whether these events continue exactly after `offset`: nothing between was
    /// trimmed (or there is nothing after `offset` to have).
    pub fn continues(&self, offset: u64) -> bool {
        match self.events.first().and_then(|e| e.offset()) {
            Some(first) => first <= offset.saturating_add(1),
            None => self.current.offset <= offset,
        }
    }
}
