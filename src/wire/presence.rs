//! Presence frames (PROTOCOL.md §9): the `presence` and `presence_count` answers, and
//! the `join` / `leave` frames. Members are sent as the JSON they were stored as, not
//! re-encoded.

use bytestring::ByteString;
use serde::Serialize;
use serde_json::value::RawValue;
use switchboard_actors::presence::{Member, PresenceChange, PresenceCount, PresenceKind};

use super::{encode, WithRef};

/// A presence answer: the `presence` frame, and the body of `GET /presence/{room}`.
#[derive(Debug, Serialize)]
pub struct PresenceAnswer<'a> {
    /// The room.
    pub room: &'a str,
    /// Its members on every server.
    pub members: Vec<&'a RawValue>,
}

impl<'a> PresenceAnswer<'a> {
    /// The answer listing `members`.
    pub fn new(room: &'a str, members: &'a [std::sync::Arc<Member>]) -> PresenceAnswer<'a> {
        PresenceAnswer {
            room,
            members: members.iter().map(|m| raw(m)).collect(),
        }
    }
}

/// A member's stored JSON as a raw value. Members are written by this crate's own
/// scripts and checked when read (`Member::parse`), so this never fails.
fn raw(member: &Member) -> &RawValue {
    serde_json::from_str(member.json()).expect("a member is a JSON object")
}

/// The `presence` frame, with the request's `ref`.
pub fn presence_frame(answer: &PresenceAnswer<'_>, reference: Option<&RawValue>) -> ByteString {
    #[derive(Serialize)]
    #[serde(tag = "op", rename = "presence")]
    struct Frame<'a, 'b> {
        #[serde(flatten)]
        answer: &'b PresenceAnswer<'a>,
    }
    encode(&WithRef {
        body: Frame { answer },
        reference,
    })
}

/// The `presence_count` frame, with the request's `ref`.
pub fn count_frame(room: &str, count: PresenceCount, reference: Option<&RawValue>) -> ByteString {
    #[derive(Serialize)]
    #[serde(tag = "op", rename = "presence_count")]
    struct Frame<'a> {
        room: &'a str,
        #[serde(flatten)]
        count: PresenceCount,
    }
    encode(&WithRef {
        body: Frame { room, count },
        reference,
    })
}

/// The `join` or `leave` frame of a member; made once per change and shared by every
/// session told of it (see [`PresenceChange::wire_encoding`]).
pub fn change_frame(change: &PresenceChange) -> ByteString {
    #[derive(Serialize)]
    struct Frame<'a> {
        op: PresenceKind,
        room: &'a str,
        member: &'a RawValue,
    }
    encode(&Frame {
        op: change.kind,
        room: change.room.as_str(),
        member: raw(&change.member),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{json, Value};
    use switchboard_actors::{presence::MemberInfo, Room};

    use super::*;

    fn member(client: &str, user: Option<&str>) -> Arc<Member> {
        let info = MemberInfo {
            client: client.into(),
            user: user.map(Into::into),
            info: Some(Arc::from(
                RawValue::from_string(r#"{"name":"Al \"x\""}"#.into()).unwrap(),
            )),
        };
        Arc::new(Member::new(&info, "server_1"))
    }

    #[test]
    fn frames_carry_the_members_as_stored() {
        let members = [member("c1", Some("alice")), member("c2", None)];
        let answer = PresenceAnswer::new("lobby:1", &members);
        let frame: Value = serde_json::from_str(&presence_frame(&answer, None)).unwrap();
        assert_eq!(frame["op"], "presence");
        assert_eq!(frame["room"], "lobby:1");
        assert_eq!(frame["members"][0]["client"], "c1");
        assert_eq!(frame["members"][0]["user"], "alice");
        assert_eq!(frame["members"][0]["info"], json!({"name": "Al \"x\""}));
        assert_eq!(frame["members"][0]["serverId"], "server_1");
        assert!(frame["members"][0]["joinedAt"].as_u64().unwrap() > 1_700_000_000_000);
        assert_eq!(frame["members"][1]["user"], Value::Null);

        let change = PresenceChange::new(
            Room::new("lobby:1").unwrap(),
            PresenceKind::Leave,
            members[1].clone(),
        );
        let frame: Value = serde_json::from_str(&change_frame(&change)).unwrap();
        assert_eq!(frame["op"], "leave");
        assert_eq!(frame["member"]["client"], "c2");

        let reference = RawValue::from_string("7".into()).unwrap();
        let count = PresenceCount {
            clients: 3,
            users: 2,
        };
        let frame: Value =
            serde_json::from_str(&count_frame("lobby:1", count, Some(&reference))).unwrap();
        assert_eq!(
            frame,
            json!({"op": "presence_count", "room": "lobby:1", "clients": 3, "users": 2, "ref": 7})
        );
    }
}
