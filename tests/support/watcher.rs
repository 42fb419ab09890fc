//! The `join` and `leave` frames of presence rooms (PROTOCOL.md §9) as subscribers get
//! them: [`Watcher`] logs them, [`join_watched`] and [`leave_watched`] make a member
//! come and go while every watcher must be told, and [`assert_each_once`] checks that
//! nobody was told twice.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::presence::{clients, presence, Member};
use super::server::Server;
use super::{next_ref, now_ms, WsClient, REPLY_TIMEOUT};

/// How long a `join` or `leave` frame may take to reach a watcher.
pub const NOTICE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a member leaves a presence room.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Leave {
    /// `unsubscribe`; the session stays open.
    Unsubscribe,
    /// A close frame (1000), as from a tab being closed.
    Close,
    /// The TCP connection ends without a close frame, as on a lost network.
    Drop,
}

impl Leave {
    /// Every way, in a fixed order.
    pub const ALL: [Leave; 3] = [Leave::Unsubscribe, Leave::Close, Leave::Drop];

    /// Makes `client` leave `room` this way; the session back when it stays open.
    pub async fn apply(self, mut client: WsClient, room: &str) -> Option<WsClient> {
        match self {
            Leave::Unsubscribe => {
                client.unsubscribe(room).await;
                Some(client)
            }
            Leave::Close => {
                client.close();
                None
            }
            Leave::Drop => {
                drop(client);
                None
            }
        }
    }
}

/// A `join` or `leave` frame.
#[derive(Clone, Debug)]
pub struct Notice {
    /// `join` or `leave`.
    pub op: String,
    /// The room it is about.
    pub room: String,
    /// Who joined or left.
    pub member: Member,
}

impl Notice {
    /// Whether it is `op` about `client` in `room`.
    pub fn is(&self, op: &str, room: &str, client: &str) -> bool {
        self.op == op && self.room == room && self.member.client == client
    }
}

/// A subscriber that logs every `join` and `leave` frame it is sent. It sends no frame
/// of its own while it reads, so any other frame fails the test.
pub struct Watcher {
    /// Its session, for a request now and then (frames read meanwhile are kept).
    pub client: WsClient,
    /// Every `join` and `leave` it was sent, in order.
    pub notices: Vec<Notice>,
}

impl Watcher {
    /// Watches with `client`, subscribed already to the rooms it watches.
    pub fn new(client: WsClient) -> Watcher {
        Watcher {
            client,
            notices: Vec::new(),
        }
    }

    /// Reads until `done` holds for the log, failing the test after `timeout`.
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Notice]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(&self.notices) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.try_recv_json(left).await {
                Some(frame) => self.record(&frame),
                None => panic!("no {what} within {timeout:?}; logged: {:#?}", self.notices),
            }
        }
    }

    /// Waits for `op` about `client` in `room` and returns its member.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        op: &str,
        room: &str,
        client: &str,
    ) -> Member {
        let what = format!("{op} of {client} in {room}");
        self.read_until(timeout, &what, |log| {
            log.iter().any(|n| n.is(op, room, client))
        })
        .await;
        let notice = self.notices.iter().find(|n| n.is(op, room, client));
        notice.expect("found above").member.clone()
    }

    /// Reads whatever arrives within `window` (the time a duplicate would take), then
    /// up to the answer of a `ping`, so that nothing sent before that answer is missed.
    pub async fn read_for(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.try_recv_json(left).await {
                Some(frame) => self.record(&frame),
                None => break,
            }
        }
        self.read_to_pong().await;
    }

    /// Sends a `ping` and logs every frame before its `pong`.
    pub async fn read_to_pong(&mut self) {
        for frame in frames_to_pong(&mut self.client).await {
            self.record(&frame);
        }
    }

    /// How many `op` frames about `client` in `room` it was sent.
    pub fn count(&self, op: &str, room: &str, client: &str) -> usize {
        let about = |n: &&Notice| n.is(op, room, client);
        self.notices.iter().filter(about).count()
    }

    fn record(&mut self, frame: &Value) {
        let op = frame["op"].as_str().unwrap_or_default();
        assert!(
            op == "join" || op == "leave",
            "a watcher expects only join and leave frames, got {frame}"
        );
        let room = frame["room"]
            .as_str()
            .unwrap_or_else(|| panic!("no room in {frame}"));
        self.notices.push(Notice {
            op: op.to_owned(),
            room: room.to_owned(),
            member: Member::from_json(&frame["member"]),
        });
    }
}

