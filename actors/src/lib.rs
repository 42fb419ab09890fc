//! Switchboard's actor system: everything that does not depend on HTTP.
//!
//! A service on any server publishes an event in a room; Redis pub/sub carries it to
//! every server; each server's [`Broker`] hands it to the room's local recipients
//! (WebSocket sessions, in-process actors). This crate holds the actors and the typed
//! messages between them; the `switchboard` crate adds HTTP, WebSocket sessions and
//! configuration.
//!
//! # Layout
//!
//! - [`Broker`] (`broker/`): the hub, reached through its `Addr`. Accepts [`Publish`],
//!   [`Subscribe`], [`Unsubscribe`], [`UnsubscribeAll`], [`Leave`], [`ReadHistory`],
//!   [`ReadPresence`](presence::ReadPresence), [`CountPresence`](presence::CountPresence),
//!   [`GetHealth`], [`GetStats`], [`ResetStats`], [`Shutdown`]; takes [`Inbound`]
//!   events and relinks from Redis off a bounded channel ([`INBOUND_CAPACITY`]).
//!   Delivers [`Delivery`] (and [`Evicted`], [`Gap`],
//!   [`PresenceChange`](presence::PresenceChange)) to recipients. `broker/mod.rs`
//!   is the hub; `broker/durable.rs` what it does for durable rooms (each room's
//!   track, catch-up reads, entering with `since`); `broker/presence.rs` for presence
//!   rooms (this server's members, their writes to the backplane in order, the
//!   refresh, the others' joins and leaves). Its backplane (`backplane.rs`,
//!   [`BackplaneConfig`]) is the two Redis link actors, or nothing on the memory
//!   backplane (one server, no Redis).
//! - [`cluster`] (`cluster/`): Redis Cluster's hash slots ([`cluster::key_slot`]) and
//!   which master serves each ([`cluster::SlotMap`]); not used by a backplane yet (its
//!   module doc has the plan).
//! - [`durable`] (`durable/`): durable rooms' settings and values ([`DurableConfig`](durable::DurableConfig),
//!   [`Position`](durable::Position), [`Since`](durable::Since), ...); `track.rs`, the
//!   pure type the broker keeps per durable room; `scripts.rs`, the Lua scripts and
//!   their calls; `memory.rs`, the memory backplane's store.
//! - [`presence`] (`presence/`): presence rooms' settings and values
//!   ([`PresenceConfig`](presence::PresenceConfig), [`Member`](presence::Member),
//!   [`Membership`](presence::Membership), ...); `scripts.rs`, the Lua scripts (a
//!   server's writes with its refresh, a read, a count, each sweeping expired servers
//!   first); `memory.rs`, the memory backplane's members.
//! - [`Pattern`] (`pattern.rs`): room patterns, for tokens, `DURABLE_ROOMS` and
//!   `PRESENCE_ROOMS`.
//! - [`RedisPublisher`] (`publisher/`): owns the publishing connection. Accepts
//!   [`PublishEvent`] (publish with retry), [`GetLinkStatus`], [`GetPublisherStats`],
//!   [`ResetStats`], [`Shutdown`]. Supervised: restarts and reconnects with [`Backoff`].
//!   The actor, its messages and statistics are in `publisher/mod.rs`; its connection
//!   in `connection.rs`; its flow control, a pure type with the [`MAX_QUEUED`] bound,
//!   in `flow.rs`; the queue sent in pipelines, with the retries, in `pipeline.rs`.
//! - [`RedisSubscriber`] (`subscriber/`): owns the pub/sub connection. Accepts
//!   [`WatchRoom`], [`UnwatchRoom`], [`GetLinkStatus`], [`GetSubscriberStats`],
//!   [`ResetStats`], [`Shutdown`]; streams Redis messages in, checks them, suppresses
//!   echoes and hands the rest to the broker. Supervised: on restart it subscribes
//!   every room still wanted. Its room bookkeeping is a pure type, `Subscriptions`
//!   (`subscriptions.rs`); what it owes the broker besides events (news of dropped
//!   events, relink notices waiting for a place) another, `Owed` (`subscriber/owed.rs`).
//! - `link.rs`: what both links share: settings ([`RedisConfig`]), status
//!   ([`LinkStatus`]), reconnect state, and their lifecycle (the `RedisLink` trait:
//!   connect at once or after the backoff, probe with PING, stop on a dead link).
//! - [`Peers`] (`peers.rs`, [`PeersConfig`]): announces this server on `system:events`
//!   and tracks the other live servers. Accepts [`Delivery`] and [`Evicted`] (as a
//!   recipient of `system:events`), [`GetPeers`], [`AnnounceStop`]. Reads the
//!   [`ConnectionGauge`] the sessions keep.
//! - [`PubSub`] (`handle.rs`): a cloneable handle whose async methods mirror the seed's
//!   API (`publish`, `subscribe`, `unsubscribe`, `health_status`, ...), as messages to
//!   the broker; [`PubSub::subscribe_actor`] subscribes an actor that is also told
//!   ([`Evicted`]) if the broker drops it; [`PubSub::global`] is the seed's
//!   process-wide singleton.
//! - [`events`] (`events.rs`): the seed's four channels ([`events::LeaderboardUpdates`],
//!   [`events::MatchEvents`], [`events::PlayerNotifications`], [`events::SystemEvents`])
//!   and their event enums, so a wrong event for a channel does not compile.
//! - `messages.rs`: the broker's messages and what they answer ([`HealthStatus`],
//!   [`Stats`]). Values: [`Room`] (`room.rs`), [`Event`] and [`NewEvent`] (`event.rs`,
//!   the envelope, encoded once), [`PublisherStats`] and [`SubscriberStats`]
//!   (`stats.rs`), [`Backoff`] (`backoff.rs`), [`Error`] (`error.rs`).
//! - [`stages`] (`stages.rs`): latency histograms per stage of an event's way from
//!   Redis to a client's socket, for a sample of the events (`/stats` `stages`).

mod backoff;
mod backplane;
mod broker;
pub mod cluster;
pub mod durable;
mod error;
mod event;
pub mod events;
mod handle;
mod link;
mod messages;
mod pattern;
mod peers;
pub mod presence;
mod publisher;
mod room;
pub mod stages;
mod stats;
mod subscriber;
mod subscriptions;

pub use backoff::Backoff;
pub use backplane::{BackplaneConfig, Publishing};
pub use broker::{new_instance_id, Broker, BrokerConfig, INBOUND_CAPACITY};
pub use error::Error;
pub use event::{now_ms, Event, NewEvent};
pub use handle::PubSub;
pub use link::{GetLinkStatus, LinkStatus, RedisConfig};
pub use messages::*;
pub use pattern::Pattern;
pub use peers::{AnnounceStop, ConnectionGauge, GetPeers, PeerInfo, PeerList, Peers, PeersConfig};
pub use publisher::{GetPublisherStats, PublishEvent, RedisPublisher, Reply, MAX_QUEUED};
pub use room::{Room, SYSTEM_EVENTS, SYSTEM_PREFIX};
pub use stats::{
    PublishCounts, PublisherStats, ReceiveCounts, SubscriberStats, MAX_ROOMS_IN_STATS, OTHER_ROOMS,
};
pub use subscriber::{
    GetSubscriberStats, RedisSubscriber, SubscriberIdentity, UnwatchRoom, WatchRoom,
};
