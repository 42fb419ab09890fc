//! Property tests of the two parsers that read what other parties send: the client
//! frame parser ([`switchboard::wire::parse_frame`], PROTOCOL.md §2) and the Redis
//! envelope parser ([`Event::parse`], §1). Neither may panic on anything, and valid
//! inputs must come out as what went in.
//!
//! Each property runs [`DEFAULT_CASES`] cases in the suite; set `PROPTEST_CASES` for
//! more (`PROPTEST_CASES=100000 cargo test --test parsers_fuzz`).

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use switchboard::actors::{Event, Room};
use switchboard::wire::{parse_frame, ClientOp};
use switchboard::ErrorCode;

/// Cases per property in the suite (a few seconds in all in a debug build).
const DEFAULT_CASES: u32 = 2000;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        // The failure file would land in the source tree; the seed is printed instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn room() -> Room {
    Room::new("r").expect("a valid room")
}

/// Any JSON value, nested a few levels, with keys that sometimes hit the fields the
/// parsers look at.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        field_name().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Keys and strings that matter to the parsers, and some that do not.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "op", "ref", "room", "event", "token", "type", "data", "serverId", "timestamp",
            "subscribe", "unsubscribe", "publish", "ping", "auth", "",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z_]{1,8}",
    ]
}

/// A room name as PROTOCOL.md §1 allows it.
fn room_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_:.-]{1,200}"
}

/// A `ref`: a string or a number, or none.
fn reference() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        any::<String>().prop_map(|s| Some(Value::from(s))),
        any::<u32>().prop_map(|n| Some(Value::from(n))),
        any::<i32>().prop_map(|n| Some(Value::from(n))),
    ]
}

/// A non-empty event type.
fn event_type() -> impl Strategy<Value = String> {
    any::<String>().prop_filter("non-empty", |s| !s.is_empty())
}

/// The JSON of a valid client frame, and the op it must parse to.
#[derive(Debug, Clone)]
enum ValidOp {
    Subscribe(String),
    Unsubscribe(String),
    Publish(String, Value),
    Ping,
    Auth(String),
}

fn valid_op() -> impl Strategy<Value = ValidOp> {
    prop_oneof![
        room_name().prop_map(ValidOp::Subscribe),
        room_name().prop_map(ValidOp::Unsubscribe),
        (room_name(), event_type(), json_value()).prop_map(|(room, kind, data)| ValidOp::Publish(
            room,
            json!({"type": kind, "data": data})
        )),
        Just(ValidOp::Ping),
        any::<String>().prop_map(ValidOp::Auth),
    ]
}

fn frame_json(op: &ValidOp, reference: &Option<Value>, extra: &Map<String, Value>) -> Value {
    let mut frame = extra.clone();
    let (name, fields) = match op {
        ValidOp::Subscribe(room) => ("subscribe", json!({"room": room})),
        ValidOp::Unsubscribe(room) => ("unsubscribe", json!({"room": room})),
        ValidOp::Publish(room, event) => ("publish", json!({"room": room, "event": event})),
        ValidOp::Ping => ("ping", json!({})),
        ValidOp::Auth(token) => ("auth", json!({"token": token})),
    };
    frame.insert("op".into(), name.into());
    if let Value::Object(fields) = fields {
        frame.extend(fields);
    }
    match reference {
        Some(r) => frame.insert("ref".into(), r.clone()),
        None => frame.remove("ref"),
    };
    Value::Object(frame)
}

/// Extra fields a client may add; none of the names a frame uses.
fn extra_fields() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec(("x[a-z]{0,6}", json_value()), 0..3)
        .prop_map(|fields| fields.into_iter().collect())
}

