//! `switchboard-loadgen`: measures Switchboard (and a Socket.IO peer) under load.
//!
//! # Layout
//!
//! - [`coordinator`]: `run` forks `--workers` worker processes (each under the
//!   20,000 open-files limit), steps them through phases in lockstep over
//!   stdin/stdout lines, samples the servers' RSS and CPU from `/proc`, merges the
//!   workers' histograms and loss counts, prints a table and writes JSON.
//! - [`worker`]: one process's subscribers, each bound to its own 127.0.0.x source
//!   address, recording publish-to-receive latency in an HDR histogram and every
//!   (room, publisher) sequence in a bitset (lost, duplicated, reordered).
//! - [`publisher`]: publishers on a fixed timetable, measured from the scheduled
//!   time so that coordinated omission cannot flatter the numbers; how late each
//!   send left is recorded too (the loadgen's own share of every latency).
//! - [`timer`]: sleeping to the microsecond on a timerfd (tokio's timer rounds up to
//!   the millisecond, which showed up as latency).
//! - [`proto`]: Switchboard frames and Socket.IO v5 / Engine.IO v4 framing.
//! - [`client`]: connecting one client. WebSockets come from `tokio-tungstenite`: a
//!   hand-written client would be smaller, but the handshake, masking and
//!   fragmentation are where a measuring tool must not have bugs of its own.
//! - [`publish_path`]: scenario 4, in-process `PubSub::publish_to` into Redis
//!   (`--durable`: into a durable room).
//! - [`catchup`], [`storm`]: durable rooms (`bench.sh`'s D3 and D4): the catch-up
//!   after a server's Redis link was cut through a [`proxy`], and clients
//!   reconnecting all at once with `since`; [`durable`] has what they share.
//! - [`presence`]: a presence room (`bench.sh`'s P1): `--members` sessions join,
//!   then reads of the member list and count are timed, one at a time.
//! - [`memory`]: a server's RSS and CPU from `/proc`, and the soak's RSS trace
//!   (`--rss-every`) with its growth after the warm-up fitted by least squares.
//! - [`chart`]: the SVG charts (latency against offered rate, RSS over time),
//!   written by hand (no font library needed).
//! - [`plan`], [`stats`], [`report`], [`args`]: who connects where, the measurement
//!   types, the result JSON and table, the flags.
//!
//! # Usage
//!
//! ```text
//! switchboard-loadgen run --servers 127.0.0.1:8081,127.0.0.1:8082 --server-pids P1,P2 \
//!     --clients 1000 --rooms 100 --publishers 10 --rates 1000,10000 --duration 10 \
//!     [--ramp start,factor,steps] [--protocol socketio] [--workers 2] [--out r.json]
//! switchboard-loadgen help run    # every flag, with its default
//! switchboard-loadgen publish-path --redis-url redis://127.0.0.1:6379 --duration 5
//! switchboard-loadgen chart --out chart.svg a.json b.json
//! switchboard-loadgen chart --rss --out rss.svg soak.json   # after run --rss-every 60
//! switchboard-loadgen proxy --to 127.0.0.1:6379     # then a server's REDIS_URL at it
//! switchboard-loadgen catch-up --publish-server A --subscribe-server B --proxy-pid P \
//!     --redis-url redis://127.0.0.1:6379 --clients 1000 --events 1000
//! switchboard-loadgen storm --servers A,B --clients 5000 --rooms 5 --missed 100
//! switchboard-loadgen presence --servers A,B --members 5000 --room pres:p1 --reads 50
//! ```

mod args;
mod catchup;
mod chart;
mod client;
mod coordinator;
mod durable;
mod memory;
mod plan;
mod presence;
mod proto;
mod proxy;
mod publish_path;
mod publisher;
mod report;
mod stats;
mod storm;
mod timer;
mod worker;

use std::process::ExitCode;

use args::{Cli, Command};
use clap::Parser;

/// mimalloc: scenario 4 runs the broker and the Redis publisher in this process, an
/// in-process service's publish path, and there glibc's malloc (cross-thread frees
/// between the broker's and the publisher's threads) took a fifth of the profile:
/// 343k publishes/s with it, 643k with mimalloc (docs/benchmarks.md). The server
/// binary keeps the system allocator: mimalloc cost it 21.1 instead of 13.5 KiB per
/// idle connection.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The flags after the subcommand, as given: recorded in results (and given to
/// `run`'s workers).
fn raw_flags() -> Vec<String> {
    std::env::args().skip(2).collect()
}

fn main() -> ExitCode {
    // Exits with clap's message (and status 2) on a bad command line.
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(args) => coordinator::run(&args, &raw_flags()),
        Command::Worker(args) => plan::Plan::from_args(&args.run.plan)
            .and_then(|plan| worker::run(plan, args.worker_index)),
        Command::PublishPath(args) => publish_path::run(&args),
        Command::Chart(args) => chart::run(&args),
        Command::Proxy(args) => proxy::run(&args),
        Command::CatchUp(args) => catchup::run(&args, &raw_flags()),
        Command::Storm(args) => storm::run(&args, &raw_flags()),
        Command::Presence(args) => presence::run(&args, &raw_flags()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
