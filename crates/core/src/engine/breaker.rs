//! The circuit breaker: the same failure many times in a row means something
//! is wrong with the campaign or the API, not with these recipients.
//!
//! Two streaks trip it. Systemic failures (server errors, unreachable server,
//! no answers) mean the API is down: the run stops with the rows still
//! pending instead of spending every recipient's attempts on an outage. The
//! same rejection code for many recipients in a row (every row
//! `validation_error`, or `not_found` from a wrong base URL) means the
//! campaign is wrong: the run stops before the whole list fails the same way.
//! A sent message ends both streaks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    consecutive: AtomicU32,
    /// The last rejection code and how many times in a row it came.
    same_rejection: Mutex<(String, u32)>,
    tripped: AtomicBool,
}

impl Breaker {
    pub fn new(threshold: u32) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            consecutive: AtomicU32::new(0),
            same_rejection: Mutex::new((String::new(), 0)),
            tripped: AtomicBool::new(false),
        }
    }

    /// A message was accepted: both streaks end.
    pub fn healthy(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        self.same_rejection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1 = 0;
    }

    /// The server answered, so it is up; but not with a success.
    pub fn answered(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
    }

    /// A recipient was rejected with `code`; returns true when this makes
    /// `threshold` identical rejections in a row and trips the breaker.
    pub fn rejected(&self, code: &str) -> bool {
        self.answered();
        let mut streak = self
            .same_rejection
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if streak.0 == code {
            streak.1 += 1;
        } else {
            *streak = (code.to_owned(), 1);
        }
        streak.1 >= self.threshold && !self.tripped.swap(true, Ordering::Relaxed)
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
    fn the_same_rejection_in_a_row_trips_it_and_a_success_resets() {
        let b = Breaker::new(3);
        assert!(!b.rejected("validation_error"));
        assert!(!b.rejected("validation_error"));
        assert!(
            !b.rejected("not_found"),
            "a different code starts a new streak"
        );
        b.healthy();
        assert!(!b.rejected("not_found"));
        assert!(!b.rejected("not_found"));
        assert!(b.rejected("not_found"));
    }

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
