//! Planning: the campaign file and its CSV become planned rows in the state,
//! each with its final state (`pending`, `invalid`, `duplicate`) and, when it
//! will be sent, the exact JSON body — all in one transaction, before a single
//! message leaves.
//!
//! What is sent is fixed here: a resumed run sends the stored bodies, never a
//! re-rendering. So this module also detects inputs that changed since the
//! plan and refuses to mix them in silently. It streams the CSV once and
//! holds only the current row, so memory stays flat whatever the row count.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::api::model::{MessageContent, build_body};
use crate::api::rules;
use crate::campaign::Campaign;
use crate::ledger::screen::Suppressions;
use crate::phone::E164;
use crate::recipients::{RawRow, RecipientReader, RecipientsError};
use crate::render::{Renderer, RowContext, TemplateError};
pub use crate::state::PlanWrite;
use crate::state::{
    Inserted, PlanInfo, PlanProblem, PlanRows, PlannedRow, ProblemCode, RecipientState, StateDb,
    StateError, StateRead, StateStore, timestamp, write_plan,
};
use crate::zones;

/// How many row problems a summary keeps to show (all are in the state).
pub const PROBLEMS_KEPT: usize = 20;

/// One row that will not be sent, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowProblem {
    pub row: u64,
    pub line: u64,
    pub state: RecipientState,
    pub code: ProblemCode,
    pub details: String,
}

/// What a plan did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PlanSummary {
    /// Data rows read from the CSV.
    pub rows: u64,
    pub pending: u64,
    pub invalid: u64,
    pub duplicate: u64,
    /// Opted out on the ledger or in an exclude file: never sent.
    pub suppressed: u64,
    /// `--add-new-recipients` only: rows whose phone the state already had.
    pub already_planned: u64,
    /// Rows the ledger shows this campaign already messaged (from a state
    /// that was lost or another one): planned `sent` or `uncertain`, not sent again.
    pub messaged_before: u64,
    pub csv_sha256: String,
    /// The first [`PROBLEMS_KEPT`] invalid or duplicate rows.
    pub problems: Vec<RowProblem>,
    /// Rows to send whose zone neither the CSV nor the phone's country gave,
    /// so the campaign's `fallback_timezone` was used (a window in each
    /// recipient's own hours only).
    pub zone_fallback: u64,
}

/// How the campaign's inputs compare with what was planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputCheck {
    NotPlanned,
    Unchanged,
    /// The CSV's bytes differ; the message did not change.
    CsvChanged {
        planned: PlanInfo,
    },
    /// The message, `[vars]` or how the CSV is read changed.
    MessageChanged {
        planned: PlanInfo,
    },
}

