//! The run: plan if needed, then drain the planned rows — claim a batch,
//! pace, send with bounded concurrency, classify, record — until nothing is
//! left or something says stop.
//!
//! Layout: [`plan`] (the campaign and its CSV into planned rows, before the
//! first send), [`pace`] (the shared adaptive rate), [`retry`] (backoff
//! delays), [`call`] (one request until it has a final answer, also used by
//! contacts import and `send-test`), [`breaker`] (systemic failures),
//! [`worker`] (one row from claim to final state), [`writer`] (the single
//! thread that writes the state), [`shutdown`] (the one stop signal),
//! [`progress`] (the events the operator's display is drawn from), [`clock`]
//! (the wall clock the send window is judged by), [`hours`] (the window in
//! one zone or in each recipient's own).
//!
//! The engine takes a checked [`Campaign`] and [`RunOptions`]; it never sees a
//! command-line flag, prints nothing itself (see [`progress`]), installs no
//! signal handler and never exits the process: the caller decides when to
//! stop by triggering the [`Stop`] it passes in.

pub mod breaker;
pub mod call;
pub mod clock;
pub mod hours;
pub mod pace;
pub mod plan;
pub mod progress;
pub mod retry;
pub mod shutdown;
pub mod worker;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::api::{Client, ClientConfig, ClientError};
use crate::campaign::{Campaign, SendWindow};
use crate::ledger::screen::{RunLedger, ScreenError, Suppressions};
use crate::ledger::{self, LedgerLocation, Sender, Settled};
use crate::state::{
    self, Claimed, Counts, FileGone, LockError, Outcome, RecipientState, RetrySelection,
    RowOutcome, StateError, StateLocation, StateRead, StateStore,
};
use breaker::Breaker;
pub use clock::{Clock, SystemClock};
use hours::{Hours, RecipientHours};
use pace::Pace;
use plan::{InputCheck, PlanError, PlanSummary, PlanWrite, RowProblem};
pub use progress::{Progress, Snapshot};
use retry::BackoffPolicy;
pub use shutdown::{Stop, StopReason};
use worker::{Delivery, RunStats};
use writer::StateWriter;

/// Everything a run needs besides the campaign, already checked.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the campaign's state lives (an SQLite file, or a database).
    pub state: StateLocation,
    /// How to reach the API; `None` is only allowed for a dry run.
    pub api: Option<ClientConfig>,
    pub concurrency: usize,
    pub rate_per_second: Option<f64>,
    pub max_attempts: u32,
    /// Send at most this many messages in this run (a canary), then stop.
    pub limit: Option<u64>,
    /// Plan and stop before the network.
    pub dry_run: bool,
    /// Rows put back to pending just before sending (`retry`, `run
    /// --resend-uncertain`) — only once messages will really leave, so a run
    /// that stops first (outside the window, daily limit) changes nothing.
    pub reset: Option<RetrySelection>,
    /// Plan rows of a changed CSV whose phone is not in the state yet.
    pub add_new_recipients: bool,
    pub max_runtime: Option<Duration>,
    pub window: Option<SendWindow>,
    /// Outside the window, wait for it to open instead of exiting "try later".
    pub wait_for_window: bool,
    /// At most this many unique recipients in any rolling 24 hours: across
    /// every campaign sharing the ledger when this run records in one, else
    /// this campaign's own messages.
    pub daily_limit: Option<u32>,
    /// Plan even though the ledger shows this campaign sent from another
    /// state file (those it messaged are planned `sent`/`uncertain`).
    pub new_state_ok: bool,
    /// Rows claimed per state transaction; bounds the rows a crash leaves uncertain.
    pub claim_batch: usize,
    /// Systemic failures in a row that stop the run.
    pub breaker_threshold: u32,
    pub backoff: BackoffPolicy,
    /// How long in-flight requests may take to finish once the run stops.
    pub drain_grace: Duration,
    /// The wall clock the send window is judged by.
    pub clock: Arc<dyn Clock>,
    /// The account's ledger: opt-outs honoured, messages recorded. Off
    /// unless the caller says where it is (the library reads no environment).
    pub ledger: LedgerUse,
}

/// How a run uses the account's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LedgerUse {
    /// No ledger: only the campaign's exclude files suppress rows.
    #[default]
    Off,
    /// Honour the opt-outs of the ledger there and record every message
    /// that leaves in it (created if missing).
    Record(LedgerLocation),
    /// `[ledger] enabled = false`: honour the opt-outs of the ledger there
    /// if it exists, write nothing, create nothing.
    HonourOnly(LedgerLocation),
}

impl LedgerUse {
    /// Whether the ledger this run records in is shared through a database
    /// (by runners on every machine), not a file of this machine.
    fn records_in_database(&self) -> bool {
        matches!(self, LedgerUse::Record(l) if l.is_database())
    }
}

impl RunOptions {
    /// The campaign's `[send]` settings, with the engine's defaults for the rest.
    pub fn from_campaign(
        campaign: &Campaign,
        state: StateLocation,
        api: Option<ClientConfig>,
    ) -> Self {
        let send = &campaign.send;
        RunOptions {
            state,
            api,
            concurrency: send.concurrency,
            rate_per_second: send.rate_per_second,
            max_attempts: send.max_attempts,
            limit: None,
            dry_run: false,
            reset: None,
            add_new_recipients: false,
            max_runtime: None,
            window: send.window,
            wait_for_window: false,
            daily_limit: send.daily_limit,
            new_state_ok: false,
            claim_batch: default_claim_batch(send.concurrency),
            breaker_threshold: 20,
            backoff: BackoffPolicy::default(),
            drain_grace: send.timeout + Duration::from_secs(1),
            clock: Arc::new(SystemClock),
            ledger: LedgerUse::Off,
        }
    }
}

