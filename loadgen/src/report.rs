//! The results of a run: the JSON written with `--out` and the table on stdout.

use serde::{Deserialize, Serialize};

use crate::{
    args::RunArgs,
    memory::RssTrace,
    plan::Plan,
    stats::{Latency, Ready},
};

/// Connection set-up over all workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Connect {
    /// Subscribers subscribed to all their rooms.
    pub subscribed: u64,
    /// Publishers connected.
    pub publishers: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Seconds from start until every worker was ready.
    pub seconds: f64,
}

/// Sums the workers' `@READY` lines.
pub fn merge_ready(ready: &[Ready], seconds: f64) -> Connect {
    Connect {
        subscribed: ready.iter().map(|r| r.subscribed).sum(),
        publishers: ready.iter().map(|r| r.publishers).sum(),
        failed: ready.iter().map(|r| r.failed).sum(),
        seconds,
    }
}

/// One server's memory before and after the connections opened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleNode {
    /// The server's process id.
    pub pid: u32,
    /// Connections the plan put on it.
    pub connections: u64,
    /// RSS before the loadgen connected, KiB.
    pub rss_before_kib: u64,
    /// RSS with every connection open and subscribed, KiB.
    pub rss_after_kib: u64,
    /// (after - before) / connections.
    pub per_connection_bytes: f64,
}

/// Memory per idle subscribed connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Idle {
    /// Per server.
    pub nodes: Vec<IdleNode>,
    /// Total RSS growth over total connections, bytes.
    pub per_connection_bytes: f64,
}

impl Idle {
    /// Totals over `nodes`.
    pub fn new(nodes: Vec<IdleNode>) -> Idle {
        let grown: u64 = nodes
            .iter()
            .map(|n| n.rss_after_kib.saturating_sub(n.rss_before_kib) * 1024)
            .sum();
        let connections: u64 = nodes.iter().map(|n| n.connections).sum();
        Idle {
            per_connection_bytes: grown as f64 / connections.max(1) as f64,
            nodes,
        }
    }
}

/// A server's resource use during a phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeUsage {
    /// Process id.
    pub pid: u32,
    /// CPU time over wall time of the phase (100 = one core).
    pub cpu_percent: f64,
    /// RSS at the end of the phase, KiB.
    pub rss_kib: u64,
}

/// One measured phase at one offered rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseResult {
    /// Phase id (1-based).
    pub phase: u32,
    /// Publishes a second asked of all publishers together.
    pub offered_publishes_per_s: f64,
    /// Deliveries a second that rate implies (publishes × subscribers of the room).
    pub offered_deliveries_per_s: f64,
    /// Publishing time, s.
    pub duration_s: f64,
    /// Publishes sent.
    pub published: u64,
    /// Publishes acknowledged by the server.
    pub acked: u64,
    /// Publishes refused or unsent.
    pub publish_errors: u64,
    /// Deliveries owed: each publish times the subscribers of its room.
    pub expected_deliveries: u64,
    /// Distinct deliveries received.
    pub delivered: u64,
    /// `delivered` over the publishing time.
    pub deliveries_per_s: f64,
    /// Publish (scheduled) to receive, every delivery, µs.
    pub latency_us: Latency,
    /// The same for deliveries whose publisher was on the other server.
    pub cross_server_latency_us: Latency,
    /// How late the load generator itself sent each publish (actual minus
    /// scheduled time), µs: part of every latency above, and not the server's.
    #[serde(default)]
    pub send_lag_us: Latency,
    /// Deliveries owed and never received.
    pub lost: u64,
    /// Deliveries received more than once.
    pub duplicated: u64,
    /// Deliveries received after a later one of the same publisher and room.
    pub reordered: u64,
    /// Clients that lost at least one event.
    pub clients_with_loss: u64,
    /// The most events one client lost.
    pub max_lost_per_client: u64,
    /// The most duplicates one client got.
    pub max_duplicated_per_client: u64,
    /// The most reordered events one client got.
    pub max_reordered_per_client: u64,
    /// Events of earlier phases received in this one.
    pub stale: u64,
    /// Clients closed by a server or never connected, so far.
    pub disconnected: u64,
    /// Last delivery minus last scheduled publish, ms.
    pub drain_lag_ms: f64,
    /// Growth of Switchboard's `slowConsumerCloses` during the phase.
    pub slow_consumer_closes: u64,
    /// Per server CPU and RSS.
    pub servers: Vec<NodeUsage>,
    /// Nothing lost, duplicated or reordered, no client closed, drain lag and p99
    /// within bounds.
    pub sustained: bool,
    /// Why not, when not.
    pub not_sustained_because: Vec<String>,
}

impl PhaseResult {
    /// Sets `sustained` and the reasons against it.
    pub fn judge(&mut self, max_lag_ms: f64, max_p99_us: u64) {
        let mut why = Vec::new();
        let mut check = |bad: bool, reason: String| {
            if bad {
                why.push(reason);
            }
        };
        check(self.lost > 0, format!("lost {}", self.lost));
        check(
            self.duplicated > 0,
            format!("duplicated {}", self.duplicated),
        );
        check(self.reordered > 0, format!("reordered {}", self.reordered));
        check(
            self.disconnected > 0,
            format!("disconnected {}", self.disconnected),
        );
        check(
            self.slow_consumer_closes > 0,
            format!("slow-consumer closes {}", self.slow_consumer_closes),
        );
        check(
            self.publish_errors > 0,
            format!("publish errors {}", self.publish_errors),
        );
        check(self.published == 0, "nothing published".into());
        check(
            self.drain_lag_ms.is_nan() || self.drain_lag_ms > max_lag_ms,
            format!("drain lag {:.0} ms", self.drain_lag_ms),
        );
        check(
            self.latency_us.p99 >= max_p99_us,
            format!("p99 {:.1} ms", self.latency_us.p99 as f64 / 1000.0),
        );
        self.sustained = why.is_empty();
        self.not_sustained_because = why;
    }
}

