//! The one seam between the rest of the program and wherever a campaign's
//! state lives.
//!
//! [`StateRead`] is everything `status`, `report`, `preview` and `retry`'s
//! counts read; [`StateStore`] adds what a run writes: the plan (through
//! [`PlanRows`]), claims, outcomes and the run history. Both traits are
//! object-safe, so the engine and the commands hold a `Box<dyn StateStore>`
//! or a `&dyn StateRead` and never name SQLite. [`StateDb`] (one SQLite file
//! per campaign) and [`PgStore`] (campaigns in a PostgreSQL database, any
//! number of runners each) implement them; [`open_for_run`] and
//! [`open_for_reading`] are the only two places that decide which store a
//! location means.
//!
//! The contract a store keeps, whatever it is built on:
//! - a claim is durable before [`StateStore::record_and_claim`] returns, so
//!   no request leaves for a row the store does not show as `sending`;
//! - an outcome only settles a row that is still `sending` (a late answer
//!   never overwrites a row something else settled);
//! - a plan is written whole or not at all ([`PlanRows::commit`]);
//! - once the store cannot vouch for what it holds (its file deleted or
//!   replaced under a run), every call fails with [`StateError::Gone`].

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::location::StateLocation;
use super::pg::PgStore;
use super::reads::{AttemptsCount, ErrorStateCount};
use super::runner::{SendGate, SharedPace};
use super::{
    Claimed, Counts, EarlierMessage, Inserted, PlanInfo, PlannedRow, ProblemCode, RecipientRecord,
    RecipientState, RetrySelection, RowOutcome, RunRecord, RunnerRecord, StateDb, StateError,
    Suppression, Verdict,
};

/// What reading the state needs: nothing here writes, and a reader works
/// while a run is sending.
pub trait StateRead {
    /// Where the state is, as the operator named it (for messages).
    fn location(&self) -> &str;

    /// The stored plan, if the campaign has been planned.
    fn plan_info(&self) -> Result<Option<PlanInfo>, StateError>;

    /// How many rows are in each state.
    fn counts(&self) -> Result<Counts, StateError>;

    /// Whether anything may have left for the network from this state: a row
    /// sent, failed, uncertain or in flight, or one with an attempt on record.
    /// Until then the plan may still be made again.
    fn anything_sent(&self) -> Result<bool, StateError>;

    /// Messages sent at or after `since` (the daily limit's rolling window).
    /// Rows that became `uncertain` in that time count too: they may have
    /// been delivered, and a limit must not be exceeded on a guess.
    fn sent_since(&self, since: DateTime<Utc>) -> Result<u64, StateError>;

    /// The `k`-th oldest send time at or after `since` (1-based): when the
    /// rolling window frees its next slot.
    fn nth_sent_since(
        &self,
        since: DateTime<Utc>,
        k: u64,
    ) -> Result<Option<DateTime<Utc>>, StateError>;

    /// Error codes of failed, uncertain and invalid rows, most frequent first.
    fn error_counts(&self) -> Result<Vec<(String, u64)>, StateError>;

    /// How many rows a retry selection picks.
    fn count_for_retry(&self, selection: &RetrySelection) -> Result<u64, StateError>;

    /// Every recipient in row order, optionally only some states; `visit` is
    /// called per row so a report of a million rows is never held in memory.
    fn for_each_recipient(
        &self,
        states: &[RecipientState],
        visit: &mut dyn FnMut(RecipientRecord) -> std::io::Result<()>,
    ) -> Result<(), VisitError>;

    /// The phone and planned body of the latest row planned at a CSV row number.
    fn body_for_row(&self, row: u64) -> Result<Option<(String, String)>, StateError>;

    /// Up to `limit` rows in `state` with their planned bodies, in the order a
    /// run claims them: `(row, phone, body)`. For `preview`.
    fn planned_bodies(
        &self,
        state: RecipientState,
        limit: usize,
    ) -> Result<Vec<(u64, String, String)>, StateError>;

    /// The recipient most recently planned at a CSV row number, with its
    /// planned body when it has one (invalid and duplicate rows have none).
    fn recipient_at_row(
        &self,
        row: u64,
    ) -> Result<Option<(RecipientRecord, Option<String>)>, StateError>;

    /// The row planned for a phone (E.164), not counting its duplicates: how
    /// the ledger's reservation for that phone ended, after a crash.
    fn recipient_by_phone(&self, phone: &str) -> Result<Option<RecipientRecord>, StateError>;

