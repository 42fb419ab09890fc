//! The broker's presence rooms (PROTOCOL.md §9): this server's members of each room,
//! written to the backplane in order (one write in flight per room, the others
//! batched behind it), refreshed every third of `PRESENCE_TTL_MS`, and the joins and
//! leaves of every server handed to the room's recipients.
//!
//! Joins and leaves reach every server, this one included, through the backplane
//! (the scripts publish them), so each server delivers them in the order Redis made
//! them, and a member is never told of itself.

use std::{collections::HashMap, sync::Arc};

use actix::{dev::SendError, prelude::*, WeakAddr};
use tokio::sync::oneshot;

use super::Broker;
use crate::{
    presence::{
        scripts::Announcer, Applied, CountPresence, Member, Membership, Op, PresenceChange,
        PresenceConfig, PresenceCount, PresenceKind, ReadPresence,
    },
    Error, Event, Room, SubscriberStats,
};

/// The most ops one write carries; the rest follow in the next.
const MAX_OPS_PER_WRITE: usize = 512;

/// What this server keeps for the presence rooms it has members in.
pub(super) struct PresenceRooms {
    pub(super) config: PresenceConfig,
    announcer: Announcer,
    rooms: HashMap<Room, Local>,
    /// The broker itself, told when a write comes back.
    broker: Option<WeakAddr<Broker>>,
    pub(super) stats: PresenceStats,
}

/// Counters for `/stats` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub(super) struct PresenceStats {
    /// This server's members, in every presence room (a gauge, set when read).
    pub(super) members: u64,
    /// Writes the backplane failed (each followed by a resync).
    pub(super) failed_writes: u64,
    /// Resyncs: the whole member list written again.
    pub(super) resyncs: u64,
}

/// Told when a join is written (or not).
type JoinAnswer = oneshot::Sender<Result<(), Error>>;

/// One presence room on this server.
#[derive(Default)]
struct Local {
    /// This server's members, as the backplane should hold them.
    members: HashMap<Arc<str>, Arc<Member>>,
    /// Writes waiting for the one in flight, each join with whom to tell when it is
    /// written.
    ops: Vec<(Op, Option<JoinAnswer>)>,
    /// A write is out.
    writing: bool,
    /// The next write sends every member: the backplane lost some, or a write failed
    /// and what it did is unknown.
    resync: bool,
    /// A refresh is due.
    refresh: bool,
    /// The backplane holds members of this server in the room (as of the last write).
    stored: bool,
}

impl Local {
    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.ops.is_empty() && !self.writing && !self.stored
    }
}

/// A write came back.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Written {
    room: Room,
    resync: bool,
    result: Result<Applied, Error>,
    joins: Vec<JoinAnswer>,
}

impl PresenceStats {
    /// Adds them to the subscriber's statistics, as the durable rooms' are.
    pub(super) fn add_to(&self, stats: &mut SubscriberStats) {
        stats.presence_members += self.members;
        stats.presence_write_failures += self.failed_writes;
        stats.presence_resyncs += self.resyncs;
    }
}

impl PresenceRooms {
    pub(super) fn new(config: PresenceConfig, server_id: &str, instance_id: &str) -> Self {
        PresenceRooms {
            config,
            announcer: Announcer::new(server_id, instance_id),
            rooms: HashMap::new(),
            broker: None,
            stats: PresenceStats::default(),
        }
    }

    /// The counters, with this server's members now.
    pub(super) fn stats(&self) -> PresenceStats {
        PresenceStats {
            members: self.rooms.values().map(|r| r.members.len() as u64).sum(),
            ..self.stats.clone()
        }
    }
}

impl Broker {
    /// Starts the refresh of this server's presence rooms, if there are any.
    pub(super) fn start_presence(&mut self, ctx: &mut Context<Self>) {
        self.presence.broker = Some(ctx.address().downgrade());
        if self.presence.config.rooms.is_empty() {
            return;
        }
        ctx.run_interval(self.presence.config.refresh_interval(), |act, _ctx| {
            let rooms: Vec<Room> = act.presence.rooms.keys().cloned().collect();
            for room in rooms {
                if let Some(local) = act.presence.rooms.get_mut(&room) {
                    local.refresh = true;
                }
                act.write_presence(room);
            }
        });
    }

    /// Adds a member to a presence room; the answer comes once the backplane has it
    /// (every server's `presence` lists it from then on).
    pub(super) fn presence_join(
        &mut self,
        room: &Room,
        membership: &Membership,
    ) -> oneshot::Receiver<Result<(), Error>> {
        let (tx, rx) = oneshot::channel();
        let local = self.presence.rooms.entry(room.clone()).or_default();
        let member = local
            .members
            .entry(membership.member.client.clone())
            .or_insert_with(|| Arc::new(Member::new(&membership.member, &self.server_id)))
            .clone();
        local.ops.push((Op::Join(member), Some(tx)));
        self.write_presence(room.clone());
        rx
    }

