//! Subscription filters (PROTOCOL.md §12): a subscribe may carry
//! `"filter":{"types":[...],"data":{"dotted.path": value}}`, and only the room's events
//! whose `type` is listed (when `types` is given) and whose `data` holds each path at a
//! value equal to the given one reach that subscriber.
//!
//! A filter is checked per subscriber and event, in the session: each path is walked
//! over the event's raw JSON and only the value at its end is decoded
//! ([`Event::data_raw`], then `value_at`); nothing decoded is kept with the event, which a durable room's
//! ring may hold long after its fan-out. Its size is bounded so that the check stays
//! cheap and a session's filters small: at most [`MAX_FILTER_BYTES`] of JSON,
//! [`MAX_TYPES`] types, [`MAX_PATHS`] paths of at most [`MAX_PATH_DEPTH`] keys.

use std::{borrow::Cow, collections::HashMap};

use serde::Deserialize;
use serde_json::{value::RawValue, Map, Value};
use switchboard_actors::Event;

/// The longest filter, as JSON text: a session holds one per room it is in.
pub const MAX_FILTER_BYTES: usize = 4096;
/// The most types a filter lists.
pub const MAX_TYPES: usize = 64;
/// The most `data` paths a filter checks.
pub const MAX_PATHS: usize = 16;
/// The most keys in one dotted path.
pub const MAX_PATH_DEPTH: usize = 8;
/// The longest type or path, in bytes.
const MAX_NAME_BYTES: usize = 200;

/// What one subscriber of a room lets through.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The types let through; `None`: every type.
    types: Option<Vec<String>>,
    /// Each path (its keys) and the value the event's `data` must hold there.
    data: Vec<(Vec<String>, Value)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterFields {
    #[serde(default)]
    types: Option<Vec<String>>,
    #[serde(default)]
    data: Option<Map<String, Value>>,
}

impl Filter {
    /// Parses a subscribe frame's `filter`; the error says what is wrong with it.
    pub fn parse(raw: &RawValue) -> Result<Filter, String> {
        if raw.get().len() > MAX_FILTER_BYTES {
            return Err(format!("`filter` is over {MAX_FILTER_BYTES} bytes"));
        }
        let fields: FilterFields = serde_json::from_str(raw.get()).map_err(|e| {
            format!("`filter` must be an object with `types` (a list of strings) and/or `data` (an object): {e}")
        })?;
        if fields.types.is_none() && fields.data.is_none() {
            return Err("`filter` needs `types` or `data`".into());
        }
        let types = match fields.types {
            Some(types) if types.is_empty() => {
                return Err("`filter.types` lists no type, so nothing would pass".into())
            }
            Some(types) if types.len() > MAX_TYPES => {
                return Err(format!("`filter.types` lists more than {MAX_TYPES} types"))
            }
            Some(types) => {
                if let Some(bad) = types
                    .iter()
                    .find(|t| t.is_empty() || t.len() > MAX_NAME_BYTES)
                {
                    return Err(format!(
                        "`filter.types` has a type that is empty or over {MAX_NAME_BYTES} bytes: {bad:?}"
                    ));
                }
                Some(types)
            }
            None => None,
        };
        let paths = fields.data.unwrap_or_default();
        if paths.len() > MAX_PATHS {
            return Err(format!("`filter.data` checks more than {MAX_PATHS} paths"));
        }
        let mut data = Vec::with_capacity(paths.len());
        for (path, value) in paths {
            let keys: Vec<String> = path.split('.').map(str::to_owned).collect();
            if path.len() > MAX_NAME_BYTES
                || keys.len() > MAX_PATH_DEPTH
                || keys.iter().any(String::is_empty)
            {
                return Err(format!(
                    "`filter.data` path {path:?} must be 1 to {MAX_PATH_DEPTH} non-empty keys \
                     joined by dots, at most {MAX_NAME_BYTES} bytes"
                ));
            }
            data.push((keys, value));
        }
        Ok(Filter { types, data })
    }

    /// Whether `event` reaches the subscriber.
    pub fn admits(&self, event: &Event) -> bool {
        if let Some(types) = &self.types {
            if !types.iter().any(|t| t == event.kind()) {
                return false;
            }
        }
        if self.data.is_empty() {
            return true;
        }
        let Some(data) = event.data_raw() else {
            return false;
        };
        self.data.iter().all(|(keys, expected)| {
            value_at(data, keys).is_some_and(|found| same(&found, expected))
        })
    }
}

