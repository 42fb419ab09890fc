//! Room names (PROTOCOL.md §1).

use std::{fmt, sync::Arc};

use serde::{Serialize, Serializer};

use crate::Error;

/// The room every server always subscribes to: peers announce themselves there.
pub const SYSTEM_EVENTS: &str = "system:events";

/// The prefix of the rooms that belong to the servers themselves; clients may
/// subscribe to them but never publish there.
pub const SYSTEM_PREFIX: &str = "system:";

/// A validated room name: 1 to [`Room::MAX_LEN`] characters from `A-Z a-z 0-9 _ : . -`.
///
/// Cheap to clone (a reference-counted string), because the broker keys its maps
/// by room and every [`Event`](crate::Event) carries one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Room(Arc<str>);

impl Room {
    /// The longest room name the contract allows.
    pub const MAX_LEN: usize = 200;

    /// Validates `name` as a room.
    pub fn new(name: &str) -> Result<Room, Error> {
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(Error::BadRoom(format!(
                "a room has 1 to {} characters, got {}",
                Self::MAX_LEN,
                name.len()
            )));
        }
        if let Some(bad) = name.chars().find(|c| !Self::is_room_char(*c)) {
            return Err(Error::BadRoom(format!(
                "a room uses only A-Z a-z 0-9 _ : . -, got {bad:?}"
            )));
        }
        Ok(Room(name.into()))
    }

    /// The system room, `system:events`.
    pub fn system_events() -> Room {
        Room(SYSTEM_EVENTS.into())
    }

    /// Whether `c` may appear in a room name.
    pub fn is_room_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-')
    }

    /// Whether `s` is one whole segment of a room name: non-empty, room characters,
    /// no `:`.
    pub fn is_segment(s: &str) -> bool {
        !s.is_empty() && s.chars().all(|c| c != ':' && Self::is_room_char(c))
    }

    /// Whether this room belongs to the servers (`system:` prefix).
    pub fn is_system(&self) -> bool {
        self.0.starts_with(SYSTEM_PREFIX)
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Room({})", &self.0)
    }
}

impl Serialize for Room {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_seed_channels_and_the_edges() {
        for name in [
            "leaderboard:updates",
            "match:events",
            "player:notifications",
            "system:events",
            "a",
            "A-z_0.9:x",
        ] {
            assert!(Room::new(name).is_ok(), "{name}");
        }
        assert!(Room::new(&"r".repeat(200)).is_ok());
    }

    #[test]
    fn refuses_empty_long_and_foreign_characters() {
        for name in ["", "a b", "room/1", "é", "a*", "tab\t"] {
            assert!(
                matches!(Room::new(name), Err(Error::BadRoom(_))),
                "{name:?}"
            );
        }
        assert!(Room::new(&"r".repeat(201)).is_err());
    }

    #[test]
    fn knows_system_rooms() {
        assert!(Room::system_events().is_system());
        assert!(!Room::new("match:1").unwrap().is_system());
    }
}
