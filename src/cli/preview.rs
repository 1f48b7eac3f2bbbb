//! `convers8-campaign preview`: the exact JSON bodies a run would send, and
//! to whom, without the network.
//!
//! When the campaign has a state file the bodies come from it (they are what
//! a run will really send); otherwise the campaign is planned into a scratch
//! state that is thrown away. It must write nothing beside the campaign.
//!
//! `--json` prints JSON Lines and nothing else on stdout: one object per
//! recipient, `{"row", "phone", "state", "endpoint", "body"}` with the body
//! as a JSON value; notes go to stderr.

use std::io::Write;
use std::process::ExitCode;

use super::common::CampaignArgs;
use super::output::{plural, say};
use convers8_campaign::api::model::MessageKind;
use convers8_campaign::engine::plan::ScratchPlan;
use convers8_campaign::engine::plan::{self, InputCheck};
use convers8_campaign::state::{self, RecipientState, StateRead};

const EXAMPLES: &str = "\
Examples:
  # The first three messages a run would send
  convers8-campaign preview campaigns/text/campaign.toml

  # Ten of them, or the one for CSV data row 42 (or why it will not be sent)
  convers8-campaign preview campaigns/text/campaign.toml -n 10
  convers8-campaign preview campaigns/text/campaign.toml --row 42

  # For scripts: one JSON object per recipient (row, phone, body)
  convers8-campaign preview campaigns/text/campaign.toml -n 100 --json \\
      | jq -r '.body.content.text'

Exit codes: 0 shown, 1 error (bad campaign file or CSV, no such row), 2 usage.";

/// Print the exact JSON bodies that would be sent to the first recipients.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct PreviewArgs {
    #[command(flatten)]
    pub campaign: CampaignArgs,

    /// How many recipients to show.
    #[arg(short = 'n', value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub count: u64,

    /// Show this CSV data row (1-based) instead, or why it will not be sent.
    #[arg(long, value_name = "R", conflicts_with = "count",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub row: Option<u64>,

    /// Print JSON Lines only: one object per recipient, {row, phone, state,
    /// endpoint, body} with the body as JSON (notes go to stderr).
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: PreviewArgs) -> anyhow::Result<ExitCode> {
    let campaign = args.campaign.load()?;
    let location = args.campaign.location(Some(&campaign), false)?;
    // A campaign in a database is previewed from the database once planned.
    let planned = match &location {
        state::StateLocation::File(path) => path.exists(),
        state::StateLocation::Postgres(_) => match state::open_for_reading(&location) {
            Ok(_) => true,
            Err(state::StateError::NoCampaign { .. }) => false,
            Err(e) => return Err(e.into()),
        },
    };
    // Held so a scratch plan's directory lives until the preview is printed.
    let scratch;
    let (db, kind, source, changed) = if planned {
        let db = state::open_for_reading(&location)?;
        let changed = !matches!(
            plan::check_inputs(db.as_ref(), &campaign)?,
            InputCheck::Unchanged
        );
        let kind = db
            .plan_info()?
            .and_then(|p| MessageKind::parse(&p.message_type))
            .unwrap_or(campaign.message.kind);
        let what = if location.file().is_some() {
            "state file"
        } else {
            "state"
        };
        let source = format!("previewing from the {what} {location} (what a run will really send)");
        (db, kind, source, changed)
    } else {
        let suppressions = super::common::suppressions(&campaign, &location)?;
        scratch = ScratchPlan::screened(&campaign, &suppressions, |_| {})?;
        let source = format!(
            "previewing from a fresh plan of {} (no state file yet; nothing is written)",
            campaign.recipients.csv.display()
        );
        (
            Box::new(scratch.db) as Box<dyn StateRead>,
            campaign.message.kind,
            source,
            false,
        )
    };
    // Built first, so an error (no such row) is the only line printed.
    let mut text = Vec::new();
    let mut notes = Vec::new();
    match (args.row, args.json) {
        (Some(row), false) => preview_row(db.as_ref(), kind, row, &mut text)?,
        (None, false) => preview_first(db.as_ref(), kind, args.count, &mut text)?,
        (Some(row), true) => json_row(db.as_ref(), kind, row, &mut text)?,
        (None, true) => json_first(db.as_ref(), kind, args.count, &mut text, &mut notes)?,
    }
    say!("{source}");
    for note in notes {
        say!("{note}");
    }
    if changed {
        say!(
            "warning: the campaign or its CSV changed since it was planned: `run` will refuse until that is resolved"
        );
    }
    // A closed stdout (piped into `head`) is not worth an error.
    let _ = std::io::stdout().lock().write_all(&text);
    Ok(ExitCode::SUCCESS)
}

fn preview_first(
    db: &dyn StateRead,
    kind: MessageKind,
    count: u64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let rows = db.planned_bodies(RecipientState::Pending, count as usize)?;
    if rows.is_empty() {
        let _ = writeln!(out, "{}", nothing_left(db)?);
        return Ok(());
    }
    for (i, (row, phone, body)) in rows.iter().enumerate() {
        if i > 0 {
            let _ = writeln!(out);
        }
        write_body(out, kind, *row, phone, body, "")?;
    }
    Ok(())
}

