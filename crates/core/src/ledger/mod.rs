//! The audience ledger: what the account's campaigns know about each other.
//! It records each message that left or may have left (phone, campaign, the
//! state that sent it, when, `sent` or `uncertain`, the message id) and
//! holds the account's opt-out list.
//!
//! A campaign's state stays the source of truth for that campaign; the
//! ledger is what campaigns know about each other. It is what frequency caps
//! per phone, an account-wide daily limit of unique recipients and "this
//! campaign name already sent from another state" read, at claim time
//! ([`admit`]). It lives where [`LedgerLocation`] says, behind one seam,
//! [`LedgerStore`]: one SQLite file per account ([`FileLedger`]; WAL, a busy
//! timeout, one short transaction per batch of outcomes), shared by the
//! runs of one machine, or tables in a PostgreSQL database ([`pg`]), shared
//! by runners on every machine that reaches it. This module opens, migrates
//! and queries it; it does not decide what a run does with the answers (the
//! engine does), nor where it is ([`location`]).

mod admit;
pub mod location;
pub mod pg;
pub mod phone_list;
mod schema;
pub mod screen;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, params};

use crate::phone::E164;
use crate::state::timestamp;

pub use admit::{Admission, Candidate, Limits, Sender, Settled};
pub use location::LedgerLocation;
pub use schema::{APPLICATION_ID, latest_version};

/// How long a write waits for another run's transaction on the same ledger.
/// Each holds it for one batch (milliseconds); this only rides out a slow disk.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Switches a ledger to WAL (a no-op once it is). Runs opening a new ledger
/// at the same moment race for the switch, and SQLite answers the losers
/// "locked" at once rather than through the busy timeout (waiting could
/// deadlock), so they ask again, within the busy timeout.
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Why the ledger cannot be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot create the ledger {path}: {reason}")]
    Create { path: String, reason: String },
    #[error("ledger {path}: {operation}: {source}")]
    Sql {
        path: String,
        operation: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "{path} is not a ledger of convers8-campaign: it is {what}; check [ledger] path, CONVERS8_LEDGER or --ledger (nothing in it was changed)"
    )]
    NotALedger { path: String, what: String },
    #[error(
        "ledger {path} was written by a newer convers8-campaign (schema {found}, this build knows {known}): upgrade the tool"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("ledger {location}: {operation}: {reason}")]
    Postgres {
        location: String,
        operation: &'static str,
        reason: String,
    },
    #[error(
        "no ledger location: neither CONVERS8_LEDGER, XDG_STATE_HOME nor HOME is set; set one, or name the ledger with [ledger] path in the campaign (optout: --ledger PATH)"
    )]
    NoLocation,
}

/// Whether a message went out for sure, may have, or is on its way (its
/// row claimed by a run that has not recorded an answer yet). All three
/// count as messages for caps and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerState {
    Sending,
    Sent,
    Uncertain,
}

impl LedgerState {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerState::Sending => "sending",
            LedgerState::Sent => "sent",
            LedgerState::Uncertain => "uncertain",
        }
    }

    fn parse(text: &str) -> LedgerState {
        match text {
            "sent" => LedgerState::Sent,
            "sending" => LedgerState::Sending,
            // Anything else may have been delivered.
            _ => LedgerState::Uncertain,
        }
    }
}

/// One message that left or may have left.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LedgerEntry {
    /// E.164.
    pub phone: String,
    /// The `[campaign] name`.
    pub campaign: String,
    /// The state file that sent it.
    pub state_file: String,
    /// Its CSV data row in that state.
    pub row: u64,
    pub at: DateTime<Utc>,
    pub state: LedgerState,
    pub message_id: Option<String>,
}

/// One phone on the opt-out list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OptOut {
    pub phone: String,
    pub added_at: String,
    pub source: String,
}

/// An open ledger file.
pub struct FileLedger {
    conn: Connection,
    path: PathBuf,
    /// Whose reservations this handle's are (see [`new_holder`]).
    holder: String,
}

/// A name for one ledger handle's reservations, unique across processes
/// and machines (128 random bits): a run of a shared state gives back only
/// its own when a message does not go out.
pub(crate) fn new_holder() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl std::fmt::Debug for FileLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLedger")
            .field("path", &self.path)
            .finish()
    }
}