/// Sends a `ping` and returns every frame that came before its `pong`.
pub async fn frames_to_pong(client: &mut WsClient) -> Vec<Value> {
    let reference = next_ref();
    client.send_json(&json!({"op": "ping", "ref": reference}));
    let mut frames = Vec::new();
    loop {
        let frame = client.recv_json(REPLY_TIMEOUT).await;
        if frame["ref"] == reference.as_str() {
            assert_eq!(frame["op"], "pong", "{frame}");
            return frames;
        }
        frames.push(frame);
    }
}

/// What a member's token says of it: its `sub` (`None` with authentication off) and
/// its `info` claim (`null` without one).
pub struct Identity<'a> {
    /// The member's `user`.
    pub user: Option<&'a str>,
    /// The member's `info`.
    pub info: Value,
}

/// `session`, on `server`, joins `room`, in which nobody else comes or goes meanwhile.
/// Its own `presence` answer after `subscribed` lists it with `who`'s fields, the
/// `serverId` of `server` and a plausible `joinedAt`; every watcher gets a `join` with
/// that very member; the session is not told of its own join. Returns the member.
pub async fn join_watched(
    server: &Server,
    session: &mut WsClient,
    room: &str,
    who: &Identity<'_>,
    watchers: &mut [Watcher],
) -> Member {
    let known = clients(&presence(session, room).await);
    let before = now_ms();
    session.subscribe(room).await;
    let after = now_ms();
    let listed = presence(session, room).await;
    // Itself: the one member it did not list before (of its user, when it has one).
    let new: Vec<&Member> = listed
        .iter()
        .filter(|m| !known.contains(&m.client))
        .filter(|m| who.user.is_none() || m.user.as_deref() == who.user)
        .collect();
    assert_eq!(new.len(), 1, "one new member in {listed:#?}");
    let me = new[0].clone();
    let fields = (me.user.as_deref(), &me.info, me.server_id.as_str());
    assert_eq!(fields, (who.user, &who.info, server.id()), "{me:?}");
    me.assert_joined_between(before, after);
    for watcher in watchers.iter_mut() {
        let joined = watcher
            .wait_for(NOTICE_TIMEOUT, "join", room, &me.client)
            .await;
        assert_eq!(joined, me, "the join names the member its own answer lists");
    }
    // Every watcher has been told: an announcement to the member itself would be in by
    // now too.
    let own = frames_to_pong(session).await;
    let about_me = |f: &Value| f["op"] == "join" && f["member"]["client"] == me.client.as_str();
    assert!(!own.iter().any(about_me), "told of its own join: {own:#?}");
    me
}

/// `session`, a member of `room`, leaves it `how`: every watcher gets a `leave` with the
/// member as its `join` named it. Returns the session when it stays open.
pub async fn leave_watched(
    session: WsClient,
    how: Leave,
    room: &str,
    member: &Member,
    watchers: &mut [Watcher],
) -> Option<WsClient> {
    let session = how.apply(session, room).await;
    for watcher in watchers.iter_mut() {
        let left = watcher
            .wait_for(NOTICE_TIMEOUT, "leave", room, &member.client)
            .await;
        assert_eq!(&left, member, "after {how:?}, the leave names the member");
    }
    session
}

/// After `window` more (the time a duplicate would take), each watcher has had exactly
/// one `join` and one `leave` in `room` for each of `members`, and none about itself
/// (`own`: the watchers' own members, in order).
pub async fn assert_each_once(
    watchers: &mut [Watcher],
    own: &[Member],
    room: &str,
    members: &[Member],
    window: Duration,
) {
    for (watcher, me) in watchers.iter_mut().zip(own) {
        watcher.read_for(window).await;
        for member in members {
            let told = (
                watcher.count("join", room, &member.client),
                watcher.count("leave", room, &member.client),
            );
            assert_eq!(told, (1, 1), "{me:?} was told of {member:?}: {told:?}");
        }
        let about_me = watcher
            .notices
            .iter()
            .filter(|n| n.member.client == me.client);
        assert_eq!(
            about_me.count(),
            0,
            "{me:?} was told of itself: {:#?}",
            watcher.notices
        );
    }
}
