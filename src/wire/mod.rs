//! The WebSocket wire format (PROTOCOL.md §2): client frames parsed in one place into
//! [`ClientFrame`], server frames encoded by [`reply`], [`error_frame`] and [`event_frame`].

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_actors::{
    durable::{Epoch, IdempotencyKey, Since},
    Event, Gap, GapReason, History, NewEvent, Room,
};

use crate::{filter::Filter, Error, ErrorCode};

mod presence;

pub use presence::{change_frame, count_frame, presence_frame, PresenceAnswer};

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
    /// Join a room; in a durable room, recover what followed `since`.
    Subscribe {
        /// The room.
        room: String,
        /// The last event the client has (PROTOCOL.md §7).
        since: Option<Since>,
        /// Only the events it lets through reach the client (PROTOCOL.md §12); a
        /// subscribe without one lets every event through.
        filter: Option<Filter>,
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
        /// The publish's idempotency key.
        key: Option<IdempotencyKey>,
    },
    /// Read a durable room's history.
    History {
        /// The room.
        room: String,
        /// The events after this one; without it, the latest `limit`.
        since: Option<Since>,
        /// At most this many events (checked against `HISTORY_SIZE` by the session).
        limit: Option<u64>,
    },
    /// The members of a presence room, on every server.
    Presence {
        /// The room.
        room: String,
    },
    /// A presence room's counts.
    PresenceCount {
        /// The room.
        room: String,
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
struct SubscribeFields {
    room: String,
    #[serde(default)]
    since: Option<Box<RawValue>>,
    #[serde(default)]
    filter: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct PublishFields {
    room: String,
    event: Box<RawValue>,
    #[serde(rename = "idempotencyKey", default)]
    key: Option<String>,
}

#[derive(Deserialize)]
struct HistoryFields {
    room: String,
    #[serde(default)]
    since: Option<Box<RawValue>>,
    #[serde(default)]
    limit: Option<Box<RawValue>>,
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
        "subscribe" => fields(text).and_then(|f: SubscribeFields| {
            Ok(ClientOp::Subscribe {
                room: f.room,
                since: f.since.as_deref().map(parse_since).transpose()?,
                filter: f.filter.as_deref().map(Filter::parse).transpose()?,
            })
        }),
        "unsubscribe" => fields(text).map(|f: RoomFields| ClientOp::Unsubscribe { room: f.room }),
        "publish" => fields(text).and_then(|f: PublishFields| {
            let key = f.key.as_deref().map(IdempotencyKey::new).transpose();
            Ok(ClientOp::Publish {
                room: f.room,
                event: f.event,
                key: key.map_err(|e| e.to_string())?,
            })
        }),
        "history" => fields(text).and_then(|f: HistoryFields| {
            Ok(ClientOp::History {
                room: f.room,
                since: f.since.as_deref().map(parse_since).transpose()?,
                limit: f.limit.as_deref().map(parse_limit).transpose()?,
            })
        }),
        "presence" => fields(text).map(|f: RoomFields| ClientOp::Presence { room: f.room }),
        "presence_count" => {
            fields(text).map(|f: RoomFields| ClientOp::PresenceCount { room: f.room })
        }
        "ping" => Ok(ClientOp::Ping),
        "auth" => fields(text).map(|f: TokenFields| ClientOp::Auth { token: f.token }),
        _ => return Err((reference, Error::UnknownOp(op))),
    };
    match parsed {
        Ok(op) => Ok(ClientFrame { reference, op }),
        Err(why) => Err((
            reference,
            Error::BadFrame(format!("bad `{op}` frame: {why}")),
        )),
    }
}

/// A frame's fields, or why they are not there.
fn fields<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// A `since`: `{"offset": a non-negative integer, "epoch": a string of 1-64 characters}`.
fn parse_since(raw: &RawValue) -> Result<Since, String> {
    #[derive(Deserialize)]
    struct SinceFields {
        offset: serde_json::Value,
        epoch: serde_json::Value,
    }
    let fields: SinceFields = serde_json::from_str(raw.get())
        .map_err(|e| format!("`since` is {{\"offset\": integer, \"epoch\": string}}: {e}"))?;
    let offset = fields
        .offset
        .as_u64()
        .ok_or("`since.offset` must be a non-negative integer")?;
    let epoch = fields
        .epoch
        .as_str()
        .ok_or("`since.epoch` must be a string")?;
    let epoch = Epoch::new(epoch).map_err(|_| {
        format!(
            "`since.epoch` has 1 to {} characters, got {}",
            Epoch::MAX_LEN,
            epoch.len()
        )
    })?;
    Ok(Since { offset, epoch })
}

/// A `limit`: a positive integer (its upper bound is the session's to check).
fn parse_limit(raw: &RawValue) -> Result<u64, String> {
    serde_json::from_str::<u64>(raw.get())
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| "`limit` must be a positive integer".to_owned())
}

fn is_valid_ref(raw: &RawValue) -> bool {
    let text = raw.get();
    text.starts_with('"') || text.starts_with('-') || text.starts_with(|c: char| c.is_ascii_digit())
}