impl FileLedger {
    /// Opens the ledger at `path`, creating it (owner-only, 0600, in a
    /// directory made 0700 when missing: it holds every phone the account
    /// ever messaged) if it does not exist.
    pub fn open(path: &Path) -> Result<FileLedger, LedgerError> {
        if !path.exists() {
            create_private(path)?;
        }
        Self::open_file(path)
    }

    /// Opens the ledger if the file exists; `Ok(None)` otherwise. For a
    /// campaign that does not record (`[ledger] enabled = false`) but still
    /// honours the account's opt-outs, without creating a file.
    pub fn open_existing(path: &Path) -> Result<Option<FileLedger>, LedgerError> {
        if !path.exists() {
            return Ok(None);
        }
        Self::open_file(path).map(Some)
    }

    fn open_file(path: &Path) -> Result<FileLedger, LedgerError> {
        let shown = path.display().to_string();
        let sql = |operation, source| LedgerError::Sql {
            path: shown.clone(),
            operation,
            source,
        };
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql("opening", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sql("configuring", e))?;
        // One read transaction, so the header and the table count come from
        // one moment: another run creating the ledger right now must not be
        // seen half-way (tables there, application id not yet read).
        let owner = {
            let snapshot = rusqlite::Transaction::new_unchecked(
                &conn,
                rusqlite::TransactionBehavior::Deferred,
            )
            .map_err(|e| sql("reading its header", e))?;
            schema::check_owner(&snapshot).map_err(|e| sql("reading its header", e))?
        };
        match owner {
            Ok(()) => {}
            Err(what) => {
                return Err(LedgerError::NotALedger { path: shown, what });
            }
        }
        // WAL: runs of different campaigns write while others read. NORMAL:
        // a commit does not wait for an fsync (WAL keeps the file consistent;
        // a power cut can lose the last batches, which the campaigns' own
        // state files still hold), so the ledger costs a run next to nothing.
        enable_wal(&conn).map_err(|e| sql("enabling WAL", e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| sql("configuring", e))?;
        conn.set_prepared_statement_cache_capacity(16);
        match schema::migrate(&mut conn).map_err(|e| sql("migrating the schema", e))? {
            Ok(()) => {}
            Err(found) => {
                return Err(LedgerError::TooNew {
                    path: shown,
                    found,
                    known: latest_version(),
                });
            }
        }
        Ok(FileLedger {
            conn,
            path: path.to_owned(),
            holder: new_holder(),
        })
    }

    /// Where the ledger is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `write` in one IMMEDIATE transaction, committed when it returns
    /// `Ok`: the write lock is taken up front, so two runs writing at once
    /// wait on the busy timeout instead of failing to upgrade a read. An
    /// error names the ledger and `operation`.
    fn write<T>(
        &mut self,
        operation: &'static str,
        write: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, LedgerError> {
        let run = |conn: &mut Connection| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = write(&tx)?;
            tx.commit()?;
            Ok(value)
        };
        run(&mut self.conn).map_err(|source| LedgerError::Sql {
            path: self.path.display().to_string(),
            operation,
            source,
        })
    }

    fn sql(&self, operation: &'static str, source: rusqlite::Error) -> LedgerError {
        LedgerError::Sql {
            path: self.path.display().to_string(),
            operation,
            source,
        }
    }

    /// Records messages in one transaction: each replaces the entry of its
    /// state file and phone (the reservation its claim made, or an earlier
    /// attempt at the same row).
    pub fn record(&mut self, entries: &[LedgerEntry]) -> Result<(), LedgerError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.write("recording messages", |tx| {
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO messages (phone, sender, row, at, state, message_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(phone, sender) DO UPDATE SET
                       row = excluded.row, at = excluded.at,
                       state = excluded.state, message_id = excluded.message_id,
                       prior_state = NULL, prior_at = NULL",
                )?;
                let mut senders = std::collections::HashMap::new();
                for e in entries {
                    let key = (e.campaign.as_str(), e.state_file.as_str());
                    let sender = match senders.get(&key) {
                        Some(id) => *id,
                        None => {
                            let id =
                                admit::sender_id(tx, e.campaign.as_str(), e.state_file.as_str())?;
                            senders.insert(key, id);
                            id
                        }
                    };
                    insert.execute(params![
                        e.phone,
                        sender,
                        e.row as i64,
                        timestamp(e.at),
                        e.state.as_str(),
                        e.message_id,
                    ])?;
                }
            }
            Ok(())
        })
    }

    /// Every message on record, oldest first (tests, debugging; a real
    /// ledger is read through the counting queries below).
    pub fn messages(&self) -> Result<Vec<LedgerEntry>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT m.phone, s.campaign, s.state_file, m.row, m.at, m.state, m.message_id
                 FROM messages m JOIN senders s ON s.id = m.sender ORDER BY m.at, m.id",
            )
            .map_err(|e| self.sql("reading messages", e))?;
        let rows = stmt
            .query_map([], read_entry)
            .map_err(|e| self.sql("reading messages", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql("reading messages", e))
    }

    /// Messages (sent, uncertain or on their way) to `phone` at or after
    /// `since`, from any campaign: what a frequency cap per phone compares
    /// with its limit.
    pub fn messages_to_since(&self, phone: &str, since: DateTime<Utc>) -> Result<u64, LedgerError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM messages WHERE phone = ?1 AND at >= ?2",
                params![phone, timestamp(since)],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.sql("counting messages to a phone", e))
    }

    /// Distinct phones messaged (sent, uncertain or on their way) at or after `since`,
    /// across the account: what a daily limit of unique recipients over a
    /// moving 24 hours compares with.
    pub fn unique_recipients_since(&self, since: DateTime<Utc>) -> Result<u64, LedgerError> {
        self.conn
            .query_row(
                "SELECT count(DISTINCT phone) FROM messages WHERE at >= ?1",
                [timestamp(since)],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.sql("counting unique recipients", e))
    }

    /// State files other than `state_file` that sent messages under the
    /// campaign name `campaign`, with how many each: a campaign being run
    /// from a second state file would message everyone again.
    pub fn other_state_files(
        &self,
        campaign: &str,
        state_file: &str,
    ) -> Result<Vec<(String, u64)>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT s.state_file, count(*) FROM senders s JOIN messages m ON m.sender = s.id
                 WHERE s.campaign = ?1 AND s.state_file <> ?2
                 GROUP BY s.state_file ORDER BY min(m.at)",
            )
            .map_err(|e| self.sql("reading campaigns", e))?;
        let rows = stmt
            .query_map(params![campaign, state_file], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.sql("reading campaigns", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql("reading campaigns", e))
    }

    /// The messages of the campaign named `campaign`, from any state file,
    /// one per phone — a `sent` one when there is one (a delivery is
    /// certain), else the latest: who a new plan of that campaign must not
    /// message again.
    pub fn campaign_messages(&self, campaign: &str) -> Result<Vec<LedgerEntry>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT m.phone, s.campaign, s.state_file, m.row, m.at, m.state, m.message_id
                 FROM messages m JOIN senders s ON s.id = m.sender WHERE s.campaign = ?1",
            )
            .map_err(|e| self.sql("reading a campaign's messages", e))?;
        let rows = stmt
            .query_map([campaign], read_entry)
            .map_err(|e| self.sql("reading a campaign's messages", e))?;
        let mut by_phone: std::collections::HashMap<String, LedgerEntry> =
            std::collections::HashMap::new();
        for entry in rows {
            let entry = entry.map_err(|e| self.sql("reading a campaign's messages", e))?;
            let rank = |e: &LedgerEntry| (e.state == LedgerState::Sent, e.at);
            match by_phone.get(&entry.phone) {
                Some(kept) if rank(kept) >= rank(&entry) => {}
                _ => {
                    by_phone.insert(entry.phone.clone(), entry);
                }
            }
        }
        Ok(by_phone.into_values().collect())
    }

    /// Puts phones on the opt-out list in one transaction; returns how many
    /// were not on it yet (one already there keeps its first date and source).
    pub fn add_opt_outs(&mut self, phones: &[E164], source: &str) -> Result<u64, LedgerError> {
        self.write("adding opt-outs", |tx| {
            let mut added = 0;
            {
                let now = timestamp(Utc::now());
                let mut insert = tx.prepare_cached(
                    "INSERT INTO opt_outs (phone, added_at, source) VALUES (?1, ?2, ?3)
                     ON CONFLICT(phone) DO NOTHING",
                )?;
                for phone in phones {
                    added += insert.execute(params![phone.as_str(), now, source])? as u64;
                }
            }
            Ok(added)
        })
    }

    /// Takes a phone off the opt-out list; whether it was on it.
    pub fn remove_opt_out(&mut self, phone: &E164) -> Result<bool, LedgerError> {
        self.conn
            .execute("DELETE FROM opt_outs WHERE phone = ?1", [phone.as_str()])
            .map(|n| n > 0)
            .map_err(|e| self.sql("removing an opt-out", e))
    }

    /// The opt-out list, by phone.
    pub fn opt_outs(&self) -> Result<Vec<OptOut>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT phone, added_at, source FROM opt_outs ORDER BY phone")
            .map_err(|e| self.sql("reading opt-outs", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(OptOut {
                    phone: r.get(0)?,
                    added_at: r.get(1)?,
                    source: r.get(2)?,
                })
            })
            .map_err(|e| self.sql("reading opt-outs", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql("reading opt-outs", e))
    }

    /// Whether each of `phones` is opted out, read now (a claim asks just
    /// before its rows are sent, so an opt-out added mid-run is honoured).
    pub fn opted_out(&self, phones: &[&str]) -> Result<Vec<bool>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM opt_outs WHERE phone = ?1")
            .map_err(|e| self.sql("reading opt-outs", e))?;
        phones
            .iter()
            .map(|p| {
                stmt.exists([p])
                    .map_err(|e| self.sql("reading opt-outs", e))
            })
            .collect()
    }
}

