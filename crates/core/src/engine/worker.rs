//! Delivering one claimed row: pace, send, classify, retry, and the row's
//! final outcome.
//!
//! The table in DESIGN.md is implemented here and only here: `rate_limit_exceeded`
//! slows everyone and retries without spending the attempt budget; a rejected
//! key stops the run with the row given back; validation and not-found fail
//! the row; server errors and unreachable servers retry with backoff up to
//! `max_attempts` and feed the circuit breaker; an answer lost after sending
//! makes the row `uncertain`, never retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;

use super::breaker::Breaker;
use super::pace::Pace;
use super::retry::BackoffPolicy;
use super::shutdown::{Stop, StopReason};
use crate::api::model::MessageKind;
use crate::api::{ApiError, Client, Disposition};
use crate::state::{Claimed, Outcome, RowOutcome};

/// How many `rate_limit_exceeded` answers one message may get before it is
/// failed: generous, since the pace adapts, but finite so a server that only
/// ever says 429 cannot keep a run alive forever.
pub const RATE_LIMIT_RETRIES: u32 = 100;

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
}

impl Delivery {
    /// Sends one row until it has a final state, or the run stops.
    pub async fn deliver(&self, row: Claimed) -> RowOutcome {
        let mut attempts = 0u32;
        let mut failures = 0u32;
        let mut rate_limited = 0u32;
        let mut backoff = self.backoff.start();
        loop {
            // A stop between attempts gives the row back: nothing of it is on the wire.
            if self.stop.is_stopping() {
                return self.release(&row, attempts);
            }
            tokio::select! {
                biased;
                _ = self.stop.stopped() => return self.release(&row, attempts),
                _ = self.pace.wait() => {}
            }
            attempts += 1;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let error = match self.client.send_raw(self.kind, row.body.clone()).await {
                Ok(response) => {
                    self.breaker.healthy();
                    self.pace.on_accepted();
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    return settle(
                        &row,
                        attempts,
                        Outcome::Sent {
                            message_id: response.message_id,
                        },
                    );
                }
                Err(error) => error,
            };
            let retry_after = match &error {
                ApiError::RateLimited { retry_after, .. } => *retry_after,
                _ => None,
            };
            match error.disposition() {
                Disposition::RateLimited => {
                    // The server is alive and answering: not a breaker failure.
                    self.breaker.answered();
                    self.pace.on_rate_limited(retry_after);
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    rate_limited += 1;
                    if rate_limited > RATE_LIMIT_RETRIES {
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        return failed(
                            &row,
                            attempts,
                            &error,
                            Some(format!("still rate limited after {rate_limited} tries")),
                        );
                    }
                }
                Disposition::StopRun => {
                    self.stop
                        .trigger(StopReason::Unauthorized(error.to_string()));
                    // Rejected before anything was accepted: safe to send later.
                    return self.release(&row, attempts);
                }
                Disposition::Permanent => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    if self.breaker.rejected(error.code()) {
                        self.stop.trigger(StopReason::Breaker(format!(
                            "{} recipients in a row were rejected with {} (the last: {}): stopped before the rest of the list fails the same way; fix the cause, then `retry --failed`",
                            self.breaker.threshold(),
                            error.code(),
                            error.details()
                        )));
                    }
                    return failed(&row, attempts, &error, None);
                }
                Disposition::Uncertain => {
                    self.note_systemic(&error);
                    self.stats.uncertain.fetch_add(1, Ordering::Relaxed);
                    return uncertain(&row, attempts, &error);
                }
                Disposition::Retry => {
                    failures += 1;
                    if self.note_systemic(&error) {
                        return self.release(&row, attempts);
                    }
                    if failures >= self.max_attempts {
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        return failed(
                            &row,
                            attempts,
                            &error,
                            Some(format!(
                                "gave up after {failures} {}: {}",
                                if failures == 1 { "attempt" } else { "attempts" },
                                error.details()
                            )),
                        );
                    }
                }
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            let delay = backoff.next_delay(retry_after);
            tracing::debug!(
                row = row.row,
                attempt = attempts,
                code = error.code(),
                delay_ms = delay.as_millis() as u64,
                "retrying after a transient failure"
            );
            tokio::select! {
                biased;
                _ = self.stop.stopped() => return self.release(&row, attempts),
                _ = tokio::time::sleep(delay) => {}
            }
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

/// The stored code and details of a failure; `details` replaces the error's own.
fn failure(error: &ApiError, details: Option<String>) -> (String, String) {
    (
        error.code().to_owned(),
        details.unwrap_or_else(|| error.details()),
    )
}

fn failed(row: &Claimed, attempts: u32, error: &ApiError, details: Option<String>) -> RowOutcome {
    let (code, details) = failure(error, details);
    settle(row, attempts, Outcome::Failed { code, details })
}

fn uncertain(row: &Claimed, attempts: u32, error: &ApiError) -> RowOutcome {
    let (code, details) = failure(error, None);
    settle(row, attempts, Outcome::Uncertain { code, details })
}
