//! Where a delivery's time goes on one server: latency histograms per stage of the
//! path an event from Redis takes to a client's socket, for a sample of the events.
//!
//! The stages, each measured from the end of the one before:
//! - [`Stage::RedisToBroker`]: the subscriber parsed the message → the broker hands
//!   it out (the subscriber's channel and the broker's turn);
//! - [`Stage::BrokerToSession`]: → the recipient handles it (its mailbox, and its
//!   thread's turn: the cross-thread hop);
//! - [`Stage::SessionToSocket`]: → the socket takes the frame (the session's queue
//!   and the HTTP layer's turn to poll it);
//! - [`Stage::PublishRoundTrip`]: a publish pipeline written → Redis's answer (every
//!   pipeline, not a sample).
//!
//! One event in [`SAMPLE_EVERY`] from Redis is timed, so the cost on the hot path is
//! a counter increment for the others. The histograms are process-wide atomics, not
//! an actor's state: they are written from every worker thread and the broker's, and
//! a message per sample would cost more than the measurement and change what it
//! measures. They are read by `/stats` (`stages`) and reset with the other counters.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::Serialize;

/// One event from Redis in this many is timed.
pub const SAMPLE_EVERY: u64 = 16;

/// Two buckets per power of two of microseconds, up to 2^24 µs (about 17 s); the
/// last bucket takes everything longer.
const BUCKETS: usize = 48;

/// A stage of an event's way (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Subscriber → broker.
    RedisToBroker,
    /// Broker → recipient.
    BrokerToSession,
    /// Session → socket.
    SessionToSocket,
    /// A publish pipeline's round trip to Redis.
    PublishRoundTrip,
}

const STAGE_COUNT: usize = 4;

/// The process's stage histograms.
pub static STAGES: Stages = Stages::new();

static SAMPLER: AtomicU64 = AtomicU64::new(0);

/// Whether to time this event (one in [`SAMPLE_EVERY`]).
pub fn sample() -> bool {
    SAMPLER.fetch_add(1, Ordering::Relaxed) % SAMPLE_EVERY == 0
}

/// A latency histogram with fixed log-scale buckets.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
}

/// Per-stage histograms.
pub struct Stages {
    stages: [Histogram; STAGE_COUNT],
}

/// A stage's figures: how many were timed and the upper bound of the bucket that
/// holds each percentile (so a figure is never below the truth by more than a bucket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageSummary {
    /// Samples.
    pub count: u64,
    /// Median, in µs.
    pub p50_us: u64,
    /// 90th percentile, in µs.
    pub p90_us: u64,
    /// 99th percentile, in µs.
    pub p99_us: u64,
}

/// What `/stats` shows under `stages`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StagesSnapshot {
    /// See [`Stage::RedisToBroker`].
    pub redis_to_broker: StageSummary,
    /// See [`Stage::BrokerToSession`].
    pub broker_to_session: StageSummary,
    /// See [`Stage::SessionToSocket`].
    pub session_to_socket: StageSummary,
    /// See [`Stage::PublishRoundTrip`].
    pub publish_round_trip: StageSummary,
}

impl Histogram {
    #[allow(clippy::declare_interior_mutable_const)]
    const fn new() -> Histogram {
        const ZERO: AtomicU64 = AtomicU64::new(0);
        Histogram {
            buckets: [ZERO; BUCKETS],
        }
    }

    /// Counts one duration.
    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The count and the percentiles.
    pub fn summary(&self) -> StageSummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count = counts.iter().sum();
        let at = |p: f64| percentile(&counts, count, p);
        StageSummary {
            count,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
        }
    }

    fn reset(&self) {
        for bucket in &self.buckets {
            bucket.store(0, Ordering::Relaxed);
        }
    }
}

impl Stages {
    #[allow(clippy::declare_interior_mutable_const)]
    const fn new() -> Stages {
        const EMPTY: Histogram = Histogram::new();
        Stages {
            stages: [EMPTY; STAGE_COUNT],
        }
    }

    /// Counts one duration of `stage`.
    pub fn record(&self, stage: Stage, elapsed: Duration) {
        self.stages[stage as usize].record(elapsed);
    }

    /// Every stage's figures.
    pub fn snapshot(&self) -> StagesSnapshot {
        let of = |stage: Stage| self.stages[stage as usize].summary();
        StagesSnapshot {
            redis_to_broker: of(Stage::RedisToBroker),
            broker_to_session: of(Stage::BrokerToSession),
            session_to_socket: of(Stage::SessionToSocket),
            publish_round_trip: of(Stage::PublishRoundTrip),
        }
    }

    /// Back to zero.
    pub fn reset(&self) {
        for stage in &self.stages {
            stage.reset();
        }
    }
}

/// The bucket of `micros`: 0 and 1 µs in bucket 0 and 1, then two per power of two
/// (`[2^k, 1.5·2^k)` and `[1.5·2^k, 2^(k+1))`).
fn bucket(micros: u64) -> usize {
    if micros < 2 {
        return micros as usize;
    }
    let octave = 63 - micros.leading_zeros() as usize;
    let upper_half = (micros >> (octave - 1)) & 1;
    (2 * octave + upper_half as usize).min(BUCKETS - 1)
}

/// The smallest value above every value of bucket `index`, in µs.
fn upper_bound(index: usize) -> u64 {
    if index < 2 {
        return index as u64 + 1;
    }
    let (octave, half) = (index / 2, index % 2);
    let lower = (1u64 << octave) + half as u64 * (1u64 << (octave - 1));
    lower + (1u64 << (octave - 1))
}

fn percentile(counts: &[u64], count: u64, p: f64) -> u64 {
    if count == 0 {
        return 0;
    }
    let rank = ((count as f64 * p).ceil() as u64).max(1);
    let mut seen = 0;
    for (index, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return upper_bound(index);
        }
    }
    upper_bound(counts.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values() {
        for micros in [0, 1, 2, 3, 4, 5, 6, 7, 8, 100, 1_000, 65_535, 1 << 23] {
            let index = bucket(micros);
            assert!(micros < upper_bound(index), "{micros} in bucket {index}");
            if index > 0 {
                assert!(
                    micros >= upper_bound(index - 1),
                    "{micros} in bucket {index}"
                );
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_come_from_the_buckets() {
        let histogram = Histogram::new();
        for _ in 0..98 {
            histogram.record(Duration::from_micros(100));
        }
        histogram.record(Duration::from_millis(5));
        histogram.record(Duration::from_millis(50));
        let summary = histogram.summary();
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50_us, upper_bound(bucket(100)));
        assert!(summary.p50_us > 100 && summary.p50_us <= 128);
        assert!(
            summary.p99_us > 5_000 && summary.p99_us <= 6_144,
            "{summary:?}"
        );
        histogram.reset();
        assert_eq!(histogram.summary(), StageSummary::default());
    }
}
