//! `GET /metrics` (PROTOCOL.md §10): the server's figures in the Prometheus text
//! format, kept in a `prometheus` [`Registry`] of this server's own and written by its
//! [`TextEncoder`].
//!
//! Most figures are read at scrape time from what the server keeps anyway: the
//! broker's [`Stats`](switchboard_actors::Stats) and
//! [`HealthStatus`](switchboard_actors::HealthStatus), the peers, the
//! [`ConnectionCounters`](crate::ConnectionCounters) and the
//! [`PublishGate`](crate::PublishGate). Only what nothing counted before is counted as
//! it happens, each with one relaxed atomic add: events queued for clients
//! (`switchboard_deliveries_total`), the sessions' rooms
//! (`switchboard_subscriptions`), history reads, and the time of each publish call
//! (`switchboard_publish_duration_seconds`).
//!
//! # Counters never go down
//!
//! `POST /stats/reset` sets the `/stats` counters back to zero, but a Prometheus
//! counter must never go down (a drop reads as a restart, and `rate()` makes a spike
//! of it). So each counter read from `/stats` follows its statistic: it remembers the value
//! it saw last and adds only what the statistic grew by since. A reset brings every
//! follower up to date first, then zeroes the statistics, then has each follower start
//! again from zero ([`Metrics::before_reset`], [`ResetGuard::finish`]); scrapes wait
//! meanwhile. Only what is counted between that last reading and the reset itself,
//! the time of one round trip to the broker, is lost to the metrics. A statistic below
//! what its follower saw without that (a reset through `PubSub::reset_stats` in
//! process) counts as having started again from zero.
//!
//! # Layout
//!
//! - `mod.rs`: [`Metrics`] (what is counted as it happens, the scrape, the reset) and
//!   the route's handler.
//! - `families.rs`: every family's name, help and source: the gauges and the counters
//!   set from a scrape's snapshot, and the followers' arithmetic.

mod families;

use actix_web::{web::Data, HttpRequest, HttpResponse};
use prometheus::{Histogram, IntCounter, IntGauge, Registry, TextEncoder};
use switchboard_actors::BackplaneKind;
use tokio::sync::{Mutex, MutexGuard};

use self::families::{Definer, Follower, Gauges, Snapshot};
use crate::State;

/// One server's metrics: its registry, what is counted as it happens, and the
/// counters that follow `/stats`.
pub struct Metrics {
    registry: Registry,
    /// Event frames queued for WebSocket clients, live and replayed.
    deliveries: IntCounter,
    /// Rooms the sessions have joined, added up (shared with each session's rooms).
    subscriptions: IntGauge,
    /// History reads asked of the broker by clients.
    history_reads: IntCounter,
    /// From a publish call to its answer.
    publish_duration: Histogram,
    /// Set from each scrape's [`Snapshot`].
    gauges: Gauges,
    /// A mutex held across the scrape's wait for the broker, so that a reset cannot
    /// come between what a scrape read and the update it makes of it (the scrape
    /// would then add the statistics of before the reset once more).
    followers: Mutex<Vec<Follower>>,
}

/// Held by `POST /stats/reset` while it resets: scrapes wait, and
/// [`ResetGuard::finish`] has the followers start again from zero.
pub struct ResetGuard<'a>(MutexGuard<'a, Vec<Follower>>);

impl ResetGuard<'_> {
    /// The statistics are back to zero: so is what each follower saw. (A reset that
    /// did not finish leaves them as they were: a statistic found below what its
    /// follower saw counts as started again from zero.)
    pub fn finish(mut self) {
        for follower in self.0.iter_mut() {
            follower.seen = 0;
        }
    }
}

impl Metrics {
    /// Every family of PROTOCOL.md §10 and the operator's others, registered, with
    /// each known label value at 0 so the first scrape shows them all.
    pub fn new(server_id: &str, backplane: BackplaneKind) -> Metrics {
        Self::register(server_id, backplane).expect("the metric definitions are valid")
    }

