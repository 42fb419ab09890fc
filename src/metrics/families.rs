//! Every family's name, help and source (see the parent module's doc).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use switchboard_actors::{BackplaneKind, GetHealth, GetPeers, GetStats, HealthStatus, Stats};

use crate::State;

/// The buckets of `switchboard_publish_duration_seconds`, in seconds: from a Redis on
/// the same machine (100 µs) to past every retry and the response deadline (10 s).
const PUBLISH_DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// What a scrape reads, all at once.
pub(super) struct Snapshot {
    stats: Stats,
    health: HealthStatus,
    peers: usize,
    connections: usize,
    slow_consumer_closes: u64,
    publishes_in_flight: usize,
    publishes_refused: u64,
}

impl Snapshot {
    /// `None` when the broker or the peers actor is gone (the server is stopping).
    pub(super) async fn read(state: &State) -> Option<Snapshot> {
        // Sent together: each request is queued as it is made.
        let stats = state.broker.send(GetStats);
        let health = state.broker.send(GetHealth);
        let peers = state.peers.send(GetPeers);
        let (Ok(stats), Ok(health), Ok(peers)) = (stats.await, health.await, peers.await) else {
            return None;
        };
        Some(Snapshot {
            stats,
            health,
            peers: peers.peers.len(),
            connections: state.counters.open_now(),
            slow_consumer_closes: state.counters.slow_consumer_closes(),
            publishes_in_flight: state.publishes.in_flight(),
            publishes_refused: state.publishes.refused(),
        })
    }
}

/// A counter that follows a `/stats` statistic (see the parent module's doc).
pub(super) struct Follower {
    counter: IntCounter,
    read: fn(&Snapshot) -> u64,
    /// The statistic's value at the last reading.
    pub(super) seen: u64,
}

impl Follower {
    /// Adds what the statistic grew by since the last reading.
    pub(super) fn follow(&mut self, snapshot: &Snapshot) {
        let now = (self.read)(snapshot);
        self.counter.inc_by(growth(self.seen, now));
        self.seen = now;
    }
}

/// How much a statistic grew from `seen` to `now`. Below `seen`, it was reset since and
/// counted from zero again: all of `now` is new.
fn growth(seen: u64, now: u64) -> u64 {
    now.checked_sub(seen).unwrap_or(now)
}

/// The gauges set at each scrape.
pub(super) struct Gauges {
    connections: IntGauge,
    rooms: IntGauge,
    link_up: IntGaugeVec,
    failed_connects: IntGauge,
    peers: IntGauge,
    publishes_in_flight: IntGauge,
    publisher_waiting: IntGauge,
    publisher_unanswered: IntGauge,
    inbound_queued: IntGauge,
    presence_members: IntGauge,
}

impl Gauges {
    /// Registers the gauges, each link's at 0.
    pub(super) fn define(r: &Definer) -> prometheus::Result<Gauges> {
        let gauges = Gauges {
            connections: r.gauge("switchboard_connections", "Open WebSocket connections.")?,
            rooms: r.gauge(
                "switchboard_rooms",
                "Rooms this server holds a backplane subscription for (system:events included).",
            )?,
            link_up: r.gauge_vec(
                "switchboard_redis_link_up",
                "Whether each Redis link is up (always 1 on the memory backplane).",
                &["link"],
            )?,
            failed_connects: r.gauge(
                "switchboard_redis_failed_connect_attempts",
                "Failed Redis connection attempts since the last success, both links added.",
            )?,
            peers: r.gauge("switchboard_peers", "Other live servers seen on system:events.")?,
            publishes_in_flight: r.gauge(
                "switchboard_publishes_in_flight",
                "Publishes of HTTP callers and sessions waiting for their answer (at most LIMIT_PUBLISHES_IN_FLIGHT).",
            )?,
            publisher_waiting: r.gauge(
                "switchboard_publisher_waiting",
                "Publishes queued for a pipeline or between retries in the Redis publisher.",
            )?,
            publisher_unanswered: r.gauge(
                "switchboard_publisher_unanswered",
                "Publishes sent to Redis and not answered yet.",
            )?,
            inbound_queued: r.gauge(
                "switchboard_inbound_queue_depth",
                "Events from Redis waiting for the broker (past INBOUND_CAPACITY they are dropped).",
            )?,
            presence_members: r.gauge(
                "switchboard_presence_members",
                "This server's members of presence rooms.",
            )?,
        };
        for link in ["publisher", "subscriber"] {
            gauges.link_up.with_label_values(&[link]);
        }
        Ok(gauges)
    }

    /// Sets every gauge from a scrape's snapshot.
    pub(super) fn set(&self, s: &Snapshot) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.connections.set(gauge(s.connections as u64));
        self.rooms.set(gauge(s.health.active_subscriptions as u64));
        let up = |ready: bool| i64::from(ready);
        let link = |name: &str| self.link_up.with_label_values(&[name]);
        link("publisher").set(up(s.health.publisher_ready));
        link("subscriber").set(up(s.health.subscriber_ready));
        self.failed_connects
            .set(i64::from(s.health.reconnect_attempts));
        self.peers.set(gauge(s.peers as u64));
        self.publishes_in_flight
            .set(gauge(s.publishes_in_flight as u64));
        self.publisher_waiting.set(gauge(s.stats.publisher.waiting));
        self.publisher_unanswered
            .set(gauge(s.stats.publisher.unanswered));
        self.inbound_queued
            .set(gauge(s.stats.subscriber.inbound_queued));
        self.presence_members
            .set(gauge(s.stats.subscriber.presence_members));
    }
}

