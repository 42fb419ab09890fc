//! The one error type of the server crate: what a client or an operator is told.

use serde::Serialize;
use thiserror::Error;

/// The `code` of an `error` frame (PROTOCOL.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a JSON object, no `op`, a binary frame, a missing or mistyped field.
    BadFrame,
    /// An `op` the server does not know.
    UnknownOp,
    /// A room that breaks the naming rules.
    BadRoom,
    /// An event over `LIMIT_EVENT_BYTES`.
    TooLarge,
    /// Redis did not take a publish; only this server's subscribers got it.
    PublishFailed,
    /// The room's subscription was not confirmed in time.
    SubscribeFailed,
    /// Publishing in a `system:` room.
    NotAllowed,
    /// More rooms than `LIMIT_SUBSCRIPTIONS`.
    TooManySubscriptions,
    /// Publishing faster than `LIMIT_PUBLISH_RATE` allows.
    RateLimited,
    /// A history read in a room that is not durable (PROTOCOL.md §7).
    NotDurable,
    /// A presence read in a room that is not a presence room (PROTOCOL.md §9).
    NotPresence,
}

/// A refused request, on WebSocket or HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// See [`ErrorCode::BadFrame`].
    #[error("{0}")]
    BadFrame(String),
    /// See [`ErrorCode::UnknownOp`].
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    /// See [`ErrorCode::BadRoom`].
    #[error("{0}")]
    BadRoom(String),
    /// See [`ErrorCode::TooLarge`].
    #[error("event of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// The event's size.
        size: usize,
        /// `LIMIT_EVENT_BYTES`.
        limit: usize,
    },
    /// See [`ErrorCode::NotAllowed`].
    #[error("{0}")]
    NotAllowed(String),
    /// See [`ErrorCode::PublishFailed`].
    #[error("publish failed: {0}")]
    PublishFailed(String),
    /// See [`ErrorCode::SubscribeFailed`].
    #[error("subscribe failed: {0}")]
    SubscribeFailed(String),
    /// See [`ErrorCode::TooManySubscriptions`].
    #[error("a connection holds at most {0} rooms")]
    TooManySubscriptions(usize),
    /// See [`ErrorCode::RateLimited`].
    #[error("publishing faster than {0} a second")]
    RateLimited(u32),
    /// Too many requests of one connection wait for their answer (code
    /// `rate_limited`, HTTP 429).
    #[error("{0}")]
    TooManyWaiting(String),
    /// See [`ErrorCode::NotDurable`].
    #[error("{0} is not a durable room (DURABLE_ROOMS)")]
    NotDurable(String),
    /// See [`ErrorCode::NotPresence`].
    #[error("{0} is not a presence room (PRESENCE_ROOMS)")]
    NotPresence(String),
    /// An answer too large for the client's outbound queue (`LIMIT_OUTBOUND_BYTES`);
    /// code `too_large`.
    #[error("{0}")]
    AnswerTooLarge(String),
    /// A missing or wrong credential (HTTP 401; on WebSocket, close 1008).
    #[error("{0}")]
    Unauthorized(String),
}

impl Error {
    /// The WebSocket error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::BadFrame(_) => ErrorCode::BadFrame,
            Error::UnknownOp(_) => ErrorCode::UnknownOp,
            Error::BadRoom(_) => ErrorCode::BadRoom,
            Error::TooLarge { .. } => ErrorCode::TooLarge,
            Error::NotAllowed(_) => ErrorCode::NotAllowed,
            Error::PublishFailed(_) => ErrorCode::PublishFailed,
            Error::SubscribeFailed(_) => ErrorCode::SubscribeFailed,
            Error::TooManySubscriptions(_) => ErrorCode::TooManySubscriptions,
            Error::RateLimited(_) => ErrorCode::RateLimited,
            Error::Unauthorized(_) => ErrorCode::NotAllowed,
            Error::NotDurable(_) => ErrorCode::NotDurable,
            Error::NotPresence(_) => ErrorCode::NotPresence,
            Error::AnswerTooLarge(_) => ErrorCode::TooLarge,
            Error::TooManyWaiting(_) => ErrorCode::RateLimited,
        }
    }

    /// The HTTP status of the same refusal (PROTOCOL.md §3).
    pub fn http_status(&self) -> u16 {
        match self {
            Error::TooLarge { .. } | Error::AnswerTooLarge(_) => 413,
            Error::Unauthorized(_) => 401,
            Error::NotAllowed(_) => 403,
            Error::RateLimited(_) | Error::TooManyWaiting(_) => 429,
            Error::NotDurable(_) | Error::NotPresence(_) => 404,
            Error::PublishFailed(_) | Error::SubscribeFailed(_) => 503,
            _ => 400,
        }
    }

    /// What a reader is told of a failed `what` (a history or presence read) in `room`.
    pub fn from_read(
        room: &switchboard_actors::Room,
        error: switchboard_actors::Error,
        what: &str,
    ) -> Error {
        match error {
            switchboard_actors::Error::NotDurable(_) => Error::NotDurable(room.to_string()),
            switchboard_actors::Error::NotPresence(_) => Error::NotPresence(room.to_string()),
            e => Error::SubscribeFailed(format!("{what}: {e}")),
        }
    }

    /// A room name error from the actor crate.
    pub fn from_room(err: switchboard_actors::Error) -> Error {
        Error::BadRoom(err.to_string())
    }
}
