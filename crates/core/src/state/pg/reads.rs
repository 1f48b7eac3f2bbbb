//! What reading the PostgreSQL state runs ([`StateRead`] for [`PgStore`]):
//! the same questions as the SQLite file's, asked of one campaign's rows.
//!
//! Nothing here writes: `status` and `report` read while runners send.
//! Aggregates are one `GROUP BY` each on the server; a walk over the
//! recipients is fetched in pages, so a report of a million rows never holds
//! them all. Text is ordered `COLLATE "C"` (byte order), as SQLite orders it.

use chrono::{DateTime, Utc};
use postgres::Row;

use super::PgStore;
use crate::state::reads::{AttemptsCount, ErrorStateCount, TIMESTAMP_CHARS};
use crate::state::store::{StateRead, VisitError};
use crate::state::{
    Counts, PlanInfo, RecipientRecord, RecipientState, RetrySelection, RunRecord, RunnerRecord,
    StateError, timestamp,
};

/// Rows fetched per page by [`StateRead::for_each_recipient`].
const PAGE: i64 = 5_000;

/// The columns [`read_record`] reads, in its order.
const RECORD_COLUMNS: &str = "csv_row, phone, name, state, attempts, message_id, error_code, \
                              error_details, updated_at, sent_at";

fn read_record(r: &Row) -> RecipientRecord {
    let state: &str = r.get(3);
    RecipientRecord {
        row: r.get::<_, i64>(0) as u64,
        phone: r.get(1),
        name: r.get(2),
        // The schema's CHECK constraint keeps unknown states out.
        state: RecipientState::parse(state).unwrap_or(RecipientState::Invalid),
        attempts: r.get::<_, i32>(4).max(0) as u32,
        message_id: r.get(5),
        error_code: r.get(6),
        error_details: r.get(7),
        updated_at: r.get(8),
        sent_at: r.get(9),
    }
}

impl StateRead for PgStore {
    fn location(&self) -> &str {
        self.target.display_name()
    }

    fn plan_info(&self) -> Result<Option<PlanInfo>, StateError> {
        let id = self.campaign_id;
        self.link.call("reading the plan", move |c| {
            let row = c.query_opt(
                "SELECT name, message_type, campaign_file, csv_file, message_fingerprint,
                        csv_sha256, csv_rows, planned_at, updated_at
                 FROM convers8.campaigns WHERE id = $1 AND planned_at IS NOT NULL",
                &[&id],
            )?;
            Ok(row.map(|r| PlanInfo {
                campaign_name: r.get(0),
                message_type: r.get(1),
                campaign_file: r.get(2),
                csv_file: r.get(3),
                message_fingerprint: r.get(4),
                csv_sha256: r.get(5),
                csv_rows: r.get::<_, i64>(6) as u64,
                planned_at: r.get(7),
                updated_at: r.get(8),
            }))
        })
    }

    fn counts(&self) -> Result<Counts, StateError> {
        let id = self.campaign_id;
        self.link.call("counting rows", move |c| {
            let mut counts = Counts::default();
            for r in c.query(
                "SELECT state, count(*) FROM convers8.recipients WHERE campaign_id = $1
                 GROUP BY state",
                &[&id],
            )? {
                if let Some(state) = RecipientState::parse(r.get(0)) {
                    counts.add(state, r.get::<_, i64>(1) as u64);
                }
            }
            Ok(counts)
        })
    }

