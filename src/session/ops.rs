//! What a session does with each client op: `auth`, `subscribe`, `unsubscribe`,
//! `publish`, `ping`, and the broker's answers to them.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use actix::prelude::*;
use serde_json::value::RawValue;
use switchboard_actors::{
    durable::{IdempotencyKey, Published, Since},
    now_ms, Error as ActorError, Joined, Publish, Room, Subscribe, Unsubscribe,
};

use super::{close, Access, Session};
use crate::{
    filter::Filter,
    rate::Spend,
    rooms::{Answer, Join, Reference},
    wire::{self, ClientOp, LeaveReason, Reply},
    Error, Grant,
};

impl Session {
    /// Checks a token from an `auth` frame; a bad one closes the session (1008).
    fn authenticate(&mut self, token: &str, reference: Option<&RawValue>, ctx: &mut Context<Self>) {
        let Some(authenticator) = self.state.session.security.jwt.as_ref() else {
            self.reply(Reply::Authenticated { sub: None }, reference, ctx);
            return;
        };
        match authenticator.verify(token) {
            Ok(grant) if self.is_other_user(&grant) => {
                log::info!(
                    "session on {}: a fresh token is for another user; closing",
                    self.state.server_id
                );
                self.fail(close::POLICY, "a token for another user", ctx);
            }
            Ok(grant) => {
                self.reply(
                    Reply::Authenticated {
                        sub: Some(&grant.sub),
                    },
                    reference,
                    ctx,
                );
                self.grant(grant, ctx);
            }
            Err(e) => {
                log::info!(
                    "session on {}: authentication refused: {e}",
                    self.state.server_id
                );
                self.fail(close::POLICY, &e.to_string(), ctx);
            }
        }
    }

    /// Whether `grant` is for another user than the session's current grant.
    fn is_other_user(&self, grant: &Grant) -> bool {
        matches!(&self.access, Access::Granted(current) if current.sub != grant.sub)
    }

    /// Takes a grant, arms the timer that closes the session when it expires, and
    /// leaves every room it does not allow (PROTOCOL.md §6): a fresh token replaces
    /// the old grant at once.
    pub(super) fn grant(&mut self, grant: Grant, ctx: &mut Context<Self>) {
        if let Some(timer) = self.expiry.take() {
            ctx.cancel_future(timer);
        }
        let left = grant.expires_at_ms.saturating_sub(now_ms());
        self.expiry = Some(ctx.run_later(Duration::from_millis(left), |act, ctx| {
            log::info!("session on {}: token expired", act.state.server_id);
            act.fail(close::POLICY, "token expired", ctx);
        }));
        let refused = self.rooms.retain(|room| grant.may_subscribe(room));
        self.access = Access::Granted(grant);
        for (room, waiting) in refused {
            let error = Error::NotAllowed(format!("this token may not subscribe to {room}"));
            for reference in waiting {
                self.refuse(&error, reference.as_deref(), ctx);
            }
            let reply = Reply::Unsubscribed {
                room: room.as_str(),
                reason: Some(LeaveReason::NotAllowed),
            };
            self.reply(reply, None, ctx);
            self.leave_room(room, ctx);
        }
    }

    /// Refuses (`not_allowed`) what the session's token may not do in `room`, which
    /// needs permission to subscribe: `what` says what, for the message.
    pub(super) fn check_may_subscribe(&self, room: &Room, what: &str) -> Result<(), Error> {
        if self.allowed(|grant| grant.may_subscribe(room)) {
            return Ok(());
        }
        Err(Error::NotAllowed(format!(
            "this token may not {what} {room}"
        )))
    }

    /// Refuses a read (`history`, `presence`, `presence_count`) past the reads one
    /// session may have waiting.
    pub(super) fn check_reads(&self) -> Result<(), Error> {
        if self.reads >= super::MAX_READS {
            return Err(Error::TooManyWaiting(format!(
                "{} reads are waiting for their answer",
                super::MAX_READS
            )));
        }
        Ok(())
    }

    /// Whether the session's access allows `check` (always, with authentication off).
    pub(super) fn allowed(&self, check: impl FnOnce(&Grant) -> bool) -> bool {
        match &self.access {
            Access::Open => true,
            Access::Pending => false,
            Access::Granted(grant) => check(grant),
        }
    }

