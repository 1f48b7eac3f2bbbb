//! Status and per-recipient export: what `status` and `report` show, read
//! from a state file that a run may be writing at the same moment.
//!
//! This module owns gathering a campaign's status (counts, the run in
//! progress, throughput, errors), writing it as text or JSON, and exporting
//! one line per recipient as CSV or JSON Lines — streamed row by row, so a
//! million-row campaign never sits in memory. It also owns how a report file
//! reaches the disk: owner-only, written whole or not at all. It must not
//! write to the state file or take the run lock: `status` has to work while
//! another process is sending.

pub mod html;

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::engine::progress::format_duration;
use crate::state::{
    Counts, RecipientRecord, RecipientState, RunRecord, RunnerRecord, StateError, StateRead,
    VisitError,
};

/// How far back `status` looks to measure the pace of a run in progress.
pub const THROUGHPUT_WINDOW: Duration = Duration::from_secs(60);
/// The shortest span a pace is measured over: a run a few milliseconds old
/// must not turn its first message into thousands per second.
pub const THROUGHPUT_MIN_SPAN: Duration = Duration::from_secs(1);

/// Where a campaign stands, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub state_file: String,
    pub campaign: Option<String>,
    pub message_type: Option<String>,
    pub csv_file: Option<String>,
    /// When the campaign was first planned.
    pub planned_at: Option<String>,
    /// Data rows in the CSV at the last plan.
    pub csv_rows: Option<u64>,
    /// Rows in the state: every state added up.
    pub total: u64,
    pub counts: Counts,
    /// The run sending right now, if any.
    pub running: Option<RunRecord>,
    /// With a state shared by several runners: those holding a live lease.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runners: Vec<RunnerRecord>,
    /// The latest run did not finish and its process is gone (killed, crashed).
    pub last_run_died: bool,
    /// Messages per second while a run is in progress, over the last
    /// minute or, for a run younger than that, over the time it has lasted.
    pub per_second: Option<f64>,
    /// The span `per_second` was measured over, in seconds.
    pub per_second_span_seconds: Option<f64>,
    /// Seconds until the pending rows are sent at that pace.
    pub eta_seconds: Option<u64>,
    /// The most recent run, finished or not.
    pub last_run: Option<RunRecord>,
    /// Error codes of failed, uncertain and invalid rows, most frequent first.
    pub errors: Vec<ErrorCount>,
    /// Why the suppressed rows were not sent (`opted_out`, `excluded`,
    /// `frequency_cap`), most frequent first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suppressed_reasons: Vec<ErrorCount>,
    /// With a window in each recipient's own hours: pending rows per zone and
    /// when they may go next (see [`pending_by_zone`]); empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending_by_zone: Vec<ZonePending>,
}

/// The pending rows of one zone, for a window in each recipient's own hours.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ZonePending {
    /// The IANA zone the rows were planned in.
    pub timezone: String,
    pub pending: u64,
    pub open_now: bool,
    /// When the zone's window opens (`now` when open).
    pub opens_at: DateTime<Utc>,
}

