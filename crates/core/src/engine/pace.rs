//! The shared pace: one adaptive token bucket that every worker waits on
//! before each request, so the whole run — not each worker — keeps to a rate.
//!
//! Requests are scheduled against the clock: slot *i+1* is slot *i* plus
//! `1/rate`, and each worker sleeps until its slot, so delays never add up and
//! an idle spell earns no burst. When the server answers `rate_limit_exceeded`
//! the rate drops for everyone to just under the goodput the server actually
//! accepted over the last second, then climbs back additively (AIMD), so a run
//! settles just under the server's real limit instead of bouncing off it.
//! Only a full window is a measurement of that limit: goodput seen over less
//! than a second since the pace started measuring (its creation, or the end
//! of a pause for everyone) is scaled to a per-second estimate to set the new
//! rate, but it is never remembered as the limit, so a run that starts into a
//! budget another run has just used up climbs back fast instead of creeping.
//!
//! When several runners share a campaign (a PostgreSQL state) and it has a
//! `rate_per_second`, slots come from the campaign's one pace instead
//! ([`SharedPace`]): a worker takes the next of a small block of slots this
//! runner reserved, and the block is refilled from the database, so every
//! runner together keeps the rate. A 429 lowers that shared rate for all.
//! This module only decides *when*; it never sends or retries anything.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::state::SharedPace;

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
/// came before anything was accepted or before a full window) the pace grows
/// this much faster per second: a run must not spend minutes crawling back
/// from a short storm.
const FAST_INCREASE_FRACTION_PER_SEC: f64 = 0.5;
/// "Near" the known limit means at or above this fraction of it.
const NEAR_LIMIT: f64 = 0.8;
/// Goodput is measured over this window.
const GOODPUT_WINDOW: Duration = Duration::from_secs(1);
/// A partial window is scaled as if it were at least this long, so a 429 at
/// the very instant measuring started still gives a finite rate.
const MIN_PARTIAL_WINDOW: Duration = Duration::from_millis(1);
/// A `Retry-After` longer than this pauses everyone; a shorter one only delays
/// the message it came with (the rate drop already slows the rest).
const PAUSE_ALL_AFTER: Duration = Duration::from_secs(1);

/// A block of shared slots lasts about this long: one round trip to the
/// database per block.
const SHARED_BLOCK: Duration = Duration::from_millis(50);
/// At most this many slots per block.
const SHARED_BLOCK_MAX: u32 = 64;
/// A reserved slot this late is dropped, not used: using late slots
/// together would be a burst above the shared rate.
const SHARED_SLOT_STALE: Duration = Duration::from_millis(10);
/// After the database failed to hand out slots, wait this long to ask again.
const SHARED_RETRY: Duration = Duration::from_millis(200);

/// A shared, adaptive pace. `rate == None` means unpaced (until the first 429).
#[derive(Debug)]
pub struct Pace {
    ceiling: Option<f64>,
    state: Mutex<PaceState>,
    /// Slots from the campaign's pace, shared with other runners.
    shared: Option<SharedSlots>,
}

/// This runner's share of a campaign's one pace.
#[derive(Debug)]
struct SharedSlots {
    source: Arc<dyn SharedPace>,
    ceiling: f64,
    /// Reserved slots not used yet, earliest first.
    queue: Mutex<VecDeque<Instant>>,
    /// One worker refills at a time; the others wait for its block.
    refill: tokio::sync::Mutex<()>,
    /// The shared rate at the last reservation, for the progress display.
    rate: Mutex<Option<f64>>,
    rate_limited: Mutex<u64>,
}

