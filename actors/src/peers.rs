//! The `Peers` actor: this server's announcements and its view of the other servers.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::prelude::*;
use serde::Serialize;

use crate::{
    events::Announcement, Broker, Delivery, Error, Evicted, NewEvent, Publish, Room, Subscribe,
};

/// The number of open WebSocket connections on this server.
///
/// Shared memory rather than a message: sessions on every HTTP worker thread add and
/// remove themselves, and `/stats` and the heartbeats read it. It is one counter with
/// no invariant tying it to other state, so an atomic is exact and cheaper than a
/// message per connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectionGauge(Arc<AtomicUsize>);

impl ConnectionGauge {
    /// One more connection.
    pub fn open(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// One connection fewer.
    pub fn close(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Settings of the [`Peers`] actor.
#[derive(Debug, Clone)]
pub struct PeersConfig {
    /// This server's id.
    pub server_id: String,
    /// This process's random id (tells a duplicate server id from our own events).
    pub instance_id: String,
    /// How often this server sends `health_check`.
    pub heartbeat: Duration,
}

impl PeersConfig {
    /// PROTOCOL.md §4 `PEER_HEARTBEAT_MS`.
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(2000);
    /// A peer is forgotten after this many of its heartbeat intervals without one.
    pub const MISSED_HEARTBEATS: u32 = 3;
    /// An announced heartbeat above this (an hour) is taken as this: anyone can
    /// publish on `system:events` through Redis, so its numbers are bounded here.
    pub const MAX_HEARTBEAT_MS: u64 = 3_600_000;
}

/// One live peer, as `/health` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    /// The peer's server id.
    pub server_id: String,
    /// The peer process's random id.
    pub instance_id: String,
    /// Its WebSocket connections, as of its last event.
    pub connections: usize,
    /// Its heartbeat interval.
    pub heartbeat_ms: u64,
    /// Milliseconds since its last event.
    pub last_seen_ms: u64,
}

/// The live peers, and whether another live server uses this server's id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerList {
    /// The other live servers, by server id.
    pub peers: Vec<PeerInfo>,
    /// Another live process announces itself with this server's id.
    pub duplicate_id: bool,
}

/// Ask for the [`PeerList`].
#[derive(Debug, Message)]
#[rtype(result = "PeerList")]
pub struct GetPeers;

/// Publish `server_stopped` and stop the heartbeats (graceful shutdown).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), Error>")]
pub struct AnnounceStop;

struct Peer {
    announcement: Announcement,
    last_seen: Instant,
}

impl Peer {
    fn expired(&self, now: Instant, default_heartbeat: Duration) -> bool {
        let heartbeat = match self.announcement.heartbeat_ms {
            0 => default_heartbeat,
            ms => Duration::from_millis(ms.min(PeersConfig::MAX_HEARTBEAT_MS)),
        };
        let silence = heartbeat.saturating_mul(PeersConfig::MISSED_HEARTBEATS);
        now.duration_since(self.last_seen) > silence
    }
}

/// Announces this server on `system:events` (`server_started`, then `health_check`
/// every heartbeat, `server_stopped` on [`AnnounceStop`]) and keeps the other live
/// servers: a peer is listed from its first event and forgotten on its
/// `server_stopped` or after three of its heartbeat intervals in silence.
///
/// It is an ordinary in-process recipient of the broker: the same API a service uses.
pub struct Peers {
    config: PeersConfig,
    broker: Addr<Broker>,
    gauge: ConnectionGauge,
    peers: HashMap<String, Peer>,
    /// Another process with our server id (keyed by its instance id).
    duplicates: HashMap<String, Peer>,
    stopped: bool,
}

impl Peers {
    /// Starts the actor; it subscribes to `system:events` and announces this server.
    pub fn start(config: PeersConfig, broker: Addr<Broker>, gauge: ConnectionGauge) -> Addr<Peers> {
        Peers {
            config,
            broker,
            gauge,
            peers: HashMap::new(),
            duplicates: HashMap::new(),
            stopped: false,
        }
        .start()
    }

    fn announce(&self, kind: &'static str) -> impl std::future::Future<Output = Result<(), Error>> {
        let data = Announcement {
            server_id: self.config.server_id.clone(),
            instance_id: self.config.instance_id.clone(),
            heartbeat_ms: self.config.heartbeat.as_millis() as u64,
            connections: self.gauge.get(),
        };
        let publish = NewEvent::new(kind, &data).map(|event| Publish {
            room: Room::system_events(),
            event,
            key: None,
        });
        let broker = self.broker.clone();
        async move { broker.send(publish?).await?.map(|_published| ()) }
    }

