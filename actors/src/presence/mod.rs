//! Presence (PROTOCOL.md §9): who is in a room, on every server.
//!
//! - here: the settings ([`PresenceConfig`]) and the values that cross the broker's
//!   address ([`MemberInfo`], [`Member`], [`PresenceChange`], [`ReadPresence`],
//!   [`CountPresence`]);
//! - `scripts.rs`: the Redis side, three Lua scripts: a server's writes with its
//!   refresh, a read and a count, each of which first sweeps the members of servers
//!   that stopped refreshing;
//! - `view.rs`: a room's members as one server has told its recipients, so news is
//!   told once, and what a lost link hid is told after one read;
//! - `memory.rs`: the same in the process, for the memory backplane.
//!
//! What the broker keeps per presence room (this server's members and their writes
//! to the backplane) is in `broker/presence.rs`.

pub(crate) mod memory;
pub(crate) mod scripts;
pub(crate) mod view;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytestring::ByteString;

use actix::{Message, Recipient};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Error, Pattern, Room};

/// Which rooms have presence, and how long a silent server's members stay
/// (PROTOCOL.md §9).
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// `PRESENCE_ROOMS`: a room matching one of these is a presence room.
    pub rooms: Vec<Pattern>,
    /// `PRESENCE_TTL_MS`: a server refreshes its members every third of it; its
    /// members leave once it has not for this long.
    pub ttl: Duration,
}

impl PresenceConfig {
    /// `PRESENCE_TTL_MS`'s default: 30 s.
    pub const DEFAULT_TTL: Duration = Duration::from_millis(30_000);
    /// The shortest `PRESENCE_TTL_MS`: a refresh every 100 ms.
    pub const MIN_TTL: Duration = Duration::from_millis(300);

    /// Whether `room` is a presence room. `system:` rooms never are.
    pub fn is_presence(&self, room: &Room) -> bool {
        !room.is_system() && self.rooms.iter().any(|p| p.matches(room.as_str()))
    }

    /// How often a server refreshes its members' deadline: a third of the TTL, so
    /// one lost refresh does not make its members leave.
    pub fn refresh_interval(&self) -> Duration {
        self.ttl / 3
    }
}

impl Default for PresenceConfig {
    /// No presence room.
    fn default() -> Self {
        PresenceConfig {
            rooms: Vec::new(),
            ttl: Self::DEFAULT_TTL,
        }
    }
}

/// Who a recipient is, for the presence rooms it joins: what its session knows.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    /// The connection's id, unique across servers.
    pub client: Arc<str>,
    /// The token's `sub`, when authentication is on.
    pub user: Option<String>,
    /// The token's `info` claim, as JSON.
    pub info: Option<Arc<RawValue>>,
}

/// A member of a presence room as every server sees it: its JSON object
/// (`client`, `user`, `info`, `serverId`, `joinedAt`), encoded once where it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    client: Arc<str>,
    user: Option<Box<str>>,
    json: Box<str>,
}

#[derive(Serialize)]
struct MemberOut<'a> {
    client: &'a str,
    user: Option<&'a str>,
    info: Option<&'a RawValue>,
    #[serde(rename = "serverId")]
    server_id: &'a str,
    #[serde(rename = "joinedAt")]
    joined_at: u64,
}

#[derive(Deserialize)]
struct MemberIn<'a> {
    #[serde(borrow)]
    client: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    user: Option<std::borrow::Cow<'a, str>>,
}

impl Member {
    /// A member joining on server `server_id` now.
    pub fn new(info: &MemberInfo, server_id: &str) -> Member {
        let json = serde_json::to_string(&MemberOut {
            client: &info.client,
            user: info.user.as_deref(),
            info: info.info.as_deref(),
            server_id,
            joined_at: crate::now_ms(),
        })
        .expect("a member of strings and raw JSON serializes");
        Member {
            client: info.client.clone(),
            user: info.user.as_deref().map(Into::into),
            json: json.into(),
        }
    }

