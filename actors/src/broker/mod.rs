//! The `Broker` actor: the hub between publishers, the backplane and recipients.
//! What it does for durable rooms (numbering, catch-up, recovery) is in `durable.rs`;
//! for presence rooms (this server's members, their joins and leaves) in `presence.rs`.

mod durable;
mod presence;

use std::{
    cell::Cell,
    collections::{HashMap, HashSet},
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use actix::{dev::SendError, prelude::*};
use tokio::sync::mpsc;

use self::{durable::DurableRooms, presence::PresenceRooms};
use crate::{
    backplane::{Backplane, BackplaneConfig, Publishing},
    durable::DurableConfig,
    presence::{
        CountPresence, Member, PresenceChange, PresenceConfig, PresenceCount, ReadPresence,
    },
    subscriber::SubscriberIdentity,
    Delivery, Error, Event, EvictReason, Evicted, Gap, GapReason, GetHealth, GetStats,
    HealthStatus, Inbound, Joined, Leave, Publish, ResetStats, Room, Shutdown, Stats, Subscribe,
    Unsubscribe, UnsubscribeAll,
};

/// Events from Redis waiting for the broker, at most, by default
/// (`LIMIT_INBOUND_EVENTS`). Past it the subscriber drops and counts them
/// (`droppedEvents`) and tells the broker which rooms lost events, before their next
/// event: durable rooms read them back, plain rooms' recipients get a `gap`
/// `overloaded`. An overloaded server sheds load, and never silently.
pub const INBOUND_CAPACITY: usize = 8192;

/// The broker's settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// This server's id, stamped on every event it publishes (`serverId`).
    pub server_id: String,
    /// Random per process; tells a duplicate server id from our own echo.
    pub instance_id: String,
    /// How long a [`Subscribe`] waits for the backplane to confirm the room.
    pub subscribe_timeout: Duration,
    /// The backplane.
    pub backplane: BackplaneConfig,
    /// Which rooms are durable, and their history's bounds.
    pub durable: DurableConfig,
    /// Which rooms have presence.
    pub presence: PresenceConfig,
    /// Events from Redis waiting for the broker, at most (`LIMIT_INBOUND_EVENTS`).
    pub inbound_capacity: usize,
}

impl BrokerConfig {
    /// PROTOCOL.md §4 `SUBSCRIBE_TIMEOUT_MS`.
    pub const DEFAULT_SUBSCRIBE_TIMEOUT: Duration = Duration::from_millis(5000);

    /// The defaults, on the given backplane, with a fresh instance id.
    pub fn new(server_id: impl Into<String>, backplane: BackplaneConfig) -> BrokerConfig {
        BrokerConfig {
            server_id: server_id.into(),
            instance_id: new_instance_id(),
            subscribe_timeout: Self::DEFAULT_SUBSCRIBE_TIMEOUT,
            backplane,
            durable: DurableConfig::default(),
            presence: PresenceConfig::default(),
            inbound_capacity: INBOUND_CAPACITY,
        }
    }
}

/// A random id for this process, 16 hex digits.
pub fn new_instance_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// A room's recipients, each with whom to tell of an eviction or a gap. A map, so a
/// recipient leaves a room of thousands in O(1).
type Members = HashMap<Recipient<Delivery>, Notify>;

/// Whom to tell, for one recipient in one room, when it is evicted or the room has a
/// gap (`Subscribe::on_evicted`, `Subscribe::on_gap`), and, in a presence room where
/// it is a member, its client id and whom to tell of the others' joins and leaves.
#[derive(Debug, Clone)]
struct Notify {
    evicted: Option<Recipient<Evicted>>,
    gap: Option<Recipient<Gap>>,
    presence: Option<MemberNotify>,
}

/// A recipient that is a member of a presence room: its client id, and whom to tell
/// of the others' joins and leaves.
#[derive(Debug, Clone)]
struct MemberNotify {
    client: Arc<str>,
    on_change: Recipient<PresenceChange>,
}