/// Rows claimed ahead of sending: small enough that a crash leaves few rows
/// uncertain, large enough that claiming is a small share of the work.
pub fn default_claim_batch(concurrency: usize) -> usize {
    (2 * concurrency).clamp(16, 512)
}

/// How a run ended, when it ended in an orderly way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Every planned row has a final state.
    Completed,
    /// There was nothing left to send when the run started.
    NothingToDo,
    /// `--dry-run`: planned, nothing sent.
    DryRun,
    /// `--limit` messages were sent.
    LimitReached,
    /// Outside the send window (and not waiting).
    OutsideWindow { opens_at: DateTime<Utc> },
    /// The rolling 24-hour limit is used up.
    DailyLimitReached { next_at: Option<DateTime<Utc>> },
    /// Something asked the run to stop.
    Stopped(StopReason),
}

impl RunEnd {
    /// A stable word for scripts (`run --json`'s `end`): never reworded.
    pub fn code(&self) -> &'static str {
        match self {
            RunEnd::Completed => "completed",
            RunEnd::NothingToDo => "nothing_to_do",
            RunEnd::DryRun => "dry_run",
            RunEnd::LimitReached => "limit_reached",
            RunEnd::OutsideWindow { .. } => "outside_window",
            RunEnd::DailyLimitReached { .. } => "daily_limit_reached",
            RunEnd::Stopped(reason) => match reason {
                StopReason::Interrupted => "interrupted",
                StopReason::MaxRuntime => "max_runtime",
                StopReason::WindowClosed => "window_closed",
                StopReason::Unauthorized(_) => "unauthorized",
                StopReason::CertificateRejected(_) => "tls_rejected",
                StopReason::Breaker(_) => "circuit_breaker",
                StopReason::StateFailed(_) => "state_failed",
                StopReason::LeaseLost => "lease_lost",
            },
        }
    }

    /// How the run history in the state words it (`status`, the HTML
    /// report). States written by earlier versions hold these same words.
    pub fn history_label(&self) -> &'static str {
        match self {
            RunEnd::Completed => "completed",
            RunEnd::NothingToDo => "nothing to do",
            RunEnd::DryRun => "dry run",
            RunEnd::LimitReached => "limit reached",
            RunEnd::OutsideWindow { .. } => "outside the send window",
            RunEnd::DailyLimitReached { .. } => "daily limit reached",
            RunEnd::Stopped(reason) => match reason {
                StopReason::Interrupted => "interrupted",
                StopReason::MaxRuntime => "max runtime reached",
                StopReason::WindowClosed => "send window closed",
                StopReason::Unauthorized(_) => "unauthorized",
                StopReason::CertificateRejected(_) => "TLS certificate rejected",
                StopReason::Breaker(_) => "circuit breaker",
                StopReason::StateFailed(_) => "state file error",
                StopReason::LeaseLost => "lease lost",
            },
        }
    }
}

/// What this run did, and where the campaign stands now.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub end: RunEnd,
    /// Set when this run planned (or added to the plan).
    pub plan: Option<PlanSummary>,
    /// Rows a previous run left mid-send, now `uncertain`.
    pub recovered_uncertain: u64,
    /// Settled rows [`RunOptions::reset`] let this run send again (those it
    /// did not get to keep their state).
    pub resend_selected: u64,
    /// The plan was made again because the inputs changed before anything was sent.
    pub replanned: bool,
    pub snapshot: Snapshot,
    pub requests: u64,
    pub retries: u64,
    /// Counts of every state in the file after the run.
    pub counts: Counts,
    pub state: StateLocation,
}

/// Why a run could not be carried out at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(
        "{csv} changed since the campaign was planned ({planned_at}, {rows} rows): rerun with --add-new-recipients to plan only phones not yet in the state, or start over with a new --state file"
    )]
    CsvChanged {
        csv: String,
        planned_at: String,
        rows: u64,
    },
    #[error(
        "the message, [vars] or [recipients] settings in {campaign} changed since it was planned ({planned_at}): planned rows keep the message they were planned with. Undo the change, or start a new campaign with a new --state file (anyone already messaged would be messaged again)"
    )]
    MessageChanged {
        campaign: String,
        planned_at: String,
    },
    #[error(
        "no API key: set CONVERS8_API_KEY or pass --api-key-file FILE (a --dry-run needs none)"
    )]
    NoApiKey,
    /// The state file was deleted, moved, replaced or truncated mid-run.
    #[error("{}", state_lost_text(.path, .what, *.unrecorded, .copy.as_deref()))]
    StateLost {
        path: String,
        what: FileGone,
        /// Outcomes of this run that are not in the state file.
        unrecorded: u64,
        /// Where this run saved what it knew, when it could.
        copy: Option<PathBuf>,
    },
    #[error(transparent)]
    State(StateError),
    #[error(transparent)]
    Plan(PlanError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot start the state writer: {0}")]
    Writer(#[source] std::io::Error),
    /// The ledger or an exclude file could not be read before the run:
    /// nothing was sent, because a list meant to stop messages was unread.
    #[error("{0}: nothing was sent")]
    Screen(#[from] ScreenError),
    /// The ledger shows this campaign sent from another state file: planning
    /// it here would message those people again.
    #[error(transparent)]
    OtherState(Box<OtherState>),
    /// The campaign has `[audience]`, but the run does not record in a ledger.
    #[error(
        "{campaign} has an [audience] frequency cap, which counts messages in the account's ledger, and this run has no ledger to record in"
    )]
    AudienceWithoutLedger { campaign: String },
    /// The ledger could not be written mid-run: the run stopped.
    #[error(
        "cannot record messages in the ledger: {message}; the run stopped so that no message leaves unrecorded. Fix the ledger (see the error), then run again: the state keeps every outcome"
    )]
    LedgerFailed { message: String },
    /// The state writer failed for a reason other than a lost file.
    #[error(
        "cannot record results in the state {path}: {message} ({unrecorded} outcomes could not be recorded; rows left `sending` become `uncertain` on the next run)"
    )]
    RecordFailed {
        path: String,
        message: String,
        unrecorded: u64,
    },
}

