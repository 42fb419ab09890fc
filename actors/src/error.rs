//! The one error type of the actor crate.

use thiserror::Error;

/// What can go wrong between the broker, the backplane and Redis.
///
/// The variants classify themselves: [`Error::is_retryable`] drives the publish
/// retry loop, and the HTTP and WebSocket layers map variants to status and error codes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// A room name that breaks PROTOCOL.md §1.
    #[error("bad room: {0}")]
    BadRoom(String),
    /// An envelope that is not a JSON object with a non-empty string `type`.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// There was no connection to Redis when the attempt was made, so the command
    /// cannot have reached it.
    #[error("redis is not connected: {0}")]
    NotConnected(String),
    /// Redis refused a command on an open connection (an error reply); it may have
    /// run it.
    #[error("redis error: {0}")]
    Redis(String),
    /// The connection failed under a command (I/O error, closed); the command may or
    /// may not have reached Redis.
    #[error("redis connection failed: {0}")]
    Link(String),
    /// A deadline passed; what was sent may or may not have been applied.
    #[error("timed out after {0} ms: {1}")]
    Timeout(u64, &'static str),
    /// The publisher's queue is full ([`MAX_QUEUED`](crate::publisher::MAX_QUEUED)
    /// publishes waiting); nothing was sent.
    #[error("too many publishes waiting for redis")]
    Overloaded,
    /// Redis did not have a script the command called (`NOSCRIPT`): it did not run.
    #[error("redis lacks the script (it restarted or was flushed); loading it again")]
    NoScript,
    /// A history read or recovery in a room that is not durable (PROTOCOL.md §7).
    #[error("{0} is not a durable room")]
    NotDurable(String),
    /// A presence read in a room that is not a presence room (PROTOCOL.md §9).
    #[error("{0} is not a presence room")]
    NotPresence(String),
    /// The broker or a link actor is gone (the system is shutting down).
    #[error("switchboard is shutting down")]
    ShuttingDown,
}

impl Error {
    /// Whether another attempt cannot duplicate the work: true only when the
    /// failed attempt cannot have reached Redis (PROTOCOL.md §5).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::NotConnected(_) | Error::NoScript)
    }

    /// Whether the attempt may have been applied or not, nobody knows: a timeout or a
    /// connection that failed under it. A durable publish retries these under its
    /// publish id (PROTOCOL.md §7), which its retry looks for first.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Error::Timeout(..) | Error::Link(_))
    }

    /// Whether the connection the command ran on is likely dead (a timeout, or an
    /// I/O failure), so it should be replaced.
    pub fn is_link_failure(&self) -> bool {
        matches!(self, Error::Timeout(..) | Error::Link(_))
    }

    /// Builds the error for a failed command on an open connection.
    pub(crate) fn from_redis(err: &redis::RedisError) -> Error {
        if crate::durable::scripts::is_noscript(err) {
            Error::NoScript
        } else if err.is_connection_refusal() {
            Error::NotConnected(err.to_string())
        } else if err.is_io_error() || err.is_connection_dropped() || err.is_unrecoverable_error() {
            Error::Link(err.to_string())
        } else {
            Error::Redis(err.to_string())
        }
    }
}

impl From<actix::MailboxError> for Error {
    fn from(_: actix::MailboxError) -> Self {
        Error::ShuttingDown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unsent_attempts_are_retryable() {
        assert!(Error::NotConnected("down".into()).is_retryable());
        assert!(!Error::Redis("ERR".into()).is_retryable());
        assert!(!Error::Timeout(5, "publish").is_retryable());
        assert!(!Error::Link("reset".into()).is_retryable());
        assert!(Error::Link("reset".into()).is_link_failure());
        assert!(!Error::Redis("ERR".into()).is_link_failure());
        assert!(!Error::ShuttingDown.is_retryable());
    }
}