/// Why `preview` shows no body: every row has its final state.
fn nothing_left(db: &dyn StateRead) -> anyhow::Result<String> {
    let c = db.counts()?;
    Ok(format!(
        "nothing left to send: {} = sent {} + failed {} + uncertain {} + invalid {} + duplicate {} + suppressed {} (`--row R` shows a row's body)",
        plural(c.total(), "row"),
        c.sent,
        c.failed,
        c.uncertain,
        c.invalid,
        c.duplicate,
        c.suppressed
    ))
}

/// `row R will not be sent: invalid_phone: …` — the code says what the
/// state would repeat (`duplicate`'s code is `duplicate`).
fn why_not(record: &convers8_campaign::state::RecipientRecord) -> String {
    format!(
        "{}: {}",
        record
            .error_code
            .as_deref()
            .unwrap_or(record.state.as_str()),
        record.error_details.as_deref().unwrap_or("no details")
    )
}

fn preview_row(
    db: &dyn StateRead,
    kind: MessageKind,
    row: u64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (record, body) = find_row(db, row)?;
    let reason = || why_not(&record);
    let note = match record.state {
        RecipientState::Pending => String::new(),
        RecipientState::Sending => " — being sent now".to_owned(),
        RecipientState::Sent => format!(
            " — already sent{}; the body it was sent with",
            record
                .message_id
                .as_deref()
                .map(|id| format!(" (message id {id})"))
                .unwrap_or_default()
        ),
        RecipientState::Failed => format!(
            " — failed ({}); `retry --failed` would send this body",
            reason()
        ),
        RecipientState::Uncertain => format!(
            " — uncertain ({}); `retry --uncertain` would send this body again",
            reason()
        ),
        RecipientState::Invalid | RecipientState::Duplicate | RecipientState::Suppressed => {
            let _ = writeln!(out, "row {row} will not be sent: {}", reason());
            return Ok(());
        }
    };
    let phone = record.phone.as_deref().unwrap_or("");
    match body {
        Some(body) => write_body(out, kind, row, phone, &body, &note),
        None => {
            let _ = writeln!(out, "row {row} ({}) has no planned body", record.state);
            Ok(())
        }
    }
}

/// `row R → +E164 (POST /whatsapp/message/<kind>)` and the body, pretty.
fn write_body(
    out: &mut dyn Write,
    kind: MessageKind,
    row: u64,
    phone: &str,
    body: &str,
    note: &str,
) -> anyhow::Result<()> {
    // The planner stored the body as compact JSON from a serde_json value, so
    // parsing it back keeps its keys in the same order: only whitespace changes.
    let value: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| anyhow::anyhow!("row {row}: the planned body is not JSON ({e})"))?;
    let _ = writeln!(out, "row {row} → {phone} (POST {}){note}", kind.path());
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

/// The row's record and planned body, or an error naming the CSV's size.
fn find_row(
    db: &dyn StateRead,
    row: u64,
) -> anyhow::Result<(convers8_campaign::state::RecipientRecord, Option<String>)> {
    match db.recipient_at_row(row)? {
        Some(found) => Ok(found),
        None => {
            let rows = db.plan_info()?.map_or(0, |p| p.csv_rows);
            anyhow::bail!(
                "row {row} is not in the CSV (it has {}): rows count from 1, after the header",
                plural(rows, "data row")
            )
        }
    }
}

/// One line of `preview --json`, fields in this order.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    row: u64,
    phone: Option<&'a str>,
    state: &'a str,
    /// The API path the body is posted to.
    endpoint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_details: Option<&'a str>,
    /// The request body as JSON; null for a row that will not be sent.
    body: serde_json::Value,
}

/// One JSON line: the recipient and its body as JSON, with what the state
/// says about it when it is not simply waiting to be sent.
fn json_line(
    out: &mut dyn Write,
    kind: MessageKind,
    record: Option<&convers8_campaign::state::RecipientRecord>,
    row: u64,
    phone: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<()> {
    let body = match body {
        Some(body) => serde_json::from_str::<serde_json::Value>(body)
            .map_err(|e| anyhow::anyhow!("row {row}: the planned body is not JSON ({e})"))?,
        None => serde_json::Value::Null,
    };
    let line = JsonLine {
        row,
        phone,
        state: record.map_or(RecipientState::Pending, |r| r.state).as_str(),
        endpoint: kind.path(),
        message_id: record.and_then(|r| r.message_id.as_deref()),
        error_code: record.and_then(|r| r.error_code.as_deref()),
        error_details: record.and_then(|r| r.error_details.as_deref()),
        body,
    };
    let _ = writeln!(out, "{}", serde_json::to_string(&line)?);
    Ok(())
}

fn json_first(
    db: &dyn StateRead,
    kind: MessageKind,
    count: u64,
    out: &mut dyn Write,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let rows = db.planned_bodies(RecipientState::Pending, count as usize)?;
    if rows.is_empty() {
        notes.push(nothing_left(db)?);
    }
    for (row, phone, body) in &rows {
        json_line(out, kind, None, *row, Some(phone), Some(body))?;
    }
    Ok(())
}

/// `--row R --json`: the row whatever its state; `body` is null for a row
/// that will not be sent, with `error_code` and `error_details` saying why.
fn json_row(
    db: &dyn StateRead,
    kind: MessageKind,
    row: u64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (record, body) = find_row(db, row)?;
    let body = match record.state {
        RecipientState::Invalid | RecipientState::Duplicate => None,
        _ => body,
    };
    json_line(
        out,
        kind,
        Some(&record),
        row,
        record.phone.as_deref(),
        body.as_deref(),
    )
}