impl From<StateError> for RunError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Lock(lock) => RunError::Locked(lock),
            other => RunError::State(other),
        }
    }
}

impl From<PlanError> for RunError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::State(e) => e.into(),
            other => RunError::Plan(other),
        }
    }
}

/// What [`RunError::OtherState`] says.
#[derive(Debug, thiserror::Error)]
#[error(
    "the ledger {ledger} holds {count} messages of campaign {campaign:?} sent from another state, {other}{more}: planning it in {state} would message them again. Resume with --state {resume}, or pass --new-state-ok to plan here (phones the ledger shows messaged become sent or uncertain, not sent again)"
)]
pub struct OtherState {
    pub ledger: String,
    pub campaign: String,
    /// The state this run was asked to plan in.
    pub state: String,
    /// The other state file that sent this campaign's earliest message.
    pub other: String,
    /// What `--state` takes to resume there (a database's URL, without the
    /// campaign the ledger names it with).
    pub resume: String,
    pub count: u64,
    /// ", and N more state files" when there are several.
    pub more: String,
}

fn state_lost_text(path: &str, what: &FileGone, unrecorded: u64, copy: Option<&Path>) -> String {
    let mut text = format!(
        "the state file {path} {what} while this run was using it: the run stopped claiming at once"
    );
    if unrecorded > 0 {
        text.push_str(&format!(
            "; {unrecorded} outcomes of messages in flight could not be recorded (those messages may have been delivered)"
        ));
    }
    match copy {
        Some(copy) => text.push_str(&format!(
            ". What this run knew is saved in {}: put it back at {path} before running this campaign again (rows it left `sending` become `uncertain`); a new state would plan everyone again and message them twice",
            copy.display()
        )),
        None => text.push_str(&format!(
            ". Do not run this campaign from a new state: it would plan everyone again and message them twice; restore {path} first"
        )),
    }
    text
}

