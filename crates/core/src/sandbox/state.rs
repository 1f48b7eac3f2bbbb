//! What every sandbox handler shares: the configuration, the hot path's one
//! lock (rate bucket, seeded RNG, recorded messages), the contact book, the
//! outcome counters and the log writer.
//!
//! The hot lock is held only for arithmetic and a `Vec::push`: parsing,
//! validation, JSON formatting and sleeping all happen outside it. Messages
//! are stored compactly (the raw body text, not a `serde_json::Value` tree)
//! because a benchmark records hundreds of thousands of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::contacts::ContactBook;
use super::faults::{Faults, Outcome};
use super::log::LogWriter;
use super::ratelimit::{Storms, TokenBucket, retry_after_secs};
use super::reply::ApiError;
use super::{RecordedMessage, SandboxConfig, SandboxStats};
use crate::api::model::{MessageKind, codes};

/// The shared state of one sandbox; cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct SandboxState(Arc<Shared>);

struct Shared {
    config: SandboxConfig,
    /// `Bearer <key>`, built once so auth is one comparison.
    bearer: String,
    faults: Faults,
    storms: Option<Storms>,
    hot: Mutex<Hot>,
    contacts: Mutex<ContactBook>,
    counters: Counters,
    log: Option<LogWriter>,
}

struct Hot {
    bucket: TokenBucket,
    rng: SmallRng,
    messages: Vec<Stored>,
}

struct Stored {
    to: Box<str>,
    kind: MessageKind,
    /// The random half of the message id; the other half is the `seq`.
    id_bits: u64,
    received_at: DateTime<Utc>,
    /// The request body as received; it parsed as JSON, so it parses again.
    body: Box<str>,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    rate_limited: AtomicU64,
    unauthorized: AtomicU64,
    validation_errors: AtomicU64,
    not_found: AtomicU64,
    server_errors: AtomicU64,
    dropped: AtomicU64,
    slow: AtomicU64,
}

/// The fate of one valid send, decided under the lock.
pub struct Decision {
    pub outcome: Outcome,
    pub jitter: Duration,
    /// Set when the message was recorded (delivered or slow).
    pub accepted: Option<Accepted>,
}

pub struct Accepted {
    pub seq: u64,
    pub message_id: String,
    pub received_at: DateTime<Utc>,
}

impl SandboxState {
    /// Builds the state; fails only if the log file cannot be opened.
    pub fn new(config: SandboxConfig) -> std::io::Result<SandboxState> {
        let now = Instant::now();
        let log = config.log.as_deref().map(LogWriter::open).transpose()?;
        let rng = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        let storms = config.throttle_every.map(|period| Storms {
            start: now,
            period,
            length: config.throttle_for,
        });
        let hot = Hot {
            bucket: TokenBucket::new(config.rate, config.effective_burst(), now),
            rng,
            messages: Vec::new(),
        };
        Ok(SandboxState(Arc::new(Shared {
            bearer: format!("Bearer {}", config.api_key),
            faults: Faults {
                fail_rate: config.fail_rate,
                drop_rate: config.drop_rate,
                slow_rate: config.slow_rate,
                jitter: config.jitter,
            },
            storms,
            hot: Mutex::new(hot),
            contacts: Mutex::new(ContactBook::new(config.seed_contacts)),
            counters: Counters::default(),
            log,
            config,
        })))
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.0.config
    }

