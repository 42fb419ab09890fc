//! The coordinator: starts the worker processes, runs the phases in lockstep,
//! samples the servers, merges the workers' reports and writes the results.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    args::RunArgs,
    client::{http_get, now_ns},
    memory::{sample, ProcSample, RssSampler},
    plan::Plan,
    proto::Protocol,
    report::{self, Idle, IdleNode, NodeUsage, PhaseResult, RunResult},
    stats::{self, Counts, Latency, PhaseCmd, Published, Ready, Totals, WorkerReport},
};

/// Sustained means the last delivery within this long of the last publish.
const MAX_DRAIN_LAG_MS: f64 = 500.0;
/// Sustained means a p99 under this.
const MAX_P99_US: u64 = 250_000;

/// Clock ticks a second (`getconf CLK_TCK`; 100 on every Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// `connections.slowConsumerCloses` from Switchboard servers' `GET /stats`, added
/// (a server that does not answer counts 0).
pub fn slow_consumer_closes(servers: &[SocketAddr]) -> u64 {
    let closes = |server: SocketAddr| {
        let (_, body) = http_get(server, "/stats").ok()?;
        let stats: serde_json::Value = serde_json::from_str(&body).ok()?;
        stats.pointer("/connections/slowConsumerCloses")?.as_u64()
    };
    servers.iter().filter_map(|&server| closes(server)).sum()
}

/// The worker processes and the lines they print.
struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    lines: mpsc::Receiver<(usize, String)>,
}

