//! The state writer: the one thread that touches the state file during a run.
//!
//! Workers drop outcomes into a shared buffer without waiting and without
//! waking anyone; the writer commits them in batches — together with the next
//! claim when there is one (one commit, one fsync, for both), else when the
//! buffer reaches a batch or a few milliseconds have passed. So SQLite is never
//! the bottleneck, and a crash loses at most one batch of *outcomes*: those rows
//! stay `sending` and come back `uncertain`, never pending. A claim is committed
//! before it is handed out, so no request ever leaves for a row that is not yet
//! `sending`. If the disk fails or the state file is taken away (see
//! [`StateStore::check_still_there`]), the writer stops the run at once, writes
//! nothing more, and answers every later claim with the error; the outcomes
//! it could not record are counted, for the run's last word.
//!
//! The writer also speaks to the account's ledger ([`RunLedger`]): each claim
//! is screened inside the claim's transaction (opt-outs, the frequency cap,
//! the account's daily limit; the messages it admits are reserved in the
//! ledger before the claim commits), and each commit's outcomes settle
//! their reservations in the ledger with the next claim's screen (one ledger
//! transaction for both), or by the timer when no claim comes — never
//! between a claim and its answer, so settling never delays a send.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::shutdown::{Stop, StopReason};
use crate::ledger::Settled;
use crate::ledger::screen::RunLedger;
use crate::state::{Claimed, FileGone, Outcome, RowOutcome, StateError, StateStore};

/// Commit when this many outcomes are waiting...
const BATCH_ROWS: usize = 512;
/// ...or at the latest this long after the last commit.
const BATCH_WAIT: Duration = Duration::from_millis(20);

enum Command {
    Claim {
        max: usize,
        /// The zones whose rows may be claimed now; `None` for any.
        zones: Option<Vec<String>>,
        reply: oneshot::Sender<Result<ClaimBatch, String>>,
    },
    /// The outcome buffer is full: commit it now.
    Nudge,
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
    thread: JoinHandle<(Box<dyn StateStore>, Option<WriteFailure>)>,
}

/// Why the writer stopped writing, and what it could not record.
#[derive(Debug, Clone, Default)]
pub struct WriteFailure {
    pub message: String,
    /// Set when the state file was deleted, moved, replaced or truncated.
    pub gone: Option<FileGone>,
    /// Outcomes of requests that never reached the state file (rows given
    /// back unsent are not counted: nothing of them left).
    pub unrecorded: u64,
    /// The ledger, not the state, could not be written.
    pub ledger: bool,
}

/// Rows claimed for sending.
#[derive(Debug, Default)]
pub struct ClaimBatch {
    pub rows: Vec<Claimed>,
    /// The ledger held rows back: the account's daily limit is used up (the
    /// rows here, if any, were admitted before it was).
    pub held: bool,
}

/// What [`StateWriter::close`] hands back.
pub struct Closed {
    /// `None` only if the writer thread itself crashed.
    pub db: Option<Box<dyn StateStore>>,
    pub failure: Option<WriteFailure>,
}

/// A cheap, cloneable handle to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
    outcomes: Arc<Mutex<Vec<RowOutcome>>>,
}

/// The writer stopped: the state file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WriterError(pub String);

fn stopped() -> WriterError {
    WriterError("the state writer stopped".into())
}

impl StateWriter {
    /// Starts the writer; its first failure triggers `stop`, so nothing more
    /// is claimed from a state that cannot record it.
    pub fn spawn(db: Box<dyn StateStore>, stop: Stop) -> std::io::Result<StateWriter> {
        Self::spawn_with_ledger(db, stop, None)
    }

    /// [`StateWriter::spawn`], screening claims through `ledger` and
    /// settling what goes out in it.
    pub fn spawn_with_ledger(
        db: Box<dyn StateStore>,
        stop: Stop,
        ledger: Option<RunLedger>,
    ) -> std::io::Result<StateWriter> {
        let (tx, rx) = mpsc::channel();
        let outcomes = Arc::new(Mutex::new(Vec::with_capacity(BATCH_ROWS)));
        let buffer = outcomes.clone();
        let thread = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || writer_loop(db, rx, buffer, stop, ledger))?;
        Ok(StateWriter {
            handle: WriterHandle { tx, outcomes },
            thread,
        })
    }

    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Commits what is left and hands the database back. Every other handle
    /// must be dropped first, or this waits for them.
    pub async fn close(self) -> Closed {
        drop(self.handle);
        let thread = self.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        match joined {
            Ok(Ok((db, failure))) => Closed {
                db: Some(db),
                failure,
            },
            // The writer has no code that panics on data; should it, the rows
            // it held stay `sending` and the next run makes them uncertain.
            Ok(Err(_)) | Err(_) => Closed {
                db: None,
                failure: Some(WriteFailure {
                    message: "the state writer stopped unexpectedly".into(),
                    gone: None,
                    unrecorded: 0,
                    ledger: false,
                }),
            },
        }
    }
}

