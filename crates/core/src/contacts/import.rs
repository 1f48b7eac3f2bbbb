//! Importing contacts: one `POST /contacts` for each usable row of a CSV
//! file, with the engine's pace, retries and stop.
//!
//! Rows stream from the file through the campaign's [`RecipientReader`] and
//! [`E164::parse`]: a row without a usable phone or name is `invalid`, a
//! phone seen earlier in the file is a `duplicate` (the API does not
//! deduplicate, so a second request would be a second contact), and every
//! other row is created with at most `concurrency` requests in flight, all
//! waiting on one shared [`Pace`] (a 429 slows the whole import, not one row),
//! each through [`call_until_answered`]. A row is read only when a request
//! slot is free, so a huge file never queues up in memory.
//!
//! When the [`Stop`] fires — the caller's signal, or a rejected key — no more
//! rows are read or sent, requests already on the wire finish and are
//! reported, rows waiting to retry are given up as not imported (nothing of
//! them was created), and the rest of the file is counted so the summary says
//! how many rows were not imported. Every row read gets exactly one
//! [`RowReport`], through [`ImportEvents`], as soon as its outcome is known.
//! This module prints nothing, never exits the process and never holds the
//! API key (messages come from the server's answers and the file).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::task::{Id, JoinError, JoinSet};

use crate::api::model::{Contact, NewContact};
use crate::api::{ApiError, Client};
use crate::campaign::RecipientsSpec;
use crate::engine::call::{Answer, CallPolicy, Called, call_until_answered};
use crate::engine::pace::Pace;
use crate::engine::retry::BackoffPolicy;
use crate::engine::{Stop, StopReason};
use crate::phone::E164;
use crate::recipients::{RawRow, RecipientReader, RecipientsError};

/// Requests in flight at once unless the caller says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Attempts per row for failures known to be safe to retry (5xx, connection
/// refused before sending); rate limits do not spend them.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// What to import and how hard to push.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The file and how to read it: columns, delimiter, and the country of
    /// numbers written without `+` — the settings of a campaign's `[recipients]`.
    pub source: RecipientsSpec,
    /// Requests in flight at once (0 counts as 1).
    pub concurrency: usize,
    /// At most this many requests per second; `None` lets the server's 429s
    /// find the rate.
    pub rate_per_second: Option<f64>,
    /// Attempts per row for retryable failures.
    pub max_attempts: u32,
    pub backoff: BackoffPolicy,
}

impl ImportOptions {
    /// Reads `source` with the defaults for the rest.
    pub fn new(source: RecipientsSpec) -> ImportOptions {
        ImportOptions {
            source,
            concurrency: DEFAULT_CONCURRENCY,
            rate_per_second: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: BackoffPolicy::default(),
        }
    }
}

/// What became of one CSV row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    Created,
    /// No usable phone or name, or a malformed row; never sent.
    Invalid,
    /// The phone of an earlier row; never sent.
    Duplicate,
    /// The API refused it, or retryable failures used up the attempts.
    Failed,
    /// No usable answer after the request may have reached the API: the
    /// contact may have been created. Not retried.
    Uncertain,
    /// The import stopped before this row was created (a stop, or a rejected
    /// key); nothing of it was created.
    NotImported,
}

/// One row's outcome. Every field is always present (null when it does not
/// apply), so a JSON line per row has one shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowReport {
    /// 1-based data row (the header is not a row).
    pub row: u64,
    /// The line of the file where the row starts.
    pub line: u64,
    pub outcome: RowStatus,
    /// E.164 when the phone parsed, the cell as written otherwise.
    pub phone: Option<String>,
    pub name: Option<String>,
    /// The new contact's id.
    pub id: Option<String>,
    /// `invalid_phone`, `no_name`, `bad_row`, `duplicate`, `stopped`, or the API's error code.
    pub code: Option<String>,
    /// Why, in words: the reader's or the server's.
    pub details: Option<String>,
    /// Requests made for this row.
    #[serde(skip)]
    pub attempts: u32,
}

/// Hears each row's outcome as soon as it is known: rows come in the order
/// they finish, not in file order. (`Send`, so an import can run on its own task.)
pub trait ImportEvents: Send {
    fn row(&mut self, report: &RowReport);
}