impl Workers {
    fn spawn(count: usize, argv: &[String]) -> Result<Workers, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let (tx, lines) = mpsc::channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for index in 0..count {
            let mut child = Command::new(&exe)
                .arg("worker")
                .args(argv)
                .args(["--worker-index", &index.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("spawn worker: {e}"))?;
            stdins.push(child.stdin.take().expect("piped"));
            let stdout = child.stdout.take().expect("piped");
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send((index, line)).is_err() {
                        break;
                    }
                }
            });
            children.push(child);
        }
        Ok(Workers {
            children,
            stdins,
            lines,
        })
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        for stdin in &mut self.stdins {
            writeln!(stdin, "{line}").map_err(|e| format!("worker stdin: {e}"))?;
        }
        Ok(())
    }

    /// One `tag` line from every worker, parsed, within `timeout`.
    fn collect<T: DeserializeOwned>(&self, tag: &str, timeout: Duration) -> Result<Vec<T>, String> {
        let deadline = Instant::now() + timeout;
        let mut got: Vec<Option<T>> = (0..self.children.len()).map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (index, line) = self
                .lines
                .recv_timeout(left)
                .map_err(|_| format!("workers did not all answer {tag} in time"))?;
            match line.strip_prefix(tag) {
                Some(body) => {
                    let value =
                        serde_json::from_str(body.trim()).map_err(|e| format!("{tag}: {e}"))?;
                    got[index] = Some(value);
                }
                None => eprintln!("worker {index}: {line}"),
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    fn finish(mut self) {
        let _ = self.send("QUIT");
        drop(std::mem::take(&mut self.stdins));
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the `run` subcommand; `argv` are its raw flags, for the workers.
pub fn run(args: &RunArgs, argv: &[String]) -> Result<(), String> {
    let plan = Plan::from_args(&args.plan)?;
    let pids = &args.server_pids;
    let (duration, drain) = (args.duration, args.drain);
    let before: Vec<Option<ProcSample>> = pids.iter().map(|p| sample(*p)).collect();
    let started = Instant::now();
    let mut workers = Workers::spawn(plan.workers, argv)?;
    let ready: Vec<Ready> = workers.collect("@READY", Duration::from_secs(240))?;
    let connect = report::merge_ready(&ready, started.elapsed().as_secs_f64());
    eprintln!(
        "loadgen: {} subscribed, {} publishers, {} failed in {:.1} s",
        connect.subscribed, connect.publishers, connect.failed, connect.seconds
    );
    thread::sleep(Duration::from_secs_f64(args.hold));
    let idle = idle_usage(&plan, pids, &before);
    let mut phases = Vec::new();
    let schedule: Box<dyn Iterator<Item = f64>> = match args.ramp {
        Some(ramp) => Box::new(ramp.rates()),
        None => Box::new(args.rates.iter().copied()),
    };
    let rss = args
        .rss_every
        .map(|every| RssSampler::start(pids.clone(), Duration::from_secs_f64(every)));
    for (id, rate) in schedule.enumerate() {
        let result = run_phase(
            &mut workers,
            &plan,
            pids,
            id as u32 + 1,
            rate,
            duration,
            drain,
        )?;
        report::print_phase(&result, phases.is_empty());
        let stop = args.ramp.is_some() && !result.sustained;
        phases.push(result);
        if stop {
            break;
        }
    }
    workers.finish();
    let mut result = RunResult::new(args, argv, &plan, connect, idle, phases);
    result.rss = rss.map(|rss| rss.finish(pids, Duration::from_secs_f64(args.rss_warmup)));
    if let Some(rss) = &result.rss {
        report::print_rss(rss);
    }
    if let Some(idle) = &result.idle {
        report::print_idle(idle);
    }
    if let Some(path) = &args.out {
        write_json(path, &result)?;
    }
    Ok(())
}

fn idle_usage(plan: &Plan, pids: &[u32], before: &[Option<ProcSample>]) -> Option<Idle> {
    if pids.is_empty() {
        return None;
    }
    let connections = plan.connections_per_server();
    let nodes: Vec<IdleNode> = pids
        .iter()
        .zip(before)
        .enumerate()
        .map(|(i, (pid, before))| {
            let after = sample(*pid);
            let rss_before = before.map_or(0, |s| s.rss_kib);
            let rss_after = after.map_or(0, |s| s.rss_kib);
            let conns = connections.get(i).copied().unwrap_or(0);
            IdleNode {
                pid: *pid,
                connections: conns,
                rss_before_kib: rss_before,
                rss_after_kib: rss_after,
                per_connection_bytes: (rss_after.saturating_sub(rss_before) * 1024) as f64
                    / conns.max(1) as f64,
            }
        })
        .collect();
    Some(Idle::new(nodes))
}

fn run_phase(
    workers: &mut Workers,
    plan: &Plan,
    pids: &[u32],
    id: u32,
    rate: f64,
    duration: f64,
    drain: f64,
) -> Result<PhaseResult, String> {
    let slow_before: u64 = slow_closes(plan);
    let cpu_before: Vec<Option<ProcSample>> = pids.iter().map(|p| sample(*p)).collect();
    let wall = Instant::now();
    let cmd = PhaseCmd {
        id,
        rate,
        start_ns: now_ns() + 300_000_000,
        duration_ns: (duration * 1e9) as u64,
        drain_ns: (drain * 1e9) as u64,
    };
    workers.send(&format!(
        "PHASE {}",
        serde_json::to_string(&cmd).expect("serializes")
    ))?;
    let published: Vec<Published> =
        workers.collect("@PUBLISHED", Duration::from_secs_f64(duration + 90.0))?;
    let mut counts: Counts = published
        .iter()
        .flat_map(|p| p.counts.iter().copied())
        .collect();
    counts.sort_unstable();
    let last_sched_ns = published.iter().map(|p| p.last_sched_ns).max().unwrap_or(0);
    let totals = Totals { counts };
    workers.send(&format!(
        "TOTALS {}",
        serde_json::to_string(&totals).expect("serializes")
    ))?;
    let reports: Vec<WorkerReport> =
        workers.collect("@REPORT", Duration::from_secs_f64(drain + 60.0))?;
    let elapsed = wall.elapsed().as_secs_f64();
    let servers = pids
        .iter()
        .zip(&cpu_before)
        .map(|(pid, before)| {
            let after = sample(*pid);
            let ticks = match (before, after) {
                (Some(b), Some(a)) => a.cpu_ticks.saturating_sub(b.cpu_ticks),
                _ => 0,
            };
            NodeUsage {
                pid: *pid,
                cpu_percent: ticks as f64 / TICKS_PER_SECOND / elapsed * 100.0,
                rss_kib: after.map_or(0, |s| s.rss_kib),
            }
        })
        .collect();
    let slow = slow_closes(plan).saturating_sub(slow_before);
    Ok(merge_phase(
        plan,
        &cmd,
        duration,
        &totals,
        last_sched_ns,
        &reports,
        servers,
        slow,
    ))
}

fn slow_closes(plan: &Plan) -> u64 {
    if plan.protocol != Protocol::Switchboard {
        return 0;
    }
    slow_consumer_closes(&plan.servers)
}

#[allow(clippy::too_many_arguments)]
fn merge_phase(
    plan: &Plan,
    cmd: &PhaseCmd,
    duration: f64,
    totals: &Totals,
    last_sched_ns: u64,
    reports: &[WorkerReport],
    servers: Vec<NodeUsage>,
    slow_consumer_closes: u64,
) -> PhaseResult {
    let subscribers = plan.subscribers_per_room();
    let published: u64 = totals.counts.iter().map(|c| c.2).sum();
    let expected: u64 = totals
        .counts
        .iter()
        .map(|&(room, _, count)| count * subscribers.get(room as usize).copied().unwrap_or(0))
        .sum();
    let mut latency: Histogram<u64> = stats::histogram();
    let mut cross: Histogram<u64> = stats::histogram();
    let mut send_lag: Histogram<u64> = stats::histogram();
    for report in reports {
        stats::add_pairs(&mut latency, &report.latency);
        stats::add_pairs(&mut cross, &report.cross_latency);
        stats::add_pairs(&mut send_lag, &report.send_lag);
    }
    let sum = |f: fn(&WorkerReport) -> u64| reports.iter().map(f).sum::<u64>();
    let max = |f: fn(&WorkerReport) -> u64| reports.iter().map(f).max().unwrap_or(0);
    let last_delivery = max(|r| r.last_delivery_ns);
    let drain_lag_ms = if last_delivery == 0 {
        f64::NAN
    } else {
        (last_delivery as f64 - last_sched_ns as f64) / 1e6
    };
    let mut result = PhaseResult {
        phase: cmd.id,
        offered_publishes_per_s: cmd.rate,
        offered_deliveries_per_s: expected as f64 / duration,
        duration_s: duration,
        published,
        acked: sum(|r| r.acked),
        publish_errors: sum(|r| r.publish_errors),
        expected_deliveries: expected,
        delivered: sum(|r| r.unique),
        deliveries_per_s: sum(|r| r.unique) as f64 / duration,
        latency_us: Latency::of(&latency),
        cross_server_latency_us: Latency::of(&cross),
        send_lag_us: Latency::of(&send_lag),
        lost: sum(|r| r.lost),
        duplicated: sum(|r| r.duplicated),
        reordered: sum(|r| r.reordered),
        clients_with_loss: sum(|r| r.clients_with_loss),
        max_lost_per_client: max(|r| r.max_lost_per_client),
        max_duplicated_per_client: max(|r| r.max_duplicated_per_client),
        max_reordered_per_client: max(|r| r.max_reordered_per_client),
        stale: sum(|r| r.stale),
        disconnected: sum(|r| r.disconnected),
        drain_lag_ms,
        slow_consumer_closes,
        servers,
        sustained: false,
        not_sustained_because: Vec::new(),
    };
    result.judge(MAX_DRAIN_LAG_MS, MAX_P99_US);
    result
}

/// Writes `value` as compact JSON (one line) to `path`: results are committed with
/// the page made from them, and a line per file keeps the diffs and the repo small.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), String> {
    let json = serde_json::to_string(value).map_err(|e| e.to_string())?;
    std::fs::write(path, json + "\n").map_err(|e| format!("write {}: {e}", path.display()))
}
