//! The state file: one SQLite database per campaign that records the plan and
//! every recipient's outcome, so a run can stop anywhere and resume exactly.
//!
//! The rest of the program reaches the state through one seam, the traits in
//! [`store`]; [`StateDb`] is the SQLite store behind them. This module owns
//! the types both sides speak (states, outcomes, plans, counts), opening a
//! state file, the schema ([`schema`]), the run lock ([`lock`]), and every
//! statement run against the file ([`reads`], `writes.rs`). It knows nothing
//! about HTTP or templates: it stores bodies it is given and states it is
//! told. Writes are batched in transactions by the callers' design (one plan
//! transaction, one transaction per claim, results committed in groups).

pub mod location;
pub mod lock;
pub mod pg;
pub mod reads;
pub mod runner;
pub mod schema;
pub mod store;
#[cfg(test)]
pub(crate) mod test_support;
mod writes;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, params};

pub use location::{PgTarget, StateLocation};
pub use lock::{FileGone, LockError, RunLock};
pub use runner::{SendGate, SharedPace, SlotBlock};
pub use store::{
    ClaimScreen, PlanRows, PlanWrite, StateRead, StateStore, VisitError, open_for_reading,
    open_for_run, write_plan,
};

/// Where a recipient is in its life (docs/design.md, "A recipient's life").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientState {
    Pending,
    Sending,
    Sent,
    Failed,
    Uncertain,
    Invalid,
    Duplicate,
    /// Never sent on purpose: the phone is on the ledger's opt-out list
    /// (`opted_out`) or in one of the campaign's exclude files (`excluded`).
    Suppressed,
}

impl RecipientState {
    pub const ALL: [RecipientState; 8] = [
        RecipientState::Pending,
        RecipientState::Sending,
        RecipientState::Sent,
        RecipientState::Failed,
        RecipientState::Uncertain,
        RecipientState::Invalid,
        RecipientState::Duplicate,
        RecipientState::Suppressed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecipientState::Pending => "pending",
            RecipientState::Sending => "sending",
            RecipientState::Sent => "sent",
            RecipientState::Failed => "failed",
            RecipientState::Uncertain => "uncertain",
            RecipientState::Invalid => "invalid",
            RecipientState::Duplicate => "duplicate",
            RecipientState::Suppressed => "suppressed",
        }
    }

    pub fn parse(s: &str) -> Option<RecipientState> {
        RecipientState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for RecipientState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "no state file at {path}: run `convers8-campaign run` (or `run --dry-run`) on the campaign first"
    )]
    Missing { path: String },
    #[error("cannot create the state file {path}: {reason}")]
    Create { path: String, reason: String },
    #[error("state file {path}: {operation}: {source}")]
    Sql {
        path: String,
        operation: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "state file {path} was written by a newer convers8-campaign (schema {found}, this build knows {known}): upgrade the tool"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("state file {path} holds no plan yet: run the campaign (or `run --dry-run`) first")]
    NotPlanned { path: String },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(
        "the state file {path} is empty (0 bytes): it is not a state this tool wrote; check --state, or delete the file if it is yours and holds nothing"
    )]
    Empty { path: String },
    /// The path leads to a file that is not a state of this tool.
    #[error(
        "{path} is not a state file of convers8-campaign: it is {what}; check --state (nothing in it was changed)"
    )]
    NotAState { path: String, what: String },
    /// The file a run locked is no longer at its path (deleted, moved,
    /// replaced, truncated): nothing more is written to it.
    #[error("the state file {path} {what}")]
    Gone { path: String, what: FileGone },
    /// The claim's screen (the opt-out list) could not be read: nothing was
    /// claimed, because a row must not leave unchecked.
    #[error("{0}")]
    Screen(String),
    /// A PostgreSQL state could not be reached or refused a statement.
    /// `location` is the URL without its password.
    #[error("PostgreSQL state {location}: {operation}: {reason}")]
    Postgres {
        location: String,
        operation: &'static str,
        reason: String,
    },
    /// The database holds no plan of this campaign.
    #[error(
        "the database {location} holds no campaign {campaign:?} yet: run `convers8-campaign run` (or `run --dry-run`) on the campaign with this --state first"
    )]
    NoCampaign { location: String, campaign: String },
    /// This runner's lease ran out or another runner declared it dead: it
    /// must not send again (its rows in flight are `uncertain` now).
    #[error(
        "runner {runner} lost its lease on {location} (it could not renew it in time, or another runner declared it dead): it stopped sending; rows it had in flight are uncertain, and another run picks up the rest"
    )]
    LeaseLost { location: String, runner: i64 },
}

