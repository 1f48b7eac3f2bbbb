//! The sandbox's rate limit: one token bucket shared by every send endpoint,
//! and the periodic 429 storms a test can switch on. Both answer "not now,
//! retry after this long"; the handler turns that into a 429 with a
//! `Retry-After` header. Time is passed in, so the arithmetic is testable
//! without sleeping; the caller holds the lock.

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second up to `burst`; a send takes one.
#[derive(Debug)]
pub struct TokenBucket {
    /// Tokens per second; 0 means unlimited.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Starts full, as a real server does for a client that has been quiet.
    pub fn new(rate: f64, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: if rate.is_finite() { rate.max(0.0) } else { 0.0 },
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Periodic storms: the first `length` of every `period` since `start`.
#[derive(Debug, Clone, Copy)]
pub struct Storms {
    pub start: Instant,
    pub period: Duration,
    pub length: Duration,
}

impl Storms {
    /// `Some(time left in the storm)` while one is raging.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        if self.period.is_zero() || self.length.is_zero() {
            return None;
        }
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let into_period = elapsed % self.period.as_nanos();
        let length = self.length.as_nanos();
        // A storm longer than its period never ends, which is what was asked for.
        (into_period < length).then(|| {
            let left = length - into_period;
            Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX))
        })
    }
}

/// `Retry-After` is whole seconds; round up and never say 0, which a client
/// would take as "hammer me now".
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 2, t0);
        assert!(bucket.take(t0).is_ok());
        assert!(bucket.take(t0).is_ok());
        let wait = bucket.take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(bucket.take(t0 + Duration::from_millis(499)).is_err());
        assert!(bucket.take(t0 + Duration::from_millis(1000)).is_ok());
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0.0, 1, t0);
        for _ in 0..1000 {
            assert!(bucket.take(t0).is_ok());
        }
    }

    #[test]
    fn storms_cover_the_start_of_each_period() {
        let t0 = Instant::now();
        let storms = Storms {
            start: t0,
            period: Duration::from_secs(10),
            length: Duration::from_secs(2),
        };
        assert_eq!(storms.remaining(t0), Some(Duration::from_secs(2)));
        assert_eq!(
            storms.remaining(t0 + Duration::from_millis(1500)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(storms.remaining(t0 + Duration::from_secs(2)), None);
        assert_eq!(
            storms.remaining(t0 + Duration::from_secs(11)),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}