/// The counters read from `/stats`, every one of them zeroed by `POST /stats/reset`.
pub(super) fn followers(r: &Definer) -> prometheus::Result<Vec<Follower>> {
    let published = r.counter_vec(
        "switchboard_events_published_total",
        "Publish calls ended, by result (failed: after every retry).",
        &["result"],
    )?;
    let reconnects = r.counter_vec(
        "switchboard_redis_reconnects_total",
        "Redis links lost after being up, by link; each one is followed by a reconnect.",
        &["link"],
    )?;
    let gaps = r.counter_vec(
        "switchboard_gaps_total",
        "Gaps reported to a room's subscribers, one per room and gap, by reason.",
        &["reason"],
    )?;
    let follow = |counter: IntCounter, read: fn(&Snapshot) -> u64| Follower {
        counter,
        read,
        seen: 0,
    };
    let label = |vec: &IntCounterVec, value: &str| vec.with_label_values(&[value]);
    Ok(vec![
        follow(label(&published, "ok"), |s| {
            s.stats.publisher.successful_publishes
        }),
        follow(label(&published, "failed"), |s| {
            s.stats.publisher.failed_publishes
        }),
        follow(label(&reconnects, "publisher"), |s| {
            s.stats.publisher.links_lost
        }),
        follow(label(&reconnects, "subscriber"), |s| {
            s.stats.subscriber.links_lost
        }),
        follow(label(&gaps, "link_lost"), |s| {
            s.stats.subscriber.gaps_link_lost
        }),
        follow(label(&gaps, "overloaded"), |s| {
            s.stats.subscriber.gaps_overloaded
        }),
        follow(label(&gaps, "history_lost"), |s| {
            let subscriber = &s.stats.subscriber;
            subscriber
                .gaps_unrecovered
                .saturating_sub(subscriber.gaps_link_lost + subscriber.gaps_overloaded)
        }),
        follow(
            r.counter(
                "switchboard_events_received_total",
                "Messages from Redis, this server's own echoes not counted.",
            )?,
            |s| s.stats.subscriber.total_received,
        ),
        follow(
            r.counter(
                "switchboard_events_invalid_total",
                "Messages from Redis that were not a valid envelope, skipped.",
            )?,
            |s| s.stats.subscriber.failed_events,
        ),
        follow(
            r.counter(
                "switchboard_events_dropped_total",
                "Events from Redis dropped because the broker's inbound queue was full.",
            )?,
            |s| s.stats.subscriber.dropped_events,
        ),
        follow(
            r.counter(
                "switchboard_echoes_skipped_total",
                "This server's own publishes coming back from Redis, skipped.",
            )?,
            |s| s.stats.subscriber.echo_skipped,
        ),
        follow(
            r.counter(
                "switchboard_publish_retries_total",
                "Publish attempts retried.",
            )?,
            |s| s.stats.publisher.retries,
        ),
        follow(
            r.counter(
                "switchboard_publishes_refused_total",
                "Publishes refused at once by a bound (LIMIT_PUBLISHES_IN_FLIGHT or a connection's), reaching nobody.",
            )?,
            |s| s.publishes_refused,
        ),
        follow(
            r.counter(
                "switchboard_slow_consumer_closes_total",
                "Clients closed with 1013 because they did not keep up.",
            )?,
            |s| s.slow_consumer_closes,
        ),
        follow(
            r.counter(
                "switchboard_gaps_recovered_total",
                "Gaps in durable rooms closed by reading the missed events back.",
            )?,
            |s| s.stats.subscriber.gaps_recovered,
        ),
        follow(
            r.counter(
                "switchboard_events_recovered_total",
                "Events read back from the history to close a gap.",
            )?,
            |s| s.stats.subscriber.events_recovered,
        ),
        follow(
            r.counter(
                "switchboard_duplicates_dropped_total",
                "Events of durable rooms dropped as already delivered.",
            )?,
            |s| s.stats.subscriber.duplicates_dropped,
        ),
        follow(
            r.counter(
                "switchboard_presence_write_failures_total",
                "Writes of this server's presence members that Redis failed (each followed by a resync).",
            )?,
            |s| s.stats.subscriber.presence_write_failures,
        ),
        follow(
            r.counter(
                "switchboard_presence_resyncs_total",
                "This server's members of a presence room written again whole after Redis lost them.",
            )?,
            |s| s.stats.subscriber.presence_resyncs,
        ),
    ])
}

/// Makes metrics and registers them in one step.
pub(super) struct Definer<'a>(pub(super) &'a Registry);

impl Definer<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        metric: M,
    ) -> prometheus::Result<M> {
        self.0.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    pub(super) fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.add(IntCounter::new(name, help)?)
    }

    fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    pub(super) fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.add(IntGauge::new(name, help)?)
    }

    fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    pub(super) fn histogram(&self, name: &str, help: &str) -> prometheus::Result<Histogram> {
        let opts = HistogramOpts::new(name, help).buckets(PUBLISH_DURATION_BUCKETS.to_vec());
        self.add(Histogram::with_opts(opts)?)
    }

    /// `switchboard_server_info`: this server's id and backplane, always 1.
    pub(super) fn server_info(
        &self,
        server_id: &str,
        backplane: BackplaneKind,
    ) -> prometheus::Result<()> {
        let info = self.gauge_vec(
            "switchboard_server_info",
            "This server: its id and backplane (always 1).",
            &["server_id", "backplane"],
        )?;
        let backplane = match backplane {
            BackplaneKind::Redis => "redis",
            BackplaneKind::Memory => "memory",
        };
        info.with_label_values(&[server_id, backplane]).set(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_adds_growth_and_counts_from_zero_after_a_reset() {
        assert_eq!(growth(0, 10), 10);
        assert_eq!(growth(10, 15), 5);
        assert_eq!(growth(15, 15), 0);
        assert_eq!(growth(15, 4), 4, "reset since, then 4 more");
    }
}
