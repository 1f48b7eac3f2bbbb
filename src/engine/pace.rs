//! The shared pace: one adaptive token bucket that every worker waits on
//! before each request, so the whole run — not each worker — keeps to a rate.
//!
//! Requests are scheduled against the clock: slot *i+1* is slot *i* plus
//! `1/rate`, and each worker sleeps until its slot, so delays never add up and
//! an idle spell earns no burst. When the server answers `rate_limit_exceeded`
//! the rate drops for everyone to just under the goodput the server actually
//! accepted over the last second, then climbs back additively (AIMD), so a run
//! settles just under the server's real limit instead of bouncing off it.
//! This module only decides *when*; it never sends or retries anything.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Never pace slower than this, however hard the server pushes back.
const MIN_RATE: f64 = 0.5;
/// After a 429, the new rate is this fraction of the goodput the server accepted.
const DECREASE_TO: f64 = 0.95;
/// At most one decrease per this interval: the 429s of one overshoot arrive
/// together and must not each halve the rate.
const DECREASE_EVERY: Duration = Duration::from_millis(500);
/// Additive increase per second near the last known limit, as a fraction of
/// the current rate (at least 1/s): gentle, so the run settles under it.
const INCREASE_FRACTION_PER_SEC: f64 = 0.02;
/// Far below the last known limit (or with none known, as after a 429 that
/// came before anything was accepted) the pace grows this much faster per
/// second: a run must not spend minutes crawling back from a short storm.
const FAST_INCREASE_FRACTION_PER_SEC: f64 = 0.5;
/// "Near" the known limit means at or above this fraction of it.
const NEAR_LIMIT: f64 = 0.8;
/// Goodput is measured over this window.
const GOODPUT_WINDOW: Duration = Duration::from_secs(1);
/// A `Retry-After` longer than this pauses everyone; a shorter one only delays
/// the message it came with (the rate drop already slows the rest).
const PAUSE_ALL_AFTER: Duration = Duration::from_secs(1);

/// A shared, adaptive pace. `rate == None` means unpaced (until the first 429).
#[derive(Debug)]
pub struct Pace {
    ceiling: Option<f64>,
    state: Mutex<PaceState>,
}

#[derive(Debug)]
struct PaceState {
    rate: Option<f64>,
    next_slot: Instant,
    last_adjust: Instant,
    last_decrease: Option<Instant>,
    /// The goodput the server allowed when it last pushed back.
    known_limit: Option<f64>,
    /// Completion times of accepted requests within the goodput window.
    accepted: VecDeque<Instant>,
    rate_limited: u64,
}