#[derive(Debug)]
struct PaceState {
    rate: Option<f64>,
    next_slot: Instant,
    last_adjust: Instant,
    last_decrease: Option<Instant>,
    /// The goodput the server allowed over a full window when it last pushed back.
    known_limit: Option<f64>,
    /// When the goodput window started filling: the pace's creation, or the
    /// end of the last pause for everyone. Until a whole window has passed
    /// since, the accepted count is a partial one.
    measuring_since: Instant,
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
                measuring_since: now,
                accepted: VecDeque::new(),
                rate_limited: 0,
            }),
            shared: None,
        }
    }

    /// A pace whose slots come from `source`, the campaign's pace shared by
    /// every runner, at most `ceiling` per second in all.
    pub fn shared(ceiling: f64, source: Arc<dyn SharedPace>) -> Pace {
        Pace {
            shared: Some(SharedSlots {
                source,
                ceiling,
                queue: Mutex::new(VecDeque::new()),
                refill: tokio::sync::Mutex::new(()),
                rate: Mutex::new(Some(ceiling)),
                rate_limited: Mutex::new(0),
            }),
            ..Pace::new(Some(ceiling))
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
        if let Some(shared) = &self.shared {
            return shared.wait().await;
        }
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
        if let Some(shared) = &self.shared {
            return shared.on_rate_limited(retry_after);
        }
        let now = Instant::now();
        let mut s = self.lock();
        s.rate_limited += 1;
        let pause = retry_after.filter(|&wait| wait > PAUSE_ALL_AFTER);
        if let Some(wait) = pause {
            s.next_slot = s.next_slot.max(now + wait);
        }
        let recently = s
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < DECREASE_EVERY);
        if !recently {
            Self::decrease(&mut s, now);
        }
        if pause.is_some() {
            // Nothing is sent until the pause ends, so the window that ends a
            // moment later is mostly silence: measure afresh from there. (The
            // 429 that asked for the pause was measured above, over the
            // window before it.)
            s.measuring_since = s.measuring_since.max(s.next_slot);
        }
    }

    /// Lowers the rate to just under the goodput, learning the limit when
    /// the goodput was measured over a full window.
    fn decrease(s: &mut PaceState, now: Instant) {
        while let Some(&front) = s.accepted.front() {
            if now.saturating_duration_since(front) > GOODPUT_WINDOW {
                s.accepted.pop_front();
            } else {
                break;
            }
        }
        let observed = now.saturating_duration_since(s.measuring_since);
        let full_window = observed >= GOODPUT_WINDOW;
        let goodput = if full_window {
            s.accepted.len() as f64 / GOODPUT_WINDOW.as_secs_f64()
        } else {
            // A partial window: what was accepted since measuring started,
            // scaled to a second. Right after a start into an exhausted limit
            // the count is the trickle the refilling budget let through, far
            // below the limit; taken as the limit, it would hold the pace in
            // the slow "near limit" climb for minutes. So it only sets the
            // new rate, `known_limit` stays as it was (none at the start) and
            // the fast climb applies. The scaled estimate errs high when the
            // server first allowed a burst, and low when the count is one or
            // two answers; high is the cheaper mistake: it costs about one
            // more 429 per worker (each 429 holds its worker back for the
            // Retry-After) before a later decrease measures again, where low
            // costs seconds of climbing behind slots already reserved.
            let since = s.measuring_since;
            let counted = s.accepted.iter().filter(|&&t| t >= since).count();
            counted as f64 / observed.max(MIN_PARTIAL_WINDOW).as_secs_f64()
        };
        if full_window && goodput > 0.0 {
            s.known_limit = Some(goodput);
        }
        let current = s.rate.unwrap_or(f64::INFINITY);
        // Just under what the server accepted, and never faster than before.
        let target = if goodput > 0.0 {
            (goodput * DECREASE_TO).min(current * DECREASE_TO)
        } else {
            // Nothing accepted in the window: halve (from a finite rate).
            if current.is_finite() {
                current / 2.0
            } else {
                10.0
            }
        };
        s.rate = Some(target.max(MIN_RATE));
        tracing::info!(
            goodput_per_sec = goodput,
            full_window,
            new_rate = target.max(MIN_RATE),
            "rate limited by the API: pace lowered for every worker"
        );
        s.last_decrease = Some(now);
        s.last_adjust = now;
    }

    /// The current rate in requests per second; `None` when unpaced.
    pub fn current_rate(&self) -> Option<f64> {
        if let Some(shared) = &self.shared {
            return *lock(&shared.rate);
        }
        self.lock().rate
    }

    pub fn rate_limited_count(&self) -> u64 {
        if let Some(shared) = &self.shared {
            return *lock(&shared.rate_limited);
        }
        self.lock().rate_limited
    }
}

