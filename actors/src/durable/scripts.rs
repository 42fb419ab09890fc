//! The Redis side of durable rooms and idempotent publish: five Lua scripts, each one
//! atomic step, loaded once and called by SHA (`EVALSHA`; reloaded on `NOSCRIPT`).
//!
//! A room's keys share one hash tag, its channel in braces, so every script runs
//! unchanged on a Redis Cluster shard:
//! - `{C}:log`: a list of the room's envelopes, oldest first, trimmed to
//!   `HISTORY_SIZE`. Its last entry has the room's last offset, so an entry's offset
//!   follows from its place: the scripts are the only writers, and each appends
//!   exactly one entry per offset it takes. (A stream whose ids were the offsets came
//!   first; appending a run to a list in one command costs Redis less, and Redis's
//!   CPU is what bounds durable publishes: `bench/notes.md`.) The keys are not the
//!   stream's, so servers of both kinds on one Redis would number into different
//!   histories: upgrade by stopping every server first (README, Durable rooms).
//! - `{C}:ids`: the publish id of each entry of `{C}:log`, in step with it (the same
//!   appends, trims and TTLs): what a retried publish looks for;
//! - `{C}:meta`: a hash, `o` the last offset and `e` the epoch; it outlives the
//!   history (`HISTORY_META_TTL_MS`), so an idle room keeps its epoch;
//! - `{C}:idem:<key>`: a publish's idempotency key, `offset:epoch` in a durable room
//!   and `1` in a plain one, for `IDEMPOTENCY_TTL_MS`.

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use redis::{aio::MultiplexedConnection, Script, Value};

use super::{DurableConfig, Epoch, HistoryPage, IdempotencyKey, Position};
use crate::{link::with_deadline, Error, Event, RedisConfig, Room};

/// A durable publish: the next offset, the envelope completed with `offset` and
/// `epoch`, appended to the history (trimmed to `HISTORY_SIZE`), the keys' TTLs
/// refreshed, and published. With an idempotency key, a key seen before answers its
/// first publish's position and publishes nothing (a key a plain room's publish left,
/// without a position, is not one: the room became durable since); on a retry
/// (`ARGV[9]` = 1), a publish id found among the room's last `ARGV[10]` events does
/// the same.
///
/// Returns `{offset, epoch, duplicate}`.
const PUBLISH: &str = r#"
local log, ids, meta, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if idem then
  local seen = redis.call('GET', idem)
  local sep = seen and string.find(seen, ':', 1, true)
  if sep then
    return {tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1), 1}
  end