    /// Checks `Authorization: Bearer <key>`. The details never echo a key.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "Authorization header missing; send 'Authorization: Bearer YOUR_API_KEY'",
            ));
        };
        let value = value.as_bytes();
        let expected = self.0.bearer.as_bytes();
        // The scheme is case-insensitive (RFC 7235), the key is not.
        let matches = value.len() == expected.len()
            && value[..7].eq_ignore_ascii_case(&expected[..7])
            && value[7..] == expected[7..];
        if matches {
            Ok(())
        } else if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
            Err(ApiError::unauthorized(
                "Authorization header is not 'Bearer YOUR_API_KEY'",
            ))
        } else {
            Err(ApiError::unauthorized("the API key is not valid"))
        }
    }

    /// The rate limit of the send endpoints: storms first, then the bucket.
    pub fn admit_send(&self) -> Result<(), ApiError> {
        let now = Instant::now();
        if let Some(left) = self.0.storms.and_then(|storms| storms.remaining(now)) {
            return Err(ApiError::rate_limited(
                retry_after_secs(left),
                format!(
                    "the sandbox is throttling every send for another {} ms",
                    left.as_millis()
                ),
            ));
        }
        let wait = self.hot().bucket.take(now);
        wait.map_err(|wait| {
            ApiError::rate_limited(
                retry_after_secs(wait),
                format!(
                    "more than {} messages per second (burst {}); retry after {} ms",
                    self.0.config.rate,
                    self.0.config.effective_burst(),
                    wait.as_millis().max(1)
                ),
            )
        })
    }

    /// Rolls the fate of a valid send and records it when it is delivered
    /// (or will be, slowly). Appends the log line after the lock is released.
    pub fn decide(
        &self,
        kind: MessageKind,
        to: &str,
        raw_body: &[u8],
        body: &serde_json::Value,
    ) -> Decision {
        // Copies happen before the lock, so it is held for arithmetic and a push.
        let stored_to = Box::from(to);
        let stored_body = match std::str::from_utf8(raw_body) {
            Ok(text) => Box::from(text),
            Err(_) => body.to_string().into_boxed_str(),
        };
        let mut hot = self.hot();
        let roll = self.0.faults.roll(&mut hot.rng);
        if matches!(roll.outcome, Outcome::Fail | Outcome::Drop) {
            return Decision {
                outcome: roll.outcome,
                jitter: roll.jitter,
                accepted: None,
            };
        }
        let seq = hot.messages.len() as u64 + 1;
        let received_at = Utc::now();
        hot.messages.push(Stored {
            to: stored_to,
            kind,
            id_bits: roll.id_bits,
            received_at,
            body: stored_body,
        });
        drop(hot);
        let message_id = message_id(roll.id_bits, seq);
        self.0.counters.accepted.fetch_add(1, Ordering::Relaxed);

        if let Some(log) = &self.0.log {
            let line = LogLine {
                seq,
                to,
                kind,
                message_id: &message_id,
                received_at: rfc3339(received_at),
                body,
            };
            match serde_json::to_string(&line) {
                Ok(line) => log.append(line),
                Err(err) => tracing::warn!("cannot format sandbox log line {seq}: {err}"),
            }
        }
        Decision {
            outcome: roll.outcome,
            jitter: roll.jitter,
            accepted: Some(Accepted {
                seq,
                message_id,
                received_at,
            }),
        }
    }

    /// The configured latency plus `jitter`, slept outside every lock.
    pub async fn pause(&self, jitter: Duration) {
        let delay = self.0.config.latency + jitter;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// The pause for answers that never reach the seeded RNG (refusals,
    /// contacts): their jitter comes from the thread's RNG, so they cannot
    /// shift the seeded sequence of faults.
    pub async fn pause_unseeded(&self) {
        let jitter = self.0.config.jitter;
        let jitter = if jitter.is_zero() {
            jitter
        } else {
            jitter.mul_f64(rand::rng().random::<f64>())
        };
        self.pause(jitter).await;
    }

    pub fn slow_delay(&self) -> Duration {
        self.0.config.slow
    }

    /// Counts a refusal under its code.
    pub fn note_error(&self, error: &ApiError) {
        let c = &self.0.counters;
        let counter = match error.code {
            codes::UNAUTHORIZED => &c.unauthorized,
            codes::RATE_LIMIT_EXCEEDED => &c.rate_limited,
            codes::VALIDATION_ERROR => &c.validation_errors,
            codes::NOT_FOUND => &c.not_found,
            codes::INTERNAL_ERROR => &c.server_errors,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn note_dropped(&self) {
        self.0.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn note_slow(&self) {
        self.0.counters.slow.fetch_add(1, Ordering::Relaxed);
    }

    /// The recorded messages in `seq` order, optionally only those to one number.
    pub fn messages(&self, to: Option<&str>) -> Vec<RecordedMessage> {
        let hot = self.hot();
        hot.messages
            .iter()
            .enumerate()
            .filter(|(_, m)| to.is_none_or(|to| *m.to == *to))
            .map(|(i, m)| RecordedMessage {
                seq: i as u64 + 1,
                to: m.to.to_string(),
                kind: m.kind,
                message_id: message_id(m.id_bits, i as u64 + 1),
                received_at: rfc3339(m.received_at),
                // It was parsed once before being stored; Null would mean memory corruption.
                body: serde_json::from_str(&m.body).unwrap_or(serde_json::Value::Null),
            })
            .collect()
    }

    pub fn stats(&self) -> SandboxStats {
        let c = &self.0.counters;
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        SandboxStats {
            accepted: get(&c.accepted),
            rate_limited: get(&c.rate_limited),
            unauthorized: get(&c.unauthorized),
            validation_errors: get(&c.validation_errors),
            not_found: get(&c.not_found),
            server_errors: get(&c.server_errors),
            dropped: get(&c.dropped),
            slow: get(&c.slow),
        }
    }

    pub fn contacts(&self) -> MutexGuard<'_, ContactBook> {
        // A handler that panicked mid-update leaves plain data behind; keep serving.
        self.0
            .contacts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Blocks until every logged line is on disk.
    pub fn flush_log(&self) {
        if let Some(log) = &self.0.log {
            log.flush();
        }
    }

    fn hot(&self) -> MutexGuard<'_, Hot> {
        self.0
            .hot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A log line: the same fields as [`RecordedMessage`], borrowed.
#[derive(Serialize)]
struct LogLine<'a> {
    seq: u64,
    to: &'a str,
    kind: MessageKind,
    message_id: &'a str,
    received_at: String,
    body: &'a serde_json::Value,
}

/// `wamid.` and 24 hex digits: 16 random, then 8 of the sequence, so ids
/// never repeat within a run even if the random half did.
fn message_id(id_bits: u64, seq: u64) -> String {
    format!("wamid.{id_bits:016x}{:08x}", seq & 0xffff_ffff)
}

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}
