//! The circuit breaker: a run of systemic failures in a row (server errors,
//! unreachable server, no answers) means the API is down, not that these
//! recipients are bad. The breaker trips so the run stops with the rows still
//! pending, instead of spending every recipient's attempts on an outage.
//! Any healthy answer — including a per-recipient rejection — closes it again.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    consecutive: AtomicU32,
    tripped: AtomicBool,
}

impl Breaker {
    pub fn new(threshold: u32) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            consecutive: AtomicU32::new(0),
            tripped: AtomicBool::new(false),
        }
    }

    /// The server answered sensibly.
    pub fn healthy(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
    }

    /// A systemic failure; returns true when this one trips the breaker.
    pub fn systemic_failure(&self) -> bool {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        n >= self.threshold && !self.tripped.swap(true, Ordering::Relaxed)
    }

    pub fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_once_after_the_threshold_in_a_row() {
        let b = Breaker::new(3);
        assert!(!b.systemic_failure());
        assert!(!b.systemic_failure());
        b.healthy();
        assert!(!b.systemic_failure());
        assert!(!b.systemic_failure());
        assert!(b.systemic_failure());
        assert!(b.is_tripped());
        assert!(!b.systemic_failure(), "reports the trip only once");
    }
}