/// The seam every ledger store implements: what runs, plans and the
/// opt-out commands ask of the account's ledger, wherever it is. The
/// contract (`tests.rs` runs one suite on both stores): [`admit`] decides a
/// claim's candidates and reserves those admitted atomically with respect
/// to every other admission on the same ledger, so the cap and the daily
/// limit are exact among all the runs that share it.
///
/// [`admit`]: LedgerStore::admit
pub trait LedgerStore: Send + std::fmt::Debug {
    /// Where it is, for messages (a file's path; a database's URL without
    /// its password).
    fn shown(&self) -> String;

    /// Every message on record, oldest first (tests, debugging).
    fn messages(&self) -> Result<Vec<LedgerEntry>, LedgerError>;

    /// States other than `state_file` that sent messages under the campaign
    /// name `campaign`, with how many each, oldest first.
    fn other_state_files(
        &self,
        campaign: &str,
        state_file: &str,
    ) -> Result<Vec<(String, u64)>, LedgerError>;

    /// The campaign's messages from any state, one per phone (a `sent` one
    /// when there is one, else the latest).
    fn campaign_messages(&self, campaign: &str) -> Result<Vec<LedgerEntry>, LedgerError>;

    /// Puts phones on the opt-out list at once; how many were not on it.
    fn add_opt_outs(&mut self, phones: &[E164], source: &str) -> Result<u64, LedgerError>;