/// A claim asked for and not yet answered; see [`WriterHandle::request_claim`].
pub struct PendingClaim(oneshot::Receiver<Result<ClaimBatch, String>>);

impl PendingClaim {
    pub async fn rows(self) -> Result<Vec<Claimed>, WriterError> {
        self.batch().await.map(|b| b.rows)
    }

    /// The rows, and whether the ledger held any back.
    pub async fn batch(self) -> Result<ClaimBatch, WriterError> {
        self.0.await.map_err(|_| stopped())?.map_err(WriterError)
    }
}

impl WriterHandle {
    /// Asks for up to `max` pending rows without waiting for them, so the
    /// next batch can be claimed while the current one is being sent. With
    /// `zones`, only rows planned in those zones (see
    /// [`StateStore::claim_only_zones`]).
    pub fn request_claim(
        &self,
        max: usize,
        zones: Option<Vec<String>>,
    ) -> Result<PendingClaim, WriterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Claim { max, zones, reply })?;
        Ok(PendingClaim(rx))
    }

    /// Claims up to `max` pending rows (committed as `sending` before returning).
    pub async fn claim(
        &self,
        max: usize,
        zones: Option<Vec<String>>,
    ) -> Result<ClaimBatch, WriterError> {
        self.request_claim(max, zones)?.batch().await
    }

    /// Queues an outcome for the next commit. Never blocks on the disk and
    /// wakes the writer only when a whole batch is waiting.
    pub fn record(&self, outcome: RowOutcome) -> Result<(), WriterError> {
        let waiting = {
            let mut queue = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
            queue.push(outcome);
            queue.len()
        };
        if waiting == BATCH_ROWS {
            self.send(Command::Nudge)?;
        }
        Ok(())
    }

    pub async fn sent_since(&self, since: DateTime<Utc>) -> Result<u64, WriterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::SentSince { since, reply })?;
        rx.await.map_err(|_| stopped())?.map_err(WriterError)
    }

    /// Commits everything queued so far.
    pub async fn flush(&self) -> Result<(), WriterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Flush { reply })?;
        rx.await.map_err(|_| stopped())?.map_err(WriterError)
    }

    fn send(&self, command: Command) -> Result<(), WriterError> {
        self.tx.send(command).map_err(|_| stopped())
    }
}

/// The writer's side: the database, the shared outcome buffer, and the first
/// error it met (after which it writes nothing more).
struct Writer {
    db: Box<dyn StateStore>,
    buffer: Arc<Mutex<Vec<RowOutcome>>>,
    /// Swapped with the shared buffer, so workers never wait on a commit.
    batch: Vec<RowOutcome>,
    failed: Option<WriteFailure>,
    stop: Stop,
    ledger: Option<RunLedger>,
    /// Rows handed out and not settled yet, by id: their phone and CSV row,
    /// which the ledger keys its entries by and outcomes do not carry.
    in_flight: HashMap<i64, (String, u64)>,
    /// How the last commit's messages ended, settled in the ledger once the
    /// claim is answered.
    to_ledger: Vec<(String, u64, Settled)>,
}