/// The value at `path` (object keys, outermost first) in `data`, decoded alone: the
/// levels above it are only scanned. `None` when a level is not an object or lacks
/// the key.
fn value_at(data: &RawValue, path: &[String]) -> Option<Value> {
    let mut at = data;
    for key in path {
        let level: HashMap<Cow<'_, str>, &RawValue> = serde_json::from_str(at.get()).ok()?;
        at = *level.get(key.as_str())?;
    }
    serde_json::from_str(at.get()).ok()
}

/// JSON equality, numbers by value: `1` and `1.0` are the same number; an integer
/// and a float are equal only when the float is that integer exactly.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn same_number(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    // An integer as i128 (every u64 and i64 fits), a float as its value.
    let integer = |n: &serde_json::Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (integer(x), integer(y)) {
        (Some(x), Some(y)) => x == y,
        (Some(i), None) | (None, Some(i)) => {
            let float = x.as_f64().filter(|_| integer(x).is_none()).or(y.as_f64());
            float.is_some_and(|f| {
                f.fract() == 0.0 && f.abs() < 1e38 && f as i128 == i && i as f64 == f
            })
        }
        (None, None) => x.as_f64() == y.as_f64(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;
    use switchboard_actors::Room;

    use super::*;

    fn filter(value: Value) -> Result<Filter, String> {
        let raw = RawValue::from_string(value.to_string()).expect("JSON");
        Filter::parse(&raw)
    }

    fn event(kind: &str, data: Value) -> Event {
        let envelope = json!({"type": kind, "data": data}).to_string();
        Event::parse(Room::new("r").expect("a room"), Bytes::from(envelope)).expect("an event")
    }

    #[test]
    fn types_and_dotted_paths_must_all_match() {
        let f = filter(json!({"types": ["match_started"], "data": {"match.region": "eu"}}))
            .expect("a filter");
        let eu = json!({"match": {"region": "eu", "id": 7}});
        assert!(f.admits(&event("match_started", eu.clone())));
        assert!(!f.admits(&event("match_ended", eu)));
        assert!(!f.admits(&event("match_started", json!({"match": {"region": "us"}}))));
        assert!(!f.admits(&event("match_started", json!({"match": "eu"}))));
        assert!(!f.admits(&event("match_started", json!(null))));
    }

    #[test]
    fn types_alone_or_data_alone() {
        let f = filter(json!({"types": ["a", "b"]})).expect("a filter");
        assert!(f.admits(&event("b", json!(1))));
        assert!(!f.admits(&event("c", json!(1))));
        let f = filter(json!({"data": {"score": 10, "tags": ["x"]}})).expect("a filter");
        assert!(f.admits(&event("any", json!({"score": 10.0, "tags": ["x"]}))));
        assert!(!f.admits(&event("any", json!({"score": 10}))));
        assert!(!f.admits(&event("any", json!({"score": 11, "tags": ["x"]}))));
    }

    #[test]
    fn an_integer_equals_a_float_only_exactly() {
        let number = |text: &str| serde_json::from_str::<Value>(text).expect("a number");
        assert!(same(&number("10"), &number("10.0")));
        assert!(same(&number("-3.0"), &number("-3")));
        assert!(!same(
            &number("9007199254740993"),
            &number("9007199254740992.0")
        ));
        assert!(!same(
            &number("18446744073709551615"),
            &number("1.8446744073709552e19")
        ));
        assert!(!same(&number("10"), &number("10.5")));
        assert!(same(&number("0.5"), &number("0.5")));
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        for bad in [
            json!("match"),
            json!([]),
            json!({}),
            json!({"types": []}),
            json!({"types": "a"}),
            json!({"types": [""]}),
            json!({"types": [1]}),
            json!({"data": []}),
            json!({"data": {"": 1}}),
            json!({"data": {"a..b": 1}}),
            json!({"data": {"a.b.c.d.e.f.g.h.i": 1}}),
            json!({"kinds": ["a"]}),
            json!({"types": (0..=MAX_TYPES).map(|i| i.to_string()).collect::<Vec<_>>()}),
            json!({"data": {"x": vec![0; MAX_FILTER_BYTES]}}),
        ] {
            assert!(filter(bad.clone()).is_err(), "{bad} was accepted");
        }
    }
}
