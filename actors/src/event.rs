//! The envelope (PROTOCOL.md §1): encoded once, shared by every recipient.

use std::{
    borrow::Cow,
    sync::OnceLock,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use bytestring::ByteString;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    durable::{Epoch, IdempotencyKey, Position},
    presence::PresenceKind,
    Error, Room,
};

/// An event on its way out: what a publisher hands the broker. The broker adds
/// `serverId` and `timestamp` and encodes it once into an [`Event`].
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The event type, e.g. `match_started`; never empty.
    pub kind: String,
    /// The `data` field, already JSON.
    pub data: Box<RawValue>,
}

impl NewEvent {
    /// An event of type `kind` whose `data` is `data` serialized to JSON.
    pub fn new(kind: impl Into<String>, data: &impl Serialize) -> Result<NewEvent, Error> {
        let data = serde_json::value::to_raw_value(data)
            .map_err(|e| Error::InvalidEvent(format!("data does not serialize: {e}")))?;
        NewEvent::from_raw(kind.into(), data)
    }

    /// An event from its JSON, `{"type": "...", "data": ...}`: `type` a non-empty
    /// string, `data` any JSON (absent means `null`); other fields are dropped.
    pub fn from_json(json: &str) -> Result<NewEvent, Error> {
        #[derive(Deserialize)]
        struct Body {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            data: Option<Box<RawValue>>,
        }
        let body: Body = serde_json::from_str(json).map_err(|e| {
            Error::InvalidEvent(format!(
                "an event is {{\"type\": string, \"data\": any}}: {e}"
            ))
        })?;
        let data = body
            .data
            .unwrap_or_else(|| RawValue::from_string("null".into()).expect("null is JSON"));
        NewEvent::from_raw(body.kind, data)
    }

    /// An event from a type and `data` that is already JSON.
    pub fn from_raw(kind: String, data: Box<RawValue>) -> Result<NewEvent, Error> {
        if kind.is_empty() {
            return Err(Error::InvalidEvent(
                "`type` must be a non-empty string".into(),
            ));
        }
        Ok(NewEvent { kind, data })
    }
}

/// One event in one room, as it travels on Redis: the envelope's JSON text plus
/// the two fields the servers look at. Built once per publish or per Redis
/// message and shared behind an `Arc` by every recipient.
#[derive(Debug)]
pub struct Event {
    room: Room,
    kind: Box<str>,
    server_id: Option<Box<str>>,
    /// In a durable room, the event's place in the numbering (the envelope's `offset`
    /// and `epoch`, set in Redis).
    position: Option<Position>,
    /// The envelope carries an `idempotencyKey`: a keyed publish, which reaches its
    /// own server through the backplane too (PROTOCOL.md §2).
    keyed: bool,
    /// A presence script's envelope (`"presence": "join"` or `"leave"`, the member in
    /// `data`): not an event of the room but news of its members (PROTOCOL.md §9).
    presence: Option<PresenceKind>,
    json: ByteString,
    /// A transport's encoding of this event (the WebSocket `event` frame), made by the
    /// first recipient that needs it and shared by the rest, so an event is encoded
    /// once per server, not once per client. A `OnceLock`, not a mutex: readers never
    /// wait once it is set.
    wire: OnceLock<ByteString>,
    /// For an event from Redis picked by the stage sampler (`stages.rs`): when it was
    /// parsed, and when the broker handed it out.
    timing: Option<Timing>,
}

/// The timestamps of a sampled event.
#[derive(Debug)]
struct Timing {
    parsed: Instant,
    dispatched: OnceLock<Instant>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "serverId", default, borrow)]
    server_id: Option<&'a RawValue>,
    #[serde(default)]
    offset: Option<&'a RawValue>,
    #[serde(default, borrow)]
    epoch: Option<&'a RawValue>,
    #[serde(rename = "idempotencyKey", default)]
    key: Option<&'a RawValue>,
    #[serde(default, borrow)]
    presence: Option<&'a RawValue>,
}