    /// Removes a member from a presence room (announced to the others once written).
    pub(super) fn presence_leave(&mut self, room: &Room, client: &Arc<str>) {
        let Some(local) = self.presence.rooms.get_mut(room) else {
            return;
        };
        if let Some(member) = local.members.remove(client) {
            local.ops.push((Op::Leave(member), None));
            self.write_presence(room.clone());
        }
    }

    /// The pub/sub link came back: the backplane may have lost this server's members
    /// (Redis restarted), so they are written again, whole.
    pub(super) fn presence_relinked(&mut self, room: &Room) {
        if let Some(local) = self.presence.rooms.get_mut(room) {
            local.resync = true;
            self.write_presence(room.clone());
        }
    }

    /// Sends the room's next write, unless one is out.
    fn write_presence(&mut self, room: Room) {
        let Some(local) = self.presence.rooms.get_mut(&room) else {
            return;
        };
        if local.writing {
            return;
        }
        if local.ops.is_empty() && !local.resync && !local.refresh {
            if local.is_idle() {
                self.presence.rooms.remove(&room);
            }
            return;
        }
        let resync = local.resync;
        let (ops, joins): (Vec<Op>, Vec<_>) = if resync {
            // Every member as it is now: the queued joins are among them, and the
            // queued leaves are not, so the resync removes them.
            let joins = local.ops.drain(..).filter_map(|(_, tx)| tx).collect();
            let ops = local.members.values().cloned().map(Op::Join).collect();
            (ops, joins)
        } else {
            let n = local.ops.len().min(MAX_OPS_PER_WRITE);
            let (ops, joins): (Vec<Op>, Vec<_>) = local.ops.drain(..n).unzip();
            (ops, joins.into_iter().flatten().collect())
        };
        local.writing = true;
        local.resync = false;
        local.refresh = false;
        let write = self.backplane.presence_write(
            room.clone(),
            self.presence.announcer.clone(),
            self.presence.config.ttl,
            ops,
            resync,
        );
        let broker = self.presence.broker.clone();
        actix::spawn(async move {
            let result = write.await;
            if let Some(broker) = broker.and_then(|b| b.upgrade()) {
                broker.do_send(Written {
                    room,
                    resync,
                    result,
                    joins,
                });
            }
        });
    }

    /// A presence envelope from the backplane: a member joined or left.
    pub(super) fn presence_arrived(&mut self, event: &Event, kind: PresenceKind) {
        #[derive(serde::Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            data: &'a serde_json::value::RawValue,
        }
        let member = serde_json::from_str::<Body<'_>>(event.json())
            .map_err(|e| Error::InvalidEvent(e.to_string()))
            .and_then(|body| Member::parse(body.data.get()));
        match member {
            Ok(member) => self.tell_presence(event.room(), kind, Arc::new(member)),
            Err(e) => {
                self.durable.stats.invalid_events += 1;
                log::warn!(
                    "broker {}: a presence message in {} is not one: {e}",
                    self.server_id,
                    event.room()
                );
            }
        }
    }

    /// Hands a join or a leave to the room's recipients that asked, except the member.
    fn tell_presence(&mut self, room: &Room, kind: PresenceKind, member: Arc<Member>) {
        let Some(recipients) = self.rooms.get(room) else {
            return;
        };
        let mut full = Vec::new();
        for (recipient, notify) in recipients {
            let Some((client, on_change)) = &notify.presence else {
                continue;
            };
            if client == member.client() {
                continue;
            }
            let change = PresenceChange {
                room: room.clone(),
                kind,
                member: member.clone(),
            };
            if let Err(SendError::Full(_)) = on_change.try_send(change) {
                full.push(recipient.clone());
            }
        }
        for recipient in full {
            self.evict(&recipient, room);
        }
    }

    /// Answers a `presence` read.
    pub(super) fn read_presence(
        &mut self,
        msg: ReadPresence,
    ) -> ResponseFuture<Result<Vec<Arc<Member>>, Error>> {
        if !self.presence.config.is_presence(&msg.room) {
            return Box::pin(async move { Err(Error::NotPresence(msg.room.to_string())) });
        }
        self.backplane
            .presence_read(msg.room, self.presence.announcer.clone())
    }

    /// Answers a `presence_count`.
    pub(super) fn count_presence(
        &mut self,
        msg: CountPresence,
    ) -> ResponseFuture<Result<PresenceCount, Error>> {
        if !self.presence.config.is_presence(&msg.room) {
            return Box::pin(async move { Err(Error::NotPresence(msg.room.to_string())) });
        }
        self.backplane
            .presence_count(msg.room, self.presence.announcer.clone())
    }

    /// On shutdown: every member of this server leaves its rooms, announced, before
    /// the links close. Each write is bounded by the response timeout.
    pub(super) fn presence_shutdown(&mut self) -> Vec<ResponseFuture<Result<Applied, Error>>> {
        let rooms: Vec<Room> = self.presence.rooms.drain().map(|(room, _)| room).collect();
        rooms
            .into_iter()
            .map(|room| {
                self.backplane.presence_write(
                    room,
                    self.presence.announcer.clone(),
                    self.presence.config.ttl,
                    Vec::new(),
                    true,
                )
            })
            .collect()
    }
}