/// Plans (if needed) and sends the campaign. Rows settle in the state file
/// as they go; the report says how the run ended. The run stops early when
/// `stop` is triggered (the caller's signals, say): it stops claiming, lets
/// requests in flight finish for [`RunOptions::drain_grace`], and records
/// everything.
pub async fn run(
    campaign: &Campaign,
    options: &RunOptions,
    progress: &dyn Progress,
    stop: Stop,
) -> Result<RunReport, RunError> {
    // `--max-runtime` counts from the start, waiting for the window included,
    // so one cron slot never overlaps the next.
    let deadline = options.max_runtime.map(|d| Instant::now() + d);
    // Planning a large list only to fail for want of a key wastes minutes.
    if !options.dry_run && options.api.is_none() {
        return Err(RunError::NoApiKey);
    }
    // Lock before the file is even read: two runs starting together on a
    // new campaign must not both create, migrate or plan it.
    let mut db = state::open_for_run(&options.state)?;

    let sender = Sender {
        campaign: campaign.name.clone(),
        state_file: state_identity(&options.state),
    };
    let (mut run_ledger, suppressions) = open_ledger(campaign, options, sender)?;
    if campaign.audience.is_some() && !run_ledger.records() {
        return Err(RunError::AudienceWithoutLedger {
            campaign: campaign.file.display().to_string(),
        });
    }
    // A shared state with a ledger file on this machine: runners elsewhere
    // count in their own. Said once, where an operator relying on a cap sees it.
    if matches!(options.state, StateLocation::Postgres(_))
        && run_ledger.records()
        && !options.ledger.records_in_database()
        && (campaign.audience.is_some() || run_ledger.enforces_daily_limit())
    {
        progress.note(
            "the [audience] cap and the daily limit count the messages in this machine's ledger file: runners of this campaign on other machines count in their own (a ledger in the database counts them all: leave CONVERS8_LEDGER and [ledger] path unset)",
        );
    }
    let (plan, replanned) = prepare_plan(
        db.as_mut(),
        campaign,
        options,
        progress,
        suppressions,
        &run_ledger,
    )?;
    let path = options.state.clone();
    let lost = |db: &dyn StateStore, e: StateError| state_error(db, &path, e, 0);
    let recovered_uncertain = db
        .mark_interrupted_uncertain()
        .map_err(|e| lost(db.as_ref(), e))?;
    if recovered_uncertain > 0 {
        progress.note(&format!(
            "{recovered_uncertain} rows were being sent when the last run stopped: they are now uncertain and will not be resent automatically (`retry --uncertain` resends them)"
        ));
    }
    let counts = db.counts()?;
    let mut report = RunReport {
        end: RunEnd::Completed,
        plan,
        recovered_uncertain,
        resend_selected: 0,
        replanned,
        snapshot: Snapshot::default(),
        requests: 0,
        retries: 0,
        counts,
        state: options.state.clone(),
    };
    if options.dry_run {
        // Nothing is reset by a dry run: uncertain rows stay uncertain.
        report.end = RunEnd::DryRun;
        return Ok(report);
    }
    // Messages a run of this state reserved in the ledger and never settled
    // (it died) are settled from what the state says now.
    settle_leftovers(&mut run_ledger, db.as_ref())?;
    // Planned and recovered: another runner of a shared state may set up
    // now, not only once this one has waited for its window.
    db.end_setup().map_err(|e| lost(db.as_ref(), e))?;
    // A stop asked for while planning (which does not look up) ends here.
    if let Some(reason) = stop.reason() {
        report.end = RunEnd::Stopped(reason);
        return Ok(report);
    }
    let resettable = match &options.reset {
        Some(selection) => db.count_for_retry(selection)?,
        None => 0,
    };
    if counts.pending + resettable == 0 {
        report.end = RunEnd::NothingToDo;
        return Ok(report);
    }
    let Some(api) = options.api.clone() else {
        return Err(RunError::NoApiKey);
    };
    // Built before any row changes: a base URL it refuses changes nothing.
    let client = Client::new(api)?;

    // For a window in each recipient's own hours: the zones of the rows this
    // run may claim, read once (a plan has few).
    let recipient_hours = match options.window {
        Some(window) if window.per_recipient => Some(RecipientHours::load(
            db.as_ref(),
            window,
            &claimable_states(options.reset.as_ref()),
        )?),
        _ => None,
    };
    if let Some(hours) = Hours::of(options.window, recipient_hours.clone()) {
        let now = options.clock.now();
        if !hours.contains(now) {
            let (opens_at, zone) = hours.next_open(now);
            if !options.wait_for_window {
                report.end = RunEnd::OutsideWindow { opens_at };
                return Ok(report);
            }
            progress.note(&format!(
                "outside the send window: waiting until {} ({})",
                opens_at.with_timezone(&zone).format("%Y-%m-%d %H:%M %Z"),
                opens_at.format("%H:%M UTC")
            ));
            if let Some(reason) =
                wait_for_window(&hours, options.clock.as_ref(), deadline, &stop, db.as_mut())
                    .await
                    .map_err(|e| lost(db.as_ref(), e))?
            {
                report.end = RunEnd::Stopped(reason);
                return Ok(report);
            }
        }
    }

    let daily_in_ledger = match &options.ledger {
        LedgerUse::Record(location) if run_ledger.enforces_daily_limit() => Some(location),
        _ => None,
    };
    if let Some(daily) = options.daily_limit
        && let Some(next_at) =
            daily_limit_used_up(db.as_ref(), &run_ledger, daily, options.clock.now())?
    {
        report.end = RunEnd::DailyLimitReached { next_at };
        return Ok(report);
    }

    // Only now, when messages will really leave, may this run claim the
    // selected rows — and only this run: the selection is not written down.
    report.resend_selected = resettable;
    db.resend_during_run(options.reset.clone());
    let run_id = db.start_run().map_err(|e| lost(db.as_ref(), e))?;
    let claimable = counts.pending + resettable;
    let to_send = options.limit.map_or(claimable, |l| l.min(claimable));
    let (db, sending) = send_rows(
        db,
        campaign,
        options,
        client,
        progress,
        stop,
        to_send,
        deadline,
        recipient_hours.as_ref(),
        run_ledger,
    )
    .await?;
    let mut db = match sending.failure {
        None => db,
        Some(failure) => {
            return Err(write_failure_error(db.as_ref(), &options.state, failure));
        }
    };
    if let Some(e) = sending.after_error {
        return Err(lost(db.as_ref(), e));
    }

    let stats = &sending.stats;
    let (sent, failed, uncertain) = (
        stats.sent.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        stats.uncertain.load(Ordering::Relaxed),
    );
    report.end = sending.end.clone();
    report.counts = db.counts()?;
    // In recipients' own hours the claims run dry when every zone with rows
    // left is closed: that is the window closing, not the campaign done.
    if recipient_hours.is_some() && report.end == RunEnd::Completed && report.counts.pending > 0 {
        report.end = RunEnd::Stopped(StopReason::WindowClosed);
    }
    if let RunEnd::DailyLimitReached { next_at } = &mut report.end
        && let Some(daily) = options.daily_limit
    {
        *next_at = match &daily_in_ledger {
            Some(location) => ledger::open(location)
                .and_then(|l| l.next_daily_slot(daily, options.clock.now()))
                .map_err(ScreenError::from)?,
            None => next_daily_slot(db.as_ref(), daily, options.clock.now())?,
        };
    }
    db.finish_run(run_id, report.end.history_label(), sent, failed, uncertain)
        .map_err(|e| lost(db.as_ref(), e))?;
    report.snapshot = sending.snapshot;
    report.requests = stats.requests.load(Ordering::Relaxed);
    report.retries = stats.retries.load(Ordering::Relaxed);
    report.counts = db.counts()?;
    Ok(report)
}

/// The run's last word when the writer stopped.
fn write_failure_error(
    db: &dyn StateStore,
    state_path: &StateLocation,
    failure: writer::WriteFailure,
) -> RunError {
    match failure.gone {
        Some(what) => state_lost(db, state_path, what, failure.unrecorded),
        None if failure.ledger => RunError::LedgerFailed {
            message: failure.message,
        },
        None => RunError::RecordFailed {
            path: state_path.to_string(),
            message: failure.message,
            unrecorded: failure.unrecorded,
        },
    }
}

/// A state error as the run reports it: a state file taken away becomes
/// [`RunError::StateLost`], after saving what this handle still knows.
fn state_error(
    db: &dyn StateStore,
    state_path: &StateLocation,
    e: StateError,
    unrecorded: u64,
) -> RunError {
    match e {
        StateError::Gone { what, .. } => state_lost(db, state_path, what, unrecorded),
        other => other.into(),
    }
}

/// What this run knew is saved beside the lost state first, so the operator
/// can put it back instead of starting a state that would plan everyone again.
fn state_lost(
    db: &dyn StateStore,
    state_path: &StateLocation,
    what: FileGone,
    unrecorded: u64,
) -> RunError {
    let copy = match db.rescue_copy() {
        Ok(copy) => copy,
        Err(e) => {
            tracing::error!("cannot save a copy of the state: {e}");
            None
        }
    };
    RunError::StateLost {
        path: state_path.to_string(),
        what,
        unrecorded,
        copy,
    }
}

/// What `--state` takes to reach the state the ledger names `identity`
/// (see [`state_identity`]): a database's URL without the campaign's name.
fn resume_state(identity: &str) -> String {
    match identity.split_once('#') {
        Some((url, _)) if state::location::is_postgres_url(url) => url.to_owned(),
        _ => identity.to_owned(),
    }
}

