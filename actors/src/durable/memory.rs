//! The memory backplane's store for durable rooms and idempotency keys: what the
//! Redis scripts keep, kept in the process, with the same bounds.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Instant,
};

use super::{DurableConfig, Epoch, HistoryPage, IdempotencyKey, Position, Published};
use crate::{Event, Room};

/// Durable rooms' histories and publishes' idempotency keys, in the process.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    config: DurableConfig,
    rooms: HashMap<Room, RoomLog>,
    keys: HashMap<(Room, IdempotencyKey), Remembered>,
    /// How many keys there were after the last sweep of expired ones: the next sweep
    /// runs when there are twice as many, so sweeping costs O(1) per publish.
    keys_swept_at: usize,
    /// The same for rooms whose numbering expired (`HISTORY_META_TTL_MS`).
    rooms_swept_at: usize,
}

/// One durable room: its position and its last `HISTORY_SIZE` events.
#[derive(Debug)]
struct RoomLog {
    position: Position,
    events: VecDeque<Arc<Event>>,
    /// The last publish (or, for a room without one yet, its creation).
    touched: Instant,
}

#[derive(Debug)]
struct Remembered {
    published: Published,
    at: Instant,
}

/// What a publish into the store did.
pub(crate) struct Stored {
    /// The answer.
    pub(crate) published: Published,
    /// The event to deliver, numbered in a durable room; `None` for a duplicate.
    pub(crate) deliver: Option<Arc<Event>>,
}

impl MemoryStore {
    pub(crate) fn new(config: DurableConfig) -> MemoryStore {
        MemoryStore {
            config,
            rooms: HashMap::new(),
            keys: HashMap::new(),
            keys_swept_at: 0,
            rooms_swept_at: 0,
        }
    }

    /// Publishes `event`: numbered and kept in a durable room, remembered under its
    /// key when it has one; a key seen before answers as its first publish did.
    pub(crate) fn publish(
        &mut self,
        event: &Arc<Event>,
        durable: bool,
        key: Option<&IdempotencyKey>,
    ) -> Stored {
        let now = Instant::now();
        let remembered = key.map(|k| (event.room().clone(), k.clone()));
        if let Some(seen) = remembered.as_ref().and_then(|k| self.keys.get(k)) {
            if now.duration_since(seen.at) < self.config.idempotency_ttl {
                return Stored {
                    published: seen.published.clone(),
                    deliver: None,
                };
            }
        }
        let (published, deliver) = if durable {
            self.sweep_rooms(now);
            let size = self.config.history_size;
            let log = self.log(event.room(), now);
            log.position.offset += 1;
            log.touched = now;
            let numbered = Arc::new(event.numbered(&log.position));
            log.events.push_back(numbered.clone());
            while log.events.len() > size {
                log.events.pop_front();
            }
            let position = Some(log.position.clone());
            (Published { position }, numbered)
        } else {
            (Published::default(), event.clone())
        };
        if let Some(remembered) = remembered {
            let at = now;
            let entry = Remembered {
                published: published.clone(),
                at,
            };
            self.keys.insert(remembered, entry);
            self.sweep_keys(now);
        }
        Stored {
            published,
            deliver: Some(deliver),
        }
    }

    /// The room's position and up to `limit` events from offset `from` on, or the
    /// latest ones.
    pub(crate) fn read(&mut self, room: &Room, from: Option<u64>, limit: usize) -> HistoryPage {
        let now = Instant::now();
        self.sweep_rooms(now);
        let log = self.log(room, now);
        let events: Vec<Arc<Event>> = match from {
            Some(from) => log
                .events
                .iter()
                .filter(|e| e.offset().is_some_and(|o| o >= from))
                .take(limit)
                .cloned()
                .collect(),
            None => {
                let skip = log.events.len().saturating_sub(limit);
                log.events.iter().skip(skip).cloned().collect()
            }
        };
        HistoryPage {
            current: log.position.clone(),
            events,
        }
    }

    /// The room's log, its expired parts dropped first: the events after
    /// `HISTORY_TTL_MS` without a publish, the numbering after `HISTORY_META_TTL_MS`.
    fn log(&mut self, room: &Room, now: Instant) -> &mut RoomLog {
        let config = &self.config;
        let log = self.rooms.entry(room.clone()).or_insert_with(|| RoomLog {
            position: Position {
                offset: 0,
                epoch: Epoch::fresh(),
            },
            events: VecDeque::new(),
            touched: now,
        });
        let idle = now.duration_since(log.touched);
        // A numbering nobody published in lives `HISTORY_TTL_MS`, as in Redis.
        let numbering_ttl = if log.position.offset == 0 {
            config.history_ttl
        } else {
            config.meta_ttl
        };
        if idle >= numbering_ttl {
            *log = RoomLog {
                position: Position {
                    offset: 0,
                    epoch: Epoch::fresh(),
                },
                events: VecDeque::new(),
                touched: now,
            };
        } else if idle >= config.history_ttl {
            log.events.clear();
        }
        log
    }

    /// Forgets the rooms idle past `HISTORY_META_TTL_MS` and drops the events of those
    /// idle past `HISTORY_TTL_MS`, as Redis expires their keys, once there are twice
    /// as many rooms as after the last sweep: memory follows the rooms in use.
    fn sweep_rooms(&mut self, now: Instant) {
        if self.rooms.len() < 2 * self.rooms_swept_at.max(512) {
            return;
        }
        let (meta_ttl, history_ttl) = (self.config.meta_ttl, self.config.history_ttl);
        self.rooms.retain(|_, log| {
            let idle = now.duration_since(log.touched);
            if idle >= history_ttl {
                log.events = VecDeque::new();
            }
            idle < if log.position.offset == 0 {
                history_ttl
            } else {
                meta_ttl
            }
        });
        self.rooms_swept_at = self.rooms.len();
    }

    fn sweep_keys(&mut self, now: Instant) {
        if self.keys.len() < 2 * self.keys_swept_at.max(512) {
            return;
        }
        let ttl = self.config.idempotency_ttl;
        self.keys
            .retain(|_, seen| now.duration_since(seen.at) < ttl);
        self.keys_swept_at = self.keys.len();
    }
}
