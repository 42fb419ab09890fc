//! Server processes seen from `/proc`: one sample of RSS and CPU time ([`sample`]),
//! and a soak's RSS trace ([`RssSampler`]), sampled on a thread of its own while the
//! phases run, with the growth after a warm-up fitted by least squares.

use std::{
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// User plus system CPU time, clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `pid`'s RSS and CPU time; `None` once it has exited.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); index 0 here is field 3.
    let cpu_ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ProcSample { rss_kib, cpu_ticks })
}

/// One RSS reading of a soak.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RssSample {
    /// Seconds since the first phase started.
    pub t_s: f64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
}

/// One server's RSS over a soak.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RssSeries {
    /// The server's process id.
    pub pid: u32,
    /// Every reading, in order.
    pub samples: Vec<RssSample>,
    /// Least-squares slope of RSS over the samples after the warm-up, KiB per hour;
    /// `None` with fewer than two such samples.
    pub growth_kib_per_hour: Option<f64>,
}

/// The servers' RSS over a run (`--rss-every`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RssTrace {
    /// Seconds between readings.
    pub every_s: f64,
    /// Readings before this many seconds are left out of the growth fit.
    pub warmup_s: f64,
    /// Per server, in `--server-pids` order.
    pub servers: Vec<RssSeries>,
}

/// Samples the servers' RSS every `every` until [`RssSampler::finish`].
pub struct RssSampler {
    every: Duration,
    stop: mpsc::Sender<()>,
    thread: JoinHandle<Vec<Vec<RssSample>>>,
}

impl RssSampler {
    /// Takes the first reading now, then one every `every`.
    pub fn start(pids: Vec<u32>, every: Duration) -> RssSampler {
        let (stop, stopped) = mpsc::channel();
        let thread = thread::spawn(move || {
            let started = Instant::now();
            let mut series = vec![Vec::new(); pids.len()];
            let mut next = started;
            loop {
                let t_s = started.elapsed().as_secs_f64();
                for (pid, samples) in pids.iter().zip(&mut series) {
                    if let Some(s) = sample(*pid) {
                        samples.push(RssSample {
                            t_s,
                            rss_kib: s.rss_kib,
                        });
                    }
                }
                // On the schedule, not `every` after the reading: no drift over an hour.
                next += every;
                let wait = next.saturating_duration_since(Instant::now());
                if stopped.recv_timeout(wait) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return series;
                }
            }
        });
        RssSampler {
            every,
            stop,
            thread,
        }
    }

    /// Stops sampling and fits each server's growth after `warmup`.
    pub fn finish(self, pids: &[u32], warmup: Duration) -> RssTrace {
        let _ = self.stop.send(());
        let series = self.thread.join().unwrap_or_default();
        let warmup_s = warmup.as_secs_f64();
        RssTrace {
            every_s: self.every.as_secs_f64(),
            warmup_s,
            servers: pids
                .iter()
                .zip(series)
                .map(|(pid, samples)| RssSeries {
                    pid: *pid,
                    growth_kib_per_hour: growth_per_hour(&samples, warmup_s),
                    samples,
                })
                .collect(),
        }
    }
}

/// The least-squares slope of RSS against time over the samples at or after
/// `warmup_s`, in KiB per hour: a line through every reading, so one noisy reading
/// at either end does not decide it as a first-to-last difference would.
pub fn growth_per_hour(samples: &[RssSample], warmup_s: f64) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t_s >= warmup_s)
        .map(|s| (s.t_s / 3600.0, s.rss_kib as f64))
        .collect();
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_r = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_r)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    (variance > 0.0).then(|| covariance / variance)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(points: &[(f64, u64)]) -> Vec<RssSample> {
        points
            .iter()
            .map(|&(t_s, rss_kib)| RssSample { t_s, rss_kib })
            .collect()
    }

    #[test]
    fn growth_is_the_slope_after_the_warmup() {
        // Fast growth in the warm-up, then 60 KiB a minute: 3,600 KiB an hour.
        let trace = samples(&[
            (0.0, 1000),
            (60.0, 9000),
            (120.0, 10_000),
            (180.0, 10_060),
            (240.0, 10_120),
        ]);
        let growth = growth_per_hour(&trace, 120.0).unwrap();
        assert!((growth - 3600.0).abs() < 1e-6, "{growth}");
        // A flat trace with one noisy reading in the middle does not grow.
        let flat = samples(&[
            (0.0, 500),
            (60.0, 500),
            (120.0, 520),
            (180.0, 500),
            (240.0, 500),
        ]);
        assert!(growth_per_hour(&flat, 0.0).unwrap().abs() < 1e-6);
    }

    #[test]
    fn growth_needs_two_samples_after_the_warmup() {
        let trace = samples(&[(0.0, 1000), (60.0, 2000), (120.0, 3000)]);
        assert_eq!(growth_per_hour(&trace, 100.0), None);
        assert_eq!(growth_per_hour(&[], 0.0), None);
    }

    #[test]
    fn the_sampler_reads_this_process_on_a_schedule() {
        let me = std::process::id();
        let sampler = RssSampler::start(vec![me], Duration::from_millis(20));
        thread::sleep(Duration::from_millis(110));
        let trace = sampler.finish(&[me], Duration::ZERO);
        let samples = &trace.servers[0].samples;
        assert!(samples.len() >= 3, "{samples:?}");
        assert!(samples.iter().all(|s| s.rss_kib > 0));
        assert!(samples.windows(2).all(|w| w[0].t_s < w[1].t_s));
    }
}
