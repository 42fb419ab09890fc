//! The publisher's flow control: when the queue may go, and how much may wait.

use std::time::Duration;

/// Pipelines out at once before the queue is held (for one to end, or for
/// [`MAX_HOLD`]). A publish that finds room goes at once; under load the queue grows
/// during a round trip into the next pipeline, so the fixed cost of a pipeline (a
/// task, a write, a read, waking the connection) is shared by hundreds of publishes.
/// More than one, so that Redis works on one pipeline while this side sends the next
/// and reads the answers of the last: with one, the two took turns, and a durable
/// room's publish path, which Redis's CPU bounds, left Redis idle part of the
/// time. Three ran the durable path a little faster and steadier than two, and the
/// plain path as fast (`bench/results/ab-d1-2026-11-26T2219Z`). Without a limit,
/// pipelines shrank and the plain path slowed down (an earlier measurement).
const MAX_IN_FLIGHT: usize = 3;

/// The longest a held queue waits for a pipeline to end before it is sent anyway
/// (while fewer than [`MAX_QUEUED`] are unanswered): a stalled Redis delays the
/// queue by this, not by the response deadline, so every publish still gets its own
/// full deadline.
pub(super) const MAX_HOLD: Duration = Duration::from_millis(1);

/// The most publishes waiting (queued, or between retries): past it a new publish
/// is refused at once with [`Error::Overloaded`](crate::Error::Overloaded). Also the
/// most sent and unanswered before another pipeline goes (so at most one pipeline
/// more than this). A stalled Redis thus holds about twice this many events in
/// memory, plus what the publisher's mailbox got since it last ran (it shares the
/// broker's thread, and the broker's bounded mailbox is what pushes back on callers).
/// In practice the callers bound the queue first (each waits for its answer); this is
/// the guard against a flood from in-process services.
pub const MAX_QUEUED: usize = 65_536;

/// The publisher's flow control: what is out and what waits, and so whether the
/// queue may go now. Kept apart from the actor so its rules have unit tests.
#[derive(Debug, Default)]
pub(super) struct Flow {
    /// Pipelines sent on the current connection and not answered.
    pipelines: usize,
    /// Publishes sent and not answered, on any connection.
    unanswered: usize,
    /// Publishes between retries (in a timer, not in the queue).
    retrying: usize,
}

/// What to do with a queue that is not empty.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Send a pipeline now (or, without a connection, start the retries).
    Now,
    /// The most pipelines are out: wait for one to end, or for [`MAX_HOLD`].
    Hold,
    /// [`MAX_QUEUED`] are unanswered: wait for a pipeline to end.
    Wait,
}

impl Flow {
    /// Publishes waiting: the `queued` ones and those between retries.
    pub(super) fn waiting(&self, queued: usize) -> usize {
        queued + self.retrying
    }

    /// Publishes sent and not answered yet (the `/stats` gauge).
    pub(super) fn unanswered(&self) -> usize {
        self.unanswered
    }

    /// Whether a new publish finds room among them.
    pub(super) fn has_room(&self, queued: usize) -> bool {
        self.waiting(queued) < MAX_QUEUED
    }

    /// Whether a pipeline may go at all (the hold timer's question).
    pub(super) fn may_send(&self) -> bool {
        self.unanswered < MAX_QUEUED
    }

    pub(super) fn next(&self, connected: bool) -> Next {
        if !connected {
            Next::Now
        } else if !self.may_send() {
            Next::Wait
        } else if self.pipelines < MAX_IN_FLIGHT {
            Next::Now
        } else {
            Next::Hold
        }
    }

    pub(super) fn sent(&mut self, publishes: usize) {
        self.pipelines += 1;
        self.unanswered += publishes;
    }

    /// A pipeline of `publishes` ended, on the current connection or an old one.
    pub(super) fn ended(&mut self, publishes: usize, current_connection: bool) {
        debug_assert!(self.unanswered >= publishes, "{self:?} less {publishes}");
        self.unanswered = self.unanswered.saturating_sub(publishes);
        if current_connection {
            debug_assert!(self.pipelines > 0, "{self:?}");
            self.pipelines = self.pipelines.saturating_sub(1);
        }
    }

    /// A publish goes to wait out its retry delay.
    pub(super) fn retry_started(&mut self) {
        self.retrying += 1;
    }

    /// A publish is back from its retry delay, for the queue.
    pub(super) fn retry_due(&mut self) {
        debug_assert!(self.retrying > 0, "{self:?}");
        self.retrying = self.retrying.saturating_sub(1);
    }

    /// A new connection: the old one's pipelines no longer hold the queue (their
    /// publishes still count as unanswered until they end).
    pub(super) fn reconnecting(&mut self) {
        self.pipelines = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::pipeline::MAX_PIPELINE;

    #[test]
    fn a_publish_goes_at_once_while_pipelines_are_few_and_is_held_behind_the_most() {
        let mut flow = Flow::default();
        for _ in 0..MAX_IN_FLIGHT {
            assert_eq!(flow.next(true), Next::Now);
            flow.sent(10);
        }
        assert_eq!(flow.next(true), Next::Hold);
        flow.ended(10, true);
        assert_eq!(flow.next(true), Next::Now);
        assert_eq!(flow.unanswered, 10 * (MAX_IN_FLIGHT - 1));
    }

    #[test]
    fn without_a_connection_the_queue_takes_the_retry_path_at_once() {
        let mut flow = Flow::default();
        flow.sent(MAX_QUEUED);
        assert_eq!(flow.next(false), Next::Now);
    }

    #[test]
    fn with_max_queued_unanswered_nothing_is_sent_until_a_pipeline_ends() {
        let mut flow = Flow::default();
        for _ in 0..MAX_QUEUED / MAX_PIPELINE {
            flow.sent(MAX_PIPELINE);
        }
        assert!(!flow.may_send(), "not even when the hold timer fires");
        assert_eq!(flow.next(true), Next::Wait);
        flow.ended(MAX_PIPELINE, true);
        assert!(flow.may_send());
        assert_eq!(flow.next(true), Next::Hold, "other pipelines are still out");
    }

    #[test]
    fn an_old_connections_pipeline_frees_its_publishes_but_not_the_new_slot() {
        let mut flow = Flow::default();
        for _ in 0..MAX_IN_FLIGHT {
            flow.sent(100);
        }
        flow.reconnecting();
        assert_eq!(
            flow.next(true),
            Next::Now,
            "the old connection's pipelines do not hold the new one's queue"
        );
        for _ in 0..MAX_IN_FLIGHT {
            flow.sent(5);
        }
        for _ in 0..MAX_IN_FLIGHT {
            flow.ended(100, false);
        }
        assert_eq!(flow.unanswered, 5 * MAX_IN_FLIGHT);
        assert_eq!(
            flow.next(true),
            Next::Hold,
            "the new pipelines are still out"
        );
    }

    #[test]
    fn publishes_between_retries_count_against_the_queue_bound() {
        let mut flow = Flow::default();
        assert!(flow.has_room(MAX_QUEUED - 1));
        flow.retry_started();
        assert!(!flow.has_room(MAX_QUEUED - 1));
        flow.retry_due();
        assert!(flow.has_room(MAX_QUEUED - 1));
    }
}