/// What the plan was made from, to detect a changed input later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanInfo {
    pub campaign_name: String,
    pub message_type: String,
    pub campaign_file: String,
    pub csv_file: String,
    pub message_fingerprint: String,
    pub csv_sha256: String,
    pub csv_rows: u64,
    pub planned_at: String,
    pub updated_at: String,
}

/// One row on its way into the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRow {
    pub row: u64,
    /// E.164 when the phone parsed; the raw cell otherwise.
    pub phone: Option<String>,
    pub name: Option<String>,
    /// `Pending` with a body, or `Invalid` with a reason. Duplicates are
    /// decided by [`PlanRows::insert`], which sees every earlier row.
    pub outcome: Result<String, PlanProblem>,
    /// The recipient's own zone, for a window in each recipient's hours
    /// (`None` otherwise, and for rows that will not be sent).
    pub timezone: Option<crate::zones::RowZone>,
}

/// Why a row will not be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanProblem {
    pub code: ProblemCode,
    pub details: String,
}

/// Why a planned row is `invalid` or `duplicate`; stored as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    /// The phone cell is empty or does not parse to a number (E.164).
    InvalidPhone,
    /// A template needs a column this row leaves empty.
    MissingVariable,
    /// The CSV row itself is broken (wrong field count, bad bytes).
    BadRow,
    /// The rendered content breaks one of WhatsApp's limits.
    ContentRule,
    /// The same phone as an earlier row.
    Duplicate,
    /// The row's `timezone_column` cell is not an IANA zone name.
    InvalidTimezone,
    /// On the ledger's opt-out list: the row is `suppressed`.
    OptedOut,
    /// In one of the campaign's `[recipients] exclude` files: `suppressed`.
    Excluded,
    /// Over the `[audience]` cap of messages per phone at claim time:
    /// `suppressed` (`retry --suppressed --codes frequency_cap` reconsiders).
    FrequencyCap,
    /// The ledger shows this campaign already messaged the phone from
    /// another state file (a copied state, a second one beside it):
    /// `suppressed`, so nobody gets the campaign twice.
    AlreadyMessaged,
}

impl ProblemCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCode::InvalidPhone => "invalid_phone",
            ProblemCode::MissingVariable => "missing_variable",
            ProblemCode::BadRow => "bad_row",
            ProblemCode::ContentRule => "content_rule",
            ProblemCode::Duplicate => "duplicate",
            ProblemCode::InvalidTimezone => "invalid_timezone",
            ProblemCode::OptedOut => "opted_out",
            ProblemCode::Excluded => "excluded",
            ProblemCode::FrequencyCap => "frequency_cap",
            ProblemCode::AlreadyMessaged => "already_messaged",
        }
    }

    /// The state a planned row with this problem takes: a suppression is a
    /// choice not to send, not a fault in the row.
    pub fn state(self) -> RecipientState {
        match self {
            ProblemCode::OptedOut
            | ProblemCode::Excluded
            | ProblemCode::FrequencyCap
            | ProblemCode::AlreadyMessaged => RecipientState::Suppressed,
            ProblemCode::Duplicate => RecipientState::Duplicate,
            _ => RecipientState::Invalid,
        }
    }
}

impl fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a row when it went into the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Pending,
    Invalid,
    /// The same phone as an earlier row (its CSV row number).
    Duplicate {
        of_row: u64,
    },
    /// `--add-new-recipients`: the phone is already in the state; not added.
    AlreadyPlanned,
    /// Opted out or excluded: planned as `suppressed`, never sent.
    Suppressed,
}

/// Why a claimed row is not sent after all (see
/// [`StateStore::record_and_claim_screened`]): it becomes `suppressed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    pub code: ProblemCode,
    pub details: String,
}