/// The hub. Rooms map to local recipients (WebSocket sessions and in-process
/// services, all as `Recipient<Delivery>`, so this crate knows nothing of HTTP), and
/// each room with a recipient holds one backplane subscription, reference-counted.
///
/// A publish is delivered here at once, then sent to the backplane; events from
/// the backplane are delivered as they arrive, so a room's events reach each of its
/// recipients in the order this server got them. An event is encoded once and the
/// same `Arc` goes to every recipient.
///
/// Bounded: a recipient whose mailbox is full is dropped from every room and told
/// so ([`Evicted`]); the broker never queues for a recipient that cannot keep up.
pub struct Broker {
    server_id: Arc<str>,
    subscribe_timeout: Duration,
    backplane: Backplane,
    rooms: HashMap<Room, Members>,
    /// Subscribes waiting for the backplane, per room: a room is wanted while it has
    /// members or pending subscribes.
    pending: HashMap<Room, usize>,
    /// The rooms of each recipient, so a leaving session costs its rooms, not all rooms.
    memberships: HashMap<Recipient<Delivery>, HashSet<Room>>,
    /// What this server keeps for the durable rooms it holds.
    durable: DurableRooms,
    /// This server's members of presence rooms.
    presence: PresenceRooms,
    evictions: u64,
    closed: bool,
}

impl Broker {
    /// Starts a broker and, on Redis, its two supervised link actors.
    pub fn start(config: BrokerConfig) -> Addr<Broker> {
        Broker::create(move |ctx| {
            let server_id: Arc<str> = config.server_id.into();
            let identity = SubscriberIdentity {
                server_id: server_id.clone(),
                instance_id: config.instance_id.into(),
            };
            // Events from Redis come on a bounded channel of their own (see
            // `RedisSubscriber`), not through the mailbox the sessions share.
            let (inbound, mut events) = mpsc::channel(config.inbound_capacity.max(1));
            ctx.add_stream(futures_util::stream::poll_fn(move |cx| {
                events.poll_recv(cx)
            }));
            let durable = DurableRooms::new(config.durable.clone());
            let presence = PresenceRooms::new(config.presence, &server_id, &identity.instance_id);
            let backplane = Backplane::start(config.backplane, config.durable, identity, inbound);
            let mut broker = Broker {
                server_id,
                subscribe_timeout: config.subscribe_timeout,
                backplane,
                rooms: HashMap::new(),
                pending: HashMap::new(),
                memberships: HashMap::new(),
                durable,
                presence,
                evictions: 0,
                closed: false,
            };
            broker.start_presence(ctx);
            // `system:events` is always subscribed (PROTOCOL.md §1). The request is
            // queued as it is made; nobody waits for its confirmation.
            drop(broker.watch(Room::system_events()));
            broker
        })
    }

    fn watch(&mut self, room: Room) -> ResponseFuture<Result<(), Error>> {
        self.backplane.watch(room)
    }

    fn unwatch(&mut self, room: Room) {
        if room.as_str() == crate::SYSTEM_EVENTS {
            return;
        }
        self.durable.release(&room);
        log::debug!("broker {}: releasing {room}", self.server_id);
        self.backplane.unwatch(room);
    }

    fn is_wanted(&self, room: &Room) -> bool {
        self.rooms.contains_key(room) || self.pending.get(room).is_some_and(|n| *n > 0)
    }

    /// Adds a recipient to a room; answers false when it was in it already.
    fn join(&mut self, room: Room, recipient: Recipient<Delivery>, notify: Notify) -> bool {
        let rooms = self.memberships.entry(recipient.clone()).or_default();
        if !rooms.insert(room.clone()) {
            return false;
        }
        self.rooms
            .entry(room)
            .or_default()
            .insert(recipient, notify);
        true
    }

    /// Tells every recipient of the room that asked that its events may have been
    /// lost. `do_send`: a gap is never dropped for a full mailbox, and there is one per
    /// room per lost link.
    fn report_gap(&mut self, gap: Gap) {
        log::info!(
            "broker {}: gap in {} ({:?}); telling its recipients",
            self.server_id,
            gap.room,
            gap.reason
        );
        self.durable.stats.gaps_unrecovered += 1;
        self.durable.stats.gaps_link_lost += u64::from(gap.reason == GapReason::LinkLost);
        self.durable.stats.gaps_overloaded += u64::from(gap.reason == GapReason::Overloaded);
        for notify in self
            .rooms
            .get(&gap.room)
            .into_iter()
            .flat_map(|m| m.values())
        {
            if let Some(on_gap) = &notify.gap {
                on_gap.do_send(gap.clone());
            }
        }
    }