    /// A member from its JSON (a presence message or a read): an object with a
    /// string `client`.
    pub fn parse(json: &str) -> Result<Member, Error> {
        let head: MemberIn<'_> = serde_json::from_str(json)
            .map_err(|e| Error::InvalidEvent(format!("not a presence member: {e}")))?;
        Ok(Member {
            client: head.client.as_ref().into(),
            user: head.user.map(|u| u.as_ref().into()),
            json: json.into(),
        })
    }

    /// The member's connection id.
    pub fn client(&self) -> &Arc<str> {
        &self.client
    }

    /// The member's user, if it has one.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The member's JSON object.
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// Whether a member came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceKind {
    /// It joined the room.
    Join,
    /// It left: unsubscribed, disconnected, or its server stopped refreshing.
    Leave,
}

impl PresenceKind {
    /// The word in the envelope and in the client's frame (`join`, `leave`).
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceKind::Join => "join",
            PresenceKind::Leave => "leave",
        }
    }

    /// The kind a presence envelope names.
    pub fn parse(word: &str) -> Option<PresenceKind> {
        match word {
            "join" => Some(PresenceKind::Join),
            "leave" => Some(PresenceKind::Leave),
            _ => None,
        }
    }
}

/// A member joined or left a presence room: told to each of the room's recipients
/// that asked ([`Membership::on_change`]), except the member itself. Every recipient
/// gets a clone of the same change, so its transport encoding is made once.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct PresenceChange {
    /// The room.
    pub room: Room,
    /// Joined or left.
    pub kind: PresenceKind,
    /// Who.
    pub member: Arc<Member>,
    wire: Arc<OnceLock<ByteString>>,
}

impl PresenceChange {
    /// A change, to hand out as clones.
    pub fn new(room: Room, kind: PresenceKind, member: Arc<Member>) -> PresenceChange {
        PresenceChange {
            room,
            kind,
            member,
            wire: Arc::default(),
        }
    }

    /// This change's transport encoding: computed by `encode` on first use, then
    /// shared by every clone.
    pub fn wire_encoding(&self, encode: impl FnOnce(&PresenceChange) -> ByteString) -> ByteString {
        self.wire.get_or_init(|| encode(self)).clone()
    }
}

/// The members of a presence room, on every server (PROTOCOL.md §9 `presence`).
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<Arc<Member>>, Error>")]
pub struct ReadPresence {
    /// The room.
    pub room: Room,
}

/// How many members a presence room has, without listing them (`presence_count`).
#[derive(Debug, Message)]
#[rtype(result = "Result<PresenceCount, Error>")]
pub struct CountPresence {
    /// The room.
    pub room: Room,
}

/// A presence room's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PresenceCount {
    /// Members (connections), on every server.
    pub clients: u64,
    /// Distinct users among them (members without a user not counted).
    pub users: u64,
}

/// A presence room's recipient that is a member: who it is, and where the room's
/// other members' joins and leaves go.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Who joins.
    pub member: MemberInfo,
    /// Told of every other member's join and leave.
    pub on_change: Recipient<PresenceChange>,
}

/// One write of this server's members of a room to the backplane.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Add the member (announced if it was not there).
    Join(Arc<Member>),
    /// Remove the member (announced if it was there).
    Leave(Arc<Member>),
}

/// What a write to the backplane did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// This server's entry was missing before the write (Redis lost it, or another
    /// server swept it after a stall): the members written before are gone.
    pub(crate) lost: bool,
    /// This server's members in the room after the write.
    pub(crate) members: u64,
    /// The changes to deliver here (the memory backplane; on Redis they come back
    /// through pub/sub like everyone's).
    pub(crate) here: Vec<(PresenceKind, Arc<Member>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_encoded_once_for_all_its_clones() {
        let info = MemberInfo {
            client: "c".into(),
            user: None,
            info: None,
        };
        let member = Arc::new(Member::new(&info, "s"));
        let change = PresenceChange::new(Room::new("lobby:1").unwrap(), PresenceKind::Join, member);
        let mut calls = 0;
        for clone in [change.clone(), change.clone(), change] {
            clone.wire_encoding(|_| {
                calls += 1;
                ByteString::from_static("frame")
            });
        }
        assert_eq!(calls, 1);
    }
}
