//! The sandbox: a local Convers8 server that behaves like the real API — the
//! documents' endpoints and bodies, bearer auth, the business rules of
//! [`crate::api::rules`], a token-bucket rate limit — plus faults a test can
//! switch on (500s, dropped connections, slow answers, 429 storms), all
//! replayable from a seed. Tests, benchmarks and rehearsals talk to it over
//! real HTTP on loopback.
//!
//! This file owns the configuration and the lifecycle of a running server
//! ([`Sandbox::start`] … [`Sandbox::shutdown`]); the pieces live beside it:
//! [`routes`] (the HTTP surface), [`state`] (what the handlers share),
//! `ratelimit`, `faults`, `contacts`, `log` (the JSON-lines message log) and
//! `serve` (the per-connection loop that can drop a connection on purpose).
//! It must not learn about campaigns: it only answers requests.

mod contacts;
mod faults;
mod log;
mod ratelimit;
mod reply;
pub mod routes;
mod serve;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::model::MessageKind;

pub use routes::app;
pub use state::SandboxState;

/// How the sandbox behaves. `Default` is a well-behaved server: 80 messages/s,
/// no faults, the guide's two contacts.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The only key `Authorization: Bearer …` accepts.
    pub api_key: String,
    /// Messages per second across all send endpoints (a token bucket); 0 = unlimited.
    pub rate: f64,
    /// Bucket size; 0 means `max(1, rate)` rounded.
    pub burst: u32,
    /// Fixed delay before every API answer.
    pub latency: Duration,
    /// Extra uniform random delay in `0..jitter`.
    pub jitter: Duration,
    /// Probability a valid send is answered 500 `internal_error` (not recorded).
    pub fail_rate: f64,
    /// Probability a valid send's connection is closed without an answer (not recorded).
    pub drop_rate: f64,
    /// Probability a valid send is recorded, then answered only after `slow`.
    pub slow_rate: f64,
    pub slow: Duration,
    /// Periodic 429 storms: in every `throttle_every` period since start, the
    /// first `throttle_for` answers every send with 429.
    pub throttle_every: Option<Duration>,
    pub throttle_for: Duration,
    /// Seeds all randomness (faults, jitter, message ids) so a run can be replayed.
    pub seed: Option<u64>,
    /// Appends every accepted message as one JSON line.
    pub log: Option<PathBuf>,
    /// Start with the guide's two contacts.
    pub seed_contacts: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            api_key: "sandbox-key".into(),
            rate: 80.0,
            burst: 80,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            fail_rate: 0.0,
            drop_rate: 0.0,
            slow_rate: 0.0,
            slow: Duration::from_secs(10),
            throttle_every: None,
            throttle_for: Duration::from_secs(1),
            seed: None,
            log: None,
            seed_contacts: true,
        }
    }
}

impl SandboxConfig {
    /// The bucket size actually used: `burst`, or `max(1, rate)` when it is 0.
    pub fn effective_burst(&self) -> u32 {
        if self.burst > 0 {
            self.burst
        } else {
            // Saturating float-to-int cast: an absurd rate gives u32::MAX, not a wrap.
            self.rate.round().max(1.0) as u32
        }
    }
}

/// One accepted message, as `/_sandbox/messages` and the log file show it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RecordedMessage {
    /// 1-based order of acceptance.
    pub seq: u64,
    pub to: String,
    pub kind: MessageKind,
    pub message_id: String,
    /// RFC 3339, UTC, milliseconds.
    pub received_at: String,
    /// The request body as sent.
    pub body: serde_json::Value,
}

/// What the sandbox has answered so far, by outcome.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SandboxStats {
    pub accepted: u64,
    pub rate_limited: u64,
    pub unauthorized: u64,
    pub validation_errors: u64,
    pub not_found: u64,
    pub server_errors: u64,
    pub dropped: u64,
    pub slow: u64,
}

/// A running sandbox. Dropping it stops accepting connections; call
/// [`Sandbox::shutdown`] to also wait for answers in flight and flush the log.
pub struct Sandbox {
    addr: SocketAddr,
    state: SandboxState,
    shutdown: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

impl Sandbox {
    /// Binds `addr` (`127.0.0.1:0` picks a free port) and starts serving.
    /// The error names the address, so "address in use" is actionable.
    pub async fn start(config: SandboxConfig, addr: SocketAddr) -> std::io::Result<Sandbox> {
        let state = SandboxState::new(config)?;
        let listener = TcpListener::bind(addr).await.map_err(|err| {
            std::io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}"))
        })?;
        let addr = listener.local_addr()?;
        let (shutdown, signal) = watch::channel(false);
        let server = tokio::spawn(serve::serve(listener, app(state.clone()), signal));
        tracing::debug!(%addr, "sandbox listening");
        Ok(Sandbox {
            addr,
            state,
            shutdown,
            server: Some(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every accepted message so far, in acceptance order.
    pub fn messages(&self) -> Vec<RecordedMessage> {
        self.state.messages(None)
    }

    pub fn stats(&self) -> SandboxStats {
        self.state.stats()
    }

    pub fn state(&self) -> &SandboxState {
        &self.state
    }

    /// Stops accepting, lets answers in flight finish (at most a few seconds),
    /// then flushes the message log to disk.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(server) = self.server.take()
            && let Err(err) = server.await
        {
            tracing::warn!("sandbox server task ended abnormally: {err}");
        }
        let state = self.state.clone();
        // The log writer is a thread; waiting for it must not block the runtime.
        if let Err(err) = tokio::task::spawn_blocking(move || state.flush_log()).await {
            tracing::warn!("sandbox log flush did not finish: {err}");
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Without an explicit shutdown the accept loop would outlive its owner.
        self.shutdown.send_replace(true);
    }
}
