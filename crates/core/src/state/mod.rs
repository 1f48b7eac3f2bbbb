//! The state file: one SQLite database per campaign that records the plan and
//! every recipient's outcome, so a run can stop anywhere and resume exactly.
//!
//! This module owns the schema ([`schema`]), the run lock ([`lock`]), and every
//! statement the rest of the program runs. It knows nothing about HTTP or
//! templates: it stores bodies it is given and states it is told. Writes are
//! batched in transactions by the callers' design (one plan transaction, one
//! transaction per claim, results committed in groups).

pub mod lock;
pub mod reads;
pub mod schema;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

pub use lock::{FileGone, LockError, RunLock};

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
}

impl RecipientState {
    pub const ALL: [RecipientState; 7] = [
        RecipientState::Pending,
        RecipientState::Sending,
        RecipientState::Sent,
        RecipientState::Failed,
        RecipientState::Uncertain,
        RecipientState::Invalid,
        RecipientState::Duplicate,
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
    /// decided by [`PlanSink::insert`], which sees every earlier row.
    pub outcome: Result<String, PlanProblem>,
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
}

impl ProblemCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCode::InvalidPhone => "invalid_phone",
            ProblemCode::MissingVariable => "missing_variable",
            ProblemCode::BadRow => "bad_row",
            ProblemCode::ContentRule => "content_rule",
            ProblemCode::Duplicate => "duplicate",
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
}

/// Inserts rows inside the plan's single transaction. Its statements are
/// prepared once: planning a million rows runs them a million times each.
pub struct PlanSink<'tx> {
    /// The first sendable row with a phone: decides duplicates.
    find_first: rusqlite::Statement<'tx>,
    /// Any row with a phone: decides "already planned" in add mode.
    find_any: rusqlite::Statement<'tx>,
    /// An earlier generation's row at a CSV row number: in add mode, an
    /// unusable row without a phone is recognised by its place.
    find_row: rusqlite::Statement<'tx>,
    insert: rusqlite::Statement<'tx>,
    generation: i64,
    /// In add mode, rows whose phone the state already has are skipped.
    add_mode: bool,
    now: String,
    path: &'tx str,
}