    /// How many rows are in any of `states`, per planned zone (`None` for
    /// rows planned without one), most rows first: when the rows of a window
    /// in each recipient's own hours may go next.
    fn rows_by_zone(
        &self,
        states: &[RecipientState],
    ) -> Result<Vec<(Option<String>, u64)>, StateError>;

    /// The runners holding a live lease, when the store is shared by
    /// several (`None` for a store with one run at a time).
    fn live_runners(&self) -> Result<Option<Vec<RunnerRecord>>, StateError> {
        Ok(None)
    }

    /// The most recent runs, newest first.
    fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError>;

    /// How many runs the state records (a cron campaign may have thousands;
    /// a report lists the latest and says how many it left out).
    fn run_count(&self) -> Result<u64, StateError>;

    /// The first and last `sent_at` on record, or `None` before any send.
    fn sent_span(&self) -> Result<Option<(String, String)>, StateError>;

    /// Messages sent per bucket, in time order: rows grouped by the first
    /// `prefix_chars` characters of their `sent_at` (16 is the minute,
    /// `2026-03-04T14:05`; 13 the hour; 10 the day; see [`super::timestamp`]).
    /// Only buckets that hold a send are returned.
    fn sent_per_bucket(&self, prefix_chars: usize) -> Result<Vec<(String, u64)>, StateError>;

    /// How many rows made each number of attempts, per state, fewest
    /// attempts first. Rows that never reached the network (pending with no
    /// attempt, invalid, duplicate) are left out; a row that went out and was
    /// interrupted before any answer counts with its 0 attempts.
    fn attempts_by_state(&self) -> Result<Vec<AttemptsCount>, StateError>;

    /// Error codes of the rows that were not sent (failed, uncertain,
    /// invalid, duplicate) per state, most frequent first. Pending rows keep
    /// the code of an earlier failure after a retry; they are not counted.
    fn error_codes_by_state(&self) -> Result<Vec<ErrorStateCount>, StateError>;
}

/// What a run writes. A store is used from the state writer's thread, so it
/// must be `Send`.
pub trait StateStore: StateRead + Send {
    /// Fails with [`StateError::Gone`] once the store no longer holds what
    /// this run wrote (for a file: deleted, moved, replaced or truncated).
    /// Every write checks this itself; the engine also calls it while it
    /// waits for hours.
    fn check_still_there(&mut self) -> Result<(), StateError>;

    /// Saves what this handle still knows where the operator can restore it
    /// from, after [`StateError::Gone`]; returns where. A store that cannot
    /// lose its data under a run returns `Ok(None)`.
    fn rescue_copy(&self) -> Result<Option<PathBuf>, StateError>;

    /// Lets this handle's claims take the rows `selection` picks as well as
    /// pending ones, for as long as it is open. Held in the handle, never
    /// written: rows the run does not get to keep their state, so no later
    /// run resends them without being asked.
    fn resend_during_run(&mut self, selection: Option<RetrySelection>);

    /// Lets this handle's claims take only rows planned in these zones (IANA
    /// names, as [`PlannedRow::timezone`] stored them) until it is called
    /// again; `None` lifts the limit. For a window in each recipient's own
    /// hours: the run names the zones open now before every claim, and rows
    /// of the others stay `pending`. Held in the handle, never written.
    fn claim_only_zones(&mut self, zones: Option<Vec<String>>);

    /// Starts writing a plan in one transaction; nothing is visible until
    /// [`PlanRows::commit`], and dropping the writer undoes it.
    fn begin_plan(&mut self, mode: PlanWrite) -> Result<Box<dyn PlanRows + '_>, StateError>;

    /// Rows left `sending` by a run that died mid-flight may have been
    /// delivered: they become `uncertain`. Returns how many.
    fn mark_interrupted_uncertain(&mut self) -> Result<u64, StateError>;

    /// Records outcomes and claims up to `n` more rows (pending ones, in row
    /// order, and those [`StateStore::resend_during_run`] selected) in one
    /// transaction. The claim is durable before this returns.
    ///
    /// `screen` sees each group of rows about to be claimed and answers, per
    /// row, whether it may go (the opt-out list and the account's limits read
    /// at this moment): rows it suppresses become `suppressed` in the same
    /// transaction and more rows are claimed in their place; a row it holds
    /// back keeps its state and ends the claim. An error from the screen
    /// claims nothing.
    fn record_and_claim_screened(
        &mut self,
        outcomes: &[RowOutcome],
        n: usize,
        screen: &mut ClaimScreen<'_>,
    ) -> Result<Vec<Claimed>, StateError>;