    fn join_system_events(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> impl ActorFuture<Self, Output = ()> {
        let subscribe = self.broker.send(Subscribe {
            room: Room::system_events(),
            since: None,
            deliver_replay: false,
            recipient: ctx.address().recipient(),
            on_evicted: Some(ctx.address().recipient()),
            on_gap: None,
            membership: None,
        });
        async move { subscribe.await?.map(|_joined| ()) }
            .into_actor(self)
            .map(|result: Result<(), Error>, act, ctx| {
                if let Err(e) = result {
                    // Peers must not stay blind: try again after a heartbeat.
                    log::warn!("peers: subscribing to system:events failed: {e}; retrying");
                    ctx.run_later(act.config.heartbeat, |act, ctx| {
                        act.join_system_events(ctx).spawn(ctx);
                    });
                }
            })
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.stopped {
            return;
        }
        let now = Instant::now();
        let heartbeat = self.config.heartbeat;
        self.peers.retain(|id, peer| {
            let expired = peer.expired(now, heartbeat);
            if expired {
                log::warn!(
                    "peers: {id} missed {} heartbeats; forgotten",
                    PeersConfig::MISSED_HEARTBEATS
                );
            }
            !expired
        });
        self.duplicates
            .retain(|_, peer| !peer.expired(now, heartbeat));
        let sent = self.announce("health_check");
        ctx.spawn(
            async move {
                if let Err(e) = sent.await {
                    log::debug!("peers: health_check not published: {e}");
                }
            }
            .into_actor(self),
        );
    }

    fn note(&mut self, kind: &str, announcement: Announcement) {
        let stopped = kind == "server_stopped";
        if announcement.server_id == self.config.server_id {
            if announcement.instance_id == self.config.instance_id {
                return;
            }
            if stopped {
                self.duplicates.remove(&announcement.instance_id);
            } else if !self.duplicates.contains_key(&announcement.instance_id) {
                log::error!(
                    "peers: another live server uses this server's id {} (instance {}); reporting unhealthy",
                    self.config.server_id,
                    announcement.instance_id
                );
            }
            if !stopped {
                let peer = Peer {
                    announcement,
                    last_seen: Instant::now(),
                };
                self.duplicates
                    .insert(peer.announcement.instance_id.clone(), peer);
            }
            return;
        }
        let id = announcement.server_id.clone();
        if stopped {
            if self.peers.remove(&id).is_some() {
                log::info!("peers: {id} stopped");
            }
            return;
        }
        let peer = Peer {
            announcement,
            last_seen: Instant::now(),
        };
        if self.peers.insert(id.clone(), peer).is_none() {
            log::info!("peers: {id} is live");
        }
    }
}

impl Actor for Peers {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        self.join_system_events(ctx)
            .then(|_, act, _ctx| {
                let started = act.announce("server_started");
                async move {
                    if let Err(e) = started.await {
                        log::warn!("peers: server_started not published: {e}");
                    }
                }
                .into_actor(act)
            })
            .spawn(ctx);
        ctx.run_interval(self.config.heartbeat, Self::heartbeat);
    }
}

impl Handler<Evicted> for Peers {
    type Result = ();

    /// Dropped from `system:events` for a full mailbox: join again, peers must not go
    /// silently stale.
    fn handle(&mut self, _: Evicted, ctx: &mut Context<Self>) {
        log::warn!("peers: fell behind on system:events; joining again");
        self.join_system_events(ctx).spawn(ctx);
    }
}

impl Handler<Delivery> for Peers {
    type Result = ();

    fn handle(&mut self, msg: Delivery, _ctx: &mut Context<Self>) {
        let kind = msg.event.kind();
        if !matches!(kind, "server_started" | "health_check" | "server_stopped") {
            return;
        }
        match msg.event.data::<Announcement>() {
            Ok(announcement) => self.note(kind, announcement),
            Err(e) => log::warn!("peers: ignored a {kind} without a valid announcement: {e}"),
        }
    }
}

impl Handler<GetPeers> for Peers {
    type Result = MessageResult<GetPeers>;

    fn handle(&mut self, _: GetPeers, _ctx: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        let heartbeat = self.config.heartbeat;
        let mut peers: Vec<PeerInfo> = self
            .peers
            .values()
            .filter(|peer| !peer.expired(now, heartbeat))
            .map(|peer| PeerInfo {
                server_id: peer.announcement.server_id.clone(),
                instance_id: peer.announcement.instance_id.clone(),
                connections: peer.announcement.connections,
                heartbeat_ms: peer.announcement.heartbeat_ms,
                last_seen_ms: now.duration_since(peer.last_seen).as_millis() as u64,
            })
            .collect();
        peers.sort_by(|a, b| a.server_id.cmp(&b.server_id));
        let duplicate_id = self
            .duplicates
            .values()
            .any(|peer| !peer.expired(now, heartbeat));
        MessageResult(PeerList {
            peers,
            duplicate_id,
        })
    }
}

impl Handler<AnnounceStop> for Peers {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(&mut self, _: AnnounceStop, _ctx: &mut Context<Self>) -> Self::Result {
        self.stopped = true;
        Box::pin(self.announce("server_stopped"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(heartbeat_ms: u64, last_seen: Instant) -> Peer {
        let announcement = Announcement {
            server_id: "s".into(),
            instance_id: "i".into(),
            heartbeat_ms,
            connections: 0,
        };
        Peer {
            announcement,
            last_seen,
        }
    }

    #[test]
    fn a_peer_expires_after_three_of_its_heartbeats() {
        let seen = Instant::now();
        let p = peer(100, seen);
        assert!(!p.expired(seen + Duration::from_millis(299), Duration::from_secs(2)));
        assert!(p.expired(seen + Duration::from_millis(301), Duration::from_secs(2)));
    }

    #[test]
    fn absurd_announced_heartbeats_neither_overflow_nor_live_forever() {
        let seen = Instant::now();
        let p = peer(u64::MAX, seen);
        assert!(!p.expired(seen, Duration::from_secs(2)));
        let cap = Duration::from_millis(PeersConfig::MAX_HEARTBEAT_MS) * 3;
        assert!(p.expired(seen + cap + Duration::from_secs(1), Duration::from_secs(2)));
    }
}
