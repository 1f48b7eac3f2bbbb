//! What a run writes to the SQLite state: the plan, claims, outcomes and the
//! run history ([`StateStore`] for [`StateDb`]).
//!
//! Every write checks before and after that the path still names the file
//! the run locked ([`StateDb::check_file`]), and is one short transaction:
//! a claim is committed (with `synchronous = FULL`, so fsynced) before any
//! request for its rows leaves.

use std::path::PathBuf;

use chrono::Utc;
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};

use super::store::{
    ClaimScreen, PlanRows, PlanWrite, PlannedAs, StateStore, plan_row, screen_batch,
};
use super::{
    Claimed, EarlierMessage, FileWatch, Inserted, PLAN_CACHE_KIB, PlanInfo, PlannedRow,
    RUN_CACHE_KIB, RecipientState, RetrySelection, RowOutcome, StateDb, StateError, timestamp,
};

impl StateStore for StateDb {
    fn check_still_there(&mut self) -> Result<(), StateError> {
        self.check_file()
    }

    fn rescue_copy(&self) -> Result<Option<PathBuf>, StateError> {
        if self.watch.lock.is_none() {
            return Ok(None);
        }
        let mut name = std::ffi::OsString::from(&self.path);
        name.push(format!(".rescued-{}", Utc::now().format("%Y%m%dT%H%M%SZ")));
        let copy = PathBuf::from(name);
        self.save_copy(&copy)?;
        Ok(Some(copy))
    }

    fn resend_during_run(&mut self, selection: Option<RetrySelection>) {
        self.resend = selection;
        self.resend_since = timestamp(Utc::now());
    }

    fn claim_only_zones(&mut self, zones: Option<Vec<String>>) {
        self.zones = zones;
    }

    fn begin_plan(&mut self, mode: PlanWrite) -> Result<Box<dyn PlanRows + '_>, StateError> {
        self.check_file()?;
        let StateDb {
            conn, path, watch, ..
        } = self;
        let sql = |operation, source| StateError::Sql {
            path: path.clone(),
            operation,
            source,
        };
        // A large cache for the plan's one big transaction; `start_run`
        // gives the memory back before sending (see `RUN_CACHE_KIB`).
        conn.pragma_update(None, "cache_size", -PLAN_CACHE_KIB)
            .map_err(|e| sql("configuring", e))?;
        // Deferred, as `Connection::transaction` would: the first write takes
        // SQLite's write lock. Rolled back when the plan is dropped uncommitted.
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Deferred)
            .map_err(|e| sql("starting the plan", e))?;
        if mode == PlanWrite::Replace {
            tx.execute_batch("DELETE FROM recipients; DELETE FROM plan;")
                .map_err(|e| sql("removing the old plan", e))?;
        }
        let generation: i64 = tx
            .query_row(
                "SELECT coalesce(max(generation), 0) + 1 FROM recipients",
                [],
                |r| r.get(0),
            )
            .map_err(|e| sql("starting the plan", e))?;
        let plan = SqlitePlan::new(conn, tx, generation, mode == PlanWrite::Add, path, watch)
            .map_err(|e| sql("starting the plan", e))?;
        Ok(Box::new(plan))
    }

    fn mark_interrupted_uncertain(&mut self) -> Result<u64, StateError> {
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

    fn record_and_claim_screened(
        &mut self,
        outcomes: &[RowOutcome],
        n: usize,
        screen: &mut ClaimScreen<'_>,
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
        // No zone open: nothing may be claimed (an empty `IN ()` is not SQL).
        let any_zone = self.zones.as_ref().is_none_or(|z| !z.is_empty());
        // Candidates are read, screened, and only then marked: a row the
        // screen turns away is settled `suppressed` in this same transaction,
        // one it holds back keeps its state untouched, and the others become
        // `sending`. Claiming goes on until `n` rows pass, none is left, or
        // the screen holds one back (a limit reached: nothing later may go).
        let mut held = false;
        while any_zone && !held && claimed.len() < n {
            let want = n - claimed.len();
            let batch = claimable_rows(
                &tx,
                self.resend.as_ref(),
                &self.resend_since,
                self.zones.as_deref(),
                want,
            )
            .map_err(sql("claiming rows"))?;
            let taken = batch.len();
            if taken == 0 {
                break;
            }
            let screened = screen_batch(batch, screen)?;
            held = screened.held;
            let now = timestamp(Utc::now());
            if !screened.suppress.is_empty() {
                let mut suppress = tx
                    .prepare_cached(
                        "UPDATE recipients SET state = 'suppressed', error_code = ?2,
                           error_details = ?3, updated_at = ?4
                         WHERE id = ?1",
                    )
                    .map_err(sql("suppressing rows"))?;
                for (id, why) in &screened.suppress {
                    suppress
                        .execute(params![id, why.code.as_str(), why.details, now])
                        .map_err(sql("suppressing rows"))?;
                }
            }
            let sending: Vec<i64> = screened.send.iter().map(|row| row.id).collect();
            claimed.extend(screened.send);
            // One statement for the whole batch: this runs for every row sent.
            if !sending.is_empty() {
                let ids = format!(
                    "[{}]",
                    sending
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                );
                tx.prepare_cached(
                    "UPDATE recipients SET state = 'sending', updated_at = ?2
                     WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .and_then(|mut mark| mark.execute(params![ids, now]))
                .map_err(sql("claiming rows"))?;
            }
            if taken < want {
                break;
            }
        }
        claimed.sort_by_key(|c| c.id);
        tx.commit().map_err(sql("committing"))?;
        // The claim is committed, but to a file that may no longer be the
        // state: its rows must not be sent.
        self.check_file()?;
        Ok(claimed)
    }

    fn start_run(&mut self) -> Result<i64, StateError> {
        self.check_file()?;
        // Sending commits every few milliseconds: the small cache (see `RUN_CACHE_KIB`).
        self.conn
            .pragma_update(None, "cache_size", -RUN_CACHE_KIB)
            .map_err(|e| self.sql("configuring", e))?;
        self.conn
            .execute(
                "INSERT INTO runs (pid, started_at) VALUES (?1, ?2)",
                params![std::process::id(), timestamp(Utc::now())],
            )
            .map_err(|e| self.sql("recording the run", e))?;
        Ok(self.conn.last_insert_rowid())
    }

    fn finish_run(
        &mut self,
        run_id: i64,
        end: &str,
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
                    end,
                    sent as i64,
                    failed as i64,
                    uncertain as i64
                ],
            )
            .map_err(|e| self.sql("recording the run", e))?;
        Ok(())
    }
}

