//! `convers8-campaign run`: plan if needed, then send, then say what happened
//! and how to continue. Maps how the run ended to the documented exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::common::{ApiArgs, CampaignArgs, rerun_command};
use super::exit;
use super::output::say;
use super::progress;
use super::signals;
use convers8_campaign::campaign::Campaign;
use convers8_campaign::engine::{self, RunEnd, RunOptions, RunReport, Stop, StopReason};
use convers8_campaign::sandbox::{Sandbox, SandboxConfig};

const EXAMPLES: &str = "\
Examples:
  # Rehearse against a local sandbox (no account, no key)
  convers8-campaign run campaigns/text/campaign.toml --sandbox

  # Plan and render everything, send nothing
  convers8-campaign run campaigns/text/campaign.toml --dry-run

  # A canary of 10 messages, then the rest (a rerun continues where it stopped)
  CONVERS8_API_KEY=... convers8-campaign run campaigns/text/campaign.toml --limit 10
  CONVERS8_API_KEY=... convers8-campaign run campaigns/text/campaign.toml

Exit codes: 0 done or nothing left to do, 1 error (bad input, key rejected, breaker),
2 usage, 75 try later (another run holds the lock, outside the send window,
daily limit reached), 130 interrupted.";

/// Send the campaign: plan it on the first run, then send every pending row.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct RunArgs {
    #[command(flatten)]
    pub campaign: CampaignArgs,

    #[command(flatten)]
    pub api: ApiArgs,

    /// Plan and render every row into the state, then stop before the network.
    #[arg(long)]
    pub dry_run: bool,

    /// Send at most N more messages, then stop (a rerun continues).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,

    /// Requests in flight [default: [send] concurrency].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: Option<u64>,

    /// Messages per second for the whole run [default: [send] rate_per_second].
    #[arg(long, value_name = "RATE", value_parser = positive_rate)]
    pub rate: Option<f64>,

    /// Attempts per recipient for retryable failures [default: [send] max_attempts].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: Option<u32>,

    /// Put `uncertain` rows back to pending and send them (they may get the message twice).
    #[arg(long)]
    pub resend_uncertain: bool,

    /// The CSV changed: plan rows whose phone is not in the state yet, leave the rest.
    #[arg(long)]
    pub add_new_recipients: bool,

    /// Stop gracefully after this long (e.g. 50m), so a cron slot never overlaps the next.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_runtime: Option<Duration>,

    /// Outside the send window, wait for it to open instead of exiting 75.
    #[arg(long)]
    pub wait: bool,

    /// Send to a local sandbox started for this run instead of the API (no key needed).
    /// Its state file is <stem>.sandbox.state.db, apart from real sends.
    #[arg(long, conflicts_with_all = ["base_url", "api_key_file"])]
    pub sandbox: bool,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a positive number of messages per second"
        )),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration ({e}); write e.g. 90s, 50m or 2h"))
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let campaign = args.campaign.load()?;
    execute(
        &campaign,
        &args.campaign,
        &args.api,
        args.sandbox,
        |options| {
            if let Some(c) = args.concurrency {
                options.concurrency = c as usize;
                options.claim_batch = engine::default_claim_batch(options.concurrency);
            }
            if args.rate.is_some() {
                options.rate_per_second = args.rate;
            }
            if let Some(m) = args.max_attempts {
                options.max_attempts = m;
            }
            options.limit = args.limit;
            options.dry_run = args.dry_run;
            if args.resend_uncertain {
                options.reset = Some(convers8_campaign::state::RetrySelection::Uncertain);
            }
            options.add_new_recipients = args.add_new_recipients;
            options.max_runtime = args.max_runtime;
            options.wait_for_window = args.wait;
        },
    )
    .await
}

/// Runs the engine the way `run` does — key or sandbox, signals, progress
/// bar, the closing report and its exit code — with `configure` applying the
/// caller's flags to the campaign's options. Shared with `retry`, so a retry
/// behaves exactly like a run.
pub(super) async fn execute(
    campaign: &Campaign,
    campaign_args: &CampaignArgs,
    api_args: &ApiArgs,
    use_sandbox: bool,
    configure: impl FnOnce(&mut RunOptions),
) -> anyhow::Result<ExitCode> {
    let mut state_path = campaign_args.state_path();
    let mut sandbox = None;
    let api = if use_sandbox {
        if campaign_args.state.is_none() {
            state_path = sandbox_state_path(&state_path);
        }
        let key = format!("sandbox-{:016x}", rand::random::<u64>());
        let config = SandboxConfig {
            api_key: key.clone(),
            ..SandboxConfig::default()
        };
        let server = Sandbox::start(config, "127.0.0.1:0".parse()?)
            .await
            .context("cannot start the local sandbox")?;
        say!(
            "sending to a local sandbox at {} (nothing leaves this machine)",
            server.base_url()
        );
        let mut client = convers8_campaign::api::ClientConfig::new(
            server.base_url(),
            convers8_campaign::api::ApiKey::new(key, "the sandbox")?,
        );
        client.timeout = campaign.send.timeout;
        sandbox = Some(server);
        Some(client)
    } else {
        api_args.warn_if_campaign_redirects(campaign);
        api_args.client_config(campaign.api.base_url.as_deref(), campaign.send.timeout)?
    };

    let mut options = RunOptions::from_campaign(campaign, state_path.clone(), api);
    configure(&mut options);

    let progress = progress::for_stderr();
    let stop = Stop::new();
    let signals = signals::stop_on_signals(
        stop.clone(),
        "letting requests in flight finish and recording them",
    );
    let result = engine::run(campaign, &options, progress.as_ref(), stop).await;
    if let Some(server) = sandbox {
        server.shutdown().await;
    }
    // Listening until the report is out: a later Ctrl-C still quits at once.
    drop(signals);
    let report = result?;
    let resume = format!(
        "{}{}",
        rerun_command(
            "run",
            &campaign_args.campaign,
            campaign_args.state.as_deref()
        ),
        if use_sandbox { " --sandbox" } else { "" }
    );
    print_report(&campaign.name, &report, &resume);
    Ok(exit_code(&report.end))
}