end
local epoch = redis.call('HGET', meta, 'e')
if epoch and ARGV[9] == '1' then
  local recent = redis.call('LRANGE', ids, '-' .. ARGV[10], -1)
  local last = tonumber(redis.call('HGET', meta, 'o') or '0')
  for i = #recent, 1, -1 do
    if recent[i] == ARGV[8] then
      return {last - #recent + i, epoch, 1}
    end
  end
end
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', log, ids)
  redis.call('HSET', meta, 'e', epoch)
end
local offset = redis.call('HINCRBY', meta, 'o', 1)
local envelope = ARGV[1] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'
redis.call('RPUSH', log, envelope)
redis.call('RPUSH', ids, ARGV[8])
redis.call('LTRIM', log, '-' .. ARGV[3], -1)
redis.call('LTRIM', ids, '-' .. ARGV[3], -1)
redis.call('PEXPIRE', log, ARGV[4])
redis.call('PEXPIRE', ids, ARGV[4])
redis.call('PEXPIRE', meta, ARGV[5])
redis.call('PUBLISH', ARGV[2], envelope)
if idem then
  redis.call('SET', idem, offset .. ':' .. epoch, 'PX', ARGV[7])
end
return {offset, epoch, 0}
"#;

/// A run of durable publishes in one room, numbered by one call: the same steps as
/// [`PUBLISH`] for each, but the offsets taken, the appends, the trims and the TTLs
/// done once for the run. What is left per event is completing and publishing its
/// envelope. The run is kept before any of it is published: Redis does not roll a
/// script back, so an append that failed must not leave published events that the
/// history lacks.
/// `ARGV[6..]` are pairs of (envelope without its closing `}`, publish id). Returns
/// `{first offset, epoch}`; the run's events have the offsets from the first on.
const PUBLISH_RUN: &str = r#"
local log, ids, meta = KEYS[1], KEYS[2], KEYS[3]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', log, ids)
  redis.call('HSET', meta, 'e', epoch)
end
local n = (#ARGV - 5) / 2
local offset = redis.call('HINCRBY', meta, 'o', n) - n
local first = offset + 1
local closing = ',"epoch":"' .. epoch .. '"}'
local envelopes, publish_ids = {}, {}
for i = 6, #ARGV, 2 do
  offset = offset + 1
  envelopes[#envelopes + 1] = ARGV[i] .. ',"offset":' .. offset .. closing
  publish_ids[#publish_ids + 1] = ARGV[i + 1]
end
redis.call('RPUSH', log, unpack(envelopes))
redis.call('RPUSH', ids, unpack(publish_ids))
for _, envelope in ipairs(envelopes) do
  redis.call('PUBLISH', ARGV[1], envelope)
end
redis.call('LTRIM', log, '-' .. ARGV[2], -1)
redis.call('LTRIM', ids, '-' .. ARGV[2], -1)
redis.call('PEXPIRE', log, ARGV[3])
redis.call('PEXPIRE', ids, ARGV[3])
redis.call('PEXPIRE', meta, ARGV[4])
return {first, epoch}
"#;

/// A keyed publish in a plain room: published only if the key is new. Returns 1
/// for a duplicate.
const KEYED: &str = r#"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
  return 0
end
return 1
"#;

/// A read: the room's position and up to `ARGV[2]` envelopes, oldest first: from
/// offset `ARGV[1]` on (from the history's first when it no longer reaches back that
/// far), or the latest ones when `ARGV[1]` is empty. A room without a numbering gets
/// an epoch (`ARGV[3]`) that lives `HISTORY_TTL_MS` (`ARGV[5]`) unless a publish makes
/// it last: a read of a room nobody publishes in leaves no lasting key.
/// Returns `{offset, epoch, {envelope, ...}}`.
const READ: &str = r#"
local log, ids, meta = KEYS[1], KEYS[2], KEYS[3]
local epoch = redis.call('HGET', meta, 'e')
local offset = tonumber(redis.call('HGET', meta, 'o') or '0')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', log, ids)
  redis.call('HSET', meta, 'e', epoch, 'o', offset)
  redis.call('PEXPIRE', meta, ARGV[5])
elseif offset > 0 then
  redis.call('PEXPIRE', meta, ARGV[4])
end
local count = tonumber(ARGV[2])
local envelopes = {}
if count > 0 then
  if ARGV[1] == '' then
    envelopes = redis.call('LRANGE', log, -count, -1)
  else
    local oldest = offset - redis.call('LLEN', log) + 1
    local start = math.max(tonumber(ARGV[1]) - oldest, 0)
    envelopes = redis.call('LRANGE', log, start, start + count - 1)
  end
end
return {offset, epoch, envelopes}
"#;

/// The numbering is lost (a rollback): if the epoch is still `ARGV[1]`, a new one
/// (`ARGV[2]`) replaces it and the history, which belongs to the old one, goes.
/// Returns `{offset, epoch}`; the epoch is `false` when the room has no meta.
const ROTATE: &str = r#"
local log, ids, meta = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HGET', meta, 'e') == ARGV[1] then
  redis.call('DEL', log, ids)
  redis.call('HSET', meta, 'e', ARGV[2])
  redis.call('PEXPIRE', meta, ARGV[3])
end
return {tonumber(redis.call('HGET', meta, 'o') or '0'), redis.call('HGET', meta, 'e')}
"#;

/// The most history entries a retried publish looks through for its publish id: a
/// retry comes within seconds of its attempt, and a scan must not make a Redis that
/// is already slow (the attempt timed out) slower still.
const RETRY_SCAN: usize = 10_000;

static PUBLISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH));
static PUBLISH_RUN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_RUN));
static KEYED_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(KEYED));
static READ_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(READ));
static ROTATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ROTATE));

/// A room's keys.
struct Keys {
    log: String,
    ids: String,
    meta: String,
    channel: String,
}

impl Keys {
    fn of(config: &RedisConfig, room: &Room) -> Keys {
        let channel = config.channel(room);
        Keys {
            log: format!("{{{channel}}}:log"),
            ids: format!("{{{channel}}}:ids"),
            meta: format!("{{{channel}}}:meta"),
            channel,
        }
    }

    fn idempotency(&self, key: &IdempotencyKey) -> String {
        format!("{{{}}}:idem:{}", self.channel, key.as_str())
    }
}

/// Loads the scripts the publisher calls in its pipelines, so their first `EVALSHA`
/// finds them (a read's `Script` loads itself on `NOSCRIPT`).
pub(crate) async fn load(conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
    PUBLISH_SCRIPT.prepare_invoke().load_async(conn).await?;
    PUBLISH_RUN_SCRIPT.prepare_invoke().load_async(conn).await?;
    KEYED_SCRIPT.prepare_invoke().load_async(conn).await?;
    Ok(())
}

/// Whether a command failed because Redis does not have the script (it restarted,
/// or `SCRIPT FLUSH`): it was not run, so it may be sent again once loaded.
pub(crate) fn is_noscript(error: &redis::RedisError) -> bool {
    error.code() == Some("NOSCRIPT")
}