impl Pace {
    /// `ceiling`: the configured `rate_per_second`, never exceeded; `None` lets
    /// the server's 429s find the rate.
    pub fn new(ceiling: Option<f64>) -> Pace {
        let now = Instant::now();
        Pace {
            ceiling,
            state: Mutex::new(PaceState {
                rate: ceiling,
                next_slot: now,
                last_adjust: now,
                last_decrease: None,
                known_limit: None,
                accepted: VecDeque::new(),
                rate_limited: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PaceState> {
        // The state stays consistent even if a holder panicked mid-update
        // (every field is overwritten whole), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves the next slot and returns when it is due. Waiting happens outside the lock.
    pub fn reserve(&self) -> Instant {
        let now = Instant::now();
        let mut s = self.lock();
        self.recover(&mut s, now);
        let Some(rate) = s.rate else {
            return now.max(s.next_slot);
        };
        // An idle spell earns no burst: a slot in the past is moved to now.
        let slot = s.next_slot.max(now);
        s.next_slot = slot + Duration::from_secs_f64(1.0 / rate);
        slot
    }

    /// Waits for this caller's slot.
    pub async fn wait(&self) {
        let slot = self.reserve();
        if slot > Instant::now() {
            tokio::time::sleep_until(slot).await;
        }
    }

    /// Additive increase, applied lazily for the time since the last adjustment.
    fn recover(&self, s: &mut PaceState, now: Instant) {
        let elapsed = now.saturating_duration_since(s.last_adjust).as_secs_f64();
        s.last_adjust = now;
        if let Some(rate) = s.rate {
            let near_limit = s
                .known_limit
                .is_some_and(|limit| rate >= NEAR_LIMIT * limit);
            let fraction = if near_limit {
                INCREASE_FRACTION_PER_SEC
            } else {
                FAST_INCREASE_FRACTION_PER_SEC
            };
            let step = (rate * fraction).max(1.0) * elapsed;
            let raised = rate + step;
            s.rate = Some(match self.ceiling {
                Some(c) => raised.min(c),
                None => raised,
            });
        }
    }

    /// Records an accepted request, for the goodput estimate.
    pub fn on_accepted(&self) {
        let now = Instant::now();
        let mut s = self.lock();
        s.accepted.push_back(now);
        while let Some(&front) = s.accepted.front() {
            if now.saturating_duration_since(front) > GOODPUT_WINDOW {
                s.accepted.pop_front();
            } else {
                break;
            }
        }
    }

    /// The server said `rate_limit_exceeded`: slow everyone down.
    pub fn on_rate_limited(&self, retry_after: Option<Duration>) {
        let now = Instant::now();
        let mut s = self.lock();
        s.rate_limited += 1;
        if let Some(wait) = retry_after
            && wait > PAUSE_ALL_AFTER
        {
            s.next_slot = s.next_slot.max(now + wait);
        }
        let recently = s
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < DECREASE_EVERY);
        if recently {
            return;
        }
        while let Some(&front) = s.accepted.front() {
            if now.saturating_duration_since(front) > GOODPUT_WINDOW {
                s.accepted.pop_front();
            } else {
                break;
            }
        }
        let goodput = s.accepted.len() as f64 / GOODPUT_WINDOW.as_secs_f64();
        if goodput > 0.0 {
            s.known_limit = Some(goodput);
        }
        let current = s.rate.unwrap_or(f64::INFINITY);
        // Just under what the server accepted, and never faster than before.
        let target = if goodput > 0.0 {
            (goodput * DECREASE_TO).min(current * DECREASE_TO)
        } else {
            // Nothing accepted for a second: halve (from a finite rate).
            if current.is_finite() {
                current / 2.0
            } else {
                10.0
            }
        };
        s.rate = Some(target.max(MIN_RATE));
        tracing::info!(
            goodput_per_sec = goodput,
            new_rate = target.max(MIN_RATE),
            "rate limited by the API: pace lowered for every worker"
        );
        s.last_decrease = Some(now);
        s.last_adjust = now;
    }

    /// The current rate in requests per second; `None` when unpaced.
    pub fn current_rate(&self) -> Option<f64> {
        self.lock().rate
    }

    pub fn rate_limited_count(&self) -> u64 {
        self.lock().rate_limited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_follow_the_clock_without_drift() {
        let pace = Pace::new(Some(10.0));
        let start = Instant::now();
        let slots: Vec<_> = (0..5).map(|_| pace.reserve()).collect();
        let offsets: Vec<u128> = slots.iter().map(|s| (*s - start).as_millis()).collect();
        assert_eq!(offsets, [0, 100, 200, 300, 400]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_earns_no_burst() {
        let pace = Pace::new(Some(10.0));
        pace.reserve();
        tokio::time::advance(Duration::from_secs(5)).await;
        let a = pace.reserve();
        let b = pace.reserve();
        assert_eq!((b - a).as_millis(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_drops_the_rate_to_just_under_the_goodput() {
        let pace = Pace::new(None);
        assert_eq!(pace.current_rate(), None);
        for _ in 0..80 {
            pace.on_accepted();
        }
        pace.on_rate_limited(Some(Duration::from_secs(1)));
        let rate = pace.current_rate().expect("paced after a 429");
        assert!((rate - 76.0).abs() < 0.01, "{rate}");
        // The burst of 429s from the same overshoot does not decrease again.
        pace.on_rate_limited(None);
        assert!((pace.current_rate().expect("rate") - 76.0).abs() < 0.01);
        // Then it climbs back, gradually.
        tokio::time::advance(Duration::from_secs(2)).await;
        pace.reserve();
        let recovered = pace.current_rate().expect("rate");
        assert!(recovered > 78.0 && recovered < 80.0, "{recovered}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_before_anything_was_accepted_recovers_in_seconds() {
        // Regression: the fault drill once took minutes after a 429 storm at
        // the very start, crawling back from 10/s at 1/s per second.
        let pace = Pace::new(None);
        pace.on_rate_limited(None);
        assert_eq!(pace.current_rate(), Some(10.0));
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            pace.reserve();
        }
        let rate = pace.current_rate().expect("rate");
        assert!(rate > 500.0, "{rate}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_configured_rate_is_a_ceiling() {
        let pace = Pace::new(Some(20.0));
        pace.on_rate_limited(None);
        assert!(pace.current_rate().expect("rate") < 20.0);
        tokio::time::advance(Duration::from_secs(600)).await;
        pace.reserve();
        assert_eq!(pace.current_rate(), Some(20.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_retry_after_pauses_everyone() {
        let pace = Pace::new(Some(100.0));
        let start = Instant::now();
        pace.on_rate_limited(Some(Duration::from_secs(5)));
        let slot = pace.reserve();
        assert!(slot - start >= Duration::from_secs(5));
    }
}
