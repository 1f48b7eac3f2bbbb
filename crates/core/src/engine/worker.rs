//! Delivering one claimed row: send it until it has a final answer, then
//! say what that answer means for the row and for the run.
//!
//! The retry loop itself is [`call`](super::call)'s: a rate limit slows
//! everyone and retries without spending the attempt budget, server errors
//! and unreachable servers retry with backoff up to `max_attempts`, anything
//! else ends the call. This module turns the ending into the row's outcome and
//! feeds the run's counters and circuit breaker: a rejected key stops the run
//! with the row given back; validation and not-found fail the row (and a
//! streak of one code trips the breaker); server errors and unreachable
//! servers count as systemic failures towards the breaker; an answer lost
//! after sending makes the row `uncertain`, never retried; a stop before the
//! request left gives the row back as pending.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;

use super::breaker::Breaker;
use super::call::{Answer, CallEvents, CallPolicy, Failure, GaveUp, call_until_answered};
use super::pace::Pace;
use super::retry::BackoffPolicy;
use super::shutdown::{Stop, StopReason};
use crate::api::model::MessageKind;
use crate::api::{ApiError, Client};
use crate::state::{Claimed, Outcome, RowOutcome, SendGate};

/// Kept at its old path; the limit lives with the retry loop.
pub use super::call::RATE_LIMIT_RETRIES;

/// Counters of this run, read by progress reporting.
#[derive(Debug, Default)]
pub struct RunStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub uncertain: AtomicU64,
    pub released: AtomicU64,
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
    pub retries: AtomicU64,
}

/// Everything a worker needs, shared by all of them.
pub struct Delivery {
    pub client: Client,
    pub kind: MessageKind,
    pub pace: Pace,
    pub breaker: Breaker,
    pub backoff: BackoffPolicy,
    pub max_attempts: u32,
    pub stop: Stop,
    pub stats: Arc<RunStats>,
    /// Shut when this runner's lease on a shared state runs out.
    pub gate: Option<SendGate>,
}

impl Delivery {
    /// Sends one row until it has a final state, or the run stops.
    pub async fn deliver(&self, row: Claimed) -> RowOutcome {
        let policy = CallPolicy {
            gate: self.gate.as_ref(),
            ..CallPolicy::new(&self.pace, &self.stop, self.backoff, self.max_attempts)
        };
        let events = RowEvents {
            delivery: self,
            row: row.row,
        };
        let called = call_until_answered(&policy, &events, || {
            self.client.send_raw(self.kind, row.body.clone())
        })
        .await;
        let attempts = called.attempts;
        match called.answer {
            Answer::Answered(response) => {
                self.breaker.healthy();
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                settle(
                    &row,
                    attempts,
                    Outcome::Sent {
                        message_id: response.message_id,
                    },
                )
            }
            Answer::Failed(failure) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                let error = &failure.error;
                if failure.gave_up == GaveUp::Rejected && self.breaker.rejected(error.code()) {
                    self.stop.trigger(StopReason::Breaker(format!(
                        "{} recipients in a row were rejected with {} (the last: {}): stopped before the rest of the list fails the same way; fix the cause, then `retry --failed`",
                        self.breaker.threshold(),
                        error.code(),
                        error.details()
                    )));
                }
                failed(&row, attempts, &failure)
            }
            Answer::MaybeTookEffect(error) => {
                self.note_systemic(&error);
                self.stats.uncertain.fetch_add(1, Ordering::Relaxed);
                uncertain(&row, attempts, &error)
            }
            Answer::Refused(error) => {
                self.stop.trigger(match error {
                    ApiError::CertificateRejected { .. } => {
                        StopReason::CertificateRejected(error.to_string())
                    }
                    _ => StopReason::Unauthorized(error.to_string()),
                });
                // Rejected before anything was accepted: safe to send later.
                self.release(&row, attempts)
            }
            // Stopped (or the breaker tripped) before the row left again:
            // nothing of it was accepted.
            Answer::NotSent { .. } => self.release(&row, attempts),
        }
    }

    /// Counts a systemic failure; true when it tripped the breaker (the run stops).
    fn note_systemic(&self, error: &ApiError) -> bool {
        tracing::debug!(code = error.code(), "systemic failure: {error}");
        if self.breaker.systemic_failure() {
            self.stop.trigger(StopReason::Breaker(format!(
                "{} systemic failures in a row, the last: {error}",
                self.breaker.threshold()
            )));
            return true;
        }
        false
    }

    fn release(&self, row: &Claimed, attempts: u32) -> RowOutcome {
        self.stats.released.fetch_add(1, Ordering::Relaxed);
        settle(row, attempts, Outcome::Released)
    }
}

fn settle(row: &Claimed, attempts: u32, outcome: Outcome) -> RowOutcome {
    RowOutcome {
        id: row.id,
        attempts,
        at: Utc::now(),
        outcome,
    }
}

fn failed(row: &Claimed, attempts: u32, failure: &Failure) -> RowOutcome {
    let code = failure.error.code().to_owned();
    let details = failure.details();
    settle(row, attempts, Outcome::Failed { code, details })
}

fn uncertain(row: &Claimed, attempts: u32, error: &ApiError) -> RowOutcome {
    let (code, details) = (error.code().to_owned(), error.details());
    settle(row, attempts, Outcome::Uncertain { code, details })
}

/// What the run's counters and breaker hear while one row's call is under way.
struct RowEvents<'a> {
    delivery: &'a Delivery,
    row: u64,
}

impl CallEvents for RowEvents<'_> {
    fn on_request(&self) {
        self.delivery.stats.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn on_rate_limited(&self, _error: &ApiError) {
        // The server is alive and answering: not a breaker failure.
        self.delivery.breaker.answered();
        self.delivery
            .stats
            .rate_limited
            .fetch_add(1, Ordering::Relaxed);
    }

    fn keep_trying(&self, error: &ApiError) -> bool {
        // A tripped breaker stops the run: give the row back rather than retry.
        !self.delivery.note_systemic(error)
    }

    fn on_backoff(&self, attempts: u32, error: &ApiError, delay: Duration) {
        self.delivery.stats.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            row = self.row,
            attempt = attempts,
            code = error.code(),
            delay_ms = delay.as_millis() as u64,
            "retrying after a transient failure"
        );
    }
}