    /// [`StateStore::record_and_claim_screened`] with nothing screened out.
    fn record_and_claim(
        &mut self,
        outcomes: &[RowOutcome],
        n: usize,
    ) -> Result<Vec<Claimed>, StateError> {
        self.record_and_claim_screened(outcomes, n, &mut |rows: &[Claimed]| {
            Ok(vec![Verdict::Send; rows.len()])
        })
    }

    /// The run has planned and recovered what the last one left: what
    /// follows (waiting for the send window, sending) needs no exclusive
    /// hold on setting the campaign up. A store shared by several runners
    /// lets the next one set up now; [`StateStore::start_run`] implies it.
    fn end_setup(&mut self) -> Result<(), StateError> {
        Ok(())
    }

    /// Records the start of a run; returns its id.
    fn start_run(&mut self) -> Result<i64, StateError>;

    /// The gate a run checks before each request, when other runners may
    /// take this one's rows over (a lease); `None` for a store with one runner.
    fn send_gate(&self) -> Option<SendGate> {
        None
    }

    /// The pace every runner of the campaign shares, when there may be
    /// several; `None` keeps the run's own.
    fn shared_pace(&self) -> Result<Option<Arc<dyn SharedPace>>, StateError> {
        Ok(None)
    }

    /// Records how a run ended and what it did.
    fn finish_run(
        &mut self,
        run_id: i64,
        end: &str,
        sent: u64,
        failed: u64,
        uncertain: u64,
    ) -> Result<(), StateError>;

    /// Marks up to `n` pending rows `sending` and commits, in row order.
    fn claim(&mut self, n: usize) -> Result<Vec<Claimed>, StateError> {
        self.record_and_claim(&[], n)
    }

    /// Writes a batch of outcomes in one transaction.
    fn record(&mut self, outcomes: &[RowOutcome]) -> Result<(), StateError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        self.record_and_claim(outcomes, 0).map(|_| ())
    }
}

/// Decides, for rows about to be claimed, which may go (one answer per row,
/// in order; `Err` says why it could not tell).
pub type ClaimScreen<'a> = dyn FnMut(&[Claimed]) -> Result<Vec<Verdict>, String> + Send + 'a;

/// How a new plan treats the rows already planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanWrite {
    /// The first plan of a state.
    Fresh,
    /// `--add-new-recipients`: rows whose phone is not planned yet are added
    /// as a new generation; the stored CSV hash is updated.
    Add,
    /// The old rows go and the new ones come. Only for a state from which
    /// nothing was ever sent ([`StateRead::anything_sent`]); the caller checks.
    Replace,
}

/// A plan being written: rows go in one at a time, and become visible all
/// together at [`PlanRows::commit`].
pub trait PlanRows {
    /// Plans one row; says what it became (a duplicate of an earlier phone,
    /// already planned in add mode, ...).
    fn insert(&mut self, row: &PlannedRow) -> Result<Inserted, StateError>;

    /// Marks the pending row of this plan with `earlier`'s phone as sent or
    /// uncertain by that earlier message; whether there was such a row.
    fn mark_messaged(&mut self, earlier: &EarlierMessage) -> Result<bool, StateError>;

    /// Writes the plan's record (its inputs' fingerprints and counts, known
    /// only after the last row) and makes everything visible at once.
    fn commit(self: Box<Self>, info: &PlanInfo) -> Result<(), StateError>;
}

/// What a plan writes for one row, decided alike by every store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlannedAs<'r> {
    pub state: RecipientState,
    pub body: Option<&'r str>,
    pub code: Option<&'static str>,
    pub details: Option<String>,
    pub inserted: Inserted,
}