impl<F: FnMut(&RowReport) + Send> ImportEvents for F {
    fn row(&mut self, report: &RowReport) {
        self(report)
    }
}

/// What an import did. `rows` is every data row of the file (unless a read
/// failed part-way): each is exactly one of created, invalid, duplicate,
/// failed, uncertain, stopped or unread.
#[derive(Debug, Default)]
pub struct ImportSummary {
    /// Data rows in the file: those read, plus those counted after a stop.
    pub rows: u64,
    pub created: u64,
    pub invalid: u64,
    pub duplicate: u64,
    pub failed: u64,
    /// Failed rows by error code.
    pub failed_codes: BTreeMap<String, u64>,
    /// Rows that may have been created (no usable answer after sending).
    pub uncertain: u64,
    /// Rows read and reported [`RowStatus::NotImported`]: the stop caught
    /// them before they were created.
    pub stopped: u64,
    /// Rows after the last one read, counted but never read because the
    /// import stopped (counted up to a read error, if one came).
    pub unread: u64,
    pub end: ImportEnd,
}

impl ImportSummary {
    /// Rows that were not created because the import stopped: to import again.
    pub fn not_imported(&self) -> u64 {
        self.stopped + self.unread
    }

    /// Rows read and given an outcome.
    pub fn rows_read(&self) -> u64 {
        self.rows - self.unread
    }

    /// The first unread row, if the import stopped before the end of the file.
    pub fn first_unread(&self) -> Option<u64> {
        (self.unread > 0).then(|| self.rows_read() + 1)
    }
}

/// How an import ended.
#[derive(Debug, Default)]
pub enum ImportEnd {
    /// Every row of the file has an outcome.
    #[default]
    Completed,
    /// The [`Stop`] fired before the import was done.
    Stopped(StopReason),
    /// The API rejected the key at `row` (or this client refused the
    /// server's certificate): the import stopped there.
    Refused { row: u64, error: ApiError },
    /// The file could not be read past row `summary.rows`.
    ReadFailed(RecipientsError),
}

/// Why an import could not start; nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file cannot be opened, or its header read, or it has no phone column.
    #[error(transparent)]
    Recipients(#[from] RecipientsError),
    #[error(
        "{} has no column '{column}' (its columns: {}): name the column that holds the contacts' names",
        path.display(),
        columns.join(", ")
    )]
    NoNameColumn {
        path: PathBuf,
        column: String,
        columns: Vec<String>,
    },
}