/// How the ledger names a state file: its absolute path, so two runs that
/// reach one state by different relative paths are one state to it. A state
/// not created yet is named as it will be (its folder's absolute path and
/// its name), so `validate` can ask the ledger about it beforehand.
pub fn state_identity(location: &StateLocation) -> String {
    match location {
        StateLocation::File(path) => file_identity(path),
        StateLocation::Postgres(target) => target.identity(),
    }
}

fn file_identity(path: &Path) -> String {
    let absolute = std::fs::canonicalize(path).or_else(|e| {
        let name = path.file_name().ok_or(e)?;
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::canonicalize(folder).map(|f| f.join(name))
    });
    absolute
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

/// When the daily limit is used up now: `Some(when its next slot opens)`.
fn daily_limit_used_up(
    db: &dyn StateRead,
    ledger: &RunLedger,
    daily: u32,
    now: DateTime<Utc>,
) -> Result<Option<Option<DateTime<Utc>>>, RunError> {
    if let Some(l) = ledger.ledger().filter(|_| ledger.enforces_daily_limit()) {
        let next = l.next_daily_slot(daily, now).map_err(ScreenError::from)?;
        return Ok(next.map(Some));
    }
    let used = db.sent_since(now - chrono::Duration::hours(24))?;
    if used < u64::from(daily) {
        return Ok(None);
    }
    Ok(Some(next_daily_slot(db, daily, now)?))
}

/// Settles the ledger's reservations a dead run of this state left, from
/// the state: a row sent or uncertain keeps its message, any other gives it
/// back. A row still `sending` is left as it is: in a state shared by
/// several runners it is a live runner's (a dead one's rows are `uncertain`
/// by now, as are a dead run's in a file).
fn settle_leftovers(ledger: &mut RunLedger, db: &dyn StateRead) -> Result<(), RunError> {
    let Some(l) = ledger.ledger().filter(|_| ledger.records()) else {
        return Ok(());
    };
    let leftovers = l.sending_of(ledger.sender()).map_err(ScreenError::from)?;
    if leftovers.is_empty() {
        return Ok(());
    }
    // Runners of a shared state reserve under one sender, and another live
    // runner's reservation may belong to a claim not committed yet (its row
    // still reads pending here): only an answer that went out is settled
    // then; a reservation kept a while longer only counts one message too
    // many, never one too few.
    let others_live = db.live_runners()?.is_some_and(|runners| runners.len() > 1);
    let parse = |t: Option<&String>| {
        t.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc))
    };
    let mut settled = Vec::with_capacity(leftovers.len());
    for (phone, row) in leftovers {
        let how = match db.recipient_by_phone(&phone)? {
            Some(r) if r.state == RecipientState::Sent => Settled::Sent {
                message_id: r.message_id.clone(),
                at: parse(r.sent_at.as_ref()),
            },
            Some(r) if r.state == RecipientState::Sending => continue,
            Some(r) if r.state == RecipientState::Uncertain => Settled::Uncertain {
                at: parse(r.updated_at.as_ref()),
            },
            _ if others_live => continue,
            _ => Settled::NotSent,
        };
        settled.push((phone, row, how));
    }
    ledger
        .settle_leftovers(&settled)
        .map_err(|e| RunError::LedgerFailed {
            message: e.to_string(),
        })
}

/// Opens the ledger the options name and reads the campaign's exclude
/// files: the run's claim-time screen, and the plan-time snapshot.
fn open_ledger(
    campaign: &Campaign,
    options: &RunOptions,
    sender: Sender,
) -> Result<(RunLedger, Suppressions), RunError> {
    let (ledger, record) = match &options.ledger {
        LedgerUse::Off => (None, false),
        LedgerUse::Record(location) => (
            Some(ledger::open(location).map_err(ScreenError::from)?),
            true,
        ),
        LedgerUse::HonourOnly(location) => (
            ledger::open_existing(location).map_err(ScreenError::from)?,
            false,
        ),
    };
    let suppressions = Suppressions::load(campaign, ledger.as_deref())?;
    let run_ledger = RunLedger::new(ledger, record, suppressions.excluded().clone(), sender)
        .with_limits(campaign.audience.as_ref(), options.daily_limit)
        .with_clock(options.clock.clone());
    Ok((run_ledger, suppressions))
}

/// Plans on the first run; on later runs checks that the inputs did not
/// change. Inputs that changed before anything was sent are simply planned
/// again: nobody can have the old message yet. Returns whether it re-planned.
fn prepare_plan(
    db: &mut dyn StateStore,
    campaign: &Campaign,
    options: &RunOptions,
    progress: &dyn Progress,
    suppressions: Suppressions,
    ledger: &RunLedger,
) -> Result<(Option<PlanSummary>, bool), RunError> {
    let check = plan::check_inputs(db, campaign)?;
    let changed = match &check {
        InputCheck::CsvChanged { planned } | InputCheck::MessageChanged { planned } => {
            Some(planned.clone())
        }
        _ => None,
    };
    let mode = match check {
        InputCheck::Unchanged => return Ok((None, false)),
        InputCheck::NotPlanned => PlanWrite::Fresh,
        _ if !db.anything_sent()? => PlanWrite::Replace,
        InputCheck::CsvChanged { .. } if options.add_new_recipients => PlanWrite::Add,
        InputCheck::CsvChanged { planned } => {
            return Err(RunError::CsvChanged {
                csv: campaign.recipients.csv.display().to_string(),
                planned_at: planned.planned_at,
                rows: planned.csv_rows,
            });
        }
        InputCheck::MessageChanged { planned } => {
            return Err(RunError::MessageChanged {
                campaign: campaign.file.display().to_string(),
                planned_at: planned.planned_at,
            });
        }
    };
    if let (PlanWrite::Replace, Some(planned)) = (mode, &changed) {
        progress.note(&format!(
            "{} or its CSV changed since it was planned ({}), but nothing has been sent from {} yet: planning it again",
            campaign.file.display(),
            planned.planned_at,
            options.state
        ));
    }
    let suppressions = earlier_messages(campaign, options, ledger, suppressions)?;
    progress.note(&format!(
        "planning {} from {}",
        campaign.name,
        campaign.recipients.csv.display()
    ));
    let summary =
        plan::plan_campaign_screened(db, campaign, mode, &suppressions, |_: &RowProblem| {})?;
    progress.note(&format!(
        "planned {} rows: {} to send, {} invalid, {} duplicate, {} suppressed{}{}",
        summary.rows,
        summary.pending,
        summary.invalid,
        summary.duplicate,
        summary.suppressed,
        if mode == PlanWrite::Add {
            format!(", {} already planned", summary.already_planned)
        } else {
            String::new()
        },
        if summary.messaged_before > 0 {
            format!(
                ", {} already messaged by this campaign (the ledger's record: not sent again)",
                summary.messaged_before
            )
        } else {
            String::new()
        }
    ));
    Ok((Some(summary), mode == PlanWrite::Replace))
}

