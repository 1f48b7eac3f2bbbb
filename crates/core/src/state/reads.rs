//! Read-only aggregates for reports: sends per time bucket, the attempts
//! histogram, error codes per state and the number of runs.
//!
//! Each is one `GROUP BY` that SQLite runs over the file, so a report of a
//! million-row campaign holds a few hundred small rows in memory, never the
//! recipients. Nothing here writes or takes the run lock: like `status`,
//! reports are read while a run may be sending. (Kept apart from `mod.rs`,
//! which holds the statements a run depends on.)

use rusqlite::OptionalExtension;

use super::{RecipientState, StateDb, StateError};

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

impl StateDb {
    /// The first and last `sent_at` on record, or `None` before any send.
    /// Both ends come from the `sent_at` index, not from a scan.
    pub fn sent_span(&self) -> Result<Option<(String, String)>, StateError> {
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

    /// Messages sent per bucket, in time order: rows grouped by the first
    /// `prefix_chars` characters of their `sent_at` (16 is the minute,
    /// `2026-03-04T14:05`; 13 the hour; 10 the day). Timestamps are stored
    /// fixed-width, so a prefix is a calendar bucket and sorts as time.
    /// Only buckets that hold a send are returned.
    pub fn sent_per_bucket(&self, prefix_chars: usize) -> Result<Vec<(String, u64)>, StateError> {
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

    /// How many rows made each number of attempts, per state, fewest
    /// attempts first. Rows that never reached the network (pending with no
    /// attempt, invalid, duplicate) are left out; a row that went out and was
    /// interrupted before any answer counts with its 0 attempts.
    pub fn attempts_by_state(&self) -> Result<Vec<AttemptsCount>, StateError> {
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

    /// Error codes of the rows that were not sent (failed, uncertain,
    /// invalid, duplicate) per state, most frequent first. Pending rows keep
    /// the code of an earlier failure after a retry; they are not counted.
    pub fn error_codes_by_state(&self) -> Result<Vec<ErrorStateCount>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT error_code, state, count(*) AS n FROM recipients
                 WHERE error_code IS NOT NULL
                   AND state IN ('failed', 'uncertain', 'invalid', 'duplicate')
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

    /// How many runs the state records (a cron campaign may have thousands;
    /// a report lists the latest and says how many it left out).
    pub fn run_count(&self) -> Result<u64, StateError> {
        self.conn
            .query_row("SELECT count(*) FROM runs", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.sql("counting runs", e))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::state::{
        Outcome, PlanInfo, PlanProblem, PlannedRow, ProblemCode, RowOutcome, timestamp,
    };

    /// A state with `n` sendable rows and one invalid row.
    fn planned(n: u64) -> StateDb {
        let mut db = StateDb::in_memory().expect("in-memory state");
        db.write_plan(|sink| {
            for row in 1..=n {
                let phone = format!("+2547{:08}", 11_000_000 + row);
                sink.insert(&PlannedRow {
                    row,
                    outcome: Ok(format!("{{\"to\":\"{phone}\"}}")),
                    phone: Some(phone),
                    name: None,
                })?;
            }
            sink.insert(&PlannedRow {
                row: n + 1,
                phone: Some("12345".into()),
                name: None,
                outcome: Err(PlanProblem {
                    code: ProblemCode::InvalidPhone,
                    details: "too short".into(),
                }),
            })?;
            let at = timestamp(Utc::now());
            Ok((
                (),
                PlanInfo {
                    campaign_name: "reads".into(),
                    message_type: "text".into(),
                    campaign_file: "campaign.toml".into(),
                    csv_file: "recipients.csv".into(),
                    message_fingerprint: "fp".into(),
                    csv_sha256: "sha".into(),
                    csv_rows: n + 1,
                    planned_at: at.clone(),
                    updated_at: at,
                },
            ))
        })
        .expect("plan");
        db
    }

    fn outcome(
        id: i64,
        state: RecipientState,
        attempts: u32,
        code: Option<&str>,
        at: chrono::DateTime<Utc>,
    ) -> RowOutcome {
        let code = code.map(str::to_owned).unwrap_or_default();
        let details = "details".to_owned();
        RowOutcome {
            id,
            attempts,
            at,
            outcome: match state {
                RecipientState::Sent => Outcome::Sent {
                    message_id: format!("m{id}"),
                },
                RecipientState::Failed => Outcome::Failed { code, details },
                RecipientState::Uncertain => Outcome::Uncertain { code, details },
                _ => Outcome::Released,
            },
        }
    }

    #[test]
    fn aggregates_group_in_sql() {
        let mut db = planned(5);
        assert_eq!(db.sent_span().expect("span"), None);
        assert!(db.sent_per_bucket(16).expect("buckets").is_empty());
        let claimed = db.claim(5).expect("claim");
        let t = |m, s| {
            Utc.with_ymd_and_hms(2026, 3, 4, 14, m, s)
                .single()
                .expect("a valid time")
        };
        db.record(&[
            outcome(claimed[0].id, RecipientState::Sent, 1, None, t(5, 1)),
            outcome(claimed[1].id, RecipientState::Sent, 1, None, t(5, 59)),
            outcome(claimed[2].id, RecipientState::Sent, 2, None, t(7, 0)),
            outcome(
                claimed[3].id,
                RecipientState::Failed,
                2,
                Some("internal_error"),
                t(7, 1),
            ),
            outcome(
                claimed[4].id,
                RecipientState::Uncertain,
                1,
                Some("no_answer"),
                t(7, 2),
            ),
        ])
        .expect("record");

        let (first, last) = db.sent_span().expect("span").expect("sends");
        assert_eq!(first, "2026-03-04T14:05:01.000Z");
        assert_eq!(last, "2026-03-04T14:07:00.000Z");
        assert_eq!(
            db.sent_per_bucket(16).expect("minutes"),
            vec![
                ("2026-03-04T14:05".to_owned(), 2),
                ("2026-03-04T14:07".to_owned(), 1)
            ]
        );
        assert_eq!(
            db.sent_per_bucket(13).expect("hours"),
            vec![("2026-03-04T14".to_owned(), 3)]
        );

        let attempts = db.attempts_by_state().expect("attempts");
        let count = |a, s| {
            attempts
                .iter()
                .find(|c| c.attempts == a && c.state == s)
                .map(|c| c.count)
        };
        assert_eq!(count(1, RecipientState::Sent), Some(2));
        assert_eq!(count(2, RecipientState::Sent), Some(1));
        assert_eq!(count(2, RecipientState::Failed), Some(1));
        assert_eq!(count(1, RecipientState::Uncertain), Some(1));
        // The invalid row never reached the network.
        assert!(attempts.iter().all(|c| c.state != RecipientState::Invalid));

        let errors = db.error_codes_by_state().expect("errors");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.contains(&ErrorStateCount {
            code: "invalid_phone".into(),
            state: RecipientState::Invalid,
            count: 1
        }));
        assert_eq!(db.run_count().expect("runs"), 0);
    }
}