/// Imports every row of `options.source` (see the module docs). `stop` ends
/// the import early; a rejected key triggers it too.
pub async fn run(
    client: &Client,
    options: &ImportOptions,
    events: &mut dyn ImportEvents,
    stop: Stop,
) -> Result<ImportSummary, ImportError> {
    let mut reader = RecipientReader::open(&options.source)?;
    let Some(name_index) = reader.name_index() else {
        return Err(ImportError::NoNameColumn {
            path: options.source.csv.clone(),
            column: options.source.name_column.clone(),
            columns: reader.headers().to_vec(),
        });
    };
    let name_column = reader
        .headers()
        .get(name_index)
        .cloned()
        .unwrap_or_default();
    let phone_index = reader.phone_index();
    let shared = Arc::new(Shared {
        client: client.clone(),
        // One pace for every request: a 429 slows the whole import, not one row.
        pace: Pace::new(options.rate_per_second),
        stop: stop.clone(),
        backoff: options.backoff,
        max_attempts: options.max_attempts,
    });
    let concurrency = options.concurrency.max(1);
    let mut import = Importer {
        summary: ImportSummary::default(),
        events,
        in_flight: HashMap::new(),
        refused: None,
        stop: stop.clone(),
    };
    // E.164 → the first row that had it.
    let mut seen: HashMap<E164, u64> = HashMap::new();
    // The set's length is the bound on requests in flight: one must finish
    // before the next row is read.
    let mut tasks: JoinSet<Called<Contact>> = JoinSet::new();
    let mut read_error = None;

    loop {
        while tasks.len() >= concurrency {
            match tasks.join_next_with_id().await {
                Some(done) => import.finish(done),
                None => break,
            }
        }
        while let Some(done) = tasks.try_join_next_with_id() {
            import.finish(done);
        }
        if stop.is_stopping() {
            break;
        }
        // A blocking read on the runtime: the reader refills a 64 KiB buffer
        // from a local file, microseconds at a time, and nothing else here is
        // waiting on this thread.
        let raw = match reader.next_row() {
            None => break,
            Some(Err(e)) => {
                read_error = Some(e);
                break;
            }
            Some(Ok(raw)) => raw,
        };
        import.summary.rows += 1;
        let pending = match judge(
            &raw,
            phone_index,
            name_index,
            &name_column,
            &options.source,
            &mut seen,
        ) {
            Judged::Create(pending) => pending,
            Judged::Skip(report) => {
                import.record(report);
                continue;
            }
        };
        let task_shared = shared.clone();
        let contact = pending.contact.clone();
        let task = tasks.spawn(async move {
            let shared = task_shared;
            let policy = CallPolicy::new(
                &shared.pace,
                &shared.stop,
                shared.backoff,
                shared.max_attempts,
            );
            let (client, contact) = (&shared.client, &contact);
            call_until_answered(&policy, &(), || client.create_contact(contact)).await
        });
        import.in_flight.insert(task.id(), pending);
    }
    // Requests already sent finish, so every row read gets an outcome.
    while let Some(done) = tasks.join_next_with_id().await {
        import.finish(done);
    }
    if read_error.is_none() && stop.is_stopping() {
        import.summary.unread = count_rest(reader).await;
        import.summary.rows += import.summary.unread;
    }
    let mut summary = import.summary;
    summary.end = match (import.refused, read_error, stop.reason()) {
        (Some((row, error)), _, _) => ImportEnd::Refused { row, error },
        (None, Some(e), _) => ImportEnd::ReadFailed(e),
        (None, None, Some(reason)) => ImportEnd::Stopped(reason),
        (None, None, None) => ImportEnd::Completed,
    };
    Ok(summary)
}

/// What every request task shares.
struct Shared {
    client: Client,
    pace: Pace,
    stop: Stop,
    backoff: BackoffPolicy,
    max_attempts: u32,
}

/// A row on its way to the API.
struct Pending {
    row: u64,
    line: u64,
    contact: NewContact,
}

/// The import's bookkeeping: counts, the rows in flight, the first rejection of the key.
struct Importer<'a> {
    summary: ImportSummary,
    events: &'a mut dyn ImportEvents,
    in_flight: HashMap<Id, Pending>,
    refused: Option<(u64, ApiError)>,
    stop: Stop,
}

impl Importer<'_> {
    fn record(&mut self, report: RowReport) {
        let s = &mut self.summary;
        match report.outcome {
            RowStatus::Created => s.created += 1,
            RowStatus::Invalid => s.invalid += 1,
            RowStatus::Duplicate => s.duplicate += 1,
            RowStatus::Failed => {
                s.failed += 1;
                let code = report.code.clone().unwrap_or_default();
                *s.failed_codes.entry(code).or_default() += 1;
            }
            RowStatus::Uncertain => s.uncertain += 1,
            RowStatus::NotImported => s.stopped += 1,
        }
        self.events.row(&report);
    }

    /// Records a finished request. A rejected key stops the import: every
    /// other request would be rejected too.
    fn finish(&mut self, done: Result<(Id, Called<Contact>), JoinError>) {
        let (id, called) = match done {
            Ok((id, called)) => (id, Ok(called)),
            Err(e) => (e.id(), Err(e)),
        };
        // Every task is entered under its id as it is spawned.
        let Some(pending) = self.in_flight.remove(&id) else {
            return;
        };
        let report = match called {
            Ok(called) => {
                if let Answer::Refused(error) = &called.answer
                    && self.refused.is_none()
                {
                    self.refused = Some((pending.row, error.clone()));
                    self.stop
                        .trigger(StopReason::Unauthorized(error.to_string()));
                }
                settle(pending, called)
            }
            // Only a panic gets here (no task is aborted); it may have come
            // after the request was sent.
            Err(e) => {
                let mut report = sent_row(pending, RowStatus::Uncertain, 0);
                report.code = Some("internal_error".into());
                report.details = Some(format!("the request ended unexpectedly: {e}"));
                report
            }
        };
        self.record(report);
    }
}

