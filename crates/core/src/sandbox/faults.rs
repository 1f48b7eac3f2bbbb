//! Injected faults: which valid send gets a 500, a dropped connection or a
//! slow answer, plus its jitter and message id. Every roll draws exactly the
//! same numbers from the RNG whatever the outcome, so with a seed the n-th
//! valid request always meets the same fate — a test can replay a failure.
//! This module decides; the handler acts.

use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;

/// What happens to one valid send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded and answered 200.
    Deliver,
    /// Recorded, then answered 200 only after the configured slow delay.
    Slow,
    /// Answered 500 `internal_error`; not recorded.
    Fail,
    /// Connection closed without an answer; not recorded.
    Drop,
}

/// The fault probabilities. One uniform draw is compared against cumulative
/// thresholds, so each rate is exact on its own (when they sum to at most 1).
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub fail_rate: f64,
    pub drop_rate: f64,
    pub slow_rate: f64,
    pub jitter: Duration,
}

/// One request's fate.
#[derive(Debug, Clone, Copy)]
pub struct Roll {
    pub outcome: Outcome,
    /// The random part of the answer's delay, in `0..jitter`.
    pub jitter: Duration,
    /// Randomness for the message id.
    pub id_bits: u64,
}

impl Faults {
    pub fn roll(&self, rng: &mut SmallRng) -> Roll {
        let fate: f64 = rng.random();
        let jitter_fraction: f64 = rng.random();
        let id_bits: u64 = rng.random();
        let outcome = if fate < self.fail_rate {
            Outcome::Fail
        } else if fate < self.fail_rate + self.drop_rate {
            Outcome::Drop
        } else if fate < self.fail_rate + self.drop_rate + self.slow_rate {
            Outcome::Slow
        } else {
            Outcome::Deliver
        };
        Roll {
            outcome,
            jitter: self.jitter.mul_f64(jitter_fraction),
            id_bits,
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn faults(fail: f64, drop: f64, slow: f64) -> Faults {
        Faults {
            fail_rate: fail,
            drop_rate: drop,
            slow_rate: slow,
            jitter: Duration::from_millis(100),
        }
    }

    #[test]
    fn same_seed_same_fates() {
        let f = faults(0.2, 0.2, 0.2);
        let mut a = SmallRng::seed_from_u64(7);
        let mut b = SmallRng::seed_from_u64(7);
        for _ in 0..100 {
            let (x, y) = (f.roll(&mut a), f.roll(&mut b));
            assert_eq!(x.outcome, y.outcome);
            assert_eq!(x.id_bits, y.id_bits);
            assert_eq!(x.jitter, y.jitter);
        }
    }

    #[test]
    fn rates_are_roughly_honoured() {
        let f = faults(0.1, 0.2, 0.3);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            let i = match f.roll(&mut rng).outcome {
                Outcome::Fail => 0,
                Outcome::Drop => 1,
                Outcome::Slow => 2,
                Outcome::Deliver => 3,
            };
            counts[i] += 1;
        }
        for (count, expected) in counts.iter().zip([2000, 4000, 6000, 8000]) {
            assert!(count.abs_diff(expected) < 400, "{counts:?}");
        }
    }

    #[test]
    fn zero_rates_never_fault_and_one_always_does() {
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..1000 {
            assert_eq!(
                faults(0.0, 0.0, 0.0).roll(&mut rng).outcome,
                Outcome::Deliver
            );
            assert_eq!(faults(1.0, 0.0, 0.0).roll(&mut rng).outcome, Outcome::Fail);
        }
    }
}
