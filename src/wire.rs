//! The WebSocket wire format (PROTOCOL.md §2): client frames parsed in one place into
//! [`ClientFrame`], server frames encoded by [`reply`], [`error_frame`] and [`event_frame`].

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_actors::{Event, Gap, GapReason, NewEvent, Room};

use crate::{Error, ErrorCode};

/// A parsed client frame, with the `ref` to echo in the direct reply.
#[derive(Debug)]
pub struct ClientFrame {
    /// The frame's `ref`, raw JSON (a string or a number).
    pub reference: Option<Box<RawValue>>,
    /// What the client asks.
    pub op: ClientOp,
}

/// What a client can ask.
#[derive(Debug)]
pub enum ClientOp {
    /// Join a room.
    Subscribe {
        /// The room.
        room: String,
    },
    /// Leave a room.
    Unsubscribe {
        /// The room.
        room: String,
    },
    /// Publish an event in a room.
    Publish {
        /// The room.
        room: String,
        /// `{"type": ..., "data": ...}`, kept raw to measure and forward it.
        event: Box<RawValue>,
    },
    /// Application-level ping.
    Ping,
    /// Authenticate, or renew before the token expires.
    Auth {
        /// The JWT. Never logged.
        token: String,
    },
}

#[derive(Deserialize)]
struct RoomFields {
    room: String,
}

#[derive(Deserialize)]
struct TokenFields {
    token: String,
}

#[derive(Deserialize)]
struct PublishFields {
    room: String,
    event: Box<RawValue>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default, borrow)]
    op: Option<&'a RawValue>,
    #[serde(rename = "ref", default)]
    reference: Option<Box<RawValue>>,
}

/// Parses a text frame. On error, returns the `ref` (when one could be read) with it,
/// so the error reply can carry it.
pub fn parse_frame(text: &str) -> Result<ClientFrame, (Option<Box<RawValue>>, Error)> {
    if !text.trim_start().starts_with('{') {
        return Err((None, Error::BadFrame("a frame is a JSON object".into())));
    }
    let head: Head<'_> = serde_json::from_str(text)
        .map_err(|e| (None, Error::BadFrame(format!("not valid JSON: {e}"))))?;
    let reference = head.reference.filter(|r| is_valid_ref(r));
    let op = match head.op.map(|raw| serde_json::from_str::<String>(raw.get())) {
        Some(Ok(op)) => op,
        Some(Err(_)) => return Err((reference, Error::BadFrame("`op` must be a string".into()))),
        None => return Err((reference, Error::BadFrame("missing `op`".into()))),
    };
    let parsed = match op.as_str() {
        "subscribe" => {
            serde_json::from_str(text).map(|f: RoomFields| ClientOp::Subscribe { room: f.room })
        }
        "unsubscribe" => {
            serde_json::from_str(text).map(|f: RoomFields| ClientOp::Unsubscribe { room: f.room })
        }
        "publish" => serde_json::from_str(text).map(|f: PublishFields| ClientOp::Publish {
            room: f.room,
            event: f.event,
        }),
        "ping" => Ok(ClientOp::Ping),
        "auth" => {
            serde_json::from_str(text).map(|f: TokenFields| ClientOp::Auth { token: f.token })
        }
        _ => return Err((reference, Error::UnknownOp(op))),
    };
    match parsed {
        Ok(op) => Ok(ClientFrame { reference, op }),
        Err(e) => Err((reference, Error::BadFrame(format!("bad `{op}` frame: {e}")))),
    }
}

fn is_valid_ref(raw: &RawValue) -> bool {
    let text = raw.get();
    text.starts_with('"') || text.starts_with('-') || text.starts_with(|c: char| c.is_ascii_digit())
}

/// Validates a room name from a client.
pub fn room(name: &str) -> Result<Room, Error> {
    Room::new(name).map_err(Error::from_room)
}