/// A plan being written inside one transaction. Its statements are
/// prepared once: planning a million rows runs them a million times each.
/// They borrow the connection, not the transaction, which only marks where
/// the plan began; both end with the plan.
struct SqlitePlan<'a> {
    /// The first sendable row with a phone: decides duplicates.
    find_first: rusqlite::Statement<'a>,
    /// Any row with a phone: decides "already planned" in add mode.
    find_any: rusqlite::Statement<'a>,
    /// An earlier generation's row at a CSV row number: in add mode, an
    /// unusable row without a phone is recognised by its place.
    find_row: rusqlite::Statement<'a>,
    insert: rusqlite::Statement<'a>,
    generation: i64,
    /// In add mode, rows whose phone the state already has are skipped.
    add_mode: bool,
    now: String,
    path: &'a str,
    watch: &'a mut FileWatch,
    // Last: the statements above are finalised before it rolls back.
    tx: Transaction<'a>,
}

impl<'a> SqlitePlan<'a> {
    fn new(
        conn: &'a rusqlite::Connection,
        tx: Transaction<'a>,
        generation: i64,
        add_mode: bool,
        path: &'a str,
        watch: &'a mut FileWatch,
    ) -> rusqlite::Result<SqlitePlan<'a>> {
        Ok(SqlitePlan {
            find_first: conn.prepare(
                "SELECT row, generation FROM recipients
                 WHERE phone = ?1 AND state NOT IN ('invalid', 'duplicate')
                 ORDER BY id LIMIT 1",
            )?,
            find_any: conn.prepare("SELECT 1 FROM recipients WHERE phone = ?1 LIMIT 1")?,
            find_row: conn.prepare(
                "SELECT 1 FROM recipients WHERE row = ?1 AND generation < ?2 LIMIT 1",
            )?,
            insert: conn.prepare(
                "INSERT INTO recipients
                   (row, generation, phone, name, state, body, error_code, error_details, updated_at,
                    timezone)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?,
            generation,
            add_mode,
            now: timestamp(Utc::now()),
            path,
            watch,
            tx,
        })
    }
}

