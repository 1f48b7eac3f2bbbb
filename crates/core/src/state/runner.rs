//! What a store shared by several runners gives the engine besides rows: a
//! [`SendGate`] that closes before this runner's claim on its rows can have
//! run out, and a [`SharedPace`], the one send rate of every runner of the
//! campaign. An SQLite state has one runner and neither.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::StateError;

/// Whether this runner may still send a request. Opened (extended) by each
/// renewal of its lease, by this process's monotonic clock; closed for good
/// once the store says the lease is lost. Cheap to check before every request.
#[derive(Clone, Debug)]
pub struct SendGate {
    inner: Arc<GateInner>,
}

#[derive(Debug)]
struct GateInner {
    base: Instant,
    /// Milliseconds after `base` until which sending is allowed.
    open_until_ms: AtomicU64,
    lost: AtomicBool,
}

impl SendGate {
    /// A gate open for `for_how_long` from now.
    pub fn open_for(for_how_long: Duration) -> SendGate {
        let gate = SendGate {
            inner: Arc::new(GateInner {
                base: Instant::now(),
                open_until_ms: AtomicU64::new(0),
                lost: AtomicBool::new(false),
            }),
        };
        gate.extend_from(Instant::now(), for_how_long);
        gate
    }

    /// Whether a request may leave now.
    pub fn may_send(&self) -> bool {
        if self.inner.lost.load(Ordering::Acquire) {
            return false;
        }
        let now_ms = self.inner.base.elapsed().as_millis() as u64;
        now_ms < self.inner.open_until_ms.load(Ordering::Acquire)
    }

    /// Keeps the gate open until `from + for_how_long` (never shortens it).
    pub fn extend_from(&self, from: Instant, for_how_long: Duration) {
        let until = from.saturating_duration_since(self.inner.base) + for_how_long;
        self.inner
            .open_until_ms
            .fetch_max(until.as_millis() as u64, Ordering::AcqRel);
    }

    /// Closes the gate for good: the runner's lease is gone.
    pub fn close(&self) {
        self.inner.lost.store(true, Ordering::Release);
    }

    /// Whether the gate was closed for good (not merely run out).
    pub fn is_lost(&self) -> bool {
        self.inner.lost.load(Ordering::Acquire)
    }
}

/// A boxed future, for the object-safe [`SharedPace`].
pub type PaceFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'a>>;

/// Send slots reserved for this runner from the campaign's one pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotBlock {
    /// How long from now the first slot is due (zero when it is already).
    pub first_in: Duration,
    /// The shared rate the slots are spaced at, per second.
    pub rate: f64,
    /// How many slots were reserved.
    pub slots: u32,
}

/// The pace every runner of a campaign shares: slots are reserved from one
/// place, so the sum of all runners never exceeds the rate, whoever joins,
/// idles or dies.
pub trait SharedPace: Send + Sync + std::fmt::Debug {
    /// Reserves `slots` consecutive send slots; `ceiling` is the campaign's
    /// `rate_per_second`, never exceeded.
    fn reserve(&self, slots: u32, ceiling: f64) -> PaceFuture<'_, SlotBlock>;

    /// The server said `rate_limit_exceeded`: lower the rate for every
    /// runner, and hold every runner's next slot for `pause` if given.
    fn slow_down(&self, pause: Option<Duration>) -> PaceFuture<'_, ()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_runs_out_unless_renewed_and_stays_shut_once_lost() {
        let gate = SendGate::open_for(Duration::from_secs(3600));
        assert!(gate.may_send());
        let expired = SendGate::open_for(Duration::ZERO);
        assert!(!expired.may_send());
        expired.extend_from(Instant::now(), Duration::from_secs(3600));
        assert!(expired.may_send(), "a renewal opens it again");
        gate.close();
        assert!(!gate.may_send());
        gate.extend_from(Instant::now(), Duration::from_secs(3600));
        assert!(!gate.may_send(), "a lost lease is never renewed");
        assert!(gate.is_lost());
    }
}