    /// Events of the room may not have reached this server (`why`): a durable room
    /// reads them back from its last offset; a plain one tells its recipients.
    fn missed(&mut self, room: Room, why: GapReason, ctx: &mut Context<Self>) {
        if self.durable.is_durable(&room) {
            self.relinked(room, ctx)
        } else {
            self.report_gap(Gap {
                room,
                reason: why,
                position: None,
            })
        }
    }

    /// Events of the room were dropped before the broker took them (it fell behind):
    /// a presence room reads its members again; a durable room reads the numbered ones
    /// back, and its recipients are told of a gap only if one without an offset (a
    /// foreign publisher's) was lost too; a plain room's recipients are told.
    fn dropped(&mut self, room: Room, unnumbered: bool, ctx: &mut Context<Self>) {
        self.presence_missed(&room);
        if unnumbered && self.durable.is_durable(&room) {
            self.report_gap(Gap {
                room: room.clone(),
                reason: GapReason::Overloaded,
                position: None,
            });
        }
        self.missed(room, GapReason::Overloaded, ctx);
    }

    /// Removes a recipient from one room; the room is released when it empties.
    fn part(&mut self, room: &Room, recipient: &Recipient<Delivery>) {
        if let Some(rooms) = self.memberships.get_mut(recipient) {
            rooms.remove(room);
            if rooms.is_empty() {
                self.memberships.remove(recipient);
            }
        }
        let Some(members) = self.rooms.get_mut(room) else {
            return;
        };
        if let Some(Notify {
            presence: Some(member),
            ..
        }) = members.remove(recipient)
        {
            self.presence_leave(room, &member.client);
        }
        let Some(members) = self.rooms.get_mut(room) else {
            return;
        };
        if members.is_empty() {
            self.rooms.remove(room);
            if !self.is_wanted(room) {
                self.unwatch(room.clone());
            }
        }
    }

    fn leave(&mut self, recipient: &Recipient<Delivery>) {
        let rooms = self.memberships.remove(recipient).unwrap_or_default();
        for room in rooms {
            self.part(&room, recipient);
        }
    }

    /// Hands the event to every recipient of its room, without waiting for any.
    fn deliver(&mut self, event: Arc<Event>) {
        let Some(members) = self.rooms.get(event.room()) else {
            return;
        };
        event.mark_dispatched();
        // Recipients that cannot take the event: a full mailbox (evicted, and told)
        // or a closed one (gone).
        let mut dropped = Vec::new();
        for recipient in members.keys() {
            let delivery = Delivery {
                event: event.clone(),
            };
            match recipient.try_send(delivery) {
                Ok(()) => {}
                Err(SendError::Full(_)) => dropped.push((recipient.clone(), true)),
                Err(SendError::Closed(_)) => dropped.push((recipient.clone(), false)),
            }
        }
        for (recipient, full) in dropped {
            if full {
                self.evict(&recipient, event.room());
            } else {
                self.leave(&recipient);
            }
        }
    }

    /// Drops a recipient whose mailbox is full from every room, and tells it so.
    fn evict(&mut self, recipient: &Recipient<Delivery>, room: &Room) {
        let on_evicted = self
            .rooms
            .get(room)
            .and_then(|members| members.get(recipient))
            .and_then(|notify| notify.evicted.clone());
        self.leave(recipient);
        self.evictions += 1;
        log::warn!(
            "broker {}: a recipient in {room} has a full mailbox; dropped from its rooms ({} so far)",
            self.server_id,
            self.evictions
        );
        if let Some(on_evicted) = on_evicted {
            on_evicted.do_send(Evicted {
                reason: EvictReason::MailboxFull,
            });
        }
    }
}

impl Actor for Broker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The broker is the hub every session and service sends to; a deep mailbox
        // absorbs bursts, and senders that must not wait use `try_send`.
        ctx.set_mailbox_capacity(4096);
    }
}

impl Handler<Publish> for Broker {
    type Result = Publishing;

    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) -> Publishing {
        if self.closed {
            return Publishing::Done(Err(Error::ShuttingDown));
        }
        let durable = self.durable.is_durable(&msg.room);
        let key = msg.key;
        let event = Arc::new(Event::encode(
            msg.room,
            &msg.event,
            &self.server_id,
            key.as_ref(),
        ));
        if !durable && key.is_none() {
            self.deliver(event.clone());
            return self.backplane.publish(event);
        }
        // Not local-first: it comes back through the backplane, numbered, or not at
        // all when its key was used before.
        let (publishing, here) = self.backplane.publish_ordered(event, durable, key);
        if let Some(event) = here {
            self.arrive(event, ctx);
        }
        publishing
    }
}

