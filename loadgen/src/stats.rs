//! Measurement types: per-stream sequence tracking, latency histograms and the
//! messages workers and the coordinator exchange (one JSON line each).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Publish counts keyed by (room index, publisher index).
pub type Counts = Vec<(u32, u32, u64)>;

/// What one receiver saw of one (room, publisher) sequence: a bitset of the
/// sequence numbers seen, so duplicates and late arrivals are told apart exactly.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    seen: Vec<u64>,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Sequence numbers received more than once.
    pub duplicated: u64,
    /// Arrivals below the highest sequence number already seen.
    pub reordered: u64,
    max: u64,
}

impl Stream {
    /// Records the arrival of `seq`.
    pub fn observe(&mut self, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicated += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.unique += 1;
        if seq < self.max {
            self.reordered += 1;
        } else {
            self.max = seq;
        }
    }
}

/// A latency histogram in microseconds, 1 µs to one hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// A histogram as (value, count) pairs, to cross a process boundary.
pub fn to_pairs(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds pairs from [`to_pairs`] into `histogram`.
pub fn add_pairs(histogram: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        histogram.saturating_record_n(value, count);
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Latency {
    /// The summary of `histogram`.
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            count: histogram.len(),
            mean: histogram.mean(),
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

/// Worker to coordinator: connected and subscribed.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ready {
    /// Subscriber connections subscribed to all their rooms.
    pub subscribed: u64,
    /// Publisher connections open.
    pub publishers: u64,
    /// Connections that failed to open or subscribe.
    pub failed: u64,
    /// Seconds from start to ready.
    pub seconds: f64,
}

/// Coordinator to worker: run one measured phase.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PhaseCmd {
    /// Phase id, carried in every event.
    pub id: u32,
    /// Total publishes a second over all publishers of all workers.
    pub rate: f64,
    /// When the first publish is scheduled, ns since the epoch (all workers agree).
    pub start_ns: u64,
    /// How long publishers publish.
    pub duration_ns: u64,
    /// How long receivers may take after the totals to get every event.
    pub drain_ns: u64,
}

/// Worker to coordinator: what this worker's publishers published in the phase.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Published {
    /// Events published, by (room, publisher).
    pub counts: Counts,
    /// The last scheduled publish time, ns since the epoch.
    pub last_sched_ns: u64,
}

/// Coordinator to worker: what every publisher published, to count losses against.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Events published, by (room, publisher), over all workers.
    pub counts: Counts,
}

/// Worker to coordinator: what this worker's receivers saw in the phase.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Subscriber connections.
    pub clients: u64,
    /// Connections closed by the server (or failed) so far.
    pub disconnected: u64,
    /// Events received in this phase, duplicates included.
    pub delivered: u64,
    /// Distinct events received in this phase.
    pub unique: u64,
    /// Events received twice or more.
    pub duplicated: u64,
    /// Events received after a later one of the same publisher and room.
    pub reordered: u64,
    /// Events published to a client's room that it never received.
    pub lost: u64,
    /// Clients that lost at least one event.
    pub clients_with_loss: u64,
    /// The most events any one client lost.
    pub max_lost_per_client: u64,
    /// Most events any one client received twice.
    pub max_duplicated_per_client: u64,
    /// Most events any one client received out of order.
    pub max_reordered_per_client: u64,
    /// Events of an earlier phase that arrived during this one.
    pub stale: u64,
    /// Publishes acknowledged (`published`).
    pub acked: u64,
    /// Publishes refused (`error`) or failed to send.
    pub publish_errors: u64,
    /// The last receive time, ns since the epoch (0: none).
    pub last_delivery_ns: u64,
    /// Latency of every delivery, µs, as (value, count) pairs.
    pub latency: Vec<(u64, u64)>,
    /// Latency of deliveries whose publisher was on another server.
    pub cross_latency: Vec<(u64, u64)>,
    /// How late this worker's publishers sent, µs (actual minus scheduled time).
    #[serde(default)]
    pub send_lag: Vec<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_counts_duplicates_and_reorders() {
        let mut stream = Stream::default();
        for seq in [1, 2, 4, 3, 3, 5, 200] {
            stream.observe(seq);
        }
        assert_eq!(stream.unique, 6);
        assert_eq!(stream.duplicated, 1);
        assert_eq!(stream.reordered, 1);
    }

    #[test]
    fn histogram_pairs_round_trip() {
        let mut a = histogram();
        for v in [5, 50, 500, 5000] {
            a.record(v).unwrap();
        }
        let mut b = histogram();
        add_pairs(&mut b, &to_pairs(&a));
        assert_eq!(b.len(), 4);
        assert_eq!(Latency::of(&b).max, Latency::of(&a).max);
    }
}
