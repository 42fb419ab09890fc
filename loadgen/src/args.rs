//! The command line, parsed by `clap`: a misspelt flag or a flag given twice is an
//! error, never a benchmark quietly run on defaults. List-valued flags take one
//! comma-separated value (`--rates 1000,10000`), so they too can be given once only.

use std::{net::SocketAddr, path::PathBuf, str::FromStr};

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::proto::Protocol;

/// Measures Switchboard (and a Socket.IO peer) under load; see the crate docs.
#[derive(Debug, Parser)]
#[command(name = "switchboard-loadgen", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect subscribers and publishers to the servers and measure one phase per
    /// rate (or a ramp until a phase is not sustained); prints a table, writes JSON.
    Run(RunArgs),
    /// One worker process of `run` (started by `run` itself, with `run`'s flags;
    /// talks to it over stdin and stdout).
    Worker(WorkerArgs),
    /// Scenario 4: publishes from this process through the broker into Redis.
    PublishPath(PublishPathArgs),
    /// Draws an SVG chart from `run` result files.
    Chart(ChartArgs),
    /// A TCP proxy to Redis that cuts every connection through it on SIGUSR1 (and
    /// refuses new ones) until SIGUSR2: one server's Redis link, made to fail.
    Proxy(ProxyArgs),
    /// Durable rooms: the catch-up after a server's Redis link was cut (through a
    /// `proxy`) while events were published.
    CatchUp(CatchUpArgs),
    /// Durable rooms: clients reconnecting all at once with `since`.
    Storm(StormArgs),
    /// Presence: how long reading a big presence room's members takes.
    Presence(PresenceArgs),
}

/// Who connects where (the flags [`crate::plan::Plan`] is built from).
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// The servers, `host:port,host:port..`.
    #[arg(long, value_delimiter = ',', action = ArgAction::Set, required = true)]
    pub servers: Vec<SocketAddr>,
    /// The protocol the servers speak: `switchboard` or `socketio`.
    #[arg(long, default_value = "switchboard", value_parser = Protocol::parse)]
    pub protocol: Protocol,
    /// Subscriber connections over all workers.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Rooms the subscribers are spread over.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Rooms each subscriber joins.
    #[arg(long, default_value_t = 1)]
    pub rooms_per_client: usize,
    /// Room names are `{prefix}-{index}`.
    #[arg(long, default_value = "bench")]
    pub room_prefix: String,
    /// Publisher connections (not subscribed) over all workers.
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Filler bytes in each event's data, to model bigger events.
    #[arg(long, default_value_t = 0)]
    pub padding: usize,
    /// Connection attempts in flight per worker.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
}

/// The flags of `run` (and of its workers, which are given the same).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Who connects where.
    #[command(flatten)]
    pub plan: PlanArgs,
    /// The servers' process ids, `pid,pid..`, to sample CPU and RSS from `/proc`.
    #[arg(long, value_delimiter = ',', action = ArgAction::Set)]
    pub server_pids: Vec<u32>,
    /// Offered publishes per second of each phase, `rate,rate..`.
    #[arg(long, value_delimiter = ',', action = ArgAction::Set, conflicts_with = "ramp")]
    pub rates: Vec<f64>,
    /// A ramp instead of `--rates`: `start,factor,steps`, stopping at the first
    /// phase that is not sustained.
    #[arg(long)]
    pub ramp: Option<Ramp>,
    /// Publishing seconds of each phase.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds to wait for the last deliveries after each phase.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Seconds between connecting and the first phase (the idle-memory sample).
    #[arg(long, default_value_t = 1.0)]
    pub hold: f64,
    /// Sample each server's RSS every this many seconds while the phases run, into
    /// the result's `rss` (the soak).
    #[arg(long)]
    pub rss_every: Option<f64>,
    /// Seconds of the run left out of the RSS growth fit (the warm-up).
    #[arg(long, default_value_t = 300.0)]
    pub rss_warmup: f64,
    /// The result's label (in the JSON and on charts).
    #[arg(long, default_value = "run")]
    pub label: String,
    /// Where to write the result JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The flags of `worker`: `run`'s, and which worker this is.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// The run's flags.
    #[command(flatten)]
    pub run: RunArgs,
    /// This worker's index, from 0.
    #[arg(long)]
    pub worker_index: usize,
}

/// The flags of `publish-path`.
#[derive(Debug, Clone, Args)]
pub struct PublishPathArgs {
    /// The Redis to publish into, `redis://host:port`.
    #[arg(long)]
    pub redis_url: String,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Unmeasured seconds of publishing first.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// The room (Redis channel suffix) published to.
    #[arg(long, default_value = "ch")]
    pub room: String,
    /// Make the room durable (as `DURABLE_ROOMS=**`): each publish is the numbering
    /// script (offset, stream, publish) instead of a `PUBLISH`.
    #[arg(long)]
    pub durable: bool,
    /// Where to write the result JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The flags of `proxy`.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Where to listen (port 0: a free one, printed as `proxy listening on ADDR`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The Redis to forward to.
    #[arg(long)]
    pub to: SocketAddr,
}

