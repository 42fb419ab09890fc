//! The per-connection publish budget (`LIMIT_PUBLISH_RATE`, `LIMIT_PUBLISH_BURST`).

use std::time::Instant;

/// A token bucket: `rate` publishes a second on average, up to `burst` at once.
/// A rate of 0 turns the limit off (trusted publishers, benchmarks).
#[derive(Debug, Clone)]
pub struct PublishBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    refused_in_a_row: u32,
}

/// What happened to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Within budget.
    Allowed,
    /// Over budget: refuse it (`rate_limited`).
    Refused,
    /// Over budget for the [`PublishBudget::MAX_REFUSED_IN_A_ROW`]th time in a row:
    /// close the connection (1008).
    Exhausted,
}

impl PublishBudget {
    /// A client refused this many times in a row is closed.
    pub const MAX_REFUSED_IN_A_ROW: u32 = 100;

    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> PublishBudget {
        let burst = f64::from(burst.max(1));
        PublishBudget {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            refilled: Instant::now(),
            refused_in_a_row: 0,
        }
    }

    /// Spends one publish at time `now`.
    pub fn spend(&mut self, now: Instant) -> Spend {
        if self.rate == 0.0 {
            return Spend::Allowed;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            return Spend::Allowed;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row >= Self::MAX_REFUSED_IN_A_ROW {
            Spend::Exhausted
        } else {
            Spend::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let mut budget = PublishBudget::new(50, 100);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(budget.spend(t0), Spend::Allowed);
        }
        assert_eq!(budget.spend(t0), Spend::Refused);
        // 100 ms later, 5 more.
        let t1 = t0 + Duration::from_millis(100);
        for _ in 0..5 {
            assert_eq!(budget.spend(t1), Spend::Allowed);
        }
        assert_eq!(budget.spend(t1), Spend::Refused);
    }

    #[test]
    fn a_hundred_refusals_in_a_row_exhaust_it() {
        let mut budget = PublishBudget::new(1, 1);
        let t0 = Instant::now();
        assert_eq!(budget.spend(t0), Spend::Allowed);
        for _ in 0..99 {
            assert_eq!(budget.spend(t0), Spend::Refused);
        }
        assert_eq!(budget.spend(t0), Spend::Exhausted);
    }

    #[test]
    fn an_allowed_publish_resets_the_refusal_count() {
        let mut budget = PublishBudget::new(10, 1);
        let t0 = Instant::now();
        budget.spend(t0);
        for _ in 0..50 {
            assert_eq!(budget.spend(t0), Spend::Refused);
        }
        assert_eq!(
            budget.spend(t0 + Duration::from_millis(200)),
            Spend::Allowed
        );
        for _ in 0..99 {
            assert_eq!(
                budget.spend(t0 + Duration::from_millis(200)),
                Spend::Refused
            );
        }
    }

    #[test]
    fn rate_zero_is_off() {
        let mut budget = PublishBudget::new(0, 1);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(budget.spend(t0), Spend::Allowed);
        }
    }
}