/// Checks an event a client wants to publish: the room (not a `system:` one), the
/// size (`limit` bytes of JSON) and the shape (`type` a non-empty string, `data` any
/// JSON, absent meaning `null`).
pub fn new_event(
    room_name: &str,
    event: &RawValue,
    limit: usize,
) -> Result<(Room, NewEvent), Error> {
    let room = room(room_name)?;
    if room.is_system() {
        return Err(Error::NotAllowed(format!("{room} belongs to the servers")));
    }
    let size = event.get().len();
    if size > limit {
        return Err(Error::TooLarge { size, limit });
    }
    let event = NewEvent::from_json(event.get()).map_err(|e| Error::BadFrame(e.to_string()))?;
    Ok((room, event))
}

/// A direct reply to a client frame.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply<'a> {
    /// The room's subscription is confirmed.
    Subscribed {
        /// The room.
        room: &'a str,
    },
    /// The session is not in the room (any more).
    Unsubscribed {
        /// The room.
        room: &'a str,
        /// Why the server left it on its own; `None` for the client's `unsubscribe`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<LeaveReason>,
    },
    /// Redis accepted the event.
    Published {
        /// The room.
        room: &'a str,
    },
    /// Answer to `ping`.
    Pong,
    /// The token was accepted (`sub` is `None` when authentication is off).
    Authenticated {
        /// The user.
        sub: Option<&'a str>,
    },
}

/// Why the server took a session out of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// A fresh token does not allow the room (PROTOCOL.md §6).
    NotAllowed,
}

#[derive(Serialize)]
struct WithRef<'a, T: Serialize> {
    #[serde(flatten)]
    body: T,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(tag = "op", rename = "error")]
struct ErrorBody<'a> {
    code: ErrorCode,
    message: &'a str,
}

/// Encodes a reply, with the request's `ref` when it had one.
pub fn reply(reply: Reply<'_>, reference: Option<&RawValue>) -> ByteString {
    encode(&WithRef {
        body: reply,
        reference,
    })
}

/// Encodes an `error` frame.
pub fn error_frame(error: &Error, reference: Option<&RawValue>) -> ByteString {
    let message = error.to_string();
    let body = ErrorBody {
        code: error.code(),
        message: &message,
    };
    encode(&WithRef { body, reference })
}