    /// Takes a phone off the list; whether it was on it.
    fn remove_opt_out(&mut self, phone: &E164) -> Result<bool, LedgerError>;

    /// The opt-out list, by phone.
    fn opt_outs(&self) -> Result<Vec<OptOut>, LedgerError>;

    /// Whether each of `phones` is opted out, read now.
    fn opted_out(&self, phones: &[&str]) -> Result<Vec<bool>, LedgerError>;

    /// Every opted-out phone, for a plan that checks each row.
    fn opted_out_set(&self) -> Result<HashSet<String>, LedgerError> {
        Ok(self.opt_outs()?.into_iter().map(|o| o.phone).collect())
    }

    /// Settles `settle_first`, then decides each candidate in order and
    /// reserves those admitted, in one transaction (see [`admit`](self::admit)).
    fn admit(
        &mut self,
        sender: &Sender,
        settle_first: &[(String, u64, Settled)],
        candidates: &[Candidate<'_>],
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Vec<Admission>, LedgerError>;

    /// Settles this handle's reserved messages in one transaction.
    fn settle(
        &mut self,
        sender: &Sender,
        outcomes: &[(String, u64, Settled)],
    ) -> Result<(), LedgerError>;

    /// Settles what a dead run of `sender` reserved and never settled,
    /// whichever run (handle) it was; [`settle`](LedgerStore::settle) gives
    /// back only this handle's own reservations.
    fn settle_leftovers(
        &mut self,
        sender: &Sender,
        outcomes: &[(String, u64, Settled)],
    ) -> Result<(), LedgerError>;

    /// Phones and rows `sender` reserved and did not settle.
    fn sending_of(&self, sender: &Sender) -> Result<Vec<(String, u64)>, LedgerError>;

    /// When the account's daily limit frees its next slot, if it is used up now.
    fn next_daily_slot(
        &self,
        daily: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError>;
}

/// An open ledger, of either store.
pub type Ledger = Box<dyn LedgerStore>;

/// Opens the ledger at `location`, creating it (a file, owner-only; the
/// tables in a database) if it does not exist yet.
pub fn open(location: &LedgerLocation) -> Result<Ledger, LedgerError> {
    Ok(match location {
        LedgerLocation::File(path) => Box::new(FileLedger::open(path)?),
        LedgerLocation::Postgres(target) => Box::new(pg::PgLedger::open(target)?),
    })
}

/// Opens the ledger if it exists (`Ok(None)` otherwise), creating nothing:
/// for a campaign that only honours opt-outs, and for readers.
pub fn open_existing(location: &LedgerLocation) -> Result<Option<Ledger>, LedgerError> {
    Ok(match location {
        LedgerLocation::File(path) => {
            FileLedger::open_existing(path)?.map(|l| Box::new(l) as Ledger)
        }
        LedgerLocation::Postgres(target) => {
            pg::PgLedger::open_existing(target)?.map(|l| Box::new(l) as Ledger)
        }
    })
}

impl LedgerStore for FileLedger {
    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    fn messages(&self) -> Result<Vec<LedgerEntry>, LedgerError> {
        FileLedger::messages(self)
    }

    fn other_state_files(
        &self,
        campaign: &str,
        state_file: &str,
    ) -> Result<Vec<(String, u64)>, LedgerError> {
        FileLedger::other_state_files(self, campaign, state_file)
    }

    fn campaign_messages(&self, campaign: &str) -> Result<Vec<LedgerEntry>, LedgerError> {
        FileLedger::campaign_messages(self, campaign)
    }

    fn add_opt_outs(&mut self, phones: &[E164], source: &str) -> Result<u64, LedgerError> {
        FileLedger::add_opt_outs(self, phones, source)
    }

    fn remove_opt_out(&mut self, phone: &E164) -> Result<bool, LedgerError> {
        FileLedger::remove_opt_out(self, phone)
    }

    fn opt_outs(&self) -> Result<Vec<OptOut>, LedgerError> {
        FileLedger::opt_outs(self)
    }

    fn opted_out(&self, phones: &[&str]) -> Result<Vec<bool>, LedgerError> {
        FileLedger::opted_out(self, phones)
    }

    fn admit(
        &mut self,
        sender: &Sender,
        settle_first: &[(String, u64, Settled)],
        candidates: &[Candidate<'_>],
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Vec<Admission>, LedgerError> {
        FileLedger::admit(self, sender, settle_first, candidates, limits, now)
    }

    fn settle(
        &mut self,
        sender: &Sender,
        outcomes: &[(String, u64, Settled)],
    ) -> Result<(), LedgerError> {
        FileLedger::settle(self, sender, outcomes)
    }

    fn settle_leftovers(
        &mut self,
        sender: &Sender,
        outcomes: &[(String, u64, Settled)],
    ) -> Result<(), LedgerError> {
        FileLedger::settle_leftovers(self, sender, outcomes)
    }

    fn sending_of(&self, sender: &Sender) -> Result<Vec<(String, u64)>, LedgerError> {
        FileLedger::sending_of(self, sender)
    }

    fn next_daily_slot(
        &self,
        daily: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        FileLedger::next_daily_slot(self, daily, now)
    }
}

/// One `messages` row, selected as `phone, campaign, state_file, row, at,
/// state, message_id`.
fn read_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerEntry> {
    let at: String = r.get(4)?;
    let state: String = r.get(5)?;
    Ok(LedgerEntry {
        phone: r.get(0)?,
        campaign: r.get(1)?,
        state_file: r.get(2)?,
        row: r.get::<_, i64>(3)?.max(0) as u64,
        at: DateTime::parse_from_rfc3339(&at)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default(),
        state: LedgerState::parse(&state),
        message_id: r.get(6)?,
    })
}

/// Creates an empty owner-only file, and its directory (0700) if missing.
fn create_private(path: &Path) -> Result<(), LedgerError> {
    let err = |e: std::io::Error| LedgerError::Create {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(err)?;
    }
    // Another run may have created it a moment ago: it is a ledger (or about to be).
    crate::state::create_owner_only(path).map_err(err)
}

#[cfg(test)]
mod tests;