impl PlanRows for SqlitePlan<'_> {
    fn insert(&mut self, row: &PlannedRow) -> Result<Inserted, StateError> {
        let path = self.path;
        let sql_err = |source| StateError::Sql {
            path: path.to_owned(),
            operation: "planning a row",
            source,
        };
        let (find_first, find_any, find_row) =
            (&mut self.find_first, &mut self.find_any, &mut self.find_row);
        let generation = self.generation;
        let planned = plan_row(
            row,
            self.add_mode,
            generation,
            |phone| {
                find_first
                    .query_row([phone], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            },
            |phone, csv_row| match phone {
                Some(phone) => find_any.exists([phone]),
                None => find_row.exists(params![csv_row as i64, generation]),
            },
        )
        .map_err(sql_err)?;
        let Some(PlannedAs {
            state,
            body,
            code,
            details,
            inserted,
        }) = planned
        else {
            return Ok(Inserted::AlreadyPlanned);
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
                row.timezone.map(|tz| tz.zone.name()),
            ])
            .map_err(sql_err)?;
        Ok(inserted)
    }

    fn mark_messaged(&mut self, earlier: &EarlierMessage) -> Result<bool, StateError> {
        let (state, code) = if earlier.sent {
            (RecipientState::Sent, None)
        } else {
            (RecipientState::Uncertain, Some("earlier_attempt"))
        };
        let at = timestamp(earlier.at);
        let changed = self
            .tx
            .prepare_cached(
                "UPDATE recipients SET state = ?2, message_id = ?3, error_code = ?4,
                   error_details = ?5, updated_at = ?6,
                   sent_at = CASE WHEN ?2 = 'sent' THEN ?6 ELSE NULL END
                 WHERE phone = ?1 AND state = 'pending' AND generation = ?7",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    earlier.phone,
                    state.as_str(),
                    earlier.message_id,
                    code,
                    earlier.details,
                    at,
                    self.generation,
                ])
            })
            .map_err(|source| StateError::Sql {
                path: self.path.to_owned(),
                operation: "marking rows the ledger shows messaged",
                source,
            })?;
        Ok(changed > 0)
    }

    fn commit(self: Box<Self>, info: &PlanInfo) -> Result<(), StateError> {
        let SqlitePlan {
            find_first,
            find_any,
            find_row,
            insert,
            path,
            watch,
            tx,
            ..
        } = *self;
        drop((find_first, find_any, find_row, insert));
        let sql = |operation, source| StateError::Sql {
            path: path.to_owned(),
            operation,
            source,
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
        watch.check(path)
    }
}

/// The claim's condition for the zones open now, with its parameters
/// numbered from `first` (after the claim's own and the resend codes). Empty
/// when claims are not limited to zones.
fn zone_clause(zones: &[String], first: usize) -> String {
    if zones.is_empty() {
        return String::new();
    }
    let marks = (0..zones.len())
        .map(|i| format!("?{}", first + i))
        .collect::<Vec<_>>()
        .join(", ");
    format!(" AND timezone IN ({marks})")
}

/// Up to `n` claimable rows inside `tx`, in row order (read, not yet marked).
fn claimable_rows(
    tx: &Transaction<'_>,
    resend: Option<&RetrySelection>,
    resend_since: &str,
    zones: Option<&[String]>,
    n: usize,
) -> rusqlite::Result<Vec<Claimed>> {
    let (also, codes) = resend_clause(resend);
    let zones = zones.unwrap_or_default();
    // Zones are numbered after the limit, the resend moment and the codes.
    let in_zone = zone_clause(zones, 2 + usize::from(resend.is_some()) + codes.len());
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT id, row, phone, body, attempts, timezone FROM recipients
         WHERE (state = 'pending'{also}){in_zone} ORDER BY id LIMIT ?1"
    ))?;
    let limit = n as i64;
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&limit];
    if resend.is_some() {
        values.push(&resend_since);
    }
    values.extend(codes.iter().map(|c| c as &dyn rusqlite::ToSql));
    values.extend(zones.iter().map(|z| z as &dyn rusqlite::ToSql));
    stmt.query_map(values.as_slice(), |r| {
        Ok(Claimed {
            id: r.get(0)?,
            row: r.get::<_, i64>(1)? as u64,
            phone: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            body: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            attempts: r.get::<_, i64>(4)? as u32,
            timezone: r.get(5)?,
        })
    })?
    .collect()
}

/// The claim's extra condition for a resend selection, with its parameters
/// (bound after the claim's own two: the limit, and `?2`, the moment the
/// selection was given — rows changed since are this run's own doing and
/// are not taken again).
fn resend_clause(selection: Option<&RetrySelection>) -> (String, Vec<String>) {
    let (state, codes) = match selection {
        None => return (String::new(), Vec::new()),
        Some(RetrySelection::Uncertain) => ("uncertain", &Vec::new()),
        Some(RetrySelection::Failed { codes }) => ("failed", codes),
        Some(RetrySelection::Suppressed { codes }) => ("suppressed", codes),
    };
    if codes.is_empty() {
        return (
            format!(" OR (state = '{state}' AND coalesce(updated_at, '') < ?2)"),
            Vec::new(),
        );
    }
    let marks = (0..codes.len())
        .map(|i| format!("?{}", i + 3))
        .collect::<Vec<_>>()
        .join(", ");
    (
        format!(
            " OR (state = '{state}' AND coalesce(updated_at, '') < ?2 AND error_code IN ({marks}))"
        ),
        codes.clone(),
    )
}
