//! Capped exponential backoff.

use std::time::Duration;

/// Capped exponential backoff with optional jitter.
///
/// Policy: the n-th delay (counting from 0) is `min(max, base * 2^n)`. With jitter on,
/// the delay is drawn uniformly from `[d/2, d]` ("equal jitter"), so servers that lost
/// Redis together do not reconnect in lockstep, yet no delay is ever shorter than half
/// the nominal one. The link actors' reconnects use it. The publish retries (100,
/// 200, 400 ms in the seed) are not jittered, so their timing is the documented one:
/// the publisher doubles `publish_retry_base` itself.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: bool,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base`, never above `max`, with jitter.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            jitter: true,
            attempt: 0,
        }
    }

    /// The same policy without jitter: exactly `base`, `2 * base`, ..., so the tests
    /// can check the delays. (Every backoff in use is jittered.)
    #[cfg(test)]
    pub fn without_jitter(mut self) -> Backoff {
        self.jitter = false;
        self
    }

    /// The delay before the next attempt; advances the attempt count.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        if self.jitter {
            Self::jittered(nominal, fastrand::f64())
        } else {
            nominal
        }
    }

    /// How many delays were handed out since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn nominal(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Equal jitter: `d/2 + d/2 * fraction`, with `fraction` in `[0, 1]`.
    fn jittered(nominal: Duration, fraction: f64) -> Duration {
        let half = nominal / 2;
        half + half.mul_f64(fraction.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_base_to_the_cap() {
        let mut b = Backoff::new(100 * MS, 1000 * MS).without_jitter();
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000].map(|n| n * MS));
        assert_eq!(b.attempts(), 6);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(100 * MS, 1000 * MS).without_jitter();
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.next_delay(), 100 * MS);
    }

    #[test]
    fn jitter_stays_between_half_and_whole() {
        assert_eq!(Backoff::jittered(400 * MS, 0.0), 200 * MS);
        assert_eq!(Backoff::jittered(400 * MS, 1.0), 400 * MS);
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        for n in 0..50 {
            let d = b.next_delay();
            let nominal = (100 * MS * 2u32.pow(n.min(4))).min(1000 * MS);
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
        }
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30)).without_jitter();
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }
}