/// The flags of `catch-up`.
#[derive(Debug, Clone, Args)]
pub struct CatchUpArgs {
    /// The server the events are published through (its Redis link stays up).
    #[arg(long)]
    pub publish_server: SocketAddr,
    /// The server the subscribers are on, whose Redis link goes through the proxy.
    #[arg(long)]
    pub subscribe_server: SocketAddr,
    /// The `proxy` process (cut with SIGUSR1, restored with SIGUSR2).
    #[arg(long)]
    pub proxy_pid: i32,
    /// The Redis both servers use (to see that nobody is subscribed to the room
    /// while the events are published).
    #[arg(long)]
    pub redis_url: String,
    /// Subscribers in the room.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Events published while the link is cut.
    #[arg(long, default_value_t = 1000)]
    pub events: u64,
    /// The room; the servers' `DURABLE_ROOMS` must match it.
    #[arg(long, default_value = "dur:catchup")]
    pub room: String,
    /// Seconds to wait for the catch-up before giving up.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Where to write the result JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The flags of `storm`.
#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    /// The servers, `host:port,host:port..`: clients alternate between them; the
    /// publisher is on the first.
    #[arg(long, value_delimiter = ',', action = ArgAction::Set, required = true)]
    pub servers: Vec<SocketAddr>,
    /// Clients that disconnect, miss events and reconnect together.
    #[arg(long, default_value_t = 5000)]
    pub clients: usize,
    /// Durable rooms the clients are spread over.
    #[arg(long, default_value_t = 5)]
    pub rooms: usize,
    /// Room names are `{prefix}-{index}`; the servers' `DURABLE_ROOMS` must match.
    #[arg(long, default_value = "dur:storm")]
    pub room_prefix: String,
    /// Events published in each room while the clients are away.
    #[arg(long, default_value_t = 100)]
    pub missed: u64,
    /// Milliseconds between live events in each room once the storm has started.
    #[arg(long, default_value_t = 100)]
    pub live_every_ms: u64,
    /// Connection attempts in flight while the clients first connect.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds to wait for every client to be live before giving up.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Where to write the result JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The flags of `presence`.
#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    /// The servers, `host:port,host:port..`: members alternate between them, and so
    /// do the timed reads.
    #[arg(long, value_delimiter = ',', action = ArgAction::Set, required = true)]
    pub servers: Vec<SocketAddr>,
    /// Members: sessions subscribed to the room.
    #[arg(long, default_value_t = 5000)]
    pub members: usize,
    /// The room; the servers' `PRESENCE_ROOMS` must match it.
    #[arg(long, default_value = "pres:bench")]
    pub room: String,
    /// Rounds of timed reads; each round is one WebSocket `presence`, one
    /// `presence_count` and one `GET /presence/{room}`, on the servers in turn.
    #[arg(long, default_value_t = 50)]
    pub reads: usize,
    /// Connection attempts in flight while the members connect.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds each wait (every member counted, the join frames over, every member
    /// gone) may take before the scenario fails.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Where to write the result JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The flags of `chart`.
#[derive(Debug, Clone, Args)]
pub struct ChartArgs {
    /// The SVG file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Chart each server's RSS over time (from `--rss-every` results) instead of
    /// latency against rate.
    #[arg(long)]
    pub rss: bool,
    /// `run` result files, one line colour each.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
}

/// `--ramp start,factor,steps`: rates `start × factor^i` for `i < steps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    /// The first phase's publishes per second.
    pub start: f64,
    /// Each phase's rate over the one before.
    pub factor: f64,
    /// Phases at most.
    pub steps: u32,
}

impl Ramp {
    /// The rates, in order.
    pub fn rates(self) -> impl Iterator<Item = f64> {
        (0..self.steps).map(move |i| self.start * self.factor.powi(i as i32))
    }
}

impl FromStr for Ramp {
    type Err = String;

    fn from_str(s: &str) -> Result<Ramp, String> {
        let bad = || format!("{s:?} is not start,factor,steps (e.g. 20,1.25,21)");
        let [start, factor, steps] = s.split(',').collect::<Vec<_>>()[..] else {
            return Err(bad());
        };
        let ramp = Ramp {
            start: start.parse().map_err(|_| bad())?,
            factor: factor.parse().map_err(|_| bad())?,
            steps: steps.parse().map_err(|_| bad())?,
        };
        if ramp.start > 0.0 && ramp.factor > 0.0 {
            Ok(ramp)
        } else {
            Err(bad())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{error::ErrorKind, CommandFactory};

    use super::*;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("switchboard-loadgen").chain(line.split(' ')))
    }

