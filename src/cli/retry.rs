//! `convers8-campaign retry`: sends failed (optionally only some error
//! codes), uncertain or suppressed (say, only `frequency_cap`) rows again,
//! after a confirmation, exactly as `run` would — each checked again at its
//! claim, so an opted-out phone or one still over its cap stays suppressed.
//!
//! The rows are reset by the engine, under the run lock, at the moment
//! messages will really leave — the same path `run --resend-uncertain` takes
//! — so a retry refused for any reason (no key, outside the send window, the
//! daily limit, a lock held) changes nothing. Without a terminal it never
//! waits for an answer: it needs `--yes`.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::Context;

use super::common::{ApiArgs, CampaignArgs, rerun_command};
use super::exit;
use super::output::{out, plural, say};
use super::run::{RunSummary, SummaryArgs, ThisRun};
use convers8_campaign::engine::plan::{self, InputCheck};
use convers8_campaign::state::RetrySelection;

const EXAMPLES: &str = concat!(
    "\
Examples:
  # Resend rows that failed with a 5xx after every attempt
  convers8-campaign retry campaigns/text/campaign.toml --failed \\
      --codes internal_error

  # From cron or a script (no terminal to confirm on), a JSON summary
  convers8-campaign retry campaigns/text/campaign.toml --failed --yes --json

  # Rows whose send may or may not have arrived: they may get it twice
  convers8-campaign retry campaigns/text/campaign.toml --uncertain

  # Rows held back by the [audience] cap, now that the period has passed
  convers8-campaign retry campaigns/text/campaign.toml --suppressed \\
      --codes frequency_cap

Without a terminal, retry needs --yes (it never waits for an answer); it
exits 1 when there is no state, no key, or the confirmation is declined.

",
    exit::table!()
);

/// Send failed, uncertain or suppressed rows again, like `run`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["failed", "uncertain", "suppressed"])))]
pub struct RetryArgs {
    #[command(flatten)]
    pub campaign: CampaignArgs,

    #[command(flatten)]
    pub api: ApiArgs,

    #[command(flatten)]
    pub summary: SummaryArgs,

    /// Retry rows that failed (a permanent error, or attempts spent).
    #[arg(long)]
    pub failed: bool,

    /// Only rows with one of these codes (failed: internal_error,...; suppressed: frequency_cap).
    // `conflicts_with` rather than `requires = "failed"`: a flag's default
    // `false` satisfies `requires`, and the group already demands one of the two.
    #[arg(
        long,
        value_name = "CODE,...",
        value_delimiter = ',',
        conflicts_with = "uncertain"
    )]
    pub codes: Vec<String>,

    /// Retry rows whose send may have arrived (timeouts, crashes): they may get it twice.
    #[arg(long)]
    pub uncertain: bool,

    /// Reconsider suppressed rows (checked again when claimed: opt-outs, caps).
    #[arg(long)]
    pub suppressed: bool,

    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

pub async fn run(args: RetryArgs) -> anyhow::Result<ExitCode> {
    let result = retry(&args).await;
    if args.summary.json
        && let Err(err) = &result
    {
        super::run::print_error_summary(&args.campaign.state_shown(false), err);
    }
    result
}

async fn retry(args: &RetryArgs) -> anyhow::Result<ExitCode> {
    let campaign = args.campaign.load()?;
    let state_path = args.campaign.location(Some(&campaign), false)?;
    let codes: Vec<String> = args
        .codes
        .iter()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect();
    let selection = if args.uncertain {
        RetrySelection::Uncertain
    } else if args.suppressed {
        RetrySelection::Suppressed { codes }
    } else {
        RetrySelection::Failed { codes }
    };
    let what = match &selection {
        RetrySelection::Uncertain => "uncertain".to_owned(),
        RetrySelection::Failed { codes } if codes.is_empty() => "failed".to_owned(),
        RetrySelection::Failed { codes } => format!("failed ({})", codes.join(", ")),
        RetrySelection::Suppressed { codes } if codes.is_empty() => "suppressed".to_owned(),
        RetrySelection::Suppressed { codes } => format!("suppressed ({})", codes.join(", ")),
    };

    let db = args.campaign.open_state(false)?;
    match plan::check_inputs(db.as_ref(), &campaign)? {
        InputCheck::Unchanged => {}
        InputCheck::NotPlanned => anyhow::bail!(
            "state file {} holds no plan: run the campaign first",
            state_path
        ),
        InputCheck::CsvChanged { .. } | InputCheck::MessageChanged { .. } => anyhow::bail!(
            "{} or its CSV changed since it was planned, so nothing can be sent from {}: `{}` explains what to do",
            args.campaign.campaign.display(),
            state_path,
            rerun_command(
                "run",
                &args.campaign.campaign,
                args.campaign.state.as_deref()
            )
        ),
    }
    let n = db.count_for_retry(&selection)?;
    if n == 0 {
        let message = format!("no {what} rows to retry in {}", state_path);
        if args.summary.json {
            let counts = db.counts()?;
            let summary = RunSummary {
                campaign: campaign.name.clone(),
                end: "nothing_to_do",
                message,
                exit_code: 0,
                counts: counts.into(),
                this_run: ThisRun::default(),
                window_opens_at: None,
                next_daily_slot: None,
                state: state_path.to_string(),
                unfinished: counts.pending > 0,
                resume: rerun_command(
                    "run",
                    &args.campaign.campaign,
                    args.campaign.state.as_deref(),
                ),
            };
            out!("{}", serde_json::to_string(&summary)?);
        } else {
            out!("{message}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    drop(db);
    // Checked before asking, so a missing key fails at once.
    args.api
        .require_client_config(campaign.api.base_url.as_deref(), campaign.send.timeout)?;

    say!(
        "{} be sent again{}",
        if n == 1 {
            format!("1 {what} row will")
        } else {
            format!("{n} {what} rows will")
        },
        if matches!(selection, RetrySelection::Suppressed { .. }) {
            " (each checked again: opted-out phones and those still over a cap stay suppressed)"
        } else {
            ""
        }
    );
    if matches!(selection, RetrySelection::Uncertain) {
        say!(
            "warning: these recipients may already have the message: the API has no idempotency key, so they may receive it twice"
        );
    }
    if !args.yes {
        confirm(n)?;
    }
    super::run::execute(
        &campaign,
        &args.campaign,
        &args.api,
        false,
        &args.summary,
        |options| {
            options.reset = Some(selection);
        },
    )
    .await
}

/// Asks on the terminal; without one, refuses at once (cron-safe).
fn confirm(n: u64) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "stdin is not a terminal, so retry cannot ask for confirmation: add --yes to send {} again",
            plural(n, "row")
        );
    }
    super::stderr::write(format!("Send {} again now? [y/N] ", plural(n, "row"),).into_bytes());
    // The question must be on the screen before waiting for the answer.
    super::stderr::flush(std::time::Duration::from_secs(5));
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer from the terminal")?;
    if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        anyhow::bail!("cancelled: no row was changed");
    }
    Ok(())
}
