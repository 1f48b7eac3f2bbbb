//! One API request until it has a final answer: the one retry loop, shared
//! by the run's workers, `contacts import` and `send-test`.
//!
//! The caller hands over a closure that makes one request. This module waits
//! for the shared [`Pace`], calls, and acts on the failure's [`Disposition`]:
//! a rate limit slows the pace, waits at least the server's `Retry-After` and
//! tries again without spending the attempt budget (but gives up after
//! `rate_limit_retries` of them, so a server that only ever says 429 cannot
//! hold a call forever); a retryable failure (5xx, connection refused) waits
//! with backoff and tries again until `max_attempts` requests failed; a
//! rejection, a rejected key, or an answer lost after sending ends the call
//! at once. The last is never retried: the API has no idempotency key, so a
//! second request could be a second message or contact. A [`Stop`] heard
//! before a request leaves ends the call with nothing (more) sent; a request
//! already on the wire is never cut off here.
//!
//! What an answer means for the caller's bookkeeping (counters, the circuit
//! breaker, a row's state) stays with the caller: it hears each step through
//! [`CallEvents`] and gets back a [`Called`] saying how the call ended.

use std::future::Future;
use std::time::Duration;

use super::pace::Pace;
use super::retry::BackoffPolicy;
use super::shutdown::{Stop, StopReason};
use crate::api::{ApiError, Disposition};
use crate::state::SendGate;

/// How many `rate_limit_exceeded` answers one request may get before it is
/// failed: generous, since the pace adapts, but finite so a server that only
/// ever says 429 cannot keep a run alive forever.
pub const RATE_LIMIT_RETRIES: u32 = 100;

/// How to call: the shared pace and stop, and the retry budget.
#[derive(Debug, Clone, Copy)]
pub struct CallPolicy<'a> {
    /// Waited on before every request, so all callers together keep one rate.
    pub pace: &'a Pace,
    pub backoff: BackoffPolicy,
    /// Requests that may fail with a retryable error before the call gives up.
    pub max_attempts: u32,
    /// Rate-limit answers tolerated on top of `max_attempts`.
    pub rate_limit_retries: u32,
    /// Heard before each request and during each wait.
    pub stop: &'a Stop,
    /// Checked just before each request leaves, when other runners may take
    /// this one's rows over: once it is shut, nothing more is sent.
    pub gate: Option<&'a SendGate>,
}

impl<'a> CallPolicy<'a> {
    /// A policy with the engine's [`RATE_LIMIT_RETRIES`].
    pub fn new(
        pace: &'a Pace,
        stop: &'a Stop,
        backoff: BackoffPolicy,
        max_attempts: u32,
    ) -> CallPolicy<'a> {
        CallPolicy {
            pace,
            backoff,
            max_attempts,
            rate_limit_retries: RATE_LIMIT_RETRIES,
            stop,
            gate: None,
        }
    }
}

/// How a call ended, and after how many requests.
#[derive(Debug)]
pub struct Called<T> {
    pub answer: Answer<T>,
    /// Requests made (0 when a stop came before the first).
    pub attempts: u32,
}

/// The final answer of a call.
#[derive(Debug)]
pub enum Answer<T> {
    /// The API accepted the request.
    Answered(T),
    /// Failed for good; nothing was accepted.
    Failed(Failure),
    /// No usable answer after the request may have reached the API (a
    /// timeout after sending, a gateway's 502/504 page, an unreadable
    /// success): it may have taken effect, so it was not retried.
    MaybeTookEffect(ApiError),
    /// The API rejected the key, or this client refused the server's
    /// certificate: nothing was accepted, and every other request would be
    /// refused the same way.
    Refused(ApiError),
    /// Not sent (or not sent again): a stop came first, or the caller's
    /// [`CallEvents::keep_trying`] said to give up. Nothing took effect.
    /// `last_error` is the failure the call was waiting to retry, if any.
    NotSent { last_error: Option<ApiError> },
}

/// A request that failed for good, and why no more were made.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The last answer.
    pub error: ApiError,
    pub gave_up: GaveUp,
}

/// Why a call stopped trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// The API refused this request as written (validation, not found): it
    /// will never succeed, so it was not retried.
    Rejected,
    /// Every one of `max_attempts` requests failed with a retryable error.
    AttemptsSpent { failures: u32 },
    /// Still rate limited after `rate_limit_retries` retries.
    StillRateLimited { tries: u32 },
}