fn assert_parses_to(text: &str, op: &ValidOp) {
    let frame = parse_frame(text).unwrap_or_else(|(_, e)| panic!("{text} refused: {e}"));
    match (&frame.op, op) {
        (
            ClientOp::Subscribe {
                room,
                since: None,
                filter: None,
            },
            ValidOp::Subscribe(want),
        )
        | (ClientOp::Unsubscribe { room }, ValidOp::Unsubscribe(want)) => assert_eq!(room, want),
        (
            ClientOp::Publish {
                room,
                event,
                key: None,
            },
            ValidOp::Publish(want_room, want_event),
        ) => {
            assert_eq!(room, want_room);
            // Compared as re-parsed text: serde_json does not round-trip every float
            // exactly through `Value`, but reads the same text the same way.
            let event: Value = serde_json::from_str(event.get()).expect("raw event is JSON");
            let want: Value = serde_json::from_str(&want_event.to_string()).expect("JSON");
            assert_eq!(event, want);
        }
        (ClientOp::Ping, ValidOp::Ping) => {}
        (ClientOp::Auth { token }, ValidOp::Auth(want)) => assert_eq!(token, want),
        (got, want) => panic!("{text} parsed as {got:?}, expected {want:?}"),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_frame_never_panics_on_any_string(text in any::<String>()) {
        let _ = parse_frame(&text);
    }

    #[test]
    fn parse_frame_never_panics_on_json_shaped_text(text in r#"[{}\[\]":,0-9a-z\\ -]{0,64}"#) {
        let _ = parse_frame(&text);
    }

    #[test]
    fn parse_frame_refuses_any_json_without_panicking(value in json_value()) {
        let text = value.to_string();
        if let Err((_, e)) = parse_frame(&text) {
            let code = e.code();
            prop_assert!(
                code == ErrorCode::BadFrame || code == ErrorCode::UnknownOp,
                "{text}: refused with {code:?}"
            );
        }
    }

    #[test]
    fn parse_frame_never_panics_on_frames_with_an_op_and_any_fields(
        op in field_name(),
        fields in prop::collection::vec((field_name(), json_value()), 0..6),
    ) {
        let mut frame: Map<String, Value> = fields.into_iter().collect();
        frame.insert("op".into(), op.into());
        let text = Value::Object(frame).to_string();
        let _ = parse_frame(&text);
    }

    #[test]
    fn valid_frames_parse_to_their_op_and_keep_their_ref(
        op in valid_op(),
        reference in reference(),
        extra in extra_fields(),
        pretty in any::<bool>(),
    ) {
        let value = frame_json(&op, &reference, &extra);
        let text = if pretty {
            serde_json::to_string_pretty(&value).expect("serializes")
        } else {
            value.to_string()
        };
        assert_parses_to(&text, &op);
        let frame = parse_frame(&text).expect("parsed above");
        let got = frame
            .reference
            .map(|r| serde_json::from_str::<Value>(r.get()).expect("ref is JSON"));
        prop_assert_eq!(got, reference);
    }

    #[test]
    fn event_parse_never_panics_on_any_bytes(payload in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Event::parse(room(), Bytes::from(payload));
    }

    #[test]
    fn event_parse_never_panics_on_any_json(value in json_value()) {
        let valid = matches!(value.get("type"), Some(Value::String(t)) if !t.is_empty());
        let parsed = Event::parse(room(), Bytes::from(value.to_string()));
        prop_assert_eq!(parsed.is_ok(), valid, "{}", value);
    }

    #[test]
    fn valid_envelopes_parse_with_their_type_and_server_id_and_stay_verbatim(
        kind in event_type(),
        data in json_value(),
        server_id in prop::option::of(any::<String>()),
        timestamp in prop::option::of(any::<u64>()),
        extra in extra_fields(),
        pretty in any::<bool>(),
    ) {
        let mut envelope = extra;
        envelope.insert("type".into(), kind.clone().into());
        envelope.insert("data".into(), data);
        if let Some(id) = &server_id {
            envelope.insert("serverId".into(), id.clone().into());
        }
        if let Some(ts) = timestamp {
            envelope.insert("timestamp".into(), ts.into());
        }
        let value = Value::Object(envelope);
        let text = if pretty {
            serde_json::to_string_pretty(&value).expect("serializes")
        } else {
            value.to_string()
        };
        let event = Event::parse(room(), Bytes::from(text.clone()))
            .unwrap_or_else(|e| panic!("{text} refused: {e}"));
        prop_assert_eq!(event.kind(), kind.as_str());
        prop_assert_eq!(event.server_id(), server_id.as_deref());
        prop_assert_eq!(&**event.json(), text.as_str());
    }

    #[test]
    fn envelopes_without_a_non_empty_string_type_are_refused(
        kind in prop_oneof![Just(None), Just(Some(json!(""))), json_value().prop_map(Some)],
        data in json_value(),
    ) {
        prop_assume!(!matches!(&kind, Some(Value::String(s)) if !s.is_empty()));
        let mut envelope = json!({"data": data});
        if let Some(kind) = kind {
            envelope["type"] = kind;
        }
        let text = envelope.to_string();
        prop_assert!(Event::parse(room(), Bytes::from(text.clone())).is_err(), "{}", text);
    }
}

/// Nesting far past serde_json's recursion limit overflows nothing: the parsers skip
/// what they do not read without recursing, so deep JSON in `data` (bounded by the
/// frame and event limits) is valid and passes through verbatim, and a deep document
/// without the fields a parser needs is refused as such.
#[test]
fn deeply_nested_input_passes_verbatim_or_is_refused_without_overflowing_the_stack() {
    for depth in [200, 10_000, 100_000] {
        let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let event = format!(r#"{{"type":"t","data":{nested}}}"#);
        let frame = format!(r#"{{"op":"publish","room":"r","event":{event}}}"#);
        match parse_frame(&frame).map(|f| f.op) {
            Ok(ClientOp::Publish { event: kept, .. }) => {
                assert_eq!(kept.get(), event, "depth {depth}: the event changed")
            }
            other => panic!("depth {depth}: a deep event was not taken: {other:?}"),
        }
        let ignored = format!(r#"{{"op":"ping","x":{nested}}}"#);
        assert!(
            matches!(parse_frame(&ignored).map(|f| f.op), Ok(ClientOp::Ping)),
            "depth {depth}: a deep unknown field is skipped"
        );
        let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        match parse_frame(&objects) {
            Err((_, error)) => assert_eq!(error.code(), ErrorCode::BadFrame, "depth {depth}"),
            Ok(frame) => panic!(
                "depth {depth}: a frame without op was taken: {:?}",
                frame.op
            ),
        }
        let parsed = Event::parse(room(), Bytes::from(event.clone()))
            .unwrap_or_else(|e| panic!("depth {depth}: a deep envelope was refused: {e}"));
        assert_eq!(
            &**parsed.json(),
            event,
            "depth {depth}: the envelope changed"
        );
        assert!(
            Event::parse(room(), Bytes::from(objects)).is_err(),
            "depth {depth}: an envelope without type was taken"
        );
    }
}
