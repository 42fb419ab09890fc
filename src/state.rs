//! What the routes and the sessions of one server share: [`State`], with its
//! [`ConnectionCounters`] and the [`PublishGate`] that bounds publishes in flight.

use std::{
    future::Future,
    os::fd::RawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};

use actix::Addr;
use serde::Serialize;
use switchboard_actors::{
    durable::Published, Broker, ConnectionGauge, Error as ActorError, Peers, Publish,
};
use tokio::sync::watch;

use crate::{Error, Metrics, SessionConfig};

/// What every request handler and session shares.
pub struct State {
    /// This server's id, for log lines.
    pub server_id: String,
    /// The hub.
    pub broker: Addr<Broker>,
    /// The peer tracker.
    pub peers: Addr<Peers>,
    /// Session settings and limits.
    pub session: SessionConfig,
    /// Connection counters for `/stats`.
    pub counters: ConnectionCounters,
    /// Publishes of this server's HTTP callers and sessions waiting for their answer.
    pub publishes: Arc<PublishGate>,
    /// Turns true when the server shuts down; every session then closes with 1001.
    pub shutdown: watch::Receiver<bool>,
    /// Whether the console and the browser client are served (`CONSOLE`).
    pub console: bool,
    /// What `GET /metrics` serves.
    pub metrics: Metrics,
    /// Names each connection (a presence member's `client`).
    pub client_ids: ClientIds,
}

/// Names connections `<instance id>.<n>`: unique across servers, and across restarts
/// of one, since the instance id is random per process.
#[derive(Debug)]
pub struct ClientIds {
    instance_id: String,
    next: AtomicU64,
}

impl ClientIds {
    /// Ids for the process with this instance id.
    pub fn new(instance_id: &str) -> ClientIds {
        ClientIds {
            instance_id: instance_id.to_owned(),
            next: AtomicU64::new(1),
        }
    }

    /// A new connection's id.
    pub fn next(&self) -> Arc<str> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n}", self.instance_id).into()
    }
}

impl State {
    /// Publishes through the broker under the [`PublishGate`]: refused at once at the
    /// bound, else the answer. The slot is held until the broker answers, even if the
    /// caller goes away first (a closed session, an HTTP client that hung up): its
    /// message is in the broker's mailbox by then, and it is what the bound counts.
    pub fn publish(
        &self,
        publish: Publish,
    ) -> Result<impl Future<Output = Result<Published, ActorError>>, Error> {
        let admission = self.publishes.admit(&self.server_id)?;
        let (duration, started) = (self.metrics.publish_duration(), std::time::Instant::now());
        let request = self.broker.send(publish);
        let answered = actix::spawn(async move {
            let result = request.await;
            if result.is_ok() {
                duration.observe(started.elapsed().as_secs_f64());
            }
            drop(admission);
            result
        });
        Ok(async move {
            match answered.await {
                Ok(answer) => answer?,
                Err(_) => Err(ActorError::ShuttingDown),
            }
        })
    }
}

/// `connections` in `/stats`. Atomics, not an actor: sessions on every worker thread
/// count themselves, and nothing else depends on these numbers.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    open: ConnectionGauge,
    slow_consumer_closes: AtomicU64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionsSnapshot {
    open: usize,
    slow_consumer_closes: u64,
    publishes_in_flight: usize,
    publishes_refused: u64,
}

impl ConnectionCounters {
    pub(crate) fn open(&self) {
        self.open.open();
    }

    pub(crate) fn close(&self) {
        self.open.close();
    }

    pub(crate) fn slow_consumer_close(&self) {
        self.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
    }

    /// The open-connections gauge, shared with the peer tracker (it announces it).
    pub fn gauge(&self) -> ConnectionGauge {
        self.open.clone()
    }

    /// Open connections now.
    pub fn open_now(&self) -> usize {
        self.open.get()
    }