impl Failure {
    /// What to record about it: the server's details for a rejection, else
    /// why retrying stopped.
    pub fn details(&self) -> String {
        match self.gave_up {
            GaveUp::Rejected => self.error.details(),
            GaveUp::AttemptsSpent { failures } => {
                format!(
                    "gave up after {failures} {}: {}",
                    if failures == 1 { "attempt" } else { "attempts" },
                    self.error.details()
                )
            }
            GaveUp::StillRateLimited { tries } => {
                format!("still rate limited after {tries} tries")
            }
        }
    }
}

/// What a caller hears while a call is under way, for counters and the
/// circuit breaker. Every method has a do-nothing default; `()` hears nothing.
pub trait CallEvents {
    /// A request is about to leave (the pace allowed it).
    fn on_request(&self) {}
    /// The server answered `rate_limit_exceeded`; the pace has been told.
    fn on_rate_limited(&self, _error: &ApiError) {}
    /// A retryable failure, heard before the attempt budget is checked.
    /// Returning false ends the call at once as [`Answer::NotSent`] (the
    /// engine does when this failure tripped its circuit breaker).
    fn keep_trying(&self, _error: &ApiError) -> bool {
        true
    }
    /// The call waits `delay` after `attempts` requests, then tries again.
    fn on_backoff(&self, _attempts: u32, _error: &ApiError, _delay: Duration) {}
}

impl CallEvents for () {}