    fn register(server_id: &str, backplane: BackplaneKind) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let r = Definer(&registry);
        r.server_info(server_id, backplane)?;
        Ok(Metrics {
            deliveries: r.counter(
                "switchboard_deliveries_total",
                "Event frames queued for WebSocket clients, live and replayed.",
            )?,
            subscriptions: r.gauge(
                "switchboard_subscriptions",
                "Rooms joined by the WebSocket sessions, added up over the sessions.",
            )?,
            history_reads: r.counter(
                "switchboard_history_reads_total",
                "History reads asked by clients: history ops, GET /history, and each page of a recovery.",
            )?,
            publish_duration: r.histogram(
                "switchboard_publish_duration_seconds",
                "From a publish call (HTTP or WebSocket) to its answer: queues, Redis's answer, retries.",
            )?,
            gauges: Gauges::define(&r)?,
            followers: Mutex::new(families::followers(&r)?),
            registry,
        })
    }

    /// Counts one event frame queued for a client.
    pub fn delivered(&self) {
        self.deliveries.inc();
    }

    /// Counts one history read asked of the broker.
    pub fn history_read(&self) {
        self.history_reads.inc();
    }

    /// The gauge of the sessions' rooms, for each session's rooms to keep.
    pub fn subscriptions(&self) -> IntGauge {
        self.subscriptions.clone()
    }

    /// The publish-duration histogram, for a publish to record itself in.
    pub fn publish_duration(&self) -> Histogram {
        self.publish_duration.clone()
    }

    /// Reads the server's statistics and writes every family out; `None` when the
    /// server is stopping.
    pub async fn scrape(&self, state: &State) -> Option<String> {
        let mut followers = self.followers.lock().await;
        let snapshot = Snapshot::read(state).await?;
        self.update(&mut followers, &snapshot);
        drop(followers);
        let mut text = String::new();
        match TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text) {
            Ok(()) => Some(text),
            Err(e) => {
                log::error!("{}: /metrics: cannot encode: {e}", state.server_id);
                None
            }
        }
    }

    /// Brings every follower up to date and holds scrapes off until the reset
    /// finishes (see the module doc).
    pub async fn before_reset(&self, state: &State) -> ResetGuard<'_> {
        let mut followers = self.followers.lock().await;
        if let Some(snapshot) = Snapshot::read(state).await {
            self.update(&mut followers, &snapshot);
        }
        ResetGuard(followers)
    }

    fn update(&self, followers: &mut [Follower], snapshot: &Snapshot) {
        self.gauges.set(snapshot);
        for follower in followers {
            follower.follow(snapshot);
        }
    }
}

/// `GET /metrics`: `SERVICE_TOKEN` when set, like the endpoints that change things
/// (the figures tell about the deployment).
pub(crate) async fn serve(req: HttpRequest, state: Data<State>) -> HttpResponse {
    if let Err(e) = crate::http::check_service_token(&req, &state) {
        return crate::http::refusal(&e);
    }
    match state.metrics.scrape(&state).await {
        Some(text) => HttpResponse::Ok()
            .content_type(prometheus::TEXT_FORMAT)
            .body(text),
        None => HttpResponse::ServiceUnavailable().finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_there_before_anything_happened() {
        let metrics = Metrics::new("s1", BackplaneKind::Memory);
        let mut text = String::new();
        TextEncoder::new()
            .encode_utf8(&metrics.registry.gather(), &mut text)
            .unwrap();
        for line in [
            "switchboard_connections 0",
            "switchboard_subscriptions 0",
            "switchboard_rooms 0",
            r#"switchboard_events_published_total{result="ok"} 0"#,
            r#"switchboard_events_published_total{result="failed"} 0"#,
            "switchboard_events_received_total 0",
            "switchboard_deliveries_total 0",
            r#"switchboard_redis_reconnects_total{link="publisher"} 0"#,
            r#"switchboard_redis_reconnects_total{link="subscriber"} 0"#,
            r#"switchboard_gaps_total{reason="link_lost"} 0"#,
            r#"switchboard_gaps_total{reason="history_lost"} 0"#,
            r#"switchboard_gaps_total{reason="overloaded"} 0"#,
            "switchboard_slow_consumer_closes_total 0",
            r#"switchboard_redis_link_up{link="publisher"} 0"#,
            r#"switchboard_redis_link_up{link="subscriber"} 0"#,
            "switchboard_publish_duration_seconds_count 0",
            r#"switchboard_server_info{backplane="memory",server_id="s1"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