/// A lock whose data stays consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SharedSlots {
    /// Slots per reservation: about [`SHARED_BLOCK`] of sending at the
    /// ceiling.
    fn block_size(&self) -> u32 {
        ((self.ceiling * SHARED_BLOCK.as_secs_f64()).ceil() as u32).clamp(1, SHARED_BLOCK_MAX)
    }

    /// The next reserved slot that is not stale, if any.
    fn take_slot(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut queue = lock(&self.queue);
        while let Some(slot) = queue.pop_front() {
            if slot + SHARED_SLOT_STALE >= now {
                return Some(slot);
            }
        }
        None
    }

    async fn wait(&self) {
        loop {
            if let Some(slot) = self.take_slot() {
                if slot > Instant::now() {
                    tokio::time::sleep_until(slot).await;
                }
                return;
            }
            let _refilling = self.refill.lock().await;
            // Another worker may have refilled while this one waited.
            if !lock(&self.queue).is_empty() {
                continue;
            }
            match self.source.reserve(self.block_size(), self.ceiling).await {
                Ok(block) => {
                    // From the answer, not the question: `first_in` was
                    // measured on the database a round trip after asking,
                    // and placing the block earlier would overlap the block
                    // another runner reserved just before.
                    let first = Instant::now() + block.first_in;
                    let spacing = Duration::from_secs_f64(1.0 / block.rate.max(MIN_RATE));
                    let mut queue = lock(&self.queue);
                    queue.extend((0..block.slots).map(|i| first + spacing * i));
                    *lock(&self.rate) = Some(block.rate);
                }
                Err(e) => {
                    // The run's stop interrupts this wait; the claims fail
                    // on their own if the database is gone for good.
                    tracing::warn!(error = %e, "cannot reserve send slots from the shared pace");
                    tokio::time::sleep(SHARED_RETRY).await;
                }
            }
        }
    }

    fn on_rate_limited(&self, retry_after: Option<Duration>) {
        *lock(&self.rate_limited) += 1;
        // Slots reserved at the old rate are given up: the next block comes
        // at the lowered one.
        lock(&self.queue).clear();
        let pause = retry_after.filter(|&wait| wait > PAUSE_ALL_AFTER);
        let source = self.source.clone();
        tokio::spawn(async move {
            if let Err(e) = source.slow_down(pause).await {
                tracing::warn!(error = %e, "cannot lower the shared pace");
            }
        });
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
        // A full window since the pace started, so the goodput is a measurement.
        tokio::time::advance(GOODPUT_WINDOW).await;
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

    #[tokio::test(start_paused = true)]
    async fn an_early_429_scales_the_partial_window_but_learns_no_limit() {
        let pace = Pace::new(None);
        // 10 accepted in the first quarter second: 40/s, not a limit of 10/s.
        tokio::time::advance(Duration::from_millis(250)).await;
        for _ in 0..10 {
            pace.on_accepted();
        }
        pace.on_rate_limited(Some(Duration::from_secs(1)));
        let rate = pace.current_rate().expect("paced after a 429");
        assert!((rate - 38.0).abs() < 0.01, "{rate}");
        assert_eq!(pace.lock().known_limit, None);
        // No limit known, so the climb is the fast one: doubled in 2 s.
        tokio::time::advance(Duration::from_secs(2)).await;
        pace.reserve();
        let recovered = pace.current_rate().expect("rate");
        assert!(recovered > 70.0, "{recovered}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_for_everyone_restarts_the_window() {
        let pace = Pace::new(None);
        tokio::time::advance(GOODPUT_WINDOW).await;
        for _ in 0..80 {
            pace.on_accepted();
        }
        pace.on_rate_limited(None);
        assert_eq!(pace.lock().known_limit, Some(80.0));
        // The 429 that asks for a pause is measured over the window before it.
        tokio::time::advance(Duration::from_millis(600)).await;
        pace.on_rate_limited(Some(Duration::from_secs(5)));
        assert_eq!(pace.lock().known_limit, Some(80.0));
        let paused_at = pace.current_rate().expect("rate");
        assert!((paused_at - 72.2).abs() < 0.01, "{paused_at}");
        // 200 ms after the pause: 10 accepted is 50/s so far, not a limit of 10/s.
        tokio::time::advance(Duration::from_millis(5200)).await;
        for _ in 0..10 {
            pace.on_accepted();
        }
        pace.on_rate_limited(None);
        assert_eq!(pace.lock().known_limit, Some(80.0));
        let rate = pace.current_rate().expect("rate");
        assert!((rate - 47.5).abs() < 0.01, "{rate}");
    }

    /// A server like the sandbox: one token bucket of `LIMIT` a second (burst
    /// `LIMIT`) that accepts a request when it holds a token at that instant.
    struct Server {
        tokens: f64,
        last: Instant,
        accepted: Vec<Instant>,
    }

    const LIMIT: f64 = 80.0;

    impl Server {
        /// Empty, as another run that just used the whole budget leaves it.
        fn drained(now: Instant) -> Server {
            Server {
                tokens: 0.0,
                last: now,
                accepted: Vec::new(),
            }
        }

        fn take(&mut self, now: Instant) -> bool {
            let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
            self.last = now;
            self.tokens = (self.tokens + elapsed * LIMIT).min(LIMIT);
            if self.tokens < 1.0 {
                return false;
            }
            self.tokens -= 1.0;
            self.accepted.push(now);
            true
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_started_into_an_exhausted_limit_reaches_it_within_seconds() {
        // What the sandbox answers a 429 at this limit (its wait, rounded up to
        // whole seconds), and so the least the worker's backoff waits.
        const RETRY_AFTER: Duration = Duration::from_secs(1);
        let start = Instant::now();
        let end = start + Duration::from_secs(20);
        let pace = std::sync::Arc::new(Pace::new(None));
        let server = std::sync::Arc::new(Mutex::new(Server::drained(start)));
        let mut workers = tokio::task::JoinSet::new();
        for i in 0..16u64 {
            let (pace, server) = (pace.clone(), server.clone());
            // Round trips of 40 to 100 ms, one per worker, so answers come back
            // spread out as over a network: the first ones are the few the
            // refilling bucket let through, and then the 429s.
            let one_way = Duration::from_millis(20 + 2 * i);
            workers.spawn(async move {
                while Instant::now() < end {
                    pace.wait().await;
                    tokio::time::sleep(one_way).await;
                    let accepted = server.lock().expect("server").take(Instant::now());
                    tokio::time::sleep(one_way).await;
                    if accepted {
                        pace.on_accepted();
                    } else {
                        pace.on_rate_limited(Some(RETRY_AFTER));
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                }
            });
        }
        while let Some(done) = workers.join_next().await {
            done.expect("a simulated worker");
        }
        let server = server.lock().expect("server");
        let per_second: Vec<usize> = (0..20)
            .map(|s| {
                let from = start + Duration::from_secs(s);
                let to = from + Duration::from_secs(1);
                server
                    .accepted
                    .iter()
                    .filter(|&&t| t >= from && t < to)
                    .count()
            })
            .collect();
        let rate = per_second[10..20].iter().sum::<usize>() as f64 / 10.0;
        assert!(
            rate >= 0.9 * LIMIT,
            "{rate}/s accepted over seconds 10-20, want >= {}/s; each second: {per_second:?}",
            0.9 * LIMIT
        );
    }
}
