//! The broker's presence rooms (PROTOCOL.md §9): this server's members of each room,
//! written to the backplane in order (one write in flight per room, the others
//! batched behind it), refreshed every third of `PRESENCE_TTL_MS`, and the joins and
//! leaves of every server handed to the room's recipients.
//!
//! Joins and leaves reach every server, this one included, through the backplane
//! (the scripts publish them), so each server delivers them in the order Redis made
//! them, and a member is never told of itself.

use std::{collections::HashMap, sync::Arc, time::Duration};

use actix::{dev::SendError, prelude::*, WeakAddr};
use tokio::sync::oneshot;

use super::Broker;
use crate::{
    presence::{
        scripts::Announcer,
        view::{News, View},
        Applied, CountPresence, Member, Membership, Op, PresenceChange, PresenceConfig,
        PresenceCount, PresenceKind, ReadPresence,
    },
    Error, Event, Room, SubscriberStats,
};

/// The most ops one write carries; the rest follow in the next.
const MAX_OPS_PER_WRITE: usize = 512;

/// The most ops a room queues behind the write in flight. Past it the queue is
/// dropped and the next write is a resync: this server's members as they are then
/// (logged, counted in `presenceResyncs`).
const MAX_QUEUED_OPS: usize = 4096;

/// How long after a failed write the room is written again, at most (sooner when the
/// refresh interval is shorter).
const WRITE_RETRY: Duration = Duration::from_secs(1);

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
    members: HashMap<Arc<str>, Held>,
    /// Writes waiting for the one in flight (`None` once a resync replaced them), each
    /// join with whom to tell when it is written.
    queue: Vec<(Option<Op>, Option<JoinAnswer>)>,
    /// A write is out.
    writing: bool,
    /// The next write sends every member: the backplane lost some, a write failed and
    /// what it did is unknown, or the queue overflowed.
    resync: bool,
    /// A refresh is due.
    refresh: bool,
    /// The backplane holds members of this server in the room (as of the last write).
    stored: bool,
    /// The last write failed (its failure was logged; the next success is too).
    failing: bool,
    /// The last read of the view failed (logged once until a read works again).
    read_failing: bool,
    /// The room's members on every server, as told to its recipients here.
    view: View,
    /// Joins written before the view's first read came back: answered after it, so
    /// that every member here is told of every change after its answer.
    awaiting_view: Vec<JoinAnswer>,
    /// The view is to be read once the next write is done (after a lost link: once
    /// this server's members are written again, so they do not seem to leave).
    read_after_write: bool,
}

/// A member, and how many subscribes of its session hold it: the one that joined,
/// and any attempt still waiting for its answer (a client may subscribe, unsubscribe
/// and subscribe again before the first answer). It leaves when the last lets go.
struct Held {
    member: Arc<Member>,
    holds: usize,
}

impl Local {
    /// Nothing here needs the room any more: no member, nothing to write or out, no
    /// read of the view out (its answer must find this room, not a later one).
    fn is_idle(&self) -> bool {
        self.members.is_empty()
            && self.queue.is_empty()
            && !self.writing
            && !self.stored
            && !self.view.is_reading()
    }

    /// Queues an op; past [`MAX_QUEUED_OPS`] the ops give way to a resync (the joins'
    /// answers stay queued for it). Answers whether the queue overflowed now.
    fn push(&mut self, op: Op, answer: Option<JoinAnswer>) -> bool {
        if self.resync {
            self.queue.push((None, answer));
            return false;
        }
        self.queue.push((Some(op), answer));
        if self.queue.len() <= MAX_QUEUED_OPS {
            return false;
        }
        self.resync = true;
        for (op, _) in &mut self.queue {
            *op = None;
        }
        true
    }
}