impl Head<'_> {
    /// The event's position: an integer `offset` with a valid string `epoch`, as the
    /// publish script writes them. Anything else is a foreign envelope's own field.
    fn position(&self) -> Option<Position> {
        let offset = self.offset?.get().parse::<u64>().ok()?;
        let epoch = serde_json::from_str::<Cow<'_, str>>(self.epoch?.get()).ok()?;
        Some(Position {
            offset,
            epoch: Epoch::new(&epoch).ok()?,
        })
    }
}

#[derive(Serialize)]
struct Outgoing<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: &'a RawValue,
    #[serde(rename = "serverId")]
    server_id: &'a str,
    timestamp: u64,
    #[serde(rename = "idempotencyKey", skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

impl Event {
    /// Encodes a new event from this server: the envelope with `serverId` and
    /// `timestamp`, and the publish's idempotency key when it has one.
    pub fn encode(
        room: Room,
        event: &NewEvent,
        server_id: &str,
        key: Option<&IdempotencyKey>,
    ) -> Event {
        let envelope = Outgoing {
            kind: &event.kind,
            data: &event.data,
            server_id,
            timestamp: now_ms(),
            key: key.map(IdempotencyKey::as_str),
        };
        let json = serde_json::to_string(&envelope).expect("an envelope of raw JSON serializes");
        Event {
            room,
            kind: event.kind.as_str().into(),
            server_id: Some(server_id.into()),
            position: None,
            keyed: key.is_some(),
            presence: None,
            json: json.into(),
            wire: OnceLock::new(),
            timing: None,
        }
    }