/// Before a plan: refuses when the ledger shows this campaign sent from
/// another state file (unless the options allow it), and adds to the
/// plan-time snapshot who the ledger shows this campaign already messaged,
/// so a lost or second state does not message them again.
fn earlier_messages(
    campaign: &Campaign,
    options: &RunOptions,
    ledger: &RunLedger,
    suppressions: Suppressions,
) -> Result<Suppressions, RunError> {
    let Some(l) = ledger.ledger().filter(|_| ledger.records()) else {
        return Ok(suppressions);
    };
    let here = &ledger.sender().state_file;
    let others = l
        .other_state_files(&campaign.name, here)
        .map_err(ScreenError::from)?;
    if let Some((other, count)) = others.first()
        && !options.new_state_ok
    {
        return Err(RunError::OtherState(Box::new(OtherState {
            ledger: l.shown(),
            campaign: campaign.name.clone(),
            state: options.state.to_string(),
            other: other.clone(),
            resume: resume_state(other),
            count: *count,
            more: match others.len() - 1 {
                0 => String::new(),
                1 => ", and 1 more state file".to_owned(),
                n => format!(", and {n} more state files"),
            },
        })));
    }
    let messaged = l
        .campaign_messages(&campaign.name)
        .map_err(ScreenError::from)?;
    Ok(suppressions.with_earlier_messages(messaged))
}

