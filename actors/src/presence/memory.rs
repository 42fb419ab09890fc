//! Presence on the memory backplane: one server, so its members are the room's.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::{Applied, Member, Op, PresenceCount, PresenceKind};
use crate::Room;

/// Every presence room's members, in the process.
#[derive(Debug, Default)]
pub(crate) struct MemoryPresence {
    rooms: HashMap<Room, HashMap<Arc<str>, Arc<Member>>>,
}

impl MemoryPresence {
    /// Applies the writes; answers the changes they made, to deliver here.
    pub(crate) fn apply(&mut self, room: &Room, ops: &[Op]) -> Applied {
        let members = self.rooms.entry(room.clone()).or_default();
        let mut here = Vec::new();
        for op in ops {
            match op {
                Op::Join(member) => {
                    if !members.contains_key(member.client()) {
                        members.insert(member.client().clone(), member.clone());
                        here.push((PresenceKind::Join, member.clone()));
                    }
                }
                Op::Leave(member) => {
                    if let Some(stored) = members.remove(member.client()) {
                        here.push((PresenceKind::Leave, stored));
                    }
                }
            }
        }
        let count = members.len() as u64;
        if members.is_empty() {
            self.rooms.remove(room);
        }
        Applied {
            lost: false,
            members: count,
            here,
        }
    }

    /// The room's members.
    pub(crate) fn read(&self, room: &Room) -> Vec<Arc<Member>> {
        self.rooms
            .get(room)
            .map(|members| members.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The room's counts.
    pub(crate) fn count(&self, room: &Room) -> PresenceCount {
        let Some(members) = self.rooms.get(room) else {
            return PresenceCount::default();
        };
        let users: HashSet<&str> = members.values().filter_map(|m| m.user()).collect();
        PresenceCount {
            clients: members.len() as u64,
            users: users.len() as u64,
        }
    }
}
