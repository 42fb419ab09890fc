//! Giving freed memory back to the operating system (issue 8, item 16).
//!
//! Under a steady load a server's live heap stays flat (heaptrack's record in
//! `bench/results/heaptrack-2026-11-26/heap.json`), yet its resident size creeps up:
//! glibc's allocator keeps pages that were freed, in each of its per-thread arenas.
//! `malloc_trim(0)` hands the free pages of every arena back, which lowers the
//! resident size; it does not stop the slow growth of the HTTP worker threads'
//! arenas (the soaks in `bench/results/` and `bench/notes.md` say by how much). It
//! walks the arenas under their locks, which costs a fraction of a millisecond at
//! this heap size, so it runs once every [`TRIM_INTERVAL`] on the main thread.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

/// How often freed memory is handed back.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(60);

/// Whether the trim runs already: one per process, however many servers it starts.
static TRIMMING: AtomicBool = AtomicBool::new(false);

/// Starts the periodic trim on the current actix system, once per process (a no-op
/// where the allocator is not glibc's).
pub fn start_trimming() {
    if TRIMMING.swap(true, Ordering::Relaxed) {
        return;
    }
    actix::spawn(async {
        let mut interval = tokio::time::interval(TRIM_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            trim();
        }
    });
}

/// Hands the free pages of every malloc arena back to the operating system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and is safe to call at any time from
    // any thread; 0 asks it to keep no padding at the top of the heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
