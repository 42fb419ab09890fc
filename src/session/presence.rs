//! What a session does for presence rooms (PROTOCOL.md §9): who it is when it joins
//! one, the `presence` and `presence_count` reads, and the others' `join` / `leave`.

use actix::prelude::*;
use bytestring::ByteString;
use serde_json::value::RawValue;
use switchboard_actors::{
    presence::{CountPresence, MemberInfo, Membership, PresenceChange, ReadPresence},
    Broker, Error as ActorError, Room,
};

use super::{Access, Session};
use crate::{rooms::Reference, wire, Error};

impl Session {
    /// Who this session is in the presence rooms it joins (the broker ignores it in
    /// other rooms).
    pub(super) fn membership(&self, ctx: &Context<Self>) -> Membership {
        let (user, info) = match &self.access {
            Access::Granted(grant) => (Some(grant.sub.clone()), grant.info.clone()),
            Access::Open | Access::Pending => (None, None),
        };
        Membership {
            member: MemberInfo {
                client: self.client.clone(),
                user,
                info,
            },
            on_change: ctx.address().recipient(),
        }
    }

    /// `presence`: the room's members on every server.
    pub(super) fn presence(
        &mut self,
        name: &str,
        reference: Reference,
        ctx: &mut Context<Self>,
    ) -> Result<(), Error> {
        self.presence_read(
            name,
            reference,
            ctx,
            |room| ReadPresence { room },
            |room, members: Vec<_>, reference| {
                let answer = wire::PresenceAnswer::new(room.as_str(), &members);
                Ok(wire::presence_frame(&answer, reference))
            },
        )
    }

    /// `presence_count`: the room's members and distinct users on every server.
    pub(super) fn presence_count(
        &mut self,
        name: &str,
        reference: Reference,
        ctx: &mut Context<Self>,
    ) -> Result<(), Error> {
        self.presence_read(
            name,
            reference,
            ctx,
            |room| CountPresence { room },
            |room, count, reference| Ok(wire::count_frame(room.as_str(), count, reference)),
        )
    }

    /// Checks a presence read (the room, the permission, the reads waiting), asks the
    /// broker, and sends the frame `frame` makes of the answer (or the error).
    fn presence_read<M, T>(
        &mut self,
        name: &str,
        reference: Reference,
        ctx: &mut Context<Self>,
        message: impl FnOnce(Room) -> M,
        frame: impl FnOnce(&Room, T, Option<&RawValue>) -> Result<ByteString, Error> + 'static,
    ) -> Result<(), Error>
    where
        M: Message<Result = Result<T, ActorError>> + Send + 'static,
        T: Send + 'static,
        Broker: Handler<M>,
    {
        let room = wire::room(name)?;
        self.check_may_subscribe(&room, "read the presence of")?;
        self.check_reads()?;
        self.reads += 1;
        self.state
            .broker
            .send(message(room.clone()))
            .into_actor(self)
            .map(move |answer, act, ctx| {
                act.reads -= 1;
                let reference = reference.as_deref();
                let framed = answer
                    .unwrap_or(Err(ActorError::ShuttingDown))
                    .map_err(|e| Error::from_read(&room, e, "presence read"))
                    .and_then(|answer| frame(&room, answer, reference))
                    .and_then(|frame| act.fits(frame));
                match framed {
                    Ok(frame) => act.send(frame, ctx),
                    Err(error) => act.refuse(&error, reference, ctx),
                }
            })
            .spawn(ctx);
        Ok(())
    }
}

impl Session {
    /// A reply frame, if the outbound queue has room for it now: an answer larger
    /// than what is left of `LIMIT_OUTBOUND_BYTES` is refused (`too_large`) rather
    /// than close a client that is keeping up (1013).
    fn fits(&self, frame: ByteString) -> Result<ByteString, Error> {
        let (queued, _) = self.out.backlog();
        let left = self
            .state
            .session
            .limits
            .outbound_bytes
            .saturating_sub(queued);
        let size = crate::outbound::frame_len(frame.len());
        if size > left {
            return Err(Error::AnswerTooLarge(format!(
                "an answer of {size} bytes does not fit in this connection's outbound queue \
                 ({left} of LIMIT_OUTBOUND_BYTES free); presence_count counts members"
            )));
        }
        Ok(frame)
    }
}

impl Handler<PresenceChange> for Session {
    type Result = ();

    /// Another member joined or left. Before the room's `subscribed` reply the news is
    /// dropped: the client asks `presence` after the reply, and that answer has it.
    fn handle(&mut self, change: PresenceChange, ctx: &mut Context<Self>) {
        if self.rooms.is_joined(&change.room) {
            self.send(change.wire_encoding(wire::change_frame), ctx);
        }
    }
}