/// A message to a phone that the ledger shows this campaign already sent
/// (or may have sent) from a state that is gone or another one: a new plan
/// marks the phone's row with it instead of sending again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierMessage {
    /// E.164.
    pub phone: String,
    /// Delivered for sure (`sent`), or perhaps (`uncertain`).
    pub sent: bool,
    pub message_id: Option<String>,
    pub at: DateTime<Utc>,
    /// Where it was recorded, for the row's details.
    pub details: String,
}

/// What the claim's check says about one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It may go: it becomes `sending`.
    Send,
    /// It must not go: it becomes `suppressed`.
    Suppress(Suppression),
    /// Not now (a limit is used up): it keeps its state, and the claim
    /// takes no later row either.
    Hold,
}

/// A row claimed for sending: its state is `sending` and committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: i64,
    pub row: u64,
    pub phone: String,
    pub body: String,
    /// Attempts made in earlier runs.
    pub attempts: u32,
    /// The recipient's own zone as planned (IANA name), when the campaign's
    /// window is in each recipient's hours.
    pub timezone: Option<String>,
}

/// What became of a claimed row: the engine's final word on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The API accepted the message.
    Sent { message_id: String },
    /// Rejected for good (validation, not found) or retries spent.
    Failed { code: String, details: String },
    /// The message may have been delivered (no answer after sending, a
    /// gateway's page, an answer too large to read): never resent automatically.
    Uncertain { code: String, details: String },
    /// Given back unsent (the run stopped first, or the key was refused before
    /// anything was accepted): `pending` again.
    Released,
}

impl Outcome {
    /// The state the row takes.
    pub fn state(&self) -> RecipientState {
        match self {
            Outcome::Sent { .. } => RecipientState::Sent,
            Outcome::Failed { .. } => RecipientState::Failed,
            Outcome::Uncertain { .. } => RecipientState::Uncertain,
            Outcome::Released => RecipientState::Pending,
        }
    }

    /// `(message_id, error_code, error_details)` as stored.
    fn columns(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        match self {
            Outcome::Sent { message_id } => (Some(message_id), None, None),
            Outcome::Failed { code, details } | Outcome::Uncertain { code, details } => {
                (None, Some(code), Some(details))
            }
            Outcome::Released => (None, None, None),
        }
    }
}

/// The outcome of one claimed row, as the state records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowOutcome {
    /// The claimed row's id ([`Claimed::id`]).
    pub id: i64,
    /// Attempts made in this run.
    pub attempts: u32,
    pub at: DateTime<Utc>,
    pub outcome: Outcome,
}

/// How many rows are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub pending: u64,
    pub sending: u64,
    pub sent: u64,
    pub failed: u64,
    pub uncertain: u64,
    pub invalid: u64,
    pub duplicate: u64,
    pub suppressed: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.pending
            + self.sending
            + self.sent
            + self.failed
            + self.uncertain
            + self.invalid
            + self.duplicate
            + self.suppressed
    }

    pub fn get(&self, state: RecipientState) -> u64 {
        match state {
            RecipientState::Pending => self.pending,
            RecipientState::Sending => self.sending,
            RecipientState::Sent => self.sent,
            RecipientState::Failed => self.failed,
            RecipientState::Uncertain => self.uncertain,
            RecipientState::Invalid => self.invalid,
            RecipientState::Duplicate => self.duplicate,
            RecipientState::Suppressed => self.suppressed,
        }
    }

    fn slot(&mut self, state: RecipientState) -> &mut u64 {
        match state {
            RecipientState::Pending => &mut self.pending,
            RecipientState::Sending => &mut self.sending,
            RecipientState::Sent => &mut self.sent,
            RecipientState::Failed => &mut self.failed,
            RecipientState::Uncertain => &mut self.uncertain,
            RecipientState::Invalid => &mut self.invalid,
            RecipientState::Duplicate => &mut self.duplicate,
            RecipientState::Suppressed => &mut self.suppressed,
        }
    }

    pub fn add(&mut self, state: RecipientState, n: u64) {
        *self.slot(state) += n;
    }

    pub fn move_one(&mut self, from: RecipientState, to: RecipientState) {
        let from_slot = self.slot(from);
        *from_slot = from_slot.saturating_sub(1);
        *self.slot(to) += 1;
    }
}