/// Rehearsals keep their own state, so a real run never mistakes them for sends.
fn sandbox_state_path(default: &std::path::Path) -> PathBuf {
    let name = default
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .replace(".state.db", ".sandbox.state.db")
        })
        .unwrap_or_else(|| "campaign.sandbox.state.db".to_owned());
    default.with_file_name(name)
}

pub fn exit_code(end: &RunEnd) -> ExitCode {
    match end {
        RunEnd::Completed
        | RunEnd::NothingToDo
        | RunEnd::DryRun
        | RunEnd::LimitReached
        | RunEnd::Stopped(StopReason::MaxRuntime)
        | RunEnd::Stopped(StopReason::WindowClosed) => ExitCode::SUCCESS,
        RunEnd::OutsideWindow { .. } | RunEnd::DailyLimitReached { .. } => {
            ExitCode::from(exit::TRY_LATER)
        }
        RunEnd::Stopped(StopReason::Interrupted) => ExitCode::from(exit::INTERRUPTED),
        RunEnd::Stopped(
            StopReason::Unauthorized(_) | StopReason::Breaker(_) | StopReason::StateFailed(_),
        ) => ExitCode::from(exit::ERROR),
    }
}

fn print_report(name: &str, report: &RunReport, resume: &str) {
    let c = &report.counts;
    let s = &report.snapshot;
    let mut out = std::io::stdout().lock();
    let headline = match &report.end {
        RunEnd::Completed => "completed".to_owned(),
        RunEnd::NothingToDo => "nothing left to send".to_owned(),
        RunEnd::DryRun => "dry run: planned, nothing sent".to_owned(),
        RunEnd::LimitReached => "stopped at --limit".to_owned(),
        RunEnd::OutsideWindow { opens_at } => format!(
            "outside the send window; it opens at {} (try later, or run with --wait)",
            opens_at.format("%Y-%m-%d %H:%M UTC")
        ),
        RunEnd::DailyLimitReached { next_at } => match next_at {
            Some(t) => format!(
                "daily limit reached; the next message may go at {}",
                t.format("%Y-%m-%d %H:%M UTC")
            ),
            None => "daily limit reached".to_owned(),
        },
        RunEnd::Stopped(StopReason::Interrupted) => "interrupted".to_owned(),
        RunEnd::Stopped(StopReason::MaxRuntime) => "stopped at --max-runtime".to_owned(),
        RunEnd::Stopped(StopReason::WindowClosed) => "stopped: the send window closed".to_owned(),
        RunEnd::Stopped(StopReason::Unauthorized(e)) => format!("stopped: {e}"),
        RunEnd::Stopped(StopReason::Breaker(e)) => format!("stopped by the circuit breaker: {e}"),
        RunEnd::Stopped(StopReason::StateFailed(e)) => {
            format!("stopped: cannot write the state: {e}")
        }
    };
    // A closed stdout (piped into `head`) is not worth an error.
    let _ = writeln!(out, "campaign {name}: {headline}");
    if report.replanned {
        let _ = writeln!(
            out,
            "  planned again: the inputs changed before anything was sent"
        );
    }
    if report.resend_selected > 0 {
        let _ = writeln!(
            out,
            "  {} settled rows were selected to send again in this run; those it did not reach keep their state",
            report.resend_selected
        );
    }
    if s.settled() + s.released > 0 {
        let _ = writeln!(
            out,
            "  this run: sent {}, failed {}, uncertain {} in {:.1}s ({:.1} msg/s; {} requests, {} rate-limited)",
            s.sent,
            s.failed,
            s.uncertain,
            s.elapsed.as_secs_f64(),
            s.per_second,
            report.requests,
            s.rate_limited
        );
    }
    let _ = writeln!(
        out,
        "  all rows: {} = sent {} + failed {} + uncertain {} + invalid {} + duplicate {} + pending {}{}",
        c.total(),
        c.sent,
        c.failed,
        c.uncertain,
        c.invalid,
        c.duplicate,
        c.pending,
        if c.sending > 0 {
            format!(" + sending {}", c.sending)
        } else {
            String::new()
        }
    );
    let _ = writeln!(out, "  state: {}", report.state_path.display());
    let unfinished = c.pending > 0
        && !matches!(
            report.end,
            RunEnd::DryRun | RunEnd::Completed | RunEnd::NothingToDo
        );
    if unfinished || (report.end == RunEnd::DryRun && c.pending > 0) {
        let _ = writeln!(out, "  to continue: {resume}");
    }
    if c.uncertain > 0 {
        let _ = writeln!(
            out,
            "  {} uncertain rows may have been delivered; they are never resent automatically (see `report --state-filter uncertain`, then `retry --uncertain`)",
            c.uncertain
        );
    }
}
