//! `convers8-campaign preview`: the exact JSON bodies a run would send, and
//! to whom, without the network.
//!
//! When the campaign has a state file the bodies come from it (they are what
//! a run will really send); otherwise the campaign is planned into a scratch
//! state that is thrown away. It must write nothing beside the campaign.

use std::io::Write;
use std::process::ExitCode;

use super::common::CampaignArgs;
use super::output::say;
use convers8_campaign::api::model::MessageKind;
use convers8_campaign::plan::ScratchPlan;
use convers8_campaign::plan::{self, InputCheck};
use convers8_campaign::state::{RecipientState, StateDb};

const EXAMPLES: &str = "\
Examples:
  # The first three messages a run would send
  convers8-campaign preview campaigns/text/campaign.toml

  # Ten of them, or the one for CSV data row 42 (or why it will not be sent)
  convers8-campaign preview campaigns/text/campaign.toml -n 10
  convers8-campaign preview campaigns/text/campaign.toml --row 42

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
}

pub async fn run(args: PreviewArgs) -> anyhow::Result<ExitCode> {
    let campaign = args.campaign.load()?;
    let state_path = args.campaign.state_path();
    // Held so a scratch plan's directory lives until the preview is printed.
    let scratch;
    let (db, kind, source, changed) = if state_path.exists() {
        let db = StateDb::open_read_only(&state_path)?;
        let changed = !matches!(plan::check_inputs(&db, &campaign)?, InputCheck::Unchanged);
        let kind = db
            .plan_info()?
            .and_then(|p| MessageKind::parse(&p.message_type))
            .unwrap_or(campaign.message.kind);
        let source = format!(
            "previewing from the state file {} (what a run will really send)",
            state_path.display()
        );
        (db, kind, source, changed)
    } else {
        scratch = ScratchPlan::new(&campaign, |_| {})?;
        let source = format!(
            "previewing from a fresh plan of {} (no state file yet; nothing is written)",
            campaign.recipients.csv.display()
        );
        (scratch.db, campaign.message.kind, source, false)
    };
    // Built first, so an error (no such row) is the only line printed.
    let mut text = Vec::new();
    match args.row {
        Some(row) => preview_row(&db, kind, row, &mut text)?,
        None => preview_first(&db, kind, args.count, &mut text)?,
    }
    say!("{source}");
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
    db: &StateDb,
    kind: MessageKind,
    count: u64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let rows = db.planned_bodies(RecipientState::Pending, count as usize)?;
    if rows.is_empty() {
        let c = db.counts()?;
        let _ = writeln!(
            out,
            "nothing left to send: {} rows = sent {} + failed {} + uncertain {} + invalid {} + duplicate {} (`--row R` shows a row's body)",
            c.total(),
            c.sent,
            c.failed,
            c.uncertain,
            c.invalid,
            c.duplicate
        );
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

fn preview_row(
    db: &StateDb,
    kind: MessageKind,
    row: u64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let Some((record, body)) = db.recipient_at_row(row)? else {
        let rows = db.plan_info()?.map_or(0, |p| p.csv_rows);
        anyhow::bail!(
            "row {row} is not in the CSV (it has {rows} data rows): rows count from 1, after the header"
        );
    };
    let reason = || {
        format!(
            "{}: {}",
            record
                .error_code
                .as_deref()
                .unwrap_or(record.state.as_str()),
            record.error_details.as_deref().unwrap_or("no details")
        )
    };
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
        RecipientState::Invalid | RecipientState::Duplicate => {
            let _ = writeln!(
                out,
                "row {row} will not be sent: {} {}",
                record.state,
                reason()
            );
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