/// One recipient as the report shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecipientRecord {
    pub row: u64,
    pub phone: Option<String>,
    pub name: Option<String>,
    pub state: RecipientState,
    pub attempts: u32,
    pub message_id: Option<String>,
    pub error_code: Option<String>,
    pub error_details: Option<String>,
    pub updated_at: Option<String>,
    pub sent_at: Option<String>,
}

/// One run of `run`, for `status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub pid: u32,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub outcome: Option<String>,
    pub sent: u64,
    pub failed: u64,
    pub uncertain: u64,
}

/// A runner sending from a state shared by several (`status`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunnerRecord {
    pub id: i64,
    pub host: String,
    pub pid: u32,
    pub started_at: String,
    /// Until when its rows are its own unless it renews (the database's clock).
    pub lease_until: String,
}

/// Which rows `retry` puts back to pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetrySelection {
    /// Failed rows, optionally only those with one of these error codes.
    Failed {
        codes: Vec<String>,
    },
    Uncertain,
    /// Suppressed rows, optionally only those with one of these reasons
    /// (`frequency_cap`): claimed again, they are checked again, so an
    /// opted-out phone stays suppressed.
    Suppressed {
        codes: Vec<String>,
    },
}

/// SQLite's page cache while a plan is written: every row goes into four
/// indexes in one transaction, and a large cache keeps that from spilling.
pub(crate) const PLAN_CACHE_KIB: i64 = 16_384;

/// The page cache otherwise. A run commits every few milliseconds, and each
/// commit walks the whole cache (`pcache1TruncateUnsafe`): at 16 MiB that
/// was 8 % of a sending run's CPU under `perf`; at 2 MB it is gone from the
/// profile.
pub(crate) const RUN_CACHE_KIB: i64 = 2_000;

/// Timestamps are stored as fixed-width RFC 3339 UTC text, so they sort as text.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An open state file.
pub struct StateDb {
    // Declared before `watch` (which holds the lock), so it is closed first:
    // closing the lock's descriptor earlier would drop SQLite's POSIX locks
    // (see [`lock`]).
    conn: Connection,
    path: String,
    watch: FileWatch,
    /// Settled rows this run may claim besides pending ones (`retry`,
    /// `run --resend-uncertain`). Held here, not written to the file: rows the
    /// run does not get to keep their state, so no later run resends them
    /// without being asked.
    resend: Option<RetrySelection>,
    /// When the resend selection was given: only rows last changed before
    /// then are selected, so a row this run already sent again (and that
    /// came back uncertain or failed), or suppressed again, is not taken
    /// a second time by the same run.
    resend_since: String,
    /// The zones this run may claim rows of now (see
    /// [`StateStore::claim_only_zones`]); `None` for any.
    zones: Option<Vec<String>>,
}

/// What a run's handle watches so it never records into a file nobody
/// will read: the lock (which knows the file's identity) and its size.
#[derive(Default)]
struct FileWatch {
    /// Held by a run; also watches that the path still names this file.
    lock: Option<RunLock>,
    /// The file's size at the last check: a state file never shrinks (the
    /// tool never vacuums), so a smaller one was truncated under the run.
    last_size: u64,
}

impl FileWatch {
    /// See [`StateDb::check_file`]. Without the lock there is nothing to watch.
    fn check(&mut self, path: &str) -> Result<(), StateError> {
        let Some(lock) = &self.lock else {
            return Ok(());
        };
        let gone = |what| StateError::Gone {
            path: path.to_owned(),
            what,
        };
        let size = lock.check_identity().map_err(gone)?;
        if size < self.last_size {
            return Err(gone(FileGone::Truncated));
        }
        self.last_size = size;
        Ok(())
    }
}

impl fmt::Debug for StateDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateDb").field("path", &self.path).finish()
    }
}