/// Pending rows per zone and when each zone's window opens, soonest first:
/// what `status` shows for a window in each recipient's own hours.
pub fn pending_by_zone(
    db: &dyn StateRead,
    window: &crate::campaign::SendWindow,
    now: DateTime<Utc>,
) -> Result<Vec<ZonePending>, StateError> {
    let hours = crate::engine::hours::RecipientHours::from_zones(*window, []);
    let mut zones: Vec<ZonePending> = db
        .rows_by_zone(&[RecipientState::Pending])?
        .into_iter()
        .filter_map(|(zone, pending)| {
            let timezone = zone?;
            let opens_at = hours.zone_next_open(&timezone, now)?;
            Some(ZonePending {
                open_now: opens_at <= now,
                timezone,
                pending,
                opens_at,
            })
        })
        .collect();
    zones.sort_by(|a, b| (a.opens_at, &a.timezone).cmp(&(b.opens_at, &b.timezone)));
    Ok(zones)
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ErrorCount {
    pub code: String,
    pub count: u64,
}

/// Reads the campaign's status from an open state file, as of `now`.
pub fn gather_status(db: &dyn StateRead, now: DateTime<Utc>) -> Result<Status, StateError> {
    let plan = db.plan_info()?;
    let counts = db.counts()?;
    let last_run = db.runs(1)?.into_iter().next();
    let unfinished = last_run.as_ref().filter(|r| r.finished_at.is_none());
    // A run that never recorded its end is only "in progress" while its
    // process lives; otherwise it was killed or crashed. In a state shared
    // by several runners (on other machines too) their leases say so.
    let runners = db.live_runners()?;
    let running = match &runners {
        Some(live) if live.is_empty() => None,
        Some(_) => db.runs(64)?.into_iter().find(|r| r.finished_at.is_none()),
        None => unfinished
            .filter(|r| process_alive(r.pid).unwrap_or(true))
            .cloned(),
    };
    let last_run_died = unfinished.is_some() && running.is_none();
    let (per_second, per_second_span_seconds, eta_seconds) = match &running {
        Some(run) => {
            let (lasted, span) = pace_span(run, now);
            // Only this run's sends: a run younger than the window has not
            // been sending for all of it, and the run before may have been.
            let since = now - chrono::Duration::from_std(lasted).unwrap_or_default();
            let recent = db.sent_since(since)?;
            let per_second = recent as f64 / span.as_secs_f64();
            let eta =
                (per_second > 0.0).then(|| (counts.pending as f64 / per_second).ceil() as u64);
            (Some(per_second), Some(span.as_secs_f64()), eta)
        }
        None => (None, None, None),
    };
    let errors = db
        .error_counts()?
        .into_iter()
        .map(|(code, count)| ErrorCount { code, count })
        .collect();
    let suppressed_reasons = if counts.suppressed > 0 {
        db.error_codes_by_state()?
            .into_iter()
            .filter(|e| e.state == RecipientState::Suppressed)
            .map(|e| ErrorCount {
                code: e.code,
                count: e.count,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Status {
        state_file: db.location().to_owned(),
        campaign: plan.as_ref().map(|p| p.campaign_name.clone()),
        message_type: plan.as_ref().map(|p| p.message_type.clone()),
        csv_file: plan.as_ref().map(|p| p.csv_file.clone()),
        planned_at: plan.as_ref().map(|p| p.planned_at.clone()),
        csv_rows: plan.as_ref().map(|p| p.csv_rows),
        total: counts.total(),
        counts,
        running,
        runners: runners.unwrap_or_default(),
        last_run_died,
        per_second,
        per_second_span_seconds,
        eta_seconds,
        last_run,
        errors,
        suppressed_reasons,
        pending_by_zone: Vec::new(),
    })
}

/// What a running run's pace is measured over: how far back to count its
/// sends (the time it has lasted, at most [`THROUGHPUT_WINDOW`]) and the span
/// to divide them by (the same, but at least [`THROUGHPUT_MIN_SPAN`]). A start
/// time that cannot be read (only a damaged state file has one) counts as the
/// whole window; one in the future (a clock set back) as no time at all.
fn pace_span(run: &RunRecord, now: DateTime<Utc>) -> (Duration, Duration) {
    let lasted = match DateTime::parse_from_rfc3339(&run.started_at) {
        Ok(started) => (now - started.with_timezone(&Utc))
            .to_std()
            .unwrap_or_default(),
        Err(_) => THROUGHPUT_WINDOW,
    }
    .min(THROUGHPUT_WINDOW);
    (lasted, lasted.max(THROUGHPUT_MIN_SPAN))
}

/// Whether a process with this id exists; `None` where that cannot be told.
/// A reused pid can make a dead run look alive, never the reverse.
pub fn process_alive(pid: u32) -> Option<bool> {
    if cfg!(target_os = "linux") {
        Some(Path::new("/proc").join(pid.to_string()).exists())
    } else {
        None
    }
}

impl Status {
    /// The human-readable status, a few aligned lines.
    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let c = &self.counts;
        match (&self.campaign, &self.message_type) {
            (Some(name), Some(kind)) => writeln!(out, "campaign   {name} ({kind} message)")?,
            _ => writeln!(out, "campaign   not planned yet")?,
        }
        writeln!(out, "state      {}", self.state_file)?;
        if let (Some(at), Some(csv)) = (&self.planned_at, &self.csv_file) {
            writeln!(out, "planned    {at} from {csv}")?;
        }
        let csv_note = match self.csv_rows {
            Some(rows) if rows == self.total => format!(" = {rows} CSV rows"),
            Some(rows) => format!(" (the CSV had {rows} data rows at the last plan)"),
            None => String::new(),
        };
        writeln!(out, "rows       {}{csv_note}", self.total)?;
        for (state, n) in [
            (RecipientState::Sent, c.sent),
            (RecipientState::Failed, c.failed),
            (RecipientState::Uncertain, c.uncertain),
            (RecipientState::Pending, c.pending),
            (RecipientState::Sending, c.sending),
            (RecipientState::Invalid, c.invalid),
            (RecipientState::Duplicate, c.duplicate),
            (RecipientState::Suppressed, c.suppressed),
        ] {
            let why = if state == RecipientState::Suppressed && !self.suppressed_reasons.is_empty()
            {
                let list = self
                    .suppressed_reasons
                    .iter()
                    .map(|e| format!("{} {}", e.code, e.count))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(" ({list})")
            } else {
                String::new()
            };
            writeln!(out, "  {:<10} {n}{why}", state.as_str())?;
        }
        if !self.pending_by_zone.is_empty() {
            // "pending: 120 open now, 300 open at 2026-11-26 06:00 UTC (Asia/Tokyo)"
            let open: u64 = self
                .pending_by_zone
                .iter()
                .filter(|z| z.open_now)
                .map(|z| z.pending)
                .sum();
            let mut parts = vec![format!("{open} open now")];
            parts.extend(
                self.pending_by_zone
                    .iter()
                    .filter(|z| !z.open_now)
                    .map(|z| {
                        format!(
                            "{} open at {} ({})",
                            z.pending,
                            z.opens_at.format("%Y-%m-%d %H:%M UTC"),
                            z.timezone
                        )
                    }),
            );
            writeln!(out, "pending    {}", parts.join(", "))?;
        }
        match &self.running {
            Some(run) => {
                let span = match self.per_second_span_seconds {
                    Some(s) if s < THROUGHPUT_WINDOW.as_secs_f64() => {
                        format_duration(Duration::from_secs_f64(s))
                    }
                    _ => "minute".to_owned(),
                };
                let pace = match (self.per_second, self.eta_seconds) {
                    (Some(rate), Some(eta)) => format!(
                        "; {rate:.1} msg/s over the last {span}, about {} left for {} pending",
                        format_duration(Duration::from_secs(eta)),
                        c.pending
                    ),
                    (Some(rate), None) => format!("; {rate:.1} msg/s over the last {span}"),
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "running    yes: run #{} (pid {}) since {}{pace}",
                    run.id, run.pid, run.started_at
                )?;
            }
            None => writeln!(out, "running    no")?,
        }
        if !self.runners.is_empty() {
            let list: Vec<String> = self
                .runners
                .iter()
                .map(|r| format!("#{} pid {} on {}", r.id, r.pid, r.host))
                .collect();
            writeln!(
                out,
                "runners    {} live: {}",
                self.runners.len(),
                list.join(", ")
            )?;
        }
        if let Some(run) = &self.last_run {
            let end = match (&run.finished_at, &run.outcome) {
                (Some(at), outcome) => format!(
                    ", finished {at}: {} (sent {}, failed {}, uncertain {})",
                    outcome.as_deref().unwrap_or("no outcome recorded"),
                    run.sent,
                    run.failed,
                    run.uncertain
                ),
                (None, _) if self.last_run_died => ", never finished: its process is gone (killed or crashed); rows it was sending become uncertain at the next run".to_owned(),
                (None, _) => ", still sending".to_owned(),
            };
            writeln!(
                out,
                "last run   #{} started {}{end}",
                run.id, run.started_at
            )?;
        }
        if !self.errors.is_empty() {
            let list = self
                .errors
                .iter()
                .map(|e| format!("{} {}", e.code, e.count))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(out, "errors     {list}")?;
        }
        Ok(())
    }
}

/// The formats `report` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// A header and one row per recipient; cells a spreadsheet would run are neutralised.
    Csv,
    /// JSON Lines: one object per recipient per line, so the export streams
    /// and `jq`/`grep` read it line by line.
    Json,
}

/// The columns of a CSV export, in order; JSON objects use the same names.
pub const EXPORT_COLUMNS: [&str; 10] = [
    "row",
    "phone",
    "name",
    "state",
    "attempts",
    "message_id",
    "error_code",
    "error_details",
    "updated_at",
    "sent_at",
];

/// Parses `failed,uncertain,...`; an unknown name is an error listing the valid ones.
pub fn parse_state_filter(text: &str) -> Result<Vec<RecipientState>, ReportError> {
    let mut states = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(state) = RecipientState::parse(&name.to_ascii_lowercase()) else {
            let valid: Vec<_> = RecipientState::ALL.iter().map(|s| s.as_str()).collect();
            return Err(ReportError::UnknownState {
                name: name.to_owned(),
                valid: valid.join(", "),
            });
        };
        if !states.contains(&state) {
            states.push(state);
        }
    }
    Ok(states)
}