/// Checks a history read's `limit` (PROTOCOL.md §7): 1 to `HISTORY_SIZE`; `None`
/// for a value that is not a positive integer.
pub fn history_limit(limit: Option<u64>, history_size: usize) -> Result<usize, Error> {
    match limit {
        Some(n) if n >= 1 && n <= history_size as u64 => Ok(n as usize),
        _ => Err(Error::BadFrame(format!(
            "`limit` is 1 to {history_size} (HISTORY_SIZE)"
        ))),
    }
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
        /// In a durable room: the events after this offset follow.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// In a durable room: the numbering's epoch.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        /// With `since`: whether every event after it follows.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
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
        /// In a durable room: the event's offset.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// In a durable room: the numbering's epoch.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
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

/// The `gap` frame: `{"op":"gap","room":"r","reason":"link_lost"}`, with `epoch` and
/// `offset` in a durable room (PROTOCOL.md §8).
pub fn gap_frame(gap: &Gap) -> ByteString {
    #[derive(Serialize)]
    #[serde(tag = "op", rename = "gap")]
    struct GapFrame<'a> {
        room: &'a str,
        reason: GapReason,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    }
    let position = gap.position.as_ref();
    encode(&GapFrame {
        room: gap.room.as_str(),
        reason: gap.reason,
        epoch: position.map(|p| p.epoch.as_str()),
        offset: position.map(|p| p.offset),
    })
}

/// A history answer (PROTOCOL.md §7), as the `history` frame and the body of
/// `GET /history/{room}`: the events are the envelopes as they are, not re-encoded.
#[derive(Debug, Serialize)]
pub struct HistoryAnswer<'a> {
    /// The room.
    pub room: &'a str,
    /// The room's current offset.
    pub offset: u64,
    /// The room's epoch.
    pub epoch: &'a str,
    /// Whether every event after `since` could be had.
    pub recovered: bool,
    /// The envelopes, ascending.
    pub events: Vec<&'a RawValue>,
    /// Whether more events follow the last one.
    pub more: bool,
}

impl<'a> HistoryAnswer<'a> {
    /// The answer for a history read, cut at `max_bytes` of envelopes (at least one
    /// event; `more` then says the reader should ask again).
    pub fn new(room: &'a str, history: &'a History, max_bytes: usize) -> HistoryAnswer<'a> {
        let (current, events) = (&history.current, &history.events);
        let mut bytes = 0;
        let mut kept = Vec::with_capacity(events.len());
        for event in events {
            bytes += event.json().len() + 1;
            if bytes > max_bytes && !kept.is_empty() {
                break;
            }
            kept.push(
                serde_json::from_str::<&RawValue>(event.json()).expect("an envelope is JSON"),
            );
        }
        let cut = kept.len() < events.len();
        HistoryAnswer {
            room,
            offset: current.offset,
            epoch: current.epoch.as_str(),
            recovered: history.recovered,
            events: kept,
            more: history.more || cut,
        }
    }
}

/// The `history` frame, with the request's `ref`.
pub fn history_frame(answer: &HistoryAnswer<'_>, reference: Option<&RawValue>) -> ByteString {
    #[derive(Serialize)]
    #[serde(tag = "op", rename = "history")]
    struct Frame<'a, 'b> {
        #[serde(flatten)]
        answer: &'b HistoryAnswer<'a>,
    }
    encode(&WithRef {
        body: Frame { answer },
        reference,
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
        assert!(
            matches!(frame.op, ClientOp::Subscribe { room, since: None, filter: None } if room == "match:42")
        );
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
        let subscribed = Reply::Subscribed {
            room: "r",
            offset: None,
            epoch: None,
            recovered: None,
        };
        let text = reply(subscribed, Some(&reference));
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
            position: None,
        };
        let v: serde_json::Value = serde_json::from_str(&gap_frame(&gap)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op": "gap", "room": "m:1", "reason": "link_lost"})
        );
    }

    #[test]
    fn parses_since_limit_and_key_and_refuses_bad_ones() {
        let frame =
            parse_frame(r#"{"op":"subscribe","room":"r","since":{"offset":5,"epoch":"e"}}"#)
                .unwrap();
        let ClientOp::Subscribe {
            since: Some(since), ..
        } = frame.op
        else {
            panic!("a subscribe with since");
        };
        assert_eq!((since.offset, since.epoch.as_str()), (5, "e"));
        let frame = parse_frame(r#"{"op":"history","room":"r","limit":10}"#).unwrap();
        assert!(matches!(
            frame.op,
            ClientOp::History {
                limit: Some(10),
                since: None,
                ..
            }
        ));
        let long = "e".repeat(65);
        for bad in [
            r#"{"op":"subscribe","room":"r","since":{"offset":-1,"epoch":"e"}}"#.to_owned(),
            r#"{"op":"subscribe","room":"r","since":{"offset":1.5,"epoch":"e"}}"#.to_owned(),
            r#"{"op":"subscribe","room":"r","since":{"offset":"5","epoch":"e"}}"#.to_owned(),
            r#"{"op":"subscribe","room":"r","since":{"offset":5,"epoch":7}}"#.to_owned(),
            r#"{"op":"subscribe","room":"r","since":{"offset":5,"epoch":""}}"#.to_owned(),
            format!(r#"{{"op":"subscribe","room":"r","since":{{"offset":5,"epoch":"{long}"}}}}"#),
            r#"{"op":"subscribe","room":"r","since":5}"#.to_owned(),
            r#"{"op":"history","room":"r","limit":0}"#.to_owned(),
            r#"{"op":"history","room":"r","limit":"9"}"#.to_owned(),
            r#"{"op":"publish","room":"r","event":{"type":"t"},"idempotencyKey":""}"#.to_owned(),
            r#"{"op":"publish","room":"r","event":{"type":"t"},"idempotencyKey":"a b"}"#.to_owned(),
        ] {
            let (_, error) = parse_frame(&bad).expect_err(&bad);
            assert_eq!(error.code(), ErrorCode::BadFrame, "{bad}");
        }
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