    pub(super) fn dispatch(
        &mut self,
        op: ClientOp,
        reference: Option<Box<RawValue>>,
        ctx: &mut Context<Self>,
    ) {
        let result = match op {
            ClientOp::Subscribe {
                room,
                since,
                filter,
            } => self.subscribe(&room, since, filter, reference.clone(), ctx),
            ClientOp::Unsubscribe { room } => self.unsubscribe(&room, reference.as_deref(), ctx),
            ClientOp::Publish { room, event, key } => {
                self.publish(&room, &event, key, reference.clone(), ctx)
            }
            ClientOp::History { room, since, limit } => {
                self.history(&room, since, limit, reference.clone(), ctx)
            }
            ClientOp::Presence { room } => self.presence(&room, reference.clone(), ctx),
            ClientOp::PresenceCount { room } => self.presence_count(&room, reference.clone(), ctx),
            ClientOp::Ping => {
                self.reply(Reply::Pong, reference.as_deref(), ctx);
                Ok(())
            }
            ClientOp::Auth { token } => {
                self.authenticate(&token, reference.as_deref(), ctx);
                Ok(())
            }
        };
        if let Err(error) = result {
            self.refuse(&error, reference.as_deref(), ctx);
        }
    }

    fn subscribe(
        &mut self,
        name: &str,
        since: Option<Since>,
        filter: Option<Filter>,
        reference: Reference,
        ctx: &mut Context<Self>,
    ) -> Result<(), Error> {
        let room = wire::room(name)?;
        self.check_may_subscribe(&room, "subscribe to")?;
        if since.is_some() && self.rooms.is_joined(&room) {
            // A joined room subscribed again with `since` recovers like a new one:
            // the session enters the room again from `since`.
            self.rooms.unsubscribe(&room);
            self.leave_room(room.clone(), ctx);
        }
        let join = self.rooms.subscribe(&room, reference)?;
        match filter {
            Some(filter) => self.filters.insert(room.clone(), filter),
            None => self.filters.remove(&room),
        };
        let attempt = match join {
            Join::Joined(reference) => {
                // Where this client stands in a durable room: the events after it follow.
                let position = self.positions.get(&room).cloned();
                let position = position.as_ref();
                let subscribed = Reply::Subscribed {
                    room: name,
                    offset: position.map(|p| p.offset),
                    epoch: position.map(|p| p.epoch.as_str()),
                    recovered: None,
                };
                self.reply(subscribed, reference.as_deref(), ctx);
                return Ok(());
            }
            Join::Waiting => return Ok(()),
            Join::Ask(attempt) => attempt,
        };
        self.replays.start(room.clone(), since.as_ref());
        let request = self.state.broker.send(Subscribe {
            room: room.clone(),
            since,
            deliver_replay: false,
            recipient: ctx.address().recipient(),
            on_evicted: Some(ctx.address().recipient()),
            on_gap: Some(ctx.address().recipient()),
            membership: Some(self.membership(ctx)),
        });
        answer(request)
            .into_actor(self)
            .map(move |result, act, ctx| act.joined(room, attempt, result, ctx))
            .spawn(ctx);
        Ok(())
    }

    /// The broker answered a subscribe: reply to every frame waiting for it, then
    /// replay what a recovery brings.
    fn joined(
        &mut self,
        room: Room,
        attempt: u64,
        result: Result<Joined, ActorError>,
        ctx: &mut Context<Self>,
    ) {
        match self.rooms.answered(&room, attempt, result.is_ok()) {
            Answer::Reply(waiting) => {
                if result.is_err() {
                    // An earlier attempt the client gave up on may have joined the
                    // broker meanwhile: the session is in no room it was not told of.
                    self.leave_room(room.clone(), ctx);
                }
                if let Some(position) = result.as_ref().ok().and_then(|j| j.position.clone()) {
                    self.positions.insert(room.clone(), position);
                }
                for reference in waiting {
                    match &result {
                        Ok(joined) => self.reply(
                            Reply::Subscribed {
                                room: room.as_str(),
                                offset: joined.position.as_ref().map(|p| p.offset),
                                epoch: joined.position.as_ref().map(|p| p.epoch.as_str()),
                                recovered: joined.recovered,
                            },
                            reference.as_deref(),
                            ctx,
                        ),
                        Err(e) => self.refuse(
                            &Error::SubscribeFailed(e.to_string()),
                            reference.as_deref(),
                            ctx,
                        ),
                    }
                }
            }
            Answer::Leave => {
                self.leave_room(room, ctx);
                return;
            }
            Answer::Nothing => return,
        }
        let durable = match result {
            Ok(Joined {
                position: Some(position),
                recovered,
                replay,
                replay_to,
            }) => {
                let recovered = recovered == Some(true);
                self.replays
                    .joined(&room, &position, recovered, replay, replay_to);
                true
            }
            _ => false,
        };
        // A gap the broker told before its answer reached us follows the reply.
        if let Some(gap) = self.replays.take_gap(&room) {
            if let Some(position) = &gap.position {
                self.positions.insert(room.clone(), position.clone());
            }
            self.send(wire::gap_frame(&gap), ctx);
        }
        if durable {
            self.pump_room(room, ctx);
        } else {
            self.replays.cancel(&room);
        }
    }

