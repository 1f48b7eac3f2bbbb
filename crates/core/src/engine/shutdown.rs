//! One stop signal that every task of a run hears.
//!
//! Whoever decides the run must end — Ctrl-C, SIGTERM, `--max-runtime`, the
//! send window closing, a rejected key, the circuit breaker — calls
//! [`Stop::trigger`] with a reason; the first reason wins and is what the run
//! reports. The feeder stops claiming, workers waiting to retry give their row
//! back, and requests already on the wire are allowed to finish.

use std::sync::Arc;

use tokio::sync::watch;

/// Why a run stopped before sending everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// SIGINT or SIGTERM.
    Interrupted,
    /// `--max-runtime` elapsed.
    MaxRuntime,
    /// The send window closed.
    WindowClosed,
    /// The API rejected the key.
    Unauthorized(String),
    /// This client refused the server's TLS certificate.
    CertificateRejected(String),
    /// Too many systemic failures in a row.
    Breaker(String),
    /// The state file could not be written.
    StateFailed(String),
    /// This runner lost its lease on a shared state (it could not renew it
    /// in time): its rows are another runner's to settle now.
    LeaseLost,
}

/// A cloneable stop signal.
#[derive(Debug, Clone)]
pub struct Stop {
    tx: Arc<watch::Sender<Option<StopReason>>>,
    rx: watch::Receiver<Option<StopReason>>,
}

impl Default for Stop {
    fn default() -> Self {
        Stop::new()
    }
}

impl Stop {
    pub fn new() -> Stop {
        let (tx, rx) = watch::channel(None);
        Stop {
            tx: Arc::new(tx),
            rx,
        }
    }

    /// A stop that triggers (as [`StopReason::Interrupted`]) when `shutdown`
    /// completes — the caller's own signal, mini-redis style:
    /// `Stop::when(tokio::signal::ctrl_c())`. Must be called inside a tokio
    /// runtime; the watching task ends with the future.
    pub fn when<F>(shutdown: F) -> Stop
    where
        F: std::future::Future + Send + 'static,
    {
        let stop = Stop::new();
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.trigger(StopReason::Interrupted);
        });
        stop
    }

    /// Asks every task to stop. Only the first reason is kept.
    pub fn trigger(&self, reason: StopReason) {
        self.tx.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    pub fn is_stopping(&self) -> bool {
        self.rx.borrow().is_some()
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.rx.borrow().clone()
    }

    /// Resolves once a stop has been triggered.
    pub async fn stopped(&self) {
        let mut rx = self.rx.clone();
        // An error means every sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(Option::is_some).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shutdown_future_stops_the_run() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = Stop::when(async move {
            let _ = rx.await;
        });
        assert!(!stop.is_stopping());
        tx.send(()).expect("send");
        stop.stopped().await;
        assert_eq!(stop.reason(), Some(StopReason::Interrupted));
    }

    #[tokio::test]
    async fn the_first_reason_wins_and_everyone_hears_it() {
        let stop = Stop::new();
        let listener = stop.clone();
        let waiter = tokio::spawn(async move { listener.stopped().await });
        stop.trigger(StopReason::MaxRuntime);
        stop.trigger(StopReason::Interrupted);
        waiter.await.expect("listener woke");
        assert_eq!(stop.reason(), Some(StopReason::MaxRuntime));
    }
}
