//! The state writer: the one thread that touches the state file during a run.
//!
//! Workers hand it outcomes without waiting; it commits them in batches — by
//! count, and at the latest a few milliseconds after the first one arrived —
//! so SQLite is never the bottleneck and a crash loses at most one batch of
//! *outcomes* (those rows stay `sending` and come back `uncertain`, never
//! pending). Claims go through the same thread, committed before they are
//! handed out, so no request ever leaves for a row that is not yet `sending`.
//! If the disk fails, the writer remembers the error and answers every later
//! claim with it, which stops the run.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use crate::state::{Claimed, Outcome, StateDb, StateError};

/// Commit when this many outcomes are waiting...
const BATCH_ROWS: usize = 512;
/// ...or when the oldest has waited this long.
const BATCH_WAIT: Duration = Duration::from_millis(50);

enum Command {
    Claim {
        max: usize,
        reply: oneshot::Sender<Result<Vec<Claimed>, String>>,
    },
    Record(Outcome),
    SentSince {
        since: DateTime<Utc>,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// The writer thread and the way to talk to it.
pub struct StateWriter {
    handle: WriterHandle,
    thread: JoinHandle<(StateDb, Option<String>)>,
}

/// A cheap, cloneable sender to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
}

/// The writer stopped: the state file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WriterError(pub String);

impl StateWriter {
    pub fn spawn(db: StateDb) -> std::io::Result<StateWriter> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || writer_loop(db, rx))?;
        Ok(StateWriter {
            handle: WriterHandle { tx },
            thread,
        })
    }

    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Commits what is left and hands the database back. Every other handle
    /// must be dropped first, or this waits for them.
    pub async fn close(self) -> Result<StateDb, (StateDb, WriterError)> {
        drop(self.handle);
        let thread = self.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        match joined {
            Ok(Ok((db, None))) => Ok(db),
            Ok(Ok((db, Some(err)))) => Err((db, WriterError(err))),
            // The writer thread has no code that panics on data; if it did, the
            // process cannot continue meaningfully.
            Ok(Err(_)) | Err(_) => {
                eprintln!("error: the state writer thread crashed");
                std::process::exit(1)
            }
        }
    }
}

impl WriterHandle {
    /// Claims up to `max` pending rows (committed as `sending` before returning).
    pub async fn claim(&self, max: usize) -> Result<Vec<Claimed>, WriterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Claim { max, reply })?;
        rx.await
            .map_err(|_| WriterError("the state writer stopped".into()))?
            .map_err(WriterError)
    }

    /// Queues an outcome for the next batch commit. Never blocks.
    pub fn record(&self, outcome: Outcome) -> Result<(), WriterError> {
        self.send(Command::Record(outcome))
    }

    pub async fn sent_since(&self, since: DateTime<Utc>) -> Result<u64, WriterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::SentSince { since, reply })?;
        rx.await
            .map_err(|_| WriterError("the state writer stopped".into()))?
            .map_err(WriterError)
    }

    /// Commits everything queued so far.
    pub async fn flush(&self) -> Result<(), WriterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Flush { reply })?;
        rx.await
            .map_err(|_| WriterError("the state writer stopped".into()))?
            .map_err(WriterError)
    }

    fn send(&self, command: Command) -> Result<(), WriterError> {
        self.tx
            .send(command)
            .map_err(|_| WriterError("the state writer stopped".into()))
    }
}

fn writer_loop(mut db: StateDb, rx: mpsc::Receiver<Command>) -> (StateDb, Option<String>) {
    let mut pending: Vec<Outcome> = Vec::with_capacity(BATCH_ROWS);
    let mut oldest: Option<Instant> = None;
    let mut failed: Option<String> = None;

    let commit = |db: &mut StateDb, pending: &mut Vec<Outcome>, failed: &mut Option<String>| {
        if pending.is_empty() || failed.is_some() {
            pending.clear();
            return;
        }
        let started = Instant::now();
        match db.record(pending) {
            Ok(()) => tracing::debug!(
                rows = pending.len(),
                ms = started.elapsed().as_millis() as u64,
                "results committed"
            ),
            Err(e) => {
                tracing::error!("cannot record results: {e}");
                *failed = Some(e.to_string());
            }
        }
        pending.clear();
    };

    loop {
        let command = match oldest {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(since) => rx.recv_timeout(BATCH_WAIT.saturating_sub(since.elapsed())),
        };
        match command {
            Ok(Command::Record(outcome)) => {
                pending.push(outcome);
                oldest.get_or_insert_with(Instant::now);
                if pending.len() >= BATCH_ROWS {
                    commit(&mut db, &mut pending, &mut failed);
                    oldest = None;
                }
            }
            Ok(Command::Claim { max, reply }) => {
                // Results first, so a claim never races an outcome it could see.
                commit(&mut db, &mut pending, &mut failed);
                oldest = None;
                let result = match &failed {
                    Some(e) => Err(e.clone()),
                    None => {
                        let started = Instant::now();
                        let claimed = db.claim(max).map_err(|e: StateError| e.to_string());
                        tracing::debug!(
                            rows = claimed.as_ref().map_or(0, Vec::len),
                            ms = started.elapsed().as_millis() as u64,
                            "rows claimed"
                        );
                        claimed
                    }
                };
                let _ = reply.send(result);
            }
            Ok(Command::SentSince { since, reply }) => {
                commit(&mut db, &mut pending, &mut failed);
                oldest = None;
                let _ = reply.send(db.sent_since(since).map_err(|e| e.to_string()));
            }
            Ok(Command::Flush { reply }) => {
                commit(&mut db, &mut pending, &mut failed);
                oldest = None;
                let _ = reply.send(match &failed {
                    Some(e) => Err(e.clone()),
                    None => Ok(()),
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                commit(&mut db, &mut pending, &mut failed);
                oldest = None;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                commit(&mut db, &mut pending, &mut failed);
                return (db, failed);
            }
        }
    }
}
