//! `convers8-campaign status`: where a campaign stands — counts per state,
//! the run in progress with its pace and ETA, errors, when it ran.
//!
//! Read-only: it opens the state file read-only and never takes the run lock,
//! so it works while another process is sending. A missing state file is an
//! error, and nothing is created. The gathering and the wording live in
//! [`convers8_campaign::report`].

use std::io::Write;
use std::process::ExitCode;

use super::common::CampaignArgs;
use convers8_campaign::report;

const EXAMPLES: &str = "\
Examples:
  convers8-campaign status campaigns/text/campaign.toml

  # Every 10 seconds while a run is sending (another terminal, or cron)
  watch -n 10 convers8-campaign status campaigns/text/campaign.toml

  # For scripts
  convers8-campaign status campaigns/text/campaign.toml --json | jq .counts

  # A --sandbox rehearsal (its state is <stem>.sandbox.state.db)
  convers8-campaign status campaigns/text/campaign.toml --sandbox

Exit codes: 0 shown, 1 error (no state file yet: run the campaign first),
2 usage.";

/// Show counts per state, the run in progress (pace, ETA), errors and run times.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct StatusArgs {
    #[command(flatten)]
    pub campaign: CampaignArgs,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// Show the `run --sandbox` rehearsal: its state, <stem>.sandbox.state.db.
    #[arg(long)]
    pub sandbox: bool,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let db = args.campaign.open_state(args.sandbox)?;
    let now = chrono::Utc::now();
    let mut status = report::gather_status(db.as_ref(), now)?;
    // The window lives in the campaign file, not the state: a campaign file
    // that no longer loads only costs this breakdown, not the status.
    if let Ok(campaign) = args.campaign.load()
        && let Some(window) = campaign.send.window.filter(|w| w.per_recipient)
    {
        status.pending_by_zone = report::pending_by_zone(db.as_ref(), &window, now)?;
    }
    let mut out = std::io::stdout().lock();
    // A closed stdout (piped into `head`) is not worth an error.
    let _ = if args.json {
        serde_json::to_writer_pretty(&mut out, &status)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        status.write_text(&mut out)
    };
    Ok(ExitCode::SUCCESS)
}