/// When the rolling 24-hour window frees its next slot.
fn next_daily_slot(
    db: &dyn StateRead,
    daily: u32,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, RunError> {
    let since = now - chrono::Duration::hours(24);
    let used = db.sent_since(since)?;
    // The oldest send that must leave the window before one more fits.
    let k = used.saturating_sub(u64::from(daily)) + 1;
    let oldest = db.nth_sent_since(since, k)?;
    Ok(oldest.map(|t| t + chrono::Duration::hours(24)))
}

/// How often a run looks at the wall clock while it waits for the window or
/// sends inside it. A timer alone would miss a clock that jumps (a VM
/// resumed, an NTP step); the wall clock decides.
const WINDOW_RECHECK: Duration = Duration::from_secs(1);

/// The states of the rows a run may claim: pending ones, and those a resend selects.
fn claimable_states(reset: Option<&RetrySelection>) -> Vec<RecipientState> {
    let mut states = vec![RecipientState::Pending];
    match reset {
        Some(RetrySelection::Uncertain) => states.push(RecipientState::Uncertain),
        Some(RetrySelection::Failed { .. }) => states.push(RecipientState::Failed),
        Some(RetrySelection::Suppressed { .. }) => states.push(RecipientState::Suppressed),
        None => {}
    }
    states
}

/// Waits until the window is open by the wall clock; the reason instead when
/// something stops the wait first.
async fn wait_for_window(
    window: &Hours,
    clock: &dyn Clock,
    deadline: Option<Instant>,
    stop: &Stop,
    db: &mut dyn StateStore,
) -> Result<Option<StopReason>, StateError> {
    let runtime_over = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(runtime_over);
    loop {
        // Hours of waiting with the state open: notice if it is taken away.
        db.check_still_there()?;
        let now = clock.now();
        if window.contains(now) {
            return Ok(None);
        }
        let wait = (window.next_open(now).0 - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(WINDOW_RECHECK);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut runtime_over => return Ok(Some(StopReason::MaxRuntime)),
            _ = stop.stopped() => return Ok(Some(stop.reason().unwrap_or(StopReason::Interrupted))),
        }
    }
}

/// Stops the run once the window is closed by the wall clock.
async fn close_with_window(window: SendWindow, clock: Arc<dyn Clock>, stop: Stop) {
    loop {
        let now = clock.now();
        let Some(closes) = window.closes_at(now) else {
            stop.trigger(StopReason::WindowClosed);
            return;
        };
        let wait = (closes - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(WINDOW_RECHECK);
        tokio::time::sleep(wait).await;
    }
}

struct Sending {
    end: RunEnd,
    stats: Arc<RunStats>,
    snapshot: Snapshot,
    /// The writer stopped: the state did not record everything.
    failure: Option<writer::WriteFailure>,
    /// Settling the rows cut off at the end failed (the state file may be gone).
    after_error: Option<StateError>,
}

/// The send loop proper: the feeder claims, workers deliver, the writer records.
#[allow(clippy::too_many_arguments)]
async fn send_rows(
    db: Box<dyn StateStore>,
    campaign: &Campaign,
    options: &RunOptions,
    client: Client,
    progress: &dyn Progress,
    stop: Stop,
    to_send: u64,
    deadline: Option<Instant>,
    recipient_hours: Option<&RecipientHours>,
    ledger: RunLedger,
) -> Result<(Box<dyn StateStore>, Sending), RunError> {
    let stats = Arc::new(RunStats::default());
    // Several runners of one campaign keep its rate together.
    let pace = match options.rate_per_second {
        Some(rate) => match db.shared_pace()? {
            Some(shared) => Pace::shared(rate, shared),
            None => Pace::new(Some(rate)),
        },
        None => Pace::new(None),
    };
    let delivery = Arc::new(Delivery {
        client,
        kind: campaign.message.kind,
        pace,
        gate: db.send_gate(),
        breaker: Breaker::new(options.breaker_threshold),
        backoff: options.backoff,
        max_attempts: options.max_attempts,
        stop: stop.clone(),
        stats: stats.clone(),
    });
    let daily_in_ledger = ledger.enforces_daily_limit();
    let writer =
        StateWriter::spawn_with_ledger(db, stop.clone(), Some(ledger)).map_err(RunError::Writer)?;
    let started = Instant::now();
    let mut guards = JoinSet::new();
    if let Some(deadline) = deadline {
        let stop = stop.clone();
        guards.spawn(async move {
            tokio::time::sleep_until(deadline).await;
            stop.trigger(StopReason::MaxRuntime);
        });
    }
    // In recipients' own hours each claim and each row is judged by its
    // zone instead (see `feed`).
    if let Some(window) = options.window.filter(|w| !w.per_recipient) {
        guards.spawn(close_with_window(
            window,
            options.clock.clone(),
            stop.clone(),
        ));
    }

    progress.begin(to_send);
    let ticker_stats = stats.clone();
    let ticker_delivery = delivery.clone();
    let ticker = async {
        let mut last_settled = 0u64;
        let mut per_second = 0.0f64;
        let mut last_tick = Instant::now();
        let mut interval = tokio::time::interval(Duration::from_millis(250));
        loop {
            interval.tick().await;
            let mut s = snapshot(
                &ticker_stats,
                ticker_delivery.pace.current_rate(),
                to_send,
                started,
            );
            let dt = last_tick.elapsed().as_secs_f64();
            last_tick = Instant::now();
            if dt > 0.0 {
                let instant = (s.settled() - last_settled) as f64 / dt;
                // Smoothed over a few seconds, so the figure and the ETA don't jitter.
                per_second = if per_second == 0.0 {
                    instant
                } else {
                    0.8 * per_second + 0.2 * instant
                };
            }
            last_settled = s.settled();
            s.per_second = per_second;
            progress.tick(&s);
        }
    };
    let feeding = feed(
        &writer,
        delivery.clone(),
        options,
        &stop,
        to_send,
        recipient_hours,
        daily_in_ledger,
    );
    let end = tokio::select! {
        end = feeding => end,
        _ = ticker => unreachable_ticker(),
    };
    let handle_for_flush = writer.handle();
    let _ = handle_for_flush.flush().await;
    drop(handle_for_flush);
    drop(delivery);
    guards.abort_all();
    let closed = writer.close().await;
    let Some(mut db) = closed.db else {
        let failure = closed.failure.unwrap_or_default();
        return Err(RunError::RecordFailed {
            path: options.state.to_string(),
            message: failure.message,
            unrecorded: failure.unrecorded,
        });
    };
    let mut after_error = None;
    if closed.failure.is_none() {
        // Requests cut off by the drain deadline may have been delivered.
        match db.mark_interrupted_uncertain() {
            Ok(cut_off) => {
                stats.uncertain.fetch_add(cut_off, Ordering::Relaxed);
            }
            Err(e) => after_error = Some(e),
        }
    }
    let mut final_snapshot = snapshot(&stats, None, to_send, started);
    let elapsed = started.elapsed().as_secs_f64();
    if elapsed > 0.0 {
        final_snapshot.per_second = final_snapshot.settled() as f64 / elapsed;
    }
    progress.end(&final_snapshot);
    Ok((
        db,
        Sending {
            end,
            stats,
            snapshot: final_snapshot,
            failure: closed.failure,
            after_error,
        },
    ))
}

fn unreachable_ticker() -> RunEnd {
    // The ticker loops forever; select! needs a value of the arm's type.
    RunEnd::Completed
}

fn snapshot(stats: &RunStats, pace: Option<f64>, to_send: u64, started: Instant) -> Snapshot {
    Snapshot {
        to_send,
        sent: stats.sent.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        uncertain: stats.uncertain.load(Ordering::Relaxed),
        released: stats.released.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        per_second: 0.0,
        pace,
        rate_limited: stats.rate_limited.load(Ordering::Relaxed),
    }
}

/// Claims batches and hands each row to a worker task, at most `concurrency`
/// at once, until the plan is drained, the limit is reached, or a stop.
async fn feed(
    writer: &StateWriter,
    delivery: Arc<Delivery>,
    options: &RunOptions,
    stop: &Stop,
    to_send: u64,
    recipient_hours: Option<&RecipientHours>,
    daily_in_ledger: bool,
) -> RunEnd {
    let handle = writer.handle();
    // Re-evaluated before every claim: zones open and close during a run.
    let open_zones = || recipient_hours.map(|h| h.open_zones(options.clock.now()));
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut tasks: JoinSet<()> = JoinSet::new();
    // Rows are claimed half a batch at a time, and the next half is claimed
    // while the current one is sent, so requests never wait on the disk. At
    // most `claim_batch` rows are thus claimed but not yet on the wire — the
    // bound on what a crash can leave uncertain, besides requests in flight.
    let unit = (options.claim_batch / 2).max(1) as u64;
    // With a limit, each claim is sized from what is left, so no claim ahead.
    let prefetch = options.limit.is_none() && options.daily_limit.is_none();
    let mut next_claim: Option<writer::PendingClaim> = None;
    let mut claimed_total = 0u64;
    let mut end = RunEnd::Completed;
    let mut sent_before_run = None;
    'claiming: loop {
        if stop.is_stopping() {
            break;
        }
        let batch = match next_claim.take() {
            Some(pending) => pending.batch().await,
            None => {
                let mut want = unit;
                if options.limit.is_some() {
                    want = want.min(to_send.saturating_sub(claimed_total));
                    if want == 0 {
                        end = RunEnd::LimitReached;
                        break;
                    }
                }
                if let Some(daily) = options.daily_limit.filter(|_| !daily_in_ledger) {
                    match daily_budget(
                        &handle,
                        daily,
                        options.clock.now(),
                        &delivery.stats,
                        claimed_total,
                        &mut sent_before_run,
                    )
                    .await
                    {
                        Ok(0) => {
                            // Rows still in flight may fail and free budget: wait for them first.
                            if tasks.is_empty() {
                                end = RunEnd::DailyLimitReached { next_at: None };
                                break;
                            }
                            tasks.join_next().await;
                            continue;
                        }
                        Ok(budget) => want = want.min(budget),
                        Err(e) => {
                            stop.trigger(StopReason::StateFailed(e.to_string()));
                            break;
                        }
                    }
                }
                handle.claim(want as usize, open_zones()).await
            }
        };
        let (rows, held) = match batch {
            Ok(batch) => (batch.rows, batch.held),
            Err(e) => {
                stop.trigger(StopReason::StateFailed(e.to_string()));
                break;
            }
        };
        if rows.is_empty() {
            // The ledger holds the rest back: the account's daily limit is
            // used up. Rows still in flight may fail and give their place back.
            if held {
                if tasks.is_empty() {
                    end = RunEnd::DailyLimitReached { next_at: None };
                    break;
                }
                tasks.join_next().await;
                continue;
            }
            break;
        }
        claimed_total += rows.len() as u64;
        if prefetch && !stop.is_stopping() {
            match handle.request_claim(unit as usize, open_zones()) {
                Ok(pending) => next_claim = Some(pending),
                Err(e) => {
                    stop.trigger(StopReason::StateFailed(e.to_string()));
                    break;
                }
            }
        }
        let mut rows = rows.into_iter();
        while let Some(row) = rows.next() {
            // A row claimed just before its zone closed waits for tomorrow.
            if let Some(hours) = recipient_hours
                && !hours.zone_open(row.timezone.as_deref(), options.clock.now())
            {
                give_back(&handle, &delivery.stats, std::iter::once(row));
                continue;
            }
            let permit = tokio::select! {
                biased;
                _ = stop.stopped() => None,
                permit = permits.clone().acquire_owned() => permit.ok(),
            };
            let Some(permit) = permit else {
                // Stopping: these rows never left, so they go back to pending.
                give_back(&handle, &delivery.stats, std::iter::once(row).chain(rows));
                break 'claiming;
            };
            let delivery = delivery.clone();
            let handle = handle.clone();
            tasks.spawn(async move {
                let outcome = delivery.deliver(row).await;
                if let Err(e) = handle.record(outcome) {
                    delivery
                        .stop
                        .trigger(StopReason::StateFailed(e.to_string()));
                }
                drop(permit);
            });
            // Reap finished tasks so the set does not grow with the plan.
            while tasks.try_join_next().is_some() {}
        }
    }
    // A claim made ahead of a stop was never sent: give it back.
    if let Some(pending) = next_claim.take()
        && let Ok(rows) = pending.rows().await
    {
        give_back(&handle, &delivery.stats, rows.into_iter());
    }
    drain(&mut tasks, stop, options.drain_grace).await;
    match stop.reason() {
        Some(reason) => RunEnd::Stopped(reason),
        None => end,
    }
}

/// Waits for in-flight deliveries; once stopping, for at most `grace`. Rows of
/// tasks cut off stay `sending` and are made `uncertain` by the caller.
async fn drain(tasks: &mut JoinSet<()>, stop: &Stop, grace: Duration) {
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { return },
            _ = stop.stopped() => break,
        }
    }
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { return },
            _ = &mut deadline => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return;
            }
        }
    }
}

