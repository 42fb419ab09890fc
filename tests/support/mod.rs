//! Helpers shared by the black-box integration tests.
//!
//! # Layout
//!
//! - [`redis`]: [`RedisServer`], a real `redis-server` on a free port, killed on drop.
//! - [`cluster`]: [`RedisCluster`], six of them made a Redis Cluster (three masters
//!   with a replica each).
//! - [`server`]: [`Server`] and [`ServerBuilder`], the `switchboard` binary run as a child
//!   process configured only through its environment, with HTTP helpers.
//! - [`ws`]: [`WsClient`], a well-behaved WebSocket client over `awc` that answers pings
//!   in the background, so a test that is busy elsewhere never loses its connections.
//! - [`raw_ws`]: [`RawWs`], a hand-rolled WebSocket client over a bare TCP stream, for the
//!   misbehaving clients (one that stops reading, one that never answers pings), and
//!   for frames no library would send (unmasked, reserved bits, bad opcodes).
//! - [`proxy`]: [`Proxy`], a TCP proxy in front of Redis that can stall or cut links.
//! - [`presence`]: a presence room (PROTOCOL.md §9) as a client reads it:
//!   [`presence::Member`], the `presence` and `presence_count` requests, the refusals.
//! - [`watcher`]: [`watcher::Watcher`], a subscriber that logs the `join` and `leave`
//!   frames of presence rooms, and the helpers that make members come and go under it.
//!
//! Conditions are awaited with [`wait_until`] / [`wait_for`] and a deadline, never with a
//! fixed sleep.

// Every test binary compiles this module but uses only part of it.
#![allow(dead_code, unused_imports)]

pub mod cluster;
mod output;
pub mod presence;
pub mod proxy;
pub mod raw_ws;
pub mod redis;
pub mod server;
pub mod watcher;
pub mod ws;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use self::cluster::RedisCluster;
pub use self::proxy::Proxy;
pub use self::raw_ws::{RawFrame, RawWs};
pub use self::redis::RedisServer;
pub use self::server::{Server, ServerBuilder};
pub use self::ws::WsClient;

/// How long a test waits for a reply that should come at once (a `pong`, `subscribed`).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Polls `condition` until it holds, panicking with `what` once `timeout` has passed.
///
/// Polling every 20 ms keeps the suite fast without spinning; the closure is re-run from
/// scratch each time, so it should re-read whatever it checks (an HTTP call, `PUBSUB`).
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
}

/// Like [`wait_until`], but returns the value the probe produced once it produced one.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A channel prefix no other test uses, so tests that shared a Redis could not meet.
pub fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("sbt.{test}.{}.{n}:", std::process::id())
}

/// A fresh `ref` value, so each request's reply can be told apart from other frames.
pub fn next_ref() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("r{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Reads an unsigned number at `pointer` (JSON pointer syntax), with a clear panic.
pub fn u64_at(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("expected an unsigned number at {pointer} in {value}"))
}

/// The current time in ms since the Unix epoch, as the envelopes' `timestamp` is.
pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("system clock is after 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit in u64")
}

/// The `p`-th percentile (0 to 100) of `samples`, nearest rank; zero when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
