//! The Redis side of presence: three Lua scripts, each one atomic step, called by
//! SHA (loaded on `NOSCRIPT`).
//!
//! A room's keys share one hash tag, its channel in braces, so they live in the
//! room's hash slot, on one Cluster shard (a cluster backplane will publish with
//! `SPUBLISH` there; the per-server keys are found through `{C}:presence`, in the same
//! slot, rather than declared):
//! - `{C}:presence`: a sorted set of the servers with members in the room, each
//!   scored with its deadline (ms, by Redis's clock): one deadline per room and
//!   server, not per member;
//! - `{C}:presence:m:<entry>`: a hash of one server's members, client id to the
//!   member's JSON (`<entry>` is the server's id and its process's instance id, so a
//!   server restarted under the same id does not inherit its dead members);
//! - `{C}:presence:u:<entry>`: a hash of one server's members' owners, client id to
//!   `1<user>` (or `0` for none), so a member's user is known without decoding it;
//! - `{C}:presence:users`: a hash of user to the number of that user's members, so
//!   `presence_count` does not list the members.
//!
//! Every script first sweeps: a server whose deadline passed has its members removed
//! and their `leave` published, in the same atomic step, so exactly one server
//! announces each. Every key of a room lives two TTLs past the last write of any
//! server, so a dead server's members wait for the sweep, and a room every server
//! left behind expires whole.

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use redis::{aio::MultiplexedConnection, Script};

use super::{Member, Op, PresenceCount};
use crate::{link::with_deadline, Error, RedisConfig, Room};

/// What every script starts with: its keys and arguments, Redis's time, `announce`
/// (publish a join or a leave on the room's channel), the users' counting and the
/// sweep.
///
/// `KEYS[1]` the servers' deadlines, `KEYS[2]` the users' counts; `ARGV[1]` the
/// room's channel, `ARGV[2]` the announcing server's id as a JSON string, `ARGV[3]`
/// and `ARGV[4]` the prefixes of a server's members key and of its owners key (client
/// to user, `1<user>` or `0` for none: the users are counted from it, so a member's
/// JSON is never decoded here).
const SWEEP: &str = r#"
local servers, users = KEYS[1], KEYS[2]
local channel, server, prefix, owners_prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local function announce(kind, member)
  redis.call('PUBLISH', channel, '{"type":"presence","presence":"' .. kind .. '","data":' ..
    member .. ',"serverId":' .. server .. ',"timestamp":' .. now .. '}')
end
local function count(owner, by)
  if string.sub(owner, 1, 1) == '1' then
    local user = string.sub(owner, 2)
    if redis.call('HINCRBY', users, user, by) <= 0 then
      redis.call('HDEL', users, user)
    end
  end
end
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', servers, '-inf', now)) do
  local key, owners = prefix .. gone, owners_prefix .. gone
  local owned = redis.call('HGETALL', owners)
  for i = 2, #owned, 2 do
    count(owned[i], -1)
  end
  for _, member in ipairs(redis.call('HVALS', key)) do
    announce('leave', member)
  end
  redis.call('DEL', key, owners)
  redis.call('ZREM', servers, gone)
end
"#;

/// A server's writes to its members of a room, and its deadline refreshed.
///
/// `KEYS[3]` the server's members, `KEYS[4]` its owners; `ARGV[5]` its entry,
/// `ARGV[6]` the TTL (ms), `ARGV[7]` `1` for a resync (the ops are all of its members:
/// the others leave); then the ops, four arguments each: `j` (join) or `l` (leave),
/// the client id, its owner (`1<user>` or `0`), the member's JSON. A join of a member
/// already there and a leave of one not there change nothing and announce nothing.
///
/// Returns `{lost, members}`: whether the server's entry was missing before the
/// write, and how many members it has now.
const APPLY: &str = r#"
local own, owners, entry, ttl = KEYS[3], KEYS[4], ARGV[5], tonumber(ARGV[6])
local lost = redis.call('ZSCORE', servers, entry) == false
local function drop(client)
  local member = redis.call('HGET', own, client)
  if member then
    count(redis.call('HGET', owners, client) or '0', -1)
    redis.call('HDEL', own, client)
    redis.call('HDEL', owners, client)
    announce('leave', member)
  end
end
if ARGV[7] == '1' then
  local keep = {}
  for i = 8, #ARGV, 4 do keep[ARGV[i + 1]] = true end
  for _, client in ipairs(redis.call('HKEYS', own)) do
    if not keep[client] then drop(client) end
  end
end
for i = 8, #ARGV, 4 do
  local client, owner, member = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if ARGV[i] == 'j' then
    if redis.call('HSETNX', own, client, member) == 1 then
      redis.call('HSET', owners, client, owner)
      count(owner, 1)
      announce('join', member)
    end
  else
    drop(client)
  end
end
local members = redis.call('HLEN', own)
if members > 0 then
  redis.call('ZADD', servers, now + ttl, entry)
else
  redis.call('ZREM', servers, entry)
  redis.call('DEL', owners)
end
local life = 2 * ttl
for _, other in ipairs(redis.call('ZRANGE', servers, 0, -1)) do
  redis.call('PEXPIRE', prefix .. other, life)
  redis.call('PEXPIRE', owners_prefix .. other, life)
end
redis.call('PEXPIRE', servers, life)
redis.call('PEXPIRE', users, life)
return {lost and 1 or 0, members}
"#;