    fn run(line: &str) -> RunArgs {
        match parse(line).unwrap().command {
            Command::Run(run) => run,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_what_the_bench_scripts_pass() {
        // scripts/bench.sh, scenario 2 (after `run()` added its own flags).
        let args = run("run --protocol socketio --servers 127.0.0.1:1,127.0.0.1:2 \
             --server-pids 10,11 --label socketio --room-prefix s2 --out r.json \
             --clients 1000 --rooms 1 --publishers 2 --workers 2 --ramp 20,1.25,21 \
             --duration 5 --drain 3");
        assert_eq!(args.plan.servers.len(), 2);
        assert_eq!(args.plan.protocol, Protocol::SocketIo);
        assert_eq!(args.server_pids, [10, 11]);
        let ramp = args.ramp.unwrap();
        assert_eq!(ramp.rates().count(), 21);
        assert_eq!(ramp.rates().nth(1), Some(25.0));
        // bench/smoke.sh.
        let args = run("run --servers 127.0.0.1:1,127.0.0.1:2 --server-pids 1,2 \
             --clients 200 --rooms 20 --rooms-per-client 2 --publishers 4 --workers 2 \
             --rates 300,600 --duration 1.5 --drain 3 --hold 0.2 --out s.json");
        assert_eq!(args.rates, [300.0, 600.0]);
        assert_eq!(args.plan.rooms_per_client, 2);
        assert_eq!(args.hold, 0.2);
        // scenario 3 (idle), scenario 4 and the chart.
        let args = run("run --servers 127.0.0.1:1 --clients 20000 --rooms 1000 \
             --publishers 0 --workers 2 --hold 5 --connect-concurrency 100");
        assert_eq!(args.plan.connect_concurrency, 100);
        assert!(args.rates.is_empty() && args.ramp.is_none());
        assert!(matches!(
            parse(
                "publish-path --redis-url redis://127.0.0.1:1 --duration 5 \
                   --concurrency 1024 --out p.json"
            )
            .unwrap()
            .command,
            Command::PublishPath(PublishPathArgs {
                concurrency: 1024,
                ..
            })
        ));
        assert!(matches!(
            parse("chart --out c.svg a.json b.json").unwrap().command,
            Command::Chart(ChartArgs { ref results, .. }) if results.len() == 2
        ));
        // The durable scenarios.
        assert!(matches!(
            parse("publish-path --redis-url redis://127.0.0.1:1 --durable")
                .unwrap()
                .command,
            Command::PublishPath(PublishPathArgs { durable: true, .. })
        ));
        assert!(matches!(
            parse(
                "catch-up --publish-server 127.0.0.1:1 --subscribe-server 127.0.0.1:2 \
                   --proxy-pid 7 --redis-url redis://127.0.0.1:3 --clients 1000 --events 1000"
            )
            .unwrap()
            .command,
            Command::CatchUp(CatchUpArgs { proxy_pid: 7, .. })
        ));
        assert!(matches!(
            parse("storm --servers 127.0.0.1:1,127.0.0.1:2 --clients 5000 --missed 100")
                .unwrap()
                .command,
            Command::Storm(StormArgs {
                clients: 5000,
                missed: 100,
                ..
            })
        ));
        // Presence.
        assert!(matches!(
            parse("presence --servers 127.0.0.1:1,127.0.0.1:2 --room pres:p1 --members 500 --reads 50")
                .unwrap()
                .command,
            Command::Presence(PresenceArgs {
                members: 500,
                reads: 50,
                ..
            })
        ));
        assert!(matches!(
            parse("proxy --to 127.0.0.1:6379").unwrap().command,
            Command::Proxy(ProxyArgs { .. })
        ));
        // A worker gets run's flags and its index.
        assert!(matches!(
            parse("worker --servers 127.0.0.1:1 --rates 5 --worker-index 1")
                .unwrap()
                .command,
            Command::Worker(WorkerArgs {
                worker_index: 1,
                ..
            })
        ));
    }

    #[test]
    fn a_misspelt_flag_fails_and_names_the_right_one() {
        let err = parse("run --servers 127.0.0.1:1 --client 1000").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownArgument);
        let message = err.to_string();
        assert!(message.contains("--client"), "{message}");
        assert!(message.contains("--clients"), "no suggestion: {message}");
    }

    #[test]
    fn a_repeated_flag_fails() {
        for line in [
            "run --servers 127.0.0.1:1 --clients 10 --clients 20",
            "run --servers 127.0.0.1:1 --servers 127.0.0.1:2",
            "run --servers 127.0.0.1:1 --rates 1 --rates 2",
        ] {
            let err = parse(line).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{line}: {err}");
            assert!(err.to_string().contains("cannot be used multiple times"));
        }
    }

    #[test]
    fn bad_values_fail() {
        for line in [
            "run --servers 127.0.0.1:1 --ramp 20,1.25",
            "run --servers 127.0.0.1:1 --protocol socket.io",
            "run --servers localhost --rates 1",
            "run --servers 127.0.0.1:1 --rates 1 --ramp 1,2,3",
            "run --clients 10",
            "publish-path --duration 5",
            "chart --out c.svg",
            "catch-up --publish-server 127.0.0.1:1 --subscribe-server 127.0.0.1:2",
            "storm --clients 10",
            "presence --members 10",
            "walk --servers 127.0.0.1:1",
        ] {
            assert!(parse(line).is_err(), "{line} parsed");
        }
    }
}