impl Handler<Written> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Written, _ctx: &mut Context<Self>) {
        let answer = match msg.result {
            Ok(applied) => {
                for (kind, member) in applied.here {
                    self.tell_presence(&msg.room, kind, member);
                }
                if let Some(local) = self.presence.rooms.get_mut(&msg.room) {
                    if applied.lost && local.stored && !msg.resync {
                        log::warn!(
                            "broker {}: the backplane lost this server's members of {}; writing them again",
                            self.server_id,
                            msg.room
                        );
                        local.resync = true;
                        self.presence.stats.resyncs += 1;
                    }
                    local.stored = applied.members > 0;
                }
                Ok(())
            }
            Err(e) => {
                log::warn!(
                    "broker {}: presence write in {} failed: {e}; the next refresh writes every member",
                    self.server_id,
                    msg.room
                );
                self.presence.stats.failed_writes += 1;
                if let Some(local) = self.presence.rooms.get_mut(&msg.room) {
                    local.resync = true;
                    local.stored = true;
                    local.writing = false;
                }
                for join in msg.joins {
                    let _ = join.send(Err(e.clone()));
                }
                // No write now: the link is likely down; the refresh tries again.
                return;
            }
        };
        for join in msg.joins {
            let _ = join.send(answer.clone());
        }
        if let Some(local) = self.presence.rooms.get_mut(&msg.room) {
            local.writing = false;
        }
        self.write_presence(msg.room);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        presence::MemberInfo, BackplaneConfig, BrokerConfig, Delivery, PubSub, Subscribe,
        Unsubscribe,
    };

    /// A member that keeps the joins and leaves it is told of.
    struct Watcher(mpsc::UnboundedSender<(PresenceKind, String)>);

    impl Actor for Watcher {
        type Context = Context<Self>;
    }

    impl Handler<Delivery> for Watcher {
        type Result = ();

        fn handle(&mut self, _: Delivery, _ctx: &mut Context<Self>) {}
    }

    impl Handler<PresenceChange> for Watcher {
        type Result = ();

        fn handle(&mut self, change: PresenceChange, _ctx: &mut Context<Self>) {
            let _ = self
                .0
                .send((change.kind, change.member.client().to_string()));
        }
    }

    fn subscribe(room: &str, watcher: &Addr<Watcher>, client: &str, user: &str) -> Subscribe {
        Subscribe {
            room: Room::new(room).unwrap(),
            since: None,
            deliver_replay: false,
            recipient: watcher.clone().recipient(),
            on_evicted: None,
            on_gap: None,
            membership: Some(Membership {
                member: MemberInfo {
                    client: client.into(),
                    user: Some(user.into()),
                    info: None,
                },
                on_change: watcher.clone().recipient(),
            }),
        }
    }

    async fn next(
        rx: &mut mpsc::UnboundedReceiver<(PresenceKind, String)>,
    ) -> (PresenceKind, String) {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a presence change within 5 s")
            .expect("the watcher lives")
    }

    /// On the memory backplane: members are listed and counted, each member is told
    /// of the others' joins and leaves but not of its own, and a room that is not a
    /// presence room is refused.
    #[actix_rt::test]
    async fn members_join_leave_and_are_counted_in_process() {
        let mut config = BrokerConfig::new("presence_test", BackplaneConfig::Memory);
        config.presence.rooms = vec![crate::Pattern::parse("lobby:*").unwrap()];
        let pubsub = PubSub::start(config);
        let broker = pubsub.broker().clone();
        let (a_tx, mut a_seen) = mpsc::unbounded_channel();
        let (b_tx, mut b_seen) = mpsc::unbounded_channel();
        let (a, b) = (Watcher(a_tx).start(), Watcher(b_tx).start());

        broker
            .send(subscribe("lobby:1", &a, "a", "alice"))
            .await
            .unwrap()
            .unwrap();
        broker
            .send(subscribe("lobby:1", &b, "b", "alice"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next(&mut a_seen).await, (PresenceKind::Join, "b".into()));
        let mut clients: Vec<String> = pubsub
            .presence("lobby:1")
            .await
            .unwrap()
            .iter()
            .map(|m| m.client().to_string())
            .collect();
        clients.sort();
        assert_eq!(clients, ["a", "b"]);
        let count = pubsub.presence_count("lobby:1").await.unwrap();
        assert_eq!(
            count,
            PresenceCount {
                clients: 2,
                users: 1
            }
        );

        broker
            .send(Unsubscribe {
                room: Room::new("lobby:1").unwrap(),
                recipient: b.clone().recipient(),
            })
            .await
            .unwrap();
        assert_eq!(next(&mut a_seen).await, (PresenceKind::Leave, "b".into()));
        assert!(
            b_seen.try_recv().is_err(),
            "b was told of nothing: a joined before it"
        );
        let count = pubsub.presence_count("lobby:1").await.unwrap();
        assert_eq!(
            count,
            PresenceCount {
                clients: 1,
                users: 1
            }
        );

        assert!(matches!(
            pubsub.presence("chat:1").await,
            Err(Error::NotPresence(_))
        ));
    }
}