/// Calls `request` until it has a final answer (see the module docs).
pub async fn call_until_answered<T, E, F, Fut>(
    policy: &CallPolicy<'_>,
    events: &E,
    mut request: F,
) -> Called<T>
where
    E: CallEvents + ?Sized,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let stop = policy.stop;
    let mut attempts = 0u32;
    let mut failures = 0u32;
    let mut rate_limited = 0u32;
    let mut last_error: Option<ApiError> = None;
    let mut backoff = policy.backoff.start();
    let ended = |answer, attempts| Called { answer, attempts };
    loop {
        // A stop between attempts: nothing of this request is on the wire.
        if stop.is_stopping() {
            return ended(Answer::NotSent { last_error }, attempts);
        }
        tokio::select! {
            biased;
            _ = stop.stopped() => return ended(Answer::NotSent { last_error }, attempts),
            _ = policy.pace.wait() => {}
        }
        // The pace may have waited past the lease this runner holds its row
        // by: once the gate shuts, the row is another runner's to settle.
        if policy.gate.is_some_and(|gate| !gate.may_send()) {
            stop.trigger(StopReason::LeaseLost);
            return ended(Answer::NotSent { last_error }, attempts);
        }
        attempts += 1;
        events.on_request();
        let error = match request().await {
            Ok(value) => {
                policy.pace.on_accepted();
                return ended(Answer::Answered(value), attempts);
            }
            Err(error) => error,
        };
        let retry_after = match &error {
            ApiError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        };
        match error.disposition() {
            Disposition::RateLimited => {
                policy.pace.on_rate_limited(retry_after);
                events.on_rate_limited(&error);
                rate_limited += 1;
                if rate_limited > policy.rate_limit_retries {
                    let gave_up = GaveUp::StillRateLimited {
                        tries: rate_limited,
                    };
                    return ended(Answer::Failed(Failure { error, gave_up }), attempts);
                }
            }
            Disposition::StopRun => return ended(Answer::Refused(error), attempts),
            Disposition::Permanent => {
                let gave_up = GaveUp::Rejected;
                return ended(Answer::Failed(Failure { error, gave_up }), attempts);
            }
            Disposition::Uncertain => return ended(Answer::MaybeTookEffect(error), attempts),
            Disposition::Retry => {
                failures += 1;
                if !events.keep_trying(&error) {
                    let last_error = Some(error);
                    return ended(Answer::NotSent { last_error }, attempts);
                }
                if failures >= policy.max_attempts {
                    let gave_up = GaveUp::AttemptsSpent { failures };
                    return ended(Answer::Failed(Failure { error, gave_up }), attempts);
                }
            }
        }
        let delay = backoff.next_delay(retry_after);
        events.on_backoff(attempts, &error, delay);
        last_error = Some(error);
        tokio::select! {
            biased;
            _ = stop.stopped() => return ended(Answer::NotSent { last_error }, attempts),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::time::Instant;

    use super::*;
    use crate::engine::shutdown::StopReason;

    fn rate_limited(secs: u64) -> ApiError {
        ApiError::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
            message: "slow down".into(),
        }
    }

    fn server_error() -> ApiError {
        ApiError::Server {
            status: 503,
            code: None,
            message: "busy".into(),
        }
    }

    fn no_answer() -> ApiError {
        ApiError::MaybeDelivered {
            url: "http://127.0.0.1:1/contacts".into(),
            reason: "timed out".into(),
        }
    }

    /// Answers from a script, one per request, and counts the requests.
    struct Script {
        answers: Mutex<VecDeque<Result<&'static str, ApiError>>>,
        requests: AtomicU32,
    }

    impl Script {
        fn new(answers: Vec<Result<&'static str, ApiError>>) -> Script {
            Script {
                answers: Mutex::new(answers.into()),
                requests: AtomicU32::new(0),
            }
        }

        async fn request(&self) -> Result<&'static str, ApiError> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            let next = self.answers.lock().expect("script lock").pop_front();
            next.expect("the script has an answer for every request")
        }
    }

    /// Counts what the events hear.
    #[derive(Default)]
    struct Heard {
        requests: AtomicU32,
        rate_limited: AtomicU32,
        backoffs: AtomicU32,
    }

    impl CallEvents for Heard {
        fn on_request(&self) {
            self.requests.fetch_add(1, Ordering::SeqCst);
        }
        fn on_rate_limited(&self, _error: &ApiError) {
            self.rate_limited.fetch_add(1, Ordering::SeqCst);
        }
        fn on_backoff(&self, _attempts: u32, _error: &ApiError, _delay: Duration) {
            self.backoffs.fetch_add(1, Ordering::SeqCst);
        }
    }

    const FAST: BackoffPolicy = BackoffPolicy {
        first: Duration::from_millis(10),
        max: Duration::from_millis(40),
        factor: 2.0,
    };

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_waits_out_retry_after_and_does_not_spend_the_budget() {
        let (pace, stop) = (Pace::new(None), Stop::new());
        // One attempt allowed: the two 429s must not count against it.
        let policy = CallPolicy::new(&pace, &stop, FAST, 1);
        let script = Script::new(vec![Err(rate_limited(3)), Err(rate_limited(2)), Ok("made")]);
        let heard = Heard::default();
        let started = Instant::now();
        let called = call_until_answered(&policy, &heard, || script.request()).await;
        assert!(
            matches!(called.answer, Answer::Answered("made")),
            "{called:?}"
        );
        assert_eq!(called.attempts, 3);
        assert!(
            started.elapsed() >= Duration::from_secs(5),
            "Retry-After is a floor under each wait: {:?}",
            started.elapsed()
        );
        assert_eq!(heard.requests.load(Ordering::SeqCst), 3);
        assert_eq!(heard.rate_limited.load(Ordering::SeqCst), 2);
        assert_eq!(heard.backoffs.load(Ordering::SeqCst), 2);
        assert_eq!(pace.rate_limited_count(), 2, "the pace heard each 429");
    }

    #[tokio::test(start_paused = true)]
    async fn too_many_rate_limits_fail_the_call() {
        let (pace, stop) = (Pace::new(None), Stop::new());
        let policy = CallPolicy {
            rate_limit_retries: 2,
            ..CallPolicy::new(&pace, &stop, FAST, 5)
        };
        let script = Script::new((0..3).map(|_| Err(rate_limited(0))).collect());
        let called = call_until_answered(&policy, &(), || script.request()).await;
        let Answer::Failed(failure) = called.answer else {
            panic!("{:?}", called.answer)
        };
        assert_eq!(failure.gave_up, GaveUp::StillRateLimited { tries: 3 });
        assert_eq!(failure.details(), "still rate limited after 3 tries");
        assert_eq!(called.attempts, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_are_retried_until_the_attempts_are_spent() {
        let (pace, stop) = (Pace::new(None), Stop::new());
        let policy = CallPolicy::new(&pace, &stop, FAST, 3);
        let script = Script::new((0..3).map(|_| Err(server_error())).collect());
        let heard = Heard::default();
        let called = call_until_answered(&policy, &heard, || script.request()).await;
        let Answer::Failed(failure) = called.answer else {
            panic!("{:?}", called.answer)
        };
        assert_eq!(failure.gave_up, GaveUp::AttemptsSpent { failures: 3 });
        assert_eq!(failure.error.code(), "server_error");
        assert_eq!(failure.details(), "gave up after 3 attempts: busy");
        assert_eq!(called.attempts, 3);
        assert_eq!(script.requests.load(Ordering::SeqCst), 3);
        assert_eq!(
            heard.backoffs.load(Ordering::SeqCst),
            2,
            "no wait after the last"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_backoff_returns_not_sent() {
        let (pace, stop) = (Pace::new(None), Stop::new());
        let slow = BackoffPolicy {
            first: Duration::from_secs(60),
            max: Duration::from_secs(60),
            factor: 1.0,
        };
        let policy = CallPolicy::new(&pace, &stop, slow, 5);
        // A 429 asking for a minute: the call is surely waiting when the stop comes.
        let script = Script::new(vec![Err(rate_limited(60))]);
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stopper.trigger(StopReason::Interrupted);
        });
        let started = Instant::now();
        let called = call_until_answered(&policy, &(), || script.request()).await;
        let Answer::NotSent { last_error } = called.answer else {
            panic!("{:?}", called.answer)
        };
        assert_eq!(
            last_error.map(|e| e.code().to_owned()).as_deref(),
            Some("rate_limit_exceeded")
        );
        assert_eq!(called.attempts, 1);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the stop cut the wait short"
        );
        assert_eq!(script.requests.load(Ordering::SeqCst), 1, "not sent again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_before_the_first_request_sends_nothing() {
        let (pace, stop) = (Pace::new(None), Stop::new());
        stop.trigger(StopReason::Interrupted);
        let policy = CallPolicy::new(&pace, &stop, FAST, 5);
        let script = Script::new(vec![]);
        let called = call_until_answered(&policy, &(), || script.request()).await;
        assert!(
            matches!(called.answer, Answer::NotSent { last_error: None }),
            "{called:?}"
        );
        assert_eq!(called.attempts, 0);
        assert_eq!(script.requests.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_is_returned_at_once_and_never_retried() {
        let (pace, stop) = (Pace::new(None), Stop::new());
        let policy = CallPolicy::new(&pace, &stop, FAST, 5);
        let script = Script::new(vec![Err(no_answer())]);
        let heard = Heard::default();
        let started = Instant::now();
        let called = call_until_answered(&policy, &heard, || script.request()).await;
        assert!(
            matches!(
                called.answer,
                Answer::MaybeTookEffect(ApiError::MaybeDelivered { .. })
            ),
            "{called:?}"
        );
        assert_eq!(called.attempts, 1);
        assert_eq!(started.elapsed(), Duration::ZERO, "no wait");
        assert_eq!(heard.backoffs.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_and_a_rejected_key_end_the_call_at_once() {
        let (pace, stop) = (Pace::new(None), Stop::new());
        let policy = CallPolicy::new(&pace, &stop, FAST, 5);
        let script = Script::new(vec![
            Err(ApiError::Validation {
                message: "Validation failed".into(),
                details: Some("phone_number: blocked".into()),
            }),
            Err(ApiError::Unauthorized {
                message: "Invalid API key".into(),
            }),
        ]);
        let called = call_until_answered(&policy, &(), || script.request()).await;
        let Answer::Failed(failure) = called.answer else {
            panic!("{:?}", called.answer)
        };
        assert_eq!(failure.gave_up, GaveUp::Rejected);
        assert_eq!(failure.details(), "phone_number: blocked");
        let called = call_until_answered(&policy, &(), || script.request()).await;
        assert!(matches!(called.answer, Answer::Refused(_)), "{called:?}");
        assert_eq!(called.attempts, 1);
        assert!(!stop.is_stopping(), "stopping is the caller's decision");
    }

    #[tokio::test(start_paused = true)]
    async fn events_can_end_retrying_as_not_sent() {
        struct Tripped;
        impl CallEvents for Tripped {
            fn keep_trying(&self, _error: &ApiError) -> bool {
                false
            }
        }
        let (pace, stop) = (Pace::new(None), Stop::new());
        let policy = CallPolicy::new(&pace, &stop, FAST, 5);
        let script = Script::new(vec![Err(server_error())]);
        let called = call_until_answered(&policy, &Tripped, || script.request()).await;
        assert!(
            matches!(
                called.answer,
                Answer::NotSent {
                    last_error: Some(ApiError::Server { .. })
                }
            ),
            "{called:?}"
        );
        assert_eq!(called.attempts, 1);
    }
}