impl<'tx> PlanSink<'tx> {
    fn new(
        tx: &'tx rusqlite::Transaction<'tx>,
        generation: i64,
        add_mode: bool,
        path: &'tx str,
    ) -> rusqlite::Result<PlanSink<'tx>> {
        Ok(PlanSink {
            find_first: tx.prepare(
                "SELECT row, generation FROM recipients
                 WHERE phone = ?1 AND state NOT IN ('invalid', 'duplicate')
                 ORDER BY id LIMIT 1",
            )?,
            find_any: tx.prepare("SELECT 1 FROM recipients WHERE phone = ?1 LIMIT 1")?,
            find_row: tx.prepare(
                "SELECT 1 FROM recipients WHERE row = ?1 AND generation < ?2 LIMIT 1",
            )?,
            insert: tx.prepare(
                "INSERT INTO recipients
                   (row, generation, phone, name, state, body, error_code, error_details, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?,
            generation,
            add_mode,
            now: timestamp(Utc::now()),
            path,
        })
    }

    pub fn insert(&mut self, row: &PlannedRow) -> Result<Inserted, StateError> {
        let path = self.path;
        let sql_err = |source| StateError::Sql {
            path: path.to_owned(),
            operation: "planning a row",
            source,
        };
        let (state, body, code, details, inserted) = match (&row.outcome, &row.phone) {
            (Ok(body), Some(phone)) => {
                let first: Option<(u64, i64)> = self
                    .find_first
                    .query_row([phone], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(sql_err)?;
                match first {
                    Some((_, generation)) if self.add_mode && generation < self.generation => {
                        return Ok(Inserted::AlreadyPlanned);
                    }
                    Some((of_row, _)) => (
                        RecipientState::Duplicate,
                        None,
                        Some(ProblemCode::Duplicate.as_str()),
                        Some(format!("same phone as row {of_row}")),
                        Inserted::Duplicate { of_row },
                    ),
                    None => (
                        RecipientState::Pending,
                        Some(body.as_str()),
                        None,
                        None,
                        Inserted::Pending,
                    ),
                }
            }
            (Ok(_), None) => (
                RecipientState::Invalid,
                None,
                Some(ProblemCode::InvalidPhone.as_str()),
                Some("no phone".to_owned()),
                Inserted::Invalid,
            ),
            (Err(problem), phone) => {
                // In add mode an unusable row is planned once, not again on
                // every pass: by its phone when it has one, else by its place
                // (rows appended to a growing CSV keep their numbers).
                let already = match phone {
                    _ if !self.add_mode => false,
                    Some(phone) => self.find_any.exists([phone]).map_err(sql_err)?,
                    None => self
                        .find_row
                        .exists(params![row.row as i64, self.generation])
                        .map_err(sql_err)?,
                };
                if already {
                    return Ok(Inserted::AlreadyPlanned);
                }
                (
                    RecipientState::Invalid,
                    None,
                    Some(problem.code.as_str()),
                    Some(problem.details.clone()),
                    Inserted::Invalid,
                )
            }
        };
        self.insert
            .execute(params![
                row.row as i64,
                self.generation,
                row.phone,
                row.name,
                state.as_str(),
                body,
                code,
                details,
                self.now,
            ])
            .map_err(sql_err)?;
        Ok(inserted)
    }
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

/// Which rows `retry` puts back to pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetrySelection {
    /// Failed rows, optionally only those with one of these error codes.
    Failed {
        codes: Vec<String>,
    },
    Uncertain,
}

/// The claim's extra condition for a resend selection, with its parameters
/// (bound after the claim's own two).
fn resend_clause(selection: Option<&RetrySelection>) -> (String, Vec<String>) {
    match selection {
        None => (String::new(), Vec::new()),
        Some(RetrySelection::Uncertain) => (" OR state = 'uncertain'".to_owned(), Vec::new()),
        Some(RetrySelection::Failed { codes }) if codes.is_empty() => {
            (" OR state = 'failed'".to_owned(), Vec::new())
        }
        Some(RetrySelection::Failed { codes }) => {
            let marks = (0..codes.len())
                .map(|i| format!("?{}", i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            (
                format!(" OR (state = 'failed' AND error_code IN ({marks}))"),
                codes.clone(),
            )
        }
    }
}

/// How [`StateDb::write_rows`] treats the rows already planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    Fresh,
    Add,
    Replace,
}

/// Timestamps are stored as fixed-width RFC 3339 UTC text, so they sort as text.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An open state file.
pub struct StateDb {
    // Declared before `lock`, so it is closed first: closing the lock's
    // descriptor earlier would drop SQLite's POSIX locks (see [`lock`]).
    conn: Connection,
    path: String,
    /// Held by a run; also watches that the path still names this file.
    lock: Option<RunLock>,
    /// The file's size at the last check: a state file never shrinks (the
    /// tool never vacuums), so a smaller one was truncated under the run.
    last_size: u64,
    /// Settled rows this run may claim besides pending ones (`retry`,
    /// `run --resend-uncertain`). Held here, not written to the file: rows the
    /// run does not get to keep their state, so no later run resends them
    /// without being asked.
    resend: Option<RetrySelection>,
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
        db.lock = Some(lock);
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
            lock: None,
            last_size: 0,
            resend: None,
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
        conn.pragma_update(None, "cache_size", -16_384)
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
            lock: None,
            last_size: 0,
            resend: None,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Lets this handle's claims take the rows `selection` picks as well as
    /// pending ones, for as long as it is open.
    pub fn resend_during_run(&mut self, selection: Option<RetrySelection>) {
        self.resend = selection;
    }

    /// Whether this handle holds the run lock (opened by [`StateDb::open_for_run`]).
    pub fn is_locked(&self) -> bool {
        self.lock.is_some()
    }

    /// With the run lock: fails once the path no longer names the locked
    /// file (deleted, moved, replaced) or the file shrank (truncated). Run
    /// before and after every write, so a run never goes on recording into
    /// a file nobody will read, or one that another run may now plan again.
    pub fn check_file(&mut self) -> Result<(), StateError> {
        let Some(lock) = &self.lock else {
            return Ok(());
        };
        let gone = |what| StateError::Gone {
            path: self.path.clone(),
            what,
        };
        let size = lock.check_identity().map_err(gone)?;
        if size < self.last_size {
            return Err(gone(FileGone::Truncated));
        }
        self.last_size = size;
        Ok(())
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

    /// The stored plan, if the campaign has been planned.
    pub fn plan_info(&self) -> Result<Option<PlanInfo>, StateError> {
        self.conn
            .query_row(
                "SELECT campaign_name, message_type, campaign_file, csv_file, message_fingerprint,
                        csv_sha256, csv_rows, planned_at, updated_at FROM plan WHERE id = 1",
                [],
                |r| {
                    Ok(PlanInfo {
                        campaign_name: r.get(0)?,
                        message_type: r.get(1)?,
                        campaign_file: r.get(2)?,
                        csv_file: r.get(3)?,
                        message_fingerprint: r.get(4)?,
                        csv_sha256: r.get(5)?,
                        csv_rows: r.get::<_, i64>(6)? as u64,
                        planned_at: r.get(7)?,
                        updated_at: r.get(8)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql("reading the plan", e))
    }

    /// Writes a whole plan in one transaction: either every row is planned or
    /// none is. `fill` inserts the rows; `info` is written after it with the
    /// counts `fill` returns (the CSV hash is only known after the last row).
    pub fn write_plan<T>(
        &mut self,
        fill: impl FnOnce(&mut PlanSink<'_>) -> Result<(T, PlanInfo), anyhow::Error>,
    ) -> Result<T, anyhow::Error> {
        self.write_rows(WriteMode::Fresh, fill)
    }

    /// Replaces the whole plan in one transaction: the old rows go and the
    /// new ones come, or nothing changes. Only for a state from which nothing
    /// was ever sent ([`StateDb::anything_sent`]); the caller checks.
    pub fn replace_plan<T>(
        &mut self,
        fill: impl FnOnce(&mut PlanSink<'_>) -> Result<(T, PlanInfo), anyhow::Error>,
    ) -> Result<T, anyhow::Error> {
        self.write_rows(WriteMode::Replace, fill)
    }

    /// `--add-new-recipients`: inserts rows whose phone is not planned yet, as a
    /// new generation, and updates the stored CSV hash, in one transaction.
    pub fn add_to_plan<T>(
        &mut self,
        fill: impl FnOnce(&mut PlanSink<'_>) -> Result<(T, PlanInfo), anyhow::Error>,
    ) -> Result<T, anyhow::Error> {
        self.write_rows(WriteMode::Add, fill)
    }

    fn write_rows<T>(
        &mut self,
        mode: WriteMode,
        fill: impl FnOnce(&mut PlanSink<'_>) -> Result<(T, PlanInfo), anyhow::Error>,
    ) -> Result<T, anyhow::Error> {
        let path = self.path.clone();
        let sql = |operation, source| StateError::Sql {
            path: path.clone(),
            operation,
            source,
        };
        self.check_file()?;
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sql("starting the plan", e))?;
        if mode == WriteMode::Replace {
            tx.execute_batch("DELETE FROM recipients; DELETE FROM plan;")
                .map_err(|e| sql("removing the old plan", e))?;
        }
        let add_mode = mode == WriteMode::Add;
        let generation: i64 = tx
            .query_row(
                "SELECT coalesce(max(generation), 0) + 1 FROM recipients",
                [],
                |r| r.get(0),
            )
            .map_err(|e| sql("starting the plan", e))?;
        let (value, info) = {
            let mut sink = PlanSink::new(&tx, generation, add_mode, &path)
                .map_err(|e| sql("starting the plan", e))?;
            fill(&mut sink)?
        };
        tx.execute(
            "INSERT INTO plan (id, campaign_name, message_type, campaign_file, csv_file,
                               message_fingerprint, csv_sha256, csv_rows, planned_at, updated_at)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT(id) DO UPDATE SET
               campaign_name = excluded.campaign_name, campaign_file = excluded.campaign_file,
               csv_file = excluded.csv_file, csv_sha256 = excluded.csv_sha256,
               csv_rows = excluded.csv_rows, updated_at = excluded.updated_at",
            params![
                info.campaign_name,
                info.message_type,
                info.campaign_file,
                info.csv_file,
                info.message_fingerprint,
                info.csv_sha256,
                info.csv_rows as i64,
                info.planned_at,
                info.updated_at,
            ],
        )
        .map_err(|e| sql("recording the plan", e))?;
        tx.commit().map_err(|e| sql("committing the plan", e))?;
        self.check_file()?;
        Ok(value)
    }

    /// Whether anything may have left for the network from this state: a row
    /// sent, failed, uncertain or in flight, or one with an attempt on record.
    /// Until then the plan may still be made again.
    pub fn anything_sent(&self) -> Result<bool, StateError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM recipients
                   WHERE state IN ('sending', 'sent', 'failed', 'uncertain') OR attempts > 0)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.sql("reading the plan", e))
    }

    /// Rows left `sending` by a run that died mid-flight may have been
    /// delivered: they become `uncertain`. Returns how many.
    pub fn mark_interrupted_uncertain(&mut self) -> Result<u64, StateError> {
        self.check_file()?;
        let now = timestamp(Utc::now());
        let n = self
            .conn
            .execute(
                "UPDATE recipients SET state = 'uncertain', error_code = 'interrupted',
                   error_details = 'the run stopped while this message was being sent; it may have been delivered',
                   updated_at = ?1
                 WHERE state = 'sending'",
                [now],
            )
            .map_err(|e| self.sql("recovering interrupted rows", e))?;
        Ok(n as u64)
    }

    /// Marks up to `n` pending rows `sending` and commits, in row order.
    pub fn claim(&mut self, n: usize) -> Result<Vec<Claimed>, StateError> {
        self.record_and_claim(&[], n)
    }

    /// Writes a batch of outcomes in one transaction.
    pub fn record(&mut self, outcomes: &[RowOutcome]) -> Result<(), StateError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        self.record_and_claim(outcomes, 0).map(|_| ())
    }

    /// Records outcomes and claims up to `n` more rows in one transaction: one
    /// commit (and one fsync) where a run would otherwise need two. The claim
    /// is durable before this returns, so no request can leave for a row the
    /// file does not show as `sending`.
    pub fn record_and_claim(
        &mut self,
        outcomes: &[RowOutcome],
        n: usize,
    ) -> Result<Vec<Claimed>, StateError> {
        self.check_file()?;
        let path = self.path.clone();
        let sql = |operation: &'static str| {
            let path = path.clone();
            move |source| StateError::Sql {
                path: path.clone(),
                operation,
                source,
            }
        };
        let tx = self.conn.transaction().map_err(sql("recording results"))?;
        if !outcomes.is_empty() {
            // `state = 'sending'`: a late outcome never overwrites a row
            // something else already settled.
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE recipients SET state = ?2, attempts = attempts + ?3,
                       message_id = coalesce(?4, message_id), error_code = ?5, error_details = ?6,
                       updated_at = ?7,
                       sent_at = CASE WHEN ?2 = 'sent' THEN ?7 ELSE sent_at END
                     WHERE id = ?1 AND state = 'sending'",
                )
                .map_err(sql("recording results"))?;
            for o in outcomes {
                let at = timestamp(o.at);
                let (message_id, code, details) = o.outcome.columns();
                stmt.execute(params![
                    o.id,
                    o.outcome.state().as_str(),
                    o.attempts as i64,
                    message_id,
                    code,
                    details,
                    at,
                ])
                .map_err(sql("recording results"))?;
            }
        }
        let mut claimed = Vec::new();
        if n > 0 {
            let (also, codes) = resend_clause(self.resend.as_ref());
            let mut stmt = tx
                .prepare_cached(&format!(
                    "UPDATE recipients SET state = 'sending', updated_at = ?1
                     WHERE id IN (SELECT id FROM recipients
                                  WHERE state = 'pending'{also} ORDER BY id LIMIT ?2)
                     RETURNING id, row, phone, body, attempts"
                ))
                .map_err(sql("claiming rows"))?;
            let now = timestamp(Utc::now());
            let limit = n as i64;
            let mut values: Vec<&dyn rusqlite::ToSql> = vec![&now, &limit];
            values.extend(codes.iter().map(|c| c as &dyn rusqlite::ToSql));
            claimed = stmt
                .query_map(values.as_slice(), |r| {
                    Ok(Claimed {
                        id: r.get(0)?,
                        row: r.get::<_, i64>(1)? as u64,
                        phone: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                        body: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                        attempts: r.get::<_, i64>(4)? as u32,
                    })
                })
                .map_err(sql("claiming rows"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("claiming rows"))?;
            claimed.sort_by_key(|c| c.id);
        }
        tx.commit().map_err(sql("committing"))?;
        // The claim is committed, but to a file that may no longer be the
        // state: its rows must not be sent.
        self.check_file()?;
        Ok(claimed)
    }

    pub fn counts(&self) -> Result<Counts, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, count(*) FROM recipients GROUP BY state")
            .map_err(|e| self.sql("counting rows", e))?;
        let mut counts = Counts::default();
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.sql("counting rows", e))?;
        for row in rows {
            let (state, n) = row.map_err(|e| self.sql("counting rows", e))?;
            if let Some(state) = RecipientState::parse(&state) {
                counts.add(state, n as u64);
            }
        }
        Ok(counts)
    }

    /// Messages sent at or after `since` (the daily limit's rolling window).
    /// Rows that became `uncertain` in that time count too: they may have
    /// been delivered, and a limit must not be exceeded on a guess.
    pub fn sent_since(&self, since: DateTime<Utc>) -> Result<u64, StateError> {
        let since = timestamp(since);
        let count = |sql: &str| {
            self.conn
                .query_row(sql, [&since], |r| r.get::<_, i64>(0))
                .map_err(|e| self.sql("counting recent sends", e))
        };
        let sent = count("SELECT count(*) FROM recipients WHERE sent_at >= ?1")?;
        let uncertain = count(
            "SELECT count(*) FROM recipients WHERE state = 'uncertain' AND updated_at >= ?1",
        )?;
        Ok((sent + uncertain) as u64)
    }

    /// The `k`-th oldest send time at or after `since` (1-based): when the
    /// rolling window frees its next slot.
    pub fn nth_sent_since(
        &self,
        since: DateTime<Utc>,
        k: u64,
    ) -> Result<Option<DateTime<Utc>>, StateError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT sent_at FROM recipients WHERE sent_at >= ?1 ORDER BY sent_at LIMIT 1 OFFSET ?2",
                params![timestamp(since), k.saturating_sub(1) as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql("reading recent sends", e))?;
        Ok(text
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc)))
    }

    /// Error codes of failed, uncertain and invalid rows, most frequent first.
    pub fn error_counts(&self) -> Result<Vec<(String, u64)>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT error_code, count(*) AS n FROM recipients
                 WHERE error_code IS NOT NULL AND state IN ('failed', 'uncertain', 'invalid')
                 GROUP BY error_code ORDER BY n DESC, error_code",
            )
            .map_err(|e| self.sql("counting errors", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.sql("counting errors", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql("counting errors", e))
    }

    /// How many rows a retry selection picks.
    pub fn count_for_retry(&self, selection: &RetrySelection) -> Result<u64, StateError> {
        let n: i64 = match selection {
            RetrySelection::Uncertain => self.conn.query_row(
                "SELECT count(*) FROM recipients WHERE state = 'uncertain'",
                [],
                |r| r.get(0),
            ),
            RetrySelection::Failed { codes } if codes.is_empty() => self.conn.query_row(
                "SELECT count(*) FROM recipients WHERE state = 'failed'",
                [],
                |r| r.get(0),
            ),
            RetrySelection::Failed { codes } => {
                let mut total = 0;
                for code in codes {
                    total += self
                        .conn
                        .query_row(
                            "SELECT count(*) FROM recipients WHERE state = 'failed' AND error_code = ?1",
                            [code],
                            |r| r.get::<_, i64>(0),
                        )
                        .map_err(|e| self.sql("counting rows", e))?;
                }
                Ok(total)
            }
        }
        .map_err(|e| self.sql("counting rows", e))?;
        Ok(n as u64)
    }

    /// Every recipient in row order, optionally only some states; `visit` is
    /// called per row so a report of a million rows is never held in memory.
    pub fn for_each_recipient(
        &self,
        states: &[RecipientState],
        mut visit: impl FnMut(RecipientRecord) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {RECORD_COLUMNS} FROM recipients ORDER BY id"
            ))
            .map_err(|e| self.sql("reading recipients", e))?;
        let mut rows = stmt
            .query([])
            .map_err(|e| self.sql("reading recipients", e))?;
        while let Some(r) = rows.next().map_err(|e| self.sql("reading recipients", e))? {
            let record = read_record(r).map_err(|e| self.sql("reading recipients", e))?;
            if states.is_empty() || states.contains(&record.state) {
                visit(record)?;
            }
        }
        Ok(())
    }

    /// The phone and planned body of the latest row planned at a CSV row number.
    pub fn body_for_row(&self, row: u64) -> Result<Option<(String, String)>, StateError> {
        self.conn
            .query_row(
                "SELECT phone, body FROM recipients WHERE row = ?1 AND body IS NOT NULL
                 ORDER BY id DESC LIMIT 1",
                [row as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.sql("reading a planned body", e))
    }

    /// Up to `limit` rows in `state` with their planned bodies, in the order a
    /// run claims them: `(row, phone, body)`. For `preview`.
    pub fn planned_bodies(
        &self,
        state: RecipientState,
        limit: usize,
    ) -> Result<Vec<(u64, String, String)>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT row, phone, body FROM recipients
                 WHERE state = ?1 AND body IS NOT NULL ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.sql("reading planned bodies", e))?;
        let rows = stmt
            .query_map(params![state.as_str(), limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    r.get(2)?,
                ))
            })
            .map_err(|e| self.sql("reading planned bodies", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql("reading planned bodies", e))
    }

    /// The recipient most recently planned at a CSV row number, with its
    /// planned body when it has one (invalid and duplicate rows have none).
    pub fn recipient_at_row(
        &self,
        row: u64,
    ) -> Result<Option<(RecipientRecord, Option<String>)>, StateError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {RECORD_COLUMNS}, body FROM recipients
                     WHERE row = ?1 ORDER BY id DESC LIMIT 1"
                ),
                [row as i64],
                |r| Ok((read_record(r)?, r.get(10)?)),
            )
            .optional()
            .map_err(|e| self.sql("reading a recipient", e))
    }

    /// Records the start of a run; returns its id.
    pub fn start_run(&mut self) -> Result<i64, StateError> {
        self.check_file()?;
        self.conn
            .execute(
                "INSERT INTO runs (pid, started_at) VALUES (?1, ?2)",
                params![std::process::id(), timestamp(Utc::now())],
            )
            .map_err(|e| self.sql("recording the run", e))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn finish_run(
        &mut self,
        run_id: i64,
        outcome: &str,
        sent: u64,
        failed: u64,
        uncertain: u64,
    ) -> Result<(), StateError> {
        self.check_file()?;
        self.conn
            .execute(
                "UPDATE runs SET finished_at = ?2, outcome = ?3, sent = ?4, failed = ?5, uncertain = ?6
                 WHERE id = ?1",
                params![
                    run_id,
                    timestamp(Utc::now()),
                    outcome,
                    sent as i64,
                    failed as i64,
                    uncertain as i64
                ],
            )
            .map_err(|e| self.sql("recording the run", e))?;
        Ok(())
    }

    /// The most recent runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, pid, started_at, finished_at, outcome, sent, failed, uncertain
                 FROM runs ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| self.sql("reading runs", e))?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(RunRecord {
                    id: r.get(0)?,
                    pid: r.get::<_, i64>(1)? as u32,
                    started_at: r.get(2)?,
                    finished_at: r.get(3)?,
                    outcome: r.get(4)?,
                    sent: r.get::<_, i64>(5)? as u64,
                    failed: r.get::<_, i64>(6)? as u64,
                    uncertain: r.get::<_, i64>(7)? as u64,
                })
            })
            .map_err(|e| self.sql("reading runs", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql("reading runs", e))
    }
}

/// The columns [`read_record`] reads, in its order.
const RECORD_COLUMNS: &str = "row, phone, name, state, attempts, message_id, error_code, \
                              error_details, updated_at, sent_at";

fn read_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecipientRecord> {
    let state_text: String = r.get(3)?;
    let state = RecipientState::parse(&state_text).ok_or_else(|| {
        // The schema's CHECK constraint keeps unknown states out of the file.
        rusqlite::Error::InvalidColumnType(
            3,
            format!("state '{state_text}'"),
            rusqlite::types::Type::Text,
        )
    })?;
    Ok(RecipientRecord {
        row: r.get::<_, i64>(0)? as u64,
        phone: r.get(1)?,
        name: r.get(2)?,
        state,
        attempts: r.get::<_, i64>(4)? as u32,
        message_id: r.get(5)?,
        error_code: r.get(6)?,
        error_details: r.get(7)?,
        updated_at: r.get(8)?,
        sent_at: r.get(9)?,
    })
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
        Err(e) => Err(err(e)),
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