/// Why a plan could not be made (nothing was written).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "template {place} uses {{{{{column}}}}}, but {csv} has no column '{column}' (its columns: {columns}): add the column or fix the template"
    )]
    MissingColumn {
        place: String,
        column: String,
        csv: String,
        columns: String,
    },
    #[error("cannot read {path}: {reason}")]
    Hash { path: String, reason: String },
    #[error("{file}: {source}")]
    Template {
        file: String,
        #[source]
        source: TemplateError,
    },
    #[error(transparent)]
    Recipients(#[from] RecipientsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the CSV reading thread stopped unexpectedly")]
    ReaderStopped,
    #[error("cannot create a temporary directory to plan in: {0}")]
    Scratch(#[source] std::io::Error),
}

/// A fingerprint of everything that decides what each recipient is sent:
/// the message, `[vars]`, and how the CSV is read. Pacing keys are left out
/// on purpose, so an operator can change `concurrency` between runs.
pub fn message_fingerprint(campaign: &Campaign) -> String {
    let r = &campaign.recipients;
    let material = serde_json::json!({
        "type": campaign.message.kind.as_str(),
        "content": campaign.message.content,
        "vars": campaign.vars,
        "phone_column": r.phone_column,
        "name_column": r.name_column,
        "default_country": r.default_country.map(|c| format!("{c:?}")),
        "delimiter": r.delimiter,
    });
    // A window in each recipient's own hours decides each row's zone at plan
    // time, so what decides the zones is part of the plan too. Added only
    // then, so the plans of every other campaign keep their fingerprint.
    let mut material = material;
    if let Some(window) = campaign.send.window.filter(|w| w.per_recipient) {
        material["recipient_zones"] = serde_json::json!({
            "timezone_column": r.timezone_column,
            "fallback_timezone": window.timezone.name(),
        });
    }
    hex(&Sha256::digest(material.to_string().as_bytes()))
}

/// The SHA-256 of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<String, PlanError> {
    let err = |e: std::io::Error| PlanError::Hash {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut file = File::open(path).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Compares the campaign's inputs with the stored plan.
pub fn check_inputs(db: &dyn StateRead, campaign: &Campaign) -> Result<InputCheck, PlanError> {
    let Some(planned) = db.plan_info()? else {
        return Ok(InputCheck::NotPlanned);
    };
    if planned.message_fingerprint != message_fingerprint(campaign) {
        return Ok(InputCheck::MessageChanged { planned });
    }
    if planned.csv_sha256 != file_sha256(&campaign.recipients.csv)? {
        return Ok(InputCheck::CsvChanged { planned });
    }
    Ok(InputCheck::Unchanged)
}

/// Turns one CSV row into a planned row: phone, name, rendered body or the
/// reason it cannot be sent.
pub struct RowPlanner<'c> {
    campaign: &'c Campaign,
    renderer: Renderer,
    headers: Vec<String>,
    phone_index: usize,
    name_index: Option<usize>,
    /// Opted-out and excluded phones: planned `suppressed`, never rendered.
    suppressions: Option<&'c Suppressions>,
    /// Set for a window in each recipient's own hours.
    zones: Option<ZonePlanner>,
}

/// How [`RowPlanner`] decides a row's zone.
struct ZonePlanner {
    /// `timezone_column`'s index and name, when the campaign has one.
    column: Option<(usize, String)>,
    fallback: chrono_tz::Tz,
}

impl<'c> RowPlanner<'c> {
    /// Plans the phones `suppressions` names as `suppressed`.
    pub fn with_suppressions(mut self, suppressions: &'c Suppressions) -> Self {
        self.suppressions = Some(suppressions);
        self
    }

    /// Compiles the templates and checks that every column they use exists.
    pub fn new(campaign: &'c Campaign, reader: &RecipientReader) -> Result<Self, PlanError> {
        let renderer = Renderer::compile(&campaign.message, &campaign.vars).map_err(|source| {
            PlanError::Template {
                file: campaign.file.display().to_string(),
                source,
            }
        })?;
        let headers = reader.headers().to_vec();
        for column in renderer.referenced_columns() {
            if !headers.contains(&column) {
                return Err(PlanError::MissingColumn {
                    place: "message.content".to_owned(),
                    column,
                    csv: campaign.recipients.csv.display().to_string(),
                    columns: headers.join(", "),
                });
            }
        }
        let zones = match (&campaign.send.window, campaign.recipients.fallback_timezone) {
            (Some(window), Some(fallback)) if window.per_recipient => {
                let column = match &campaign.recipients.timezone_column {
                    None => None,
                    Some(wanted) => {
                        let index = reader.column_index(wanted).ok_or_else(|| {
                            PlanError::MissingColumn {
                                place: "recipients.timezone_column".to_owned(),
                                column: wanted.clone(),
                                csv: campaign.recipients.csv.display().to_string(),
                                columns: headers.join(", "),
                            }
                        })?;
                        Some((index, wanted.clone()))
                    }
                };
                Some(ZonePlanner { column, fallback })
            }
            _ => None,
        };
        Ok(RowPlanner {
            campaign,
            renderer,
            headers,
            phone_index: reader.phone_index(),
            name_index: reader.name_index(),
            suppressions: None,
            zones,
        })
    }

    pub fn plan_row(&self, raw: &RawRow) -> PlannedRow {
        let bad_row = |details: String| PlannedRow {
            row: raw.row,
            phone: None,
            name: None,
            outcome: Err(PlanProblem {
                code: ProblemCode::BadRow,
                details,
            }),
            timezone: None,
        };
        let record = match &raw.outcome {
            Ok(record) => record,
            Err(why) => return bad_row(format!("line {}: {why}", raw.line)),
        };
        // A NUL byte never belongs in a contact export (it comes from binary
        // or mis-encoded files), and would reach the recipient as U+0000.
        if record.as_slice().contains('\0') {
            let column = record
                .iter()
                .position(|field| field.contains('\0'))
                .and_then(|i| self.headers.get(i))
                .map_or_else(String::new, |h| format!(" in column '{h}'"));
            return bad_row(format!(
                "line {}: a NUL character (byte 0){column}: is the file really a text CSV?",
                raw.line
            ));
        }
        let raw_phone = record.get(self.phone_index).unwrap_or("");
        let name = self
            .name_index
            .and_then(|i| record.get(i))
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let phone = match E164::parse(raw_phone, self.campaign.recipients.default_country) {
            Ok(phone) => phone,
            Err(why) => {
                return PlannedRow {
                    row: raw.row,
                    phone: Some(raw_phone.trim().to_owned()).filter(|p| !p.is_empty()),
                    name,
                    outcome: Err(PlanProblem {
                        code: ProblemCode::InvalidPhone,
                        details: why.to_string(),
                    }),
                    timezone: None,
                };
            }
        };
        if let Some(why) = self.suppressions.and_then(|s| s.check(phone.as_str())) {
            return PlannedRow {
                row: raw.row,
                phone: Some(phone.into_string()),
                name,
                outcome: Err(PlanProblem {
                    code: why.code,
                    details: why.details,
                }),
                timezone: None,
            };
        }
        let timezone = match &self.zones {
            None => None,
            Some(zones) => {
                let cell = zones
                    .column
                    .as_ref()
                    .map(|(i, _)| record.get(*i).unwrap_or(""));
                let column = zones.column.as_ref().map_or("", |(_, name)| name.as_str());
                match zones::zone_for_row(cell, column, phone.as_str(), zones.fallback) {
                    Ok(zone) => Some(zone),
                    Err(why) => {
                        return PlannedRow {
                            row: raw.row,
                            phone: Some(phone.into_string()),
                            name,
                            outcome: Err(PlanProblem {
                                code: ProblemCode::InvalidTimezone,
                                details: why.to_string(),
                            }),
                            timezone: None,
                        };
                    }
                }
            }
        };
        let outcome = self.render_body(record, phone.as_str(), name.as_deref(), raw.row);
        PlannedRow {
            row: raw.row,
            phone: Some(phone.into_string()),
            name,
            outcome,
            timezone,
        }
    }

    fn render_body(
        &self,
        record: &csv::StringRecord,
        phone: &str,
        name: Option<&str>,
        row: u64,
    ) -> Result<String, PlanProblem> {
        let ctx = RowContext {
            headers: &self.headers,
            record,
            phone,
            row,
        };
        let content = self.renderer.render(&ctx).map_err(|e| PlanProblem {
            code: ProblemCode::MissingVariable,
            details: e.to_string(),
        })?;
        let kind = self.campaign.message.kind;
        // The same rules the API applies, checked now so a title that renders
        // too long fails here, not as thousands of validation errors mid-run.
        let typed = MessageContent::from_json(kind, content.clone()).map_err(|e| PlanProblem {
            code: ProblemCode::ContentRule,
            details: format!("rendered content does not fit a {kind} message: {e}"),
        })?;
        rules::check_content(&typed).map_err(|details| PlanProblem {
            code: ProblemCode::ContentRule,
            details,
        })?;
        Ok(build_body(kind, phone, name, content).to_string())
    }
}

/// Rows handed from the reading thread to the writing thread at a time.
const PIPELINE_BATCH: usize = 512;
/// Batches in flight between the two: bounds memory whatever the file size.
const PIPELINE_DEPTH: usize = 8;

/// Plans the campaign into the state: every CSV row, in one transaction.
/// `on_problem` sees every row that will not be sent, as it is found.
///
/// Reading, phone parsing and rendering run on one thread and the SQLite
/// inserts on another, so planning uses both cores; a bounded channel between
/// them keeps memory flat.
pub fn plan_campaign(
    db: &mut dyn StateStore,
    campaign: &Campaign,
    mode: PlanWrite,
    on_problem: impl FnMut(&RowProblem),
) -> Result<PlanSummary, PlanError> {
    plan_campaign_screened(db, campaign, mode, &Suppressions::none(), on_problem)
}

/// [`plan_campaign`], with the phones `suppressions` names planned
/// `suppressed` (opted out on the ledger, or in an exclude file).
pub fn plan_campaign_screened(
    db: &mut dyn StateStore,
    campaign: &Campaign,
    mode: PlanWrite,
    suppressions: &Suppressions,
    mut on_problem: impl FnMut(&RowProblem),
) -> Result<PlanSummary, PlanError> {
    let mut reader = RecipientReader::open(&campaign.recipients)?;
    let planner = RowPlanner::new(campaign, &reader)?.with_suppressions(suppressions);
    let fill = move |sink: &mut dyn PlanRows| {
        std::thread::scope(|scope| {
            let (batches, received) =
                std::sync::mpsc::sync_channel::<Vec<(RawRowPlace, PlannedRow)>>(PIPELINE_DEPTH);
            let producer = scope.spawn(move || -> Result<String, RecipientsError> {
                let mut batch = Vec::with_capacity(PIPELINE_BATCH);
                while let Some(raw) = reader.next_row() {
                    let raw = raw?;
                    let planned = planner.plan_row(&raw);
                    batch.push((
                        RawRowPlace {
                            row: raw.row,
                            line: raw.line,
                        },
                        planned,
                    ));
                    if batch.len() == PIPELINE_BATCH
                        && batches.send(std::mem::take(&mut batch)).is_err()
                    {
                        // The writer stopped on an error of its own; it reports it.
                        return Ok(String::new());
                    }
                }
                if !batch.is_empty() {
                    let _ = batches.send(batch);
                }
                Ok(reader.sha256_hex())
            });
            let mut summary = PlanSummary::default();
            let mut failure = None;
            'batches: for batch in received.iter() {
                for (place, planned) in batch {
                    match record_row(sink, &mut summary, place, &planned) {
                        Ok(Some(problem)) => {
                            on_problem(&problem);
                            if summary.problems.len() < PROBLEMS_KEPT {
                                summary.problems.push(problem);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            failure = Some(e);
                            break 'batches;
                        }
                    }
                }
            }
            // Unblocks the reader if the writer stopped early.
            drop(received);
            let read = producer.join().map_err(|_| PlanError::ReaderStopped)?;
            if let Some(e) = failure {
                return Err(e.into());
            }
            summary.csv_sha256 = read?;
            for earlier in suppressions.earlier_messages() {
                if sink.mark_messaged(earlier)? {
                    summary.pending -= 1;
                    summary.messaged_before += 1;
                }
            }
            let now = timestamp(Utc::now());
            let info = PlanInfo {
                campaign_name: campaign.name.clone(),
                message_type: campaign.message.kind.as_str().to_owned(),
                campaign_file: campaign.file.display().to_string(),
                csv_file: campaign.recipients.csv.display().to_string(),
                message_fingerprint: message_fingerprint(campaign),
                csv_sha256: summary.csv_sha256.clone(),
                csv_rows: summary.rows,
                planned_at: now.clone(),
                updated_at: now,
            };
            Ok((summary, info))
        })
    };
    write_plan(db, mode, fill)
}

/// A plan made in a temporary directory, removed when this is dropped.
pub struct ScratchPlan {
    pub db: StateDb,
    pub summary: PlanSummary,
    // Kept last so the database closes before its directory is removed.
    _dir: tempfile::TempDir,
}

impl ScratchPlan {
    /// Plans `campaign` into a throwaway state; `on_problem` sees every row
    /// that will not be sent.
    pub fn new(
        campaign: &Campaign,
        on_problem: impl FnMut(&RowProblem),
    ) -> Result<ScratchPlan, PlanError> {
        Self::screened(campaign, &Suppressions::none(), on_problem)
    }

    /// [`ScratchPlan::new`] with opted-out and excluded phones suppressed.
    pub fn screened(
        campaign: &Campaign,
        suppressions: &Suppressions,
        on_problem: impl FnMut(&RowProblem),
    ) -> Result<ScratchPlan, PlanError> {
        let dir = tempfile::tempdir().map_err(PlanError::Scratch)?;
        let mut db = StateDb::open_or_create(&dir.path().join("scratch.state.db"))?;
        let summary = plan_campaign_screened(
            &mut db,
            campaign,
            PlanWrite::Fresh,
            suppressions,
            on_problem,
        )?;
        Ok(ScratchPlan {
            db,
            summary,
            _dir: dir,
        })
    }
}

/// Where a row was in the CSV.
#[derive(Debug, Clone, Copy)]
struct RawRowPlace {
    row: u64,
    line: u64,
}

/// Inserts one planned row and counts it; returns the problem if it will not be sent.
fn record_row(
    sink: &mut dyn PlanRows,
    summary: &mut PlanSummary,
    place: RawRowPlace,
    planned: &PlannedRow,
) -> Result<Option<RowProblem>, crate::state::StateError> {
    summary.rows += 1;
    let inserted = sink.insert(planned)?;
    let (state, code, details) = match (inserted, &planned.outcome) {
        (Inserted::Pending, _) => {
            summary.pending += 1;
            if planned
                .timezone
                .is_some_and(|z| z.source == zones::ZoneSource::Fallback)
            {
                summary.zone_fallback += 1;
            }
            return Ok(None);
        }
        (Inserted::AlreadyPlanned, _) => {
            summary.already_planned += 1;
            return Ok(None);
        }
        (Inserted::Duplicate { of_row }, _) => {
            summary.duplicate += 1;
            (
                RecipientState::Duplicate,
                ProblemCode::Duplicate,
                format!("same phone as row {of_row}"),
            )
        }
        (Inserted::Suppressed, Err(p)) => {
            summary.suppressed += 1;
            (RecipientState::Suppressed, p.code, p.details.clone())
        }
        (Inserted::Invalid, Err(p)) => {
            summary.invalid += 1;
            (RecipientState::Invalid, p.code, p.details.clone())
        }
        (Inserted::Invalid | Inserted::Suppressed, Ok(_)) => {
            summary.invalid += 1;
            (
                RecipientState::Invalid,
                ProblemCode::InvalidPhone,
                "no phone".into(),
            )
        }
    };
    Ok(Some(RowProblem {
        row: place.row,
        line: place.line,
        state,
        code,
        details,
    }))
}