    fn anything_sent(&self) -> Result<bool, StateError> {
        let id = self.campaign_id;
        self.link.call("reading the plan", move |c| {
            c.query_one(
                "SELECT EXISTS (SELECT 1 FROM convers8.recipients WHERE campaign_id = $1
                   AND (state IN ('sending', 'sent', 'failed', 'uncertain') OR attempts > 0))",
                &[&id],
            )
            .map(|r| r.get(0))
        })
    }

    fn sent_since(&self, since: DateTime<Utc>) -> Result<u64, StateError> {
        let (id, since) = (self.campaign_id, timestamp(since));
        self.link.call("counting recent sends", move |c| {
            c.query_one(
                "SELECT (SELECT count(*) FROM convers8.recipients
                           WHERE campaign_id = $1 AND sent_at >= $2)
                      + (SELECT count(*) FROM convers8.recipients
                           WHERE campaign_id = $1 AND state = 'uncertain' AND updated_at >= $2)",
                &[&id, &since],
            )
            .map(|r| r.get::<_, i64>(0) as u64)
        })
    }

    fn nth_sent_since(
        &self,
        since: DateTime<Utc>,
        k: u64,
    ) -> Result<Option<DateTime<Utc>>, StateError> {
        let (id, since) = (self.campaign_id, timestamp(since));
        let offset = k.saturating_sub(1) as i64;
        let text: Option<String> = self.link.call("reading recent sends", move |c| {
            c.query_opt(
                "SELECT sent_at FROM convers8.recipients WHERE campaign_id = $1 AND sent_at >= $2
                 ORDER BY sent_at LIMIT 1 OFFSET $3",
                &[&id, &since, &offset],
            )
            .map(|r| r.map(|r| r.get(0)))
        })?;
        Ok(text
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc)))
    }

    fn error_counts(&self) -> Result<Vec<(String, u64)>, StateError> {
        let id = self.campaign_id;
        self.link.call("counting errors", move |c| {
            Ok(c.query(
                "SELECT error_code, count(*) AS n FROM convers8.recipients
                 WHERE campaign_id = $1 AND error_code IS NOT NULL
                   AND state IN ('failed', 'uncertain', 'invalid')
                 GROUP BY error_code ORDER BY n DESC, error_code COLLATE \"C\"",
                &[&id],
            )?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
        })
    }

    fn count_for_retry(&self, selection: &RetrySelection) -> Result<u64, StateError> {
        let (state, codes) = match selection {
            RetrySelection::Uncertain => ("uncertain", Vec::new()),
            RetrySelection::Failed { codes } => ("failed", codes.clone()),
            RetrySelection::Suppressed { codes } => ("suppressed", codes.clone()),
        };
        let id = self.campaign_id;
        self.link.call("counting rows", move |c| {
            c.query_one(
                "SELECT count(*) FROM convers8.recipients WHERE campaign_id = $1 AND state = $2
                   AND (cardinality($3::text[]) = 0 OR error_code = ANY($3))",
                &[&id, &state, &codes],
            )
            .map(|r| r.get::<_, i64>(0) as u64)
        })
    }

    fn for_each_recipient(
        &self,
        states: &[RecipientState],
        visit: &mut dyn FnMut(RecipientRecord) -> std::io::Result<()>,
    ) -> Result<(), VisitError> {
        let names: Vec<String> = states.iter().map(|s| s.as_str().to_owned()).collect();
        let mut after = 0_i64;
        loop {
            let (id, names) = (self.campaign_id, names.clone());
            let page: Vec<(i64, RecipientRecord)> =
                self.link.call("reading recipients", move |c| {
                    Ok(c.query(
                        &format!(
                            "SELECT {RECORD_COLUMNS}, id FROM convers8.recipients
                             WHERE campaign_id = $1 AND id > $2
                               AND (cardinality($3::text[]) = 0 OR state = ANY($3))
                             ORDER BY id LIMIT $4"
                        ),
                        &[&id, &after, &names, &PAGE],
                    )?
                    .iter()
                    .map(|r| (r.get::<_, i64>(10), read_record(r)))
                    .collect())
                })?;
            let full = page.len() as i64 == PAGE;
            for (id, record) in page {
                after = id;
                visit(record).map_err(VisitError::Visitor)?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn body_for_row(&self, row: u64) -> Result<Option<(String, String)>, StateError> {
        let (id, row) = (self.campaign_id, row as i64);
        self.link.call("reading a planned body", move |c| {
            c.query_opt(
                "SELECT coalesce(phone, ''), body FROM convers8.recipients
                 WHERE campaign_id = $1 AND csv_row = $2 AND body IS NOT NULL
                 ORDER BY id DESC LIMIT 1",
                &[&id, &row],
            )
            .map(|r| r.map(|r| (r.get(0), r.get(1))))
        })
    }

    fn planned_bodies(
        &self,
        state: RecipientState,
        limit: usize,
    ) -> Result<Vec<(u64, String, String)>, StateError> {
        let (id, limit) = (self.campaign_id, limit as i64);
        self.link.call("reading planned bodies", move |c| {
            Ok(c.query(
                "SELECT csv_row, coalesce(phone, ''), body FROM convers8.recipients
                 WHERE campaign_id = $1 AND state = $2 AND body IS NOT NULL
                 ORDER BY id LIMIT $3",
                &[&id, &state.as_str(), &limit],
            )?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1), r.get(2)))
            .collect())
        })
    }

    fn recipient_at_row(
        &self,
        row: u64,
    ) -> Result<Option<(RecipientRecord, Option<String>)>, StateError> {
        let (id, row) = (self.campaign_id, row as i64);
        self.link.call("reading a recipient", move |c| {
            c.query_opt(
                &format!(
                    "SELECT {RECORD_COLUMNS}, body FROM convers8.recipients
                     WHERE campaign_id = $1 AND csv_row = $2 ORDER BY id DESC LIMIT 1"
                ),
                &[&id, &row],
            )
            .map(|r| r.map(|r| (read_record(&r), r.get(10))))
        })
    }

    fn recipient_by_phone(&self, phone: &str) -> Result<Option<RecipientRecord>, StateError> {
        let (id, phone) = (self.campaign_id, phone.to_owned());
        self.link.call("reading a recipient", move |c| {
            c.query_opt(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM convers8.recipients
                     WHERE campaign_id = $1 AND phone = $2 AND state <> 'duplicate'
                     ORDER BY id DESC LIMIT 1"
                ),
                &[&id, &phone],
            )
            .map(|r| r.map(|r| read_record(&r)))
        })
    }

    fn rows_by_zone(
        &self,
        states: &[RecipientState],
    ) -> Result<Vec<(Option<String>, u64)>, StateError> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = states.iter().map(|s| s.as_str().to_owned()).collect();
        let id = self.campaign_id;
        self.link.call("counting rows by zone", move |c| {
            Ok(c.query(
                "SELECT timezone, count(*) AS n FROM convers8.recipients
                 WHERE campaign_id = $1 AND state = ANY($2)
                 GROUP BY timezone ORDER BY n DESC, timezone COLLATE \"C\" NULLS FIRST",
                &[&id, &names],
            )?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
        })
    }

    fn live_runners(&self) -> Result<Option<Vec<RunnerRecord>>, StateError> {
        let id = self.campaign_id;
        self.link.call("reading the runners", move |c| {
            Ok(Some(
                c.query(
                    "SELECT id, host, pid,
                       to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                       to_char(lease_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
                     FROM convers8.runners
                     WHERE campaign_id = $1 AND state = 'live' AND lease_until > now()
                     ORDER BY id",
                    &[&id],
                )?
                .iter()
                .map(|r| RunnerRecord {
                    id: r.get(0),
                    host: r.get(1),
                    pid: r.get::<_, i32>(2) as u32,
                    started_at: r.get(3),
                    lease_until: r.get(4),
                })
                .collect(),
            ))
        })
    }

    fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let (id, limit) = (self.campaign_id, limit as i64);
        self.link.call("reading runs", move |c| {
            Ok(c.query(
                "SELECT id, pid, started_at, finished_at, outcome, sent, failed, uncertain
                 FROM convers8.runs WHERE campaign_id = $1 ORDER BY id DESC LIMIT $2",
                &[&id, &limit],
            )?
            .iter()
            .map(|r| RunRecord {
                id: r.get(0),
                pid: r.get::<_, i32>(1) as u32,
                started_at: r.get(2),
                finished_at: r.get(3),
                outcome: r.get(4),
                sent: r.get::<_, i64>(5) as u64,
                failed: r.get::<_, i64>(6) as u64,
                uncertain: r.get::<_, i64>(7) as u64,
            })
            .collect())
        })
    }

    fn run_count(&self) -> Result<u64, StateError> {
        let id = self.campaign_id;
        self.link.call("counting runs", move |c| {
            c.query_one(
                "SELECT count(*) FROM convers8.runs WHERE campaign_id = $1",
                &[&id],
            )
            .map(|r| r.get::<_, i64>(0) as u64)
        })
    }

    fn sent_span(&self) -> Result<Option<(String, String)>, StateError> {
        let id = self.campaign_id;
        self.link.call("reading send times", move |c| {
            let r = c.query_one(
                "SELECT min(sent_at), max(sent_at) FROM convers8.recipients
                 WHERE campaign_id = $1 AND sent_at IS NOT NULL",
                &[&id],
            )?;
            Ok(match (r.get(0), r.get(1)) {
                (Some(first), Some(last)) => Some((first, last)),
                _ => None,
            })
        })
    }

    fn sent_per_bucket(&self, prefix_chars: usize) -> Result<Vec<(String, u64)>, StateError> {
        let prefix_chars = prefix_chars.clamp(1, TIMESTAMP_CHARS) as i32;
        let id = self.campaign_id;
        self.link.call("counting sends over time", move |c| {
            Ok(c.query(
                // The collation on the column, not in ORDER BY: PostgreSQL
                // reads `bucket COLLATE "C"` as an expression over the
                // table's columns, where there is no `bucket`.
                "SELECT substr(sent_at COLLATE \"C\", 1, $2) AS bucket, count(*)
                 FROM convers8.recipients WHERE campaign_id = $1 AND sent_at IS NOT NULL
                 GROUP BY bucket ORDER BY bucket",
                &[&id, &prefix_chars],
            )?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
        })
    }

    fn attempts_by_state(&self) -> Result<Vec<AttemptsCount>, StateError> {
        let id = self.campaign_id;
        self.link.call("counting attempts", move |c| {
            Ok(c.query(
                "SELECT attempts, state, count(*) FROM convers8.recipients
                 WHERE campaign_id = $1
                   AND (attempts > 0 OR state IN ('sent', 'failed', 'uncertain'))
                 GROUP BY attempts, state ORDER BY attempts, state COLLATE \"C\"",
                &[&id],
            )?
            .iter()
            .filter_map(|r| {
                Some(AttemptsCount {
                    attempts: r.get::<_, i32>(0).max(0) as u32,
                    state: RecipientState::parse(r.get(1))?,
                    count: r.get::<_, i64>(2) as u64,
                })
            })
            .collect())
        })
    }

    fn error_codes_by_state(&self) -> Result<Vec<ErrorStateCount>, StateError> {
        let id = self.campaign_id;
        self.link.call("counting errors", move |c| {
            Ok(c.query(
                "SELECT error_code, state, count(*) AS n FROM convers8.recipients
                 WHERE campaign_id = $1 AND error_code IS NOT NULL
                   AND state IN ('failed', 'uncertain', 'invalid', 'duplicate', 'suppressed')
                 GROUP BY error_code, state
                 ORDER BY n DESC, error_code COLLATE \"C\", state COLLATE \"C\"",
                &[&id],
            )?
            .iter()
            .filter_map(|r| {
                Some(ErrorStateCount {
                    code: r.get(0),
                    state: RecipientState::parse(r.get(1))?,
                    count: r.get::<_, i64>(2) as u64,
                })
            })
            .collect())
        })
    }
}