/// A row that reached the request stage, before its outcome is filled in.
fn sent_row(pending: Pending, outcome: RowStatus, attempts: u32) -> RowReport {
    RowReport {
        row: pending.row,
        line: pending.line,
        outcome,
        phone: Some(pending.contact.phone_number),
        name: Some(pending.contact.name),
        id: None,
        code: None,
        details: None,
        attempts,
    }
}

/// The report of a row whose call ended.
fn settle(pending: Pending, called: Called<Contact>) -> RowReport {
    let attempts = called.attempts;
    let with_error = |outcome, pending, code: &str, details: String| RowReport {
        code: Some(code.to_owned()),
        details: Some(details),
        ..sent_row(pending, outcome, attempts)
    };
    match called.answer {
        Answer::Answered(contact) => RowReport {
            id: Some(contact.id),
            ..sent_row(pending, RowStatus::Created, attempts)
        },
        Answer::Failed(failure) => with_error(
            RowStatus::Failed,
            pending,
            failure.error.code(),
            failure.details(),
        ),
        Answer::MaybeTookEffect(error) => {
            with_error(RowStatus::Uncertain, pending, error.code(), error.details())
        }
        Answer::Refused(error) => with_error(
            RowStatus::NotImported,
            pending,
            error.code(),
            error.details(),
        ),
        Answer::NotSent { last_error } => {
            let details = match last_error {
                Some(e) => format!(
                    "the import stopped before this row was created (it was waiting to retry after: {e})"
                ),
                None => "the import stopped before this row was sent".to_owned(),
            };
            with_error(RowStatus::NotImported, pending, "stopped", details)
        }
    }
}

/// What to do with a row read.
enum Judged {
    Create(Pending),
    /// Never sent: this is its outcome.
    Skip(RowReport),
}

/// A row to create, or the report of why it will not be.
fn judge(
    raw: &RawRow,
    phone_index: usize,
    name_index: usize,
    name_column: &str,
    source: &RecipientsSpec,
    seen: &mut HashMap<E164, u64>,
) -> Judged {
    let problem = |outcome, phone, name, code: &str, details: String| RowReport {
        row: raw.row,
        line: raw.line,
        outcome,
        phone,
        name,
        id: None,
        code: Some(code.to_owned()),
        details: Some(details),
        attempts: 0,
    };
    let record = match &raw.outcome {
        Ok(record) => record,
        Err(why) => {
            let details = format!("line {} {why}", raw.line);
            return Judged::Skip(problem(RowStatus::Invalid, None, None, "bad_row", details));
        }
    };
    let cell = record.get(phone_index).unwrap_or_default().trim();
    let name = record
        .get(name_index)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let phone = match E164::parse(cell, source.default_country) {
        Ok(phone) => phone,
        Err(why) => {
            let shown = Some(cell.to_owned()).filter(|c| !c.is_empty());
            return Judged::Skip(problem(
                RowStatus::Invalid,
                shown,
                name,
                "invalid_phone",
                why.to_string(),
            ));
        }
    };
    let Some(name) = name else {
        let details = format!("no name in column '{name_column}'");
        return Judged::Skip(problem(
            RowStatus::Invalid,
            Some(phone.into_string()),
            None,
            "no_name",
            details,
        ));
    };
    if let Some(first) = seen.get(&phone) {
        let details = format!("duplicate of row {first} ({phone})");
        return Judged::Skip(problem(
            RowStatus::Duplicate,
            Some(phone.into_string()),
            Some(name),
            "duplicate",
            details,
        ));
    }
    seen.insert(phone.clone(), raw.row);
    Judged::Create(Pending {
        row: raw.row,
        line: raw.line,
        contact: NewContact {
            name,
            phone_number: phone.into_string(),
        },
    })
}

/// Counts the rows left after a stop (to a read error, if one comes), off
/// the runtime: the rest of a large file is seconds of reading.
async fn count_rest(mut reader: RecipientReader) -> u64 {
    let counting = tokio::task::spawn_blocking(move || {
        let mut rows = 0;
        while let Some(Ok(_)) = reader.next_row() {
            rows += 1;
        }
        rows
    });
    counting.await.unwrap_or(0)
}
