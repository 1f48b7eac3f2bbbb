//! When to try a message again: exponential backoff with full jitter.
//!
//! The exponential schedule (first delay, factor, cap) comes from `backon`;
//! full jitter — a delay drawn uniformly from zero to the schedule's value —
//! is applied here, because backon's own jitter only adds to the delay and so
//! keeps retries of one burst clumped together. A server's `Retry-After` is a
//! floor under the drawn delay. This module decides delays only; which
//! failures are retried at all is decided in `call`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rand::Rng;

/// The backoff schedule for one message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    pub first: Duration,
    pub max: Duration,
    pub factor: f32,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            first: Duration::from_millis(250),
            max: Duration::from_secs(30),
            factor: 2.0,
        }
    }
}

/// The delays of one message's retries, each fully jittered.
pub struct Backoff {
    schedule: backon::ExponentialBackoff,
    last_ceiling: Duration,
}

impl BackoffPolicy {
    pub fn start(&self) -> Backoff {
        let schedule = ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .with_factor(self.factor.max(1.0))
            .without_max_times()
            .build();
        Backoff {
            schedule,
            last_ceiling: self.first,
        }
    }
}

impl Backoff {
    /// The next delay: uniform in `[0, ceiling]`, but never shorter than `floor`
    /// (the server's `Retry-After`).
    pub fn next_delay(&mut self, floor: Option<Duration>) -> Duration {
        let ceiling = self.schedule.next().unwrap_or(self.last_ceiling);
        self.last_ceiling = ceiling;
        let jittered = if ceiling.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..=ceiling)
        };
        match floor {
            Some(f) => jittered.max(f),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_jittered_under_a_growing_capped_ceiling() {
        let policy = BackoffPolicy {
            first: Duration::from_millis(100),
            max: Duration::from_millis(800),
            factor: 2.0,
        };
        let ceilings = [100, 200, 400, 800, 800, 800];
        for _ in 0..50 {
            let mut backoff = policy.start();
            for ceiling in ceilings {
                let d = backoff.next_delay(None);
                assert!(d <= Duration::from_millis(ceiling), "{d:?} > {ceiling}ms");
            }
        }
    }

    #[test]
    fn full_jitter_spreads_delays_down_to_zero() {
        let policy = BackoffPolicy::default();
        let delays: Vec<Duration> = (0..200).map(|_| policy.start().next_delay(None)).collect();
        assert!(delays.iter().any(|d| *d < policy.first / 4));
        assert!(delays.iter().any(|d| *d > policy.first * 3 / 4));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut backoff = BackoffPolicy::default().start();
        let d = backoff.next_delay(Some(Duration::from_secs(2)));
        assert!(d >= Duration::from_secs(2));
    }
}