    /// Validates a payload received from Redis: a UTF-8 JSON object whose `type` is a
    /// non-empty string. Everything else in it is kept as received.
    pub fn parse(room: Room, payload: Bytes) -> Result<Event, Error> {
        let first = payload.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(Error::InvalidEvent("not a JSON object".into()));
        }
        let head: Head<'_> = serde_json::from_slice(&payload)
            .map_err(|e| Error::InvalidEvent(format!("not a valid envelope: {e}")))?;
        if head.kind.is_empty() {
            return Err(Error::InvalidEvent("`type` is empty".into()));
        }
        let server_id = head
            .server_id
            .and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok())
            .map(|id| id.into());
        let position = head.position();
        let keyed = head.key.is_some();
        // A presence script's envelope: type `presence` and `"presence": "join"` or
        // `"leave"`. Any other `presence` field is a foreign envelope's own.
        let presence = head
            .presence
            .filter(|_| head.kind == "presence")
            .and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok())
            .and_then(|word| PresenceKind::parse(&word));
        let kind = head.kind.into();
        let json =
            ByteString::try_from(payload).map_err(|_| Error::InvalidEvent("not UTF-8".into()))?;
        let timing = crate::stages::sample().then(|| Timing {
            parsed: Instant::now(),
            dispatched: OnceLock::new(),
        });
        Ok(Event {
            room,
            kind,
            server_id,
            position,
            keyed,
            presence,
            json,
            wire: OnceLock::new(),
            timing,
        })
    }

    /// The envelope numbered: `offset` and `epoch` added, as the publish script adds
    /// them in Redis (the memory backplane's durable rooms).
    pub fn numbered(&self, position: &Position) -> Event {
        let json = format!(
            "{},\"offset\":{},\"epoch\":\"{}\"}}",
            self.open_json(),
            position.offset,
            position.epoch
        );
        Event::parse(self.room.clone(), Bytes::from(json)).expect("a numbered envelope parses")
    }

    /// The envelope's JSON without its closing `}`, for the publish script to add
    /// `offset` and `epoch` to.
    pub fn open_json(&self) -> &str {
        let json: &str = &self.json;
        json.trim_end()
            .strip_suffix('}')
            .expect("an envelope is a JSON object")
    }

    /// In a durable room, the event's offset.
    pub fn offset(&self) -> Option<u64> {
        Some(self.position.as_ref()?.offset)
    }

    /// In a durable room, the event's offset and epoch.
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// For a presence script's envelope, whether a member joined or left.
    pub fn presence(&self) -> Option<PresenceKind> {
        self.presence
    }

    /// Whether the envelope carries an idempotency key (a keyed publish).
    pub fn is_keyed(&self) -> bool {
        self.keyed
    }

    /// For a sampled event: records the subscriber-to-broker stage and stamps the
    /// hand-out (called by the broker as it delivers).
    pub fn mark_dispatched(&self) {
        if let Some(timing) = &self.timing {
            let now = Instant::now();
            if timing.dispatched.set(now).is_ok() {
                crate::stages::STAGES
                    .record(crate::stages::Stage::RedisToBroker, now - timing.parsed);
            }
        }
    }

    /// When the broker handed a sampled event out; `None` for the others.
    pub fn dispatched_at(&self) -> Option<Instant> {
        self.timing.as_ref()?.dispatched.get().copied()
    }

    /// The room the event was published in.
    pub fn room(&self) -> &Room {
        &self.room
    }

    /// The event's `type`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The publishing server's id, when the envelope carries one.
    pub fn server_id(&self) -> Option<&str> {
        self.server_id.as_deref()
    }

    /// The envelope's JSON text, exactly as it travels on Redis.
    pub fn json(&self) -> &ByteString {
        &self.json
    }

    /// Decodes the envelope's `data` field as `T`.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, Error> {
        #[derive(Deserialize)]
        struct Data<T> {
            data: T,
        }
        serde_json::from_str::<Data<T>>(&self.json)
            .map(|d| d.data)
            .map_err(|e| Error::InvalidEvent(format!("data does not decode: {e}")))
    }

    /// The envelope's `data` as raw JSON, borrowed from the envelope (nothing decoded
    /// is kept with the event: a durable room's ring holds events long after their
    /// fan-out). `None` when the envelope has none.
    pub fn data_raw(&self) -> Option<&RawValue> {
        #[derive(Deserialize)]
        struct Data<'a> {
            #[serde(borrow)]
            data: Option<&'a RawValue>,
        }
        serde_json::from_str::<Data<'_>>(&self.json).ok()?.data
    }

    /// Decodes the whole envelope as `T`, typically a channel's event enum
    /// (see [`crate::events`]); extra envelope fields are ignored.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(&self.json)
            .map_err(|e| Error::InvalidEvent(format!("does not decode: {e}")))
    }

    /// This event's transport encoding: computed by `encode` on first use, then shared.
    pub fn wire_encoding(&self, encode: impl FnOnce(&Event) -> ByteString) -> ByteString {
        self.wire.get_or_init(|| encode(self)).clone()
    }
}