impl StateDb {
    /// Opens the state file for a run: takes the run lock (creating the file
    /// owner-only if it does not exist), opens and migrates it, and records
    /// this process as the holder. From then on every write first checks
    /// that the path still names the locked file.
    pub fn open_for_run(path: &Path) -> Result<StateDb, StateError> {
        let (lock, _created) = RunLock::acquire(path, read_holder)?;
        let mut db = Self::open_with(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        db.watch.lock = Some(lock);
        // SQLite opened the path after the lock was taken: still the same file?
        db.check_file()?;
        db.record_holder()?;
        Ok(db)
    }

    /// Opens the state file, creating it owner-only (0600) if it does not
    /// exist, without the run lock (tests, scratch states). An existing empty
    /// file is refused, not taken for a new state.
    pub fn open_or_create(path: &Path) -> Result<StateDb, StateError> {
        if !path.exists() {
            create_private_file(path)?;
        } else {
            refuse_empty(path)?;
        }
        Self::open_with(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
    }

    /// Opens an existing state file for writing; a missing file is an error.
    pub fn open_existing(path: &Path) -> Result<StateDb, StateError> {
        if !path.exists() {
            return Err(StateError::Missing {
                path: path.display().to_string(),
            });
        }
        refuse_empty(path)?;
        Self::open_with(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
    }

    /// Opens an existing state file without writing to it: `status` and
    /// `report` read while a run is sending.
    pub fn open_read_only(path: &Path) -> Result<StateDb, StateError> {
        if !path.exists() {
            return Err(StateError::Missing {
                path: path.display().to_string(),
            });
        }
        refuse_empty(path)?;
        if let Ok(meta) = std::fs::metadata(path) {
            lock::check_names(path, &meta)?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StateError::Sql {
            path: path.display().to_string(),
            operation: "opening",
            source,
        })?;
        let db = StateDb {
            conn,
            path: path.display().to_string(),
            watch: FileWatch::default(),
            resend: None,
            resend_since: String::new(),
            zones: None,
        };
        db.conn
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| db.sql("configuring", e))?;
        check_owner(&db.conn, &db.path)?;
        let version: i64 = db
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| db.sql("reading the schema version", e))?;
        if version > schema::latest_version() {
            return Err(StateError::TooNew {
                path: db.path.clone(),
                found: version,
                known: schema::latest_version(),
            });
        }
        if version < schema::latest_version() {
            return Err(StateError::NotPlanned {
                path: db.path.clone(),
            });
        }
        Ok(db)
    }

    /// An in-memory state, for tests.
    pub fn in_memory() -> Result<StateDb, StateError> {
        let conn = Connection::open_in_memory().map_err(|source| StateError::Sql {
            path: ":memory:".into(),
            operation: "opening",
            source,
        })?;
        Self::prepare(conn, ":memory:".into())
    }

    fn open_with(path: &Path, flags: OpenFlags) -> Result<StateDb, StateError> {
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|source| StateError::Sql {
                path: path.display().to_string(),
                operation: "opening",
                source,
            })?;
        Self::prepare(conn, path.display().to_string())
    }

