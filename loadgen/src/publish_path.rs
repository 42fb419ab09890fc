//! Scenario 4, the publish path: events a second from an in-process service through
//! [`PubSub::publish_to`] (the broker, the Redis publisher) into Redis, with many
//! publishes in flight so the publisher can pipeline. With `--durable` the room is
//! durable, so each publish is the numbering script instead of a `PUBLISH`.

use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use serde::Serialize;
use switchboard_actors::{BackplaneConfig, BrokerConfig, Pattern, PubSub, RedisConfig};

use crate::{args::PublishPathArgs, coordinator::write_json};

/// What the publish-path run measured.
#[derive(Debug, Serialize)]
pub struct PublishPathResult {
    /// Whether the room was durable (numbered and kept by the publish script).
    pub durable: bool,
    /// Publishes in flight at once.
    pub concurrency: usize,
    /// Measured seconds (after a warm-up).
    pub seconds: f64,
    /// Publishes Redis accepted in that time.
    pub published: u64,
    /// Publishes that failed.
    pub failed: u64,
    /// `published / seconds`.
    pub events_per_s: f64,
}

/// Runs the `publish-path` subcommand.
pub fn run(args: &PublishPathArgs) -> Result<(), String> {
    let url = args.redis_url.as_str();
    let (seconds, warmup, concurrency) = (args.duration, args.warmup, args.concurrency);
    let (room, durable) = (args.room.clone(), args.durable);
    let client = redis::Client::open(url).map_err(|e| format!("redis url: {e}"))?;
    let result = actix_rt::System::new().block_on(async move {
        let mut config = BrokerConfig::new(
            format!("loadgen_{}", std::process::id()),
            BackplaneConfig::Redis(Box::new(RedisConfig::new(client))),
        );
        if durable {
            config.durable.rooms = vec![Pattern::parse("**").expect("`**` is a pattern")];
        }
        let pubsub = PubSub::start(config);
        wait_ready(&pubsub).await?;
        publish_for(&pubsub, &room, concurrency, warmup).await;
        let started = Instant::now();
        let (published, failed) = publish_for(&pubsub, &room, concurrency, seconds).await;
        let elapsed = started.elapsed().as_secs_f64();
        let _ = pubsub.shutdown().await;
        Ok::<_, String>(PublishPathResult {
            durable,
            concurrency,
            seconds: elapsed,
            published,
            failed,
            events_per_s: published as f64 / elapsed,
        })
    })?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "publish path{}: {:.0} events/s ({} in {:.2} s, {} failed, {} in flight)",
            if durable { " (durable room)" } else { "" },
            result.events_per_s,
            result.published,
            result.seconds,
            result.failed,
            concurrency
        );
    }
    if let Some(path) = &args.out {
        write_json(path, &result)?;
    }
    Ok(())
}

async fn wait_ready(pubsub: &PubSub) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(health) = pubsub.health_status().await {
            if health.publisher_ready {
                return Ok(());
            }
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the Redis publisher did not become ready within 10 s".into())
}

/// Publishes `"hello"` events for `seconds` with `concurrency` in flight:
/// (accepted, failed).
///
/// Unconstrained by tokio's cooperative budget: once this one task has used its
/// budget, every answer it polls reports itself pending and wakes itself again, so
/// `buffer_unordered` re-polled its whole set to get a few answers through. That is
/// the load generator's cost, not the publish path's: with the budget, 8,192 in
/// flight ran at 287k events/s and 65,536 at 35k; without it, 854k and 728k.
async fn publish_for(pubsub: &PubSub, room: &str, concurrency: usize, seconds: f64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let outcomes = stream::iter(0u64..)
        .take_while(|_| std::future::ready(Instant::now() < deadline))
        .map(|_| pubsub.publish_to(room, "bench", &"hello"))
        .buffer_unordered(concurrency);
    let tally = outcomes.fold((0, 0), |(ok, failed), outcome| async move {
        match outcome {
            Ok(_published) => (ok + 1, failed),
            Err(_) => (ok, failed + 1),
        }
    });
    tokio::task::unconstrained(tally).await
}
