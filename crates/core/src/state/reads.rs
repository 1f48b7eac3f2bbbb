//! What reading the SQLite state runs ([`StateRead`] for [`StateDb`]): the
//! plan, counts per state, recent sends for the daily limit, the rows a
//! report or preview shows, and the aggregates of the HTML report (sends per
//! time bucket, the attempts histogram, error codes per state, the runs).
//!
//! Nothing here writes or takes the run lock: `status` and `report` read
//! while a run may be sending. Aggregates are one `GROUP BY` each that
//! SQLite runs over the file, so a report of a million-row campaign holds a
//! few hundred small rows in memory, never the recipients; row listings are
//! walked one row at a time.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::store::{StateRead, VisitError};
use super::{
    Counts, PlanInfo, RecipientRecord, RecipientState, RetrySelection, RunRecord, StateDb,
    StateError, timestamp,
};

/// The length of a stored timestamp (`2026-03-04T14:05:06.789Z`, see
/// [`super::timestamp`]): a bucket is a prefix of it, at most this long.
pub const TIMESTAMP_CHARS: usize = 24;

/// How many rows in one state made one number of attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptsCount {
    pub attempts: u32,
    pub state: RecipientState,
    pub count: u64,
}

/// How many rows in one state carry one error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorStateCount {
    pub code: String,
    pub state: RecipientState,
    pub count: u64,
}

impl StateRead for StateDb {
    fn location(&self) -> &str {
        &self.path
    }

    fn plan_info(&self) -> Result<Option<PlanInfo>, StateError> {
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

    fn counts(&self) -> Result<Counts, StateError> {
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

    fn anything_sent(&self) -> Result<bool, StateError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM recipients
                   WHERE state IN ('sending', 'sent', 'failed', 'uncertain') OR attempts > 0)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.sql("reading the plan", e))
    }

    fn sent_since(&self, since: DateTime<Utc>) -> Result<u64, StateError> {
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

    fn nth_sent_since(
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

    fn error_counts(&self) -> Result<Vec<(String, u64)>, StateError> {
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

    fn count_for_retry(&self, selection: &RetrySelection) -> Result<u64, StateError> {
        let (state, codes) = match selection {
            RetrySelection::Uncertain => ("uncertain", &Vec::new()),
            RetrySelection::Failed { codes } => ("failed", codes),
            RetrySelection::Suppressed { codes } => ("suppressed", codes),
        };
        let n: rusqlite::Result<i64> = if codes.is_empty() {
            self.conn.query_row(
                "SELECT count(*) FROM recipients WHERE state = ?1",
                [state],
                |r| r.get(0),
            )
        } else {
            let mut total = 0;
            for code in codes {
                total += self
                    .conn
                    .query_row(
                        "SELECT count(*) FROM recipients WHERE state = ?1 AND error_code = ?2",
                        [state, code.as_str()],
                        |r| r.get::<_, i64>(0),
                    )
                    .map_err(|e| self.sql("counting rows", e))?;
            }
            Ok(total)
        };
        let n = n.map_err(|e| self.sql("counting rows", e))?;
        Ok(n as u64)
    }

    fn for_each_recipient(
        &self,
        states: &[RecipientState],
        visit: &mut dyn FnMut(RecipientRecord) -> std::io::Result<()>,
    ) -> Result<(), VisitError> {
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
                visit(record).map_err(VisitError::Visitor)?;
            }
        }
        Ok(())
    }

    fn body_for_row(&self, row: u64) -> Result<Option<(String, String)>, StateError> {
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

    fn planned_bodies(
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

    fn recipient_at_row(
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

    fn recipient_by_phone(&self, phone: &str) -> Result<Option<RecipientRecord>, StateError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM recipients
                     WHERE phone = ?1 AND state <> 'duplicate' ORDER BY id DESC LIMIT 1"
                ),
                [phone],
                read_record,
            )
            .optional()
            .map_err(|e| self.sql("reading a recipient", e))
    }

    fn rows_by_zone(
        &self,
        states: &[RecipientState],
    ) -> Result<Vec<(Option<String>, u64)>, StateError> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let marks = (1..=states.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT timezone, count(*) FROM recipients WHERE state IN ({marks})
                 GROUP BY timezone ORDER BY count(*) DESC, timezone"
            ))
            .map_err(|e| self.sql("counting rows by zone", e))?;
        let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(names), |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.sql("counting rows by zone", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql("counting rows by zone", e))
    }

    fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
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

    fn sent_span(&self) -> Result<Option<(String, String)>, StateError> {
        let span: Option<(Option<String>, Option<String>)> = self
            .conn
            .query_row(
                "SELECT min(sent_at), max(sent_at) FROM recipients WHERE sent_at IS NOT NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.sql("reading send times", e))?;
        Ok(match span {
            Some((Some(first), Some(last))) => Some((first, last)),
            _ => None,
        })
    }

    fn sent_per_bucket(&self, prefix_chars: usize) -> Result<Vec<(String, u64)>, StateError> {
        let prefix_chars = prefix_chars.clamp(1, TIMESTAMP_CHARS) as i64;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT substr(sent_at, 1, ?1) AS bucket, count(*) FROM recipients
                 WHERE sent_at IS NOT NULL GROUP BY bucket ORDER BY bucket",
            )
            .map_err(|e| self.sql("counting sends over time", e))?;
        let rows = stmt
            .query_map([prefix_chars], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.sql("counting sends over time", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql("counting sends over time", e))
    }

    fn attempts_by_state(&self) -> Result<Vec<AttemptsCount>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT attempts, state, count(*) FROM recipients
                 WHERE attempts > 0 OR state IN ('sent', 'failed', 'uncertain')
                 GROUP BY attempts, state ORDER BY attempts, state",
            )
            .map_err(|e| self.sql("counting attempts", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.sql("counting attempts", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (attempts, state, count) = row.map_err(|e| self.sql("counting attempts", e))?;
            // The schema's CHECK keeps unknown states out; a damaged file's
            // odd row is skipped rather than failing the whole report.
            if let Some(state) = RecipientState::parse(&state) {
                out.push(AttemptsCount {
                    attempts: attempts.clamp(0, u32::MAX as i64) as u32,
                    state,
                    count: count as u64,
                });
            }
        }
        Ok(out)
    }

    fn error_codes_by_state(&self) -> Result<Vec<ErrorStateCount>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT error_code, state, count(*) AS n FROM recipients
                 WHERE error_code IS NOT NULL
                   AND state IN ('failed', 'uncertain', 'invalid', 'duplicate', 'suppressed')
                 GROUP BY error_code, state ORDER BY n DESC, error_code, state",
            )
            .map_err(|e| self.sql("counting errors", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.sql("counting errors", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (code, state, count) = row.map_err(|e| self.sql("counting errors", e))?;
            if let Some(state) = RecipientState::parse(&state) {
                out.push(ErrorStateCount {
                    code,
                    state,
                    count: count as u64,
                });
            }
        }
        Ok(out)
    }

    fn run_count(&self) -> Result<u64, StateError> {
        self.conn
            .query_row("SELECT count(*) FROM runs", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.sql("counting runs", e))
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