    fn unsubscribe(
        &mut self,
        name: &str,
        reference: Option<&RawValue>,
        ctx: &mut Context<Self>,
    ) -> Result<(), Error> {
        let room = wire::room(name)?;
        let cut_short =
            Error::SubscribeFailed("unsubscribed before the subscription was confirmed".into());
        for waiting in self.rooms.unsubscribe(&room) {
            self.refuse(&cut_short, waiting.as_deref(), ctx);
        }
        self.leave_room(room, ctx);
        let reply = Reply::Unsubscribed {
            room: name,
            reason: None,
        };
        self.reply(reply, reference, ctx);
        Ok(())
    }

    pub(super) fn leave_room(&mut self, room: Room, ctx: &mut Context<Self>) {
        self.replays.cancel(&room);
        self.positions.remove(&room);
        self.filters.remove(&room);
        self.state.broker.do_send(Unsubscribe {
            room,
            recipient: ctx.address().recipient(),
        });
    }

    fn publish(
        &mut self,
        name: &str,
        event: &RawValue,
        key: Option<IdempotencyKey>,
        reference: Option<Box<RawValue>>,
        ctx: &mut Context<Self>,
    ) -> Result<(), Error> {
        match self.budget.spend(Instant::now()) {
            Spend::Allowed => {}
            Spend::Refused => {
                return Err(Error::RateLimited(self.state.session.limits.publish_rate))
            }
            Spend::Exhausted => {
                log::warn!(
                    "session on {}: publish rate limit exceeded 100 times in a row; closing",
                    self.state.server_id
                );
                self.fail(close::POLICY, "publish rate limit", ctx);
                return Ok(());
            }
        }
        let (room, event) = wire::new_event(name, event, self.state.session.limits.event_bytes)?;
        if !self.allowed(|grant| grant.may_publish(&room)) {
            return Err(Error::NotAllowed(format!(
                "this token may not publish in {room}"
            )));
        }
        self.check_publishing()?;
        let answer = self.state.publish(Publish {
            room: room.clone(),
            event,
            key,
        })?;
        self.publishing += 1;
        answer
            .into_actor(self)
            .map(move |result, act, ctx| {
                act.publishing -= 1;
                act.published(&room, result, reference.as_deref(), ctx);
            })
            .spawn(ctx);
        Ok(())
    }

    /// Refuses a publish when `LIMIT_CONNECTION_PUBLISHES_IN_FLIGHT` of this
    /// connection's wait for their answer (the server's own bound is the gate's).
    fn check_publishing(&self) -> Result<(), Error> {
        let limit = self.state.session.limits.connection_publishes_in_flight;
        if self.publishing < limit {
            return Ok(());
        }
        self.state.publishes.refuse(&self.state.server_id, || {
            format!(
                "a connection has {limit} publishes waiting (LIMIT_CONNECTION_PUBLISHES_IN_FLIGHT)"
            )
        });
        Err(Error::PublishFailed(format!(
            "overloaded: this connection has {limit} publishes waiting for their answer; \
             not published"
        )))
    }

    /// The broker answered a publish.
    fn published(
        &mut self,
        room: &Room,
        result: Result<Published, ActorError>,
        reference: Option<&RawValue>,
        ctx: &mut Context<Self>,
    ) {
        match result {
            Ok(published) => self.reply(
                Reply::Published {
                    room: room.as_str(),
                    offset: published.position.as_ref().map(|p| p.offset),
                    epoch: published.position.as_ref().map(|p| p.epoch.as_str()),
                },
                reference,
                ctx,
            ),
            Err(e) => self.refuse(&Error::PublishFailed(e.to_string()), reference, ctx),
        }
    }
}

/// A broker request's answer; a broker that is gone means the server is stopping.
async fn answer<T>(
    request: impl Future<Output = Result<Result<T, ActorError>, MailboxError>>,
) -> Result<T, ActorError> {
    request.await?
}