/// Milliseconds since the Unix epoch, the unit of every time in the contract.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> Room {
        Room::new("match:42").unwrap()
    }

    #[test]
    fn encodes_the_envelope_with_server_id_and_timestamp() {
        let new = NewEvent::new("match_started", &serde_json::json!({"id": 7})).unwrap();
        let event = Event::encode(room(), &new, "server_1_2", None);
        let v: serde_json::Value = serde_json::from_str(event.json()).unwrap();
        assert_eq!(v["type"], "match_started");
        assert_eq!(v["data"]["id"], 7);
        assert_eq!(v["serverId"], "server_1_2");
        assert!(v["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
        assert_eq!(event.server_id(), Some("server_1_2"));
    }

    #[test]
    fn only_a_presence_scripts_envelope_is_presence_news() {
        let parse = |raw: &'static str| Event::parse(room(), Bytes::from_static(raw.as_bytes()));
        let news = parse(r#"{"type":"presence","presence":"leave","data":{"client":"c"}}"#);
        assert_eq!(news.unwrap().presence(), Some(PresenceKind::Leave));
        for foreign in [
            r#"{"type":"status","presence":"join","data":{}}"#,
            r#"{"type":"presence","presence":{"online":true}}"#,
            r#"{"type":"presence","presence":5}"#,
            r#"{"type":"presence","presence":"away"}"#,
        ] {
            let event = parse(foreign).expect("a foreign envelope with a presence field is valid");
            assert_eq!(event.presence(), None, "{foreign}");
        }
    }

    #[test]
    fn parses_foreign_envelopes_verbatim() {
        let raw = r#"{"type":"match_started","data":{"id":1},"extra":"kept"}"#;
        let event = Event::parse(room(), Bytes::from_static(raw.as_bytes())).unwrap();
        assert_eq!(&**event.json(), raw);
        assert_eq!(event.kind(), "match_started");
        assert_eq!(event.server_id(), None);
        assert_eq!(event.data::<serde_json::Value>().unwrap()["id"], 1);
    }

    #[test]
    fn refuses_what_is_not_an_envelope() {
        for raw in [
            "not json",
            "[1,2]",
            r#"["match_started"]"#,
            r#"{"type":""}"#,
            r#"{"data":1}"#,
            r#"{"type":5}"#,
            r#"{"type":"x"} trailing"#,
            "",
        ] {
            let got = Event::parse(room(), Bytes::copy_from_slice(raw.as_bytes()));
            assert!(matches!(got, Err(Error::InvalidEvent(_))), "{raw:?}");
        }
        assert!(Event::parse(room(), Bytes::from_static(b"{\"type\":\"\xff\"}")).is_err());
    }

    #[test]
    fn a_non_string_server_id_is_not_ours() {
        let raw = r#"{"type":"x","serverId":5}"#;
        let event = Event::parse(room(), Bytes::from_static(raw.as_bytes())).unwrap();
        assert_eq!(event.server_id(), None);
    }

    #[test]
    fn wire_encoding_runs_once() {
        let event = Event::parse(room(), Bytes::from_static(br#"{"type":"x"}"#)).unwrap();
        let mut calls = 0;
        for _ in 0..3 {
            event.wire_encoding(|_| {
                calls += 1;
                ByteString::from_static("frame")
            });
        }
        assert_eq!(calls, 1);
    }

    #[test]
    fn reads_the_position_the_script_adds_and_only_that() {
        let new = NewEvent::new("x", &1).unwrap();
        let event = Event::encode(room(), &new, "s", None);
        let position = Position {
            offset: 7,
            epoch: Epoch::new("e1").unwrap(),
        };
        let numbered = event.numbered(&position);
        assert_eq!(numbered.position(), Some(&position));
        assert_eq!(numbered.data::<u32>().unwrap(), 1);
        for raw in [
            r#"{"type":"x","offset":"7","epoch":"e"}"#,
            r#"{"type":"x","offset":-1,"epoch":"e"}"#,
            r#"{"type":"x","offset":7}"#,
            r#"{"type":"x","offset":7,"epoch":""}"#,
        ] {
            let got = Event::parse(room(), Bytes::from_static(raw.as_bytes())).unwrap();
            assert_eq!(got.position(), None, "{raw}");
        }
    }

    #[test]
    fn a_keyed_envelope_says_so() {
        let new = NewEvent::new("x", &1).unwrap();
        let key = IdempotencyKey::new("k-1").unwrap();
        let event = Event::encode(room(), &new, "s", Some(&key));
        assert!(event.json().contains(r#""idempotencyKey":"k-1""#));
        let parsed = Event::parse(room(), Bytes::from(event.json().to_string())).unwrap();
        assert!(parsed.is_keyed());
    }

    #[test]
    fn new_event_needs_a_type() {
        assert!(NewEvent::new("", &1).is_err());
    }
}