fn give_back(handle: &writer::WriterHandle, stats: &RunStats, rows: impl Iterator<Item = Claimed>) {
    for row in rows {
        stats.released.fetch_add(1, Ordering::Relaxed);
        let _ = handle.record(RowOutcome {
            id: row.id,
            attempts: 0,
            at: Utc::now(),
            outcome: Outcome::Released,
        });
    }
}

/// Messages that may still be sent within the rolling 24 hours. Sends before
/// this run are read from the state once; this run's claims count as sends
/// until they settle otherwise, so results not yet committed cannot let the
/// run overshoot. (Sends that age out of the window during a long run are not
/// credited back: the next run recounts.)
async fn daily_budget(
    handle: &writer::WriterHandle,
    daily: u32,
    now: DateTime<Utc>,
    stats: &RunStats,
    claimed_total: u64,
    sent_before_run: &mut Option<u64>,
) -> Result<u64, writer::WriterError> {
    let before = match *sent_before_run {
        Some(n) => n,
        None => {
            let n = handle.sent_since(now - chrono::Duration::hours(24)).await?;
            *sent_before_run = Some(n);
            n
        }
    };
    // Uncertain rows may have been delivered, so they keep their place.
    let not_sent = stats.failed.load(Ordering::Relaxed) + stats.released.load(Ordering::Relaxed);
    let this_run = claimed_total.saturating_sub(not_sent);
    Ok(u64::from(daily).saturating_sub(before + this_run))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_state_is_named_for_the_ledger_by_url_and_campaign_and_resumed_by_url() {
        let location = StateLocation::parse("postgres://app:s3cret@db/c", "spring");
        let identity = state_identity(&location);
        assert_eq!(identity, "postgres://app@db/c#spring");
        assert_eq!(resume_state(&identity), "postgres://app@db/c");
        assert_eq!(resume_state("/srv/c/a#b.state.db"), "/srv/c/a#b.state.db");
    }
}
