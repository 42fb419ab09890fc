//! The seed's publisher and subscriber statistics (PROTOCOL.md §3, `GET /stats`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::event::now_ms;

/// Per-room statistics are kept for at most this many rooms; later rooms are added
/// up under [`OTHER_ROOMS`]. Rooms are named by clients, so without a cap a client
/// publishing to random rooms would grow these maps without limit.
pub const MAX_ROOMS_IN_STATS: usize = 1024;

/// The `channelStats` key that collects the rooms past [`MAX_ROOMS_IN_STATS`]
/// (`*` is not a room character, so it cannot clash with a room).
pub const OTHER_ROOMS: &str = "*";

/// Publish outcomes in one room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PublishCounts {
    /// Publishes Redis accepted.
    pub published: u64,
    /// Publishes that failed after every retry.
    pub failed: u64,
}

/// Messages received in one room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReceiveCounts {
    /// Messages received from Redis (own echoes not counted).
    pub received: u64,
    /// Of those, the invalid ones.
    pub failed: u64,
}

/// The publisher's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublisherStats {
    /// Publish calls.
    pub total_published: u64,
    /// Calls Redis accepted.
    pub successful_publishes: u64,
    /// Calls that failed after every retry.
    pub failed_publishes: u64,
    /// Retries made, over all calls.
    pub retries: u64,
    /// When the last call ended, ms since the epoch.
    pub last_publish_time: Option<u64>,
    /// Per room.
    pub channel_stats: BTreeMap<String, PublishCounts>,
    /// Publishes waiting now: queued for a pipeline or between retries (a gauge;
    /// at most `MAX_QUEUED`, then new ones are refused).
    pub waiting: u64,
    /// Publishes sent to Redis and not answered yet (a gauge).
    pub unanswered: u64,
    /// Publishing links lost after being up; each one is followed by a reconnect.
    pub links_lost: u64,
}

impl PublisherStats {
    /// Counts one publish call that ended, after `retries` retries.
    pub fn record(&mut self, room: &str, succeeded: bool, retries: u32) {
        self.total_published += 1;
        self.retries += u64::from(retries);
        self.last_publish_time = Some(now_ms());
        let counts = room_entry(&mut self.channel_stats, room);
        if succeeded {
            self.successful_publishes += 1;
            counts.published += 1;
        } else {
            self.failed_publishes += 1;
            counts.failed += 1;
        }
    }
}

/// The subscriber's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberStats {
    /// Messages from Redis, own echoes not counted.
    pub total_received: u64,
    /// Valid events handed to the broker.
    pub processed_events: u64,
    /// Invalid events, logged and skipped.
    pub failed_events: u64,
    /// Valid events dropped because the broker's mailbox was full (an overloaded
    /// server sheds load here instead of queueing without limit).
    pub dropped_events: u64,
    /// Messages this server published itself, skipped (already delivered locally).
    pub echo_skipped: u64,
    /// When the last message arrived, ms since the epoch.
    pub last_receive_time: Option<u64>,
    /// Pub/sub links lost after being up. Each is a window in which messages were
    /// lost: Redis pub/sub is at-most-once.
    pub links_lost: u64,
    /// Gaps closed by reading the missed events back (durable rooms, PROTOCOL.md §8;
    /// none yet: this server has no durable rooms).
    pub gaps_recovered: u64,
    /// Events read back to close a gap (durable rooms; none yet).
    pub events_recovered: u64,
    /// Gaps reported to a room's subscribers as they are (`gap` frames, one count
    /// per room and gap on this server): a room held again after a lost link.
    pub gaps_unrecovered: u64,
    /// Of `gaps_unrecovered`, those of a lost link (`link_lost`).
    pub gaps_link_lost: u64,
    /// Of `gaps_unrecovered`, those of events dropped because the broker fell behind
    /// (`overloaded`); the rest are `history_lost`.
    pub gaps_overloaded: u64,
    /// Events dropped as already delivered (durable rooms; none yet).
    pub duplicates_dropped: u64,
    /// Events waiting for the broker on its inbound channel now (a gauge; at most
    /// `INBOUND_CAPACITY`, then they are dropped).
    pub inbound_queued: u64,
    /// This server's members of presence rooms now (a gauge; PROTOCOL.md §9).
    pub presence_members: u64,
    /// Writes of this server's presence members that Redis failed; each is followed
    /// by a resync.
    pub presence_write_failures: u64,
    /// Resyncs: this server's members of a room written again whole, after Redis
    /// lost them (a restart, or a sweep after this server stalled).
    pub presence_resyncs: u64,
    /// Per room.
    pub channel_stats: BTreeMap<String, ReceiveCounts>,
}

impl SubscriberStats {
    /// Counts one message from Redis that was not an echo.
    pub fn record_received(&mut self, room: &str, valid: bool) {
        self.total_received += 1;
        self.last_receive_time = Some(now_ms());
        let counts = room_entry(&mut self.channel_stats, room);
        counts.received += 1;
        if valid {
            self.processed_events += 1;
        } else {
            self.failed_events += 1;
            counts.failed += 1;
        }
    }

    /// Counts one of this server's own messages coming back.
    pub fn record_echo(&mut self) {
        self.echo_skipped += 1;
    }
}

fn room_entry<'a, T: Default>(map: &'a mut BTreeMap<String, T>, room: &str) -> &'a mut T {
    // Looked up by `&str` first: the common case, a room already counted, allocates
    // nothing.
    let key = if map.contains_key(room) || map.len() < MAX_ROOMS_IN_STATS {
        room
    } else {
        OTHER_ROOMS
    };
    if !map.contains_key(key) {
        map.insert(key.to_owned(), T::default());
    }
    map.get_mut(key).expect("inserted above")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publisher_counts_calls_outcomes_and_retries() {
        let mut s = PublisherStats::default();
        s.record("a", true, 0);
        s.record("a", false, 3);
        assert_eq!(
            (
                s.total_published,
                s.successful_publishes,
                s.failed_publishes,
                s.retries
            ),
            (2, 1, 1, 3)
        );
        assert_eq!(
            s.channel_stats["a"],
            PublishCounts {
                published: 1,
                failed: 1
            }
        );
        assert!(s.last_publish_time.is_some());
    }

    #[test]
    fn subscriber_counts_failures_per_room() {
        let mut s = SubscriberStats::default();
        s.record_received("r", true);
        s.record_received("r", false);
        s.record_echo();
        assert_eq!(
            (s.total_received, s.processed_events, s.failed_events),
            (2, 1, 1)
        );
        assert_eq!(s.echo_skipped, 1);
        assert_eq!(
            s.channel_stats["r"],
            ReceiveCounts {
                received: 2,
                failed: 1
            }
        );
    }

    #[test]
    fn per_room_maps_are_capped() {
        let mut s = SubscriberStats::default();
        for n in 0..MAX_ROOMS_IN_STATS + 10 {
            s.record_received(&format!("room{n}"), true);
        }
        assert_eq!(s.channel_stats.len(), MAX_ROOMS_IN_STATS + 1);
        assert_eq!(s.channel_stats[OTHER_ROOMS].received, 10);
    }

    #[test]
    fn serializes_with_the_seed_names() {
        let v = serde_json::to_value(PublisherStats::default()).unwrap();
        for key in [
            "totalPublished",
            "successfulPublishes",
            "failedPublishes",
            "retries",
        ] {
            assert_eq!(v[key], 0, "{key}");
        }
        assert!(v["lastPublishTime"].is_null());
        assert!(v["channelStats"].is_object());
    }
}