/// A write came back.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct PresenceWritten {
    /// The room written.
    room: Room,
    /// Whether it was a resync.
    resync: bool,
    /// This server's members in the room when the write was sent, if the write
    /// carried every change queued: the backplane should then hold as many.
    expected: Option<u64>,
    /// What the backplane did.
    result: Result<Applied, Error>,
    /// The joins it carried, to answer.
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

    /// Adds a member to a presence room (or holds it once more); the answer comes once
    /// the backplane has it (every server's `presence` lists it from then on). Each
    /// call is matched by one [`Broker::presence_leave`].
    pub(super) fn presence_join(
        &mut self,
        room: &Room,
        membership: &Membership,
    ) -> oneshot::Receiver<Result<(), Error>> {
        let (tx, rx) = oneshot::channel();
        let local = self.presence.rooms.entry(room.clone()).or_default();
        let held = local
            .members
            .entry(membership.member.client.clone())
            .or_insert_with(|| Held {
                member: Arc::new(Member::new(&membership.member, &self.server_id)),
                holds: 0,
            });
        held.holds += 1;
        let member = held.member.clone();
        let overflowed = local.push(Op::Join(member), Some(tx));
        self.queue_overflowed(room, overflowed);
        self.write_presence(room.clone());
        rx
    }

    /// Lets go of a member held by [`Broker::presence_join`]; the last hold removes it
    /// (announced to the others once written).
    pub(super) fn presence_leave(&mut self, room: &Room, client: &Arc<str>) {
        let Some(local) = self.presence.rooms.get_mut(room) else {
            return;
        };
        let Some(held) = local.members.get_mut(client) else {
            return;
        };
        held.holds -= 1;
        if held.holds > 0 {
            return;
        }
        let member = local.members.remove(client).expect("held above").member;
        let overflowed = local.push(Op::Leave(member), None);
        self.queue_overflowed(room, overflowed);
        self.write_presence(room.clone());
    }

    fn queue_overflowed(&mut self, room: &Room, overflowed: bool) {
        if overflowed {
            self.presence.stats.resyncs += 1;
            log::warn!(
                "broker {}: over {MAX_QUEUED_OPS} presence changes of {room} wait for Redis; \
                 the next write sends this server's members whole",
                self.server_id
            );
        }
    }

    /// The pub/sub link came back: the backplane may have lost this server's members
    /// (Redis restarted), so they are written again, whole; and the joins and leaves
    /// published meanwhile did not come, so the room is read and what changed is told.
    pub(super) fn presence_relinked(&mut self, room: &Room) {
        if let Some(local) = self.presence.rooms.get_mut(room) {
            local.resync = true;
            local.read_after_write = true;
            self.write_presence(room.clone());
        }
    }

    /// News of the room may have been dropped before the broker took it (it fell
    /// behind): the room is read, and what changed is told.
    pub(super) fn presence_missed(&mut self, room: &Room) {
        if self.presence.rooms.contains_key(room) {
            self.read_view(room.clone());
        }
    }

    /// Reads the room's members for its view, unless a read is out.
    fn read_view(&mut self, room: Room) {
        let Some(local) = self.presence.rooms.get_mut(&room) else {
            return;
        };
        if local.view.start_read() {
            self.send_view_read(room);
        }
    }

    /// Sends the view's read (marked out already): news stays held until it answers.
    fn send_view_read(&mut self, room: Room) {
        let read = self
            .backplane
            .presence_read(room.clone(), self.presence.announcer.clone());
        let broker = self.presence.broker.clone();
        actix::spawn(async move {
            let result = read.await;
            if let Some(broker) = broker.and_then(|b| b.upgrade()) {
                broker.do_send(ViewRead { room, result });
            }
        });
    }

    /// Sends the room's next write, unless one is out.
    fn write_presence(&mut self, room: Room) {
        let Some(local) = self.presence.rooms.get_mut(&room) else {
            return;
        };
        if local.writing {
            return;
        }
        if local.queue.is_empty() && !local.resync && !local.refresh {
            if local.is_idle() {
                self.presence.rooms.remove(&room);
            }
            return;
        }
        let resync = local.resync;
        let (ops, joins): (Vec<Op>, Vec<_>) = if resync {
            // Every member as it is now: the queued joins are among them, and the
            // queued leaves are not, so the resync removes them.
            let joins = local.queue.drain(..).filter_map(|(_, tx)| tx).collect();
            let ops = local
                .members
                .values()
                .map(|held| Op::Join(held.member.clone()))
                .collect();
            (ops, joins)
        } else {
            let n = local.queue.len().min(MAX_OPS_PER_WRITE);
            let (ops, joins): (Vec<_>, Vec<_>) = local.queue.drain(..n).unzip();
            (
                ops.into_iter().flatten().collect(),
                joins.into_iter().flatten().collect(),
            )
        };
        let expected = local.queue.is_empty().then_some(local.members.len() as u64);
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
                broker.do_send(PresenceWritten {
                    room,
                    resync,
                    expected,
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
            Ok(member) => self.presence_news(event.room(), kind, Arc::new(member)),
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

    /// News of the room's members: told when it changes the room's view here. A room
    /// without members here has nobody to tell.
    fn presence_news(&mut self, room: &Room, kind: PresenceKind, member: Arc<Member>) {
        let Some(local) = self.presence.rooms.get_mut(room) else {
            return;
        };
        if let Some((kind, member)) = local.view.news(kind, member) {
            self.tell_presence(room, kind, member);
        }
    }

    /// Hands a join or a leave to the room's recipients that asked, except the member.
    fn tell_presence(&mut self, room: &Room, kind: PresenceKind, member: Arc<Member>) {
        let Some(recipients) = self.rooms.get(room) else {
            return;
        };
        let change = PresenceChange::new(room.clone(), kind, member);
        let mut full = Vec::new();
        for (recipient, notify) in recipients {
            let Some(presence) = &notify.presence else {
                continue;
            };
            if presence.client == *change.member.client() {
                continue;
            }
            if let Err(SendError::Full(_)) = presence.on_change.try_send(change.clone()) {
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

/// A read of a room's members for its view came back.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct ViewRead {
    room: Room,
    result: Result<Vec<Arc<Member>>, Error>,
}

impl Handler<ViewRead> for Broker {
    type Result = ();

    fn handle(&mut self, msg: ViewRead, ctx: &mut Context<Self>) {
        let Some(local) = self.presence.rooms.get_mut(&msg.room) else {
            return;
        };
        let members = match msg.result {
            Ok(members) => members,
            Err(e) => {
                if !std::mem::replace(&mut local.read_failing, true) {
                    log::warn!(
                        "broker {}: reading the members of {} failed: {e}; reading again every {:?} until it works",
                        self.server_id,
                        msg.room,
                        WRITE_RETRY.min(self.presence.config.refresh_interval())
                    );
                }
                // The read stays out, so news stays held in order; the same read is
                // sent again.
                let retry = WRITE_RETRY.min(self.presence.config.refresh_interval());
                let room = msg.room;
                ctx.run_later(retry, move |act, _ctx| {
                    if act.presence.rooms.contains_key(&room) {
                        act.send_view_read(room);
                    }
                });
                return;
            }
        };
        if std::mem::take(&mut local.read_failing) {
            log::info!(
                "broker {}: reading the members of {} works again",
                self.server_id,
                msg.room
            );
        }
        let (told, again): (Vec<News>, bool) = local.view.read(members);
        for join in local.awaiting_view.drain(..) {
            let _ = join.send(Ok(()));
        }
        for (kind, member) in told {
            self.tell_presence(&msg.room, kind, member);
        }
        if again {
            self.read_view(msg.room);
        } else {
            // The room may have emptied while the read was out.
            self.write_presence(msg.room);
        }
    }
}

impl Handler<PresenceWritten> for Broker {
    type Result = ();

    fn handle(&mut self, msg: PresenceWritten, ctx: &mut Context<Self>) {
        let server_id = self.server_id.clone();
        let Some(local) = self.presence.rooms.get_mut(&msg.room) else {
            // Shut down meanwhile: the joins fail.
            for join in msg.joins {
                let _ = join.send(Err(Error::ShuttingDown));
            }
            return;
        };
        local.writing = false;
        let applied = match msg.result {
            Ok(applied) => applied,
            Err(e) => {
                if !local.failing {
                    log::warn!(
                        "broker {server_id}: presence write in {} failed: {e}; writing every member again until it works",
                        msg.room
                    );
                }
                local.failing = true;
                local.resync = true;
                local.stored = true;
                self.presence.stats.failed_writes += 1;
                for join in msg.joins {
                    let _ = join.send(Err(e.clone()));
                }
                let retry = WRITE_RETRY.min(self.presence.config.refresh_interval());
                let room = msg.room;
                ctx.run_later(retry, move |act, _ctx| act.write_presence(room));
                return;
            }
        };
        if std::mem::take(&mut local.failing) {
            log::info!(
                "broker {server_id}: presence writes in {} work again",
                msg.room
            );
        }
        // Redis lost members of this server: its entry was gone (a restart, or a sweep
        // after this server stalled), or it holds another number of them (a key
        // evicted or half restored).
        let lost = applied.lost && local.stored;
        let miscounted = msg.expected.is_some_and(|n| n != applied.members);
        if (lost || miscounted) && !msg.resync {
            log::warn!(
                "broker {server_id}: Redis lost this server's presence members of {}; writing them again",
                msg.room
            );
            local.resync = true;
            self.presence.stats.resyncs += 1;
        }
        local.stored = applied.members > 0;
        let first_read = !local.view.is_known();
        // After a lost link, the read waits for the resync write, so this server's
        // own members do not seem to leave.
        let read = first_read || (msg.resync && std::mem::take(&mut local.read_after_write));
        if first_read {
            local.awaiting_view.extend(msg.joins);
        } else {
            for join in msg.joins {
                let _ = join.send(Ok(()));
            }
        }
        for (kind, member) in applied.here {
            self.presence_news(&msg.room, kind, member);
        }
        if read {
            self.read_view(msg.room.clone());
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