/// Writes one line per recipient in `states` (all when empty) to `out`;
/// returns how many recipients were written.
pub fn export(
    db: &dyn StateRead,
    states: &[RecipientState],
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<u64, ReportError> {
    let mut written = 0u64;
    let walked = match format {
        ExportFormat::Csv => {
            let mut csv = csv::Writer::from_writer(out);
            csv.write_record(EXPORT_COLUMNS)
                .map_err(|e| ReportError::Write(csv_io(e)))?;
            let walked = db.for_each_recipient(states, &mut |r| {
                csv.write_record(csv_cells(&r).iter().map(|c| c.as_bytes()))
                    .map_err(csv_io)?;
                written += 1;
                Ok(())
            });
            walked.and_then(|()| csv.flush().map_err(VisitError::Visitor))
        }
        ExportFormat::Json => {
            let walked = db.for_each_recipient(states, &mut |r| {
                serde_json::to_writer(&mut *out, &r)?;
                out.write_all(b"\n")?;
                written += 1;
                Ok(())
            });
            walked.and_then(|()| out.flush().map_err(VisitError::Visitor))
        }
    };
    match walked {
        Ok(()) => Ok(written),
        Err(VisitError::State(e)) => Err(ReportError::State(e)),
        Err(VisitError::Visitor(e)) => Err(ReportError::Write(e)),
    }
}

/// The I/O error inside a CSV writer's error, so that a closed pipe is still
/// recognised as one ([`ReportError::is_closed_pipe`]).
fn csv_io(e: csv::Error) -> std::io::Error {
    let is_io = matches!(e.kind(), csv::ErrorKind::Io(_));
    match e.into_kind() {
        csv::ErrorKind::Io(io) if is_io => io,
        other => std::io::Error::other(format!("{other:?}")),
    }
}

/// Why a report could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("writing the report: {0}")]
    Write(#[source] std::io::Error),
    #[error("unknown state '{name}' in --state-filter: use any of {valid}")]
    UnknownState { name: String, valid: String },
    #[error(
        "refusing to write the report to {output}: it would overwrite {what} {path}; choose another file"
    )]
    Protected {
        output: String,
        what: String,
        path: String,
    },
    #[error("cannot write the report to {path}: it is a directory; give a file name")]
    IsADirectory { path: String },
    #[error("cannot write the report to {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ReportError {
    /// Whether the report failed only because its reader went away (`report
    /// | head`): a normal end for a command line, not an error.
    pub fn is_closed_pipe(&self) -> bool {
        matches!(self, ReportError::Write(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

fn csv_cells(r: &RecipientRecord) -> [Cow<'_, str>; 10] {
    fn opt(v: &Option<String>) -> Cow<'_, str> {
        neutralise(v.as_deref().unwrap_or(""))
    }
    [
        Cow::Owned(r.row.to_string()),
        r.phone
            .as_deref()
            .map(csv_phone)
            .unwrap_or(Cow::Borrowed("")),
        opt(&r.name),
        Cow::Borrowed(r.state.as_str()),
        Cow::Owned(r.attempts.to_string()),
        opt(&r.message_id),
        opt(&r.error_code),
        opt(&r.error_details),
        opt(&r.updated_at),
        opt(&r.sent_at),
    ]
}

/// A phone as a CSV cell. An E.164 number (`+` and digits only) is left as
/// it is: a spreadsheet reads it as a number, never as a formula, and a `'`
/// in front would break every lookup by phone. Anything else (the raw cell
/// of an invalid row) is neutralised like any other text.
pub fn csv_phone(phone: &str) -> Cow<'_, str> {
    let e164 =
        phone.len() > 1 && phone.starts_with('+') && phone[1..].bytes().all(|b| b.is_ascii_digit());
    if e164 {
        Cow::Borrowed(phone)
    } else {
        neutralise(phone)
    }
}

/// A cell a spreadsheet would execute (it starts with `=`, `+`, `-`, `@`, a
/// tab or a carriage return) gets a `'` in front, which spreadsheets show as
/// text.
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    let risky = cell
        .chars()
        .next()
        .is_some_and(|c| matches!(c, '=' | '+' | '-' | '@' | '\t' | '\r'));
    if risky {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// Refuses an output path that is one of `protected` (`(what, path)`: the
/// state file and its companions, the campaign file, the CSV) however it is
/// spelled: the same file by device and inode when both exist, else the same
/// place once the folder's symlinks and `..` are resolved.
pub fn refuse_protected(
    output: &Path,
    protected: &[(String, std::path::PathBuf)],
) -> Result<(), ReportError> {
    for (what, path) in protected {
        if same_file(output, path) {
            return Err(ReportError::Protected {
                output: output.display().to_string(),
                what: what.clone(),
                path: path.display().to_string(),
            });
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            return ma.dev() == mb.dev() && ma.ino() == mb.ino();
        }
        #[cfg(not(unix))]
        {
            let _ = (ma, mb);
        }
    }
    match (resolved(a), resolved(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Where a path leads: the file itself when it exists, else its resolved
/// folder joined with its name.
fn resolved(path: &Path) -> Option<std::path::PathBuf> {
    if let Ok(real) = std::fs::canonicalize(path) {
        return Some(real);
    }
    let name = path.file_name()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(parent).ok()?.join(name))
}

/// Writes a file readable by its owner only (0600), whole or not at all:
/// `write` fills a temporary file in the same directory, which is renamed
/// over `path` only once it is complete and flushed to disk. The temporary
/// file is created before `write` runs, so an unwritable path fails first.
pub fn write_private_file<T, E>(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<ReportError>,
{
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".to_owned());
    let failed = |source| ReportError::File {
        path: path.display().to_string(),
        source,
    };
    // The rename at the end would fail on a directory: say so before any work.
    if path.is_dir() {
        return Err(ReportError::IsADirectory {
            path: path.display().to_string(),
        }
        .into());
    }
    // tempfile creates the file 0600 on Unix; the rename keeps that mode.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(failed)?;
    let mut out = std::io::BufWriter::new(tmp);
    // The caller's errors carry their own context (they may not be about the file).
    let value = write(&mut out)?;
    let tmp = out.into_inner().map_err(|e| failed(e.into_error()))?;
    tmp.as_file().sync_all().map_err(failed)?;
    // On failure the temporary file is removed when `persist`'s error drops it.
    tmp.persist(path).map_err(|e| failed(e.error))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_support::{planned_state, sendable};
    use crate::state::{Outcome, RowOutcome, StateDb, StateStore};

    /// A state with `n` pending rows and a run started by this process (so
    /// its pid is alive); returns the run's start as the state recorded it.
    fn running_state(n: u64) -> (StateDb, DateTime<Utc>) {
        let rows: Vec<_> = (1..=n).map(sendable).collect();
        let mut db = planned_state("pace", &rows);
        db.start_run().expect("start a run");
        let run = db.runs(1).expect("runs").remove(0);
        let started = DateTime::parse_from_rfc3339(&run.started_at)
            .expect("an RFC 3339 start")
            .with_timezone(&Utc);
        (db, started)
    }

    /// Claims `n` rows and records them sent, evenly spread over `over`
    /// from `from`.
    fn send(db: &mut StateDb, n: usize, from: DateTime<Utc>, over: chrono::Duration) {
        let claimed = db.claim(n).expect("claim");
        assert_eq!(claimed.len(), n);
        let outcomes: Vec<RowOutcome> = claimed
            .iter()
            .enumerate()
            .map(|(i, c)| RowOutcome {
                id: c.id,
                attempts: 1,
                at: from + over * i as i32 / n as i32,
                outcome: Outcome::Sent {
                    message_id: format!("m{}", c.row),
                },
            })
            .collect();
        db.record(&outcomes).expect("record");
    }

    #[test]
    fn a_young_run_is_paced_over_the_time_it_has_lasted() {
        // 3 s into a 22 msg/s run: 66 sent, 44 pending.
        let (mut db, started) = running_state(110);
        send(&mut db, 66, started, chrono::Duration::seconds(3));
        let now = started + chrono::Duration::seconds(3);
        let status = gather_status(&db, now).expect("status");
        assert!(status.running.is_some(), "the run of this process is alive");
        assert_eq!(status.counts.pending, 44);
        let rate = status.per_second.expect("a pace");
        assert!((rate - 22.0).abs() < 0.01, "{rate} msg/s");
        assert_eq!(status.per_second_span_seconds, Some(3.0));
        // 44 pending at 22 msg/s.
        assert_eq!(status.eta_seconds, Some(2));
        let mut text = Vec::new();
        status.write_text(&mut text).expect("text");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(
            text.contains("22.0 msg/s over the last 3s, about 2s left for 44 pending"),
            "{text}"
        );

        // A few milliseconds in, one message is not thousands per second.
        let (mut db, started) = running_state(10);
        send(&mut db, 1, started, chrono::Duration::zero());
        let now = started + chrono::Duration::milliseconds(5);
        let status = gather_status(&db, now).expect("status");
        assert_eq!(status.per_second, Some(1.0));
        assert_eq!(status.eta_seconds, Some(9));
    }

    #[test]
    fn an_old_run_is_paced_over_the_last_minute() {
        // 66 sent in the first 3 s, 90 in the last minute of a 5-minute run.
        let (mut db, started) = running_state(200);
        send(&mut db, 66, started, chrono::Duration::seconds(3));
        let now = started + chrono::Duration::minutes(5);
        send(
            &mut db,
            90,
            now - chrono::Duration::seconds(59),
            chrono::Duration::seconds(59),
        );
        let status = gather_status(&db, now).expect("status");
        assert_eq!(status.per_second, Some(1.5));
        assert_eq!(status.per_second_span_seconds, Some(60.0));
        // 44 pending at 1.5 msg/s.
        assert_eq!(status.eta_seconds, Some(30));
        let mut text = Vec::new();
        status.write_text(&mut text).expect("text");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("1.5 msg/s over the last minute"), "{text}");
    }

    #[test]
    fn protected_files_are_recognised_however_they_are_spelled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("c.state.db");
        std::fs::write(&state, b"x").expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let protected = vec![
            ("the state file".to_owned(), state.clone()),
            (
                "the state's log".to_owned(),
                dir.path().join("c.state.db-wal"),
            ),
        ];
        for bad in [
            state.clone(),
            dir.path().join("sub/../c.state.db"),
            dir.path().join("sub/../c.state.db-wal"),
        ] {
            let err = refuse_protected(&bad, &protected).expect_err("refused");
            assert!(err.to_string().contains("would overwrite"), "{err}");
        }
        refuse_protected(&dir.path().join("report.csv"), &protected).expect("allowed");
    }

    #[test]
    fn formula_cells_are_neutralised() {
        for cell in ["=cmd()", "+1+1", "-2", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(neutralise(cell), format!("'{cell}"));
        }
        for cell in ["Amani", "", "1+1", "a=b"] {
            assert_eq!(neutralise(cell), cell);
        }
    }

    #[test]
    fn e164_phones_stay_as_they_are_and_other_phones_are_neutralised() {
        assert_eq!(csv_phone("+254711000001"), "+254711000001");
        assert_eq!(csv_phone("+"), "'+");
        assert_eq!(csv_phone("+2547=1"), "'+2547=1");
        assert_eq!(csv_phone("-12"), "'-12");
        assert_eq!(csv_phone("0711 000 001"), "0711 000 001");
    }

    #[test]
    fn unknown_states_are_refused_naming_the_valid_ones() {
        assert_eq!(
            parse_state_filter("failed, uncertain,failed").expect("valid"),
            vec![RecipientState::Failed, RecipientState::Uncertain]
        );
        let err = parse_state_filter("failed,lost")
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("'lost'"), "{err}");
        assert!(err.contains("pending, sending, sent"), "{err}");
    }

    #[test]
    fn a_private_file_is_owner_only_and_a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.csv");
        write_private_file(&path, |w| w.write_all(b"a,b\n").map_err(ReportError::Write))
            .expect("written");
        assert_eq!(std::fs::read(&path).expect("read"), b"a,b\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = dir.path().join("other.csv");
        let result: Result<(), ReportError> = write_private_file(&other, |_| {
            Err(ReportError::Write(std::io::Error::other("disk on fire")))
        });
        assert!(result.is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.csv")]);
    }
}