/// The `event` frame of an event; computed once per event and shared by every session
/// (see [`Event::wire_encoding`]). A frame over `max_bytes` (`LIMIT_OUTBOUND_BYTES`:
/// no client could take it) is logged here, once per event and server; each session
/// then skips it.
pub fn event_frame(event: &Event, max_bytes: usize) -> ByteString {
    event.wire_encoding(|event| {
        // Room names need no JSON escaping (PROTOCOL.md §1 characters only), and the
        // envelope is JSON already: the frame is a concatenation, not a re-encoding.
        let (room, json) = (event.room().as_str(), &**event.json());
        let mut frame = String::with_capacity(json.len() + room.len() + 32);
        frame.push_str(r#"{"op":"event","room":""#);
        frame.push_str(room);
        frame.push_str(r#"","event":"#);
        frame.push_str(json);
        frame.push('}');
        if crate::outbound::frame_len(frame.len()) > max_bytes {
            log::warn!(
                "room {room}: an event frame of {} bytes is over LIMIT_OUTBOUND_BYTES \
                 ({max_bytes}); no client can take it, it is skipped",
                frame.len()
            );
        }
        frame.into()
    })
}

/// The `gap` frame: `{"op":"gap","room":"r","reason":"link_lost"}` (PROTOCOL.md §8).
pub fn gap_frame(gap: &Gap) -> ByteString {
    #[derive(Serialize)]
    #[serde(tag = "op", rename = "gap")]
    struct GapFrame<'a> {
        room: &'a str,
        reason: GapReason,
    }
    encode(&GapFrame {
        room: gap.room.as_str(),
        reason: gap.reason,
    })
}

fn encode(value: &impl Serialize) -> ByteString {
    serde_json::to_string(value)
        .expect("server frames serialize")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn code_of(text: &str) -> ErrorCode {
        parse_frame(text).expect_err(text).1.code()
    }

    #[test]
    fn parses_each_op() {
        let frame = parse_frame(r#"{"op":"subscribe","room":"match:42","ref":7}"#).unwrap();
        assert!(matches!(frame.op, ClientOp::Subscribe { room } if room == "match:42"));
        assert_eq!(frame.reference.unwrap().get(), "7");
        assert!(matches!(
            parse_frame(r#"{"op":"ping"}"#).unwrap().op,
            ClientOp::Ping
        ));
        let publish = r#"{"op":"publish","room":"r","event":{"type":"t","data":{}}}"#;
        assert!(matches!(
            parse_frame(publish).unwrap().op,
            ClientOp::Publish { .. }
        ));
    }

    #[test]
    fn classifies_bad_frames() {
        assert_eq!(code_of("hello"), ErrorCode::BadFrame);
        assert_eq!(code_of("[1]"), ErrorCode::BadFrame);
        assert_eq!(code_of(r#"{"room":"r"}"#), ErrorCode::BadFrame);
        assert_eq!(code_of(r#"{"op":5}"#), ErrorCode::BadFrame);
        assert_eq!(code_of(r#"{"op":"subscribe"}"#), ErrorCode::BadFrame);
        assert_eq!(
            code_of(r#"{"op":"subscribe","room":5}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(code_of(r#"{"op":"dance"}"#), ErrorCode::UnknownOp);
    }

    #[test]
    fn keeps_the_ref_of_a_refused_frame() {
        let (reference, _) = parse_frame(r#"{"op":"dance","ref":"a1"}"#).unwrap_err();
        assert_eq!(reference.unwrap().get(), r#""a1""#);
        let (reference, _) = parse_frame(r#"{"op":"dance","ref":{"x":1}}"#).unwrap_err();
        assert!(reference.is_none());
    }

    #[test]
    fn checks_events_in_order_room_system_size_shape() {
        let ok = RawValue::from_string(r#"{"type":"t","data":[1]}"#.into()).unwrap();
        assert!(new_event("match:1", &ok, 100).is_ok());
        assert_eq!(
            new_event("bad room", &ok, 100).unwrap_err().code(),
            ErrorCode::BadRoom
        );
        assert_eq!(
            new_event("system:events", &ok, 100).unwrap_err().code(),
            ErrorCode::NotAllowed
        );
        assert_eq!(
            new_event("match:1", &ok, 5).unwrap_err().code(),
            ErrorCode::TooLarge
        );
        let no_type = RawValue::from_string(r#"{"data":1}"#.into()).unwrap();
        assert_eq!(
            new_event("match:1", &no_type, 100).unwrap_err().code(),
            ErrorCode::BadFrame
        );
        let empty_type = RawValue::from_string(r#"{"type":""}"#.into()).unwrap();
        assert_eq!(
            new_event("match:1", &empty_type, 100).unwrap_err().code(),
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn encodes_replies_with_ref() {
        let reference = RawValue::from_string("\"x\"".into()).unwrap();
        let text = reply(Reply::Subscribed { room: "r" }, Some(&reference));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op": "subscribed", "room": "r", "ref": "x"})
        );
        let text = error_frame(&Error::UnknownOp("dance".into()), None);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["op"], "error");
        assert_eq!(v["code"], "unknown_op");
        assert!(v.get("ref").is_none());
    }

    #[test]
    fn gap_frames_name_the_room_and_the_reason() {
        let gap = Gap {
            room: Room::new("m:1").unwrap(),
            reason: GapReason::LinkLost,
        };
        let v: serde_json::Value = serde_json::from_str(&gap_frame(&gap)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op": "gap", "room": "m:1", "reason": "link_lost"})
        );
    }

    #[test]
    fn event_frame_wraps_the_envelope() {
        let raw = r#"{"type":"x","data":{"a":"\"q\""}}"#;
        let event = Event::parse(
            Room::new("m:1").unwrap(),
            Bytes::from_static(raw.as_bytes()),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&event_frame(&event, 1 << 20)).unwrap();
        assert_eq!(v["op"], "event");
        assert_eq!(v["room"], "m:1");
        assert_eq!(
            v["event"],
            serde_json::from_str::<serde_json::Value>(raw).unwrap()
        );
    }
}