    /// Clients closed with 1013 since the start or the last reset.
    pub fn slow_consumer_closes(&self) -> u64 {
        self.slow_consumer_closes.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot(&self, publishes: &PublishGate) -> impl Serialize {
        ConnectionsSnapshot {
            open: self.open.get(),
            slow_consumer_closes: self.slow_consumer_closes(),
            publishes_in_flight: publishes.in_flight(),
            publishes_refused: publishes.refused(),
        }
    }

    /// Back to zero, but `open` (a gauge, not a counter) stays true.
    pub(crate) fn reset(&self) {
        self.slow_consumer_closes.store(0, Ordering::Relaxed);
    }
}

/// A connection's socket, recorded when it is accepted (see [`Switchboard::on_connect`]),
/// so a session can reset a client that never reads.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSocket(pub RawFd);

/// Bounds the publishes waiting for their answer across one server's HTTP callers and
/// sessions (`LIMIT_PUBLISHES_IN_FLIGHT`).
///
/// The broker's mailbox cannot do it: an actix sender that finds a bounded mailbox
/// full is parked, but its message is queued all the same, so callers sharing one
/// `Addr` queue without limit. Past the bound a publish is refused at once
/// (`publish_failed`, HTTP 503, reaching nobody), counted in `/stats`
/// `connections.publishesRefused` and logged once per episode. Atomics, not an actor:
/// it is taken on every publish from every worker thread, and a message round trip
/// would cost more than the publish it guards.
#[derive(Debug)]
pub struct PublishGate {
    /// Publishes admitted and not answered yet.
    in_flight: AtomicUsize,
    /// `LIMIT_PUBLISHES_IN_FLIGHT`.
    limit: usize,
    /// Publishes refused at this bound or a connection's (`publishesRefused`).
    refused: AtomicU64,
    /// Whether the last publish was refused: the warning is logged on the first
    /// refusal after an admission, not on every one.
    saturated: AtomicBool,
}

/// A publish let through the [`PublishGate`]; its slot is freed when this is dropped
/// (the publish was answered, or its caller went away).
#[derive(Debug)]
pub struct Admission(Arc<PublishGate>);

impl PublishGate {
    /// A gate letting `limit` publishes wait at once.
    pub fn new(limit: usize) -> PublishGate {
        PublishGate {
            in_flight: AtomicUsize::new(0),
            limit,
            refused: AtomicU64::new(0),
            saturated: AtomicBool::new(false),
        }
    }

    /// Takes a slot, or refuses the publish when `limit` are waiting.
    pub fn admit(self: &Arc<Self>, server_id: &str) -> Result<Admission, Error> {
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            });
        if let Ok(before) = taken {
            // An episode ends when the load fell to half the bound, not at the first
            // slot freed: at the bound every answer frees one.
            if before < self.limit / 2 {
                self.saturated.store(false, Ordering::Relaxed);
            }
            return Ok(Admission(self.clone()));
        }
        let limit = self.limit;
        self.refuse(server_id, || {
            format!("{limit} publishes of this server wait for Redis (LIMIT_PUBLISHES_IN_FLIGHT)")
        });
        Err(Error::PublishFailed(format!(
            "overloaded: {limit} publishes of this server are waiting for Redis; not published"
        )))
    }

    /// Counts a publish refused by a bound (this gate's, or a connection's), logging
    /// the first refusal of an episode with `why`.
    pub fn refuse(&self, server_id: &str, why: impl FnOnce() -> String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if !self.saturated.swap(true, Ordering::Relaxed) {
            log::warn!("{server_id}: refusing publishes: {}", why());
        }
    }

    /// Publishes waiting now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Publishes refused since the start or the last reset.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Back to zero for `POST /stats/reset` (the in-flight gauge stays true).
    pub(crate) fn reset(&self) {
        self.refused.store(0, Ordering::Relaxed);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_admits_up_to_its_limit_and_frees_slots_on_drop() {
        let gate = Arc::new(PublishGate::new(2));
        let first = gate.admit("t").unwrap();
        let _second = gate.admit("t").unwrap();
        assert!(matches!(gate.admit("t"), Err(Error::PublishFailed(_))));
        assert_eq!(gate.refused.load(Ordering::Relaxed), 1);
        drop(first);
        assert_eq!(gate.in_flight(), 1);
        let _third = gate.admit("t").unwrap();
        assert_eq!(gate.in_flight(), 2);
    }
}
