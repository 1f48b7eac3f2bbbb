//! `convers8-campaign report`: one line per recipient, as CSV or JSON Lines,
//! or one self-contained HTML page of aggregates, to stdout or to an
//! owner-only file.
//!
//! Read-only on the state (it works while a run is sending) and thin: the
//! export, the spreadsheet-safe cells, the HTML page and the all-or-nothing
//! file write live in [`convers8_campaign::report`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::common::CampaignArgs;
use super::output::{plural, say};
use convers8_campaign::report::{self, ExportFormat, ReportError};
use convers8_campaign::state::{RecipientState, StateRead};

const EXAMPLES: &str = "\
Examples:
  # Everything, as CSV, into a file readable by you only
  convers8-campaign report campaigns/text/campaign.toml -o results.csv

  # What needs attention, as JSON Lines, into jq (-o - is stdout too)
  convers8-campaign report campaigns/text/campaign.toml \\
      --format json --state-filter failed,uncertain | jq -r .phone

  # A --sandbox rehearsal's rows (its state is <stem>.sandbox.state.db)
  convers8-campaign report campaigns/text/campaign.toml --sandbox -o -

  # One page for a campaign manager (counts, sends over time, errors, runs)
  convers8-campaign report campaigns/text/campaign.toml \\
      --format html -o report.html

Columns: row, phone, name, state, attempts, message_id, error_code,
error_details, updated_at, sent_at. CSV cells starting with = + - @, a tab or a
carriage return get a ' in front so a spreadsheet shows them as text; phones in
E.164 form (+ and digits) are written as they are. --format json writes one
JSON object per line (JSON Lines). --format html writes one self-contained
page (inline CSS and SVG, no script, nothing fetched) of aggregates only: it
lists no recipient, so it can be mailed.

Exit codes: 0 written, 1 error (no state file, unknown state, --state-filter
with html, unwritable file), 2 usage.";

/// Export one line per recipient (row, phone, name, state, attempts, ids, errors, times), or an HTML page of aggregates.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ReportArgs {
    #[command(flatten)]
    pub campaign: CampaignArgs,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    pub format: Format,

    /// Only these states, comma-separated (pending, sending, sent, failed, uncertain, invalid, duplicate); not with html.
    #[arg(long, value_name = "STATES")]
    pub state_filter: Option<String>,

    /// Write to this file (created owner-only, replaced whole); - or no -o: stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Report on the `run --sandbox` rehearsal: its state, <stem>.sandbox.state.db.
    #[arg(long)]
    pub sandbox: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Csv,
    /// JSON Lines: one object per recipient per line.
    Json,
    /// One self-contained HTML page: counts, sends over time, attempts, errors, runs; no recipients.
    Html,
}

pub async fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let states = match &args.state_filter {
        Some(text) => report::parse_state_filter(text)?,
        None => Vec::new(),
    };
    if matches!(args.format, Format::Html) && !states.is_empty() {
        anyhow::bail!(
            "--state-filter does not apply to --format html: the page counts every state; leave the filter out"
        );
    }
    let sandbox = args.sandbox;
    // `-o -` is stdout, as no -o is.
    let output = args.output.as_deref().filter(|p| *p != Path::new("-"));
    match output {
        Some(path) => {
            report::refuse_protected(path, &protected_files(&args.campaign, sandbox))?;
            // The state is opened inside, after the file's directory proved
            // writable: a bad path then fails before anything is read.
            let n = report::write_private_file(path, |out| {
                let db = args.campaign.open_state(sandbox)?;
                // The files the plan was made from, whatever the campaign says now.
                if let Some(plan) = db.plan_info()? {
                    report::refuse_protected(
                        path,
                        &[
                            (
                                "the campaign's CSV".to_owned(),
                                PathBuf::from(plan.csv_file),
                            ),
                            (
                                "the campaign file".to_owned(),
                                PathBuf::from(plan.campaign_file),
                            ),
                        ],
                    )?;
                }
                write_report(db.as_ref(), &states, args.format, out)
                    .with_context(|| format!("cannot write the report to {}", path.display()))
            })?;
            match args.format {
                Format::Html => say!(
                    "wrote the HTML report on {} to {}",
                    plural(n, "recipient"),
                    path.display()
                ),
                Format::Csv | Format::Json => {
                    say!("wrote {} to {}", plural(n, "recipient"), path.display())
                }
            }
        }
        None => {
            let db = args.campaign.open_state(sandbox)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if let Err(err) = write_report(db.as_ref(), &states, args.format, &mut out) {
                // A closed pipe (`report | head`) is a normal end, not an error.
                if !err.is_closed_pipe() {
                    return Err(err.into());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the report in `format`; returns how many recipients it covers.
fn write_report(
    db: &dyn StateRead,
    states: &[RecipientState],
    format: Format,
    out: &mut dyn std::io::Write,
) -> Result<u64, ReportError> {
    match format {
        Format::Csv => report::export(db, states, ExportFormat::Csv, out),
        Format::Json => report::export(db, states, ExportFormat::Json, out),
        Format::Html => {
            let page = report::html::gather(db, chrono::Utc::now())?;
            page.write_html(out)?;
            Ok(page.counts.total())
        }
    }
}

/// The files a report must never replace, found without opening the state:
/// the state and SQLite's files beside it (and the lock file older versions
/// kept), the campaign file and its CSV. (The files the plan was made from
/// are checked once the state is open.)
fn protected_files(args: &CampaignArgs, sandbox: bool) -> Vec<(String, PathBuf)> {
    let mut files = vec![("the campaign file".to_owned(), args.campaign.clone())];
    let mut bases = Vec::new();
    // A state in a database has no files here to protect.
    if let Some(state) = args.state_path_for(sandbox) {
        files.push(("the state file".to_owned(), state.clone()));
        if let Ok(real) = std::fs::canonicalize(&state) {
            bases.push(real);
        }
        bases.push(state);
    }
    for base in bases {
        for suffix in convers8_campaign::state::lock::COMPANION_SUFFIXES
            .iter()
            .chain(&[".lock"])
        {
            files.push((
                "a file of the state".to_owned(),
                convers8_campaign::state::lock::with_suffix(&base, suffix),
            ));
        }
    }
    if let Ok(campaign) = args.load() {
        files.push(("the campaign's CSV".to_owned(), campaign.recipients.csv));
    }
    files
}