/// Adds a durable publish to `pipeline`. `retry` asks the script to look for
/// `publish_id` in the history first: an earlier attempt whose answer was lost.
pub(crate) fn add_publish(
    pipeline: &mut redis::Pipeline,
    config: &RedisConfig,
    durable: &DurableConfig,
    event: &Event,
    key: Option<&IdempotencyKey>,
    publish_id: &str,
    retry: bool,
) {
    let keys = Keys::of(config, event.room());
    let command = pipeline
        .cmd("EVALSHA")
        .arg(PUBLISH_SCRIPT.get_hash())
        .arg(if key.is_some() { 4 } else { 3 })
        .arg(&keys.log)
        .arg(&keys.ids)
        .arg(&keys.meta);
    if let Some(key) = key {
        command.arg(keys.idempotency(key));
    }
    command
        .arg(event.open_json())
        .arg(&keys.channel)
        .arg(durable.history_size)
        .arg(millis(durable.history_ttl))
        .arg(millis(durable.meta_ttl))
        .arg(Epoch::fresh().as_str())
        .arg(millis(durable.idempotency_ttl))
        .arg(publish_id)
        .arg(if retry { "1" } else { "0" })
        .arg(durable.history_size.min(RETRY_SCAN));
}

/// Adds a run of durable publishes of one room (no key, no retry) to `pipeline`, as
/// one call: `members` are each event and its publish id, in order.
pub(crate) fn add_publish_run(
    pipeline: &mut redis::Pipeline,
    config: &RedisConfig,
    durable: &DurableConfig,
    members: &[(&Event, &str)],
) {
    let Some((first, _)) = members.first() else {
        return;
    };
    let keys = Keys::of(config, first.room());
    let command = pipeline
        .cmd("EVALSHA")
        .arg(PUBLISH_RUN_SCRIPT.get_hash())
        .arg(3)
        .arg(&keys.log)
        .arg(&keys.ids)
        .arg(&keys.meta)
        .arg(&keys.channel)
        .arg(durable.history_size)
        .arg(millis(durable.history_ttl))
        .arg(millis(durable.meta_ttl))
        .arg(Epoch::fresh().as_str());
    for (event, id) in members {
        command.arg(event.open_json()).arg(*id);
    }
}

/// A run's answer: the position of each of its `count` events.
pub(crate) fn run_positions(value: &Value, count: usize) -> Result<Vec<Position>, Error> {
    let unexpected = || Error::Redis(format!("unexpected answer to a durable publish: {value:?}"));
    let Value::Array(items) = value else {
        return Err(unexpected());
    };
    let [first, epoch] = items.as_slice() else {
        return Err(unexpected());
    };
    let first: u64 = redis::from_redis_value_ref(first).map_err(|_| unexpected())?;
    let epoch = epoch_of(epoch).ok_or_else(unexpected)?;
    Ok((0..count as u64)
        .map(|j| Position {
            offset: first + j,
            epoch: epoch.clone(),
        })
        .collect())
}

/// Adds a keyed publish in a plain room to `pipeline`.
pub(crate) fn add_keyed(
    pipeline: &mut redis::Pipeline,
    config: &RedisConfig,
    durable: &DurableConfig,
    event: &Event,
    key: &IdempotencyKey,
) {
    let keys = Keys::of(config, event.room());
    pipeline
        .cmd("EVALSHA")
        .arg(KEYED_SCRIPT.get_hash())
        .arg(1)
        .arg(keys.idempotency(key))
        .arg(&keys.channel)
        .arg(&**event.json())
        .arg(millis(durable.idempotency_ttl));
}

/// A durable publish's answer: the event's position.
pub(crate) fn published_position(value: &Value) -> Result<Position, Error> {
    let unexpected = || Error::Redis(format!("unexpected answer to a durable publish: {value:?}"));
    let Value::Array(items) = value else {
        return Err(unexpected());
    };
    match items.as_slice() {
        [offset, epoch, _duplicate] => Ok(Position {
            offset: redis::from_redis_value_ref(offset).map_err(|_| unexpected())?,
            epoch: epoch_of(epoch).ok_or_else(unexpected)?,
        }),
        _ => Err(unexpected()),
    }
}

fn epoch_of(value: &Value) -> Option<Epoch> {
    let text: String = redis::from_redis_value_ref(value).ok()?;
    Epoch::new(&text).ok()
}