    fn prepare(mut conn: Connection, path: String) -> Result<StateDb, StateError> {
        let sql = |operation, source| StateError::Sql {
            path: path.clone(),
            operation,
            source,
        };
        // Per-connection settings. WAL lets `status` read while a run writes;
        // FULL makes every claim durable before its requests leave, so a power
        // cut can never turn a sent row back into a pending one.
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| sql("configuring", e))?;
        // Before anything that writes (switching to WAL is a write).
        check_owner(&conn, &path)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| sql("enabling WAL", e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| sql("configuring", e))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| sql("configuring", e))?;
        // A fixed page cache keeps memory flat however many rows the plan has.
        conn.pragma_update(None, "cache_size", -RUN_CACHE_KIB)
            .map_err(|e| sql("configuring", e))?;
        conn.set_prepared_statement_cache_capacity(32);
        match schema::migrate(&mut conn).map_err(|e| sql("migrating the schema", e))? {
            Ok(()) => {}
            Err(found) => {
                return Err(StateError::TooNew {
                    path,
                    found,
                    known: schema::latest_version(),
                });
            }
        }
        Ok(StateDb {
            conn,
            path,
            watch: FileWatch::default(),
            resend: None,
            resend_since: String::new(),
            zones: None,
        })
    }

    /// Whether this handle holds the run lock (opened by [`StateDb::open_for_run`]).
    pub fn is_locked(&self) -> bool {
        self.watch.lock.is_some()
    }

    /// With the run lock: fails once the path no longer names the locked
    /// file (deleted, moved, replaced) or the file shrank (truncated). Run
    /// before and after every write, so a run never goes on recording into
    /// a file nobody will read, or one that another run may now plan again.
    pub fn check_file(&mut self) -> Result<(), StateError> {
        self.watch.check(&self.path)
    }

    /// Writes this process into the `holder` table, for a second run to name.
    fn record_holder(&mut self) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO holder (id, pid, since) VALUES (1, ?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET pid = excluded.pid, since = excluded.since",
                params![std::process::id(), timestamp(Utc::now())],
            )
            .map_err(|e| self.sql("recording the lock holder", e))?;
        self.check_file()
    }

    /// Copies the state as this connection sees it into a new owner-only
    /// file: what a run knew when its state file was taken away.
    pub fn save_copy(&self, to: &Path) -> Result<(), StateError> {
        let err = |e: std::io::Error| StateError::Create {
            path: to.display().to_string(),
            reason: e.to_string(),
        };
        // Created first, owner-only: VACUUM INTO would make it world-readable.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options.open(to).map_err(err)?;
        if let Err(e) = self
            .conn
            .execute("VACUUM INTO ?1", [to.display().to_string()])
        {
            // An empty "copy" would look like a rescue and hold nothing.
            let _ = std::fs::remove_file(to);
            return Err(self.sql("saving a copy", e));
        }
        Ok(())
    }

    fn sql(&self, operation: &'static str, source: rusqlite::Error) -> StateError {
        StateError::Sql {
            path: self.path.clone(),
            operation,
            source,
        }
    }
}

/// Refuses a file that is not a state of this tool, before touching it.
fn check_owner(conn: &Connection, path: &str) -> Result<(), StateError> {
    let not_a_state = |what: String| StateError::NotAState {
        path: path.to_owned(),
        what,
    };
    match schema::check_owner(conn) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(what)) => Err(not_a_state(what)),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::NotADatabase =>
        {
            Err(not_a_state("not an SQLite database".to_owned()))
        }
        Err(source) => Err(StateError::Sql {
            path: path.to_owned(),
            operation: "reading the file's header",
            source,
        }),
    }
}

/// Who holds the run lock on the state at `path`, as recorded in it
/// ("pid 1234 since …"); `None` when that cannot be read (the holder may be
/// creating the file this very moment).
pub fn read_holder(path: &Path) -> Option<String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    conn.busy_timeout(Duration::from_secs(2)).ok()?;
    conn.query_row("SELECT pid, since FROM holder WHERE id = 1", [], |r| {
        Ok(format!(
            "pid {} since {}",
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?
        ))
    })
    .ok()
}

/// A 0-byte file is not a state: it may be an empty file of someone else's
/// that a symlink or a typo points at, and SQLite would make it a database.
fn refuse_empty(path: &Path) -> Result<(), StateError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() == 0 => Err(StateError::Empty {
            path: path.display().to_string(),
        }),
        _ => Ok(()),
    }
}

/// Creates an empty file readable and writable by its owner only. SQLite
/// gives its `-wal` and `-shm` files the same mode as the database file.
pub fn create_private_file(path: &Path) -> Result<(), StateError> {
    let err = |e: std::io::Error| StateError::Create {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("the folder {} does not exist", parent.display()),
        )));
    }
    create_owner_only(path).map_err(err)
}

/// Creates an empty file readable by its owner only (0600); a file another
/// process created a moment earlier is left as it is. Shared by the state
/// and the ledger, which both hold phone numbers.
pub(crate) fn create_owner_only(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The default state path: `<campaign file stem>.state.db` beside the campaign file.
pub fn default_state_path(campaign_file: &Path) -> PathBuf {
    let stem = campaign_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "campaign".to_owned());
    campaign_file.with_file_name(format!("{stem}.state.db"))
}

#[cfg(test)]
mod tests;