/// Every member of the room, on every live server.
const READ: &str = r#"
local members = {}
for _, other in ipairs(redis.call('ZRANGE', servers, 0, -1)) do
  for _, member in ipairs(redis.call('HVALS', prefix .. other)) do
    members[#members + 1] = member
  end
end
return members
"#;

/// The room's counts: `{clients, users}`.
const COUNT: &str = r#"
local clients = 0
for _, other in ipairs(redis.call('ZRANGE', servers, 0, -1)) do
  clients = clients + redis.call('HLEN', prefix .. other)
end
return {clients, redis.call('HLEN', users)}
"#;

static APPLY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{SWEEP}{APPLY}")));
static READ_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{SWEEP}{READ}")));
static COUNT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{SWEEP}{COUNT}")));

/// Who writes and sweeps: this server in Redis.
#[derive(Debug, Clone)]
pub(crate) struct Announcer {
    /// Its entry among a room's servers: `<server id>/<instance id>`.
    pub(crate) entry: Arc<str>,
    /// Its server id as a JSON string, for the envelopes it publishes.
    pub(crate) server_json: Arc<str>,
}

impl Announcer {
    pub(crate) fn new(server_id: &str, instance_id: &str) -> Announcer {
        Announcer {
            entry: format!("{server_id}/{instance_id}").into(),
            server_json: serde_json::to_string(server_id)
                .expect("a string serializes")
                .into(),
        }
    }
}

/// A room's keys.
struct Keys {
    servers: String,
    users: String,
    /// A server's members are at this prefix followed by its entry.
    members: String,
    /// A server's owners (client to user) are at this prefix followed by its entry.
    owners: String,
    channel: String,
}

impl Keys {
    fn of(config: &RedisConfig, room: &Room) -> Keys {
        let channel = config.channel(room);
        Keys {
            servers: format!("{{{channel}}}:presence"),
            users: format!("{{{channel}}}:presence:users"),
            members: format!("{{{channel}}}:presence:m:"),
            owners: format!("{{{channel}}}:presence:u:"),
            channel,
        }
    }

    /// A script's call with the keys and arguments [`SWEEP`] takes.
    fn invocation<'a>(
        &self,
        script: &'a Script,
        announcer: &Announcer,
    ) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.key(&self.servers);
        invocation
            .key(&self.users)
            .arg(&self.channel)
            .arg(&*announcer.server_json)
            .arg(&self.members)
            .arg(&self.owners);
        invocation
    }
}

/// What a write did in Redis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Written {
    /// This server's entry was missing before the write.
    pub(crate) lost: bool,
    /// This server's members in the room now.
    pub(crate) members: u64,
}

/// Writes this server's `ops` in the room and refreshes its deadline (`ops` may be
/// empty: a refresh). With `resync`, `ops` are joins of all its members and any other
/// member stored for it leaves.
pub(crate) async fn apply(
    conn: &mut MultiplexedConnection,
    config: &RedisConfig,
    ttl: Duration,
    announcer: &Announcer,
    room: &Room,
    ops: &[Op],
    resync: bool,
) -> Result<Written, Error> {
    let keys = Keys::of(config, room);
    let mut invocation = keys.invocation(&APPLY_SCRIPT, announcer);
    invocation
        .key(format!("{}{}", keys.members, announcer.entry))
        .key(format!("{}{}", keys.owners, announcer.entry))
        .arg(&*announcer.entry)
        .arg(ttl.as_millis().max(1) as u64)
        .arg(if resync { "1" } else { "0" });
    for op in ops {
        let (kind, member) = match op {
            Op::Join(member) => ("j", member),
            Op::Leave(member) => ("l", member),
        };
        let owner = match member.user() {
            Some(user) => format!("1{user}"),
            None => "0".into(),
        };
        invocation
            .arg(kind)
            .arg(&**member.client())
            .arg(owner)
            .arg(member.json());
    }
    let (lost, members) = with_deadline(config.response_timeout, "presence write", async {
        invocation
            .invoke_async::<(u8, u64)>(conn)
            .await
            .map_err(|e| Error::from_redis(&e))
    })
    .await?;
    Ok(Written {
        lost: lost == 1,
        members,
    })
}

/// Every member of the room, on every server.
pub(crate) async fn read(
    conn: &mut MultiplexedConnection,
    config: &RedisConfig,
    announcer: &Announcer,
    room: &Room,
) -> Result<Vec<Arc<Member>>, Error> {
    let keys = Keys::of(config, room);
    let invocation = keys.invocation(&READ_SCRIPT, announcer);
    let stored = with_deadline(config.response_timeout, "presence read", async {
        invocation
            .invoke_async::<Vec<String>>(conn)
            .await
            .map_err(|e| Error::from_redis(&e))
    })
    .await?;
    let mut members = Vec::with_capacity(stored.len());
    for json in stored {
        // Only the scripts write members; one that does not parse is skipped.
        match Member::parse(&json) {
            Ok(member) => members.push(Arc::new(member)),
            Err(e) => log::warn!("presence of {room}: skipped a stored member: {e}"),
        }
    }
    Ok(members)
}

/// The room's counts, on every server.
pub(crate) async fn count(
    conn: &mut MultiplexedConnection,
    config: &RedisConfig,
    announcer: &Announcer,
    room: &Room,
) -> Result<PresenceCount, Error> {
    let keys = Keys::of(config, room);
    let invocation = keys.invocation(&COUNT_SCRIPT, announcer);
    let (clients, users) = with_deadline(config.response_timeout, "presence count", async {
        invocation
            .invoke_async::<(u64, u64)>(conn)
            .await
            .map_err(|e| Error::from_redis(&e))
    })
    .await?;
    Ok(PresenceCount { clients, users })
}