impl Handler<Subscribe> for Broker {
    type Result = ResponseActFuture<Self, Result<Joined, Error>>;

    /// Confirms the room with the backplane; in a presence room, then writes the
    /// member; in a durable room, then finds where the recipient enters the numbering
    /// (`durable.rs`). The recipient joins in the same step as its position is taken,
    /// so it misses no event and gets none twice.
    fn handle(&mut self, msg: Subscribe, _ctx: &mut Context<Self>) -> Self::Result {
        if self.closed {
            return Box::pin(fut::ready(Err(Error::ShuttingDown)));
        }
        let room = msg.room;
        *self.pending.entry(room.clone()).or_default() += 1;
        let deadline = self.subscribe_timeout;
        let confirmed = crate::link::with_deadline(deadline, "SUBSCRIBE", self.watch(room.clone()));
        let recipient = msg.recipient;
        let membership = msg
            .membership
            .filter(|_| self.presence.config.is_presence(&room));
        let notify = Notify {
            evicted: msg.on_evicted,
            gap: msg.on_gap,
            presence: membership.as_ref().map(|m| MemberNotify {
                client: m.member.client.clone(),
                on_change: m.on_change.clone(),
            }),
        };
        let since = msg.since;
        let deliver_replay = msg.deliver_replay;
        let (entering, member_of) = (room.clone(), room.clone());
        // Whether this attempt holds its member (`presence_join`): let go of once,
        // when it fails or when the recipient was in the room already.
        let held = Rc::new(Cell::new(false));
        let holding = held.clone();
        Box::pin(
            confirmed
                .into_actor(self)
                .then(
                    move |result, act, _ctx| -> ResponseActFuture<Self, Result<(), Error>> {
                        match (result, membership) {
                            (Ok(()), Some(membership)) if !act.closed => {
                                holding.set(true);
                                let written = act.presence_join(&member_of, &membership);
                                let written = async move {
                                    written.await.unwrap_or(Err(Error::ShuttingDown))
                                };
                                let written =
                                    crate::link::with_deadline(deadline, "presence join", written);
                                Box::pin(written.into_actor(act))
                            }
                            (result, _) => Box::pin(fut::ready(result)),
                        }
                    },
                )
                .then(move |result, act, ctx| match result {
                    Ok(()) => act.enter(entering, since, ctx),
                    Err(e) => Box::pin(fut::ready(Err(e))),
                })
                .map(move |result, act, _ctx| {
                    if let Some(n) = act.pending.get_mut(&room) {
                        *n -= 1;
                        if *n == 0 {
                            act.pending.remove(&room);
                        }
                    }
                    let result = match result {
                        Ok(joining) if recipient.connected() && !act.closed => {
                            if !act.join(room.clone(), recipient.clone(), notify.clone()) {
                                act.let_go(&room, &notify, &held);
                            }
                            let joined = act.durable.joined(&room, joining);
                            if deliver_replay {
                                act.durable.replay(&room, &joined, &recipient, &notify.gap);
                            }
                            Ok(joined)
                        }
                        // The recipient went away while the room was being confirmed.
                        Ok(_) => Err(Error::ShuttingDown),
                        Err(e) => {
                            log::warn!("broker {}: subscribe to {room} failed: {e}", act.server_id);
                            Err(e)
                        }
                    };
                    if result.is_err() {
                        act.let_go(&room, &notify, &held);
                        if !act.is_wanted(&room) {
                            act.unwatch(room);
                        }
                    }
                    result
                }),
        )
    }
}

impl Broker {
    /// Lets go of the member a subscribe attempt held, if it held one.
    fn let_go(&mut self, room: &Room, notify: &Notify, held: &Cell<bool>) {
        if let (true, Some(member)) = (held.replace(false), &notify.presence) {
            self.presence_leave(room, &member.client);
        }
    }
}

impl Handler<Unsubscribe> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Context<Self>) {
        self.part(&msg.room, &msg.recipient);
    }
}

