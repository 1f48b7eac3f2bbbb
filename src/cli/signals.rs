//! Signals as schedulers and people send them: the first SIGINT or SIGTERM
//! asks the command to stop gracefully (stop claiming, let requests in flight
//! finish, record everything); a later one quits at once.
//!
//! A second signal within [`SAME_REQUEST`] of the first is the same request,
//! not an impatient operator: GNU `timeout` signals the process and then its
//! whole process group, and a terminal's Ctrl-C reaches every process of the
//! foreground group, so one request often arrives twice. This module is the
//! only place that listens for signals; the engine only hears the [`Stop`].

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::exit;
use super::output::say;
use convers8_campaign::engine::{Stop, StopReason};

/// Signals this close to the first one are the same request.
pub const SAME_REQUEST: Duration = Duration::from_secs(1);

/// Listens while it lives; dropping it stops listening.
pub struct SignalGuard(Option<JoinHandle<()>>);

impl Drop for SignalGuard {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// What a command tells the operator when a signal stops it.
#[derive(Debug, Clone, Copy)]
pub struct Words {
    /// Completes "stopping: …".
    pub stopping: &'static str,
    /// What quitting at once costs, e.g. "rows in flight then become uncertain".
    pub quit_costs: &'static str,
}

/// Triggers `stop` on the first SIGINT/SIGTERM and exits with code 130 on a
/// later one. Must be called inside the runtime; the handlers are installed
/// before it returns, so a signal right after it is not lost (a parent that
/// starts the sandbox and signals it at once must not kill it mid-answer).
pub fn stop_on_signals(stop: Stop, words: Words) -> SignalGuard {
    let Some(mut signals) = Signals::install() else {
        say!("warning: cannot listen for Ctrl-C/SIGTERM; they will end the process at once");
        return SignalGuard(None);
    };
    SignalGuard(Some(tokio::spawn(async move {
        signals.next().await;
        let first = Instant::now();
        stop.trigger(StopReason::Interrupted);
        say!(
            "stopping: {} (press Ctrl-C again after a second to quit at once; {})",
            words.stopping,
            words.quit_costs
        );
        loop {
            signals.next().await;
            if first.elapsed() >= SAME_REQUEST {
                say!("quitting at once");
                super::stderr::flush(std::time::Duration::from_millis(500));
                std::process::exit(i32::from(exit::INTERRUPTED));
            }
        }
    })))
}

/// SIGINT and SIGTERM as one stream.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Some(Signals {
                interrupt: signal(SignalKind::interrupt()).ok()?,
                terminate: signal(SignalKind::terminate()).ok()?,
            })
        }
        #[cfg(not(unix))]
        {
            Some(Signals {})
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