impl Writer {
    fn take_outcomes(&mut self) {
        let mut queue = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *queue, &mut self.batch);
    }

    /// Commits the waiting outcomes, and claims `max` rows in the same transaction.
    fn commit(&mut self, max: usize) -> Result<ClaimBatch, String> {
        self.take_outcomes();
        if let Some(failure) = &mut self.failed {
            failure.unrecorded += settled(&self.batch);
            self.batch.clear();
            return Err(failure.message.clone());
        }
        if self.batch.is_empty() && max == 0 {
            return Ok(ClaimBatch::default());
        }
        let started = Instant::now();
        // This batch's answers become settles before the claim: a row that
        // failed and is claimed again in this same transaction must have its
        // old reservation settled before the new one is made, not after.
        self.note_answers_for_ledger();
        let mut held = false;
        let result = match &mut self.ledger {
            Some(ledger) => {
                // The answers not yet settled ride with the claim's own
                // ledger transaction.
                let settles = &mut self.to_ledger;
                let result = self.db.record_and_claim_screened(
                    &self.batch,
                    max,
                    &mut |rows: &[Claimed]| ledger.screen(rows, settles),
                );
                held = ledger.take_held();
                result
            }
            None => self.db.record_and_claim(&self.batch, max),
        };
        if let Ok(claimed) = &result {
            self.note_claims_for_ledger(claimed);
        }
        tracing::debug!(
            recorded = self.batch.len(),
            claimed = result.as_ref().map_or(0, Vec::len),
            ms = started.elapsed().as_millis() as u64,
            "state committed"
        );
        let recorded = settled(&self.batch);
        self.batch.clear();
        result
            .map_err(|e| {
                let message = e.to_string();
                if matches!(e, StateError::LeaseLost { .. }) {
                    // Nothing more is claimed, but the outcomes of rows
                    // still in flight are recorded: each settles its own row.
                    tracing::warn!("{message}");
                    self.stop.trigger(StopReason::LeaseLost);
                    return message;
                }
                tracing::error!("cannot write the state: {e}");
                let gone = match e {
                    StateError::Gone { what, .. } => Some(what),
                    _ => None,
                };
                self.stop.trigger(StopReason::StateFailed(message.clone()));
                self.failed = Some(WriteFailure {
                    message: message.clone(),
                    gone,
                    // Even if the commit went through, it went to a file that is
                    // no longer the state: these outcomes are not in it.
                    unrecorded: recorded,
                    ledger: false,
                });
                message
            })
            .map(|rows| ClaimBatch { rows, held })
    }

    /// How the batch's messages ended, queued for the ledger.
    fn note_answers_for_ledger(&mut self) {
        if !self.ledger.as_ref().is_some_and(RunLedger::records) {
            return;
        }
        for o in &self.batch {
            let Some((phone, row)) = self.in_flight.remove(&o.id) else {
                continue;
            };
            let settled = match &o.outcome {
                Outcome::Sent { message_id } => Settled::Sent {
                    message_id: Some(message_id.clone()),
                    at: o.at,
                },
                Outcome::Uncertain { .. } => Settled::Uncertain { at: o.at },
                Outcome::Failed { .. } | Outcome::Released => Settled::NotSent,
            };
            self.to_ledger.push((phone, row, settled));
        }
    }

    /// After a commit: the new claims remembered (their answers carry only the row id).
    fn note_claims_for_ledger(&mut self, claimed: &[Claimed]) {
        if !self.ledger.as_ref().is_some_and(RunLedger::records) {
            return;
        }
        for c in claimed {
            self.in_flight.insert(c.id, (c.phone.clone(), c.row));
        }
    }

    /// Settles the last commit's messages in the ledger in one transaction.
    ///
    /// If that fails the run stops, as for a state failure: the state already
    /// holds these outcomes (it is the campaign's truth), but a ledger that
    /// misses messages would let a frequency cap or an account limit send
    /// someone more than they should get, so no further message leaves
    /// while the ledger cannot vouch for them.
    fn flush_ledger(&mut self) {
        if self.to_ledger.is_empty() || self.failed.is_some() {
            self.to_ledger.clear();
            return;
        }
        let Some(ledger) = &mut self.ledger else {
            return;
        };
        if let Err(e) = ledger.settle(&self.to_ledger) {
            let message = format!(
                "{e} ({} messages sent by this run are in the state file but not in the ledger)",
                self.to_ledger.len()
            );
            tracing::error!("cannot write the ledger: {message}");
            self.stop.trigger(StopReason::StateFailed(message.clone()));
            self.failed = Some(WriteFailure {
                message,
                gone: None,
                unrecorded: 0,
                ledger: true,
            });
        }
        self.to_ledger.clear();
    }

    /// At the end of the run: rows still out when the writer closes were cut
    /// off in flight; the run marks them uncertain, and so does the ledger.
    fn close_ledger(&mut self) {
        if self.failed.is_some() {
            return;
        }
        if self.ledger.as_ref().is_some_and(RunLedger::records) {
            let now = Utc::now();
            for (_, (phone, row)) in self.in_flight.drain() {
                self.to_ledger
                    .push((phone, row, Settled::Uncertain { at: now }));
            }
        }
        self.flush_ledger();
    }
}

/// Outcomes of rows that went out (not the ones given back unsent).
fn settled(batch: &[RowOutcome]) -> u64 {
    batch
        .iter()
        .filter(|o| o.outcome != Outcome::Released)
        .count() as u64
}

fn writer_loop(
    db: Box<dyn StateStore>,
    rx: mpsc::Receiver<Command>,
    buffer: Arc<Mutex<Vec<RowOutcome>>>,
    stop: Stop,
    ledger: Option<RunLedger>,
) -> (Box<dyn StateStore>, Option<WriteFailure>) {
    let mut writer = Writer {
        db,
        buffer,
        batch: Vec::with_capacity(BATCH_ROWS),
        failed: None,
        stop,
        ledger,
        in_flight: HashMap::new(),
        to_ledger: Vec::new(),
    };
    loop {
        match rx.recv_timeout(BATCH_WAIT) {
            Ok(Command::Claim { max, zones, reply }) => {
                writer.db.claim_only_zones(zones);
                // This commit's answers are settled in the ledger with the
                // next claim (or by the timer below), never before a reply.
                let _ = reply.send(writer.commit(max));
            }
            Ok(Command::Nudge) | Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = writer.commit(0);
                writer.flush_ledger();
            }
            Ok(Command::SentSince { since, reply }) => {
                let committed = writer.commit(0).map(|_| ());
                let answer =
                    committed.and_then(|()| writer.db.sent_since(since).map_err(|e| e.to_string()));
                let _ = reply.send(answer);
                writer.flush_ledger();
            }
            Ok(Command::Flush { reply }) => {
                let committed = writer.commit(0).map(|_| ());
                writer.flush_ledger();
                let _ = reply.send(committed);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = writer.commit(0);
                writer.close_ledger();
                return (writer.db, writer.failed);
            }
        }
    }
}