impl Handler<UnsubscribeAll> for Broker {
    type Result = ();

    fn handle(&mut self, msg: UnsubscribeAll, _ctx: &mut Context<Self>) {
        let recipients: Vec<_> = self
            .rooms
            .get(&msg.room)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for recipient in recipients {
            self.part(&msg.room, &recipient);
        }
    }
}

impl Handler<Leave> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Leave, _ctx: &mut Context<Self>) {
        self.leave(&msg.recipient);
    }
}

impl StreamHandler<Inbound> for Broker {
    fn handle(&mut self, inbound: Inbound, ctx: &mut Context<Self>) {
        match inbound {
            Inbound::Event(event) => match event.presence() {
                Some(kind) if self.presence.config.is_presence(event.room()) => {
                    self.presence_arrived(&event, kind)
                }
                _ => self.arrive(event, ctx),
            },
            Inbound::Relinked(room) => {
                self.presence_relinked(&room);
                self.missed(room, GapReason::LinkLost, ctx);
            }
            Inbound::AfterDrop { event, unnumbered } => {
                self.dropped(event.room().clone(), unnumbered, ctx);
                StreamHandler::handle(self, Inbound::Event(event), ctx);
            }
            Inbound::Dropped { room, unnumbered } => self.dropped(room, unnumbered, ctx),
        }
    }

    /// The subscriber holds the sender for the life of the process; on the memory
    /// backplane it is dropped at once. Either way the broker keeps running.
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl Handler<GetHealth> for Broker {
    type Result = ResponseFuture<HealthStatus>;

    fn handle(&mut self, _: GetHealth, _ctx: &mut Context<Self>) -> Self::Result {
        let status = self.backplane.link_status();
        let server_id = self.server_id.to_string();
        let backplane = self.backplane.kind();
        Box::pin(async move {
            let (publisher, subscriber) = status.await;
            HealthStatus {
                is_healthy: publisher.ready && subscriber.ready,
                publisher_ready: publisher.ready,
                subscriber_ready: subscriber.ready,
                server_id,
                active_subscriptions: subscriber.channels,
                reconnect_attempts: publisher.failed_attempts + subscriber.failed_attempts,
                backplane,
            }
        })
    }
}

impl Handler<GetStats> for Broker {
    type Result = ResponseFuture<Stats>;

    fn handle(&mut self, _: GetStats, _ctx: &mut Context<Self>) -> Self::Result {
        let stats = self.backplane.stats();
        let durable = self.durable.stats.clone();
        let presence = self.presence.stats();
        Box::pin(async move {
            let mut stats = stats.await;
            durable.add_to(&mut stats.subscriber);
            presence.add_to(&mut stats.subscriber);
            stats
        })
    }
}

impl Handler<ResetStats> for Broker {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: ResetStats, _ctx: &mut Context<Self>) -> Self::Result {
        self.durable.stats = Default::default();
        self.presence.stats = Default::default();
        self.backplane.reset_stats()
    }
}

impl Handler<Shutdown> for Broker {
    type Result = ResponseActFuture<Self, ()>;

    /// This server's presence members leave (announced) before the links close.
    fn handle(&mut self, _: Shutdown, _ctx: &mut Context<Self>) -> Self::Result {
        self.closed = true;
        self.rooms.clear();
        self.memberships.clear();
        let leaving = futures_util::future::join_all(self.presence_shutdown());
        Box::pin(leaving.into_actor(self).then(|results, act, _ctx| {
            for result in results {
                if let Err(e) = result {
                    log::warn!(
                        "broker {}: presence members not removed at shutdown: {e}",
                        act.server_id
                    );
                }
            }
            log::info!("broker {}: shutting down the backplane", act.server_id);
            act.backplane.shutdown().into_actor(act)
        }))
    }
}

impl Handler<ReadPresence> for Broker {
    type Result = ResponseFuture<Result<Vec<Arc<Member>>, Error>>;

    fn handle(&mut self, msg: ReadPresence, _ctx: &mut Context<Self>) -> Self::Result {
        self.read_presence(msg)
    }
}

impl Handler<CountPresence> for Broker {
    type Result = ResponseFuture<Result<PresenceCount, Error>>;

    fn handle(&mut self, msg: CountPresence, _ctx: &mut Context<Self>) -> Self::Result {
        self.count_presence(msg)
    }
}