/// Reads a room's position and up to `limit` events: from offset `from` on, or the
/// latest ones when `from` is `None`. Creates the room's epoch when it has none.
pub(crate) async fn read(
    conn: &mut MultiplexedConnection,
    config: &RedisConfig,
    durable: &DurableConfig,
    room: &Room,
    from: Option<u64>,
    limit: usize,
) -> Result<HistoryPage, Error> {
    let keys = Keys::of(config, room);
    let mut invocation = READ_SCRIPT.key(&keys.log);
    invocation
        .key(&keys.ids)
        .key(&keys.meta)
        .arg(from.map(|f| f.to_string()).unwrap_or_default())
        .arg(limit)
        .arg(Epoch::fresh().as_str())
        .arg(millis(durable.meta_ttl))
        .arg(millis(durable.history_ttl));
    let answer = with_deadline(config.response_timeout, "history read", async {
        invocation
            .invoke_async::<(u64, String, Vec<Bytes>)>(conn)
            .await
            .map_err(|e| Error::from_redis(&e))
    })
    .await?;
    let (offset, epoch, envelopes) = answer;
    let epoch = Epoch::new(&epoch)?;
    let mut events = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        // Only the script writes the history; an entry that does not parse is skipped.
        match Event::parse(room.clone(), envelope) {
            Ok(event) if event.position().is_some() => events.push(Arc::new(event)),
            _ => log::warn!("history of {room}: skipped an entry that is not a numbered envelope"),
        }
    }
    keep_consecutive(room, &mut events, from);
    Ok(HistoryPage {
        current: Position { offset, epoch },
        events,
    })
}

/// Keeps the events of a page that follow each other: from `from` on, up to the first
/// hole; or, for the latest events (`from` is `None`), those after the last hole.
///
/// The scripts keep one entry per offset, so a hole can only come from outside the
/// scripts (servers of an older build numbering into the stream this list replaced, a
/// key edited by hand). Cut there, the page never carries events across a hole: the
/// next read starts at the missing offset, does not find it, and the loss is reported
/// as a gap instead of passing unseen.
fn keep_consecutive(room: &Room, events: &mut Vec<Arc<Event>>, from: Option<u64>) {
    if let Some(from) = from {
        events.retain(|e| e.offset().is_some_and(|o| o >= from));
    }
    let hole = events
        .windows(2)
        .position(|pair| pair[1].offset() != pair[0].offset().map(|o| o + 1));
    let Some(at) = hole else {
        return;
    };
    log::warn!(
        "history of {room}: a hole after offset {:?}",
        events[at].offset()
    );
    match from {
        Some(_) => events.truncate(at + 1),
        None => {
            events.drain(..=at);
        }
    }
}

/// Replaces the room's epoch `lost` with a fresh one (the numbering was rolled back),
/// unless another server did already; answers the room's position after it.
pub(crate) async fn rotate(
    conn: &mut MultiplexedConnection,
    config: &RedisConfig,
    durable: &DurableConfig,
    room: &Room,
    lost: &Epoch,
) -> Result<Option<Position>, Error> {
    let keys = Keys::of(config, room);
    let mut invocation = ROTATE_SCRIPT.key(&keys.log);
    invocation
        .key(&keys.ids)
        .key(&keys.meta)
        .arg(lost.as_str())
        .arg(Epoch::fresh().as_str())
        .arg(millis(durable.meta_ttl));
    let (offset, epoch) = with_deadline(config.response_timeout, "epoch rotation", async {
        invocation
            .invoke_async::<(u64, Option<String>)>(conn)
            .await
            .map_err(|e| Error::from_redis(&e))
    })
    .await?;
    Ok(match epoch {
        Some(epoch) => Some(Position {
            offset,
            epoch: Epoch::new(&epoch)?,
        }),
        None => None,
    })
}

fn millis(duration: std::time::Duration) -> u64 {
    duration.as_millis().max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(offsets: &[u64]) -> Vec<Arc<Event>> {
        let room = Room::new("chat:1").expect("a room");
        offsets
            .iter()
            .map(|o| {
                let json = format!(r#"{{"type":"t","data":{o},"offset":{o},"epoch":"e1"}}"#);
                Arc::new(Event::parse(room.clone(), Bytes::from(json)).expect("an event"))
            })
            .collect()
    }

    fn offsets(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().filter_map(|e| e.offset()).collect()
    }

    #[test]
    fn a_page_never_carries_events_across_a_hole() {
        let room = Room::new("chat:1").expect("a room");
        let mut events = page(&[11, 13, 14]);
        keep_consecutive(&room, &mut events, Some(10));
        assert_eq!(offsets(&events), [11], "from an offset: up to the hole");

        let mut events = page(&[11, 13, 14]);
        keep_consecutive(&room, &mut events, Some(12));
        assert_eq!(
            offsets(&events),
            [13, 14],
            "what lies before `from` is dropped"
        );

        let mut events = page(&[11, 13, 14]);
        keep_consecutive(&room, &mut events, None);
        assert_eq!(
            offsets(&events),
            [13, 14],
            "the latest: after the last hole"
        );

        let mut events = page(&[4, 5, 6]);
        keep_consecutive(&room, &mut events, Some(4));
        assert_eq!(offsets(&events), [4, 5, 6], "no hole, nothing cut");
    }
}
