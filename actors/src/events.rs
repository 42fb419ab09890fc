//! The seed's four channels and their event types, as Rust types: publishing an
//! event on a channel it does not belong to does not compile.
//!
//! Each channel is a type implementing [`Channel`], naming its room and its event
//! enum. The enums are adjacently tagged, so `MatchEvent::MatchStarted(data)`
//! travels as `{"type": "match_started", "data": {...}}`, the envelope of
//! PROTOCOL.md §1. Other rooms and event types stay open through [`NewEvent`].

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, NewEvent, Room};

/// A room with a fixed set of event types.
pub trait Channel {
    /// The room's name.
    const ROOM: &'static str;
    /// The events of this room.
    type Event: Serialize + DeserializeOwned;

    /// The room.
    fn room() -> Room {
        Room::new(Self::ROOM).expect("channel rooms are valid")
    }
}

/// Turns a typed event into the `{type, data}` the broker publishes.
pub fn new_event<E: Serialize>(event: &E) -> Result<NewEvent, Error> {
    let json = serde_json::to_string(event).map_err(|e| Error::InvalidEvent(e.to_string()))?;
    NewEvent::from_json(&json)
}

/// `leaderboard:updates`: ranking changes.
pub struct LeaderboardUpdates;

impl Channel for LeaderboardUpdates {
    const ROOM: &'static str = "leaderboard:updates";
    type Event = LeaderboardEvent;
}

/// The events of `leaderboard:updates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum LeaderboardEvent {
    /// Rankings changed.
    LeaderboardUpdate(LeaderboardUpdate),
}

/// The `data` of `leaderboard_update` (the seed's `{playerId, rankChanges}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderboardUpdate {
    /// The player whose update caused the change.
    pub player_id: String,
    /// Every rank that moved.
    #[serde(default)]
    pub rank_changes: Vec<RankChange>,
}

/// One player's move on the leaderboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RankChange {
    /// The player.
    pub player_id: String,
    /// The rank before, when the player had one.
    #[serde(default)]
    pub old_rank: Option<u32>,
    /// The rank now.
    pub new_rank: u32,
    /// The rating now, when known.
    #[serde(default)]
    pub rating: Option<f64>,
}

/// `match:events`: match state changes.
pub struct MatchEvents;

impl Channel for MatchEvents {
    const ROOM: &'static str = "match:events";
    type Event = MatchEvent;
}

/// The events of `match:events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum MatchEvent {
    /// A new match.
    MatchCreated(MatchData),
    /// A match began.
    MatchStarted(MatchData),
    /// A match finished.
    MatchCompleted(MatchData),
    /// A match's state changed.
    MatchUpdated(MatchData),
}

/// The `data` of a match event: the match, its players, and anything else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchData {
    /// The match.
    pub match_id: String,
    /// Its players.
    #[serde(default)]
    pub players: Vec<String>,
    /// Other fields, kept as they are.
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

/// `player:notifications`: events for one player.
pub struct PlayerNotifications;

impl Channel for PlayerNotifications {
    const ROOM: &'static str = "player:notifications";
    type Event = PlayerEvent;
}

/// The events of `player:notifications`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum PlayerEvent {
    /// The player's rating changed.
    RatingChanged(PlayerData),
    /// The player is invited to a match.
    MatchInvite(PlayerData),
    /// The player earned an achievement.
    AchievementUnlocked(PlayerData),
    /// The player's rank changed.
    RankChanged(PlayerData),
}

/// The `data` of a player event: the player, and anything else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlayerData {
    /// The player.
    pub player_id: String,
    /// Other fields, kept as they are.
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

/// `system:events`: the servers' own announcements (only servers publish here).
pub struct SystemEvents;

impl Channel for SystemEvents {
    const ROOM: &'static str = crate::SYSTEM_EVENTS;
    type Event = SystemEvent;
}

/// The events of `system:events` (PROTOCOL.md §3, peers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum SystemEvent {
    /// A server came online.
    ServerStarted(Announcement),
    /// A server is going offline.
    ServerStopped(Announcement),
    /// A server is alive (every `PEER_HEARTBEAT_MS`).
    HealthCheck(Announcement),
}

/// What a server says of itself on `system:events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Announcement {
    /// Its server id.
    pub server_id: String,
    /// Its process's random id.
    pub instance_id: String,
    /// Its heartbeat interval.
    pub heartbeat_ms: u64,
    /// Its open WebSocket connections.
    pub connections: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;
    use bytes::Bytes;

    #[test]
    fn typed_events_travel_as_type_and_data() {
        let event = MatchEvent::MatchStarted(MatchData {
            match_id: "m1".into(),
            players: vec!["p1".into()],
            details: Map::new(),
        });
        let new = new_event(&event).unwrap();
        assert_eq!(new.kind, "match_started");
        assert_eq!(new.data.get(), r#"{"matchId":"m1","players":["p1"]}"#);
    }

    #[test]
    fn envelopes_decode_into_typed_events() {
        let raw = r#"{"type":"rating_changed","data":{"playerId":"p9","rating":1500},"serverId":"s","timestamp":1}"#;
        let event = Event::parse(
            PlayerNotifications::room(),
            Bytes::from_static(raw.as_bytes()),
        )
        .unwrap();
        let PlayerEvent::RatingChanged(data) = event.decode::<PlayerEvent>().unwrap() else {
            panic!("wrong variant");
        };
        assert_eq!(data.player_id, "p9");
        assert_eq!(data.details["rating"], 1500);
    }

    #[test]
    fn a_foreign_type_does_not_decode() {
        let raw = r#"{"type":"match_started","data":{"matchId":"m"}}"#;
        let event = Event::parse(
            LeaderboardUpdates::room(),
            Bytes::from_static(raw.as_bytes()),
        )
        .unwrap();
        assert!(event.decode::<LeaderboardEvent>().is_err());
    }
}