/// Decides what becomes of `row` in a plan (`None`: in add mode, a row an
/// earlier pass planned, not planned again). The store answers two
/// questions about the rows planned before it, and earlier in this plan:
/// - `first_planned(phone)`: the CSV row and generation of the first row
///   with this phone that is not invalid or a duplicate;
/// - `planned_before(phone, csv_row)` (add mode, unusable rows): whether
///   an earlier pass planned it, by its phone when it has one, else by its
///   place (rows appended to a growing CSV keep their numbers).
pub(crate) fn plan_row<'r, E>(
    row: &'r PlannedRow,
    add_mode: bool,
    generation: i64,
    first_planned: impl FnOnce(&str) -> Result<Option<(u64, i64)>, E>,
    planned_before: impl FnOnce(Option<&str>, u64) -> Result<bool, E>,
) -> Result<Option<PlannedAs<'r>>, E> {
    let planned = match (&row.outcome, &row.phone) {
        (Ok(body), Some(phone)) => match first_planned(phone)? {
            Some((_, first_generation)) if add_mode && first_generation < generation => {
                return Ok(None);
            }
            Some((of_row, _)) => PlannedAs {
                state: RecipientState::Duplicate,
                body: None,
                code: Some(ProblemCode::Duplicate.as_str()),
                details: Some(format!("same phone as row {of_row}")),
                inserted: Inserted::Duplicate { of_row },
            },
            None => PlannedAs {
                state: RecipientState::Pending,
                body: Some(body.as_str()),
                code: None,
                details: None,
                inserted: Inserted::Pending,
            },
        },
        (Ok(_), None) => PlannedAs {
            state: RecipientState::Invalid,
            body: None,
            code: Some(ProblemCode::InvalidPhone.as_str()),
            details: Some("no phone".to_owned()),
            inserted: Inserted::Invalid,
        },
        (Err(problem), phone) => {
            // In add mode an unusable row is planned once, not again on
            // every pass.
            if add_mode && planned_before(phone.as_deref(), row.row)? {
                return Ok(None);
            }
            let state = problem.code.state();
            PlannedAs {
                state,
                body: None,
                code: Some(problem.code.as_str()),
                details: Some(problem.details.clone()),
                inserted: if state == RecipientState::Suppressed {
                    Inserted::Suppressed
                } else {
                    Inserted::Invalid
                },
            }
        }
    };
    Ok(Some(planned))
}

/// A batch of candidate rows as the claim's screen judged it (see
/// [`screen_batch`]).
pub(crate) struct Screened {
    /// The rows that may go, in the batch's order.
    pub send: Vec<Claimed>,
    /// The rows that must not, by id, with why.
    pub suppress: Vec<(i64, Suppression)>,
    /// A row was held back: the claim takes no later row.
    pub held: bool,
}

/// Asks the screen about `batch` and splits the rows by its verdicts, alike
/// for every store. A verdict missing for a row must not read as "send it":
/// a screen that answers for fewer rows than it was asked about is an error.
pub(crate) fn screen_batch(
    batch: Vec<Claimed>,
    screen: &mut ClaimScreen<'_>,
) -> Result<Screened, StateError> {
    let verdicts = screen(&batch).map_err(StateError::Screen)?;
    if verdicts.len() != batch.len() {
        return Err(StateError::Screen(format!(
            "the claim's check answered for {} of {} rows",
            verdicts.len(),
            batch.len()
        )));
    }
    let mut screened = Screened {
        send: Vec::with_capacity(batch.len()),
        suppress: Vec::new(),
        held: false,
    };
    for (row, verdict) in batch.into_iter().zip(verdicts) {
        match verdict {
            Verdict::Send => screened.send.push(row),
            Verdict::Suppress(why) => screened.suppress.push((row.id, why)),
            Verdict::Hold => screened.held = true,
        }
    }
    Ok(screened)
}

/// Why a walk over the recipients stopped early.
#[derive(Debug, thiserror::Error)]
pub enum VisitError {
    #[error(transparent)]
    State(#[from] StateError),
    /// The visitor failed (a report's output could not be written).
    #[error(transparent)]
    Visitor(std::io::Error),
}

/// Writes a plan whole or not at all: `fill` inserts the rows and returns
/// the plan's record with a value for the caller.
pub fn write_plan<T, E>(
    store: &mut dyn StateStore,
    mode: PlanWrite,
    fill: impl FnOnce(&mut dyn PlanRows) -> Result<(T, PlanInfo), E>,
) -> Result<T, E>
where
    E: From<StateError>,
{
    let mut rows = store.begin_plan(mode)?;
    let (value, info) = fill(rows.as_mut())?;
    rows.commit(&info)?;
    Ok(value)
}

/// Opens the state at `location` for a run: for a file, takes the run's
/// exclusive hold on it (creating it if it does not exist); for a database,
/// registers this runner beside any others. Migrates it to this build's schema.
pub fn open_for_run(location: &StateLocation) -> Result<Box<dyn StateStore>, StateError> {
    Ok(match location {
        StateLocation::File(path) => Box::new(StateDb::open_for_run(path)?),
        StateLocation::Postgres(target) => Box::new(PgStore::open_for_run(target)?),
    })
}

/// Opens an existing state for reading only (it may be sending right now).
pub fn open_for_reading(location: &StateLocation) -> Result<Box<dyn StateRead>, StateError> {
    Ok(match location {
        StateLocation::File(path) => Box::new(StateDb::open_read_only(path)?),
        StateLocation::Postgres(target) => Box::new(PgStore::open_for_reading(target)?),
    })
}