/// Everything one `run` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// `--label`.
    pub label: String,
    /// `switchboard` or `socketio`.
    pub protocol: String,
    /// The loadgen flags.
    pub command: String,
    /// Subscribers.
    pub clients: usize,
    /// Rooms.
    pub rooms: usize,
    /// Rooms per subscriber.
    pub rooms_per_client: usize,
    /// Publisher connections.
    pub publishers: usize,
    /// Worker processes.
    pub workers: usize,
    /// The servers.
    pub servers: Vec<String>,
    /// Connection set-up.
    pub connect: Connect,
    /// Memory per idle connection, when server pids were given.
    pub idle: Option<Idle>,
    /// The phases, in order.
    pub phases: Vec<PhaseResult>,
    /// The highest sustained delivery rate among the phases.
    pub max_sustained_deliveries_per_s: Option<f64>,
    /// The publish rate of that phase.
    pub max_sustained_publishes_per_s: Option<f64>,
    /// The p99 latency of that phase, µs: what the ceiling cost each delivery.
    pub max_sustained_p99_us: Option<u64>,
    /// The servers' RSS over the phases, with `--rss-every` (the soak).
    #[serde(default)]
    pub rss: Option<RssTrace>,
}

impl RunResult {
    /// Assembles the result.
    pub fn new(
        args: &RunArgs,
        argv: &[String],
        plan: &Plan,
        connect: Connect,
        idle: Option<Idle>,
        phases: Vec<PhaseResult>,
    ) -> RunResult {
        let best = phases
            .iter()
            .filter(|p| p.sustained)
            .max_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s));
        RunResult {
            label: args.label.clone(),
            protocol: plan.protocol.name().to_string(),
            command: format!("switchboard-loadgen run {}", argv.join(" ")),
            clients: plan.clients,
            rooms: plan.rooms,
            rooms_per_client: plan.rooms_per_client,
            publishers: plan.publishers,
            workers: plan.workers,
            servers: plan.servers.iter().map(ToString::to_string).collect(),
            connect,
            idle,
            max_sustained_deliveries_per_s: best.map(|p| p.deliveries_per_s),
            max_sustained_publishes_per_s: best.map(|p| p.offered_publishes_per_s),
            max_sustained_p99_us: best.map(|p| p.latency_us.p99),
            rss: None,
            phases,
        }
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Prints one phase as a table row (with the header first when `header`).
#[allow(clippy::print_stdout)]
pub fn print_phase(p: &PhaseResult, header: bool) {
    if header {
        println!(
            "{:>9} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6} {:>5} {:>5} {:>8} {:>11} sustained",
            "pub/s",
            "deliv/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "x-srv p99",
            "send p99",
            "lost",
            "dup",
            "reord",
            "lag ms",
            "server cpu%"
        );
    }
    let cpu: Vec<String> = p
        .servers
        .iter()
        .map(|s| format!("{:.0}", s.cpu_percent))
        .collect();
    let l = &p.latency_us;
    println!(
        "{:>9.0} {:>11.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>9.2} {:>6} {:>5} {:>5} {:>8.0} {:>11} {}",
        p.offered_publishes_per_s,
        p.deliveries_per_s,
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        ms(p.cross_server_latency_us.p99),
        ms(p.send_lag_us.p99),
        p.lost,
        p.duplicated,
        p.reordered,
        p.drain_lag_ms,
        cpu.join("/"),
        if p.sustained { "yes".to_string() } else { format!("no ({})", p.not_sustained_because.join(", ")) }
    );
}

/// Prints the idle-memory figures.
#[allow(clippy::print_stdout)]
pub fn print_idle(idle: &Idle) {
    for node in &idle.nodes {
        println!(
            "server pid {}: {} connections, RSS {} -> {} KiB, {:.0} B per connection",
            node.pid,
            node.connections,
            node.rss_before_kib,
            node.rss_after_kib,
            node.per_connection_bytes
        );
    }
    println!(
        "RSS per connection: {:.0} B ({:.1} KiB)",
        idle.per_connection_bytes,
        idle.per_connection_bytes / 1024.0
    );
}

/// Prints each server's RSS trace: first and last reading and the growth.
#[allow(clippy::print_stdout)]
pub fn print_rss(rss: &RssTrace) {
    for server in &rss.servers {
        let (first, last) = (server.samples.first(), server.samples.last());
        let kib = |s: Option<&crate::memory::RssSample>| s.map_or(0, |s| s.rss_kib);
        let growth = server
            .growth_kib_per_hour
            .map_or("n/a (too few samples after the warm-up)".into(), |g| {
                format!("{g:.0} KiB/hour")
            });
        println!(
            "server pid {}: {} RSS samples, {} -> {} KiB; growth after {:.0} s: {growth}",
            server.pid,
            server.samples.len(),
            kib(first),
            kib(last),
            rss.warmup_s
        );
    }
}
